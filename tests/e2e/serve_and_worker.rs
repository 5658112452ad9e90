//! `bnsweep serve` with a separately started `bnsweep-worker`, as on several machines.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bnsweep_e2e::{
    addr_of, bin, check_results, run, serve, serve_at, serve_command, wait_for_rows, wait_until,
    worker_command, Running,
};

/// A worker lacking the dataset fails the trial at once, without retries, naming the path.
#[test]
fn a_worker_without_the_data_fails_the_trial_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: remote\nparameters:\n  lr: [0.1, 0.2]\ntrain:\n  dataset: {name: cifar10, path: /data/not-here}\n  steps: 5\n";
    std::fs::write(dir.path().join("remote.yaml"), text).unwrap();
    let (mut serve, url) = serve(dir.path(), "remote.yaml", "out", &[]);
    let worker = run(worker_command(&url, &["--name", "remote-box"]).current_dir(dir.path()));
    assert!(worker.ok(), "{worker:?}");
    serve.exit_within("exit", Duration::from_secs(60));
    let served = serve.ran();
    assert_eq!(served.code, Some(1), "{served:?}");
    assert!(
        served.stdout.contains("0 completed, 0 diverged, 2 failed"),
        "{served:?}"
    );
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "2", "--failed-error", "/data/not-here"],
    );
    assert!(checked.ok(), "{checked:?}");
}

#[test]
fn a_worker_without_a_coordinator_gives_up_with_a_clear_error() {
    // Port 1 (tcpmux): privileged and unused, so nothing answers there.
    let url = "http://127.0.0.1:1".to_string();
    let ran = run(&mut worker_command(&url, &["--patience", "1"]));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stderr
            .contains(&format!("cannot reach the coordinator at {url}")),
        "{ran:?}"
    );
}

/// A worker training two trials at once (two slot processes) gives exactly the loss curves
/// that `bnsweep run` with two single-slot workers gives: bit for bit, since both sides train
/// on the CPU of this machine with one thread, the same binary and the same kernels.
#[test]
fn a_two_slot_worker_reproduces_the_curves_of_separate_processes() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
name: slots
seeds: [0, 1]
parameters:
  noise: [0.0, 1.0]
train:
  lr: 0.05
  model: {name: vgg8, width: 0.125}
  dataset: {name: synthetic, train_size: 256, test_size: 64, augment: true}
  batch_size: 32
  steps: 20
  eval_every: 10
  optimizer: {name: sgd, momentum: 0.9}
";
    std::fs::write(dir.path().join("slots.yaml"), text).unwrap();
    let ran = bnsweep_e2e::bnsweep(
        dir.path(),
        &[
            "run",
            "slots.yaml",
            "--workers",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            "a",
        ],
    );
    assert!(ran.ok(), "{ran:?}");

    let (mut serve, url) = serve(dir.path(), "slots.yaml", "b", &[]);
    let worker = run(Command::new(bin("bnsweep-worker"))
        .current_dir(dir.path())
        .args([
            "--coordinator",
            &url,
            "--slots",
            "2",
            "--threads",
            "1",
            "--device",
            "cpu",
        ]));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().success());
    let a = dir.path().join("a");
    let args = [
        "--trials",
        "4",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--same-losses-as",
        a.to_str().unwrap(),
    ];
    let checked = check_results(&dir.path().join("b"), &args);
    assert!(checked.ok(), "{checked:?}");
}

/// A coordinator with a token refuses workers without it; one with the token trains; and a
/// coordinator reachable from other machines does not start without a token at all.
#[test]
fn the_shared_token_is_required_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: tok\nparameters:\n  lr: [0.1]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 64, test_size: 16}\n  batch_size: 16\n  steps: 3\n";
    std::fs::write(dir.path().join("tok.yaml"), text).unwrap();

    let open = run(Command::new(bin("bnsweep"))
        .args([
            "serve",
            "tok.yaml",
            "--listen",
            "0.0.0.0:0",
            "--out",
            "open",
        ])
        .env_remove("BNSWEEP_TOKEN")
        .current_dir(dir.path()));
    assert_eq!(open.code, Some(1), "{open:?}");
    assert!(open.stderr.contains("needs a shared token"), "{open:?}");
    assert!(!dir.path().join("open").exists());

    // The token from a file (a newline at its end is not part of it), as the README advises.
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();
    let empty = run(serve_command(
        dir.path(),
        "tok.yaml",
        "127.0.0.1:0",
        "empty",
        &["--token-file", "empty"],
    )
    .stderr(Stdio::piped()));
    assert_eq!(empty.code, Some(1), "{empty:?}");
    assert!(
        empty.stderr.contains("token file empty is empty"),
        "{empty:?}"
    );
    let (mut serve, url) = serve(dir.path(), "tok.yaml", "out", &["--token-file", "token"]);
    for (token, what) in [(None, "no token"), (Some("wrong"), "a wrong token")] {
        let mut cmd = worker_command(&url, &[]);
        cmd.env_remove("BNSWEEP_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let refused = run(&mut cmd);
        assert_eq!(refused.code, Some(1), "{what}: {refused:?}");
        assert!(
            refused
                .stderr
                .contains("the coordinator refused this worker: missing or wrong token"),
            "{what}: {refused:?}"
        );
    }
    let worker = run(worker_command(&url, &[])
        .env_remove("BNSWEEP_TOKEN")
        .env("BNSWEEP_TOKEN_FILE", dir.path().join("token")));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "1", "--steps", "3", "--eval-every", "500"],
    );
    assert!(checked.ok(), "{checked:?}");
}

