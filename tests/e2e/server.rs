//! `bnsweep server`: a coordinator that keeps running, takes sweep files from
//! `bnsweep submit`, and shares one pool of workers between its sweeps.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bnsweep_e2e::{bin, bnsweep, check_results, run, worker_command, Running};

/// Starts `bnsweep server --listen LISTEN --data data` in `dir` and returns it with its URL,
/// once it has said where it serves.
fn server_at(dir: &Path, listen: &str) -> (Running, String) {
    let mut server = Running::logged(
        Command::new(bin("bnsweep"))
            .current_dir(dir)
            .args(["server", "--listen", listen, "--data", "data"]),
    );
    // "bnsweep: server at URL, data in DIR; submit with ..."
    let line = server.wait_to_say("bnsweep: server at ", Duration::from_secs(60));
    let url = line
        .split("server at ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the server's URL")
        .to_string();
    (server, url)
}

/// A small sweep file: `trials` learning rates, `steps` steps each, on synthetic data.
fn sweep_file(dir: &Path, file: &str, name: &str, lrs: &str, steps: u32) {
    let text = format!(
        "name: {name}\nparameters:\n  lr: [{lrs}]\ntrain:\n  model: {{name: vgg8, width: 0.125}}\n  dataset: {{name: synthetic, train_size: 256, test_size: 64}}\n  batch_size: 32\n  steps: {steps}\n  eval_every: 10\n"
    );
    std::fs::write(dir.join(file), text).unwrap();
}

fn submit(dir: &Path, url: &str, file: &str, extra: &[&str]) -> bnsweep_e2e::Ran {
    let mut args = vec!["submit", file, "--coordinator", url];
    args.extend_from_slice(extra);
    bnsweep(dir, &args)
}

fn idle_worker(dir: &Path, url: &str, name: &str) -> Running {
    Running::logged(
        worker_command(
            url,
            &["--name", name, "--threads", "1", "--exit-when-idle", "3"],
        )
        .current_dir(dir),
    )
}

/// Two sweeps submitted to one server, served by two workers that take trials from both:
/// both complete with every row exactly once, `bnsweep list` shows them, and the workers
/// (started with `--exit-when-idle`) exit once no sweep has work. A file with problems is
/// refused before anything is sent; the same sweep twice, or another sweep under a name in
/// use, is refused by the server.
#[test]
fn two_sweeps_share_one_pool_of_workers_and_complete_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sweep_file(d, "alpha.yaml", "alpha", "0.1, 0.05, 0.02, 0.01", 30);
    sweep_file(d, "beta.yaml", "beta", "0.1, 0.2", 30);
    sweep_file(d, "alpha2.yaml", "alpha", "0.3", 30);
    std::fs::write(d.join("bad.yaml"), "name: bad\nparameters:\n  lr: [-1]\n").unwrap();

    // Checked here first: nothing reaches the (absent) coordinator.
    let bad = submit(d, "http://127.0.0.1:1", "bad.yaml", &[]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("bad.yaml:3:"), "{bad:?}");

    let (mut server, url) = server_at(d, "127.0.0.1:0");
    let a = submit(d, &url, "alpha.yaml", &[]);
    assert!(a.ok(), "{a:?}");
    assert!(a.stdout.contains("sweep `alpha`: 4 trials"), "{a:?}");
    let again = submit(d, &url, "alpha.yaml", &[]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("submitted already"), "{again:?}");
    let taken = submit(d, &url, "alpha2.yaml", &[]);
    assert_eq!(taken.code, Some(1), "{taken:?}");
    assert!(
        taken.stderr.contains("another sweep named `alpha`"),
        "{taken:?}"
    );
    let b = submit(d, &url, "beta.yaml", &[]);
    assert!(b.ok(), "{b:?}");

    let mut w1 = idle_worker(d, &url, "one");
    let mut w2 = idle_worker(d, &url, "two");
    for w in [&mut w1, &mut w2] {
        let status = w.exit_within("the idle worker's exit", Duration::from_secs(180));
        assert!(status.success(), "{}", w.stderr());
    }
    // Both sweeps had trials handed to both workers' polls in turn.
    let log = w1.stderr() + &w2.stderr();
    assert!(log.contains("no work for"), "{log}");

    let listed = bnsweep(d, &["list", "--coordinator", &url]);
    assert!(listed.ok(), "{listed:?}");
    for line in ["alpha", "beta"] {
        let row = listed
            .stdout
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("{line} in {listed:?}"));
        assert!(row.contains("100%"), "{listed:?}");
    }
    // The live page lists both sweeps, each linking to its own live report.
    let said = server.wait_to_say("live report at ", Duration::from_secs(5));
    let page = said
        .split("live report at ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let curl = |url: &str| run(Command::new("curl").args(["-s", "--max-time", "30", url])).stdout;
    let index = curl(&page);
    for name in ["alpha", "beta"] {
        assert!(
            index.contains(&format!("href=\"/sweeps/{name}/\"")),
            "{index}"
        );
    }
    assert_eq!(index.matches(">finished<").count(), 2, "{index}");
    let beta = curl(&format!("{page}sweeps/beta/"));
    assert!(beta.contains("Final test accuracy"), "{beta}");
    assert!(beta.contains("2/2 trials done"), "{beta}");
    // `--resume` takes up the finished sweep: nothing to run.
    let resumed = submit(d, &url, "alpha.yaml", &["--resume", "--wait"]);
    assert!(resumed.ok(), "{resumed:?}");
    assert!(resumed.stdout.contains("(4 done)"), "{resumed:?}");
    server.kill();

    for (name, trials) in [("alpha", "4"), ("beta", "2")] {
        let args = ["--trials", trials, "--steps", "30", "--eval-every", "10"];
        let checked = check_results(&d.join("data").join(name), &args);
        assert!(checked.ok(), "{name}: {checked:?}");
    }
}

