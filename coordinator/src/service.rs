//! The gRPC service: each handler checks its request, makes one change through the
//! [`Scheduler`], and writes result files outside the scheduler's lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bnsweep_proto as pb;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::results::ResultsDir;
use crate::scheduler::{Finished, Scheduler};

/// Largest number of rows one metric batch may carry.
pub const MAX_ROWS_PER_BATCH: usize = 100_000;

/// What the handlers share.
pub struct Shared {
    pub scheduler: Mutex<Scheduler>,
    pub results: ResultsDir,
    /// Held while `trials.parquet` is rewritten, so that two rewrites never interleave; holds
    /// when it was last rewritten.
    write_lock: Mutex<Instant>,
    /// Set when the records changed since `trials.parquet` was last rewritten.
    dirty: AtomicBool,
    /// Trials that ended while the disk took no writes (full): they wait here (their rows in
    /// their journals) and are written once it does.
    unwritten: Mutex<Vec<Finished>>,
    /// Set while the disk refuses writes, so that it is said once, not at every write.
    disk_full: AtomicBool,
    /// However many trials end at once (every worker's, when they run in step), only so many
    /// are written at a time, so that the memory their writers take is bounded as well as
    /// each writer's (`ResultsDir::write_trial`).
    writing: Permits,
}

/// A counting semaphore for blocking threads.
struct Permits {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One of the [`Permits`], given back when dropped.
struct Permit<'a>(&'a Permits);