/// TLS: a coordinator serving a self-signed certificate trains a worker that trusts it
/// (`--tls-ca`) and answers `bnsweep status` over https; a worker that does not trust the
/// certificate gives up saying why; a key that does not parse is refused before anything runs.
#[test]
fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: tls\nparameters:\n  lr: [0.1]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 64, test_size: 16}\n  batch_size: 16\n  steps: 3\n";
    std::fs::write(dir.path().join("tls.yaml"), text).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();

    let bad = run(serve_command(
        dir.path(),
        "tls.yaml",
        "127.0.0.1:0",
        "bad",
        &["--tls-cert", "cert.pem", "--tls-key", "bad.pem"],
    )
    .stderr(Stdio::piped()));
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stderr.contains("bad.pem"), "{bad:?}");
    assert!(!dir.path().join("bad").exists(), "nothing runs");

    let (mut serve, url) = serve(
        dir.path(),
        "tls.yaml",
        "out",
        &["--tls-cert", "cert.pem", "--tls-key", "key.pem"],
    );
    // The certificate is for localhost.
    let url = url.replace("https://127.0.0.1:", "https://localhost:");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let untrusting = run(worker_command(&url, &["--patience", "2"]).env_remove("BNSWEEP_TLS_CA"));
    assert_eq!(untrusting.code, Some(1), "{untrusting:?}");
    assert!(
        untrusting.stderr.contains("cannot reach the coordinator"),
        "{untrusting:?}"
    );
    let ca = dir.path().join("cert.pem");
    let status = run(Command::new(bin("bnsweep")).args([
        "status",
        "--coordinator",
        &url,
        "--tls-ca",
        ca.to_str().unwrap(),
    ]));
    assert!(status.ok(), "{status:?}");
    assert!(status.stdout.contains("sweep `tls`"), "{status:?}");
    let worker = run(&mut worker_command(
        &url,
        &["--tls-ca", ca.to_str().unwrap()],
    ));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "1", "--steps", "3", "--eval-every", "500"],
    );
    assert!(checked.ok(), "{checked:?}");
}

/// kill -9 of a worker in the middle of a trial: the trial is leased again after the worker
/// timeout, completes on another worker, and its rows are in the results exactly once.
#[test]
fn a_killed_worker_s_trial_completes_elsewhere_with_its_rows_exactly_once() {
    let (doomed, _) = interrupt_a_worker_mid_trial("KILL", false);
    assert!(!doomed.success());
}

/// SIGTERM to a worker in the middle of a trial: it gives the trial back at once and exits 75
/// (stopped with work left); the trial completes on another worker, its rows exactly once.
#[test]
fn a_stopped_worker_hands_its_trial_back() {
    let (stopped, log) = interrupt_a_worker_mid_trial("TERM", false);
    assert_eq!(stopped.code(), Some(75), "{log}");
    assert!(
        log.contains("handed back (the worker is stopping)"),
        "{log}"
    );
}

/// SIGTERM to every process of the worker at once, its slot processes too, as Slurm signals a
/// job at its time limit or on `scancel`: the slots ignore it, the worker stops them itself,
/// and the trial is handed back (not lost to a killed trainer, no retry used); exit 75.
#[test]
fn a_signal_to_every_process_of_the_job_is_a_hand_back() {
    let (stopped, log) = interrupt_a_worker_mid_trial("TERM", true);
    assert_eq!(stopped.code(), Some(75), "{log}");
    assert!(
        log.contains("handed back (the worker is stopping)"),
        "{log}"
    );
    assert!(
        !log.contains("crashed") && !log.contains("slot process"),
        "{log}"
    );
}

/// Runs a one-trial sweep, sends `signal` to the worker training it (and to its slot
/// processes too with `whole_job`), lets a second worker finish the sweep, checks the results,
/// and returns how the first worker exited, with its log.
fn interrupt_a_worker_mid_trial(
    signal: &str,
    whole_job: bool,
) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url) = serve_one_trial(dir.path(), &["--worker-timeout", "2"]);
    let mut first = start_training_worker(&url, "first");
    wait_for_rows(&url, None, Duration::from_secs(60));
    let mut pids = vec![first.id().to_string()];
    if whole_job {
        let slots = children(first.id());
        assert_eq!(slots.len(), 1, "one slot process: {slots:?}");
        pids.extend(slots);
    }
    let sent = run(Command::new("kill").arg(format!("-{signal}")).args(&pids));
    assert!(sent.ok(), "{sent:?}");
    let exited = first.exit_within(&format!("stop on SIG{signal}"), Duration::from_secs(30));
    let log = training_log(&first);
    let rescuer = run(&mut worker_command(&url, &["--name", "rescuer"]));
    assert!(rescuer.ok(), "{rescuer:?}");
    assert!(serve.wait().success());
    let attempts = check_one_trial(&dir.path().join("out"), &log);
    assert_eq!(attempts, "2 w2-rescuer None", "{log}");
    (exited, log)
}

