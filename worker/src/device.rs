//! Choosing the device to train on.
//!
//! The worker is linked against libtorch's CPU library only (Rust drops the unused CUDA
//! library from the link), so CUDA becomes available once `libtorch_cuda.so` is loaded into
//! the process by hand, before the first call into libtorch.

use std::ffi::CString;

use tch::Device;

use crate::error::{Error, Result};

/// Loads `libtorch_cuda.so` from the library path. Returns whether it loaded.
pub fn load_cuda_library() -> bool {
    let name = CString::new("libtorch_cuda.so").expect("no NUL");
    // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

/// Resolves `--device` (cpu, cuda, cuda:N; none = CUDA when available, else the CPU).
pub fn choose(requested: Option<&str>) -> Result<Device> {
    let wants_cuda = requested.is_none_or(|r| r.starts_with("cuda"));
    let cuda = wants_cuda && load_cuda_library() && tch::Cuda::is_available();
    match requested {
        None => Ok(if cuda { Device::Cuda(0) } else { Device::Cpu }),
        Some("cpu") => Ok(Device::Cpu),
        Some(r) if r == "cuda" || r.starts_with("cuda:") => {
            if !cuda {
                return Err(Error::Device(format!(
                    "--device {r}: CUDA is not available (is libtorch_cuda.so on LD_LIBRARY_PATH, and is there a GPU?)"
                )));
            }
            let index: usize = match r.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse()
                    .map_err(|_| Error::Device(format!("--device {r}: expected cuda:N")))?,
            };
            let count = tch::Cuda::device_count() as usize;
            if index >= count {
                return Err(Error::Device(format!(
                    "--device {r}: this machine has {count} CUDA device(s)"
                )));
            }
            Ok(Device::Cuda(index))
        }
        Some(r) => Err(Error::Device(format!(
            "--device {r}: expected cpu, cuda or cuda:N"
        ))),
    }
}

/// `cpu` or `cuda:N`, as the results record it.
pub fn name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}
