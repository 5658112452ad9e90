//! The worker's side of the protocol: register, poll for trials, run each in one of the
//! worker's slots (a process of its own, see [`crate::slot`]), stream its rows back in numbered
//! batches, and report how it ended.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tch::Device;
use tokio::sync::{mpsc, Notify};
use tonic::Code;

use crate::device;
use crate::error::{Error, Result};
use crate::simulate::{self, Simulation};
use crate::slot::{Msg, Slots};
use crate::trainer::{Ending, Row};

/// Rows a metric batch carries at most, and how long rows wait before they are sent.
const BATCH_ROWS: usize = 5000;
const BATCH_WAIT: Duration = Duration::from_millis(1000);

#[derive(Clone)]
pub struct Config {
    /// The coordinator's address, given or read from its address file.
    pub coordinator: Coordinator,
    pub name: String,
    /// How long the coordinator may stay unreachable before the worker gives up.
    pub patience: Duration,
    /// The coordinator's shared token, if it has one.
    pub token: Option<String>,
    /// The certificate (PEM) that an `https://` coordinator's must chain to.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Where the trials run.
    pub training: Training,
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
        other => other
            .parse()
            .ok()
            .filter(|n| {
                ![libc::SIGTERM, libc::SIGINT, libc::SIGKILL, libc::SIGSTOP].contains(n)
                    && (1..=64).contains(n)
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
                return Err(Error::Device(format!(
                    "--coordinator-file {}: no coordinator address there after {patience:?} (is `bnsweep serve --address-file` running?)",
                    path.display()
                )));
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

/// Where a worker's trials run.
#[derive(Clone)]
pub enum Training {
    /// Each in one of the worker's slot processes.
    Slots(Arc<Slots>),
    /// Faked on threads of this process, `slots` at once (`bnsweep-worker simulate`).
    Simulated { sim: Simulation, slots: u32 },
}

impl Training {
    fn slots(&self) -> u32 {
        match self {
            Training::Slots(s) => s.total() as u32,
            Training::Simulated { slots, .. } => *slots,
        }
    }

    fn devices(&self) -> Vec<String> {
        match self {
            Training::Slots(s) => s.devices().iter().map(|&d| device::name(d)).collect(),
            Training::Simulated { .. } => vec![device::name(Device::Cpu)],
        }
    }
}

/// What every trial of this worker shares.
struct Context {
    training: Training,
    /// Set on SIGTERM, at the deadline, or for a cancelled sweep: trials stop and are given
    /// back.
    shutdown: Arc<AtomicBool>,
    /// Set by the drain signal: no more trials are taken, and a running trial that would not
    /// end before `hand_back_at` is given back.
    draining: Arc<AtomicBool>,
    /// When running trials are handed back (the deadline less its margin), if there is one.
    hand_back_at: Option<Instant>,
}

use pb::client::Client;

/// Connects to the coordinator at `url`, retrying for up to the patience; with an address
/// file, each retry reads it again (a stale address left by an earlier coordinator gives way
/// to the new one as soon as it is written). Returns the client and the URL it reached.
async fn connect(cfg: &Config, url: &str) -> Result<(Client, String)> {
    let mut url = url.to_string();
    let ca = match &cfg.tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Error::Device(format!("--tls-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let auth = pb::client::Auth::new(cfg.token.as_deref())
        .map_err(|e| Error::Device(format!("--token: {e}")))?;
    let deadline = Instant::now() + cfg.patience;
    let mut wait = Duration::from_millis(100);
    loop {
        let endpoint = pb::client::endpoint(&url, ca.as_deref())
            .map_err(|e| Error::Device(format!("--coordinator {e}")))?;
        match endpoint.connect().await {
            Ok(channel) => return Ok((pb::client::new(channel, auth), url)),
            Err(source) if Instant::now() >= deadline => {
                return Err(Error::Connect {
                    url: url.to_string(),
                    source,
                })
            }
            Err(e) => {
                tracing::warn!("coordinator {url} not reachable yet ({e}); retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                if let Coordinator::File(path) = &cfg.coordinator {
                    if let Some(moved) = read_address(path) {
                        url = moved;
                    }
                }
            }
        }
    }
}

/// Registers; `previous` is the id this worker had (empty the first time), which the
/// coordinator gives back when it still holds leases for it (after its own restart).
async fn register(
    client: &mut Client,
    cfg: &Config,
    previous: &Credentials,
) -> Result<(Credentials, Duration)> {
    let resp = client
        .register(pb::RegisterRequest {
            host: cfg.name.clone(),
            devices: cfg.training.devices(),
            slots: cfg.training.slots(),
            version: pb::PROTOCOL_VERSION.into(),
            previous_worker_id: previous.id.clone(),
            previous_worker_secret: previous.secret.clone(),
        })
        .await?
        .into_inner();
    let previous = &previous.id;
    if previous.is_empty() || *previous == resp.worker_id {
        tracing::info!(worker = %resp.worker_id, "registered with {:?}", cfg.coordinator);
    } else {
        tracing::warn!(
            worker = %resp.worker_id,
            "registered again with {:?} under a new id: the trials running as {previous} stop",
            cfg.coordinator
        );
    }
    Ok((
        Credentials {
            id: resp.worker_id,
            secret: resp.worker_secret,
        },
        Duration::from_millis(u64::from(resp.poll_interval_ms.max(50))),
    ))
}

/// A registration: the worker's id and the secret its calls carry.
#[derive(Clone, Default)]
struct Credentials {
    id: String,
    secret: String,
}

/// Runs until the coordinator says the sweep is done and no trial of ours is left.
///
/// On SIGTERM (or Ctrl-C), or at its deadline, it takes no more trials, gives its running
/// trials back to the coordinator (they run again elsewhere, not counted as failures) and
/// exits. On its drain signal it takes no more trials, lets its running trials end (giving
/// back at once those that would not end before the deadline) and exits.
pub async fn run(cfg: Config) -> Result<Exit> {
    let (mut client, mut url) = connect(&cfg, &cfg.coordinator.url(cfg.patience).await?).await?;
    let (id, mut poll_every) = register(&mut client, &cfg, &Credentials::default()).await?;
    let me = Arc::new(Identity {
        client: Mutex::new(client.clone()),
        id: Mutex::new(id),
        leases: Mutex::new(Vec::new()),
        patience: cfg.patience,
    });
    let running = Arc::new(AtomicUsize::new(0));
    let wake = Arc::new(Notify::new());
    let ctx = Arc::new(Context {
        training: cfg.training.clone(),
        shutdown: Arc::new(AtomicBool::new(false)),
        draining: Arc::new(AtomicBool::new(false)),
        hand_back_at: cfg.deadline.map(|d| d.hand_back_at()),
    });
    watch_for_the_end(&cfg, &ctx, &wake)?;
    let mut cancelled = false;
    let mut retired: Option<String> = None;
    let mut last_contact = Instant::now();
    loop {
        let busy = running.load(Ordering::SeqCst) as u32;
        let leaving = ctx.shutdown.load(Ordering::SeqCst) || ctx.draining.load(Ordering::SeqCst);
        if busy == 0 {
            if let Some(reason) = retired.take() {
                return Err(Error::Retired(reason));
            }
        }
        let taking = !leaving && retired.is_none();
        let credentials = me.credentials();
        let request = pb::PollWorkRequest {
            worker_id: credentials.id,
            worker_secret: credentials.secret,
            free_slots: if taking {
                cfg.training.slots().saturating_sub(busy)
            } else {
                0
            },
            running: me.leases(),
        };
        let asked = Instant::now();
        let mut sweep_done = false;
        match client.poll_work(request).await {
            Ok(resp) => {
                last_contact = Instant::now();
                let resp = resp.into_inner();
                sweep_done = resp.sweep_done;
                if resp.stop && !cancelled {
                    tracing::warn!("the sweep was cancelled: giving running trials back");
                    cancelled = true;
                    ctx.shutdown.store(true, Ordering::SeqCst);
                }
                if resp.retired && retired.is_none() {
                    tracing::error!("taken out of rotation: {}", resp.reason);
                    retired = Some(resp.reason.clone());
                }
                for assignment in resp.trials {
                    running.fetch_add(1, Ordering::SeqCst);
                    me.lease(&assignment, true);
                    if let Training::Simulated { sim, .. } = &cfg.training {
                        sim.record_dispatch(asked.elapsed());
                    }
                    let (me, ctx) = (me.clone(), ctx.clone());
                    let (running, wake) = (running.clone(), wake.clone());
                    tokio::spawn(async move {
                        run_trial(&me, assignment, ctx).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        wake.notify_one();
                    });
                }
                if resp.sweep_done && running.load(Ordering::SeqCst) == 0 {
                    tracing::info!("sweep done; exiting");
                    return Ok(Exit::Finished);
                }
            }
            Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                return Err(s.into())
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::warn!(
                    "coordinator does not know this worker ({}); registering again",
                    s.message()
                );
                let previous = me.credentials();
                let (id, every) = register(&mut client, &cfg, &previous).await?;
                poll_every = every;
                *me.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
            }
            Err(s) if s.metadata().contains_key(pb::WAITING_ON_DISK) => {
                last_contact = Instant::now(); // up, and waiting for disk space
                tracing::warn!("{}; waiting", s.message());
            }
            Err(s) if last_contact.elapsed() > cfg.patience => return Err(s.into()),
            Err(s) => {
                tracing::warn!("poll failed: {}; retrying", s.message());
                // A coordinator found through its address file may have moved (requeued):
                // follow the file. The next poll then registers again with it.
                if let Coordinator::File(path) = &cfg.coordinator {
                    if let Some(moved) = read_address(path).filter(|u| *u != url) {
                        tracing::warn!(
                            "the coordinator's address is now {moved} ({})",
                            path.display()
                        );
                        if let Ok((c, reached)) = connect(&cfg, &moved).await {
                            client = c;
                            *me.client.lock().unwrap_or_else(|e| e.into_inner()) = client.clone();
                            url = reached;
                        }
                    }
                }
            }
        }
        // Leaving, with every trial ended and its outcome told (or past telling): this poll
        // said whether the sweep is done.
        if leaving && running.load(Ordering::SeqCst) == 0 {
            return Ok(if cancelled || sweep_done {
                tracing::info!("stopped; nothing is left to run");
                Exit::Finished
            } else {
                tracing::info!(
                    "stopped with the sweep unfinished; exit code {EXIT_WORK_LEFT} (run again)"
                );
                Exit::WorkLeft
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_every) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Starts the tasks that end the worker's time: SIGTERM or Ctrl-C and the deadline stop it
/// (running trials are handed back), the drain signal drains it.
fn watch_for_the_end(cfg: &Config, ctx: &Arc<Context>, wake: &Arc<Notify>) -> Result<()> {
    {
        let (shutdown, wake) = (ctx.shutdown.clone(), wake.clone());
        tokio::spawn(async move {
            stop_signal().await;
            tracing::warn!("stopping: giving running trials back to the coordinator");
            shutdown.store(true, Ordering::SeqCst);
            wake.notify_one();
        });
    }
    if let (Some(at), Some(deadline)) = (ctx.hand_back_at, cfg.deadline) {
        tracing::info!(
            "deadline in {}: running trials are handed back {} s before it",
            describe_wait(at.saturating_duration_since(Instant::now()) + deadline.margin),
            deadline.margin.as_secs()
        );
        let (shutdown, wake) = (ctx.shutdown.clone(), wake.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            tracing::warn!("the deadline is near: giving running trials back to the coordinator");
            shutdown.store(true, Ordering::SeqCst);
            wake.notify_one();
        });
    }
    if let Some(signal) = cfg.drain_signal {
        let kind = tokio::signal::unix::SignalKind::from_raw(signal);
        let mut drain = tokio::signal::unix::signal(kind)
            .map_err(|e| Error::Device(format!("--drain-signal {signal}: {e}")))?;
        let (draining, wake) = (ctx.draining.clone(), wake.clone());
        tokio::spawn(async move {
            while drain.recv().await.is_some() {
                if !draining.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "draining: taking no more trials; running trials end, or are handed \
                         back if they would not end before the deadline"
                    );
                    wake.notify_one();
                }
            }
        });
    }
    Ok(())
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

/// Whether a trial `started` that has done `done` of its `total` steps will still be running
/// at `until`, extrapolating its pace so far (from its start, so that its setup counts).
/// Unknown (no step done yet) counts as ending in time.
fn would_overrun(started: Instant, done: u64, total: u64, now: Instant, until: Instant) -> bool {
    if done == 0 || done >= total {
        return false;
    }
    let per_step = now.saturating_duration_since(started).as_secs_f64() / done as f64;
    let left = Duration::from_secs_f64(per_step * (total - done) as f64);
    now + left > until
}

/// Who this worker is to the coordinator, and the attempts it holds: shared by the poll loop
/// and the trials.
struct Identity {
    /// The client of the coordinator now (replaced when its address file moves).
    client: Mutex<Client>,
    id: Mutex<Credentials>,
    /// Attempts running, or ended without their outcome acknowledged: listed in every poll.
    leases: Mutex<Vec<pb::AttemptRef>>,
    /// How long the coordinator may stay unreachable.
    patience: Duration,
}

impl Identity {
    fn id(&self) -> String {
        self.credentials().id
    }

    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn credentials(&self) -> Credentials {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn leases(&self) -> Vec<pb::AttemptRef> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds (`held`) or drops an attempt.
    fn lease(&self, a: &pb::TrialAssignment, held: bool) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.retain(|l| l.trial_id != a.trial_id || l.attempt != a.attempt);
        if held {
            leases.push(pb::AttemptRef {
                trial_id: a.trial_id.clone(),
                attempt: a.attempt,
            });
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        } => {}
    }
}

async fn run_trial(me: &Identity, a: pb::TrialAssignment, ctx: Arc<Context>) {
    // The registration that got the trial speaks for it to its end.
    let as_who = me.credentials();
    run_attempt(me, &as_who, &a, ctx).await;
    me.lease(&a, false);
}

/// Trains one attempt and reports it; returns once the outcome is acknowledged or cannot be.
async fn run_attempt(
    me: &Identity,
    as_who: &Credentials,
    a: &pb::TrialAssignment,
    ctx: Arc<Context>,
) {
    let worker_id = as_who.id.as_str();
    let span = tracing::info_span!("trial", trial = %a.trial_id, attempt = a.attempt);
    let _enter = span.enter();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    // Set when the coordinator no longer leases this attempt to us: training stops.
    let abandon = Arc::new(AtomicBool::new(false));
    // Set while draining when the attempt would not end before the deadline.
    let give_back = Arc::new(AtomicBool::new(false));
    let stop = {
        let (shutdown, abandoned) = (ctx.shutdown.clone(), abandon.clone());
        let give_back = give_back.clone();
        move || {
            if shutdown.load(Ordering::SeqCst) {
                Some("the worker is stopping".to_string())
            } else if abandoned.load(Ordering::SeqCst) {
                Some("the coordinator no longer leases this attempt".to_string())
            } else if give_back.load(Ordering::SeqCst) {
                Some("the worker drains and the trial would not end before its deadline".into())
            } else {
                None
            }
        }
    };
    let started = Instant::now();
    let total_steps = a.spec.as_ref().map_or(0, |s| s.steps);
    let mut steps_done = 0u64;
    let device = match &ctx.training {
        Training::Slots(slots) => {
            let mut slot = slots.take().await;
            let device = slot.device;
            let (slots, a) = (slots.clone(), a.clone());
            tokio::spawn(async move {
                slots.train(&mut slot, &a, stop, &tx).await;
                slots.put(slot);
            });
            device
        }
        Training::Simulated { sim, .. } => {
            let (spec, pace) = (a.spec.clone().unwrap_or_default(), sim.step);
            std::thread::spawn(move || {
                let emit = |row| {
                    let _ = tx.send(Msg::Row(row));
                };
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    simulate::train(&spec, pace, emit, stop)
                }))
                .unwrap_or_else(|_| Err(Error::Crashed("the simulation panicked".into())));
                let _ = tx.send(Msg::End(result));
            });
            Device::Cpu
        }
    };
    tracing::info!("starting on {}", device::name(device));

    let mut batch = pb::MetricsBatch {
        worker_id: worker_id.to_string(),
        worker_secret: as_who.secret.clone(),
        trial_id: a.trial_id.clone(),
        attempt: a.attempt,
        ..Default::default()
    };
    let mut seq = 0u64;
    let mut last_send = Instant::now();
    let result = loop {
        let msg = tokio::time::timeout(BATCH_WAIT, rx.recv()).await;
        let end = match msg {
            Ok(Some(Msg::Row(row))) => {
                match row {
                    Row::Train(r) => {
                        steps_done = steps_done.max(r.step);
                        batch.train.push(r)
                    }
                    Row::Eval(r) => batch.eval.push(r),
                    Row::Layer(r) => batch.layers.push(r),
                    Row::Landscape(r) => batch.landscape.push(r),
                    Row::Activation(r) => batch.activations.push(r),
                }
                None
            }
            Ok(Some(Msg::End(result))) => Some(result),
            Ok(None) => Some(Err(Error::Crashed("the trainer vanished".into()))),
            Err(_) => None,
        };
        if let Some(until) = ctx.hand_back_at {
            let now = Instant::now();
            if ctx.draining.load(Ordering::SeqCst)
                && !give_back.load(Ordering::SeqCst)
                && would_overrun(started, steps_done, total_steps, now, until)
            {
                tracing::warn!(
                    "handing the trial back: at step {steps_done} of {total_steps} it would not \
                     end before the deadline"
                );
                give_back.store(true, Ordering::SeqCst);
            }
        }
        let rows = batch.train.len()
            + batch.eval.len()
            + batch.layers.len()
            + batch.landscape.len()
            + batch.activations.len();
        let due = rows >= BATCH_ROWS
            || (rows > 0 && last_send.elapsed() >= BATCH_WAIT)
            || (end.is_some() && rows > 0);
        if due {
            batch.seq = seq;
            let next = pb::MetricsBatch {
                worker_id: batch.worker_id.clone(),
                worker_secret: batch.worker_secret.clone(),
                trial_id: batch.trial_id.clone(),
                attempt: batch.attempt,
                ..Default::default()
            };
            let sending = std::mem::replace(&mut batch, next);
            if let Err(e) = send_metrics(me, worker_id, sending).await {
                tracing::error!("abandoning the trial: {e}");
                abandon.store(true, Ordering::SeqCst);
                return;
            }
            seq += 1;
            last_send = Instant::now();
        }
        if let Some(result) = end {
            break result;
        }
    };
    let (status, error, retryable) = match &result {
        Ok(Ending::Completed) => (pb::TrialStatus::Completed, String::new(), false),
        Ok(Ending::Diverged) => (pb::TrialStatus::Diverged, String::new(), false),
        Err(e) => (pb::TrialStatus::Failed, e.to_string(), e.retryable()),
    };
    let handed_back = matches!(result, Err(Error::Stopped(_)));
    match &result {
        Ok(_) => tracing::info!("ended: {}", status.as_str_name()),
        Err(Error::Stopped(why)) => tracing::warn!("handed back ({why})"),
        Err(e) => tracing::error!("failed: {e}"),
    }
    let outcome = pb::TrialOutcome {
        worker_id: worker_id.to_string(),
        worker_secret: as_who.secret.clone(),
        trial_id: a.trial_id.clone(),
        attempt: a.attempt,
        status: status as i32,
        error,
        retryable,
        device: device::name(device),
        batches_sent: seq,
        handed_back,
    };
    if let Err(e) = retry(me, worker_id, || {
        let mut c = me.client();
        let o = outcome.clone();
        async move { c.finish_trial(o).await.map(|_| ()) }
    })
    .await
    {
        tracing::error!("could not report the outcome: {e}");
    }
}

async fn send_metrics(me: &Identity, worker_id: &str, batch: pb::MetricsBatch) -> Result<()> {
    retry(me, worker_id, || {
        let mut c = me.client();
        let b = batch.clone();
        async move { c.report_metrics(b).await.map(|_| ()) }
    })
    .await
}

/// Retries a call of an attempt while the coordinator is unreachable or busy, or does not
/// know this worker while it registers again under the same id (the coordinator restarted),
/// for up to the worker's patience. Any other answer is final.
async fn retry<F, Fut>(me: &Identity, worker_id: &str, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut deadline = Instant::now() + me.patience;
    let mut wait = Duration::from_millis(100);
    loop {
        let s = match call().await {
            Ok(()) => return Ok(()),
            Err(s) => s,
        };
        // A cut connection shows as UNAVAILABLE, CANCELLED (a call in flight when it closed)
        // or UNKNOWN; the coordinator itself never answers CANCELLED or DEADLINE_EXCEEDED.
        let passing = matches!(
            s.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Unknown
        ) || (s.code() == Code::NotFound && me.id() == worker_id);
        if !passing || Instant::now() >= deadline {
            return Err(s.into());
        }
        if s.metadata().contains_key(pb::WAITING_ON_DISK) {
            // The coordinator answered: it waits for disk space, not gone.
            deadline = Instant::now() + me.patience;
        }
        tracing::warn!(
            "coordinator busy, unreachable or restarting ({}); retrying",
            s.message()
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_overruns_when_its_pace_so_far_ends_it_after_the_deadline() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        // 100 of 1000 steps in 10 s: 90 s left.
        assert!(would_overrun(
            t0,
            100,
            1000,
            now,
            now + Duration::from_secs(89)
        ));
        assert!(!would_overrun(
            t0,
            100,
            1000,
            now,
            now + Duration::from_secs(91)
        ));
        // No step yet: not known, kept; every step done: it ends now.
        assert!(!would_overrun(t0, 0, 1000, now, now));
        assert!(!would_overrun(t0, 1000, 1000, now, now));
    }

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
        for bad in ["TERM", "SIGINT", "9", "FOO", "0", "99"] {
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