/// The child processes of `pid` (listed per thread of the parent).
fn children(pid: u32) -> Vec<String> {
    let mut children = String::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let listed = task.unwrap().path().join("children");
        children += &std::fs::read_to_string(listed).unwrap_or_default();
    }
    children.split_whitespace().map(String::from).collect()
}

/// A worker still waiting for its coordinator (a cluster job's coordinator may be queued)
/// stops cleanly on SIGTERM or its drain signal: exit 75, not killed by the signal.
#[test]
fn a_worker_waiting_for_its_coordinator_stops_cleanly_on_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("coordinator.url");
    for signal in ["TERM", "USR1"] {
        let mut worker = Running::logged(
            Command::new(bin("bnsweep-worker"))
                .arg("--coordinator-file")
                .arg(&missing)
                .args(["--device", "cpu", "--patience", "60"]),
        );
        worker.wait_to_say(
            "waiting for the coordinator's address",
            Duration::from_secs(30),
        );
        worker.signal(signal);
        let exited = worker.exit_within("stop", Duration::from_secs(10));
        assert_eq!(exited.code(), Some(75), "SIG{signal}: {}", worker.stderr());
    }
}

/// The drain signal (SIGUSR1) mid-trial: the worker takes no more trials, lets its running one
/// complete (no deadline), and exits 75 with the sweep unfinished; another worker runs the
/// rest. Every trial completes in its first attempt, rows exactly once.
#[test]
fn a_drained_worker_ends_its_trial_takes_no_more_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let two = ONE_TRIAL.replace("lr: [0.05]", "lr: [0.05, 0.07]");
    std::fs::write(dir.path().join("two.yaml"), two).unwrap();
    let (mut serve, url) = serve(dir.path(), "two.yaml", "out", &[]);
    let mut first = start_training_worker(&url, "first");
    first.signal("USR1");
    let exited = first.exit_within("drain", Duration::from_secs(120));
    let log = training_log(&first);
    assert_eq!(exited.code(), Some(75), "{log}");
    assert!(
        log.contains("draining") && log.contains("ended: TRIAL_STATUS_COMPLETED"),
        "{log}"
    );
    assert_eq!(
        log.matches("starting on cpu").count(),
        0,
        "one trial only: {log}"
    );
    let rest = run(&mut worker_command(&url, &["--name", "rest"]));
    assert!(rest.ok(), "{rest:?}");
    assert!(serve.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "2", "--steps", "300", "--eval-every", "100"],
    );
    assert!(checked.ok(), "{checked:?}");
    assert_eq!(sorted_attempts(&dir.path().join("out")), "[1, 1]");
}

/// A trial far too long for the worker's time (20,000 steps), for the deadline tests.
const LONG_TRIAL: &str = "name: long\nparameters:\n  lr: [0.05]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 20000\n  eval_every: 1000\n";

/// Serves [`LONG_TRIAL`], starts a worker on it with `env` and `extra` arguments, lets `act`
/// act on the training worker (given the coordinator's URL), and returns its exit status and
/// log after it exits; then cancels the sweep and returns the trial's "attempts status error"
/// from trials.parquet.
fn stop_a_long_trial(
    env: &[(&str, String)],
    extra: &[&str],
    act: impl FnOnce(&Running, &str),
) -> (std::process::ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("long.yaml"), LONG_TRIAL).unwrap();
    let (mut serve, url) = serve(dir.path(), "long.yaml", "out", &[]);
    let mut args = vec!["--threads", "1", "--name", "timed"];
    args.extend(extra);
    let mut worker =
        Running::logged(worker_command(&url, &args).envs(env.iter().map(|(k, v)| (k, v))));
    act(&worker, &url);
    let exited = worker.exit_within("hand the trial back in time", Duration::from_secs(60));
    let log = worker.stderr();
    let cancel = bnsweep_e2e::bnsweep(dir.path(), &["cancel", "--coordinator", &url]);
    assert!(cancel.ok(), "{cancel:?}");
    assert_eq!(serve.wait().code(), Some(130));
    let trial = run(Command::new(bnsweep_e2e::python()).args([
        "-c",
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]).to_pylist()[0]; \
         print(t['attempts'], t['status'], t['error'])",
        dir.path().join("out/trials.parquet").to_str().unwrap(),
    ]));
    assert!(trial.ok(), "{trial:?}");
    (exited, log, trial.stdout.trim().to_string())
}

