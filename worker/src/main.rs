//! `bnsweep-worker`: trains the trials a bnsweep coordinator hands out.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use bnsweep_worker::agent;
use bnsweep_worker::placement::{self, MpsMode, SlotCount};
use bnsweep_worker::runner::Runner;
use bnsweep_worker::slot::{self, Slots};
use bnsweep_worker::{bench, device};

#[derive(Parser)]
#[command(
    name = "bnsweep-worker",
    version,
    about = "Trains the trials of a bnsweep coordinator (libtorch, CPU or CUDA)",
    long_about = "Connects to a coordinator started with `bnsweep serve` (or by `bnsweep run`), \
                  pulls trials, trains them and streams every metric back. Exits when the sweep \
                  is done.\n\nEach trial trains in a process of its own (a slot), so that a crash or \
                  a CUDA error costs that trial only; --slots sets how many run at once on each \
                  device.\n\nOn a GPU machine, put PyTorch's lib directory on LD_LIBRARY_PATH: \
                  the worker loads libtorch_cuda.so from there and trains on every GPU (or \
                  --gpus). Several slots share a GPU best under CUDA MPS, which the worker \
                  starts for itself when it can (--mps)."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    link: Link,
    /// Trials trained at once on each device, each in a process of its own: a number, or
    /// `auto`: 1 on the CPU; on a GPU 8 under MPS and 2 without, no more than its free memory
    /// holds at 3 GiB a trial nor than the CPU cores per GPU. More slots give more trials per
    /// hour, each trial slower.
    #[arg(long, default_value = "auto", value_name = "N|auto")]
    slots: SlotCount,
    /// Device: cpu, cuda or cuda:N. Default: every GPU when libtorch_cuda.so loads and one is
    /// present, else the CPU.
    #[arg(long)]
    device: Option<String>,
    /// The GPUs to train on, e.g. `0,1`, or `all` (instead of --device).
    #[arg(long, value_name = "LIST|all")]
    gpus: Option<String>,
    /// Share each GPU between its slots through a private CUDA MPS daemon (started and stopped
    /// by the worker). auto: when several slots share a GPU and the daemon can be started,
    /// else the slots time-slice and the log says why; on: refuse to run without it.
    #[arg(long, value_enum, default_value_t = MpsMode::Auto)]
    mps: MpsMode,
    /// CPU threads for libtorch's operators in each slot. Default: the cores / the slots.
    #[arg(long)]
    threads: Option<u32>,
    /// This worker's name in the results (default: the host name).
    #[arg(long)]
    name: Option<String>,
}

/// How a worker reaches its coordinator.
#[derive(clap::Args, Clone)]
struct Link {
    /// The coordinator's address, e.g. http://10.0.0.5:50051 (https://... for one serving TLS).
    #[arg(
        long,
        env = "BNSWEEP_COORDINATOR",
        required_unless_present = "coordinator_file"
    )]
    coordinator: Option<String>,
    /// Instead of --coordinator: the file `bnsweep serve --address-file` writes once it
    /// serves (on a shared file system: a cluster job's coordinator runs on a node not known
    /// in advance). Waited for, and read again whenever the coordinator cannot be reached.
    #[arg(long, env = "BNSWEEP_COORDINATOR_FILE", conflicts_with = "coordinator")]
    coordinator_file: Option<std::path::PathBuf>,
    /// Seconds the coordinator may stay unreachable before the worker gives up.
    #[arg(long, default_value_t = 60)]
    patience: u64,
    /// Exit (status 0) once the coordinator has had no trial for this worker, and none has
    /// run, for this many seconds: for a batch job under a `bnsweep server`, whose workers
    /// otherwise stay for the next sweep.
    #[arg(long, value_name = "SECONDS")]
    exit_when_idle: Option<u64>,
    /// The coordinator's shared token (`bnsweep serve --token`); prefer --token-file, since
    /// arguments show in `ps`.
    #[arg(long, env = "BNSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the shared token (its first line's text), instead of --token.
    #[arg(long, env = "BNSWEEP_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// For an https:// coordinator: the PEM certificate its certificate must chain to (its
    /// CA's, or its own when self-signed). Default: the system's trusted roots.
    #[arg(long, env = "BNSWEEP_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// When this worker must be gone, e.g. its cluster job's end: seconds since the Unix
    /// epoch, or a wait from now (+90s, +45m, +2h). Running trials are handed back
    /// --deadline-margin before it, and the worker exits with code 75. Default: Slurm's
    /// SLURM_JOB_END_TIME when set, else none.
    #[arg(long, env = "BNSWEEP_DEADLINE", value_name = "EPOCH|+WAIT")]
    deadline: Option<String>,
    /// Seconds before the deadline at which running trials are handed back.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    deadline_margin: u64,
    /// The signal that drains the worker (e.g. Slurm's `--signal=B:USR1@600`): it takes no
    /// more trials, lets its running trials end (handing back at once those that would not
    /// end before the deadline), then exits with code 75, or 0 if the sweep is done. `none`
    /// for no drain signal.
    #[arg(long, default_value = "USR1", value_name = "SIGNAL|none")]
    drain_signal: String,
}