impl Permits {
    /// Trials' tables written at once: twice the cores (writing is encoding and compressing,
    /// and syncing, which the others overlap), at least 8.
    fn for_writing() -> Permits {
        let n = std::thread::available_parallelism().map_or(8, |n| (2 * n.get()).max(8));
        Permits {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a permit.
    fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// How often `trials.parquet` is rewritten at most while trials end; the log of ended trials
/// covers the time between.
const REWRITE_EVERY: Duration = Duration::from_secs(1);

impl Shared {
    pub fn new(scheduler: Scheduler, results: ResultsDir) -> Arc<Shared> {
        Arc::new(Shared {
            scheduler: Mutex::new(scheduler),
            results,
            write_lock: Mutex::new(Instant::now()),
            dirty: AtomicBool::new(true),
            unwritten: Mutex::new(Vec::new()),
            disk_full: AtomicBool::new(false),
            writing: Permits::for_writing(),
        })
    }

    /// Notes that `trials.parquet` is behind the records.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Notes how a write went: a full (or failing) disk is said once, with the directory,
    /// and so is its recovery. Storage errors are kept from stopping the coordinator.
    pub fn storage<T>(&self, written: Result<T>) -> Result<Option<T>> {
        match written {
            Ok(v) => {
                if self.disk_full.swap(false, Ordering::SeqCst) {
                    eprintln!(
                        "bnsweep: {} takes writes again; carrying on",
                        self.results.dir().display()
                    );
                }
                Ok(Some(v))
            }
            Err(e) if e.is_storage() => {
                if !self.disk_full.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "bnsweep: cannot write to {} ({e}); keeping every row in the journal and answering workers UNAVAILABLE until it takes writes again (free some space)",
                        self.results.dir().display()
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The answer to a call that could not write: UNAVAILABLE on a full disk (said once), so
    /// that the worker backs off and retries; the error's own code otherwise.
    pub fn refuse(&self, e: Error) -> Status {
        let dir = self.results.dir().display().to_string();
        match self.storage(Err::<(), Error>(e)) {
            Ok(_) => {
                let mut s = Status::unavailable(format!(
                    "the coordinator cannot write to {dir} now (disk full?): try again later"
                ));
                // The coordinator is there, only waiting: workers do not count this against
                // their patience.
                s.metadata_mut()
                    .insert(pb::WAITING_ON_DISK, "1".parse().expect("ASCII"));
                s
            }
            Err(e) => e.into(),
        }
    }

    /// Writes the trials that ended while the disk was full, now that it may take them.
    pub fn write_unwritten(&self) -> Result<()> {
        let waiting =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner()));
        let mut waiting = waiting.into_iter();
        while let Some(f) = waiting.next() {
            if let Err(e) = self.persist(f) {
                // Another kind of failure (a read-only file system): the rest keep waiting.
                self.unwritten
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(waiting);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Rewrites `trials.parquet` when the records changed and it was last rewritten over
    /// [`REWRITE_EVERY`] ago.
    pub fn write_trials_if_due(&self) -> Result<()> {
        let due = self.dirty.load(Ordering::SeqCst)
            && self
                .write_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                >= REWRITE_EVERY;
        if due {
            self.write_trials()?;
        }
        Ok(())
    }

    pub fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites `trials.parquet` from the current records.
    pub fn write_trials(&self) -> Result<()> {
        let mut last = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty.store(false, Ordering::SeqCst);
        let records = self.scheduler().records().to_vec();
        *last = Instant::now();
        self.results
            .write_trials(&records)
            .inspect_err(|_| self.touch())
    }

    /// Writes a trial that just ended and logs it, then counts it as done. A trial whose
    /// files cannot be written ends `failed` with the reason; on a full disk it waits instead
    /// (its rows in its journal) and is written once the disk takes writes.
    pub fn persist(&self, finished: Finished) -> Result<()> {
        let record = self.scheduler().records()[finished.index].clone();
        let written = {
            let _permit = self.writing.take();
            self.results.write_trial(&record, &finished.tally)
        };
        let written = match self.storage(written) {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                self.unwritten
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(finished);
                return Ok(());
            }
            Err(e) => Err(e),
        };
        let record = {
            let mut s = self.scheduler();
            if let Err(e) = &written {
                s.fail_unwritten(finished.index, format!("writing results: {e}"));
            }
            s.records()[finished.index].clone()
        };
        // On a full disk the line waits: trials.parquet records the trial once it is rewritten.
        let logged = self.storage(self.results.log_ended(&record));
        if logged.is_ok() {
            self.results
                .journal()
                .end(&record.trial.id, record.attempts);
        }
        // Done last: once every trial is, the sweep ends and its journal is removed, which
        // must not find this trial's journal still in use.
        self.scheduler().persisted(finished.index);
        self.touch();
        logged?;
        written
    }

    /// Removes the journals of attempts that ended without a result.
    pub fn end_journals(&self) {
        let ended = self.scheduler().take_ended();
        for (trial, attempt) in ended {
            self.results.journal().end(&trial, attempt);
        }
    }
}

pub struct CoordinatorService {
    shared: Arc<Shared>,
    sweep: String,
    started: Instant,
}

impl CoordinatorService {
    /// Waits, off the async threads, until a journal write is on the disk; batches of many
    /// workers share one sync (group commit).
    async fn sync(&self, ticket: crate::results::journal::Ticket) -> Result<(), Status> {
        let shared = self.shared.clone();
        let synced = tokio::task::spawn_blocking(move || shared.results.journal().sync(ticket))
            .await
            .map_err(|e| Status::internal(format!("journal sync: {e}")))?;
        synced.map_err(|e| self.shared.refuse(e))
    }

    pub fn new(shared: Arc<Shared>, sweep: &str) -> Self {
        CoordinatorService {
            shared,
            sweep: sweep.to_string(),
            started: Instant::now(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Where the sweep stands (`bnsweep status`, `bnsweep list`).
    pub fn status_now(&self) -> pb::StatusResponse {
        let s = self.shared.scheduler();
        let p = s.progress();
        pb::StatusResponse {
            sweep: self.sweep.clone(),
            total: p.total as u32,
            queued: p.queued as u32,
            running: p.running as u32,
            completed: p.completed as u32,
            diverged: p.diverged as u32,
            failed: p.failed as u32,
            fraction: p.fraction,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            workers: s.worker_status(Instant::now()),
            dir: self.shared.results.dir().display().to_string(),
            cancelled: s.is_cancelled(),
            priority: 0,
            finished: s.is_done(),
        }
    }
}

fn require(cond: bool, what: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::InvalidArgument(what.to_string()))
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    pb::auth::same(a.as_bytes(), b.as_bytes())
}

fn check_id(name: &str, id: &str) -> Result<()> {
    require(
        !id.is_empty() && id.len() <= 128,
        &format!("`{name}` must be 1 to 128 characters"),
    )
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    #[tracing::instrument(name = "register", skip_all, fields(host = %req.get_ref().host))]
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        if req.version != pb::PROTOCOL_VERSION {
            return Err(Error::VersionMismatch {
                worker: req.version,
                coordinator: pb::PROTOCOL_VERSION.into(),
            }
            .into());
        }
        require(
            req.slots >= 1 && req.slots <= 1024,
            "`slots` must be in [1, 1024]",
        )?;
        check_id("host", &req.host)?;
        require(
            req.previous_worker_id.len() <= 128 && req.previous_worker_secret.len() <= 128,
            "`previous_worker_id` and its secret must be at most 128 characters",
        )?;
        let mut s = self.shared.scheduler();
        let (worker_id, worker_secret) = s.register_again(
            &req.host,
            &req.previous_worker_id,
            &req.previous_worker_secret,
            Instant::now(),
        );
        tracing::info!(worker = %worker_id, devices = ?req.devices, slots = req.slots, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            worker_id,
            poll_interval_ms: s.policy.poll_interval.as_millis() as u32,
            worker_secret,
        }))
    }

    #[tracing::instrument(name = "poll", skip_all, fields(sweep = %self.sweep, worker = %req.get_ref().worker_id))]
    async fn poll_work(
        &self,
        req: Request<pb::PollWorkRequest>,
    ) -> Result<Response<pb::PollWorkResponse>, Status> {
        let req = req.into_inner();
        check_id("worker_id", &req.worker_id)?;
        require(req.free_slots <= 1024, "`free_slots` must be <= 1024")?;
        require(
            req.running.len() <= 1024,
            "`running` lists at most 1024 attempts",
        )?;
        for a in &req.running {
            check_id("running.trial_id", &a.trial_id)?;
        }
        let resp = {
            let mut s = self.shared.scheduler();
            s.authenticate(&req.worker_id, &req.worker_secret)?;
            let resp = s.poll(&req.worker_id, req.free_slots, &req.running, Instant::now())?;
            for (n, t) in resp.trials.iter().enumerate() {
                // Journaled before the worker hears of it: a restarted coordinator knows the
                // lease. Not synced here: the attempt's first batch syncs its file, header
                // included, before it is acknowledged; a lease lost to a power loss before
                // that holds no rows, and its attempt is refused and run again.
                let begun = self.shared.results.journal().begin(&pb::JournalHeader {
                    trial_id: t.trial_id.clone(),
                    attempt: t.attempt,
                    worker_id: req.worker_id.clone(),
                    worker_secret: s.secret_of(&req.worker_id),
                    host: s.host_of(&req.worker_id).unwrap_or_default(),
                    started_at_ms: crate::results::millis(SystemTime::now()),
                });
                if let Err(e) = begun {
                    // The worker never hears of these trials: they go back as they were, not
                    // counted as attempts (a full disk is not the trial's fault), and the
                    // worker is told to come back later (UNAVAILABLE when the disk is full).
                    for (k, back) in resp.trials.iter().enumerate().rev() {
                        if k < n {
                            self.shared
                                .results
                                .journal()
                                .end(&back.trial_id, back.attempt);
                        }
                        let _ = s.unlease(&req.worker_id, &back.trial_id, back.attempt);
                    }
                    drop(s);
                    return Err(self.shared.refuse(e));
                }
            }
            resp
        };
        self.shared.end_journals();
        if resp.retired {
            tracing::warn!(worker = %req.worker_id, "out of rotation: {}", resp.reason);
        }
        for t in &resp.trials {
            tracing::info!(trial = %t.trial_id, attempt = t.attempt, worker = %req.worker_id, "trial handed out");
        }
        Ok(Response::new(resp))
    }

    #[tracing::instrument(name = "metrics", skip_all, fields(
        sweep = %self.sweep,
        trial = %req.get_ref().trial_id,
        attempt = req.get_ref().attempt,
        seq = req.get_ref().seq,
    ))]
    async fn report_metrics(
        &self,
        req: Request<pb::MetricsBatch>,
    ) -> Result<Response<pb::MetricsAck>, Status> {
        let mut batch = req.into_inner();
        check_id("worker_id", &batch.worker_id)?;
        check_id("trial_id", &batch.trial_id)?;
        require(
            batch.train.len()
                + batch.eval.len()
                + batch.layers.len()
                + batch.landscape.len()
                + batch.activations.len()
                <= MAX_ROWS_PER_BATCH,
            &format!("a metric batch holds at most {MAX_ROWS_PER_BATCH} rows"),
        )?;
        let ticket = {
            let mut s = self.shared.scheduler();
            s.authenticate(&batch.worker_id, &std::mem::take(&mut batch.worker_secret))?;
            // On disk before it is acknowledged: no acknowledged row is lost to a crash.
            let ticket = if s.is_new_batch(&batch)? {
                let appended = self.shared.results.journal().append(&batch);
                appended.map_err(|e| self.shared.refuse(e))?
            } else {
                // A resend: acknowledged again only once what was written is on the disk
                // (its first acknowledgement may have been lost to a failed sync).
                self.shared.results.journal().barrier()
            };
            s.metrics(batch, Instant::now())?;
            ticket
        };
        self.sync(ticket).await?;
        Ok(Response::new(pb::MetricsAck {}))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let asked = req.into_inner().sweep;
        if !asked.is_empty() && asked != self.sweep {
            return Err(Error::UnknownSweep(asked).into());
        }
        Ok(Response::new(self.status_now()))
    }

    async fn submit(
        &self,
        _req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        Err(Status::unimplemented(format!(
            "this coordinator serves the one sweep `{}` (bnsweep serve); submit sweep files to a `bnsweep server`",
            self.sweep
        )))
    }

    async fn list_sweeps(
        &self,
        _req: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: vec![self.status_now()],
        }))
    }

    #[tracing::instrument(name = "cancel", skip_all, fields(sweep = %self.sweep))]
    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let asked = req.into_inner().sweep;
        if !asked.is_empty() && asked != self.sweep {
            return Err(Error::UnknownSweep(asked).into());
        }
        let running = self.shared.scheduler().cancel();
        tracing::warn!("sweep cancelled; {running} running trial(s) are being given back");
        Ok(Response::new(pb::CancelResponse {
            running: running as u32,
        }))
    }

    #[tracing::instrument(name = "finish", skip_all, fields(
        sweep = %self.sweep,
        trial = %req.get_ref().trial_id,
        attempt = req.get_ref().attempt,
    ))]
    async fn finish_trial(
        &self,
        req: Request<pb::TrialOutcome>,
    ) -> Result<Response<pb::FinishAck>, Status> {
        let outcome = req.into_inner();
        check_id("worker_id", &outcome.worker_id)?;
        check_id("trial_id", &outcome.trial_id)?;
        let finished = {
            let mut s = self.shared.scheduler();
            s.authenticate(&outcome.worker_id, &outcome.worker_secret)?;
            s.finish(&outcome, Instant::now())?
        };
        let status = pb::TrialStatus::try_from(outcome.status)
            .map(|s| s.as_str_name())
            .unwrap_or("?");
        self.shared.end_journals();
        match finished {
            None if outcome.handed_back => {
                tracing::warn!(trial = %outcome.trial_id, attempt = outcome.attempt, "attempt handed back by its worker; trial re-queued (no retry used)")
            }
            None => {
                tracing::warn!(trial = %outcome.trial_id, error = %outcome.error, "attempt failed; trial re-queued")
            }
            Some(f) => {
                tracing::info!(trial = %outcome.trial_id, status, "trial ended");
                let shared = self.shared.clone();
                tokio::task::spawn_blocking(move || shared.persist(f))
                    .await
                    .map_err(|e| Status::internal(format!("writing results: {e}")))??;
            }
        }
        Ok(Response::new(pb::FinishAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn no_more_trials_are_written_at_once_than_there_are_permits() {
        let permits = Permits {
            free: Mutex::new(2),
            freed: std::sync::Condvar::new(),
        };
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _permit = permits.take();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(*permits.free.lock().unwrap(), 2, "every permit given back");
    }
}
