//! `bnsweep`: validate a sweep file, run it on this machine, or serve it to remote workers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use bnsweep::local::{self, LocalWorkers};
use bnsweep::results::ResultsDir;
use bnsweep::scheduler::Policy;
use bnsweep::sweep::{self, Sweep};
use bnsweep::{server, Error};

#[derive(Parser)]
#[command(
    name = "bnsweep",
    version,
    about = "Sweeps over learning rate, BatchNorm, noise and seeds, trained by bnsweep-worker processes",
    long_about = "bnsweep reads a YAML sweep file, expands it into trials, hands the trials to \
                  bnsweep-worker processes over gRPC and writes every metric to Parquet.\n\n\
                  Sweep files: docs/sweep-file.md. Results: docs/results.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stop a running sweep cleanly: no more trials go out, workers give theirs back and exit,
    /// and the coordinator exits (status 130) leaving a directory that resumes.
    Cancel {
        #[command(flatten)]
        remote: Remote,
        /// The sweep, on a `bnsweep server`: its running trials are taken back at once and
        /// its other sweeps go on (`bnsweep submit --resume` takes it up again).
        #[arg(long)]
        sweep: Option<String>,
    },
    /// Show where a running sweep stands: trials by state, progress, ETA, and each worker.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// The sweep, on a `bnsweep server` (which holds several).
        #[arg(long)]
        sweep: Option<String>,
    },
    /// Run a coordinator that keeps running and takes sweep files (`bnsweep submit`): every
    /// sweep in DATA/<sweep name>/ (the layout of `bnsweep serve --out`), one pool of workers
    /// for all of them (sweeps take turns, a trial at a time).
    ///
    /// Workers started with `bnsweep-worker --coordinator URL` stay for the next sweep;
    /// `--exit-when-idle SECONDS` ends them when there is no work. Killed and started again
    /// on the same DATA, it takes up every sweep and resumes the unfinished ones.
    Server(ServerArgs),
    /// Submit a sweep file to a `bnsweep server`: checked here first (every problem at once,
    /// as `bnsweep validate`), then on the server. Prints the sweep's name and results
    /// directory.
    Submit {
        /// The sweep file (YAML).
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
        /// Take up a sweep of this name and these trials that the server holds already
        /// (otherwise refused).
        #[arg(long)]
        resume: bool,
        /// Follow its progress until every trial is final and its files are written; exit 0
        /// when none failed, 1 when some did, 130 when the sweep is cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// List the sweeps a coordinator holds, with their progress.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Write the paper's figures for a results directory: one self-contained HTML page
    /// (figures inline, opens offline) and every figure as an SVG file beside it.
    ///
    /// Works while the sweep still runs, and says what is missing.
    Report {
        /// The results directory (of `bnsweep run` or `bnsweep serve`).
        dir: PathBuf,
        /// The page to write. Default: DIR/report.html (figures in DIR/report_figures/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also print the findings (the paper's claims, checked) and the final test accuracy
        /// table as Markdown on stdout.
        #[arg(long)]
        markdown: bool,
    },
    /// Check a sweep file and print its trials; runs nothing.
    ///
    /// Every problem is printed as FILE:LINE:COL: FIELD: MESSAGE and the exit status is 2.
    Validate {
        /// The sweep file (YAML).
        file: PathBuf,
    },
    /// Run a sweep on this machine: a coordinator on loopback and local worker processes.
    ///
    /// Exits 0 once every trial is completed or diverged, 1 if any trial failed.
    Run {
        /// The sweep file (YAML).
        file: PathBuf,
        /// Results directory. A directory holding this sweep's results resumes it; one holding
        /// anything else is refused. Default: results/<sweep name>, or results/<sweep
        /// name>-2, -3, ... when another sweep of that name holds it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Number of local worker processes.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Trials each worker trains at once, each in a process of its own (bnsweep-worker
        /// --slots). On a GPU, `--workers 1 --slots 8` shares it between eight trials under
        /// MPS (see README, "Several trials per GPU").
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Device for every worker: cpu, cuda or cuda:N. Default: CUDA when available.
        #[arg(long)]
        device: Option<String>,
        /// CPU threads per trial for libtorch. Default: the machine's cores / (workers x
        /// slots).
        #[arg(long)]
        threads: Option<u32>,
    },
    /// Serve a sweep to bnsweep-worker processes on other machines.
    ///
    /// Start workers with `bnsweep-worker --coordinator http://HOST:PORT`. Exits once every
    /// trial is final.
    Serve(ServeArgs),
}

