//! Running a sweep: the gRPC server on a socket, the clock that finds lost workers, the
//! progress display, and the end of the sweep. The pieces a sweep needs wherever it is
//! served (`open`, `upkeep`, `spawn_grpc`, `Health`) are public: `bnsweep server`
//! (`crate::hub`) serves its sweeps with them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tokio::net::TcpListener;
use tokio::process::Child;

use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::results::ResultsDir;
use crate::scheduler::{Policy, Progress, Scheduler};
use crate::served::ServedSweep;
use crate::service::CoordinatorService;
use crate::sweep::Sweep;

/// How the sweep ended.
#[derive(Debug, Clone)]
pub struct SweepEnd {
    pub progress: Progress,
    pub elapsed: Duration,
}

/// Refuses calls without the shared token, when there is one.
#[derive(Clone)]
struct TokenCheck(Option<String>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.0 else { return Ok(req) };
        let sent = req
            .metadata()
            .get(pb::auth::HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if pb::auth::same(sent, pb::auth::bearer(token).as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong token: start the worker with the coordinator's --token (or BNSWEEP_TOKEN)",
            ))
        }
    }
}

/// Who may call the coordinator, and how.
#[derive(Default)]
pub struct Access {
    /// The shared token every call must carry.
    pub token: Option<String>,
    /// Serve TLS with this certificate and key.
    pub tls: Option<tonic::transport::Identity>,
    /// Where to serve the live report (HTTP, the same token).
    pub live: Option<TcpListener>,
    /// Serve the live report over HTTPS with this certificate.
    pub live_tls: Option<crate::live::Tls>,
    /// Open connections held at most (None: [`crate::connections::DEFAULT_MAX`]).
    pub max_connections: Option<usize>,
    /// Where to write the URL workers reach this coordinator by, once it serves.
    pub address_file: Option<std::path::PathBuf>,
    /// Where to serve `grpc.health.v1.Health`: plain, without the token, for probes.
    pub health: Option<TcpListener>,
}

/// The name the health service reports the coordinator under (and "" for the server).
const HEALTH_NAME: &str = "bnsweep.v1.Coordinator";

/// The health of the coordinator as probes see it: NOT_SERVING while it resumes and once it
/// drains (cancelled, or done), SERVING in between.
#[derive(Clone)]
pub struct Health(Option<tonic_health::server::HealthReporter>);

impl Health {
    /// Serves `grpc.health.v1.Health` on `listener` (plain, no token), NOT_SERVING at first,
    /// until the returned sender is used or dropped; with no listener, nothing.
    pub async fn start(
        listener: Option<TcpListener>,
    ) -> (Health, tokio::sync::oneshot::Sender<()>) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let Some(listener) = listener else {
            return (Health(None), stop_tx);
        };
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Health(Some(reporter));
        health.set(false).await;
        if let Ok(addr) = listener.local_addr() {
            eprintln!("bnsweep: health probes (grpc.health.v1, plain, no token) at {addr}");
        }
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );
        (health, stop_tx)
    }

    pub async fn set(&self, serving: bool) {
        use tonic_health::ServingStatus;
        let Some(r) = &self.0 else { return };
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in ["", HEALTH_NAME] {
            r.set_service_status(name, status).await;
        }
    }
}

/// The URL of a listening address: the address itself, or for one on every interface
/// (`0.0.0.0`, `::`) this machine's host name, which other nodes of a cluster resolve.
pub fn url_of(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = if addr.ip().is_unspecified() {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}", addr.port())
}

