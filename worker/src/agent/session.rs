//! The worker's calls to the coordinator outside its poll: connecting, registering, who the
//! worker is and which attempts it holds, and retrying a call, with one [`Backoff`] between
//! tries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use pb::client::Client;
use tonic::Code;

use super::{read_address, Config, Coordinator};
use crate::device;
use crate::error::{Error, Result};

/// The waits between tries of a call to the coordinator: 100 ms, doubling up to 5 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    /// The next wait.
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (wait * 2).min(Self::LONGEST);
        wait
    }

    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.next()).await;
    }
}

/// Connects to the coordinator at `url`, retrying for up to the patience; with an address
/// file, each retry reads it again (a stale address left by an earlier coordinator gives way
/// to the new one as soon as it is written). Returns the client and the URL it reached.
pub(super) async fn connect(cfg: &Config, url: &str) -> Result<(Client, String)> {
    let mut url = url.to_string();
    let ca = match &cfg.tls_ca {
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::Tls {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let auth = pb::client::Auth::new(cfg.token.as_deref())
        .map_err(|e| Error::Config(format!("--token: {e}")))?;
    let deadline = Instant::now() + cfg.patience;
    let mut backoff = Backoff::new();
    loop {
        let endpoint = pb::client::endpoint(&url, ca.as_deref())
            .map_err(|e| Error::Config(format!("--coordinator {e}")))?;
        match endpoint.connect().await {
            Ok(channel) => return Ok((pb::client::new(channel, auth), url)),
            Err(source) if Instant::now() >= deadline => {
                return Err(Error::Connect {
                    url: url.to_string(),
                    source,
                })
            }
            Err(e) => {
                tracing::warn!("coordinator {url} not reachable yet ({e}); retrying");
                backoff.wait().await;
                if let Coordinator::File(path) = &cfg.coordinator {
                    if let Some(moved) = read_address(path) {
                        url = moved;
                    }
                }
            }
        }
    }
}

/// Registers; `previous` is the id this worker had (empty the first time), which the
/// coordinator gives back when it still holds leases for it (after its own restart).
pub(super) async fn register(
    client: &mut Client,
    cfg: &Config,
    previous: &Credentials,
) -> Result<(Credentials, Duration)> {
    let resp = client
        .register(pb::RegisterRequest {
            host: cfg.name.clone(),
            devices: cfg.runner.devices().into_iter().map(device::name).collect(),
            slots: cfg.runner.slots(),
            version: pb::PROTOCOL_VERSION.into(),
            previous_worker_id: previous.id.clone(),
            previous_worker_secret: previous.secret.clone(),
        })
        .await?
        .into_inner();
    let previous = &previous.id;
    if previous.is_empty() || *previous == resp.worker_id {
        tracing::info!(worker = %resp.worker_id, "registered with {:?}", cfg.coordinator);
    } else {
        tracing::warn!(
            worker = %resp.worker_id,
            "registered again with {:?} under a new id: the trials running as {previous} stop",
            cfg.coordinator
        );
    }
    Ok((
        Credentials {
            id: resp.worker_id,
            secret: resp.worker_secret,
        },
        Duration::from_millis(u64::from(resp.poll_interval_ms.max(50))),
    ))
}

/// A registration: the worker's id and the secret its calls carry.
#[derive(Clone, Default)]
pub(super) struct Credentials {
    pub(super) id: String,
    pub(super) secret: String,
}

/// Who this worker is to the coordinator, and the attempts it holds: shared by the poll loop
/// and the trials.
pub(super) struct Identity {
    /// The client of the coordinator now (replaced when its address file moves).
    client: Mutex<Client>,
    id: Mutex<Credentials>,
    /// Attempts running, or ended without their outcome acknowledged: listed in every poll.
    leases: Mutex<Vec<pb::AttemptRef>>,
    /// How long the coordinator may stay unreachable.
    patience: Duration,
}

impl Identity {
    pub(super) fn new(client: Client, id: Credentials, patience: Duration) -> Identity {
        Identity {
            client: Mutex::new(client),
            id: Mutex::new(id),
            leases: Mutex::new(Vec::new()),
            patience,
        }
    }

    fn id(&self) -> String {
        self.credentials().id
    }

    pub(super) fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_client(&self, client: Client) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }

    pub(super) fn credentials(&self) -> Credentials {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_credentials(&self, id: Credentials) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    pub(super) fn leases(&self) -> Vec<pb::AttemptRef> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds (`held`) or drops an attempt.
    pub(super) fn lease(&self, a: &pb::TrialAssignment, held: bool) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        leases.retain(|l| l.trial_id != a.trial_id || l.attempt != a.attempt);
        if held {
            leases.push(pb::AttemptRef {
                trial_id: a.trial_id.clone(),
                attempt: a.attempt,
            });
        }
    }
}

/// Retries a call of an attempt while the coordinator is unreachable or busy, or does not
/// know this worker while it registers again under the same id (the coordinator restarted),
/// for up to the worker's patience. Any other answer is final.
pub(super) async fn retry<F, Fut>(me: &Identity, worker_id: &str, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut deadline = Instant::now() + me.patience;
    let mut backoff = Backoff::new();
    loop {
        let s = match call().await {
            Ok(()) => return Ok(()),
            Err(s) => s,
        };
        // A cut connection shows as UNAVAILABLE, CANCELLED (a call in flight when it closed)
        // or UNKNOWN; the coordinator itself never answers CANCELLED or DEADLINE_EXCEEDED.
        let passing = matches!(
            s.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Unknown
        ) || (s.code() == Code::NotFound && me.id() == worker_id);
        if s.metadata().contains_key(pb::WAITING_ON_DISK) {
            // The coordinator answered: it waits for disk space, not gone. Counted before the
            // patience is looked at: backing off can wait longer than the patience itself.
            deadline = Instant::now() + me.patience;
        }
        if !passing || Instant::now() >= deadline {
            return Err(s.into());
        }
        tracing::warn!(
            "coordinator busy, unreachable or restarting ({}); retrying",
            s.message()
        );
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_100_ms_up_to_5_s() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    /// A coordinator waiting for disk space answers; however long it waits, and however long
    /// the backoff between calls grows beyond the patience, the call is not given up.
    #[tokio::test]
    async fn a_coordinator_waiting_on_disk_is_waited_for_beyond_the_patience() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let client = pb::client::new(channel, pb::client::Auth::new(None).unwrap());
        let me = Identity::new(client, Credentials::default(), Duration::from_millis(250));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let done = retry(&me, "w", || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 5 {
                    let mut s = tonic::Status::unavailable("waiting for disk space");
                    s.metadata_mut()
                        .insert(pb::WAITING_ON_DISK, "1".parse().unwrap());
                    Err(s)
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert!(done.is_ok(), "{done:?}");
        // 100 + 200 + 400 + 800 + 1600 ms of backoff: far beyond the patience.
        assert!(started.elapsed() > Duration::from_millis(3000));
        // Silence (no answer) is given up after the patience.
        let silent = retry(&me, "w", || async {
            Err::<(), _>(tonic::Status::unavailable("connection refused"))
        })
        .await;
        assert!(silent.is_err());
    }
}
