//! One attempt, from its start to its reported outcome: started on the worker's runner, its
//! rows sent in numbered batches, handed back while the worker drains if it would not end
//! before the deadline, and its outcome reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tch::Device;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::session::{retry, Credentials, Identity};
use super::Context;
use crate::device;
use crate::error::{Error, Result};
use crate::runner::{Msg, Stop};
use crate::trainer::{Ending, Row};

/// Rows a metric batch carries at most, and how long rows wait before they are sent.
const BATCH_ROWS: usize = 5000;
const BATCH_WAIT: Duration = Duration::from_millis(1000);

/// Runs a leased attempt to its end, then drops its lease.
pub(super) async fn run_trial(me: &Identity, a: pb::TrialAssignment, ctx: Arc<Context>) {
    // The registration that got the trial speaks for it to its end.
    let as_who = me.credentials();
    let span = tracing::info_span!("trial", trial = %a.trial_id, attempt = a.attempt);
    run_attempt(me, &as_who, &a, ctx).instrument(span).await;
    me.lease(&a, false);
}

/// Why the agent stops an attempt of its own accord (the worker stopping is the other why).
#[derive(Default)]
struct Flags {
    /// Set when the coordinator no longer leases this attempt to us: training stops.
    abandon: AtomicBool,
    /// Set while draining when the attempt would not end before the deadline.
    give_back: AtomicBool,
}

/// Trains one attempt and reports it; returns once the outcome is acknowledged or cannot be.
async fn run_attempt(
    me: &Identity,
    as_who: &Credentials,
    a: &pb::TrialAssignment,
    ctx: Arc<Context>,
) {
    let flags = Arc::new(Flags::default());
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let stop = stop_when(&ctx, &flags);
    let device = ctx.runner.clone().start(a.clone(), stop, tx).await;
    tracing::info!("starting on {}", device::name(device));
    if let Some((result, batches_sent)) = stream_rows(me, as_who, a, &ctx, &flags, rx).await {
        report_outcome(me, as_who, a, device, result, batches_sent).await;
    }
}

/// The attempt's stop condition: the worker stops, the lease is lost, or the drain gives the
/// attempt back.
fn stop_when(ctx: &Context, flags: &Arc<Flags>) -> Stop {
    let (shutdown, flags) = (ctx.shutdown.clone(), flags.clone());
    Box::new(move || {
        if shutdown.load(Ordering::SeqCst) {
            Some("the worker is stopping".to_string())
        } else if flags.abandon.load(Ordering::SeqCst) {
            Some("the coordinator no longer leases this attempt".to_string())
        } else if flags.give_back.load(Ordering::SeqCst) {
            Some("the worker drains and the trial would not end before its deadline".into())
        } else {
            None
        }
    })
}

/// Sends the attempt's rows to the coordinator in numbered batches until it ends. Returns how
/// it ended and how many batches were sent, or `None` when a batch could not be sent: the
/// attempt is then abandoned, and its outcome not reported.
async fn stream_rows(
    me: &Identity,
    as_who: &Credentials,
    a: &pb::TrialAssignment,
    ctx: &Context,
    flags: &Flags,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) -> Option<(Result<Ending>, u64)> {
    let started = Instant::now();
    let total_steps = a.spec.as_ref().map_or(0, |s| s.steps);
    let mut steps_done = 0u64;
    let mut batcher = Batcher::new(as_who, a);
    loop {
        let end = match tokio::time::timeout(BATCH_WAIT, rx.recv()).await {
            Ok(Some(Msg::Row(row))) => {
                if let Row::Train(r) = &row {
                    steps_done = steps_done.max(r.step);
                }
                batcher.push(row);
                None
            }
            Ok(Some(Msg::End(result))) => Some(result),
            Ok(None) => Some(Err(Error::Crashed("the trainer vanished".into()))),
            Err(_) => None,
        };
        hand_back_if_late(ctx, flags, started, steps_done, total_steps);
        if batcher.due(end.is_some()) {
            if let Err(e) = send_metrics(me, &as_who.id, batcher.take()).await {
                tracing::error!("abandoning the trial: {e}");
                flags.abandon.store(true, Ordering::SeqCst);
                return None;
            }
            batcher.sent();
        }
        if let Some(result) = end {
            return Some((result, batcher.seq));
        }
    }
}