/// Slurm's SLURM_JOB_END_TIME is the worker's deadline: --deadline-margin before it, the
/// running trial is handed back (not failed) and the worker exits 75.
#[test]
fn at_the_job_s_end_time_the_running_trial_is_handed_back() {
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 10;
    let started = Instant::now();
    let (exited, log, trial) = stop_a_long_trial(
        &[("SLURM_JOB_END_TIME", end.to_string())],
        &["--deadline-margin", "4"],
        |_, _| {},
    );
    assert_eq!(exited.code(), Some(75), "{log}");
    assert!(log.contains("the deadline is near"), "{log}");
    assert!(
        log.contains("handed back (the worker is stopping)"),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{log}");
    assert_eq!(trial, "1 queued None", "{log}");
}

/// Draining with a deadline: a running trial that, at its pace so far, would not end before
/// the deadline is handed back at once, not at the deadline.
#[test]
fn a_drained_trial_that_cannot_end_before_the_deadline_is_handed_back_at_once() {
    let mut signalled = Instant::now();
    let (exited, log, trial) = stop_a_long_trial(&[], &["--deadline", "+600"], |worker, url| {
        // Under way, with rows to tell its pace by.
        wait_for_rows(url, None, Duration::from_secs(60));
        signalled = Instant::now();
        worker.signal("USR1");
    });
    let took = signalled.elapsed();
    assert_eq!(exited.code(), Some(75), "{log}");
    assert!(log.contains("would not end before the deadline"), "{log}");
    assert!(took < Duration::from_secs(30), "{took:?}\n{log}");
    assert_eq!(trial, "1 queued None", "{log}");
}

/// kill -9 of a worker's slot process mid-trial (as the kernel's out-of-memory killer or a
/// CUDA abort would end it) costs that attempt only: the worker lives on, starts a new slot
/// process, and the trial completes in its second attempt with its rows exactly once.
#[test]
fn a_killed_slot_process_costs_one_attempt_not_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url) = serve_one_trial(dir.path(), &[]);
    let mut worker = start_training_worker(&url, "only");
    wait_for_rows(&url, None, Duration::from_secs(60));
    let slots = children(worker.id());
    assert_eq!(slots.len(), 1, "one slot process: {slots:?}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", slots[0])).unwrap();
    assert!(cmdline.contains("slot"), "{cmdline:?}");
    let killed = run(Command::new("kill").args(["-KILL", &slots[0]]));
    assert!(killed.ok(), "{killed:?}");
    let exited = worker.exit_within("finish the sweep", Duration::from_secs(120));
    let log = training_log(&worker);
    assert!(exited.success(), "{log}");
    assert!(
        log.contains("the slot process on cpu") && log.contains("SIGKILL"),
        "{log}"
    );
    assert!(serve.wait().success(), "{log}");
    let attempts = check_one_trial(&dir.path().join("out"), &log);
    assert_eq!(attempts, "2 w1-only None", "{log}");
}

/// kill -9 of the coordinator mid-sweep, while a trial runs: started again on the same
/// directory it resumes; the worker reconnects by itself and its running trial carries on
/// from the journal under the same attempt; what was finished is neither lost nor run again,
/// and every row is in the results exactly once.
#[test]
fn a_killed_coordinator_resumes_without_losing_or_rerunning_trials() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: crash\nparameters:\n  lr: [0.01, 0.02, 0.03]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 150\n  eval_every: 50\n";
    std::fs::write(dir.path().join("crash.yaml"), text).unwrap();
    let (mut first, url) = serve(dir.path(), "crash.yaml", "out", &[]);
    let mut worker = Running::spawn(
        worker_command(&url, &["--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Wait for the first trial to be finished and written, then kill the coordinator.
    let train = dir.path().join("out/train");
    let mut done_first = None;
    wait_until("a finished trial", Duration::from_secs(120), || {
        let files: Vec<_> = std::fs::read_dir(&train)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        done_first = files
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "parquet"));
        done_first.is_some()
    });
    let done_first = done_first.unwrap();
    // Wait for the next trial to be leased and have rows in its journal (so the finished
    // one's outcome was acknowledged: its end is logged, if not yet in trials.parquet).
    let journal = dir.path().join("out/journal");
    let done_id = done_first
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let journaled = || {
        std::fs::read_dir(&journal)
            .map(|d| {
                d.flatten().any(|e| {
                    // A journal file holding another trial's lease and some rows.
                    let bytes = std::fs::read(e.path()).unwrap_or_default();
                    e.path().extension().is_some_and(|x| x == "journal")
                        && bytes.len() > 200
                        && !String::from_utf8_lossy(&bytes).contains(&done_id)
                })
            })
            .unwrap_or(false)
    };
    wait_until(
        "a running trial's rows in its journal",
        Duration::from_secs(120),
        journaled,
    );
    first.kill();
    let written = std::fs::metadata(&done_first).unwrap().modified().unwrap();
    // Time passes before the restart, so that a rewrite of the finished trial would show in
    // its modification time even on a file system with coarse timestamps.
    std::thread::sleep(Duration::from_secs(1));

    // Started again on the address the first run reported: the worker comes back to it.
    let (mut second, _) = serve_at(dir.path(), "crash.yaml", addr_of(&url), "out", &[]);
    let status = second.wait();
    let stderr = second.stderr();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("trials already done"), "{stderr}");
    assert!(worker.wait().success());
    assert_eq!(
        std::fs::metadata(&done_first).unwrap().modified().unwrap(),
        written,
        "a finished trial was rewritten"
    );
    let results = dir.path().join("out");
    let checked = check_results(
        &results,
        &["--trials", "3", "--steps", "150", "--eval-every", "50"],
    );
    assert!(checked.ok(), "{checked:?}");
    assert_eq!(sorted_attempts(&results), "[1, 1, 1]", "a trial ran again");
    assert!(stderr.contains("were running"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&journal).unwrap().flatten().collect();
    assert!(left.is_empty(), "journals left behind: {left:?}");
}

