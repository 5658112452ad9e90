//! Where a worker's trials run: its devices, how many slots on each, whether they share a GPU
//! through MPS, and libtorch's CPU threads in each slot. Resolved once, at start, from the
//! command line and the machine.

use std::path::Path;

use tch::Device;

use crate::device;
use crate::error::{Error, Result};
use crate::mps::{self, Mps};

/// GPU memory one slot is assumed to need when `--slots auto` sizes the slots from the free
/// memory: the CUDA context, CIFAR-10 on the device, vgg8 at batch 128 with its measurement
/// snapshots, cuDNN's workspaces, with room to spare.
pub const SLOT_MIB: u64 = 3 * 1024;

/// `--slots`: a number per device, or chosen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCount {
    Auto,
    PerDevice(u32),
}

impl std::str::FromStr for SlotCount {
    type Err = String;
    fn from_str(s: &str) -> Result<SlotCount, String> {
        match s {
            "auto" => Ok(SlotCount::Auto),
            n => match n.parse::<u32>() {
                Ok(0) | Err(_) => Err(format!("expected `auto` or a number from 1, not `{n}`")),
                Ok(n) => Ok(SlotCount::PerDevice(n)),
            },
        }
    }
}

/// `--mps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MpsMode {
    /// Start a private MPS daemon when several slots share a GPU and it can be started;
    /// otherwise say why and let the slots time-slice.
    Auto,
    /// Start it, or refuse to run.
    On,
    /// Never: slots on one GPU time-slice.
    Off,
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub device: Option<&'a str>,
    pub gpus: Option<&'a str>,
    pub slots: SlotCount,
    pub mps: MpsMode,
    pub threads: Option<u32>,
}

/// What the worker runs with.
#[derive(Debug)]
pub struct Placement {
    pub devices: Vec<Device>,
    pub per_device: u32,
    pub threads: u32,
    /// The daemon, while the worker runs (stopped on drop).
    pub mps: Option<Mps>,
}

impl Placement {
    pub fn slots(&self) -> u32 {
        self.per_device * self.devices.len() as u32
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.devices.iter().map(|&d| device::name(d)).collect();
        let sharing = match (&self.mps, self.devices[0].is_cuda() && self.per_device > 1) {
            (Some(_), _) => ", sharing each GPU through MPS",
            (None, true) => ", time-slicing each GPU",
            (None, false) => "",
        };
        format!(
            "{} slot(s) on each of {}{sharing}, {} CPU thread(s) each",
            self.per_device,
            names.join(", "),
            self.threads
        )
    }
}

