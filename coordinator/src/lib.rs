//! bnsweep's coordinator: sweep files, scheduling trials onto workers over gRPC, and writing
//! the results as Parquet. It does not link libtorch; workers (`bnsweep-worker`) train.

pub mod connections;
pub mod error;
pub mod hub;
pub mod live;
pub mod local;
pub mod progress;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod sweep;
pub mod trial;

pub use error::{Error, Result};
