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
                let why = if Visible::from_env() == Visible::Nothing {
                    "CUDA_VISIBLE_DEVICES hides every GPU (a job given no GPU?)"
                } else {
                    "is libtorch_cuda.so on LD_LIBRARY_PATH, and is there a GPU?"
                };
                return Err(Error::Device(format!(
                    "--device {r}: CUDA is not available ({why})"
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

/// What `CUDA_VISIBLE_DEVICES` says, as clusters set it: unset (every GPU), none (`""`,
/// `-1`, or Slurm's `NoDevFiles` for a job without GPUs), or a list whose entries are
/// indices, UUIDs (`GPU-…`, `MIG-…`: Kubernetes' device plugin, Slurm's `Flags=env_uuid`) or
/// PCI bus ids. CUDA numbers the listed GPUs 0, 1, ... in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visible {
    All,
    Nothing,
    Listed(Vec<String>),
}

impl Visible {
    pub fn parse(value: Option<&str>) -> Visible {
        match value.map(str::trim) {
            None => Visible::All,
            Some("" | "-1" | "NoDevFiles") => Visible::Nothing,
            Some(list) => Visible::Listed(
                list.split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect(),
            ),
        }
    }

    pub fn from_env() -> Visible {
        Visible::parse(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
    }

    /// How `nvidia-smi -i` names CUDA device `index` (it takes indices in the machine's
    /// numbering, UUIDs and PCI bus ids alike); `None` when it is not visible.
    pub fn smi_id(&self, index: usize) -> Option<String> {
        match self {
            Visible::All => Some(index.to_string()),
            Visible::Nothing => None,
            Visible::Listed(l) => l.get(index).cloned(),
        }
    }
}

/// `cpu` or `cuda:N`, as the results record it.
pub fn name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::Visible;

    #[test]
    fn visible_devices_read_as_clusters_write_them() {
        assert_eq!(Visible::parse(None), Visible::All);
        for none in ["", "-1", "NoDevFiles", " NoDevFiles "] {
            assert_eq!(Visible::parse(Some(none)), Visible::Nothing, "{none:?}");
        }
        let uuids =
            "GPU-8f6b2c1e-1111-2222-3333-444455556666,MIG-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff";
        let v = Visible::parse(Some(uuids));
        // CUDA's device 1 is the second entry: nvidia-smi is asked for it by its UUID.
        assert_eq!(
            v.smi_id(1).as_deref(),
            Some("MIG-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff")
        );
        assert_eq!(v.smi_id(2), None);
        let pci = Visible::parse(Some("00000000:17:00.0, 3"));
        assert_eq!(pci.smi_id(0).as_deref(), Some("00000000:17:00.0"));
        assert_eq!(pci.smi_id(1).as_deref(), Some("3"));
        assert_eq!(Visible::All.smi_id(5).as_deref(), Some("5"));
        assert_eq!(Visible::Nothing.smi_id(0), None);
    }
}
