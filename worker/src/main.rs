//! `bnsweep-worker`: trains the trials a bnsweep coordinator hands out.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use bnsweep_worker::{agent, bench, device};

#[derive(Parser)]
#[command(
    name = "bnsweep-worker",
    version,
    about = "Trains the trials of a bnsweep coordinator (libtorch, CPU or CUDA)",
    long_about = "Connects to a coordinator started with `bnsweep serve` (or by `bnsweep run`), \
                  pulls trials, trains them and streams every metric back. Exits when the sweep \
                  is done.\n\nOn a GPU machine, put PyTorch's lib directory on LD_LIBRARY_PATH: \
                  the worker loads libtorch_cuda.so from there and trains on the GPU."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    link: Link,
    /// Trials this worker trains at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Device: cpu, cuda or cuda:N. Default: CUDA when libtorch_cuda.so loads and a GPU is
    /// present, else the CPU.
    #[arg(long)]
    device: Option<String>,
    /// CPU threads for libtorch's operators. Default: every core.
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
    #[arg(long, env = "BNSWEEP_COORDINATOR", required = true)]
    coordinator: Option<String>,
    /// Seconds the coordinator may stay unreachable before the worker gives up.
    #[arg(long, default_value_t = 60)]
    patience: u64,
    /// The coordinator's shared token (`bnsweep serve --token`).
    #[arg(long, env = "BNSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For an https:// coordinator: the PEM certificate its certificate must chain to (its
    /// CA's, or its own when self-signed). Default: the system's trusted roots.
    #[arg(long, env = "BNSWEEP_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
}

impl Link {
    fn config(self, name: String, slots: u32, device: tch::Device) -> agent::Config {
        agent::Config {
            url: self.coordinator.expect("required by clap"),
            slots,
            device,
            name,
            patience: Duration::from_secs(self.patience.max(1)),
            token: self.token.filter(|t| !t.is_empty()),
            tls_ca: self.tls_ca,
            simulate: None,
        }
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BNSWEEP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Bench {
        args,
        device,
        threads,
    }) = &cli.command
    {
        let device = match device::choose(device.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        configure_torch(*threads, device);
        return match bench::run(args, device) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Simulate { link, args, slots }) = &cli.command {
        let cfg = link
            .clone()
            .config("sim".into(), (*slots).max(1), tch::Device::Cpu);
        return serve_until_done(bnsweep_worker::simulate::run(args, cfg));
    }
    if cli.slots == 0 {
        eprintln!("error: --slots must be at least 1");
        return ExitCode::from(2);
    }
    let device = match device::choose(cli.device.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    configure_torch(cli.threads, device);
    let name = cli.name.unwrap_or_else(|| {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "worker".into())
    });
    tracing::info!(device = %device::name(device), slots = cli.slots, "bnsweep-worker {}", env!("CARGO_PKG_VERSION"));
    let cfg = cli.link.config(name, cli.slots, device);
    serve_until_done(agent::run(cfg))
}

/// Runs the agent (or the simulated agents) to the end, on a small runtime.
fn serve_until_done(
    work: impl std::future::Future<Output = bnsweep_worker::Result<()>>,
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
        Ok(()) => ExitCode::SUCCESS,
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