/// `bnsweep server`'s options.
#[derive(clap::Args)]
struct ServerArgs {
    /// Data directory: one results directory per sweep, DATA/<sweep name>/.
    #[arg(long)]
    data: PathBuf,
    /// Seconds without a poll after which a worker is lost and its trials are re-queued.
    #[arg(long, default_value_t = 30)]
    worker_timeout: u64,
    #[command(flatten)]
    net: Net,
}

/// `bnsweep serve`'s options.
#[derive(clap::Args)]
struct ServeArgs {
    /// The sweep file (YAML).
    file: PathBuf,
    /// Results directory. A directory holding this sweep's results resumes it; one holding
    /// anything else is refused.
    #[arg(long)]
    out: PathBuf,
    /// Seconds without a poll after which a worker is lost and its trials are re-queued.
    #[arg(long, default_value_t = 30)]
    worker_timeout: u64,
    #[command(flatten)]
    net: Net,
}

/// Where a coordinator (`serve`, `server`) listens and who may reach it.
#[derive(clap::Args)]
struct Net {
    /// Address to listen on, e.g. 0.0.0.0:50051 (all interfaces) or 127.0.0.1:50051.
    #[arg(long)]
    listen: SocketAddr,
    /// Shared secret every worker (and `status`, `cancel`, `submit`, `list`) must present.
    /// Required when listening on anything but loopback. Prefer --token-file: arguments
    /// show in `ps`.
    #[arg(long, env = "BNSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the shared token (its first line's text), instead of --token.
    #[arg(long, env = "BNSWEEP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Where to serve the live report (the page of `bnsweep report`, with progress, over
    /// HTTP; the same token; on a `server`, a page listing its sweeps), or `off`. Default: a
    /// free port on loopback.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: String,
    /// Serve TLS with this certificate chain (PEM); workers then use https:// URLs.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Open connections held at most; more are closed as they arrive, before any token is
    /// checked (keep it under `ulimit -n`).
    #[arg(long, default_value_t = bnsweep::connections::DEFAULT_MAX)]
    max_connections: usize,
    /// Once serving, write the URL workers reach it by to this file (atomically; with
    /// `--listen 0.0.0.0:0` the host name and the port the system chose), for workers
    /// started with `--coordinator-file` (a cluster job's coordinator lands on a node and
    /// port not known in advance).
    #[arg(long)]
    address_file: Option<PathBuf>,
    /// Serve `grpc.health.v1.Health` on this address, plain and without the token (for
    /// Kubernetes' gRPC probes): NOT_SERVING while resuming and once draining (cancelled
    /// or done), SERVING in between.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    bnsweep_proto::process::init_logging("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Report { dir, out, markdown } => report_cmd(&dir, out, markdown),
        Command::Status { remote, sweep } => status(&remote, sweep.unwrap_or_default()),
        Command::Server(args) => server_cmd(args),
        Command::Submit {
            file,
            remote,
            resume,
            wait,
        } => submit(&file, &remote, resume, wait),
        Command::List { remote } => list(&remote),
        Command::Cancel { remote, sweep } => cancel(&remote, sweep.unwrap_or_default()),
        Command::Run {
            file,
            out,
            workers,
            slots,
            device,
            threads,
        } => run(&file, out, workers, slots, device, threads),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(code) => code,
        Err(Error::Sweep(diags)) => {
            eprintln!("{diags}");
            eprintln!(
                "{} problem(s) in {}; nothing was run",
                diags.items.len(),
                diags.file
            );
            ExitCode::from(2)
        }
        Err(e @ (Error::Interrupted | Error::Cancelled)) => {
            eprintln!("bnsweep: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Path) -> Result<Sweep, Error> {
    let sweep = Sweep::load(file).map_err(Error::Sweep)?;
    for w in &sweep.warnings {
        eprintln!("warning: {w}");
    }
    Ok(sweep)
}

fn validate(file: &Path) -> Result<ExitCode, Error> {
    let sweep = load(file)?;
    for problem in sweep::missing_dataset_dirs(&sweep) {
        eprintln!(
            "warning: {}: {problem} on this machine (fine if the workers run elsewhere and have it)",
            file.display()
        );
    }
    let cols = sweep.param_columns();
    let mut table: Vec<Vec<String>> = vec![std::iter::once("trial_id".to_string())
        .chain(cols.iter().map(|c| c.0.clone()))
        .collect()];
    for t in &sweep.trials {
        let mut row = vec![t.id.clone()];
        for (_, _, field) in &cols {
            row.push(if *field == "seed" {
                t.config.seed.to_string()
            } else {
                t.config.get(field).to_string()
            });
        }
        table.push(row);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("{} trials", sweep.trials.len());
    Ok(ExitCode::SUCCESS)
}

/// How `bnsweep status` and `bnsweep cancel` reach a coordinator.
#[derive(clap::Args)]
struct Remote {
    /// The coordinator's address, e.g. http://10.0.0.5:50051 (https://... for one serving TLS).
    #[arg(long, env = "BNSWEEP_COORDINATOR")]
    coordinator: String,
    /// The coordinator's shared token, if it has one (prefer --token-file: arguments show in
    /// `ps`).
    #[arg(long, env = "BNSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the shared token, instead of --token.
    #[arg(long, env = "BNSWEEP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// For an https:// coordinator: the PEM certificate its certificate must chain to.
    /// Default: the system's trusted roots.
    #[arg(long, env = "BNSWEEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// A client of the coordinator, sending the token with every call.
async fn client(r: &Remote) -> Result<bnsweep_proto::client::Client, Error> {
    use bnsweep_proto::client;
    let url = &r.coordinator;
    let ca = match &r.tls_ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let channel = client::endpoint(url, ca.as_deref())
        .map_err(Error::Usage)?
        .connect()
        .await
        .map_err(|e| unreachable_at(url, bnsweep_proto::error_chain(&e)))?;
    let token = bnsweep_proto::auth::token(r.token.clone(), r.token_file.as_deref())
        .map_err(Error::Token)?;
    let auth =
        client::Auth::new(token.as_deref()).map_err(|e| Error::Token(format!("--token: {e}")))?;
    Ok(client::new(channel, auth))
}

fn unreachable_at(url: &str, reason: String) -> Error {
    Error::Unreachable {
        url: url.to_string(),
        reason,
    }
}

/// A call's failure: the coordinator unreachable, or its answer (a sweep it does not hold, a
/// submission it refuses) in its own words.
fn answer_of(url: &str, s: tonic::Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            unreachable_at(url, s.message().to_string())
        }
        _ => Error::Refused(format!("{url}: {}", s.message())),
    }
}

fn cancel(remote: &Remote, sweep: String) -> Result<ExitCode, Error> {
    let url = &remote.coordinator;
    let resp = runtime()?.block_on(async {
        client(remote)
            .await?
            .cancel(bnsweep_proto::CancelRequest { sweep })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| answer_of(url, s))
    })?;
    println!(
        "cancelled: no more trials go out; {} running trial(s) are being given back",
        resp.running
    );
    Ok(ExitCode::SUCCESS)
}

fn status(remote: &Remote, sweep: String) -> Result<ExitCode, Error> {
    use bnsweep::progress::human;
    let url = &remote.coordinator;
    let s = runtime()?.block_on(async {
        client(remote)
            .await?
            .status(bnsweep_proto::StatusRequest { sweep })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| answer_of(url, s))
    })?;
    let p = bnsweep::progress::of_status(&s);
    println!("sweep `{}`", s.sweep);
    println!(
        "{}",
        bnsweep::progress::line(&p, Duration::from_secs_f64(s.elapsed_s))
    );
    println!(
        "{:<24} {:<20} {:>7} {:>8} {:>8} {:>9}",
        "worker", "host", "running", "finished", "steps/s", "last seen"
    );
    for w in &s.workers {
        let seen = human(Duration::from_secs_f64(w.last_seen_s))
            + if w.retired { " (out of rotation)" } else { "" };
        println!(
            "{:<24} {:<20} {:>7} {:>8} {:>8.1} {:>9}",
            w.worker_id, w.host, w.running, w.finished, w.steps_per_s, seen
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bnsweep submit`.
fn submit(file: &Path, remote: &Remote, resume: bool, wait: bool) -> Result<ExitCode, Error> {
    let sweep = load(file)?;
    let url = &remote.coordinator;
    let call = |s| answer_of(url, s);
    runtime()?.block_on(async {
        let mut c = client(remote).await?;
        let r = c
            .submit(bnsweep_proto::SubmitRequest {
                file_name: file.display().to_string(),
                yaml: sweep.source.clone(),
                resume,
            })
            .await
            .map_err(call)?
            .into_inner();
        println!(
            "sweep `{}`: {} trials ({} done), results in {} on the server",
            r.sweep, r.trials, r.done, r.dir
        );
        if !wait {
            return Ok(ExitCode::SUCCESS);
        }
        let mut reporter = bnsweep::progress::Reporter::default();
        loop {
            let s = c
                .status(bnsweep_proto::StatusRequest {
                    sweep: r.sweep.clone(),
                })
                .await
                .map_err(call)?
                .into_inner();
            let p = bnsweep::progress::of_status(&s);
            if s.finished {
                reporter.finish(&p);
                return Ok(if p.failed > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                });
            }
            if s.cancelled && p.running == 0 {
                reporter.finish(&p);
                eprintln!(
                    "bnsweep: sweep `{}` cancelled; finished trials are kept: `bnsweep submit --resume` takes it up",
                    s.sweep
                );
                return Ok(ExitCode::from(130));
            }
            reporter.show(&p);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// `bnsweep list`.
fn list(remote: &Remote) -> Result<ExitCode, Error> {
    let url = &remote.coordinator;
    let sweeps = runtime()?.block_on(async {
        client(remote)
            .await?
            .list_sweeps(bnsweep_proto::ListSweepsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| answer_of(url, s))
    })?;
    println!(
        "{:<24} {:<9} {:>8} {:>7} {:>7} {:>7} {:>9} {:>8} {:>6} {:>6}  results",
        "sweep",
        "state",
        "priority",
        "trials",
        "queued",
        "running",
        "completed",
        "diverged",
        "failed",
        "done"
    );
    for s in &sweeps.sweeps {
        let state = bnsweep::progress::state(s);
        println!(
            "{:<24} {:<9} {:>8} {:>7} {:>7} {:>7} {:>9} {:>8} {:>6} {:>5.0}%  {}",
            s.sweep,
            state,
            s.priority,
            s.total,
            s.queued,
            s.running,
            s.completed,
            s.diverged,
            s.failed,
            100.0 * s.fraction,
            s.dir
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bnsweep server`.
fn server_cmd(args: ServerArgs) -> Result<ExitCode, Error> {
    let Guard {
        token,
        http,
        identity,
        live_tls,
    } = Guard::check(&args.net)?;
    let policy = Policy {
        worker_timeout: Duration::from_secs(args.worker_timeout.max(1)),
        ..Policy::default()
    };
    runtime()?.block_on(async {
        let health_listener = match args.net.health_listen {
            Some(a) => Some(server::bind(a).await?),
            None => None,
        };
        let (health, _health_stop) = server::Health::start(health_listener).await;
        let hub = bnsweep::hub::Hub::open(&args.data, policy)?;
        let listener = server::bind(args.net.listen).await?;
        if let Some(a) = http {
            let live = live_listener(a, token.is_some(), live_tls.is_some()).await?;
            let sweeps = bnsweep::live::Sweeps::Many(hub.clone());
            let token = token.clone();
            tokio::spawn(async move {
                let run = bnsweep::live::serve(live, sweeps, token, live_tls, std::future::pending());
                if let Err(e) = run.await {
                    tracing::warn!("live page: {e}");
                }
            });
        }
        let (task, url) = server::spawn_grpc(
            bnsweep::hub::HubService(hub.clone()),
            listener,
            token,
            identity,
            Some(args.net.max_connections),
            std::future::pending(),
        )?;
        eprintln!(
            "bnsweep: server at {url}, data in {}; submit with `bnsweep submit FILE --coordinator {url}`, start workers with `bnsweep-worker --coordinator {url}`",
            args.data.display()
        );
        if let Some(path) = &args.net.address_file {
            // As `serve` writes it: whole, once accepting.
            bnsweep::results::write_atomic(path, format!("{url}\n").as_bytes())?;
            eprintln!("bnsweep: address written to {}", path.display());
        }
        health.set(true).await;
        let upkeep = tokio::spawn(hub.keep_up());
        tokio::select! {
            r = task => {
                upkeep.abort();
                r.map_err(Error::ServerTask)??;
                Ok(ExitCode::SUCCESS)
            }
            _ = bnsweep_proto::process::stop_signal() => {
                upkeep.abort();
                Err(Error::Interrupted)
            }
        }
    })
}

/// Binds the live report's port and says where it is.
async fn live_listener(
    addr: SocketAddr,
    token: bool,
    tls: bool,
) -> Result<tokio::net::TcpListener, Error> {
    let listener = server::bind(addr).await?;
    let at = listener
        .local_addr()
        .map_err(|e| Error::io("listener", e))?;
    eprintln!(
        "bnsweep: live report at {}://{at}/{}",
        if tls { "https" } else { "http" },
        if token {
            " (it asks for the token once)"
        } else {
            ""
        }
    );
    Ok(listener)
}

fn report_cmd(dir: &Path, out: Option<PathBuf>, markdown: bool) -> Result<ExitCode, Error> {
    let results = bnsweep::report::data::Results::open(dir)?;
    let report = bnsweep::report::build(&results)?;
    let out = out.unwrap_or_else(|| dir.join("report.html"));
    let figures = bnsweep::report::write(&report, &out)?;
    for line in &report.status {
        eprintln!("bnsweep: {line}");
    }
    let n: usize = report.sections.iter().map(|s| s.figures.len()).sum();
    let written = format!(
        "report: {} ({n} figures, also in {})",
        out.display(),
        figures.display()
    );
    if markdown {
        eprintln!("{written}");
        print!("{}", bnsweep::report::markdown(&report));
    } else {
        println!("{written}");
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))
}

fn report(end: &server::SweepEnd, out: &Path) -> ExitCode {
    let p = &end.progress;
    println!(
        "{} trials in {}: {} completed, {} diverged, {} failed",
        p.total,
        bnsweep::progress::human(end.elapsed),
        p.completed,
        p.diverged,
        p.failed
    );
    println!("results: {}", out.display());
    if p.failed > 0 {
        eprintln!(
            "{} trial(s) failed; their errors are in {}/trials.parquet",
            p.failed,
            out.display()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(
    file: &Path,
    out: Option<PathBuf>,
    workers: u32,
    slots: u32,
    device: Option<String>,
    threads: Option<u32>,
) -> Result<ExitCode, Error> {
    let sweep = load(file)?;
    let missing = sweep::missing_dataset_dirs(&sweep);
    if !missing.is_empty() {
        return Err(Error::MissingData(format!(
            "{}: {} (see docs/sweep-file.md for how to get CIFAR-10)",
            file.display(),
            missing.join("; ")
        )));
    }
    if workers == 0 || slots == 0 {
        return Err(Error::Usage(
            "--workers and --slots must be at least 1".into(),
        ));
    }
    let out = out.unwrap_or_else(|| default_out(&sweep));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let spec = LocalWorkers {
        count: workers.min(sweep.trials.len().max(1) as u32),
        device,
        slots,
        threads: threads.unwrap_or((cores / (workers * slots)).max(1)),
        binary: local::find_worker_binary(),
    };
    let (results, resume) = ResultsDir::open(&out, &sweep)?;
    eprintln!(
        "bnsweep: sweep `{}`: {} trials on {} local worker(s); results in {}",
        sweep.name,
        sweep.trials.len(),
        spec.count,
        out.display()
    );
    let rt = runtime()?;
    let end = rt.block_on(async {
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("listener", e))?;
        let children = local::spawn(&spec, &format!("http://{addr}"), &results.logs_dir())?;
        let policy = Policy {
            poll_interval: Duration::from_millis(200),
            ..Policy::default()
        };
        let access = server::Access {
            live: Some(live_listener(SocketAddr::from(([127, 0, 0, 1], 0)), false, false).await?),
            ..server::Access::default()
        };
        server::run_sweep(&sweep, results, resume, listener, policy, access, children).await
    })?;
    Ok(report(&end, &out))
}

/// `results/NAME` when it is free or holds this sweep (which then resumes), else the first of
/// `results/NAME-2`, `-3`, ... that is.
fn default_out(sweep: &Sweep) -> PathBuf {
    let name = &sweep.name;
    let free = |p: &PathBuf| {
        matches!(
            bnsweep::results::holds(p, sweep),
            Ok(bnsweep::results::Holding::Nothing | bnsweep::results::Holding::Same)
        )
    };
    let first = Path::new("results").join(name);
    if free(&first) {
        return first;
    }
    (2..)
        .map(|i| Path::new("results").join(format!("{name}-{i}")))
        .find(free)
        .expect("some name is free")
}

/// `bnsweep serve`.
fn serve(args: ServeArgs) -> Result<ExitCode, Error> {
    let guard = Guard::check(&args.net)?;
    let ServeArgs {
        file,
        out,
        worker_timeout,
        net,
    } = args;
    let Net {
        listen,
        max_connections,
        health_listen,
        address_file,
        ..
    } = net;
    let (file, out) = (file.as_path(), out.as_path());
    let Guard {
        token,
        http,
        identity,
        live_tls,
    } = guard;
    let scheme = if identity.is_some() { "https" } else { "http" };
    let sweep = load(file)?;
    let (results, resume) = ResultsDir::open(out, &sweep)?;
    let rt = runtime()?;
    let end = rt.block_on(async {
        let listener = server::bind(listen).await?;
        let addr = listener.local_addr().map_err(|e| Error::io("listener", e))?;
        eprintln!(
            "bnsweep: serving sweep `{}` ({} trials) on {addr}; start workers with `bnsweep-worker --coordinator {scheme}://{addr}`",
            sweep.name,
            sweep.trials.len()
        );
        let policy = Policy {
            worker_timeout: Duration::from_secs(worker_timeout.max(1)),
            ..Policy::default()
        };
        let live = match http {
            Some(a) => Some(live_listener(a, token.is_some(), live_tls.is_some()).await?),
            None => None,
        };
        let access = server::Access {
            token,
            tls: identity,
            live,
            live_tls,
            max_connections: Some(max_connections),
            address_file,
            health: match health_listen {
                Some(a) => Some(server::bind(a).await?),
                None => None,
            },
        };
        server::run_sweep(&sweep, results, resume, listener, policy, access, Vec::new()).await
    })?;
    Ok(report(&end, out))
}

/// What guards `serve`, checked before anything runs: the shared token, the live page's
/// address, and the TLS certificate (for gRPC and the live page alike).
struct Guard {
    token: Option<String>,
    http: Option<SocketAddr>,
    identity: Option<tonic::transport::Identity>,
    live_tls: Option<bnsweep::live::Tls>,
}

impl Guard {
    fn check(args: &Net) -> Result<Guard, Error> {
        // Empty counts as none (auth::token).
        let token = bnsweep_proto::auth::token(args.token.clone(), args.token_file.as_deref())
            .map_err(Error::Token)?;
        let http: Option<SocketAddr> = match args.http.as_str() {
            "off" => None,
            a => Some(a.parse().map_err(|e| {
                Error::Usage(format!(
                    "--http {a}: {e} (an address like 127.0.0.1:8080, or off)"
                ))
            })?),
        };
        if let Some(h) = http.filter(|h| !h.ip().is_loopback() && token.is_none()) {
            return Err(Error::Usage(format!(
                "--http {h} serves the report to other machines, so it needs a shared token: pass --token SECRET (or set BNSWEEP_TOKEN)"
            )));
        }
        let tls = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
        let identity = match tls {
            None => None,
            Some((cert, key)) => Some(server::Access::tls_identity(cert, key)?),
        };
        // The live page is served over HTTPS with the same certificate.
        let live_tls = match tls {
            None => None,
            Some((cert, key)) => Some(bnsweep::live::Tls {
                cert_pem: std::fs::read(cert).map_err(|e| Error::io(cert, e))?,
                key_pem: std::fs::read(key).map_err(|e| Error::io(key, e))?,
            }),
        };
        if token.is_none() && !args.listen.ip().is_loopback() {
            return Err(Error::Usage(format!(
                "--listen {} accepts connections from other machines, so it needs a shared token: \
                 pass --token SECRET (or set BNSWEEP_TOKEN) here and to every worker",
                args.listen
            )));
        }
        Ok(Guard {
            token,
            http,
            identity,
            live_tls,
        })
    }
}
