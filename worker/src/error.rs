//! The worker's one error type. Whether another attempt could succeed is decided here, once.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The trial's data is missing or malformed on this machine: retrying will not help.
    #[error("dataset: {path}: {message}")]
    Data { path: PathBuf, message: String },
    /// The trial asks for something this worker cannot train (another version's model, say).
    #[error("unsupported trial: {0}")]
    Unsupported(String),
    /// libtorch failed (out of memory, a CUDA error): another attempt may succeed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The worker is stopping (SIGTERM) or lost the trial's lease: the trial is given back.
    #[error("stopped before the end: {0}")]
    Stopped(String),
    /// The trainer panicked, or its slot process died (killed, aborted).
    #[error("trainer crashed: {0}")]
    Crashed(String),
    /// The attempt failed in its slot process; the slot said why and whether to retry.
    #[error("{message}")]
    InSlot { message: String, retryable: bool },
    /// The device asked for (`--device`, `--gpus`, `--mps`) is not there or cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A setting the worker cannot use (`--token`, `--coordinator`, `--drain-signal`); the
    /// text names it.
    #[error("{0}")]
    Config(String),
    /// The certificate of `--tls-ca` cannot be read.
    #[error("--tls-ca {}: {source}", path.display())]
    Tls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--coordinator-file` stayed without an address for the whole patience.
    #[error(
        "--coordinator-file {}: no coordinator address there after {waited:?} (is `bnsweep serve --address-file` running?)",
        path.display()
    )]
    NoAddress {
        path: PathBuf,
        waited: std::time::Duration,
    },
    /// A slot process cannot set up its output to its worker.
    #[error("cannot set up its output: {0}")]
    SlotSetup(std::io::Error),
    /// `bnsweep-worker simulate` failed as a whole.
    #[error("simulate: {0}")]
    Simulation(String),
    /// A file this program writes (`bnsweep-worker trace`).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot reach the coordinator at {url}: {}",
        bnsweep_proto::error_chain(source)
    )]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the coordinator took this worker out of rotation: {0}")]
    Retired(String),
    #[error("the coordinator refused this worker: {0}")]
    Unauthenticated(String),
    #[error("coordinator answered: {0}")]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        match s.code() {
            tonic::Code::Unauthenticated => Error::Unauthenticated(s.message().to_string()),
            _ => Error::Rpc(s),
        }
    }
}

impl Error {
    /// True when the failure is the infrastructure's, not the trial's own.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Data { .. } | Error::Unsupported(_) => false,
            Error::InSlot { retryable, .. } => *retryable,
            _ => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
