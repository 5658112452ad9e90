//! A small harness for the end-to-end tests: the real binaries, a temporary directory per
//! test, and the Python that reads results back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Whether `cond` holds within `timeout`, asked at once and then at growing intervals (20 ms
/// to 500 ms); false once the time is up. For a wait whose end is not a failure (see
/// [`wait_until`] for one that is).
pub fn within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Waits until `cond` holds, failing the test, naming `what` and the timeout, if it does not
/// within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        within(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// A spawned process of a test, killed (SIGKILL) and reaped when dropped, so that a failed
/// assertion leaves no process behind. With [`Running::logged`], what it prints is collected
/// as it comes, for waiting on a line and for failure messages.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Spawns `cmd` with the standard streams it names.
    pub fn spawn(cmd: &mut Command) -> Running {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Running {
            child,
            stdout: Arc::default(),
            stderr: Arc::default(),
            readers: Vec::new(),
        }
    }

    /// Spawns `cmd` with its stdout and stderr piped and collected (see [`Running::stdout`],
    /// [`Running::stderr`]).
    pub fn logged(cmd: &mut Command) -> Running {
        let mut running = Running::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
        let out = running.child.stdout.take().expect("piped stdout");
        let err = running.child.stderr.take().expect("piped stderr");
        let collect = |from: Box<dyn std::io::Read + Send>, into: &Arc<Mutex<String>>| {
            let into = into.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(from).lines() {
                    let Ok(line) = line else { break };
                    let mut text = into.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        running.readers = vec![
            collect(Box::new(out), &running.stdout),
            collect(Box::new(err), &running.stderr),
        ];
        running
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What a [`Running::logged`] process printed on stdout so far (all of it once it has
    /// exited and been waited for).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// What a [`Running::logged`] process printed on stderr so far (all of it once it has
    /// exited and been waited for).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().expect("try_wait");
        if status.is_some() {
            self.join_readers();
        }
        status
    }

    /// Waits for it to exit, however long that takes, and for the rest of its output.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().expect("wait");
        self.join_readers();
        status
    }

    /// Waits up to `timeout` for it to exit: its status, or `None` if it still runs.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        within(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Waits for it to exit, failing the test (saying it did not `what`, with its log) after
    /// `timeout`.
    pub fn exit_within(&mut self, what: &str, timeout: Duration) -> ExitStatus {
        match self.exited_within(timeout) {
            Some(status) => status,
            None => panic!(
                "timed out after {timeout:?} waiting for the process to {what}\n--- its stderr\n{}",
                self.stderr()
            ),
        }
    }

    /// Waits up to `timeout` for a line of its stderr containing `text`, and returns that
    /// line; fails the test, with the log, if none comes or the process exits first.
    pub fn wait_to_say(&mut self, text: &str, timeout: Duration) -> String {
        let find = |log: &str| log.lines().find(|l| l.contains(text)).map(String::from);
        let mut exited = None;
        within(timeout, || {
            exited = exited.or_else(|| self.child.try_wait().expect("try_wait"));
            exited.is_some() || find(&self.stderr()).is_some()
        });
        if exited.is_some() {
            self.join_readers();
        }
        if let Some(line) = find(&self.stderr()) {
            return line;
        }
        match exited {
            Some(status) => panic!(
                "the process exited ({status}) without saying `{text}`\n--- its stderr\n{}",
                self.stderr()
            ),
            None => panic!(
                "timed out after {timeout:?} waiting for the process to say `{text}`\n--- its stderr\n{}",
                self.stderr()
            ),
        }
    }

    /// Sends `signal` (a name: TERM, USR1, STOP...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let sent = run(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string()));
        assert!(sent.ok(), "{sent:?}");
    }

    /// kill -9, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.wait();
    }

    /// Waits for it to exit; its exit code and output.
    pub fn ran(&mut self) -> Ran {
        let status = self.wait();
        Ran {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `bnsweep serve FILE --listen ADDR --out OUT EXTRA...` in `dir`, its output discarded (the
/// caller may pipe it instead). For a coordinator the test talks to, see [`serve`].
pub fn serve_command(dir: &Path, file: &str, addr: &str, out: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("bnsweep"));
    cmd.args(["serve", file, "--listen", addr, "--out", out])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Starts `bnsweep serve FILE --listen 127.0.0.1:0 --out OUT EXTRA...` in `dir` (logged), on a
/// port the system chooses, and returns it with the URL workers reach it by, once it has said
/// where it listens (its socket is bound then: a connection waits to be accepted).
pub fn serve(dir: &Path, file: &str, out: &str, extra: &[&str]) -> (Running, String) {
    serve_at(dir, file, "127.0.0.1:0", out, extra)
}

/// [`serve`] on a given address: a coordinator started again on the port its first run
/// reported (see [`addr_of`]).
pub fn serve_at(
    dir: &Path,
    file: &str,
    listen: &str,
    out: &str,
    extra: &[&str],
) -> (Running, String) {
    let mut serve = Running::logged(&mut serve_command(dir, file, listen, out, extra));
    // "bnsweep: serving sweep `S` (N trials) on ADDR; start workers with
    // `bnsweep-worker --coordinator URL`", said once the socket is bound.
    let marker = "start workers with `bnsweep-worker --coordinator ";
    let line = serve.wait_to_say(marker, Duration::from_secs(60));
    let url = line[line.find(marker).unwrap() + marker.len()..]
        .trim_end_matches('`')
        .to_string();
    (serve, url)
}

/// The `host:port` of a URL such as `http://127.0.0.1:5000`.
pub fn addr_of(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, a)| a)
}

/// The coordinator's answer to `Status` over plain HTTP (with `token` if it has one), or
/// `None` while it does not answer.
pub fn sweep_status(url: &str, token: Option<&str>) -> Option<bnsweep_proto::StatusResponse> {
    use bnsweep_proto::client;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = client::endpoint(url, None).ok()?.connect().await.ok()?;
        let mut c = client::new(channel, client::Auth::new(token).ok()?);
        let status = c
            .status(bnsweep_proto::StatusRequest::default())
            .await
            .ok()?;
        Some(status.into_inner())
    })
}

/// Waits until the coordinator at `url` has the first rows of a running trial (a worker sends
/// a batch a second), so that the trial is under way, its slot process training.
pub fn wait_for_rows(url: &str, token: Option<&str>, timeout: Duration) {
    wait_until("the running trial's first rows", timeout, || {
        sweep_status(url, token).is_some_and(|s| s.running > 0 && s.fraction > 0.0)
    });
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
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
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
