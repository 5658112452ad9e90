//! deploy/slurm's jobs on a real Slurm: Debian's slurmctld, slurmd and munge on this one node,
//! started as root by `scripts/slurm-cluster` (which installs them when it can). Where the
//! machine cannot host them (not root, no packages), the test says so loudly and does nothing.
//!
//! Two sweeps run side by side on the cluster:
//! - a coordinator job and a worker array of two tasks run a sweep of four trials: `scancel` of
//!   one task mid-trial is a hand-back (the coordinator re-queues the trial, no attempt failed);
//!   the coordinator job cancelled mid-sweep and submitted again resumes; the sweep completes,
//!   every row exactly once, the remaining worker exiting 0;
//! - a worker with a two-minute time limit and `--signal=B:USR1@30` on a trial far too long:
//!   the signal drains it, the trial is handed back at once (it would not end before the
//!   limit), and the task requeues itself.
//!
//! And beside them, `coordinator.sbatch --server`: two sweeps submitted to it through its
//! address file, trained by one worker array with `--exit-when-idle`, whose tasks then end
//! COMPLETED.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bnsweep_e2e::{bin, check_results, repo_root, run, sweep_status, within, Ran};

/// The single-node cluster of one test, brought down when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the cluster; `None` (having said why) when this machine cannot host one.
    fn up() -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let up = run(Command::new(repo_root().join("scripts/slurm-cluster"))
            .arg("up")
            .arg(dir.path()));
        if up.code == Some(77) {
            eprintln!(
                "\n*** SKIPPED the Slurm test: this machine cannot run a Slurm cluster ***\n{}\n",
                up.stderr.trim()
            );
            return None;
        }
        assert!(up.ok(), "scripts/slurm-cluster up: {up:?}");
        Some(Cluster { dir })
    }

    /// A Slurm client command of this cluster.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.dir.path().join("slurm.conf"));
        cmd
    }

    /// `sbatch --parsable ARGS`: the job id.
    fn sbatch(&self, args: &[&str]) -> String {
        let bin_dir = bin("bnsweep").parent().unwrap().to_path_buf();
        let submitted = run(self
            .command("sbatch")
            .arg("--parsable")
            .args(args)
            .env("BNSWEEP_BIN", bin_dir)
            .env_remove("SLURM_JOB_END_TIME"));
        assert!(submitted.ok(), "sbatch {args:?}: {submitted:?}");
        let id = submitted.stdout.trim();
        id.split(';').next().unwrap().to_string()
    }

    fn scancel(&self, job: &str) {
        let cancelled = run(self.command("scancel").arg(job));
        assert!(cancelled.ok(), "scancel {job}: {cancelled:?}");
    }

    /// Whether `job` (an id, or ARRAY_TASK) is still queued, running or ending.
    fn holds(&self, job: &str) -> bool {
        let q = run(self.command("squeue").args(["-h", "-o", "%i", "-j", job]));
        q.ok() && q.stdout.lines().any(|l| l.trim() == job)
    }

    /// JobState and ExitCode of a job, from `scontrol show job` (finished jobs stay listed
    /// for the cluster's MinJobAge).
    fn ended(&self, job: &str) -> String {
        let shown: Ran = run(self.command("scontrol").args(["show", "job", job]));
        let field = |name: &str| {
            shown
                .stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or("?")
                .to_string()
        };
        format!("{} {}", field("JobState="), field("ExitCode="))
    }

    fn status(&self) -> String {
        let s = run(Command::new(repo_root().join("scripts/slurm-cluster"))
            .arg("status")
            .arg(self.dir.path()));
        format!("{}{}", s.stdout, s.stderr)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(Command::new(repo_root().join("scripts/slurm-cluster"))
            .arg("down")
            .arg(self.dir.path()));
    }
}

/// The shared token of a run directory.
const TOKEN: &str = "slurm-test-token";

/// A run directory: the sweep file, the token (mode 600), the address file and results.
fn run_dir(sweep: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sweep.yaml"), sweep).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The logs of every job of a run directory, for failure messages.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "out"))
        .collect();
    names.sort();
    for p in names {
        out += &format!("==> {} <==\n{}\n", p.display(), read(&p));
    }
    out
}

/// Waits up to `secs` for `cond`, failing with `what`, the cluster's state and the run
/// directory's logs.
fn wait_for(secs: u64, what: &str, dir: &Path, cluster: &Cluster, cond: impl Fn() -> bool) {
    assert!(
        within(Duration::from_secs(secs), cond),
        "timed out after {secs} s waiting for {what}\n{}\n{}",
        cluster.status(),
        logs(dir)
    );
}

