//! A private CUDA MPS control daemon for a worker's slot processes.
//!
//! Without MPS, processes sharing a GPU take turns on it (time-slicing), and several small
//! trials barely add up to more than one. Under MPS their kernels run side by side. The worker
//! starts a daemon of its own (`nvidia-cuda-mps-control -d`) with pipe and log directories of
//! its own, hands those directories to its slots through the environment, and asks the daemon
//! to quit when it ends. Other users of the GPU, and any system-wide daemon, are not touched.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The control program NVIDIA's driver package installs.
pub const CONTROL: &str = "nvidia-cuda-mps-control";

/// A running daemon; it is asked to quit, and its directories removed, on drop.
#[derive(Debug)]
pub struct Mps {
    program: PathBuf,
    dir: PathBuf,
}

impl Mps {
    /// Starts `program -d` with directories under `$TMPDIR/bnsweep-mps-PID/` and waits for its
    /// control pipe. The error says why it could not.
    pub fn start(program: &Path) -> Result<Mps, String> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bnsweep-mps-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let started = launch(program, &dir);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started.map(|()| Mps {
            program: program.to_path_buf(),
            dir,
        })
    }

    /// What a process needs in its environment to be a client of this daemon.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        env_for(&self.dir)
    }

    fn quit(&self) -> Result<(), String> {
        let mut control = Command::new(&self.program)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = control.stdin.take() {
            stdin.write_all(b"quit\n").map_err(|e| e.to_string())?;
        }
        let status = control.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(status.to_string());
        }
        Ok(())
    }
}

/// The environment of a daemon with its directories under `dir`, and of its clients.
fn env_for(dir: &Path) -> Vec<(OsString, OsString)> {
    vec![
        (
            "CUDA_MPS_PIPE_DIRECTORY".into(),
            dir.join("pipe").into_os_string(),
        ),
        (
            "CUDA_MPS_LOG_DIRECTORY".into(),
            dir.join("log").into_os_string(),
        ),
    ]
}

/// Creates the directories, runs `program -d`, and waits for the daemon's control pipe.
fn launch(program: &Path, dir: &Path) -> Result<(), String> {
    for sub in ["pipe", "log"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let started = Command::new(program)
        .arg("-d")
        .envs(env_for(dir))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", program.display()))?;
    if !started.status.success() {
        return Err(format!(
            "`{} -d` failed ({}): {}",
            program.display(),
            started.status,
            String::from_utf8_lossy(&started.stderr).trim()
        ));
    }
    // The daemon forks into the background; it is up once its control pipe exists.
    let control = dir.join("pipe").join("control");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !control.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "`{} -d` exited but no control pipe appeared at {} (its log: {})",
                program.display(),
                control.display(),
                dir.join("log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for Mps {
    fn drop(&mut self) {
        match self.quit() {
            Ok(()) => tracing::info!("MPS daemon stopped"),
            Err(e) => tracing::warn!(
                "could not stop the MPS daemon of {}: {e}",
                self.dir.display()
            ),
        }
        // The daemon removes its pipe as it quits; give it a moment before the directory goes.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.dir.join("pipe").join("control").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for the control program: with `-d` it "daemonises" by creating the control
    /// pipe; fed `quit`, it removes it. Both record their environment.
    fn fake_control(dir: &Path, works: bool) -> PathBuf {
        let path = dir.join("fake-mps-control");
        let body = if works {
            r#"#!/bin/sh
log="$(dirname "$0")/calls"
if [ "$1" = "-d" ]; then
  echo "start $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$log"
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"
else
  read cmd
  echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$log"
  rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
fi
"#
        } else {
            "#!/bin/sh\necho 'An instance of this daemon is already running' >&2\nexit 1\n"
        };
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_daemon_gets_private_directories_and_is_asked_to_quit() {
        let dir = tempfile::tempdir().unwrap();
        let program = fake_control(dir.path(), true);
        let mps = Mps::start(&program).unwrap();
        let pipe = mps.env()[0].1.clone();
        let private = mps.dir.clone();
        assert!(Path::new(&pipe).join("control").exists());
        assert!(Path::new(&pipe).starts_with(&private));
        drop(mps);
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 2, "{calls}");
        assert!(lines[0].starts_with(&format!("start {}", pipe.to_string_lossy())));
        assert!(lines[0].ends_with("/log"), "{calls}");
        assert_eq!(lines[1], format!("quit {}", pipe.to_string_lossy()));
        assert!(!private.exists(), "its directories are removed");
    }

    #[test]
    fn a_daemon_that_cannot_start_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let err = Mps::start(&fake_control(dir.path(), false)).unwrap_err();
        assert!(err.contains("already running"), "{err}");
        let err = Mps::start(&dir.path().join("missing")).unwrap_err();
        assert!(
            err.contains("cannot run") && err.contains("missing"),
            "{err}"
        );
    }
}