/// Two workers of one name (the default name is the host's: one worker per GPU), and a kill -9
/// of the coordinator mid-sweep: started again, it gives each worker back its own id (with
/// its secret) or a new one, never the other's, so that neither drops the other's leases;
/// every trial completes, and every row is in the results exactly once.
#[test]
fn two_workers_of_one_name_survive_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: twins\nparameters:\n  lr: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 256, test_size: 64}\n  batch_size: 32\n  steps: 60\n  eval_every: 20\n";
    std::fs::write(dir.path().join("twins.yaml"), text).unwrap();
    let (mut first, url) = serve(dir.path(), "twins.yaml", "out", &[]);
    let mut workers: Vec<_> = (0..2)
        .map(|_| {
            Running::spawn(
                worker_command(&url, &["--threads", "1", "--name", "twin"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    // Kill the coordinator once a trial is written and others run.
    let train = dir.path().join("out/train");
    wait_until("a finished trial", Duration::from_secs(120), || {
        std::fs::read_dir(&train).map_or(0, |d| d.count()) >= 1
    });
    first.kill();
    // Started again on the address the first run reported.
    let (mut second, _) = serve_at(dir.path(), "twins.yaml", addr_of(&url), "out", &[]);
    let status = second.wait();
    let stderr = second.stderr();
    assert!(status.success(), "{stderr}");
    for w in &mut workers {
        let status = w.exit_within("finish", Duration::from_secs(60));
        assert!(status.success(), "a worker failed");
    }
    let results = dir.path().join("out");
    let checked = check_results(
        &results,
        &["--trials", "6", "--steps", "60", "--eval-every", "20"],
    );
    assert!(checked.ok(), "{checked:?}");
    let statuses = run(Command::new(bnsweep_e2e::python()).args([
        "-c",
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]).to_pylist(); \
         print(sorted(set(r['status'] for r in t)), len({r['worker'] for r in t} - {None}))",
        results.join("trials.parquet").to_str().unwrap(),
    ]));
    assert!(
        statuses.stdout.starts_with("['completed']"),
        "a trial did not complete: {statuses:?}"
    );
}

/// A worker's connection cut for less than the worker timeout: the worker retries, its lease
/// holds, and the trial completes in its first attempt with every row exactly once.
#[test]
fn a_short_network_cut_costs_nothing() {
    let attempts = cut_the_network_mid_trial(Duration::from_secs(2), "10");
    assert_eq!(attempts, "1 w1-flaky None", "the lease should have held");
}

/// A worker's connection cut for longer than the worker timeout: its trial goes back to the
/// queue; the worker, reconnected, registers again under a new id, drops the stale attempt
/// and runs the trial again; the rows of the lost attempt are not in the results.
#[test]
fn a_long_network_cut_loses_the_lease_but_no_row_is_doubled() {
    let attempts = cut_the_network_mid_trial(Duration::from_secs(6), "2");
    assert_eq!(attempts, "2 w2-flaky None");
}

/// Runs a one-trial sweep through a [`Proxy`], cuts the worker's connection for `cut` in the
/// middle of the trial, checks the results and returns the trial's "attempts worker".
fn cut_the_network_mid_trial(cut: Duration, worker_timeout: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url) = serve_one_trial(dir.path(), &["--worker-timeout", worker_timeout]);
    let proxy = bnsweep_e2e::Proxy::start(addr_of(&url));
    let mut worker = start_training_worker(&proxy.url(), "flaky");
    // Mid-trial: rows have come through the proxy.
    wait_for_rows(&url, None, Duration::from_secs(60));
    proxy.cut();
    // The point: the network stays cut for this long (shorter or longer than the timeout).
    std::thread::sleep(cut);
    proxy.restore();
    let exited = worker.wait();
    let log = training_log(&worker);
    assert!(exited.success(), "{log}");
    assert!(serve.wait().success(), "{log}");
    check_one_trial(&dir.path().join("out"), &log)
}

/// A coordinator frozen (SIGSTOP) mid-trial: its socket stays open but nothing answers. The
/// keepalive pings and the call deadlines notice; for less than the worker's patience the
/// worker waits and carries on once the coordinator thaws (nothing lost, one attempt); for
/// longer, it gives up cleanly with an error instead of hanging.
#[test]
fn a_frozen_coordinator_is_waited_for_within_the_patience_then_given_up() {
    for (frozen, patience, gives_up) in [(4, "60", false), (40, "5", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut serve, url) = serve_one_trial(dir.path(), &[]);
        let mut worker = Running::logged(&mut worker_command(
            &url,
            &[
                "--threads",
                "1",
                "--name",
                "patient",
                "--patience",
                patience,
            ],
        ));
        worker.wait_to_say("starting on cpu", Duration::from_secs(120));
        wait_for_rows(&url, None, Duration::from_secs(60));
        serve.signal("STOP");
        let frozen_at = Instant::now();
        // The point: the coordinator stays frozen this long, unless the worker leaves first.
        let ended = worker
            .exited_within(Duration::from_secs(frozen))
            .map(|s| (s, frozen_at.elapsed()));
        serve.signal("CONT");
        if gives_up {
            // Patience 5 s; the keepalive (10 + 10 s) or the call deadline ends a hung call.
            let (status, after) = ended.expect("the worker still waits on a frozen coordinator");
            let log = training_log(&worker);
            assert!(!status.success(), "{log}");
            assert!(after < Duration::from_secs(40), "gave up after {after:?}");
            assert!(log.contains("error"), "{log}");
            // `serve` (its trial unfinished) is killed as it goes out of scope.
        } else {
            assert!(ended.is_none(), "the worker left during a short freeze");
            let status = worker.exit_within("finish", Duration::from_secs(120));
            let log = training_log(&worker);
            assert!(status.success(), "{log}");
            assert!(serve.wait().success(), "{log}");
            let attempts = check_one_trial(&dir.path().join("out"), &log);
            assert_eq!(attempts, "1 w1-patient None", "{log}");
        }
    }
}

/// More connections than `--max-connections` are closed as they arrive, before any of them
/// has said a word; those within the bound stay open.
#[test]
fn connections_beyond_the_bound_are_closed_at_once() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, url) = serve_one_trial(dir.path(), &["--max-connections", "2"]);
    let addr = addr_of(&url);
    // Its socket is bound: a connection is queued until the coordinator accepts it.
    let connect = || {
        let s = std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("no coordinator at {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let mut held: Vec<_> = (0..2).map(|_| connect()).collect();
    let mut third = connect();
    let mut buf = [0u8; 64];
    // Closed: end of stream (or a reset), never a byte of HTTP/2.
    let third_read = third.read(&mut buf);
    assert!(
        matches!(third_read, Ok(0))
            || third_read.is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the third connection is not closed"
    );
    for s in &mut held {
        // Open: the server greets with its HTTP/2 settings.
        let n = s.read(&mut buf).expect("an open connection");
        assert!(n > 0, "a connection within the bound was closed");
    }
    drop(held);
    drop(third);
    // With them closed (once the coordinator has seen them go: a client gets an answer), a
    // worker gets in and finishes the sweep.
    wait_until(
        "the coordinator to answer once the held connections close",
        Duration::from_secs(30),
        || bnsweep_e2e::sweep_status(&url, None).is_some(),
    );
    let worker = run(&mut worker_command(&url, &["--threads", "1"]));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().success());
}