impl Access {
    /// Reads a TLS certificate chain and key (PEM) and checks that they make a server
    /// configuration, naming the files when they do not.
    pub fn tls_identity(cert: &Path, key: &Path) -> Result<tonic::transport::Identity> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity.clone()))
            .map_err(|e| {
                Error::Tls(format!(
                    "--tls-cert {} / --tls-key {}: not a usable certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        Ok(identity)
    }
}

/// Binds the listening socket (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

/// Serves the sweep until every trial is final and written, taking over what `resume` (an
/// earlier run of the same sweep) finished. `local` are worker processes this
/// process started (`bnsweep run`): if they all exit before the sweep is done, it stops with an
/// error instead of waiting for ever.
pub async fn run_sweep(
    sweep: &Sweep,
    results: ResultsDir,
    resume: crate::results::Resume,
    listener: TcpListener,
    policy: Policy,
    access: Access,
    mut local: Vec<Child>,
) -> Result<SweepEnd> {
    let start = Instant::now();
    let grace = policy.poll_interval * 4;
    // The health port first, NOT_SERVING until the sweep is resumed and served.
    let (health, health_stop_tx) = Health::start(access.health).await;
    let how = Opening {
        policy,
        remote: local.is_empty(),
        keep_failed: false,
    };
    let shared = open(sweep, results, resume, how)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (live_tx, live_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(listener) = access.live {
        let live_tls = access.live_tls;
        let (shared, token) = (shared.clone(), access.token.clone());
        tokio::spawn(async move {
            let stop = async {
                let _ = live_rx.await;
            };
            if let Err(e) = crate::live::serve(
                listener,
                crate::live::Sweeps::One(shared),
                token,
                live_tls,
                stop,
            )
            .await
            {
                tracing::warn!("live report: {e}");
            }
        });
    }
    let (server, url) = spawn_grpc(
        CoordinatorService::new(shared.clone(), &sweep.name),
        listener,
        access.token,
        access.tls,
        access.max_connections,
        async {
            let _ = stop_rx.await;
        },
    )?;
    if let Some(path) = &access.address_file {
        // Written whole (renamed into place) once the server is accepting, so that a worker
        // never reads half an address; a requeued coordinator writes its new one over it.
        crate::results::write_atomic(path, format!("{url}\n").as_bytes())?;
        eprintln!("bnsweep: serving at {url} (written to {})", path.display());
    }
    health.set(true).await;
    let outcome = watch(&shared, &mut local, &health).await;
    health.set(false).await;
    if outcome.is_ok() {
        // Let the workers see `sweep_done` on their next poll, then stop.
        tokio::time::sleep(grace).await;
    }
    let _ = stop_tx.send(());
    let _ = live_tx.send(());
    let _ = health_stop_tx.send(());
    wind_down(server).await?;
    for child in &mut local {
        let _ = tokio::time::timeout(grace, child.wait()).await;
    }
    let progress = outcome?;
    Ok(SweepEnd {
        progress,
        elapsed: start.elapsed(),
    })
}

/// Waits for a gRPC server told to stop. A graceful stop waits for open connections to
/// close; a client that keeps one open without using it must not keep the coordinator alive,
/// so the wait is bounded (5 s), and what is still open then is closed.
async fn wind_down(mut server: ServerTask) -> Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(Error::ServerTask(e)),
        Err(_) => {
            tracing::warn!("connections still open after the sweep ended; closing them");
            server.abort();
            Ok(())
        }
    }
}

/// Serves `service` on `listener` until `stop`: the shared token checked on every call, TLS
/// when given an identity, keepalive pings, at most `max_connections` connections. Returns
/// the server's task and its URL.
pub fn spawn_grpc<S: pb::coordinator_server::Coordinator>(
    service: S,
    listener: TcpListener,
    token: Option<String>,
    tls: Option<tonic::transport::Identity>,
    max_connections: Option<usize>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(ServerTask, String)> {
    let service = pb::coordinator_server::CoordinatorServer::new(service)
        .max_decoding_message_size(pb::client::MAX_MESSAGE)
        .max_encoding_message_size(pb::client::MAX_MESSAGE);
    let service = tonic::service::interceptor::InterceptedService::new(service, TokenCheck(token));
    let tls_on = tls.is_some();
    // Pings on every connection: one whose worker is gone (its machine off, a cable cut)
    // closes within seconds instead of holding a file descriptor forever.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(pb::client::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(pb::client::KEEPALIVE_TIMEOUT));
    if let Some(identity) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Tls(format!("TLS certificate or key: {e}")))?;
    }
    let url = url_of(
        listener
            .local_addr()
            .map_err(|e| Error::io("listener", e))?,
        tls_on,
    );
    let max_connections = max_connections.unwrap_or(crate::connections::DEFAULT_MAX);
    let server = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        crate::connections::bounded(listener, max_connections),
        stop,
    ));
    Ok((server, url))
}

/// The task of a gRPC server.
pub type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// How [`open`] takes a sweep up.
pub struct Opening {
    pub policy: Policy,
    /// Running attempts may re-attach: their workers are elsewhere. Local workers died with
    /// the coordinator that started them (`bnsweep run`), so their trials are queued at once.
    pub remote: bool,
    /// Failed trials stay failed (a finished sweep of a `bnsweep server`); otherwise they run
    /// again.
    pub keep_failed: bool,
}