/// Whether the coordinator of `dir` (at the address in its address file) has rows from every
/// worker that runs a trial, and at least one does.
fn every_running_worker_sent_rows(dir: &Path) -> bool {
    let url = read(&dir.join("coordinator.url"));
    let url = url.trim();
    !url.is_empty()
        && sweep_status(url, Some(TOKEN)).is_some_and(|s| {
            let running: Vec<_> = s.workers.iter().filter(|w| w.running > 0).collect();
            !running.is_empty() && running.iter().all(|w| w.steps_per_s > 0.0)
        })
}

const SLURM_FOUR_TRIALS: &str = "name: slurm\nparameters:\n  lr: [0.02, 0.03, 0.05, 0.07]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 300\n  eval_every: 100\n";

const SLURM_LONG_TRIAL: &str = "name: slurm-long\nparameters:\n  lr: [0.05]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 20000\n  eval_every: 1000\n";

fn sbatch_script(name: &str) -> String {
    repo_root()
        .join("deploy/slurm")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Submits the coordinator job of `dir`'s sweep; its log is `dir/coordinator-<id>.out`.
fn submit_coordinator(cluster: &Cluster, dir: &Path) -> String {
    let d = dir.to_str().unwrap();
    cluster.sbatch(&[
        "--cpus-per-task=1",
        "--mem=1G",
        "--time=30",
        &format!("--chdir={d}"),
        &format!("--output={d}/coordinator-%j.out"),
        &sbatch_script("coordinator.sbatch"),
        &format!("{d}/sweep.yaml"),
        d,
        "--worker-timeout",
        "15",
    ])
}

/// Submits workers of `dir` (`sbatch_args` first); a task's log is `dir/worker-<A>_<T>.out`.
fn submit_workers(cluster: &Cluster, dir: &Path, sbatch_args: &[&str], worker: &[&str]) -> String {
    let d = dir.to_str().unwrap();
    let mut args: Vec<String> = sbatch_args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--cpus-per-task=1".into(),
        "--mem=1G".into(),
        format!("--chdir={d}"),
        format!("--output={d}/worker-%A_%a.out"),
        sbatch_script("worker.sbatch"),
        d.into(),
        "--device".into(),
        "cpu".into(),
        "--threads".into(),
        "1".into(),
        "--slots".into(),
        "1".into(),
    ]);
    args.extend(worker.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.sbatch(&args)
}

#[test]
fn deploy_slurm_jobs_hand_back_drain_requeue_and_resume_on_a_real_slurm() {
    let Some(cluster) = Cluster::up() else {
        return;
    };
    std::thread::scope(|s| {
        let drain = s.spawn(|| a_time_limit_drains_and_requeues_the_worker(&cluster));
        let server = s.spawn(|| a_server_job_trains_two_submitted_sweeps(&cluster));
        a_sweep_survives_scancel_of_a_worker_and_of_its_coordinator(&cluster);
        drain.join().unwrap();
        server.join().unwrap();
    });
}

fn a_sweep_survives_scancel_of_a_worker_and_of_its_coordinator(cluster: &Cluster) {
    let run = run_dir(SLURM_FOUR_TRIALS);
    let dir = run.path();
    let first = submit_coordinator(cluster, dir);
    let array = submit_workers(cluster, dir, &["--array=0-1", "--time=30"], &[]);
    let (task0, task1) = (format!("{array}_0"), format!("{array}_1"));
    let log0 = dir.join(format!("worker-{task0}.out"));
    let log1 = dir.join(format!("worker-{task1}.out"));

    // scancel of a task mid-trial: Slurm signals every process of it, slots included.
    wait_for(180, "task 1 to train", dir, cluster, || {
        read(&log1).contains("starting on cpu")
    });
    wait_for(60, "task 1's first rows", dir, cluster, || {
        every_running_worker_sent_rows(dir)
    });
    cluster.scancel(&task1);
    wait_for(60, "task 1 to end", dir, cluster, || !cluster.holds(&task1));
    let said = read(&log1);
    assert!(
        said.contains("handed back (the worker is stopping)") && said.contains("exited 75"),
        "{}",
        logs(dir)
    );
    assert!(!said.contains("requeueing"), "{}", logs(dir));

    // The coordinator cancelled mid-sweep, and submitted again: it resumes, and the worker
    // follows the address file to it.
    let coordinator_log = dir.join(format!("coordinator-{first}.out"));
    wait_for(180, "a trial to end", dir, cluster, || {
        let said = read(&coordinator_log);
        said.contains("1/4 trials done") || said.contains("2/4 trials done")
    });
    cluster.scancel(&first);
    wait_for(60, "the coordinator to end", dir, cluster, || {
        !cluster.holds(&first)
    });
    let second = submit_coordinator(cluster, dir);
    wait_for(300, "the sweep to end", dir, cluster, || {
        !cluster.holds(&second) && !cluster.holds(&task0)
    });

    let all = logs(dir);
    assert_eq!(cluster.ended(&task0), "COMPLETED 0:0", "{all}");
    assert_eq!(cluster.ended(&second), "COMPLETED 0:0", "{all}");
    assert!(read(&log0).contains("exited 0"), "{all}");
    let resumed = read(&dir.join(format!("coordinator-{second}.out")));
    assert!(resumed.contains("resuming"), "{all}");
    assert!(all.contains("attempt handed back by its worker"), "{all}");
    assert!(!all.contains("attempt failed"), "{all}");
    let checked = check_results(
        &dir.join("results"),
        &["--trials", "4", "--steps", "300", "--eval-every", "100"],
    );
    assert!(checked.ok(), "{checked:?}\n{all}");
}