/// A file system that fills up mid-sweep (a 4 MB tmpfs holding the results): the coordinator
/// says so once, keeps every row (in the journal), answers the worker UNAVAILABLE while
/// it cannot write, and carries on once space is freed; the sweep completes with every row
/// exactly once. Needs root (to mount the tmpfs), as on the project's machines.
#[test]
fn a_full_disk_mid_sweep_loses_nothing_and_the_sweep_completes_once_space_is_back() {
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&disk));
    assert!(
        mounted.ok(),
        "this test mounts a small tmpfs and needs root: {mounted:?}"
    );
    let _guard = Mounted(disk.clone());
    let text = "name: full\nparameters:\n  lr: [0.01, 0.02, 0.03, 0.04]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 256, test_size: 64}\n  batch_size: 32\n  steps: 200\n  eval_every: 50\n";
    std::fs::write(dir.path().join("full.yaml"), text).unwrap();
    let out = disk.join("out");
    let (mut serve, url) = serve(dir.path(), "full.yaml", out.to_str().unwrap(), &[]);
    // A patience shorter than the disk stays full: the coordinator's "waiting on disk"
    // answers are contact, not silence, so the worker waits it out without losing a trial.
    let mut worker = Running::logged(&mut worker_command(
        &url,
        &["--threads", "1", "--patience", "3"],
    ));
    wait_until("a finished trial", Duration::from_secs(120), || {
        std::fs::read_dir(out.join("train")).map_or(0, |d| d.count()) >= 1
    });
    // Fill the disk to the last byte, hold it full for a while, then free it.
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
    }
    serve.wait_to_say("cannot write to", Duration::from_secs(60));
    // The point: the disk stays full for longer than the worker's patience (3 s).
    std::thread::sleep(Duration::from_secs(6));
    std::fs::remove_file(&filler).unwrap();
    let status = worker.exit_within("finish", Duration::from_secs(120));
    let ended = serve.wait();
    let stderr = serve.stderr();
    assert!(status.success() && ended.success(), "{stderr}");
    assert!(
        stderr.contains("cannot write to") && stderr.contains("takes writes again"),
        "the disk never filled during the sweep, or its recovery was not seen: {stderr}"
    );
    let checked = check_results(
        &out,
        &["--trials", "4", "--steps", "200", "--eval-every", "50"],
    );
    assert!(checked.ok(), "{checked:?}\n{stderr}");
    assert_eq!(
        sorted_attempts(&out),
        "[1, 1, 1, 1]",
        "a trial lost an attempt to the full disk: {stderr}\nworker:\n{}",
        worker.stderr()
    );
}