impl Link {
    /// The agent's configuration; an error (the token file) is printed and ends the worker.
    fn config(self, name: String, runner: Arc<dyn Runner>) -> Result<agent::Config, ExitCode> {
        let token =
            bnsweep_proto::auth::token(self.token, self.token_file.as_deref()).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(2)
            })?;
        let deadline = match (self.deadline, std::env::var("SLURM_JOB_END_TIME")) {
            (Some(given), _) => Some(("--deadline", given)),
            // 0: a job without a time limit.
            (None, Ok(slurm)) if slurm.trim() != "0" => Some(("SLURM_JOB_END_TIME", slurm)),
            (None, _) => None,
        };
        let deadline = match deadline {
            Some((from, text)) => {
                let at = agent::Deadline::parse(&text).map_err(|e| {
                    eprintln!("error: {from}: {e}");
                    ExitCode::from(2)
                })?;
                if at <= std::time::SystemTime::now() {
                    eprintln!("error: {from}: the deadline {text} has passed");
                    return Err(ExitCode::from(2));
                }
                Some(agent::Deadline {
                    at,
                    margin: Duration::from_secs(self.deadline_margin),
                })
            }
            None => None,
        };
        let drain_signal = match self.drain_signal.as_str() {
            "none" => None,
            name => Some(agent::signal_number(name).map_err(|e| {
                eprintln!("error: --drain-signal: {e}");
                ExitCode::from(2)
            })?),
        };
        Ok(agent::Config {
            deadline,
            drain_signal,
            coordinator: match (self.coordinator, self.coordinator_file) {
                (_, Some(file)) => agent::Coordinator::File(file),
                (Some(url), None) => agent::Coordinator::Url(url),
                (None, None) => unreachable!("clap requires one"),
            },
            name,
            patience: Duration::from_secs(self.patience.max(1)),
            exit_when_idle: self.exit_when_idle.map(Duration::from_secs),
            token,
            tls_ca: self.tls_ca,
            runner,
        })
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// Play many workers in this one process, with fake training that emits realistic rows at
    /// a set pace, to load-test a coordinator (bench/load.sh); prints one JSON line of
    /// dispatch latencies.
    Simulate {
        #[command(flatten)]
        link: Link,
        #[command(flatten)]
        args: bnsweep_worker::simulate::SimulateArgs,
        /// Trials each simulated worker runs at once.
        #[arg(long, default_value_t = 1)]
        slots: u32,
    },
    /// Measure training throughput (img/s) of vgg8 on synthetic data; prints one JSON line.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        /// Device: cpu, cuda or cuda:N (default: CUDA when available).
        #[arg(long)]
        device: Option<String>,
        /// CPU threads for libtorch's operators. Default: every core.
        #[arg(long)]
        threads: Option<u32>,
    },
    /// Train one short trial on the CPU and write its settings, initial weights, batch order
    /// and rows, for the cross-check against the PyTorch reference (scripts/crosscheck).
    Trace {
        #[command(flatten)]
        args: Box<bnsweep_worker::trace::TraceArgs>,
    },
    /// One slot of a worker (started by the worker, not by hand): trains the attempts the
    /// worker writes to its stdin, one at a time, and writes their rows to its stdout.
    #[command(hide = true)]
    Slot {
        #[arg(long)]
        device: String,
        #[arg(long)]
        threads: Option<u32>,
    },
}

