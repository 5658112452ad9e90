//! The long-running coordinator's handlers in process (`bnsweep server`), on a temporary data
//! directory: the order in which sweeps get a worker's free slots, cancelling, restarts, and
//! forgetting silent workers.

use std::sync::Arc;

use bnsweep::hub::{Hub, HubService};
use bnsweep::scheduler::Policy;
use bnsweep_proto as pb;
use pb::coordinator_server::Coordinator;
use tonic::Request;

/// A sweep named `name` of `trials` trials (learning rates), with `extra` top-level lines.
fn sweep(name: &str, trials: usize, extra: &str) -> pb::SubmitRequest {
    let lrs: Vec<String> = (1..=trials).map(|i| format!("0.{i:03}")).collect();
    pb::SubmitRequest {
        file_name: format!("{name}.yaml"),
        yaml: format!(
            "name: {name}\nparameters:\n  lr: [{}]\ntrain:\n  steps: 3\n{extra}",
            lrs.join(", ")
        ),
        resume: false,
    }
}

async fn server(sweeps: &[pb::SubmitRequest]) -> (HubService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubService(Hub::open(dir.path(), Policy::default()).unwrap());
    for s in sweeps {
        hub.submit(Request::new(s.clone())).await.unwrap();
    }
    (hub, dir)
}

/// A worker: its id, secret, and the attempts it runs (none ends in these tests).
struct Worker {
    id: String,
    secret: String,
    running: Vec<pb::AttemptRef>,
}

async fn register(hub: &HubService) -> Worker {
    register_again(hub, None).await
}

/// Registers a worker that was `previous` (its id and secret) before.
async fn register_again(hub: &HubService, previous: Option<&Worker>) -> Worker {
    let r = hub
        .register(Request::new(pb::RegisterRequest {
            host: "h".into(),
            devices: vec!["cpu".into()],
            slots: 8,
            version: pb::PROTOCOL_VERSION.into(),
            previous_worker_id: previous.map(|w| w.id.clone()).unwrap_or_default(),
            previous_worker_secret: previous.map(|w| w.secret.clone()).unwrap_or_default(),
        }))
        .await
        .unwrap()
        .into_inner();
    Worker {
        id: r.worker_id,
        secret: r.worker_secret,
        running: Vec::new(),
    }
}

/// Sweep `f` of one trial, submitted, handed out to a new worker and failed there (a cause
/// of the trial's, no retry), so that the sweep is finished; the worker.
async fn finished_by_a_failure(hub: &Arc<Hub>) -> Worker {
    let service = HubService(hub.clone());
    service
        .submit(Request::new(sweep("f", 1, "")))
        .await
        .unwrap();
    let mut who = register(&service).await;
    assert_eq!(poll(&service, &mut who, 1).await, ["f"]);
    let outcome = pb::TrialOutcome {
        worker_id: who.id.clone(),
        worker_secret: who.secret.clone(),
        trial_id: who.running[0].trial_id.clone(),
        attempt: 1,
        status: pb::TrialStatus::Failed as i32,
        error: "the data is not there".into(),
        ..Default::default()
    };
    service.finish_trial(Request::new(outcome)).await.unwrap();
    hub.upkeep();
    who
}