/// Rendezvous through a file, as on a cluster: the worker starts first and waits for the
/// address file; the coordinator, on a port the system chooses, writes it once serving; killed
/// (-9) and started again on another port (a requeued job), it writes the new address, and the
/// worker follows it and finishes the sweep, every row exactly once.
#[test]
fn workers_find_a_moving_coordinator_through_its_address_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: moving\nparameters:\n  lr: [0.01, 0.02, 0.03]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 256, test_size: 64}\n  batch_size: 32\n  steps: 150\n  eval_every: 50\n";
    std::fs::write(dir.path().join("moving.yaml"), text).unwrap();
    let address = dir.path().join("coordinator.addr");
    // The worker first: it waits for the coordinator's address file.
    let mut worker = Running::logged(
        Command::new(bin("bnsweep-worker"))
            .args(["--device", "cpu", "--threads", "1", "--patience", "60"])
            .arg("--coordinator-file")
            .arg(&address)
            .env_remove("BNSWEEP_COORDINATOR"),
    );
    worker.wait_to_say(
        "waiting for the coordinator's address in",
        Duration::from_secs(60),
    );
    // On a port the system chooses, written to the address file once serving.
    let start = || {
        let address = address.to_str().unwrap();
        serve(
            dir.path(),
            "moving.yaml",
            "out",
            &["--address-file", address],
        )
        .0
    };
    let mut first = start();
    wait_until("a finished trial", Duration::from_secs(120), || {
        std::fs::read_dir(dir.path().join("out/train")).map_or(0, |d| d.count()) >= 1
    });
    let first_url = std::fs::read_to_string(&address).unwrap();
    assert!(first_url.starts_with("http://127.0.0.1:"), "{first_url}");
    first.kill();
    let mut second = start();
    let status = second.wait();
    let stderr = second.stderr();
    assert!(status.success(), "{stderr}");
    let second_url = std::fs::read_to_string(&address).unwrap();
    assert_ne!(
        first_url, second_url,
        "the second coordinator chose another port"
    );
    let status = worker.exit_within("finish", Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "3", "--steps", "150", "--eval-every", "50"],
    );
    assert!(checked.ok(), "{checked:?}\n{stderr}");
}

/// The health port for cluster probes: plain gRPC without the token, SERVING while the sweep
/// runs, NOT_SERVING once it drains (`bnsweep cancel`), before the coordinator exits.
#[test]
fn the_health_port_answers_probes_without_the_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
    let (mut serve, url) = serve_one_trial(
        dir.path(),
        &["--token-file", "token", "--health-listen", "127.0.0.1:0"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe_at = |health_url: &str, service: &str| -> Option<i32> {
        rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(health_url.to_string())
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut c = HealthClient::new(channel);
            let r = c
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .ok()?;
            Some(r.into_inner().status)
        })
    };
    // "bnsweep: health probes (grpc.health.v1, plain, no token) at ADDR", the port the
    // system chose.
    let said = serve.wait_to_say("health probes", Duration::from_secs(30));
    let health_url = format!("http://{}", said.rsplit(" at ").next().unwrap().trim());
    let probe = |service: &str| probe_at(&health_url, service);
    let serving = ServingStatus::Serving as i32;
    wait_until(
        "the health port to say SERVING",
        Duration::from_secs(30),
        || probe("") == Some(serving),
    );
    assert_eq!(probe("bnsweep.v1.Coordinator"), Some(serving));
    let mut worker = Running::logged(
        worker_command(&url, &["--threads", "1"])
            .env("BNSWEEP_TOKEN_FILE", dir.path().join("token")),
    );
    // Cancelled mid-trial.
    worker.wait_to_say("starting on cpu", Duration::from_secs(120));
    let cancel = run(Command::new(bin("bnsweep"))
        .args(["cancel", "--coordinator", &url, "--token-file"])
        .arg(dir.path().join("token")));
    assert!(cancel.ok(), "{cancel:?}");
    let not_serving = ServingStatus::NotServing as i32;
    let mut got = None;
    let drained = bnsweep_e2e::within(Duration::from_secs(10), || {
        got = probe("bnsweep.v1.Coordinator");
        // It answers all along, until it says NOT_SERVING.
        assert!(
            got.is_some(),
            "draining, the coordinator still said {got:?}"
        );
        got == Some(not_serving)
    });
    assert!(drained, "draining, the coordinator still said {got:?}");
    let _ = worker.exit_within("stop", Duration::from_secs(60));
    assert_eq!(serve.wait().code(), Some(130));
}

