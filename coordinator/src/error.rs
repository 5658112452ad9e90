//! The coordinator's one error type, and its one mapping to gRPC status codes.

use std::path::PathBuf;

use crate::sweep::Diagnostics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sweep file has problems; every one is listed.
    #[error("{0}")]
    Sweep(Diagnostics),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("building a results table: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A results directory this sweep cannot use (another sweep's, taken, unreadable).
    #[error("{0}")]
    Refused(String),
    /// Command-line options that do not go together, or a value they cannot take.
    #[error("{0}")]
    Usage(String),
    /// The shared token (or its file) cannot be read or sent.
    #[error("{0}")]
    Token(String),
    /// `--tls-cert`/`--tls-key` that do not make a usable certificate.
    #[error("{0}")]
    Tls(String),
    /// A sweep whose data is not on this machine (`bnsweep run`).
    #[error("{0}")]
    MissingData(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `status` or `cancel` could not reach the coordinator.
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The worker program `bnsweep run` starts.
    #[error("cannot start the worker `{}`: {source} (build it with `cargo build --release`, or set BNSWEEP_WORKER_BIN)", program.display())]
    WorkerProgram {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every local worker of `bnsweep run` exited with trials left.
    #[error("every worker exited before the sweep was done; their logs are in {}", .0.display())]
    WorkersGone(PathBuf),
    /// A directory `bnsweep report` cannot read as results.
    #[error("{}: {source} (is {} a bnsweep results directory?)", stored.display(), dir.display())]
    NotResults {
        dir: PathBuf,
        stored: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown worker `{0}`: register first (the coordinator may have restarted)")]
    UnknownWorker(String),
    #[error("unknown trial `{0}`")]
    UnknownTrial(String),
    #[error("no sweep `{0}` on this coordinator (`bnsweep list` shows its sweeps)")]
    UnknownSweep(String),
    /// A submitted sweep whose name another sweep holds, or that was submitted already.
    #[error("{0}")]
    SweepExists(String),
    /// A call naming a worker without that worker's registration secret.
    #[error("this call does not carry the registration secret of worker `{0}`")]
    WrongSecret(String),
    #[error("trial {trial} attempt {attempt} is not leased to worker {worker}")]
    NotLeased {
        trial: String,
        attempt: u32,
        worker: String,
    },
    #[error("metric batch {got} of trial {trial} arrived while batch {expected} was due")]
    OutOfOrder {
        trial: String,
        expected: u64,
        got: u64,
    },
    #[error("worker version {worker} does not match coordinator version {coordinator}")]
    VersionMismatch { worker: String, coordinator: String },
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC server task: {0}")]
    ServerTask(tokio::task::JoinError),
    #[error("interrupted; finished trials are kept: run the same command again to resume")]
    Interrupted,
    #[error("cancelled; finished trials are kept: run the same command again to resume")]
    Cancelled,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A full or failing disk (no space, over quota, an I/O error): the coordinator keeps
    /// what it has, answers UNAVAILABLE (workers back off and retry) and carries on once the
    /// disk takes writes again.
    pub fn is_storage(&self) -> bool {
        let io = match self {
            Error::Io { source, .. } => Some(source),
            Error::Parquet {
                source: parquet::errors::ParquetError::External(e),
                ..
            } => e.downcast_ref::<std::io::Error>(),
            _ => None,
        };
        let text = self.to_string();
        io.is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || e.raw_os_error() == Some(EIO)
        }) || text.contains("No space left on device")
    }
}

/// EIO on Linux: the disk failed the write.
const EIO: i32 = 5;

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        use tonic::Code;
        let code = match &e {
            Error::UnknownWorker(_) | Error::UnknownTrial(_) | Error::UnknownSweep(_) => {
                Code::NotFound
            }
            Error::SweepExists(_) => Code::AlreadyExists,
            Error::WrongSecret(_) => Code::PermissionDenied,
            Error::NotLeased { .. } | Error::OutOfOrder { .. } | Error::VersionMismatch { .. } => {
                Code::FailedPrecondition
            }
            Error::InvalidArgument(_) | Error::Sweep(_) => Code::InvalidArgument,
            Error::Refused(_)
            | Error::Usage(_)
            | Error::Token(_)
            | Error::Tls(_)
            | Error::MissingData(_)
            | Error::NotResults { .. } => Code::FailedPrecondition,
            Error::Listen { .. }
            | Error::Unreachable { .. }
            | Error::WorkerProgram { .. }
            | Error::WorkersGone(_)
            | Error::ServerTask(_) => Code::Internal,
            Error::Interrupted | Error::Cancelled => Code::Unavailable,
            e if e.is_storage() => Code::Unavailable,
            Error::Io { .. } | Error::Parquet { .. } | Error::Arrow(_) | Error::Transport(_) => {
                Code::Internal
            }
        };
        tonic::Status::new(code, e.to_string())
    }
}
