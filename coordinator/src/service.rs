//! The gRPC service: each handler checks its request, makes one change through the sweep's
//! scheduler ([`crate::served::ServedSweep`]), and writes result files outside its lock.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bnsweep_proto as pb;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::served::ServedSweep;

/// Largest number of rows one metric batch may carry.
pub const MAX_ROWS_PER_BATCH: usize = 100_000;

pub struct CoordinatorService {
    shared: Arc<ServedSweep>,
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

    pub fn new(shared: Arc<ServedSweep>, sweep: &str) -> Self {
        CoordinatorService {
            shared,
            sweep: sweep.to_string(),
            started: Instant::now(),
        }
    }

    pub fn served(&self) -> &Arc<ServedSweep> {
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

/// What every coordinator (`serve`'s, `server`'s) checks of a registration: the worker's
/// version, its slots, its host name and the id and secret it had.
pub fn check_registration(req: &pb::RegisterRequest) -> Result<()> {
    if req.version != pb::PROTOCOL_VERSION {
        return Err(Error::VersionMismatch {
            worker: req.version.clone(),
            coordinator: pb::PROTOCOL_VERSION.into(),
        });
    }
    require(
        req.slots >= 1 && req.slots <= 1024,
        "`slots` must be in [1, 1024]",
    )?;
    check_id("host", &req.host)?;
    require(
        req.previous_worker_id.len() <= 128 && req.previous_worker_secret.len() <= 128,
        "`previous_worker_id` and its secret must be at most 128 characters",
    )
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
        check_registration(&req)?;
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
            s.workers()
                .authenticate(&req.worker_id, &req.worker_secret)?;
            let resp = s.poll(&req.worker_id, req.free_slots, &req.running, Instant::now())?;
            // What each new lease's journal header records of its worker (nothing to copy
            // when the poll hands out no trial).
            let (secret, host) = if resp.trials.is_empty() {
                Default::default()
            } else {
                let workers = s.workers();
                let host = workers.host_of(&req.worker_id).unwrap_or_default();
                (
                    workers.secret_of(&req.worker_id).to_string(),
                    host.to_string(),
                )
            };
            for (n, t) in resp.trials.iter().enumerate() {
                // Journaled before the worker hears of it: a restarted coordinator knows the
                // lease. Not synced here: the attempt's first batch syncs its file, header
                // included, before it is acknowledged; a lease lost to a power loss before
                // that holds no rows, and its attempt is refused and run again.
                let begun = self.shared.results.journal().begin(&pb::JournalHeader {
                    trial_id: t.trial_id.clone(),
                    attempt: t.attempt,
                    worker_id: req.worker_id.clone(),
                    worker_secret: secret.clone(),
                    host: host.clone(),
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
            batch.row_count() <= MAX_ROWS_PER_BATCH,
            &format!("a metric batch holds at most {MAX_ROWS_PER_BATCH} rows"),
        )?;
        let ticket = {
            let mut s = self.shared.scheduler();
            s.workers()
                .authenticate(&batch.worker_id, &std::mem::take(&mut batch.worker_secret))?;
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
            s.workers()
                .authenticate(&outcome.worker_id, &outcome.worker_secret)?;
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
