//! The worker's side of the protocol: register, poll for trials, run each on the worker's
//! [`Runner`] (its slots, each a process of its own, see [`crate::slot`]), stream its rows
//! back in numbered batches, and report how it ended.
//!
//! This module holds the poll loop and what ends the worker's time; `session` its calls to
//! the coordinator, `attempt` each attempt from its start to its outcome.

mod attempt;
mod session;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tokio::sync::Notify;
use tonic::Code;

use crate::error::{Error, Result};
use crate::runner::Runner;
use session::{connect, register, Credentials, Identity};

#[derive(Clone)]
pub struct Config {
    /// The coordinator's address, given or read from its address file.
    pub coordinator: Coordinator,
    pub name: String,
    /// How long the coordinator may stay unreachable before the worker gives up.
    pub patience: Duration,
    /// Exit once no trial came or ran for this long (`--exit-when-idle`).
    pub exit_when_idle: Option<Duration>,
    /// The coordinator's shared token, if it has one.
    pub token: Option<String>,
    /// The certificate (PEM) that an `https://` coordinator's must chain to.
    pub tls_ca: Option<std::path::PathBuf>,
    /// What runs the trials.
    pub runner: Arc<dyn Runner>,
    /// When the worker must be gone (its cluster job's end), if known.
    pub deadline: Option<Deadline>,
    /// The signal that drains the worker (SIGUSR1 by default; `None`: no drain signal).
    pub drain_signal: Option<i32>,
}

/// The end of the worker's allotted time (a cluster job's time limit): running trials are
/// handed back `margin` before it, and while draining a trial that would not end before then
/// is handed back at once.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    pub at: std::time::SystemTime,
    pub margin: Duration,
}

impl Deadline {
    /// A deadline as given to `--deadline` or in `SLURM_JOB_END_TIME`: seconds since the
    /// Unix epoch, or `+` and a wait from now (`+90s`, `+45m`, `+2h`; plain seconds alone).
    pub fn parse(text: &str) -> std::result::Result<std::time::SystemTime, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is neither seconds since the epoch nor a wait such as +45m");
        if let Some(wait) = text.strip_prefix('+') {
            let (number, unit) = match wait.find(|c: char| !c.is_ascii_digit()) {
                Some(i) => wait.split_at(i),
                None => (wait, "s"),
            };
            let n: u64 = number.parse().map_err(|_| bad())?;
            let secs = match unit {
                "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                _ => return Err(bad()),
            };
            return Ok(std::time::SystemTime::now() + Duration::from_secs(secs));
        }
        let epoch: u64 = text.parse().map_err(|_| bad())?;
        Ok(std::time::UNIX_EPOCH + Duration::from_secs(epoch))
    }

    /// When trials are handed back, on this process's monotonic clock.
    fn hand_back_at(&self) -> Instant {
        let now = std::time::SystemTime::now();
        let left = self.at.duration_since(now).unwrap_or_default();
        Instant::now() + left.saturating_sub(self.margin)
    }
}

/// How the worker ended, for its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The sweep is done or was cancelled: nothing is left for this worker (exit 0).
    Finished,
    /// Stopped by a signal, a drain or its deadline with the sweep unfinished, its running
    /// trials handed back: a cluster should run it again ([`EXIT_WORK_LEFT`]).
    WorkLeft,
}

/// The exit code of a worker that stopped with work left (EX_TEMPFAIL of sysexits.h).
pub const EXIT_WORK_LEFT: u8 = 75;

/// The number of a signal named as `kill -l` names it (`USR1`, `SIGUSR1`) or given as a
/// number. SIGTERM, SIGINT and SIGKILL are refused: they stop the worker, or cannot be caught.
pub fn signal_number(name: &str) -> std::result::Result<i32, String> {
    const DRAINABLE: [i32; 7] = [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGALRM,
        libc::SIGURG,
        libc::SIGCONT,
        libc::SIGWINCH,
    ];
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match bare {
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "HUP" => libc::SIGHUP,
        "ALRM" => libc::SIGALRM,
        "URG" => libc::SIGURG,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "TERM" | "INT" | "KILL" | "STOP" => {
            return Err(format!("SIG{bare} cannot be the drain signal"))
        }
        // A number: one of the above, or a real-time signal. Others are raised by faults
        // (SIGSEGV), or by the worker's own doing (SIGCHLD when a slot ends, SIGPIPE).
        other => other
            .parse()
            .ok()
            .filter(|&n| {
                DRAINABLE.contains(&n) || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n)
            })
            .ok_or_else(|| format!("`{name}` is not a signal the worker can drain on"))?,
    };
    Ok(n)
}