/// A sweep's state, made from its results directory: what an earlier run finished is taken
/// over, and running attempts whose journals survive are re-attached.
pub fn open(
    sweep: &Sweep,
    results: ResultsDir,
    resume: crate::results::Resume,
    how: Opening,
) -> Result<Arc<ServedSweep>> {
    let Opening {
        policy,
        remote,
        keep_failed,
    } = how;
    let mut scheduler = Scheduler::new(sweep, policy);
    let restored = scheduler.resume(&resume.priors, keep_failed, |trial, status| {
        match results.check_trial_files(trial, status, sweep.measure.as_ref()) {
            Ok(()) => true,
            Err(why) => {
                eprintln!(
                    "bnsweep: trial {} is recorded {}, but {why}: running it again",
                    trial.id,
                    status.as_str()
                );
                false
            }
        }
    });
    if restored > 0 {
        eprintln!(
            "bnsweep: resuming {}: {restored} of {} trials already done",
            results.dir().display(),
            sweep.trials.len()
        );
    }
    let mut running = resume.running;
    // The newest attempt of a trial wins; older journals are stale. Local workers died with
    // the coordinator that started them (`bnsweep run`), so their attempts cannot re-attach:
    // those trials are queued at once rather than after the worker timeout.
    running.sort_by_key(|r| std::cmp::Reverse(r.header.attempt));
    let mut reattached = 0;
    for r in running {
        let (trial, attempt) = (r.header.trial_id.clone(), r.header.attempt);
        if remote && scheduler.reattach(&r.header, r.tally, Instant::now()) {
            reattached += 1;
        } else {
            results.journal().end(&trial, attempt);
        }
    }
    if reattached > 0 {
        eprintln!(
            "bnsweep: {reattached} trial(s) were running: their workers have {:?} to come back before they run again",
            scheduler.policy.worker_timeout
        );
    }
    let shared = ServedSweep::new(scheduler, results);
    shared.write_trials()?;
    Ok(shared)
}

/// Where a sweep stands after one round of [`upkeep`].
pub struct Upkeep {
    pub progress: Progress,
    /// Every trial ended and its files, `trials.parquet` included, are written.
    pub finished: bool,
    /// Cancelled: no more trials go out.
    pub cancelling: bool,
    /// Cancelled, and no trial runs any more.
    pub cancelled: bool,
}

/// The upkeep every served sweep needs, a few times a second: workers not heard from are
/// declared lost (their trials queued again), what a full disk held back is written once it
/// can be, `trials.parquet` is rewritten when due, and the journal is finished once the
/// sweep is done.
pub fn upkeep(shared: &ServedSweep) -> Result<Upkeep> {
    let (lost, progress, done, cancelled, cancelling) = {
        let mut s = shared.scheduler();
        let lost = s.expire(Instant::now());
        (
            lost,
            s.progress(),
            s.is_done(),
            s.is_cancelled_and_idle(),
            s.is_cancelled(),
        )
    };
    for line in &lost {
        tracing::warn!("{line}");
    }
    if !lost.is_empty() {
        shared.end_journals();
        shared.touch();
    }
    // A full disk stops nothing: what could not be written is written once it can.
    shared.write_unwritten()?;
    shared.storage(shared.write_trials_if_due())?;
    let finished = done && shared.storage(shared.write_trials())?.is_some();
    if finished {
        shared.results.journal().finish();
    }
    Ok(Upkeep {
        progress,
        finished,
        cancelling,
        cancelled,
    })
}

async fn watch(
    shared: &Arc<ServedSweep>,
    local: &mut [Child],
    health: &Health,
) -> Result<Progress> {
    let mut draining = false;
    let mut reporter = Reporter::default();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let stop = pb::process::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => {
                shared.write_trials()?;
                reporter.finish(&shared.scheduler().progress());
                return Err(Error::Interrupted);
            }
        }
        let Upkeep {
            progress,
            finished,
            cancelling,
            cancelled,
        } = upkeep(shared)?;
        if cancelling && !draining {
            draining = true;
            health.set(false).await;
        }
        if finished {
            reporter.finish(&progress);
            return Ok(progress);
        }
        if cancelled {
            shared.write_trials()?;
            reporter.finish(&progress);
            return Err(Error::Cancelled);
        }
        reporter.show(&progress);
        if !local.is_empty() {
            let mut alive = 0;
            for child in local.iter_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    alive += 1;
                }
            }
            if alive == 0 {
                reporter.finish(&progress);
                return Err(Error::WorkersGone(shared.results.logs_dir()));
            }
        }
    }
}
