//! The gRPC contract between the bnsweep coordinator and its workers (`bnsweep.proto`).

/// Generated messages and the `Coordinator` service (client and server); the lints are the
/// generator's business, not this crate's.
#[allow(clippy::all, clippy::pedantic, rust_2018_idioms, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("bnsweep.v1");
}

pub use v1::*;

/// The version both sides must agree on; a worker of another version is refused at registration.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The shared token: workers send it in this metadata entry as `Bearer TOKEN`, and a
/// coordinator started with a token refuses every call without it (`UNAUTHENTICATED`).
/// Metadata of an UNAVAILABLE answer from a coordinator that is up but cannot write its
/// results yet (a full disk): workers retry without counting the wait against their patience.
pub const WAITING_ON_DISK: &str = "bnsweep-waiting-on-disk";

pub mod process;
pub mod rows;

pub use rows::{Row, Table};

pub mod auth {
    /// The metadata key.
    pub const HEADER: &str = "authorization";

    /// The header value for a token.
    pub fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// The shared token from `--token` or from `--token-file` (what `ps` shows of a process
    /// is its arguments, so a file keeps the secret out of sight): the file's text without
    /// its trailing newline. Neither: no token. An unreadable or empty file is an error.
    pub fn token(
        given: Option<String>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<String>, String> {
        match (given.filter(|t| !t.is_empty()), file) {
            (Some(_), Some(f)) => Err(format!(
                "both a token and a token file ({}) were given: pass one",
                f.display()
            )),
            (Some(t), None) => Ok(Some(t)),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("token file {}: {e}", f.display()))?;
                let t = text.trim_end_matches(['\n', '\r']);
                if t.is_empty() {
                    Err(format!("token file {} is empty", f.display()))
                } else {
                    Ok(Some(t.to_string()))
                }
            }
            (None, None) => Ok(None),
        }
    }

    /// Compares two byte strings in time independent of where they differ.
    pub fn same(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Connecting to a coordinator, as workers and `bnsweep status`/`cancel` do.
pub mod client {
    use std::time::Duration;

    use tonic::metadata::AsciiMetadataValue;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

    use crate::coordinator_client::CoordinatorClient;

    /// Largest message either side accepts (a metric batch of many activation rows).
    pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

    /// The longest one call may take, a 64 MiB batch on a slow link included. A coordinator
    /// that stops answering (frozen, or its machine gone) fails the call then at the latest,
    /// and sooner through the keepalive below.
    pub const CALL_DEADLINE: Duration = Duration::from_secs(60);

    /// HTTP/2 pings on an open connection, also while idle; one unanswered for
    /// `KEEPALIVE_TIMEOUT` closes it, so a silent peer is noticed in seconds, not never.
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Adds the shared token to every call.
    #[derive(Clone)]
    pub struct Auth(Option<AsciiMetadataValue>);

    impl Auth {
        /// `Bearer TOKEN` for a non-empty token; nothing for none.
        pub fn new(token: Option<&str>) -> Result<Auth, String> {
            match token.filter(|t| !t.is_empty()) {
                None => Ok(Auth(None)),
                Some(t) => super::auth::bearer(t)
                    .parse()
                    .map(|v| Auth(Some(v)))
                    .map_err(|_| "the token must be printable ASCII".to_string()),
            }
        }
    }

    impl tonic::service::Interceptor for Auth {
        fn call(
            &mut self,
            mut req: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(v) = &self.0 {
                req.metadata_mut().insert(super::auth::HEADER, v.clone());
            }
            Ok(req)
        }
    }

    pub type Client = CoordinatorClient<InterceptedService<Channel, Auth>>;

    /// The endpoint of a coordinator URL. An `https://` URL speaks TLS and checks the
    /// coordinator's certificate against `ca_pem` (the PEM of the certificate authority, or
    /// of a self-signed certificate), or against the system's roots when there is none.
    pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, String> {
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_DEADLINE)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let tls = match ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("{url}: TLS: {e}"))?;
        } else if ca_pem.is_some() {
            return Err(format!(
                "{url}: a TLS certificate was given but the URL is not https://"
            ));
        }
        Ok(endpoint)
    }

    /// A client over a connected channel, sending the token with every call.
    pub fn new(channel: Channel, auth: Auth) -> Client {
        CoordinatorClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// An error and its sources, joined: tonic's transport errors say only "transport error" and
/// keep the cause (a refused connection, an untrusted certificate) in their sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
