//! The long-running coordinator (`bnsweep server`): any number of sweeps, each served by the
//! machinery of `bnsweep serve` (a [`CoordinatorService`] over its results directory
//! `DATA/<sweep>/`, with the same journal, resume and exactly-once rules), and one pool of
//! workers that takes trials from all of them.
//!
//! Workers register once, here; a sweep learns of a worker the first time the worker polls
//! it. On the wire a trial's id is `<sweep>/<trial id>`, which workers treat as opaque, so
//! that workers need nothing new. Each poll lets every sweep hear from the worker (its
//! heartbeat there), then fills the worker's free slots: sweeps of a higher `priority` first;
//! among sweeps of equal priority one trial each in turn, beginning one sweep further on at
//! every poll, so that a large sweep does not starve a small one. A worker that stops
//! polling is forgotten after the worker timeout, so that the registry holds the workers
//! alive now.
//!
//! `bnsweep cancel --sweep S` takes S's running attempts back at once (see
//! [`crate::scheduler::Scheduler::recall`]) and marks its directory (`.cancelled`), so that a
//! restart leaves it cancelled; `bnsweep submit --resume` takes it up again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use pb::coordinator_server::Coordinator as _;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::registry::{new_secret, Ids};
use crate::results::ResultsDir;
use crate::scheduler::Policy;
use crate::service::CoordinatorService;
use crate::sweep::Sweep;

/// Separates a sweep's name from a trial id on the wire (`<sweep>/<trial id>`); sweep names
/// never hold it.
const SEP: char = '/';

/// The file in a sweep's directory that says it was cancelled.
const CANCELLED: &str = ".cancelled";

/// The file in a sweep's directory that says it finished: taken up at a restart, its failed
/// trials stay failed.
const FINISHED: &str = ".finished";

/// One sweep the server holds.
struct Entry {
    name: String,
    /// Its trial ids, sorted: what makes a submitted file "the same sweep".
    ids: Vec<String>,
    priority: i64,
    service: CoordinatorService,
    /// Every trial ended and its files are written.
    finished: AtomicBool,
    /// Said in the log that it stopped (cancelled, with nothing running).
    stopped_said: AtomicBool,
}

impl Entry {
    fn marker(&self, name: &str) -> PathBuf {
        self.service.served().results.dir().join(name)
    }

    fn status(&self) -> pb::StatusResponse {
        pb::StatusResponse {
            priority: self.priority,
            finished: self.finished.load(Ordering::Relaxed),
            ..self.service.status_now()
        }
    }

    /// Hands out trials: neither finished nor cancelled.
    fn active(&self) -> bool {
        !self.finished.load(Ordering::Relaxed) && !self.service.served().scheduler().is_cancelled()
    }
}

/// A registered worker.
struct Member {
    secret: String,
    host: String,
    /// Its last call here.
    last_seen: Instant,
}

/// The registered workers, and how their ids are given out (as a sweep gives them out).
struct Members {
    by_id: HashMap<String, Member>,
    ids: Ids,
}

pub struct Hub {
    data: PathBuf,
    policy: Policy,
    sweeps: RwLock<Vec<Arc<Entry>>>,
    workers: Mutex<Members>,
    /// Where the next poll begins its round of the sweeps.
    turn: AtomicUsize,
}