/// How a worker finds its coordinator.
#[derive(Clone, Debug)]
pub enum Coordinator {
    Url(String),
    /// The file `bnsweep serve --address-file` writes once it serves: waited for, and read
    /// again whenever the coordinator cannot be reached (a coordinator job requeued by the
    /// cluster comes back on another node or port).
    File(std::path::PathBuf),
}

impl Coordinator {
    /// The URL now: from an address file, once it exists (waiting up to `patience`).
    async fn url(&self, patience: Duration) -> Result<String> {
        let path = match self {
            Coordinator::Url(u) => return Ok(u.clone()),
            Coordinator::File(p) => p,
        };
        let deadline = Instant::now() + patience;
        let mut said = false;
        loop {
            if let Some(url) = read_address(path) {
                return Ok(url);
            }
            if Instant::now() >= deadline {
                return Err(Error::NoAddress {
                    path: path.clone(),
                    waited: patience,
                });
            }
            if !said {
                tracing::warn!(
                    "waiting for the coordinator's address in {}",
                    path.display()
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The URL in an address file (its first line), if the file is there and holds one.
fn read_address(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let url = text.lines().next()?.trim();
    (!url.is_empty()).then(|| url.to_string())
}

/// What every trial of this worker shares.
struct Context {
    runner: Arc<dyn Runner>,
    /// Set on SIGTERM, at the deadline, or for a cancelled sweep: trials stop and are given
    /// back.
    shutdown: Arc<AtomicBool>,
    /// Set by the drain signal: no more trials are taken, and a running trial that would not
    /// end before `hand_back_at` is given back.
    draining: Arc<AtomicBool>,
    /// When running trials are handed back (the deadline less its margin), if there is one.
    hand_back_at: Option<Instant>,
}

/// Runs until the coordinator says the sweep is done and no trial of ours is left.
///
/// On SIGTERM (or Ctrl-C), or at its deadline, it takes no more trials, gives its running
/// trials back to the coordinator (they run again elsewhere, not counted as failures) and
/// exits. On its drain signal it takes no more trials, lets its running trials end (giving
/// back at once those that would not end before the deadline) and exits.
pub async fn run(cfg: Config) -> Result<Exit> {
    let Some(mut poll) = Poll::start(cfg).await? else {
        return Ok(Exit::WorkLeft);
    };
    loop {
        if let Some(exit) = poll.once().await? {
            return Ok(exit);
        }
        tokio::select! {
            _ = tokio::time::sleep(poll.every) => {}
            _ = poll.wake.notified() => {}
        }
    }
}

/// The poll loop's state.
struct Poll {
    cfg: Config,
    me: Arc<Identity>,
    ctx: Arc<Context>,
    /// The coordinator's URL now.
    url: String,
    /// How often the coordinator wants to be polled.
    every: Duration,
    /// Attempts running in this worker.
    running: Arc<AtomicUsize>,
    /// Polls at once instead of at the next interval: an attempt ended, or the worker stops.
    wake: Arc<Notify>,
    /// The coordinator cancelled the sweep.
    cancelled: bool,
    /// The coordinator took this worker out of rotation, saying why.
    retired: Option<String>,
    last_contact: Instant,
    /// Since when the worker has had nothing to run (for `--exit-when-idle`).
    idle_since: Instant,
}

impl Poll {
    /// Starts watching for the end of the worker's time, then connects and registers; `None`
    /// when a signal or the deadline ended it first (waiting for its coordinator's address,
    /// say: a cluster job's coordinator may still be queued).
    async fn start(cfg: Config) -> Result<Option<Poll>> {
        let ctx = Arc::new(Context {
            runner: cfg.runner.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            hand_back_at: cfg.deadline.map(|d| d.hand_back_at()),
        });
        let wake = Arc::new(Notify::new());
        watch_for_the_end(&cfg, &ctx, &wake)?;
        let join = async {
            let (mut client, url) =
                connect(&cfg, &cfg.coordinator.url(cfg.patience).await?).await?;
            let (id, every) = register(&mut client, &cfg, &Credentials::default()).await?;
            Ok::<_, Error>((client, url, id, every))
        };
        let ended = async {
            while !(ctx.shutdown.load(Ordering::SeqCst) || ctx.draining.load(Ordering::SeqCst)) {
                wake.notified().await;
            }
        };
        let (client, url, id, every) = tokio::select! {
            joined = join => joined?,
            () = ended => {
                tracing::warn!("stopped before reaching the coordinator; exit code {EXIT_WORK_LEFT}");
                return Ok(None);
            }
        };
        Ok(Some(Poll {
            me: Arc::new(Identity::new(client, id, cfg.patience)),
            ctx,
            cfg,
            url,
            every,
            running: Arc::new(AtomicUsize::new(0)),
            wake,
            cancelled: false,
            retired: None,
            last_contact: Instant::now(),
            idle_since: Instant::now(),
        }))
    }

    fn running(&self) -> u32 {
        self.running.load(Ordering::SeqCst) as u32
    }

    /// One poll: asks for as many trials as there are free slots (none while leaving),
    /// starts those it brings and heeds what the coordinator says. Returns how the worker
    /// exits once it is done.
    async fn once(&mut self) -> Result<Option<Exit>> {
        let busy = self.running();
        let leaving =
            self.ctx.shutdown.load(Ordering::SeqCst) || self.ctx.draining.load(Ordering::SeqCst);
        if busy == 0 {
            if let Some(reason) = self.retired.take() {
                return Err(Error::Retired(reason));
            }
        }
        let taking = !leaving && self.retired.is_none();
        let credentials = self.me.credentials();
        let request = pb::PollWorkRequest {
            worker_id: credentials.id,
            worker_secret: credentials.secret,
            free_slots: if taking {
                self.ctx.runner.slots().saturating_sub(busy)
            } else {
                0
            },
            running: self.me.leases(),
        };
        let asked = Instant::now();
        let mut sweep_done = false;
        match self.me.client().poll_work(request).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                sweep_done = resp.sweep_done;
                if let Some(exit) = self.answered(resp, asked) {
                    return Ok(Some(exit));
                }
            }
            Err(s) => self.failed(s).await?,
        }
        // Leaving, with every trial ended and its outcome told (or past telling): this poll
        // said whether the sweep is done.
        Ok(if leaving { self.left(sweep_done) } else { None })
    }

    /// Heeds a poll's answer: a cancelled sweep, a retirement, trials to start, the sweep's
    /// end.
    fn answered(&mut self, resp: pb::PollWorkResponse, asked: Instant) -> Option<Exit> {
        self.last_contact = Instant::now();
        if resp.stop && !self.cancelled {
            tracing::warn!("the sweep was cancelled: giving running trials back");
            self.cancelled = true;
            self.ctx.shutdown.store(true, Ordering::SeqCst);
        }
        if resp.retired && self.retired.is_none() {
            tracing::error!("taken out of rotation: {}", resp.reason);
            self.retired = Some(resp.reason.clone());
        }
        for assignment in resp.trials {
            self.dispatch(assignment, asked);
        }
        if resp.sweep_done && self.running() == 0 {
            tracing::info!("sweep done; exiting");
            return Some(Exit::Finished);
        }
        if self.running() > 0 {
            self.idle_since = Instant::now();
        } else if let Some(idle) = self.cfg.exit_when_idle {
            if self.idle_since.elapsed() >= idle {
                tracing::info!("no work for {idle:?}; exiting");
                return Some(Exit::Finished);
            }
        }
        None
    }

    /// Leases `assignment` and runs it in a task of its own.
    fn dispatch(&self, assignment: pb::TrialAssignment, asked: Instant) {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.me.lease(&assignment, true);
        self.ctx.runner.dispatched(asked.elapsed());
        let (me, ctx) = (self.me.clone(), self.ctx.clone());
        let (running, wake) = (self.running.clone(), self.wake.clone());
        tokio::spawn(async move {
            attempt::run_trial(&me, assignment, ctx).await;
            running.fetch_sub(1, Ordering::SeqCst);
            wake.notify_one();
        });
    }

    /// Heeds a failed poll: registers again with a coordinator that forgot this worker, waits
    /// for one that is up, follows one that moved; gives up past the patience.
    async fn failed(&mut self, s: tonic::Status) -> Result<()> {
        match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => return Err(s.into()),
            Code::NotFound => {
                tracing::warn!(
                    "coordinator does not know this worker ({}); registering again",
                    s.message()
                );
                let previous = self.me.credentials();
                let (id, every) = register(&mut self.me.client(), &self.cfg, &previous).await?;
                self.every = every;
                self.me.set_credentials(id);
                return Ok(());
            }
            _ => {}
        }
        if s.metadata().contains_key(pb::WAITING_ON_DISK) {
            self.last_contact = Instant::now(); // up, and waiting for disk space
            tracing::warn!("{}; waiting", s.message());
        } else if self.last_contact.elapsed() > self.cfg.patience {
            return Err(s.into());
        } else {
            tracing::warn!("poll failed: {}; retrying", s.message());
            self.follow_address().await;
        }
        Ok(())
    }

    /// A coordinator found through its address file may have moved (requeued): follow the
    /// file. The next poll then registers again with it.
    async fn follow_address(&mut self) {
        let Coordinator::File(path) = &self.cfg.coordinator else {
            return;
        };
        if let Some(moved) = read_address(path).filter(|u| *u != self.url) {
            tracing::warn!(
                "the coordinator's address is now {moved} ({})",
                path.display()
            );
            if let Ok((client, reached)) = connect(&self.cfg, &moved).await {
                self.me.set_client(client);
                self.url = reached;
            }
        }
    }

    /// How a leaving worker exits, once every trial of it has ended.
    fn left(&self, sweep_done: bool) -> Option<Exit> {
        if self.running() != 0 {
            return None;
        }
        Some(if self.cancelled || sweep_done {
            tracing::info!("stopped; nothing is left to run");
            Exit::Finished
        } else {
            tracing::info!(
                "stopped with the sweep unfinished; exit code {EXIT_WORK_LEFT} (run again)"
            );
            Exit::WorkLeft
        })
    }
}

/// Starts the tasks that end the worker's time: SIGTERM or Ctrl-C and the deadline stop it
/// (running trials are handed back), the drain signal drains it.
fn watch_for_the_end(cfg: &Config, ctx: &Context, wake: &Arc<Notify>) -> Result<()> {
    raise_when(
        pb::process::stop_signal(),
        &ctx.shutdown,
        wake,
        "stopping: giving running trials back to the coordinator",
    );
    if let (Some(at), Some(deadline)) = (ctx.hand_back_at, cfg.deadline) {
        tracing::info!(
            "deadline in {}: running trials are handed back {} s before it",
            describe_wait(at.saturating_duration_since(Instant::now()) + deadline.margin),
            deadline.margin.as_secs()
        );
        raise_when(
            tokio::time::sleep_until(at.into()),
            &ctx.shutdown,
            wake,
            "the deadline is near: giving running trials back to the coordinator",
        );
    }
    if let Some(signal) = cfg.drain_signal {
        let kind = tokio::signal::unix::SignalKind::from_raw(signal);
        let mut drain = tokio::signal::unix::signal(kind)
            .map_err(|e| Error::Config(format!("--drain-signal {signal}: {e}")))?;
        // Once caught, the signal stays caught: a second one does nothing.
        raise_when(
            async move {
                drain.recv().await;
            },
            &ctx.draining,
            wake,
            "draining: taking no more trials; running trials end, or are handed back if they \
             would not end before the deadline",
        );
    }
    Ok(())
}

/// Once `event` happens, sets `flag`, says `why` and wakes the poll loop.
fn raise_when(
    event: impl Future<Output = ()> + Send + 'static,
    flag: &Arc<AtomicBool>,
    wake: &Arc<Notify>,
    why: &'static str,
) {
    let (flag, wake) = (flag.clone(), wake.clone());
    tokio::spawn(async move {
        event.await;
        tracing::warn!("{why}");
        flag.store(true, Ordering::SeqCst);
        wake.notify_one();
    });
}

/// A wait as people say it: 95 s, 12 min, 3.5 h.
fn describe_wait(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_and_drain_signals_read_as_clusters_write_them() {
        let at = Deadline::parse("1800000000").unwrap();
        assert_eq!(
            at,
            std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        );
        let soon = Deadline::parse("+45m").unwrap();
        let left = soon.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(2690) && left <= Duration::from_secs(2700));
        assert!(Deadline::parse("+90").is_ok());
        for bad in ["tomorrow", "+5d", "+", "-3", ""] {
            assert!(Deadline::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(signal_number("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(signal_number("sigusr2"), Ok(libc::SIGUSR2));
        assert_eq!(signal_number("10"), Ok(10));
        assert_eq!(signal_number("40"), Ok(40));
        for bad in ["TERM", "SIGINT", "9", "FOO", "0", "99", "11", "13", "17"] {
            assert!(signal_number(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_deadline_hands_back_its_margin_before_it() {
        let d = Deadline {
            at: std::time::SystemTime::now() + Duration::from_secs(100),
            margin: Duration::from_secs(30),
        };
        let left = d.hand_back_at().saturating_duration_since(Instant::now());
        assert!(
            left <= Duration::from_secs(70) && left > Duration::from_secs(65),
            "{left:?}"
        );
        let passed = Deadline {
            at: std::time::SystemTime::now() - Duration::from_secs(5),
            margin: Duration::from_secs(30),
        };
        assert!(passed.hand_back_at() <= Instant::now());
    }
}
