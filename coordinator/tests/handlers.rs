//! The gRPC handlers in process, on a temporary results directory: the protocol's rules
//! (who may call what, in which order, with which answer) checked without a socket or a
//! process, through the public request and response messages only.

use bnsweep::results::ResultsDir;
use bnsweep::scheduler::{Policy, Scheduler};
use bnsweep::served::ServedSweep;
use bnsweep::service::CoordinatorService;
use bnsweep::sweep::Sweep;
use bnsweep_proto as pb;
use pb::coordinator_server::Coordinator;
use tonic::{Code, Request};

/// Two trials of three steps.
const TWO_TRIALS: &str =
    "name: handlers\nparameters:\n  lr: [0.1, 0.2]\ntrain:\n  steps: 3\n  eval_every: 3\n";

/// The service of a coordinator of `text`'s sweep, its results in a temporary directory
/// (returned with it: removed when dropped).
fn coordinator(text: &str) -> (CoordinatorService, tempfile::TempDir) {
    let sweep = Sweep::parse("handlers.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let (results, _) = ResultsDir::open(&dir.path().join("out"), &sweep).unwrap();
    let shared = ServedSweep::new(Scheduler::new(&sweep, Policy::default()), results);
    (CoordinatorService::new(shared, &sweep.name), dir)
}

/// A worker's identity: its id and secret.
struct Worker {
    id: String,
    secret: String,
}

async fn register(c: &CoordinatorService, host: &str) -> Worker {
    let r = c
        .register(Request::new(pb::RegisterRequest {
            host: host.into(),
            devices: vec!["cpu".into()],
            slots: 1,
            version: pb::PROTOCOL_VERSION.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.worker_id.is_empty() && !r.worker_secret.is_empty());
    Worker {
        id: r.worker_id,
        secret: r.worker_secret,
    }
}

async fn poll(c: &CoordinatorService, w: &Worker) -> Result<pb::PollWorkResponse, tonic::Status> {
    c.poll_work(Request::new(pb::PollWorkRequest {
        worker_id: w.id.clone(),
        worker_secret: w.secret.clone(),
        free_slots: 1,
        ..Default::default()
    }))
    .await
    .map(tonic::Response::into_inner)
}

/// Batch `seq` of an attempt: train rows for `steps`, and an eval row at the last.
fn batch(w: &Worker, a: &pb::TrialAssignment, seq: u64, steps: &[u64]) -> pb::MetricsBatch {
    pb::MetricsBatch {
        worker_id: w.id.clone(),
        worker_secret: w.secret.clone(),
        trial_id: a.trial_id.clone(),
        attempt: a.attempt,
        seq,
        train: steps
            .iter()
            .map(|&step| pb::TrainRow {
                step,
                loss: 2.0 / step as f64,
                ..Default::default()
            })
            .collect(),
        eval: steps
            .last()
            .map(|&step| pb::EvalRow {
                step,
                test_acc: 0.5,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn outcome(
    w: &Worker,
    a: &pb::TrialAssignment,
    status: pb::TrialStatus,
    batches_sent: u64,
) -> pb::TrialOutcome {
    pb::TrialOutcome {
        worker_id: w.id.clone(),
        worker_secret: w.secret.clone(),
        trial_id: a.trial_id.clone(),
        attempt: a.attempt,
        status: status as i32,
        batches_sent,
        device: "cpu".into(),
        ..Default::default()
    }
}

async fn status(c: &CoordinatorService) -> pb::StatusResponse {
    c.status(Request::new(pb::StatusRequest::default()))
        .await
        .unwrap()
        .into_inner()
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(s) => s.code(),
    }
}

/// Register, poll, report, finish, for both trials: each is handed out once, its rows go to
/// the results directory, and the sweep is done.
#[tokio::test]
async fn a_worker_runs_the_sweep_to_the_end() {
    let (c, dir) = coordinator(TWO_TRIALS);
    let w = register(&c, "box").await;
    let mut seen = Vec::new();
    for done in 1..=2u32 {
        let got = poll(&c, &w).await.unwrap();
        assert!(!got.sweep_done && !got.stop && !got.retired, "{got:?}");
        assert_eq!(got.trials.len(), 1, "one free slot, one trial");
        let a = &got.trials[0];
        assert_eq!(a.attempt, 1);
        assert_eq!(a.spec.as_ref().map(|s| s.steps), Some(3));
        assert!(
            !seen.contains(&a.trial_id),
            "{} handed out twice",
            a.trial_id
        );
        seen.push(a.trial_id.clone());
        let s = status(&c).await;
        assert_eq!((s.total, s.running, s.completed), (2, 1, done - 1));

        c.report_metrics(Request::new(batch(&w, a, 0, &[1, 2])))
            .await
            .unwrap();
        c.report_metrics(Request::new(batch(&w, a, 1, &[3])))
            .await
            .unwrap();
        c.finish_trial(Request::new(outcome(&w, a, pb::TrialStatus::Completed, 2)))
            .await
            .unwrap();
        let s = status(&c).await;
        assert_eq!((s.running, s.completed), (0, done));
        let train = dir.path().join(format!("out/train/{}.parquet", a.trial_id));
        assert!(train.is_file(), "no {}", train.display());
    }
    let s = status(&c).await;
    assert_eq!(
        (s.sweep.as_str(), s.completed, s.queued),
        ("handlers", 2, 0)
    );
    assert_eq!(s.fraction, 1.0);
    assert_eq!(s.workers.len(), 1);
    assert_eq!(
        (s.workers[0].host.as_str(), s.workers[0].finished),
        ("box", 2)
    );
    let last = poll(&c, &w).await.unwrap();
    assert!(last.sweep_done && last.trials.is_empty(), "{last:?}");
}

/// A worker id without its secret (or with another worker's) gets nothing: no trial, no
/// rows taken, no outcome; the rightful worker carries on.
#[tokio::test]
async fn a_wrong_secret_is_permission_denied_everywhere() {
    let (c, _dir) = coordinator(TWO_TRIALS);
    let w = register(&c, "box").await;
    let other = register(&c, "box").await;
    assert_ne!(w.id, other.id, "a second registration is another worker");
    let a = poll(&c, &w).await.unwrap().trials.remove(0);
    for secret in ["", "guessed", other.secret.as_str()] {
        let thief = Worker {
            id: w.id.clone(),
            secret: secret.into(),
        };
        assert_eq!(code(poll(&c, &thief).await), Code::PermissionDenied);
        let rows = batch(&thief, &a, 0, &[1]);
        assert_eq!(
            code(c.report_metrics(Request::new(rows)).await),
            Code::PermissionDenied
        );
        let end = outcome(&thief, &a, pb::TrialStatus::Completed, 0);
        assert_eq!(
            code(c.finish_trial(Request::new(end)).await),
            Code::PermissionDenied
        );
    }
    // Nothing of that reached the trial: its first batch is still seq 0, and it runs still.
    let s = status(&c).await;
    assert_eq!((s.running, s.queued, s.fraction), (1, 1, 0.0));
    c.report_metrics(Request::new(batch(&w, &a, 0, &[1, 2, 3])))
        .await
        .unwrap();
    c.finish_trial(Request::new(outcome(&w, &a, pb::TrialStatus::Completed, 1)))
        .await
        .unwrap();
    assert_eq!(status(&c).await.completed, 1);
}

/// Registration checks its request: the protocol version, the slots, the host; an unknown
/// worker is NOT_FOUND; an empty id INVALID_ARGUMENT.
#[tokio::test]
async fn bad_registrations_and_unknown_workers_are_refused() {
    let (c, _dir) = coordinator(TWO_TRIALS);
    let reg = |version: &str, slots: u32, host: &str| {
        Request::new(pb::RegisterRequest {
            host: host.into(),
            devices: vec!["cpu".into()],
            slots,
            version: version.into(),
            ..Default::default()
        })
    };
    assert_eq!(
        code(c.register(reg("0.0.0-other", 1, "box")).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.register(reg(pb::PROTOCOL_VERSION, 0, "box")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.register(reg(pb::PROTOCOL_VERSION, 1, "")).await),
        Code::InvalidArgument
    );
    let nobody = Worker {
        id: "w99-nobody".into(),
        secret: "s".into(),
    };
    assert_eq!(code(poll(&c, &nobody).await), Code::NotFound);
    let empty = Worker {
        id: String::new(),
        secret: String::new(),
    };
    assert_eq!(code(poll(&c, &empty).await), Code::InvalidArgument);
    assert_eq!(status(&c).await.workers.len(), 0, "no worker got in");
}

/// Metric batches come in order: a resend of the last one is acknowledged again (and not
/// counted twice), a gap or another attempt is FAILED_PRECONDITION, an unknown trial
/// NOT_FOUND; an outcome that does not count every batch sent is refused until it does.
#[tokio::test]
async fn batches_and_outcomes_follow_the_attempt_s_order() {
    let (c, _dir) = coordinator(TWO_TRIALS);
    let w = register(&c, "box").await;
    let a = poll(&c, &w).await.unwrap().trials.remove(0);
    c.report_metrics(Request::new(batch(&w, &a, 0, &[1])))
        .await
        .unwrap();
    c.report_metrics(Request::new(batch(&w, &a, 0, &[1])))
        .await
        .unwrap();
    assert_eq!(
        code(c.report_metrics(Request::new(batch(&w, &a, 2, &[3]))).await),
        Code::FailedPrecondition,
        "a gap"
    );
    let stale = pb::TrialAssignment {
        attempt: 7,
        ..a.clone()
    };
    assert_eq!(
        code(
            c.report_metrics(Request::new(batch(&w, &stale, 1, &[2])))
                .await
        ),
        Code::FailedPrecondition,
        "another attempt"
    );
    let unknown = pb::TrialAssignment {
        trial_id: "t000000000000".into(),
        ..a.clone()
    };
    assert_eq!(
        code(
            c.report_metrics(Request::new(batch(&w, &unknown, 1, &[2])))
                .await
        ),
        Code::NotFound
    );
    let mut too_many = batch(&w, &a, 1, &[]);
    too_many.train = vec![pb::TrainRow::default(); bnsweep::service::MAX_ROWS_PER_BATCH + 1];
    assert_eq!(
        code(c.report_metrics(Request::new(too_many)).await),
        Code::InvalidArgument
    );
    c.report_metrics(Request::new(batch(&w, &a, 1, &[2, 3])))
        .await
        .unwrap();
    // Two batches were taken (the resend was not a third): an outcome saying one, or three,
    // is refused and the lease kept; one with no final status is invalid.
    for wrong in [1, 3] {
        let end = outcome(&w, &a, pb::TrialStatus::Completed, wrong);
        assert_eq!(
            code(c.finish_trial(Request::new(end)).await),
            Code::FailedPrecondition,
            "{wrong} batches"
        );
    }
    let no_status = outcome(&w, &a, pb::TrialStatus::Unspecified, 2);
    assert_eq!(
        code(c.finish_trial(Request::new(no_status)).await),
        Code::InvalidArgument
    );
    assert_eq!(status(&c).await.running, 1, "the lease held");
    c.finish_trial(Request::new(outcome(&w, &a, pb::TrialStatus::Completed, 2)))
        .await
        .unwrap();
    assert_eq!(status(&c).await.completed, 1);
}

/// A trial handed back by a stopping worker is queued again without using up a retry, and
/// goes out again as its next attempt; `Cancel` tells a polling worker to stop.
#[tokio::test]
async fn a_handed_back_trial_goes_out_again_and_cancel_stops_workers() {
    let (c, _dir) = coordinator(TWO_TRIALS);
    let first = register(&c, "first").await;
    let a = poll(&c, &first).await.unwrap().trials.remove(0);
    let back = pb::TrialOutcome {
        retryable: true,
        handed_back: true,
        ..outcome(&first, &a, pb::TrialStatus::Failed, 0)
    };
    c.finish_trial(Request::new(back)).await.unwrap();
    let s = status(&c).await;
    assert_eq!((s.running, s.queued, s.failed), (0, 2, 0));
    let second = register(&c, "second").await;
    let again = poll(&c, &second).await.unwrap().trials.remove(0);
    assert_eq!(again.trial_id, a.trial_id, "back to the front of the queue");
    assert_eq!(again.attempt, a.attempt + 1);
    // The first worker's attempt is over: its rows are refused.
    assert_eq!(
        code(
            c.report_metrics(Request::new(batch(&first, &a, 0, &[1])))
                .await
        ),
        Code::FailedPrecondition
    );

    let cancelled = c
        .cancel(Request::new(pb::CancelRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.running, 1);
    let told = poll(&c, &second).await.unwrap();
    assert!(told.stop && told.trials.is_empty(), "{told:?}");
    let other = poll(&c, &first).await.unwrap();
    assert!(other.stop && other.trials.is_empty(), "{other:?}");
}