fn sorted_ids(sweep: &Sweep) -> Vec<String> {
    let mut ids: Vec<String> = sweep.trials.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

impl Hub {
    /// A server on the data directory `data`, taking up every sweep found in it (those that
    /// were running resume; finished ones are listed).
    pub fn open(data: &Path, policy: Policy) -> Result<Arc<Hub>> {
        std::fs::create_dir_all(data).map_err(|e| Error::io(data, e))?;
        let hub = Arc::new(Hub {
            data: data.to_path_buf(),
            policy,
            sweeps: RwLock::new(Vec::new()),
            workers: Mutex::new(Members {
                by_id: HashMap::new(),
                ids: Ids::new(),
            }),
            turn: AtomicUsize::new(0),
        });
        let mut found = Vec::new();
        for entry in std::fs::read_dir(data).map_err(|e| Error::io(data, e))? {
            let dir = entry.map_err(|e| Error::io(data, e))?.path();
            let file = dir.join("sweep.yaml");
            if let Ok(meta) = std::fs::metadata(&file) {
                found.push((meta.modified().ok(), dir, file));
            }
        }
        // In the order they were submitted (their sweep.yaml was written then).
        found.sort();
        for (_, dir, file) in found {
            // A directory that cannot be taken up (unreadable, another version's file, held
            // by another coordinator) is left alone: the other sweeps are served.
            if let Err(e) = hub.take_up(data, &dir, &file) {
                eprintln!("bnsweep: {} left alone: {e}", dir.display());
            }
        }
        Ok(hub)
    }

    /// Takes up the sweep of `dir` at the server's start: resumed, or left finished (its failed
    /// trials too) or cancelled as it was.
    fn take_up(&self, data: &Path, dir: &Path, file: &Path) -> Result<()> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let sweep = Sweep::parse(&file.display().to_string(), &text).map_err(Error::Sweep)?;
        if dir.file_name() != Some(std::ffi::OsStr::new(&sweep.name)) {
            return Err(Error::Refused(format!(
                "it holds sweep `{}`, whose directory would be {}",
                sweep.name,
                data.join(&sweep.name).display()
            )));
        }
        let entry = self.add(&sweep, dir.join(FINISHED).exists())?;
        let cancelled = entry.marker(CANCELLED).exists();
        if cancelled {
            entry.service.served().scheduler().recall();
            entry.service.served().end_journals();
        }
        let p = entry.service.status_now();
        eprintln!(
            "bnsweep: took up sweep `{}`: {} of {} trials done{}",
            sweep.name,
            p.completed + p.diverged + p.failed,
            p.total,
            if cancelled { " (cancelled)" } else { "" }
        );
        Ok(())
    }

    /// Opens the sweep's results directory (resuming what it holds; `finished`: its failed
    /// trials stay failed) and serves it.
    fn add(&self, sweep: &Sweep, finished: bool) -> Result<Arc<Entry>> {
        let (results, resume) = ResultsDir::open(&self.data.join(&sweep.name), sweep)?;
        let how = crate::server::Opening {
            policy: self.policy.clone(),
            remote: true,
            keep_failed: finished,
        };
        let shared = crate::server::open(sweep, results, resume, how)?;
        let entry = Arc::new(Entry {
            name: sweep.name.clone(),
            ids: sorted_ids(sweep),
            priority: sweep.priority,
            service: CoordinatorService::new(shared, &sweep.name),
            finished: Default::default(),
            stopped_said: Default::default(),
        });
        self.sweeps.write().expect("sweeps").push(entry.clone());
        Ok(entry)
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.sweeps.read().expect("sweeps").clone()
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>> {
        self.entries()
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::UnknownSweep(name.to_string()))
    }

    /// The sweep and the sweep's own trial id of a trial id on the wire.
    fn route(&self, wire_id: &str) -> Result<(Arc<Entry>, String)> {
        let (sweep, id) = wire_id
            .split_once(SEP)
            .ok_or_else(|| Error::UnknownTrial(wire_id.to_string()))?;
        Ok((self.entry(sweep)?, id.to_string()))
    }

    /// Where every sweep stands, in the order they were submitted.
    pub fn statuses(&self) -> Vec<pb::StatusResponse> {
        self.entries().iter().map(|e| e.status()).collect()
    }

    /// The state of the sweep `name`, if the server holds it.
    pub fn shared_of(&self, name: &str) -> Option<Arc<crate::served::ServedSweep>> {
        let e = self.entry(name).ok()?;
        Some(e.service.served().clone())
    }

    /// The upkeep of every sweep not yet finished ([`crate::server::upkeep`]); says when one
    /// finishes. Silent workers are forgotten.
    pub fn upkeep(&self) {
        self.forget_silent(Instant::now());
        for e in self.entries() {
            if e.finished.load(Ordering::Relaxed) {
                continue;
            }
            match crate::server::upkeep(e.service.served()) {
                Ok(u) if u.finished => {
                    let marked = crate::results::write_atomic(&e.marker(FINISHED), b"");
                    if let Err(err) = marked {
                        tracing::warn!(sweep = %e.name, "{err}");
                    }
                    e.finished.store(true, Ordering::Relaxed);
                    let p = &u.progress;
                    eprintln!(
                        "bnsweep: sweep `{}` done: {} completed, {} diverged, {} failed",
                        e.name, p.completed, p.diverged, p.failed
                    );
                }
                Ok(u) if u.cancelled => {
                    if !e.stopped_said.swap(true, Ordering::Relaxed) {
                        if let Err(err) = e.service.served().write_trials() {
                            tracing::warn!(sweep = %e.name, "{err}");
                        }
                        eprintln!(
                            "bnsweep: sweep `{}` cancelled: {} of {} trials done; `bnsweep submit --resume` takes it up",
                            e.name,
                            u.progress.finished(),
                            u.progress.total
                        );
                    }
                }
                Ok(_) => e.stopped_said.store(false, Ordering::Relaxed),
                Err(err) => tracing::warn!(sweep = %e.name, "{err}"),
            }
        }
    }

    /// Calls the upkeep a few times a second, for as long as the server runs.
    pub async fn keep_up(self: Arc<Hub>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let hub = self.clone();
            let _ = tokio::task::spawn_blocking(move || hub.upkeep()).await;
        }
    }

    /// Checks a worker's call and notes that it was heard from; its host.
    fn authenticate(&self, worker_id: &str, secret: &str) -> Result<String> {
        let mut workers = self.workers.lock().expect("workers");
        let w = workers
            .by_id
            .get_mut(worker_id)
            .ok_or_else(|| Error::UnknownWorker(worker_id.to_string()))?;
        if !pb::auth::same(w.secret.as_bytes(), secret.as_bytes()) {
            return Err(Error::WrongSecret(worker_id.to_string()));
        }
        w.last_seen = Instant::now();
        Ok(w.host.clone())
    }

    /// Forgets the workers that have not polled for longer than the worker timeout (a sweep
    /// still running has declared them lost by then), so that the server holds the workers
    /// alive now, not every worker it ever saw. One that comes back is told at its next poll
    /// that it is unknown and registers again: it gets its id back where a sweep still holds
    /// it with its secret (a finished sweep does not expire its workers), a new one otherwise.
    fn forget_silent(&self, now: Instant) {
        let timeout = self.policy.worker_timeout;
        let mut workers = self.workers.lock().expect("workers");
        workers.by_id.retain(|id, w| {
            let alive = now.saturating_duration_since(w.last_seen) <= timeout;
            if !alive {
                tracing::info!(worker = %id, host = %w.host, "worker forgotten (silent for over {timeout:?})");
            }
            alive
        });
    }

    /// Workers registered and not yet forgotten (see `upkeep`).
    pub fn registered_workers(&self) -> usize {
        self.workers.lock().expect("workers").by_id.len()
    }

    /// A worker's id and secret: the ones it had when this server (or, after a restart, one
    /// of its sweeps' journals) still knows them with that secret, else new ones, never an
    /// id a sweep knows.
    fn register(&self, host: &str, previous: &str, previous_secret: &str) -> (String, String) {
        let mut workers = self.workers.lock().expect("workers");
        let Members { by_id, ids } = &mut *workers;
        if !previous.is_empty() {
            let known_here = by_id
                .get(previous)
                .is_some_and(|w| pb::auth::same(w.secret.as_bytes(), previous_secret.as_bytes()));
            let known_to_a_sweep = self.entries().iter().any(|e| {
                e.service
                    .served()
                    .scheduler()
                    .workers()
                    .knows(previous, previous_secret)
            });
            if known_here || (known_to_a_sweep && !previous_secret.is_empty()) {
                let member = Member {
                    secret: previous_secret.to_string(),
                    host: host.to_string(),
                    last_seen: Instant::now(),
                };
                by_id.insert(previous.to_string(), member);
                return (previous.to_string(), previous_secret.to_string());
            }
        }
        let id = ids.mint(host, |id| {
            id == previous
                || by_id.contains_key(id)
                || self
                    .entries()
                    .iter()
                    .any(|e| e.service.served().scheduler().workers().contains(id))
        });
        let secret = new_secret();
        let member = Member {
            secret: secret.clone(),
            host: host.to_string(),
            last_seen: Instant::now(),
        };
        by_id.insert(id.clone(), member);
        (id, secret)
    }
}