/// Resolves the request on this machine.
pub fn resolve(req: &Request<'_>) -> Result<Placement> {
    let devices = devices(req.device, req.gpus)?;
    let cuda = devices[0].is_cuda();
    if req.mps == MpsMode::On && !cuda {
        return Err(Error::Device(
            "--mps on: MPS shares a GPU, and this worker trains on the CPU".into(),
        ));
    }
    let sharing = req.slots != SlotCount::PerDevice(1);
    let site_mps = std::env::var_os("CUDA_MPS_PIPE_DIRECTORY").filter(|d| !d.is_empty());
    let mps = if let (true, Some(dir)) = (cuda && sharing && req.mps != MpsMode::Off, &site_mps) {
        // A site's own MPS (a cluster that runs one per node): the slots inherit its pipe
        // directory and are its clients; a private daemon beside it would not start.
        tracing::info!(
            "using this machine's MPS daemon ({}): slots share each GPU",
            Path::new(dir).display()
        );
        None
    } else if cuda && sharing && req.mps != MpsMode::Off {
        match Mps::start(Path::new(mps::CONTROL)) {
            Ok(m) => {
                tracing::info!("started a private MPS daemon: slots share each GPU");
                Some(m)
            }
            Err(e) if req.mps == MpsMode::On => {
                return Err(Error::Device(format!("--mps on: {e}")))
            }
            Err(e) => {
                tracing::warn!(
                    "MPS not started ({e}): the slots on each GPU take turns on it (time-slicing)"
                );
                None
            }
        }
    } else {
        None
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let per_device = match req.slots {
        SlotCount::PerDevice(n) => n,
        SlotCount::Auto if !cuda => 1,
        SlotCount::Auto => {
            let free = devices.iter().map(|&d| free_mib(d)).min().flatten();
            let under_mps = mps.is_some() || site_mps.is_some();
            let cores_per_gpu = cores / devices.len().max(1) as u32;
            let k = auto_slots(under_mps, free, cores_per_gpu);
            tracing::info!(
                "--slots auto: {k} per GPU ({}, {}, {cores_per_gpu} CPU core(s) per GPU)",
                if under_mps { "MPS" } else { "no MPS" },
                match free {
                    Some(m) => format!("{m} MiB free on the fullest"),
                    None => "free memory unknown".into(),
                }
            );
            k
        }
    };
    let total = per_device * devices.len() as u32;
    Ok(Placement {
        threads: req.threads.unwrap_or((cores / total).max(1)).max(1),
        devices,
        per_device,
        mps,
    })
}

/// Slots per GPU when the worker chooses: eight under MPS, two without (time-slicing adds
/// little), never more than the free memory holds at [`SLOT_MIB`] a slot or than the CPU cores
/// per GPU (each slot's host thread feeds the GPU), and at least one. Measured on an H200
/// (bench/README.md, vgg8 at batch 128): eight slots under MPS made 61,000 img/s in exact fp32,
/// 2.2 times PyTorch eager training one trial at a time, and 108,000 with bf16 and
/// channels_last, where four made 38,000 (1,000-step trials); fewer slots never made more.
pub fn auto_slots(mps: bool, free_mib: Option<u64>, cores_per_gpu: u32) -> u32 {
    let wanted: u32 = if mps { 8 } else { 2 };
    let fits = free_mib.map_or(u32::MAX, |m| (m / SLOT_MIB).min(u64::from(u32::MAX)) as u32);
    wanted.min(fits).min(cores_per_gpu).max(1)
}

/// `--device` / `--gpus`: the devices the slots train on.
fn devices(device: Option<&str>, gpus: Option<&str>) -> Result<Vec<Device>> {
    let Some(gpus) = gpus else {
        return match device::choose(device)? {
            // No --device and CUDA: every GPU.
            Device::Cuda(_) if device.is_none() => Ok((0..tch::Cuda::device_count() as usize)
                .map(Device::Cuda)
                .collect()),
            d => Ok(vec![d]),
        };
    };
    if device.is_some() {
        return Err(Error::Device(
            "--device and --gpus: give one (--gpus 0,1 trains on cuda:0 and cuda:1)".into(),
        ));
    }
    if !(device::load_cuda_library() && tch::Cuda::is_available()) {
        return Err(Error::Device(format!(
            "--gpus {gpus}: CUDA is not available (is libtorch_cuda.so on LD_LIBRARY_PATH, and is there a GPU?)"
        )));
    }
    let count = tch::Cuda::device_count() as usize;
    parse_gpus(gpus, count)
}

/// `all` or a comma-separated list of indices below `count`.
pub fn parse_gpus(text: &str, count: usize) -> Result<Vec<Device>> {
    if text == "all" {
        return Ok((0..count).map(Device::Cuda).collect());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let i: usize = part.trim().parse().map_err(|_| {
            Error::Device(format!(
                "--gpus {text}: expected `all` or indices like 0,1 (`{part}` is not one)"
            ))
        })?;
        if i >= count {
            return Err(Error::Device(format!(
                "--gpus {text}: this machine has {count} CUDA device(s)"
            )));
        }
        if !out.contains(&Device::Cuda(i)) {
            out.push(Device::Cuda(i));
        }
    }
    Ok(out)
}

/// Free memory of a GPU in MiB, from `nvidia-smi` (which numbers GPUs as the machine does,
/// ignoring `CUDA_VISIBLE_DEVICES`); `None` when it cannot be known.
fn free_mib(d: Device) -> Option<u64> {
    let Device::Cuda(i) = d else { return None };
    let physical = device::Visible::from_env().smi_id(i)?;
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.free",
            "--format=csv,noheader,nounits",
            "-i",
            &physical,
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_parse_and_zero_is_refused() {
        assert_eq!("auto".parse(), Ok(SlotCount::Auto));
        assert_eq!("3".parse(), Ok(SlotCount::PerDevice(3)));
        assert!("0".parse::<SlotCount>().unwrap_err().contains("from 1"));
        assert!("two".parse::<SlotCount>().is_err());
    }

    #[test]
    fn automatic_slots_follow_mps_and_free_memory() {
        assert_eq!(auto_slots(true, None, 16), 8);
        assert_eq!(auto_slots(false, None, 16), 2);
        assert_eq!(auto_slots(true, Some(140_000), 16), 8);
        assert_eq!(auto_slots(true, Some(7 * 1024), 16), 2);
        assert_eq!(auto_slots(true, Some(100), 16), 1);
        // Eight GPUs on 32 cores: four cores, so four slots, per GPU.
        assert_eq!(auto_slots(true, Some(140_000), 4), 4);
        assert_eq!(auto_slots(false, Some(140_000), 1), 1);
        assert_eq!(auto_slots(true, None, 0), 1);
    }

    #[test]
    fn gpu_lists_parse_and_name_what_is_wrong() {
        assert_eq!(
            parse_gpus("all", 2).unwrap(),
            vec![Device::Cuda(0), Device::Cuda(1)]
        );
        assert_eq!(
            parse_gpus("1, 0,1", 2).unwrap(),
            vec![Device::Cuda(1), Device::Cuda(0)]
        );
        let e = parse_gpus("0,2", 2).unwrap_err().to_string();
        assert!(e.contains("2 CUDA device"), "{e}");
        let e = parse_gpus("0,x", 2).unwrap_err().to_string();
        assert!(e.contains("`x`"), "{e}");
    }

    #[test]
    fn the_cpu_gets_one_slot_by_default_and_refuses_mps() {
        let req = Request {
            device: Some("cpu"),
            gpus: None,
            slots: SlotCount::Auto,
            mps: MpsMode::Auto,
            threads: None,
        };
        let p = resolve(&req).unwrap();
        assert_eq!((p.devices.clone(), p.per_device), (vec![Device::Cpu], 1));
        assert!(p.mps.is_none() && p.threads >= 1);
        let p = resolve(&Request {
            slots: SlotCount::PerDevice(2),
            threads: Some(1),
            ..req.clone()
        })
        .unwrap();
        assert_eq!((p.slots(), p.threads), (2, 1));
        assert!(
            p.describe().starts_with("2 slot(s) on each of cpu"),
            "{}",
            p.describe()
        );
        let e = resolve(&Request {
            mps: MpsMode::On,
            ..req.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--mps on"), "{e}");
        let e = resolve(&Request {
            gpus: Some("0"),
            ..req
        })
        .unwrap_err();
        assert!(e.to_string().contains("--device and --gpus"), "{e}");
    }
}