/// The server killed (-9) while a sweep runs and started again on the same data directory
/// takes the sweep up: its worker carries on (registering again under its id), and the
/// sweep completes with every row exactly once.
#[test]
fn a_server_killed_mid_sweep_resumes_it_losing_and_duplicating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sweep_file(d, "long.yaml", "long", "0.1, 0.05", 1500);
    let (mut server, url) = server_at(d, "127.0.0.1:0");
    let addr = bnsweep_e2e::addr_of(&url).to_string();
    let s = submit(d, &url, "long.yaml", &[]);
    assert!(s.ok(), "{s:?}");
    let mut worker = idle_worker(d, &url, "stays");
    bnsweep_e2e::wait_until("rows of the sweep", Duration::from_secs(120), || {
        let r = bnsweep(d, &["status", "--coordinator", &url, "--sweep", "long"]);
        r.ok() && !r.stdout.contains("| 0% |")
    });
    server.kill();
    let (mut server, url) = server_at(d, &addr);
    assert!(
        server.stderr().contains("took up sweep `long`"),
        "{}",
        server.stderr()
    );
    let status = worker.exit_within("the worker's exit", Duration::from_secs(300));
    assert!(status.success(), "{}", worker.stderr());
    let waited = submit(d, &url, "long.yaml", &["--resume", "--wait"]);
    assert!(waited.ok(), "{waited:?}");
    server.kill();
    let args = ["--trials", "2", "--steps", "1500", "--eval-every", "10"];
    let checked = check_results(&d.join("data").join("long"), &args);
    assert!(checked.ok(), "{checked:?}");
}

/// Sweeps of a higher `priority` get the workers first; cancelling one sweep takes its
/// running trials back at once while the others run to completion; a restart keeps it
/// cancelled.
#[test]
fn priority_goes_first_and_cancelling_one_sweep_leaves_the_others_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sweep_file(d, "slow.yaml", "slow", "0.1, 0.05", 200_000);
    sweep_file(d, "mid.yaml", "mid", "0.1, 0.05", 30);
    sweep_file(d, "urgent.yaml", "urgent", "0.1, 0.05", 30);
    let text = std::fs::read_to_string(d.join("urgent.yaml")).unwrap();
    std::fs::write(d.join("urgent.yaml"), format!("{text}priority: 5\n")).unwrap();
    let (mut server, url) = server_at(d, "127.0.0.1:0");
    for file in ["slow.yaml", "mid.yaml", "urgent.yaml"] {
        let s = submit(d, &url, file, &[]);
        assert!(s.ok(), "{s:?}");
    }
    let mut worker = Running::logged(
        worker_command(
            &url,
            &["--slots", "2", "--threads", "1", "--exit-when-idle", "3"],
        )
        .current_dir(d),
    );
    bnsweep_e2e::wait_until(
        "a trial of `slow` running",
        Duration::from_secs(120),
        || {
            let r = bnsweep(d, &["status", "--coordinator", &url, "--sweep", "slow"]);
            r.ok() && !r.stdout.contains("| 0 running |")
        },
    );
    // Submitted last, the sweep of priority 5 went out first.
    let log = worker.stderr();
    let starts: Vec<&str> = log.lines().filter(|l| l.contains("starting on")).collect();
    assert!(starts.len() >= 3, "{log}");
    assert!(
        starts[..2].iter().all(|l| l.contains("trial=urgent/")),
        "{log}"
    );

    let cancelled = bnsweep(d, &["cancel", "--coordinator", &url, "--sweep", "slow"]);
    assert!(cancelled.ok(), "{cancelled:?}");
    assert!(!cancelled.stdout.contains(" 0 running"), "{cancelled:?}");
    let status = worker.exit_within("the idle worker's exit", Duration::from_secs(180));
    assert!(status.success(), "{}", worker.stderr());
    assert!(
        worker.stderr().contains("abandoning the trial"),
        "{}",
        worker.stderr()
    );

    let listed = bnsweep(d, &["list", "--coordinator", &url]);
    assert!(listed.ok(), "{listed:?}");
    let state = |name: &str| {
        let row = listed
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("");
        row.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    assert_eq!(state("slow"), "cancelled", "{listed:?}");
    assert_eq!(state("mid"), "finished", "{listed:?}");
    assert_eq!(state("urgent"), "finished", "{listed:?}");
    for name in ["mid", "urgent"] {
        let args = ["--trials", "2", "--steps", "30", "--eval-every", "10"];
        let checked = check_results(&d.join("data").join(name), &args);
        assert!(checked.ok(), "{name}: {checked:?}");
    }

    server.kill();
    let (mut server, _) = server_at(d, "127.0.0.1:0");
    let said = server.wait_to_say("took up sweep `slow`", Duration::from_secs(30));
    assert!(said.contains("(cancelled)"), "{said}");
    server.kill();
}
