//! `bnsweep serve` with a separately started `bnsweep-worker`, as on several machines.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bnsweep_e2e::{bin, check_results, run};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A worker lacking the dataset fails the trial at once, without retries, naming the path.
#[test]
fn a_worker_without_the_data_fails_the_trial_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: remote\nparameters:\n  lr: [0.1, 0.2]\ntrain:\n  dataset: {name: cifar10, path: /data/not-here}\n  steps: 5\n";
    std::fs::write(dir.path().join("remote.yaml"), text).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve = Command::new(bin("bnsweep"))
        .args(["serve", "remote.yaml", "--listen", &addr, "--out", "out"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker = run(Command::new(bin("bnsweep-worker"))
        .args([
            "--coordinator",
            &format!("http://{addr}"),
            "--device",
            "cpu",
            "--name",
            "remote-box",
        ])
        .current_dir(dir.path()));
    assert!(worker.ok(), "{worker:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    let served = bnsweep_e2e::Ran::from(serve.wait_with_output().unwrap());
    assert_eq!(status.code(), Some(1), "{served:?}");
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
    let port = free_port();
    let ran = run(Command::new(bin("bnsweep-worker")).args([
        "--coordinator",
        &format!("http://127.0.0.1:{port}"),
        "--device",
        "cpu",
        "--patience",
        "1",
    ]));
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "cannot reach the coordinator at http://127.0.0.1:{port}"
        )),
        "{ran:?}"
    );
}

/// A worker training two trials at once in one process gives exactly the loss curves that
/// `bnsweep run` with two single-slot worker processes gives.
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
            "--out",
            "a",
        ],
    );
    assert!(ran.ok(), "{ran:?}");

    let addr = format!("127.0.0.1:{}", free_port());
    let mut serve = Command::new(bin("bnsweep"))
        .args(["serve", "slots.yaml", "--listen", &addr, "--out", "b"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker = run(Command::new(bin("bnsweep-worker"))
        .current_dir(dir.path())
        .args([
            "--coordinator",
            &format!("http://{addr}"),
            "--slots",
            "2",
            "--threads",
            "1",
        ]));
    assert!(worker.ok(), "{worker:?}");
    assert!(serve.wait().unwrap().success());
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
