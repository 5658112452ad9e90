//! The sweep's state, changed in this one place: the queue, which worker holds which trial,
//! what each running attempt has sent (counted: its rows are in its journal), how every trial
//! ended, and the workers it knows (a [`Workers`] registry, changed only through here).
//!
//! The gRPC handlers check a request, call one method here under a lock, and do any file
//! writing outside it. Nothing here does I/O.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bnsweep_proto as pb;

use crate::error::{Error, Result};
use crate::registry::Workers;
use crate::sweep::{Sweep, Trial};
use crate::trial::{Status, Summary, Tally, TrialRecord};

/// A trial that has just ended: what it sent, counted, to be written from its journal before
/// it counts as done.
#[derive(Debug)]
pub struct Finished {
    pub index: usize,
    pub tally: Tally,
}

/// Counts for the progress display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub total: usize,
    pub queued: usize,
    pub running: usize,
    pub completed: usize,
    pub diverged: usize,
    pub failed: usize,
    /// Fraction of all training steps done, finished trials counting whole.
    pub fraction: f64,
    pub workers: usize,
}

impl Progress {
    pub fn finished(&self) -> usize {
        self.completed + self.diverged + self.failed
    }
}

/// Rules the scheduler follows.
#[derive(Debug, Clone)]
pub struct Policy {
    /// A worker not heard from for this long is lost; its trials go back to the queue.
    pub worker_timeout: Duration,
    /// Attempts a trial gets when its failures are the infrastructure's.
    pub max_attempts: u32,
    pub poll_interval: Duration,
    /// A worker whose attempts fail this many times in a row gets no more trials.
    pub max_worker_failures: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            worker_timeout: Duration::from_secs(30),
            max_attempts: 3,
            poll_interval: Duration::from_millis(500),
            max_worker_failures: 3,
        }
    }
}

pub struct Scheduler {
    records: Vec<TrialRecord>,
    by_id: HashMap<String, usize>,
    queue: VecDeque<usize>,
    /// What each running attempt has sent, counted.
    tallies: HashMap<usize, Tally>,
    workers: Workers,
    /// What every trial measures, in wire form.
    measure: Option<pb::MeasureSpec>,
    /// Set by `bnsweep cancel`: nothing more goes out, workers give their trials back.
    cancelled: bool,
    /// Attempts that ended without a result to write (re-queued, lost, given back): their
    /// journals are to be removed. Drained by [`Scheduler::take_ended`].
    ended: Vec<(String, u32)>,
    pub policy: Policy,
}