/// While the worker drains, gives the attempt back once its pace so far says that it would
/// not end before the hand-back time.
fn hand_back_if_late(ctx: &Context, flags: &Flags, started: Instant, done: u64, total: u64) {
    let Some(until) = ctx.hand_back_at else {
        return;
    };
    if ctx.draining.load(Ordering::SeqCst)
        && !flags.give_back.load(Ordering::SeqCst)
        && would_overrun(started, done, total, Instant::now(), until)
    {
        tracing::warn!(
            "handing the trial back: at step {done} of {total} it would not end before the \
             deadline"
        );
        flags.give_back.store(true, Ordering::SeqCst);
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

/// An attempt's rows on their way to the coordinator, in numbered batches.
struct Batcher {
    /// The rows held; its ids say whose they are.
    batch: pb::MetricsBatch,
    /// The number of the next batch: the batches sent so far.
    seq: u64,
    last_send: Instant,
}

impl Batcher {
    fn new(as_who: &Credentials, a: &pb::TrialAssignment) -> Batcher {
        Batcher {
            batch: pb::MetricsBatch {
                worker_id: as_who.id.clone(),
                worker_secret: as_who.secret.clone(),
                trial_id: a.trial_id.clone(),
                attempt: a.attempt,
                ..Default::default()
            },
            seq: 0,
            last_send: Instant::now(),
        }
    }

    fn push(&mut self, row: Row) {
        self.batch.push(row);
    }

    /// Whether the rows held go now: there are enough of them, they waited long enough, or
    /// the attempt `ending` sends its last.
    fn due(&self, ending: bool) -> bool {
        let rows = self.batch.row_count();
        rows >= BATCH_ROWS
            || (rows > 0 && self.last_send.elapsed() >= BATCH_WAIT)
            || (ending && rows > 0)
    }

    /// The rows held, as the next batch; the batcher starts an empty one.
    fn take(&mut self) -> pb::MetricsBatch {
        let next = pb::MetricsBatch {
            worker_id: self.batch.worker_id.clone(),
            worker_secret: self.batch.worker_secret.clone(),
            trial_id: self.batch.trial_id.clone(),
            attempt: self.batch.attempt,
            ..Default::default()
        };
        let mut batch = std::mem::replace(&mut self.batch, next);
        batch.seq = self.seq;
        batch
    }

    /// The batch taken last was acknowledged.
    fn sent(&mut self) {
        self.seq += 1;
        self.last_send = Instant::now();
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

/// Logs how the attempt ended and reports it, retrying while the coordinator is away.
async fn report_outcome(
    me: &Identity,
    as_who: &Credentials,
    a: &pb::TrialAssignment,
    device: Device,
    result: Result<Ending>,
    batches_sent: u64,
) {
    let (status, error, retryable) = match &result {
        Ok(ending) => (ending.status(), String::new(), false),
        Err(e) => (pb::TrialStatus::Failed, e.to_string(), e.retryable()),
    };
    match &result {
        Ok(_) => tracing::info!("ended: {}", status.as_str_name()),
        Err(Error::Stopped(why)) => tracing::warn!("handed back ({why})"),
        Err(e) => tracing::error!("failed: {e}"),
    }
    let outcome = pb::TrialOutcome {
        worker_id: as_who.id.clone(),
        worker_secret: as_who.secret.clone(),
        trial_id: a.trial_id.clone(),
        attempt: a.attempt,
        status: status as i32,
        error,
        retryable,
        device: device::name(device),
        batches_sent,
        handed_back: matches!(result, Err(Error::Stopped(_))),
    };
    if let Err(e) = retry(me, &as_who.id, || {
        let mut c = me.client();
        let o = outcome.clone();
        async move { c.finish_trial(o).await.map(|_| ()) }
    })
    .await
    {
        tracing::error!("could not report the outcome: {e}");
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
    fn batches_are_numbered_and_go_when_full_or_at_the_end() {
        let who = Credentials {
            id: "w".into(),
            secret: "s".into(),
        };
        let a = pb::TrialAssignment {
            trial_id: "t".into(),
            attempt: 2,
            ..Default::default()
        };
        let mut b = Batcher::new(&who, &a);
        assert!(!b.due(true), "nothing to send");
        b.push(Row::Eval(pb::EvalRow::default()));
        assert!(!b.due(false) && b.due(true));
        let first = b.take();
        assert_eq!(
            (first.seq, first.eval.len(), b.batch.row_count()),
            (0, 1, 0)
        );
        assert_eq!(
            (first.worker_id.as_str(), first.trial_id.as_str()),
            ("w", "t")
        );
        b.sent();
        for step in 1..=BATCH_ROWS as u64 {
            b.push(Row::Train(pb::TrainRow {
                step,
                ..Default::default()
            }));
        }
        assert!(b.due(false));
        let second = b.take();
        assert_eq!(
            (second.seq, second.train.len(), second.attempt),
            (1, BATCH_ROWS, 2)
        );
    }
}