/// The sweeps of the trials one poll with `free` slots hands out, in order; the worker runs
/// them from then on (and says so in its next polls).
async fn poll(hub: &HubService, who: &mut Worker, free: u32) -> Vec<String> {
    let r = hub
        .poll_work(Request::new(pb::PollWorkRequest {
            worker_id: who.id.clone(),
            worker_secret: who.secret.clone(),
            free_slots: free,
            running: who.running.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    for t in &r.trials {
        let again = who.running.iter().any(|a| a.trial_id == t.trial_id);
        assert!(!again, "a trial handed out while it runs: {t:?}");
        who.running.push(pb::AttemptRef {
            trial_id: t.trial_id.clone(),
            attempt: t.attempt,
        });
    }
    r.trials
        .iter()
        .map(|t| t.trial_id.split_once('/').unwrap().0.to_string())
        .collect()
}

/// A sweep of 2 trials submitted after one of 50 gets a trial at each of the first polls, so
/// it is done after 4 trials handed out, not after 52.
#[tokio::test]
async fn a_small_sweep_is_not_starved_by_a_large_one_submitted_before_it() {
    let (hub, _dir) = server(&[sweep("large", 50, ""), sweep("small", 2, "")]).await;
    let mut who = register(&hub).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(poll(&hub, &mut who, 1).await);
    }
    assert_eq!(got.iter().filter(|s| *s == "small").count(), 2, "{got:?}");
    // Several free slots in one poll are shared the same way: one trial a sweep in turn.
    let (hub, _dir) = server(&[sweep("large", 50, ""), sweep("small", 2, "")]).await;
    let mut who = register(&hub).await;
    let got = poll(&hub, &mut who, 4).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got.iter().filter(|s| *s == "small").count(), 2, "{got:?}");
}

/// Sweeps of a higher priority fill every free slot first, whenever they were submitted;
/// the lower ones get what is left.
#[tokio::test]
async fn a_higher_priority_goes_first_and_lower_ones_get_what_is_left() {
    let (hub, _dir) = server(&[
        sweep("early", 10, ""),
        sweep("urgent", 3, "priority: 2\n"),
        sweep("later", 10, "priority: -1\n"),
    ])
    .await;
    let mut who = register(&hub).await;
    assert_eq!(poll(&hub, &mut who, 2).await, ["urgent", "urgent"]);
    assert_eq!(poll(&hub, &mut who, 3).await, ["urgent", "early", "early"]);
    // Early's 8 left, then what is left of the slots to the lowest priority.
    let rest = poll(&hub, &mut who, 10).await;
    assert_eq!(rest[..8], ["early"; 8], "{rest:?}");
    assert_eq!(rest[8..], ["later", "later"], "{rest:?}");
}

/// A cancelled sweep hands out nothing, and `submit --resume` takes it up again; the same
/// sweep submitted again without it, or another under its name, is refused.
#[tokio::test]
async fn a_cancelled_sweep_gives_nothing_until_resumed() {
    let (hub, _dir) = server(&[sweep("a", 3, ""), sweep("b", 3, "")]).await;
    let mut who = register(&hub).await;
    let cancel = pb::CancelRequest { sweep: "a".into() };
    hub.cancel(Request::new(cancel)).await.unwrap();
    assert_eq!(poll(&hub, &mut who, 4).await, ["b", "b", "b"]);
    let again = hub
        .submit(Request::new(sweep("a", 3, "")))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");
    let other = hub
        .submit(Request::new(sweep("a", 4, "")))
        .await
        .unwrap_err();
    assert!(
        other.message().contains("another sweep named `a`"),
        "{other:?}"
    );
    let resume = pb::SubmitRequest {
        resume: true,
        ..sweep("a", 3, "")
    };
    hub.submit(Request::new(resume)).await.unwrap();
    assert_eq!(poll(&hub, &mut who, 4).await, ["a", "a", "a"]);
}

/// Sweeps that hand out nothing (cancelled here; finished alike) take no turn: two sweeps of
/// equal priority share the slots evenly however many idle sweeps sit before them.
#[tokio::test]
async fn idle_sweeps_take_no_turn_from_the_ones_that_hand_out() {
    let (hub, _dir) = server(&[
        sweep("c1", 2, ""),
        sweep("c2", 2, ""),
        sweep("c3", 2, ""),
        sweep("a", 20, ""),
        sweep("b", 20, ""),
    ])
    .await;
    for name in ["c1", "c2", "c3"] {
        let cancel = pb::CancelRequest { sweep: name.into() };
        hub.cancel(Request::new(cancel)).await.unwrap();
    }
    let mut who = register(&hub).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(poll(&hub, &mut who, 1).await);
    }
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 5, "{got:?}");
    assert_eq!(got.iter().filter(|s| *s == "b").count(), 5, "{got:?}");
}