impl Scheduler {
    pub fn new(sweep: &Sweep, policy: Policy) -> Scheduler {
        let records: Vec<TrialRecord> = sweep
            .trials
            .iter()
            .map(|t| TrialRecord {
                trial: t.clone(),
                status: Status::Queued,
                attempts: 0,
                handed_back: 0,
                summary: Summary::default(),
                last_step: 0,
                persisted: false,
            })
            .collect();
        let by_id = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.trial.id.clone(), i))
            .collect();
        Scheduler {
            queue: (0..records.len()).collect(),
            records,
            by_id,
            tallies: HashMap::new(),
            workers: Workers::new(),
            measure: sweep.measure.as_ref().map(|m| m.to_spec()),
            cancelled: false,
            ended: Vec::new(),
            policy,
        }
    }

    /// Takes over what an earlier run of the same sweep finished: completed and diverged
    /// trials whose files `has_files` finds are not run again; every other trial is queued,
    /// its attempts counted on. Failed trials run again (their cause may be fixed by now),
    /// unless `keep_failed` (a finished sweep of a `bnsweep server` taken up at its restart).
    /// Returns how many trials were taken over.
    pub fn resume(
        &mut self,
        priors: &[crate::trial::Prior],
        keep_failed: bool,
        has_files: impl Fn(&Trial, Status) -> bool,
    ) -> usize {
        let mut restored = 0;
        for p in priors {
            let Some(&i) = self.by_id.get(&p.trial_id) else {
                continue;
            };
            let r = &mut self.records[i];
            r.attempts = p.attempts;
            let status = match p.status {
                Some(s @ (Status::Completed | Status::Diverged)) => s,
                Some(Status::Failed) if keep_failed => Status::Failed,
                _ => continue,
            };
            if status != Status::Failed && !has_files(&r.trial, status) {
                continue;
            }
            r.status = status;
            r.summary = p.summary.clone();
            r.persisted = true;
            self.queue.retain(|&j| j != i);
            restored += 1;
        }
        restored
    }

    /// The workers registered here, to be asked who they are (changed through the scheduler).
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn records(&self) -> &[TrialRecord] {
        &self.records
    }

    /// Registers a new worker: its id.
    pub fn register(&mut self, host: &str, now: Instant) -> String {
        self.register_again(host, "", "", now).0
    }

    /// Registers a worker that had the id `previous` (empty for none) with the secret
    /// `previous_secret`: its id and the secret its calls must carry. It gets that id back
    /// while this sweep still holds it (restored from the journal, or not yet declared lost)
    /// with that secret (or none recorded), and its attempts carry on; otherwise a new id,
    /// never `previous` nor any id of an earlier run (`w<N>-<run tag>-<host>`).
    pub fn register_again(
        &mut self,
        host: &str,
        previous: &str,
        previous_secret: &str,
        now: Instant,
    ) -> (String, String) {
        self.workers
            .register_again(host, previous, previous_secret, now)
    }

    /// Makes a worker that registered elsewhere known here under its id and secret (a
    /// long-running coordinator registers workers once for all its sweeps). A worker this
    /// scheduler knows already keeps its record; one restored from a journal without a secret
    /// takes this one.
    pub fn admit(&mut self, worker_id: &str, secret: &str, host: &str, now: Instant) {
        self.workers.admit(worker_id, secret, host, now);
    }

    /// Hands out up to `free_slots` queued trials to a worker; also its heartbeat. `running`
    /// is every attempt the worker still has: an attempt leased to it and missing there is
    /// lost (its trial goes back to the queue), e.g. one handed out in a response that never
    /// reached the worker.
    pub fn poll(
        &mut self,
        worker_id: &str,
        free_slots: u32,
        running: &[pb::AttemptRef],
        now: Instant,
    ) -> Result<pb::PollWorkResponse> {
        let max_failures = self.policy.max_worker_failures;
        let worker = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| Error::UnknownWorker(worker_id.into()))?;
        worker.heard_from(now);
        let records = &self.records;
        let dropped = worker.keep_attempts(|i| {
            let r = &records[i];
            running
                .iter()
                .any(|a| a.trial_id == r.trial.id && a.attempt == r.attempts)
        });
        for i in dropped {
            let why = format!("worker {worker_id} no longer runs attempt");
            self.lose_attempt(i, &why);
        }
        let worker = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| Error::UnknownWorker(worker_id.into()))?;
        if worker.out_of_rotation(max_failures) {
            let reason = worker.why_out_of_rotation();
            return Ok(pb::PollWorkResponse {
                trials: Vec::new(),
                sweep_done: self.is_done(),
                retired: true,
                reason,
                stop: false,
            });
        }
        if self.cancelled {
            return Ok(pb::PollWorkResponse {
                stop: true,
                ..Default::default()
            });
        }
        let mut out = Vec::new();
        while out.len() < free_slots as usize {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            let r = &mut self.records[i];
            r.status = Status::Running;
            r.attempts += 1;
            r.summary.worker = Some(worker_id.to_string());
            r.summary.device = None;
            r.summary.started_at = Some(SystemTime::now());
            r.last_step = 0;
            worker.lease(i);
            self.tallies.insert(i, Tally::default());
            out.push(pb::TrialAssignment {
                trial_id: r.trial.id.clone(),
                attempt: r.attempts,
                spec: Some(r.trial.config.to_spec(self.measure.clone())),
            });
        }
        Ok(pb::PollWorkResponse {
            trials: out,
            sweep_done: self.is_done(),
            ..Default::default()
        })
    }

    /// Takes back a lease its worker never heard of (its journal could not be begun): the
    /// trial goes back to the front of the queue as if it had not been handed out, no attempt
    /// counted. Leases of one poll are taken back in reverse, which restores the queue's order.
    pub fn unlease(&mut self, worker_id: &str, trial_id: &str, attempt: u32) -> Result<()> {
        let i = self.leased(worker_id, trial_id, attempt)?;
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.drop_attempt(i);
        }
        self.tallies.remove(&i);
        let r = &mut self.records[i];
        r.status = Status::Queued;
        r.attempts -= 1;
        if r.attempts == 0 {
            r.summary.worker = None;
            r.summary.started_at = None;
        }
        self.queue.push_front(i);
        Ok(())
    }

    /// Cancels the sweep: nothing more is handed out; running trials come back as their
    /// workers give them back. Returns how many are running.
    pub fn cancel(&mut self) -> usize {
        self.cancelled = true;
        self.progress().running
    }

    /// Cancels the sweep and takes every running attempt back at once, as if its worker had
    /// handed it back (no retry used, its rows discarded, its trial queued for a resume): one
    /// sweep of a long-running coordinator stops while its workers go on with other sweeps.
    /// The workers learn it from their next call about the attempt (refused: not leased),
    /// on which they stop training it. Returns how many attempts were taken back.
    pub fn recall(&mut self) -> usize {
        self.cancelled = true;
        let running: Vec<usize> = (0..self.records.len())
            .filter(|&i| self.records[i].status == Status::Running)
            .collect();
        self.workers.drop_attempts(&running);
        for &i in running.iter().rev() {
            self.tallies.remove(&i);
            let r = &mut self.records[i];
            r.handed_back += 1;
            r.status = Status::Queued;
            self.ended.push((r.trial.id.clone(), r.attempts));
            self.queue.push_front(i);
        }
        running.len()
    }

    /// Takes up a cancelled or finished sweep again: its queued trials go out once more, and
    /// so do its failed ones (their cause may be fixed by now). Returns how many failed
    /// trials were queued again.
    pub fn take_up(&mut self) -> usize {
        self.cancelled = false;
        let failed: Vec<usize> = (0..self.records.len())
            .filter(|&i| self.records[i].status == Status::Failed)
            .collect();
        for &i in &failed {
            let r = &mut self.records[i];
            r.status = Status::Queued;
            r.persisted = false;
            self.queue.push_back(i);
        }
        failed.len()
    }

    /// Set by `bnsweep cancel`: the sweep drains.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// True once a cancelled sweep has no trial running any more.
    pub fn is_cancelled_and_idle(&self) -> bool {
        self.cancelled && self.records.iter().all(|r| r.status != Status::Running)
    }

    /// Looks up the running attempt a worker speaks of.
    fn leased(&self, worker_id: &str, trial_id: &str, attempt: u32) -> Result<usize> {
        if !self.workers.contains(worker_id) {
            return Err(Error::UnknownWorker(worker_id.into()));
        }
        let &i = self
            .by_id
            .get(trial_id)
            .ok_or_else(|| Error::UnknownTrial(trial_id.into()))?;
        let r = &self.records[i];
        if r.status != Status::Running
            || r.attempts != attempt
            || r.summary.worker.as_deref() != Some(worker_id)
        {
            return Err(Error::NotLeased {
                trial: trial_id.into(),
                attempt,
                worker: worker_id.into(),
            });
        }
        Ok(i)
    }

    /// True when `batch` is the next one its attempt is due to send; false for one already
    /// received (to be acknowledged and ignored). Errors for a batch from an attempt that is
    /// not leased, or one ahead of the next due.
    pub fn is_new_batch(&self, batch: &pb::MetricsBatch) -> Result<bool> {
        let i = self.leased(&batch.worker_id, &batch.trial_id, batch.attempt)?;
        let next = self.tallies.get(&i).map_or(0, |t| t.next_seq);
        if batch.seq > next {
            return Err(Error::OutOfOrder {
                trial: batch.trial_id.clone(),
                expected: next,
                got: batch.seq,
            });
        }
        let new = batch.seq == next;
        if new {
            self.check_row_counts(i, batch)?;
        }
        Ok(new)
    }

    /// Refuses a batch that would give the attempt more rows of a kind than its trial can
    /// produce (a row per step, an evaluation every `eval_every` steps and at the last, the
    /// measured steps' rows per layer, step size and histogram bin): a worker, buggy or
    /// hostile, cannot make an attempt's tables (or its journal) larger than the sweep asks for.
    fn check_row_counts(&self, i: usize, batch: &pb::MetricsBatch) -> Result<()> {
        let c = &self.records[i].trial.config;
        let steps = c.steps;
        let layers = crate::sweep::config::layer_count(&c.model.name, &c.model.hidden) as u64;
        let m = self.measure.as_ref();
        let measured = m.filter(|m| m.every > 0).map_or(0, |m| steps / m.every);
        let etas = m.filter(|m| m.landscape).map_or(0, |m| m.eta.len() as u64);
        let bins = m
            .filter(|m| m.activations)
            .map_or(0, |m| u64::from(m.bins) + 2);
        let had = self.tallies.get(&i).map(|t| t.rows).unwrap_or_default();
        for table in pb::Table::ALL {
            let max = match table {
                pb::Table::Train => steps,
                pb::Table::Eval => steps / c.eval_every.max(1) + 1,
                pb::Table::Layers => measured * layers,
                pb::Table::Landscape => measured * etas,
                pb::Table::Activations => measured * layers * 2 * bins,
            };
            let n = had[table] + batch.rows_of(table) as u64;
            if n > max {
                return Err(Error::InvalidArgument(format!(
                    "trial {} attempt {}: {n} {} rows, more than the trial can produce ({max})",
                    batch.trial_id,
                    batch.attempt,
                    table.row_name()
                )));
            }
        }
        Ok(())
    }

    /// Takes one batch of rows (journaled by the caller): counts it, keeping none of its rows.
    /// A batch seen before is acknowledged and ignored.
    pub fn metrics(&mut self, batch: pb::MetricsBatch, now: Instant) -> Result<()> {
        let new = self.is_new_batch(&batch)?;
        if let Some(w) = self.workers.get_mut(&batch.worker_id) {
            w.heard_from(now);
            if new {
                w.sent_steps(batch.train.len() as u64);
            }
        }
        if !new {
            return Ok(());
        }
        let i = self.by_id[&batch.trial_id];
        let tally = self.tallies.entry(i).or_default();
        tally.take(&batch);
        if let Some(step) = tally.last_step {
            self.records[i].last_step = step;
        }
        Ok(())
    }

    /// Takes back an attempt that was running when an earlier coordinator stopped, from its
    /// journal (`tally`, what its batches hold): the trial stays leased to the same worker id
    /// with the rows received so far, and that worker has the worker timeout to register again
    /// (with its old id) and carry on before the trial goes back to the queue. Returns false,
    /// the journal being stale, for a trial that is unknown, already taken over as final or
    /// running, or has a newer attempt.
    pub fn reattach(&mut self, header: &pb::JournalHeader, tally: Tally, now: Instant) -> bool {
        let Some(&i) = self.by_id.get(&header.trial_id) else {
            return false;
        };
        let r = &mut self.records[i];
        if r.status != Status::Queued || header.attempt < r.attempts || header.worker_id.is_empty()
        {
            return false;
        }
        r.status = Status::Running;
        r.attempts = header.attempt;
        r.summary.worker = Some(header.worker_id.clone());
        r.summary.started_at =
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(header.started_at_ms));
        r.last_step = tally.last_step.unwrap_or(0);
        self.tallies.insert(i, tally);
        self.queue.retain(|&j| j != i);
        self.workers
            .restore(&header.worker_id, &header.worker_secret, &header.host, now)
            .lease(i);
        true
    }

    /// Ends an attempt. Returns what it sent when the trial is now final (to be written,
    /// then confirmed with [`Scheduler::persisted`]); a retryable failure with attempts left
    /// puts the trial back in the queue instead.
    pub fn finish(&mut self, outcome: &pb::TrialOutcome, now: Instant) -> Result<Option<Finished>> {
        let i = self.leased(&outcome.worker_id, &outcome.trial_id, outcome.attempt)?;
        // Check everything before changing anything: a refused message leaves no trace.
        let status = match pb::TrialStatus::try_from(outcome.status) {
            Ok(pb::TrialStatus::Completed) => Status::Completed,
            Ok(pb::TrialStatus::Diverged) => Status::Diverged,
            Ok(pb::TrialStatus::Failed) => Status::Failed,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "trial outcome status {} is not a final status",
                    outcome.status
                )))
            }
        };
        let tally = self.tallies.remove(&i).unwrap_or_default();
        if outcome.batches_sent != tally.next_seq {
            // Keep the lease: the worker resends the missing batches, then finishes again.
            let expected = tally.next_seq;
            self.tallies.insert(i, tally);
            return Err(Error::OutOfOrder {
                trial: outcome.trial_id.clone(),
                expected,
                got: outcome.batches_sent,
            });
        }
        if let Some(w) = self.workers.get_mut(&outcome.worker_id) {
            w.heard_from(now);
            w.drop_attempt(i);
            if !outcome.handed_back {
                w.ended((status == Status::Failed).then_some(outcome.error.as_str()));
            }
        }
        let max = self.policy.max_attempts;
        let r = &mut self.records[i];
        r.summary.device = Some(outcome.device.clone()).filter(|d| !d.is_empty());
        let retry =
            status == Status::Failed && outcome.retryable && r.attempts - r.handed_back < max;
        if outcome.handed_back || retry {
            // Given back unfinished by a stopping worker (not a failure, no retry used up), or
            // failed in a way worth another attempt: back to the front of the queue.
            if outcome.handed_back {
                r.handed_back += 1;
            } else {
                r.summary.error = Some(outcome.error.clone());
            }
            r.status = Status::Queued;
            self.queue.push_front(i);
            self.ended.push((r.trial.id.clone(), r.attempts));
            return Ok(None);
        }
        r.status = status;
        r.summary.ended_at = Some(SystemTime::now());
        r.summary.error = Some(outcome.error.clone()).filter(|e| !e.is_empty());
        r.summary.final_test_acc = tally.last_test_acc;
        r.summary.final_train_loss = tally.final_train_loss();
        Ok(Some(Finished { index: i, tally }))
    }

    /// Ends a trial whose files could not be written as `failed`, with the reason.
    pub fn fail_unwritten(&mut self, index: usize, error: String) {
        let r = &mut self.records[index];
        r.status = Status::Failed;
        r.summary.error = Some(error);
    }

    /// Marks a final trial's files as written.
    pub fn persisted(&mut self, index: usize) {
        self.records[index].persisted = true;
    }

    /// Ends a running attempt whose worker is gone or dropped it: the trial goes back to the
    /// queue, or fails once it has used up its attempts. Its rows are discarded. Returns what
    /// happened, for the log.
    fn lose_attempt(&mut self, i: usize, why: &str) -> String {
        self.tallies.remove(&i);
        let r = &mut self.records[i];
        self.ended.push((r.trial.id.clone(), r.attempts));
        r.summary.error = Some(format!("{why} {}", r.attempts));
        if r.attempts - r.handed_back < self.policy.max_attempts {
            r.status = Status::Queued;
            self.queue.push_front(i);
            format!(
                "{why} {}: trial {} goes back to the queue",
                r.attempts, r.trial.id
            )
        } else {
            r.status = Status::Failed;
            r.summary.ended_at = Some(SystemTime::now());
            r.persisted = true;
            format!(
                "{why} {}: trial {} failed, {} attempts lost",
                r.attempts, r.trial.id, r.attempts
            )
        }
    }

    /// Attempts that ended without a result since the last call (their journals go).
    pub fn take_ended(&mut self) -> Vec<(String, u32)> {
        std::mem::take(&mut self.ended)
    }

    /// Declares workers not heard from within the timeout lost and re-queues their trials.
    /// Returns what happened, for the log.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.policy.worker_timeout;
        let mut log = Vec::new();
        for (id, w) in self.workers.remove_silent(now, timeout) {
            log.push(format!(
                "worker {id} on {} lost (silent for over {timeout:?})",
                w.host()
            ));
            for &i in w.running() {
                log.push(self.lose_attempt(i, &format!("worker {id} was lost during attempt")));
            }
        }
        log
    }

    /// Bytes the running attempts take in memory for what they sent: their tallies, which do
    /// not grow with their rows.
    pub fn attempt_memory(&self) -> usize {
        self.tallies.values().map(Tally::bytes).sum()
    }

    /// True when every trial is final and written.
    pub fn is_done(&self) -> bool {
        self.records
            .iter()
            .all(|r| r.status.is_final() && r.persisted)
    }

    /// Each registered worker, for `bnsweep status`.
    pub fn worker_status(&self, now: Instant) -> Vec<pb::WorkerStatus> {
        self.workers.status(now, self.policy.max_worker_failures)
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            total: self.records.len(),
            workers: self.workers.len(),
            ..Progress::default()
        };
        let mut steps_done = 0.0;
        for r in &self.records {
            match r.status {
                Status::Queued => p.queued += 1,
                Status::Running => {
                    p.running += 1;
                    steps_done += (r.last_step as f64 / r.trial.config.steps as f64).min(1.0);
                }
                Status::Completed => p.completed += 1,
                Status::Diverged => p.diverged += 1,
                Status::Failed => p.failed += 1,
            }
        }
        steps_done += p.finished() as f64;
        p.fraction = if p.total == 0 {
            1.0
        } else {
            steps_done / p.total as f64
        };
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(trials: usize) -> Sweep {
        let lrs: Vec<String> = (1..=trials)
            .map(|i| format!("{}", i as f64 / 100.0))
            .collect();
        let text = format!(
            "name: s\nparameters:\n  lr: [{}]\ntrain: {{steps: 10}}\n",
            lrs.join(", ")
        );
        Sweep::parse("s.yaml", &text).unwrap()
    }

    fn batch(
        worker: &str,
        trial: &str,
        attempt: u32,
        seq: u64,
        steps: std::ops::Range<u64>,
    ) -> pb::MetricsBatch {
        pb::MetricsBatch {
            worker_id: worker.into(),
            trial_id: trial.into(),
            attempt,
            seq,
            train: steps
                .map(|step| pb::TrainRow {
                    step,
                    loss: 1.0,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn outcome(
        worker: &str,
        trial: &str,
        attempt: u32,
        status: pb::TrialStatus,
        batches: u64,
    ) -> pb::TrialOutcome {
        pb::TrialOutcome {
            worker_id: worker.into(),
            trial_id: trial.into(),
            attempt,
            status: status as i32,
            batches_sent: batches,
            ..Default::default()
        }
    }

    #[test]
    fn trials_go_out_in_order_up_to_the_free_slots() {
        let mut s = Scheduler::new(&sweep(3), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let resp = s.poll(&w, 2, &[], now).unwrap();
        let (got, done) = (resp.trials, resp.sweep_done);
        assert_eq!(got.len(), 2);
        assert!(!done);
        assert_eq!(got[0].trial_id, s.records()[0].trial.id);
        assert_eq!(got[0].attempt, 1);
        assert_eq!(s.progress().running, 2);
        assert!(matches!(
            s.poll("nobody", 1, &[], now),
            Err(Error::UnknownWorker(_))
        ));
    }

    #[test]
    fn a_lease_taken_back_is_as_if_never_handed_out() {
        let mut s = Scheduler::new(&sweep(3), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let got = s.poll(&w, 2, &[], now).unwrap().trials;
        for a in got.iter().rev() {
            s.unlease(&w, &a.trial_id, a.attempt).unwrap();
        }
        assert_eq!(s.progress().running, 0);
        assert!(s.records().iter().all(|r| r.attempts == 0));
        assert!(
            s.unlease(&w, &got[0].trial_id, 1).is_err(),
            "not leased any more"
        );
        // Handed out again in the same order, as first attempts.
        let again = s.poll(&w, 3, &[], now).unwrap().trials;
        let ids = |v: &[pb::TrialAssignment]| -> Vec<(String, u32)> {
            v.iter().map(|a| (a.trial_id.clone(), a.attempt)).collect()
        };
        assert_eq!(ids(&again[..2]), ids(&got));
        assert_eq!(again[2].trial_id, s.records()[2].trial.id);
    }

    #[test]
    fn rows_arrive_exactly_once_and_only_the_leased_attempt_may_send_them() {
        let mut s = Scheduler::new(&sweep(1), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let got = s.poll(&w, 1, &[], now).unwrap().trials;
        let t = got[0].trial_id.clone();
        s.metrics(batch(&w, &t, 1, 0, 1..6), now).unwrap();
        s.metrics(batch(&w, &t, 1, 0, 1..6), now).unwrap(); // a resend: ignored
        assert!(matches!(
            s.metrics(batch(&w, &t, 1, 2, 11..12), now),
            Err(Error::OutOfOrder { expected: 1, .. })
        ));
        assert!(matches!(
            s.metrics(batch(&w, &t, 2, 1, 6..11), now),
            Err(Error::NotLeased { .. })
        ));
        let other = s.register("g", now);
        assert!(matches!(
            s.metrics(batch(&other, &t, 1, 1, 6..11), now),
            Err(Error::NotLeased { .. })
        ));
        s.metrics(batch(&w, &t, 1, 1, 6..11), now).unwrap();
        // Finishing before every batch arrived is refused, and the rows stay.
        let early = outcome(&w, &t, 1, pb::TrialStatus::Completed, 3);
        assert!(matches!(
            s.finish(&early, now),
            Err(Error::OutOfOrder {
                expected: 2,
                got: 3,
                ..
            })
        ));
        let done = s
            .finish(&outcome(&w, &t, 1, pb::TrialStatus::Completed, 2), now)
            .unwrap()
            .unwrap();
        // Counted once each: 10 train rows in 2 batches (the rows themselves are in the
        // journal; `results::tests` checks the tables written from it).
        let tally = &done.tally;
        assert_eq!(
            (
                tally.next_seq,
                tally.rows[pb::Table::Train],
                tally.last_step
            ),
            (2, 10, Some(10))
        );
        assert!(!s.is_done(), "not done until the files are written");
        s.persisted(done.index);
        assert!(s.is_done());
        assert_eq!(s.records()[0].status, Status::Completed);
        assert_eq!(s.records()[0].summary.final_train_loss, Some(1.0));
    }

    #[test]
    fn a_lost_worker_s_trial_runs_again_elsewhere_without_its_rows() {
        let policy = Policy {
            worker_timeout: Duration::from_secs(5),
            ..Policy::default()
        };
        let mut s = Scheduler::new(&sweep(1), policy);
        let t0 = Instant::now();
        let lost = s.register("a", t0);
        let t = s.poll(&lost, 1, &[], t0).unwrap().trials[0]
            .trial_id
            .clone();
        s.metrics(batch(&lost, &t, 1, 0, 1..4), t0).unwrap();
        let later = t0 + Duration::from_secs(4);
        let alive = s.register("b", later);
        assert!(s.expire(later).is_empty());
        s.poll(&alive, 0, &[], later + Duration::from_secs(2))
            .unwrap();
        let log = s.expire(later + Duration::from_secs(2));
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(s.records()[0].status, Status::Queued);
        let again = s
            .poll(&alive, 1, &[], later + Duration::from_secs(2))
            .unwrap()
            .trials;
        assert_eq!(
            (again[0].trial_id.as_str(), again[0].attempt),
            (t.as_str(), 2)
        );
        // The lost worker's late rows are refused; the new attempt starts from batch 0.
        assert!(s.metrics(batch(&lost, &t, 1, 1, 4..6), later).is_err());
        s.metrics(batch(&alive, &t, 2, 0, 1..11), later).unwrap();
        let done = s
            .finish(
                &outcome(&alive, &t, 2, pb::TrialStatus::Completed, 1),
                later,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (done.tally.next_seq, done.tally.rows[pb::Table::Train]),
            (1, 10)
        );
        assert_eq!(s.records()[0].attempts, 2);
    }

    #[test]
    fn failures_retry_only_when_retryable_and_divergence_never() {
        let mut s = Scheduler::new(
            &sweep(3),
            Policy {
                max_attempts: 2,
                ..Policy::default()
            },
        );
        let now = Instant::now();
        let w = s.register("h", now);
        let got = s.poll(&w, 3, &[], now).unwrap().trials;
        let ids: Vec<String> = got.iter().map(|a| a.trial_id.clone()).collect();
        let retry = pb::TrialOutcome {
            retryable: true,
            error: "CUDA out of memory".into(),
            ..outcome(&w, &ids[0], 1, pb::TrialStatus::Failed, 0)
        };
        assert!(s.finish(&retry, now).unwrap().is_none());
        let fatal = pb::TrialOutcome {
            error: "no such directory".into(),
            ..outcome(&w, &ids[1], 1, pb::TrialStatus::Failed, 0)
        };
        assert!(s.finish(&fatal, now).unwrap().is_some());
        assert!(s
            .finish(&outcome(&w, &ids[2], 1, pb::TrialStatus::Diverged, 0), now)
            .unwrap()
            .is_some());
        let second = s.poll(&w, 3, &[], now).unwrap().trials;
        assert_eq!(second.len(), 1);
        assert_eq!(
            (second[0].trial_id.as_str(), second[0].attempt),
            (ids[0].as_str(), 2)
        );
        let retry2 = pb::TrialOutcome {
            attempt: 2,
            ..retry
        };
        assert!(
            s.finish(&retry2, now).unwrap().is_some(),
            "out of attempts: final"
        );
        let statuses: Vec<Status> = s.records().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [Status::Failed, Status::Failed, Status::Diverged]);
        assert_eq!(
            s.records()[0].summary.error.as_deref(),
            Some("CUDA out of memory")
        );
    }

    #[test]
    fn a_worker_that_keeps_failing_is_taken_out_of_rotation_and_hand_backs_cost_no_retry() {
        let policy = Policy {
            max_worker_failures: 2,
            max_attempts: 2,
            ..Policy::default()
        };
        let mut s = Scheduler::new(&sweep(4), policy);
        let now = Instant::now();
        let bad = s.register("bad", now);
        let got = s.poll(&bad, 2, &[], now).unwrap().trials;
        for a in &got {
            let o = pb::TrialOutcome {
                error: "disk full".into(),
                ..outcome(&bad, &a.trial_id, 1, pb::TrialStatus::Failed, 0)
            };
            s.finish(&o, now).unwrap();
        }
        let resp = s.poll(&bad, 2, &[], now).unwrap();
        assert!(resp.retired && resp.trials.is_empty(), "{resp:?}");
        assert!(resp.reason.contains("disk full"), "{}", resp.reason);

        // A stopping worker gives a trial back three times: it is queued again each time and
        // still has its retries.
        let good = s.register("good", now);
        for _ in 0..3 {
            let a = s.poll(&good, 1, &[], now).unwrap().trials.remove(0);
            let o = pb::TrialOutcome {
                handed_back: true,
                retryable: true,
                ..outcome(&good, &a.trial_id, a.attempt, pb::TrialStatus::Failed, 0)
            };
            assert!(s.finish(&o, now).unwrap().is_none());
        }
        let a = s.poll(&good, 1, &[], now).unwrap().trials.remove(0);
        let o = pb::TrialOutcome {
            retryable: true,
            ..outcome(&good, &a.trial_id, a.attempt, pb::TrialStatus::Failed, 0)
        };
        assert!(
            s.finish(&o, now).unwrap().is_none(),
            "one real failure of two allowed: queued again"
        );
        assert!(
            !s.poll(&good, 1, &[], now).unwrap().retired,
            "hand-backs are no failures of the worker"
        );
    }

    #[test]
    fn a_recalled_sweep_takes_its_attempts_back_without_using_a_retry_and_resumes() {
        let mut s = Scheduler::new(&sweep(3), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let got = s.poll(&w, 2, &[], now).unwrap();
        assert_eq!(got.trials.len(), 2);
        assert_eq!(s.recall(), 2);
        assert!(s.is_cancelled_and_idle());
        assert_eq!(s.take_ended().len(), 2, "their journals go");
        // The worker's rows for a recalled attempt are refused: it stops training it.
        let a = &got.trials[0];
        let late = s.metrics(batch(&w, &a.trial_id, a.attempt, 0, 1..2), now);
        assert!(matches!(late, Err(Error::NotLeased { .. })), "{late:?}");
        // Nothing goes out while cancelled; resumed, every trial does, in the old order,
        // and a recalled trial still has all its retries.
        assert!(s.poll(&w, 3, &[], now).unwrap().stop);
        s.take_up();
        let again = s.poll(&w, 3, &[], now).unwrap();
        let ids: Vec<&str> = again.trials.iter().map(|t| t.trial_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                &got.trials[0].trial_id,
                &got.trials[1].trial_id,
                &s.records()[2].trial.id
            ]
        );
        assert_eq!(s.records()[0].attempts - s.records()[0].handed_back, 1);
    }

    fn lease(a: &pb::TrialAssignment) -> pb::AttemptRef {
        pb::AttemptRef {
            trial_id: a.trial_id.clone(),
            attempt: a.attempt,
        }
    }

    #[test]
    fn a_trial_the_worker_does_not_list_as_running_goes_back_to_the_queue() {
        let mut s = Scheduler::new(&sweep(2), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let got = s.poll(&w, 2, &[], now).unwrap().trials;
        // The worker only received the first (the response was cut, say): the second is lost.
        let resp = s.poll(&w, 0, &[lease(&got[0])], now).unwrap();
        assert!(resp.trials.is_empty());
        assert_eq!(s.records()[0].status, Status::Running);
        assert_eq!(s.records()[1].status, Status::Queued);
        assert_eq!(s.take_ended(), vec![(got[1].trial_id.clone(), 1)]);
        let again = s.poll(&w, 1, &[lease(&got[0])], now).unwrap().trials;
        assert_eq!(
            (again[0].trial_id.as_str(), again[0].attempt),
            (got[1].trial_id.as_str(), 2)
        );
    }

    /// A worker that sends more rows than its trial can produce is refused, and nothing of
    /// the batch is taken: the coordinator's memory per attempt is bounded by the sweep.
    #[test]
    fn an_attempt_gets_no_more_rows_than_its_trial_can_produce() {
        let mut s = Scheduler::new(&sweep(1), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let t = s.poll(&w, 1, &[], now).unwrap().trials[0].trial_id.clone();
        s.metrics(batch(&w, &t, 1, 0, 1..8), now).unwrap();
        // 10 steps: 3 more rows fit, 4 do not.
        let too_many = batch(&w, &t, 1, 1, 8..12);
        assert!(matches!(
            s.is_new_batch(&too_many),
            Err(Error::InvalidArgument(m)) if m.contains("11 train rows") && m.contains("(10)")
        ));
        assert!(s.metrics(too_many, now).is_err());
        let evals = pb::MetricsBatch {
            eval: (0..5).map(|_| pb::EvalRow::default()).collect(),
            ..batch(&w, &t, 1, 1, 8..8)
        };
        assert!(
            s.metrics(evals, now).is_err(),
            "10 steps at eval_every 500: 1 evaluation"
        );
        s.metrics(batch(&w, &t, 1, 1, 8..11), now).unwrap();
        let layers = pb::MetricsBatch {
            layers: vec![pb::LayerRow::default()],
            ..batch(&w, &t, 1, 2, 11..11)
        };
        assert!(
            matches!(
                s.metrics(layers, now),
                Err(Error::InvalidArgument(m)) if m.contains("1 layer rows") && m.contains("(0)")
            ),
            "nothing is measured"
        );
    }

    /// The coordinator keeps counts of a running attempt, not its rows: its memory is the same
    /// after 100,000 rows as after 200, and the summary `trials.parquet` records comes out as
    /// computed from every row.
    #[test]
    fn an_attempt_s_memory_does_not_grow_with_its_rows() {
        let text = "name: s\nparameters:\n  lr: [0.1]\ntrain: {steps: 100000, eval_every: 1000}\n";
        let mut s = Scheduler::new(&Sweep::parse("s.yaml", text).unwrap(), Policy::default());
        let now = Instant::now();
        let w = s.register("h", now);
        let t = s.poll(&w, 1, &[], now).unwrap().trials[0].trial_id.clone();
        let (mut losses, mut after_two) = (Vec::new(), 0);
        for seq in 0..1000u64 {
            let mut b = batch(&w, &t, 1, seq, seq * 100 + 1..seq * 100 + 101);
            for r in &mut b.train {
                r.loss = (r.step % 97) as f64 / 7.0;
                losses.push(r.loss);
            }
            if (seq + 1) % 10 == 0 {
                b.eval.push(pb::EvalRow {
                    step: (seq + 1) * 100,
                    test_acc: seq as f64 / 1000.0,
                    ..Default::default()
                });
            }
            s.metrics(b, now).unwrap();
            if seq == 1 {
                after_two = s.attempt_memory();
            }
        }
        assert_eq!(
            s.attempt_memory(),
            after_two,
            "100,000 rows take what 200 did"
        );
        assert!(after_two < 1024, "{after_two} bytes for one attempt");
        let done = s
            .finish(&outcome(&w, &t, 1, pb::TrialStatus::Completed, 1000), now)
            .unwrap()
            .unwrap();
        let summary = &s.records()[done.index].summary;
        let tail = &losses[losses.len() - 50..];
        assert_eq!(
            summary.final_train_loss,
            Some(tail.iter().sum::<f64>() / 50.0)
        );
        assert_eq!(summary.final_test_acc, Some(0.999));
        assert_eq!(s.attempt_memory(), 0);
    }

    #[test]
    fn a_journaled_attempt_carries_on_when_its_worker_registers_again() {
        let policy = Policy {
            worker_timeout: Duration::from_secs(5),
            ..Policy::default()
        };
        let mut s = Scheduler::new(&sweep(2), policy.clone());
        let now = Instant::now();
        let (w, secret) = s.register_again("h", "", "", now);
        let got = s.poll(&w, 2, &[], now).unwrap().trials;
        let t = got[0].trial_id.clone();
        let header = pb::JournalHeader {
            trial_id: t.clone(),
            attempt: 1,
            worker_id: w.clone(),
            worker_secret: secret.clone(),
            host: "h".into(),
            started_at_ms: 1,
        };
        // What its journal holds (in batch order, as it is appended), counted.
        let mut journaled = Tally::default();
        for b in [batch(&w, &t, 1, 0, 1..4), batch(&w, &t, 1, 1, 4..6)] {
            journaled.take(&b);
        }

        // A new coordinator reads the journal.
        let mut s = Scheduler::new(&sweep(2), policy);
        assert!(s.reattach(&header, journaled, now));
        assert!(
            !s.reattach(&header, Tally::default(), now),
            "a trial is taken back once"
        );
        assert_eq!(s.progress().running, 1);
        assert_ne!(
            s.register_again("h", &w, "not its secret", now).0,
            w,
            "only with its secret"
        );
        assert_eq!(
            s.register_again("h", &w, &secret, now),
            (w.clone(), secret.clone()),
            "the worker gets its id back"
        );
        let other = s.register_again("g", "w1-g", "", now).0;
        assert!(other != w && other != "w1-g", "{other}");
        s.metrics(batch(&w, &t, 1, 1, 4..6), now).unwrap(); // a resend: ignored
        s.metrics(batch(&w, &t, 1, 2, 6..11), now).unwrap();
        let done = s
            .finish(&outcome(&w, &t, 1, pb::TrialStatus::Completed, 3), now)
            .unwrap()
            .unwrap();
        let tally = &done.tally;
        assert_eq!(
            (
                tally.next_seq,
                tally.rows[pb::Table::Train],
                tally.last_step
            ),
            (3, 10, Some(10))
        );
        assert_eq!(s.records()[done.index].attempts, 1);

        // A journaled attempt whose worker never comes back goes back to the queue.
        let mut s = Scheduler::new(
            &sweep(2),
            Policy {
                worker_timeout: Duration::from_secs(5),
                ..Policy::default()
            },
        );
        assert!(s.reattach(&header, Tally::default(), now));
        let log = s.expire(now + Duration::from_secs(6));
        assert_eq!(log.len(), 2, "{log:?}");
        let r = &s.records()[s.by_id[&t]];
        assert_eq!((r.status, r.attempts), (Status::Queued, 1));
    }
}
