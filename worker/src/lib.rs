//! bnsweep's worker: a gRPC agent that pulls trials from the coordinator and trains them with
//! libtorch (through tch), measuring what docs/measurements.md defines.

pub mod agent;
pub mod bench;
pub mod device;
pub mod error;
pub mod fetch;
pub mod framing;
pub mod mps;
pub mod placement;
pub mod runner;
pub mod simulate;
pub mod slot;
pub mod trace;
pub mod trainer;

pub use error::{Error, Result};
