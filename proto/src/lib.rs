//! The gRPC contract between the bnsweep coordinator and its workers (`bnsweep.proto`).

#![allow(clippy::all, clippy::pedantic)]

/// Generated messages and the `Coordinator` service (client and server).
pub mod v1 {
    tonic::include_proto!("bnsweep.v1");
}

pub use v1::*;

/// The version both sides must agree on; a worker of another version is refused at registration.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shared token: workers send it in this metadata entry as `Bearer TOKEN`, and a
/// coordinator started with a token refuses every call without it (`UNAUTHENTICATED`).
pub mod auth {
    /// The metadata key.
    pub const HEADER: &str = "authorization";

    /// The header value for a token.
    pub fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// Compares two byte strings in time independent of where they differ.
    pub fn same(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
