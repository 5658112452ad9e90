//! The gRPC contract between the bnsweep coordinator and its workers (`bnsweep.proto`).

#![allow(clippy::all, clippy::pedantic)]

/// Generated messages and the `Coordinator` service (client and server).
pub mod v1 {
    tonic::include_proto!("bnsweep.v1");
}

pub use v1::*;

/// The version both sides must agree on; a worker of another version is refused at registration.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");
