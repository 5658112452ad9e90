//! Worker processes started on this machine by `bnsweep run`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// What `bnsweep run` passes to each local worker.
#[derive(Debug, Clone)]
pub struct LocalWorkers {
    pub count: u32,
    pub device: Option<String>,
    /// Trials each worker trains at once.
    pub slots: u32,
    /// CPU threads per trial for libtorch.
    pub threads: u32,
    pub binary: PathBuf,
}

/// The worker binary: `$BNSWEEP_WORKER_BIN`, else `bnsweep-worker` beside this program, else
/// `bnsweep-worker` on the PATH.
pub fn find_worker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BNSWEEP_WORKER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let sibling = dir.join("bnsweep-worker");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("bnsweep-worker")
}

/// Starts the workers, each logging to `logs/worker-N.log`. They end when the sweep does, and
/// are killed if this process drops them first.
pub fn spawn(spec: &LocalWorkers, coordinator_url: &str, logs: &Path) -> Result<Vec<Child>> {
    (0..spec.count)
        .map(|i| {
            let log_path = logs.join(format!("worker-{i}.log"));
            let log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
            let log2 = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
            let mut cmd = Command::new(&spec.binary);
            cmd.arg("--coordinator")
                .arg(coordinator_url)
                .arg("--slots")
                .arg(spec.slots.to_string())
                .arg("--threads")
                .arg(spec.threads.to_string())
                .arg("--name")
                .arg(format!("local{i}"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .kill_on_drop(true);
            if let Some(d) = &spec.device {
                cmd.arg("--device").arg(d);
            }
            cmd.spawn().map_err(|source| Error::WorkerProgram {
                program: spec.binary.clone(),
                source,
            })
        })
        .collect()
}