fn a_time_limit_drains_and_requeues_the_worker(cluster: &Cluster) {
    let run = run_dir(SLURM_LONG_TRIAL);
    let dir = run.path();
    let coordinator = submit_coordinator(cluster, dir);
    // Two minutes, the signal 30 s (to 60 s: Slurm looks every 30 s) before the end; the
    // deadline's own hand-back comes 5 s before the end, after the drain.
    let worker = submit_workers(
        cluster,
        dir,
        &["--time=2", "--signal=B:USR1@30"],
        &["--deadline-margin", "5"],
    );
    wait_for(
        240,
        "the worker to drain and come back",
        dir,
        cluster,
        || logs(dir).contains("restart 1"),
    );
    let all = logs(dir);
    for said in [
        "deadline in",
        "draining",
        "would not end before the deadline",
        "handed back (the worker drains",
        "exited 75",
        "requeueing",
        "attempt handed back by its worker",
    ] {
        assert!(all.contains(said), "no {said:?} in the logs:\n{all}");
    }
    assert!(!all.contains("attempt failed"), "{all}");
    cluster.scancel(&worker);
    cluster.scancel(&coordinator);
    wait_for(60, "the jobs to end", dir, cluster, || {
        !cluster.holds(&worker) && !cluster.holds(&coordinator)
    });
}

fn a_server_job_trains_two_submitted_sweeps(cluster: &Cluster) {
    let rundir = run_dir("");
    let dir = rundir.path();
    let d = dir.to_str().unwrap();
    let server = cluster.sbatch(&[
        "--cpus-per-task=1",
        "--mem=1G",
        "--time=30",
        &format!("--chdir={d}"),
        &format!("--output={d}/server-%j.out"),
        &sbatch_script("coordinator.sbatch"),
        "--server",
        d,
    ]);
    wait_for(120, "the server's address", dir, cluster, || {
        !read(&dir.join("coordinator.url")).trim().is_empty()
    });
    let url = read(&dir.join("coordinator.url")).trim().to_string();
    let token = dir.join("token");
    for name in ["first", "second"] {
        let text = format!("name: {name}\nparameters:\n  lr: [0.02, 0.05]\ntrain:\n  model: {{width: 0.125}}\n  dataset: {{train_size: 256, test_size: 64}}\n  batch_size: 64\n  steps: 100\n  eval_every: 50\n");
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, text).unwrap();
        let submitted = run(Command::new(bin("bnsweep")).args([
            "submit",
            file.to_str().unwrap(),
            "--coordinator",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ]));
        assert!(submitted.ok(), "{submitted:?}\n{}", logs(dir));
    }
    let array = submit_workers(
        cluster,
        dir,
        &["--array=0-1", "--time=30"],
        &["--exit-when-idle", "5"],
    );
    let (task0, task1) = (format!("{array}_0"), format!("{array}_1"));
    wait_for(300, "the idle workers to end", dir, cluster, || {
        !cluster.holds(&task0) && !cluster.holds(&task1)
    });
    let all = logs(dir);
    assert_eq!(cluster.ended(&task0), "COMPLETED 0:0", "{all}");
    assert_eq!(cluster.ended(&task1), "COMPLETED 0:0", "{all}");
    for name in ["first", "second"] {
        let checked = check_results(
            &dir.join("data").join(name),
            &["--trials", "2", "--steps", "100", "--eval-every", "50"],
        );
        assert!(checked.ok(), "{name}: {checked:?}\n{all}");
    }
    cluster.scancel(&server);
    wait_for(60, "the server to end", dir, cluster, || {
        !cluster.holds(&server)
    });
}
