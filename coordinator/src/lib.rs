//! bnsweep's coordinator: sweep files, scheduling trials onto workers over gRPC, and writing
//! the results as Parquet. It does not link libtorch; workers (`bnsweep-worker`) train.
//!
//! A newcomer's map: `sweep` reads sweep files into trials; `trial` is the vocabulary of a
//! trial's state; `scheduler` changes that state (queue, leases, outcomes) with no I/O,
//! `registry` being the workers it knows (ids, secrets, their attempts and failures);
//! `results` writes and reads the results directory (journal, Parquet; `results::columns` is
//! the one reader of its Parquet files, as plain columns); `served` is one sweep being served
//! (its scheduler, results and file writing); `service` is that sweep's gRPC handlers; `server`
//! runs a sweep on a socket (`bnsweep serve`, `bnsweep run`); `hub` holds many sweeps behind
//! one service (`bnsweep server`); `live` and `report` show the results; `progress` and
//! `connections` are small helpers.

pub mod connections;
pub mod error;
pub mod hub;
pub mod live;
pub mod local;
pub mod progress;
pub mod registry;
pub mod report;
pub mod results;
pub mod scheduler;
pub mod served;
pub mod server;
pub mod service;
pub mod sweep;
pub mod trial;

pub use error::{Error, Result};