/// A finished sweep taken up again at the server's restart stays finished, its failed trial
/// too; `submit --resume` runs that trial again.
#[tokio::test]
async fn a_finished_sweep_stays_finished_across_a_restart_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let hub = Hub::open(dir.path(), Policy::default()).unwrap();
        finished_by_a_failure(&hub).await;
        let s = &hub.statuses()[0];
        assert!(s.finished && s.failed == 1, "{s:?}");
    }
    let hub = Hub::open(dir.path(), Policy::default()).unwrap();
    hub.upkeep();
    let s = &hub.statuses()[0];
    assert!(s.finished && s.failed == 1 && s.queued == 0, "{s:?}");
    let service = HubService(hub.clone());
    let mut who = register(&service).await;
    assert!(poll(&service, &mut who, 1).await.is_empty());
    let resume = pb::SubmitRequest {
        resume: true,
        ..sweep("f", 1, "")
    };
    service.submit(Request::new(resume)).await.unwrap();
    assert_eq!(poll(&service, &mut who, 1).await, ["f"]);
}

/// A server whose workers are lost (and forgotten) after `timeout` without a poll.
fn with_timeout(timeout: std::time::Duration) -> (Arc<Hub>, HubService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        worker_timeout: timeout,
        ..Policy::default()
    };
    let hub = Hub::open(dir.path(), policy).unwrap();
    (hub.clone(), HubService(hub), dir)
}

/// A worker silent for longer than the worker timeout is forgotten (the server holds the
/// workers alive now, not every one it ever saw): its next call is answered NOT_FOUND, and it
/// registers again under a new id. A worker that keeps polling stays.
#[tokio::test]
async fn a_silent_worker_is_forgotten_and_registers_again() {
    let timeout = std::time::Duration::from_secs(1);
    let (hub, service, _dir) = with_timeout(timeout);
    let (silent, mut polling) = (register(&service).await, register(&service).await);
    assert_eq!(hub.registered_workers(), 2);
    // The point of the test is time passing: the polling worker's calls go on meanwhile.
    let until = std::time::Instant::now() + 2 * timeout;
    while std::time::Instant::now() < until {
        poll(&service, &mut polling, 0).await;
        tokio::time::sleep(timeout / 10).await;
    }
    hub.upkeep();
    assert_eq!(hub.registered_workers(), 1);
    poll(&service, &mut polling, 0).await;
    let gone = service
        .poll_work(Request::new(pb::PollWorkRequest {
            worker_id: silent.id.clone(),
            worker_secret: silent.secret.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    let mut again = register_again(&service, Some(&silent)).await;
    assert_ne!(again.id, silent.id);
    poll(&service, &mut again, 0).await;
    assert_eq!(hub.registered_workers(), 2);
}

/// A worker the server forgot while a sweep still holds it (a finished sweep does not expire
/// its workers) gets its id back when it registers again with its secret.
#[tokio::test]
async fn a_forgotten_worker_a_sweep_still_holds_gets_its_id_back() {
    let timeout = std::time::Duration::from_millis(200);
    let (hub, service, _dir) = with_timeout(timeout);
    let who = finished_by_a_failure(&hub).await;
    assert!(hub.statuses()[0].finished);
    // The point of the test is time passing: the worker is silent for twice the timeout.
    tokio::time::sleep(2 * timeout).await;
    hub.upkeep();
    assert_eq!(hub.registered_workers(), 0);
    let again = register_again(&service, Some(&who)).await;
    assert_eq!(
        (again.id, again.secret),
        (who.id.clone(), who.secret.clone())
    );
    assert_eq!(hub.registered_workers(), 1);
}