/// The gRPC face of a [`Hub`].
pub struct HubService(pub Arc<Hub>);

impl HubService {
    /// Polls one sweep for up to `want` trials on behalf of the worker of `req`, passing it
    /// the attempts the worker runs there and those `given` to it earlier in this same poll
    /// (else the sweep would take them for lost); returns the trials, their ids made
    /// `<sweep>/<id>`.
    /// A sweep that cannot hand out (its disk is full), is cancelled, or has taken the worker
    /// out of its rotation gives none.
    async fn ask(
        &self,
        e: &Entry,
        req: &pb::PollWorkRequest,
        host: &str,
        want: u32,
        given: &[pb::TrialAssignment],
    ) -> Vec<pb::TrialAssignment> {
        // The attempts the worker runs and those given to it in this poll, as (wire id, attempt).
        let listed = req.running.iter().map(|a| (&a.trial_id, a.attempt));
        let given = given.iter().map(|t| (&t.trial_id, t.attempt));
        let running = listed
            .chain(given)
            .filter_map(|(wire_id, attempt)| {
                let (sweep, id) = wire_id.split_once(SEP)?;
                (sweep == e.name).then(|| pb::AttemptRef {
                    trial_id: id.to_string(),
                    attempt,
                })
            })
            .collect();
        e.service.served().scheduler().admit(
            &req.worker_id,
            &req.worker_secret,
            host,
            Instant::now(),
        );
        let asked = e
            .service
            .poll_work(Request::new(pb::PollWorkRequest {
                worker_id: req.worker_id.clone(),
                worker_secret: req.worker_secret.clone(),
                free_slots: want,
                running,
            }))
            .await;
        match asked {
            Ok(r) => {
                let mut trials = r.into_inner().trials;
                for t in &mut trials {
                    t.trial_id = format!("{}{SEP}{}", e.name, t.trial_id);
                }
                trials
            }
            Err(status) => {
                tracing::warn!(sweep = %e.name, "{}", status.message());
                Vec::new()
            }
        }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for HubService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        crate::service::check_registration(&r)?;
        let (worker_id, worker_secret) =
            self.0
                .register(&r.host, &r.previous_worker_id, &r.previous_worker_secret);
        tracing::info!(worker = %worker_id, devices = ?r.devices, slots = r.slots, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id,
            poll_interval_ms: self.0.policy.poll_interval.as_millis() as u32,
            worker_secret,
        }))
    }

    async fn poll_work(
        &self,
        req: Request<pb::PollWorkRequest>,
    ) -> Result<Response<pb::PollWorkResponse>, Status> {
        let req = req.into_inner();
        let host = self.0.authenticate(&req.worker_id, &req.worker_secret)?;
        let sweeps = self.0.entries();
        // Every sweep that hands out trials hears from the worker: its heartbeat there, and
        // the attempts it runs; a finished or cancelled one only while the worker still
        // lists attempts of it.
        let mut active = Vec::new();
        for e in &sweeps {
            let prefix = format!("{}{SEP}", e.name);
            let runs_here = req.running.iter().any(|a| a.trial_id.starts_with(&prefix));
            let hands_out = e.active();
            if runs_here || hands_out {
                self.ask(e, &req, &host, 0, &[]).await;
            }
            if hands_out {
                active.push(e.clone());
            }
        }
        // Highest priority first; within a priority, the sweeps that hand out take turns,
        // the first of them one further on at every poll.
        active.sort_by_key(|e| std::cmp::Reverse(e.priority));
        let turn = self.0.turn.fetch_add(1, Ordering::Relaxed);
        let mut free = req.free_slots.min(1024);
        let mut trials = Vec::new();
        for group in active.chunk_by(|a, b| a.priority == b.priority) {
            let mut giving: Vec<&Arc<Entry>> = group.iter().collect();
            let n = giving.len();
            giving.rotate_left(turn % n);
            while free > 0 && !giving.is_empty() {
                let mut still = Vec::new();
                for e in giving {
                    if free == 0 {
                        break;
                    }
                    let got = self.ask(e, &req, &host, 1, &trials).await;
                    if !got.is_empty() {
                        free -= got.len() as u32;
                        trials.extend(got);
                        still.push(e);
                    }
                }
                giving = still;
            }
        }
        Ok(Response::new(pb::PollWorkResponse {
            trials,
            ..Default::default()
        }))
    }

    async fn report_metrics(
        &self,
        req: Request<pb::MetricsBatch>,
    ) -> Result<Response<pb::MetricsAck>, Status> {
        let mut batch = req.into_inner();
        let (e, id) = self.0.route(&batch.trial_id)?;
        batch.trial_id = id;
        e.service.report_metrics(Request::new(batch)).await
    }

    async fn finish_trial(
        &self,
        req: Request<pb::TrialOutcome>,
    ) -> Result<Response<pb::FinishAck>, Status> {
        let mut outcome = req.into_inner();
        let (e, id) = self.0.route(&outcome.trial_id)?;
        outcome.trial_id = id;
        e.service.finish_trial(Request::new(outcome)).await
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let name = req.into_inner().sweep;
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "this coordinator holds several sweeps: name one (`bnsweep list` shows them)"
                    .into(),
            )
            .into());
        }
        Ok(Response::new(self.0.entry(&name)?.status()))
    }

    #[tracing::instrument(name = "cancel", skip_all, fields(sweep = %req.get_ref().sweep))]
    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let name = req.into_inner().sweep;
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "this coordinator holds several sweeps: name the one to cancel".into(),
            )
            .into());
        }
        let e = self.0.entry(&name)?;
        let shared = e.service.served();
        let marked = crate::results::write_atomic(&e.marker(CANCELLED), b"");
        marked.map_err(|err| shared.refuse(err))?;
        let running = shared.scheduler().recall();
        shared.end_journals();
        shared.touch();
        tracing::warn!(sweep = %name, "cancelled; {running} running attempt(s) taken back");
        Ok(Response::new(pb::CancelResponse {
            running: running as u32,
        }))
    }

    #[tracing::instrument(name = "submit", skip_all, fields(file = %req.get_ref().file_name))]
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let req = req.into_inner();
        if req.file_name.len() > 4096 {
            return Err(Error::InvalidArgument("`file_name` is over 4096 bytes".into()).into());
        }
        let sweep = Sweep::parse(&req.file_name, &req.yaml).map_err(Error::Sweep)?;
        let hub = self.0.clone();
        let resume = req.resume;
        let entry = tokio::task::spawn_blocking(move || -> Result<Arc<Entry>> {
            if let Ok(e) = hub.entry(&sweep.name) {
                let dir = e.service.served().results.dir().display().to_string();
                if e.ids != sorted_ids(&sweep) {
                    return Err(Error::SweepExists(format!(
                        "another sweep named `{}` is on this coordinator (results in {dir}): give this one another `name`",
                        sweep.name
                    )));
                }
                if !resume {
                    return Err(Error::SweepExists(format!(
                        "sweep `{}` was submitted already (results in {dir}): `bnsweep submit --resume` takes it up",
                        sweep.name
                    )));
                }
                for name in [CANCELLED, FINISHED] {
                    let marker = e.marker(name);
                    if marker.exists() {
                        std::fs::remove_file(&marker).map_err(|err| Error::io(&marker, err))?;
                    }
                }
                let again = e.service.served().scheduler().take_up();
                if again > 0 {
                    e.finished.store(false, Ordering::Relaxed);
                    e.service.served().touch();
                }
                e.stopped_said.store(false, Ordering::Relaxed);
                return Ok(e);
            }
            hub.add(&sweep, false)
        })
        .await
        .map_err(|e| Status::internal(format!("submitting: {e}")))??;
        let p = entry.service.status_now();
        tracing::info!(sweep = %entry.name, trials = p.total, "sweep submitted");
        Ok(Response::new(pb::SubmitResponse {
            sweep: entry.name.clone(),
            dir: p.dir,
            trials: p.total,
            done: p.completed + p.diverged + p.failed,
        }))
    }

    async fn list_sweeps(
        &self,
        _req: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let sweeps = self.0.entries().iter().map(|e| e.status()).collect();
        Ok(Response::new(pb::ListSweepsResponse { sweeps }))
    }
}