/// The sweep of the fault tests: one trial of 300 steps of a narrow vgg8 (seconds on a core).
const ONE_TRIAL: &str = "name: one\nparameters:\n  lr: [0.05]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 300\n  eval_every: 100\n";

/// Serves [`ONE_TRIAL`] from `dir` into `dir/out` (see [`serve`]).
fn serve_one_trial(dir: &std::path::Path, extra: &[&str]) -> (Running, String) {
    std::fs::write(dir.join("one.yaml"), ONE_TRIAL).unwrap();
    serve(dir, "one.yaml", "out", extra)
}

/// Starts a one-thread CPU worker named `name` (logged) and returns it once it has started
/// training.
fn start_training_worker(url: &str, name: &str) -> Running {
    let mut worker = Running::logged(&mut worker_command(
        url,
        &["--threads", "1", "--name", name],
    ));
    worker.wait_to_say("starting on cpu", Duration::from_secs(120));
    worker
}

/// What a worker of [`start_training_worker`] said after it started training.
fn training_log(worker: &Running) -> String {
    let log = worker.stderr();
    let start = log.find("starting on cpu").expect("it started training");
    let rest = &log[start..];
    rest[rest.find('\n').map_or(rest.len(), |n| n + 1)..].to_string()
}

/// The attempts of every trial of a results directory, sorted, as Python prints the list
/// (read with pyarrow from trials.parquet).
fn sorted_attempts(out: &std::path::Path) -> String {
    let read = run(Command::new(bnsweep_e2e::python()).args([
        "-c",
        "import sys, pyarrow.parquet as pq; print(sorted(r['attempts'] for r in pq.read_table(sys.argv[1]).to_pylist()))",
        out.join("trials.parquet").to_str().unwrap(),
    ]));
    assert!(read.ok(), "{read:?}");
    read.stdout.trim().to_string()
}

/// Checks the results of a one-trial sweep of 300 steps (rows exactly once) and returns the
/// trial's "attempts worker error" from trials.parquet, the worker as `w<N>-<host>`; `log` is
/// shown on failure.
fn check_one_trial(out: &std::path::Path, log: &str) -> String {
    let checked = check_results(
        out,
        &["--trials", "1", "--steps", "300", "--eval-every", "100"],
    );
    assert!(checked.ok(), "{checked:?}\n{log}");
    let attempts = run(Command::new(bnsweep_e2e::python()).args([
        "-c",
        // The worker id without its run tag (w<N>-<run>-<host>: the tag is random).
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]).to_pylist()[0]; \
         n, _, host = t['worker'].split('-', 2); print(t['attempts'], n + '-' + host, t['error'])",
        out.join("trials.parquet").to_str().unwrap(),
    ]));
    attempts.stdout.trim().to_string()
}

/// `bnsweep-worker simulate` (the load benchmark's workers): many agents in one process run a
/// sweep to the end through the real protocol, and the results hold every row exactly once.
#[test]
fn simulated_workers_run_a_sweep_with_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<String> = (0..60).map(|i| i.to_string()).collect();
    let text = format!(
        "name: sim\nseeds: [{}]\nparameters:\n  lr: [0.1]\ntrain:\n  steps: 40\n  eval_every: 10\n",
        seeds.join(", ")
    );
    std::fs::write(dir.path().join("sim.yaml"), text).unwrap();
    let (mut serve, url) = serve(dir.path(), "sim.yaml", "out", &[]);
    let sim = run(Command::new(bin("bnsweep-worker")).args([
        "simulate",
        "--coordinator",
        &url,
        "--agents",
        "20",
        "--step-ms",
        "1",
    ]));
    assert!(sim.ok(), "{sim:?}");
    assert!(
        sim.stdout
            .contains("\"agents\": 20, \"failed_agents\": 0, \"dispatches\": 60"),
        "{sim:?}"
    );
    assert!(serve.wait().success());
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "60", "--steps", "40", "--eval-every", "10"],
    );
    assert!(checked.ok(), "{checked:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("out/journal"))
            .unwrap()
            .count(),
        0,
        "the journal is emptied at the end"
    );
}
