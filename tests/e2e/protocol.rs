//! The coordinator answers malformed, stale and oversized messages with the documented codes,
//! keeps serving, and reports where the sweep stands (`bnsweep status`).

use std::time::Duration;

use bnsweep_e2e::{
    addr_of, bnsweep, check_results, run, serve, serve_at, within, worker_command, Running,
};
use bnsweep_proto as pb;
use pb::coordinator_client::CoordinatorClient;
use tonic::Code;

/// The code of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

#[test]
fn bad_requests_are_refused_and_the_coordinator_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: proto\nparameters:\n  lr: [0.1, 0.2]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 64, test_size: 16}\n  batch_size: 16\n  steps: 3\n";
    std::fs::write(dir.path().join("proto.yaml"), text).unwrap();
    let (mut serve, url) = serve(dir.path(), "proto.yaml", "out", &[]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Its socket is bound: the connection waits, if need be, to be accepted.
        let mut c = CoordinatorClient::connect(url.clone()).await.unwrap();
        let reg = |version: &str, slots: u32| pb::RegisterRequest {
            host: "probe".into(),
            devices: vec!["cpu".into()],
            slots,
            version: version.into(),
            ..Default::default()
        };
        assert_eq!(
            code(c.register(reg("0.0.0-other", 1)).await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(c.register(reg(pb::PROTOCOL_VERSION, 0)).await),
            Code::InvalidArgument
        );
        let poll = |worker_id: &str, secret: &str| pb::PollWorkRequest {
            worker_id: worker_id.into(),
            worker_secret: secret.into(),
            free_slots: 1,
            ..Default::default()
        };
        assert_eq!(code(c.poll_work(poll("", "")).await), Code::InvalidArgument);
        assert_eq!(
            code(c.poll_work(poll("w99-nobody", "")).await),
            Code::NotFound
        );

        let registered = c
            .register(reg(pb::PROTOCOL_VERSION, 1))
            .await
            .unwrap()
            .into_inner();
        let (me, secret) = (registered.worker_id, registered.worker_secret);
        // Its id without its secret gets nothing: no trial, no lease.
        assert_eq!(
            code(c.poll_work(poll(&me, "guessed")).await),
            Code::PermissionDenied
        );
        let got = c
            .poll_work(poll(&me, &secret))
            .await
            .unwrap()
            .into_inner()
            .trials;
        let trial = got[0].trial_id.clone();
        let batch = |seq: u64, rows: usize, attempt: u32| pb::MetricsBatch {
            worker_id: me.clone(),
            worker_secret: secret.clone(),
            trial_id: trial.clone(),
            attempt,
            seq,
            train: (0..rows)
                .map(|i| pb::TrainRow {
                    step: i as u64 + 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            code(c.report_metrics(batch(0, 100_001, 1)).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(c.report_metrics(batch(0, 1, 7)).await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(c.report_metrics(batch(5, 1, 1)).await),
            Code::FailedPrecondition
        );
        let unknown = pb::MetricsBatch {
            trial_id: "t000000000000".into(),
            ..batch(0, 1, 1)
        };
        assert_eq!(code(c.report_metrics(unknown).await), Code::NotFound);
        let forged = pb::MetricsBatch {
            worker_secret: String::new(),
            ..batch(0, 1, 1)
        };
        assert_eq!(code(c.report_metrics(forged).await), Code::PermissionDenied);
        let forged = pb::TrialOutcome {
            worker_id: me.clone(),
            trial_id: trial.clone(),
            attempt: 1,
            status: pb::TrialStatus::Completed as i32,
            ..Default::default()
        };
        assert_eq!(code(c.finish_trial(forged).await), Code::PermissionDenied);
        let no_status = pb::TrialOutcome {
            worker_id: me.clone(),
            worker_secret: secret.clone(),
            trial_id: trial.clone(),
            attempt: 1,
            ..Default::default()
        };
        assert_eq!(code(c.finish_trial(no_status).await), Code::InvalidArgument);

        let status = c
            .status(pb::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                status.sweep.as_str(),
                status.total,
                status.running,
                status.queued
            ),
            ("proto", 2, 1, 1)
        );
        assert_eq!(status.workers.len(), 1);
        assert_eq!(
            (status.workers[0].host.as_str(), status.workers[0].running),
            ("probe", 1)
        );
        // Hand the trial back, so that a real worker can finish the sweep.
        let back = pb::TrialOutcome {
            worker_id: me.clone(),
            worker_secret: secret.clone(),
            trial_id: trial.clone(),
            attempt: 1,
            status: pb::TrialStatus::Failed as i32,
            retryable: true,
            handed_back: true,
            ..Default::default()
        };
        c.finish_trial(back).await.unwrap();
    });
    // `rt` stays alive to the end, and with it this client's idle connection: the coordinator
    // must still exit when the sweep is done.

    let status = bnsweep(dir.path(), &["status", "--coordinator", &url]);
    assert!(status.ok(), "{status:?}");
    assert!(status.stdout.contains("sweep `proto`"), "{status:?}");
    assert!(status.stdout.contains("0/2 trials done"), "{status:?}");
    // w<N>-<run tag>-<host>
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("w1-")
                && l.split_whitespace().next().unwrap().ends_with("-probe")),
        "{status:?}"
    );

    let worker = run(&mut worker_command(&url, &[]));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "2", "--steps", "3", "--eval-every", "500"],
    );
    assert!(checked.ok(), "{checked:?}");
}

/// `bnsweep cancel`: the worker gives its trial back and exits, the coordinator exits 130, and
/// the same command again resumes and finishes the sweep.
#[test]
fn a_cancelled_sweep_stops_cleanly_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: cancel\nparameters:\n  lr: [0.01, 0.02]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 200\n  eval_every: 100\n";
    std::fs::write(dir.path().join("cancel.yaml"), text).unwrap();
    let (mut serve, url) = serve(dir.path(), "cancel.yaml", "out", &[]);
    let mut worker = Running::spawn(
        worker_command(&url, &["--threads", "1"]).stderr(std::process::Stdio::null()),
    );
    let mut status = None;
    let started = within(Duration::from_secs(60), || {
        let s = bnsweep(dir.path(), &["status", "--coordinator", &url]);
        let running = s.stdout.contains("| 1 running |");
        status = Some(s);
        running
    });
    assert!(started, "no trial started: {status:?}");
    let cancelled = bnsweep(dir.path(), &["cancel", "--coordinator", &url]);
    assert!(cancelled.ok(), "{cancelled:?}");
    assert!(
        cancelled
            .stdout
            .contains("1 running trial(s) are being given back"),
        "{cancelled:?}"
    );
    assert_eq!(serve.wait().code(), Some(130));
    assert!(worker.wait().success(), "the worker exits cleanly");

    // A report of the unfinished sweep says what is missing.
    let partial = bnsweep(dir.path(), &["report", "out"]);
    assert!(partial.ok(), "{partial:?}");
    assert!(
        partial.stderr.contains("0 of 2 trials finished"),
        "{partial:?}"
    );
    assert!(partial.stderr.contains("Partial results"), "{partial:?}");
    let page = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(page.contains("no data yet") && page.contains("Partial results"));

    // The same command again: on the address the first run reported.
    let (mut again, again_url) = serve_at(dir.path(), "cancel.yaml", addr_of(&url), "out", &[]);
    assert_eq!(again_url, url);
    let worker = run(&mut worker_command(&url, &[]));
    assert!(worker.ok(), "{worker:?}");
    assert!(again.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "2", "--steps", "200", "--eval-every", "100"],
    );
    assert!(checked.ok(), "{checked:?}");
}