fn main() -> ExitCode {
    bnsweep_proto::process::init_logging("info");
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Bench {
            args,
            device,
            threads,
        }) => run_bench(args, device.as_deref(), *threads),
        Some(Command::Trace { args }) => run_trace(args),
        Some(Command::Simulate { link, args, slots }) => run_simulate(link, args, *slots),
        Some(Command::Slot { device, threads }) => run_slot(device, *threads),
        None => run_worker(cli),
    }
}

/// `bnsweep-worker bench`.
fn run_bench(args: &bench::BenchArgs, device: Option<&str>, threads: Option<u32>) -> ExitCode {
    let device = match device::choose(device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    configure_torch(threads, device);
    match bench::run(args, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `bnsweep-worker trace`.
fn run_trace(args: &bnsweep_worker::trace::TraceArgs) -> ExitCode {
    configure_torch(Some(args.threads), tch::Device::Cpu);
    match bnsweep_worker::trace::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `bnsweep-worker simulate`.
fn run_simulate(
    link: &Link,
    args: &bnsweep_worker::simulate::SimulateArgs,
    slots: u32,
) -> ExitCode {
    let sim = Arc::new(bnsweep_worker::simulate::Simulation::new(args, slots));
    match link.clone().config("sim".into(), sim.clone()) {
        Ok(cfg) => serve_until_done(bnsweep_worker::simulate::run(args, sim, cfg)),
        Err(code) => code,
    }
}

/// `bnsweep-worker slot` (started by the worker).
fn run_slot(device: &str, threads: Option<u32>) -> ExitCode {
    let device = match device::choose(Some(device)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: slot: {e}");
            return ExitCode::from(2);
        }
    };
    configure_torch(threads, device);
    match slot::serve(device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: slot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `bnsweep-worker`: places its slots and runs the agent.
fn run_worker(cli: Cli) -> ExitCode {
    let placement = match placement::resolve(&placement::Request {
        device: cli.device.as_deref(),
        gpus: cli.gpus.as_deref(),
        slots: cli.slots,
        mps: cli.mps,
        threads: cli.threads,
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program to start its slots: {e}");
            return ExitCode::FAILURE;
        }
    };
    let launch = slot::Launch {
        program,
        threads: placement.threads,
        env: placement.mps.as_ref().map(|m| m.env()).unwrap_or_default(),
    };
    let slots = Arc::new(Slots::new(&placement.devices, placement.per_device, launch));
    let name = cli.name.unwrap_or_else(|| {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "worker".into())
    });
    tracing::info!(
        "bnsweep-worker {}: {}",
        env!("CARGO_PKG_VERSION"),
        placement.describe()
    );
    let code = match cli.link.config(name, slots) {
        Ok(cfg) => serve_until_done(agent::run(cfg)),
        Err(code) => code,
    };
    // The slots are gone with the runtime; the MPS daemon, if any, is stopped after them.
    drop(placement);
    code
}

/// Runs the agent (or the simulated agents) to the end, on a small runtime. Exit codes: 0
/// when the sweep is done or cancelled, 75 when stopped with work left (SIGTERM, the drain
/// signal, the deadline), 1 on an error.
fn serve_until_done(
    work: impl std::future::Future<Output = bnsweep_worker::Result<agent::Exit>>,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(work) {
        Ok(agent::Exit::Finished) => ExitCode::SUCCESS,
        Ok(agent::Exit::WorkLeft) => ExitCode::from(agent::EXIT_WORK_LEFT),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Thread counts and cuDNN autotuning, before any training.
fn configure_torch(threads: Option<u32>, device: tch::Device) {
    if let Some(t) = threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    tch::set_num_interop_threads(1);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}
