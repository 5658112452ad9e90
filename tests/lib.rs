//! A small harness for the end-to-end tests: the real binaries, a temporary directory per
//! test, and the Python that reads results back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built binary of the workspace, from the same profile as this test (`scripts/test` builds
/// them first).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("BNSWEEP_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("test executable");
            // target/<profile>/deps/e2e-HASH -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (scripts/test does `cargo build --release --bins`)",
        path.display()
    );
    path
}

/// The Python with pyarrow, polars and DuckDB (`scripts/setup-python.sh`).
pub fn python() -> PathBuf {
    PathBuf::from(std::env::var_os("BNSWEEP_PYTHON").expect(
        "BNSWEEP_PYTHON is not set: run the tests with scripts/test, which installs pyarrow, polars and DuckDB",
    ))
}

/// The CIFAR-10 binary directory named by `BNSWEEP_CIFAR_DIR` (`scripts/test` makes one from
/// the real data when the machine has it); otherwise a stand-in in the same binary layout,
/// written under `scratch` by `tests/cifar_fixture.py`, so that the reader and the trainer
/// run on real-format files on every machine. The second value says which it is.
pub fn cifar_dir(scratch: &Path) -> (PathBuf, &'static str) {
    if let Some(dir) = std::env::var_os("BNSWEEP_CIFAR_DIR").map(PathBuf::from) {
        assert!(
            dir.join("test_batch.bin").is_file(),
            "BNSWEEP_CIFAR_DIR={} holds no test_batch.bin",
            dir.display()
        );
        return (dir, "CIFAR-10");
    }
    let out = Command::new(python())
        .arg(repo_root().join("tests/cifar_fixture.py"))
        .arg(scratch)
        .output()
        .expect("run tests/cifar_fixture.py");
    assert!(out.status.success(), "{:?}", Ran::from(out));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (dir, "a stand-in written by tests/cifar_fixture.py")
}

/// What a finished command printed.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs a command to its end.
pub fn run(cmd: &mut Command) -> Ran {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

/// `bnsweep ARGS` in `dir`.
pub fn bnsweep(dir: &Path, args: &[&str]) -> Ran {
    run(Command::new(bin("bnsweep")).args(args).current_dir(dir))
}

/// Runs `tests/read_results.py DIR ARGS...`, which checks a results directory with pyarrow,
/// polars and DuckDB and exits non-zero on the first problem.
pub fn check_results(dir: &Path, args: &[&str]) -> Ran {
    run(Command::new(python())
        .arg(repo_root().join("tests/read_results.py"))
        .arg(dir)
        .args(args))
}

/// A free loopback address for a coordinator, and the URL workers reach it by.
pub fn free_addr() -> (String, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    (addr, url)
}

/// `bnsweep serve FILE --listen ADDR --out OUT EXTRA...` in `dir`, its output discarded (the
/// caller may pipe it instead).
pub fn serve_command(dir: &Path, file: &str, addr: &str, out: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("bnsweep"));
    cmd.args(["serve", file, "--listen", addr, "--out", out])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// `bnsweep-worker --coordinator URL --device cpu EXTRA...`: a CPU worker of the test's
/// coordinator (the caller adds what else it needs: a name, threads, env, pipes).
pub fn worker_command(url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("bnsweep-worker"));
    cmd.args(["--coordinator", url, "--device", "cpu"])
        .args(extra)
        .env_remove("SLURM_JOB_END_TIME")
        .env_remove("BNSWEEP_DEADLINE");
    cmd
}

/// A TCP proxy between workers and a coordinator whose connections a test can cut (closing
/// every open one and refusing new ones) and restore, as a flaky network would.
pub struct Proxy {
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, o, up) = (cut.clone(), open.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                let pipe = |from: &TcpStream, to: &TcpStream| {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(&client, &server);
                pipe(&server, &client);
                let mut open = o.lock().unwrap();
                open.push(client);
                open.push(server);
            }
        });
        Proxy { addr, cut, open }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Headless Chromium (Debian's `chromium`, installed by scripts/test), or `BNSWEEP_CHROMIUM`,
/// with a window (and screenshots) of 1200 x 1600 pixels.
pub fn chromium() -> Command {
    chromium_window(1200, 1600)
}

/// [`chromium`] with a window of `width` x `height` pixels.
pub fn chromium_window(width: u32, height: u32) -> Command {
    let bin = std::env::var_os("BNSWEEP_CHROMIUM").unwrap_or_else(|| "chromium".into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ]);
    cmd.arg(format!("--window-size={width},{height}"));
    cmd
}
