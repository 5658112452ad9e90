//! The workers a sweep knows: each one's id, the secret its calls must carry, and what it has
//! done (the trials it runs, its failures in a row, when it was last heard from); and how
//! worker ids and secrets are given out, which `bnsweep server`'s pool of workers
//! ([`crate::hub`]) shares.
//!
//! A sweep's [`Workers`] are part of its scheduler's state and change only through its
//! [`crate::scheduler::Scheduler`]; what others may ask of them is read-only. Nothing here
//! does I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bnsweep_proto as pb;

use crate::error::{Error, Result};

/// A registration's secret: 128 random bits from the thread's CSPRNG (seeded by the operating
/// system), as hex.
pub(crate) fn new_secret() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// A host name as it goes into a worker id: ASCII letters, digits, `-` and `.`, at most 64.
fn sanitize(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// How a coordinator gives out worker ids: `w<N>-<run tag>-<host>`, the run tag drawn when
/// the coordinator starts, so that ids never repeat across its restarts.
pub(crate) struct Ids {
    next: u64,
    run_tag: String,
}

impl Ids {
    pub(crate) fn new() -> Ids {
        Ids {
            next: 1,
            run_tag: format!("{:04x}", rand::random::<u16>()),
        }
    }

    /// A new id for a worker on `host`: the first one to come that `taken` says is free.
    pub(crate) fn mint(&mut self, host: &str, taken: impl Fn(&str) -> bool) -> String {
        loop {
            let id = format!("w{}-{}-{}", self.next, self.run_tag, sanitize(host));
            self.next += 1;
            if !taken(&id) {
                return id;
            }
        }
    }

    /// Counts on past the number of `id` (one of an earlier run, restored from a journal).
    fn count_past(&mut self, id: &str) {
        if let Some(n) = id
            .strip_prefix('w')
            .and_then(|s| s.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.next = self.next.max(n + 1);
        }
    }
}

/// One registered worker, as a sweep knows it.
pub(crate) struct Worker {
    host: String,
    /// What its calls must carry (empty: restored from a journal written without one).
    secret: String,
    last_seen: Instant,
    /// The trials it runs (their indices in the sweep).
    running: Vec<usize>,
    /// Attempts that failed on this worker since its last success.
    failures_in_a_row: u32,
    last_error: String,
    registered: Instant,
    /// Attempts this worker ended, and training steps it sent.
    finished: u32,
    steps: u64,
}

impl Worker {
    fn new(host: &str, now: Instant) -> Worker {
        Worker {
            host: host.to_string(),
            secret: String::new(),
            last_seen: now,
            running: Vec::new(),
            failures_in_a_row: 0,
            last_error: String::new(),
            registered: now,
            finished: 0,
            steps: 0,
        }
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The trials it runs (their indices in the sweep).
    pub(crate) fn running(&self) -> &[usize] {
        &self.running
    }

    /// Its heartbeat: it is not lost before the worker timeout from `now`.
    pub(crate) fn heard_from(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// It runs the trial `i` from now on.
    pub(crate) fn lease(&mut self, i: usize) {
        self.running.push(i);
    }

    /// It no longer runs the trial `i`.
    pub(crate) fn drop_attempt(&mut self, i: usize) {
        self.running.retain(|&j| j != i);
    }

    /// Keeps the trials it runs that `still` holds for; returns the others.
    pub(crate) fn keep_attempts(&mut self, still: impl Fn(usize) -> bool) -> Vec<usize> {
        let (kept, dropped) = self.running.iter().partition(|&&i| still(i));
        self.running = kept;
        dropped
    }

    /// It sent `n` more training steps.
    pub(crate) fn sent_steps(&mut self, n: u64) {
        self.steps += n;
    }

    /// One of its attempts ended (not handed back): `error` when it failed. Failures count in
    /// a row; a success starts the count again.
    pub(crate) fn ended(&mut self, error: Option<&str>) {
        self.finished += 1;
        match error {
            Some(e) => {
                self.failures_in_a_row += 1;
                self.last_error = e.to_string();
            }
            None => self.failures_in_a_row = 0,
        }
    }

    /// Whether its attempts failed `max_failures` times in a row: it gets no more trials.
    pub(crate) fn out_of_rotation(&self, max_failures: u32) -> bool {
        self.failures_in_a_row >= max_failures
    }

    /// Why it is out of rotation, for the worker.
    pub(crate) fn why_out_of_rotation(&self) -> String {
        format!(
            "its last {} attempts failed (the last with: {})",
            self.failures_in_a_row, self.last_error
        )
    }

    /// Its row in `bnsweep status`.
    fn status(&self, id: &str, now: Instant, max_failures: u32) -> pb::WorkerStatus {
        pb::WorkerStatus {
            worker_id: id.to_string(),
            host: self.host.clone(),
            running: self.running.len() as u32,
            finished: self.finished,
            steps_per_s: self.steps as f64
                / now.duration_since(self.registered).as_secs_f64().max(1e-3),
            last_seen_s: now.duration_since(self.last_seen).as_secs_f64(),
            retired: self.out_of_rotation(max_failures),
        }
    }

    /// Whether `secret` is its secret (one without a secret, from an old journal, has none).
    fn has_secret(&self, secret: &str) -> bool {
        !self.secret.is_empty() && pb::auth::same(self.secret.as_bytes(), secret.as_bytes())
    }
}

/// The workers registered with a sweep, by id, and how new ids are given out.
pub struct Workers {
    by_id: HashMap<String, Worker>,
    ids: Ids,
}

impl Workers {
    pub(crate) fn new() -> Workers {
        Workers {
            by_id: HashMap::new(),
            ids: Ids::new(),
        }
    }

    /// How many are registered.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether a worker of this id is registered, whatever its secret.
    pub fn contains(&self, worker_id: &str) -> bool {
        self.by_id.contains_key(worker_id)
    }

    /// The host a registered worker gave.
    pub fn host_of(&self, worker_id: &str) -> Option<&str> {
        self.by_id.get(worker_id).map(Worker::host)
    }

    /// The secret of a registered worker (empty when unknown).
    pub fn secret_of(&self, worker_id: &str) -> &str {
        self.by_id.get(worker_id).map_or("", |w| &w.secret)
    }

    /// Whether `worker_id` is registered with `secret` (a record without a secret, from an old
    /// journal, never matches).
    pub fn knows(&self, worker_id: &str, secret: &str) -> bool {
        self.by_id
            .get(worker_id)
            .is_some_and(|w| w.has_secret(secret))
    }

    /// Checks that a call naming `worker_id` carries its secret. An unknown id passes here
    /// (the call itself answers NOT_FOUND, and the worker registers again).
    pub fn authenticate(&self, worker_id: &str, secret: &str) -> Result<()> {
        match self.by_id.get(worker_id) {
            Some(w) if !w.secret.is_empty() && !w.has_secret(secret) => {
                Err(Error::WrongSecret(worker_id.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Registers a worker that had the id `previous` (empty for none) with the secret
    /// `previous_secret`: its id and the secret its calls must carry. When that id is still
    /// registered (its leases were restored from the journal after a restart, or it has not
    /// been declared lost yet) and the secret matches (or none was recorded), the worker gets
    /// it back and its attempts carry on; otherwise it gets a new id, never equal to
    /// `previous` nor to any id of an earlier run.
    pub(crate) fn register_again(
        &mut self,
        host: &str,
        previous: &str,
        previous_secret: &str,
        now: Instant,
    ) -> (String, String) {
        if let Some(w) = self.by_id.get_mut(previous) {
            if w.secret.is_empty() || w.has_secret(previous_secret) {
                w.host = host.to_string();
                w.last_seen = now;
                if w.secret.is_empty() {
                    w.secret = new_secret();
                }
                return (previous.to_string(), w.secret.clone());
            }
        }
        let by_id = &self.by_id;
        let id = self
            .ids
            .mint(host, |id| id == previous || by_id.contains_key(id));
        let mut w = Worker::new(host, now);
        w.secret = new_secret();
        let secret = w.secret.clone();
        self.by_id.insert(id.clone(), w);
        (id, secret)
    }

    /// Makes a worker that registered elsewhere known here under its id and secret. A worker
    /// registered already keeps its record; one restored from a journal without a secret
    /// takes this one. Returns its record.
    pub(crate) fn admit(
        &mut self,
        worker_id: &str,
        secret: &str,
        host: &str,
        now: Instant,
    ) -> &mut Worker {
        let w = self
            .by_id
            .entry(worker_id.to_string())
            .or_insert_with(|| Worker::new(host, now));
        if w.secret.is_empty() {
            w.secret = secret.to_string();
        }
        w
    }

    /// Admits the worker of an attempt an earlier coordinator journaled: its id's number is
    /// not given out again in this run.
    pub(crate) fn restore(
        &mut self,
        worker_id: &str,
        secret: &str,
        host: &str,
        now: Instant,
    ) -> &mut Worker {
        self.ids.count_past(worker_id);
        self.admit(worker_id, secret, host, now)
    }

    pub(crate) fn get_mut(&mut self, worker_id: &str) -> Option<&mut Worker> {
        self.by_id.get_mut(worker_id)
    }

    /// No worker runs the trials `trials` any more.
    pub(crate) fn drop_attempts(&mut self, trials: &[usize]) {
        for w in self.by_id.values_mut() {
            w.running.retain(|i| !trials.contains(i));
        }
    }

    /// Removes the workers not heard from for over `timeout` at `now`: they are lost.
    pub(crate) fn remove_silent(
        &mut self,
        now: Instant,
        timeout: Duration,
    ) -> Vec<(String, Worker)> {
        let lost: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        lost.into_iter()
            .filter_map(|id| self.by_id.remove(&id).map(|w| (id, w)))
            .collect()
    }

    /// Each worker's row in `bnsweep status`, by id; those whose attempts failed
    /// `max_failures` times in a row are retired.
    pub(crate) fn status(&self, now: Instant, max_failures: u32) -> Vec<pb::WorkerStatus> {
        let mut out: Vec<pb::WorkerStatus> = self
            .by_id
            .iter()
            .map(|(id, w)| w.status(id, now, max_failures))
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers of one name (one per GPU of a machine), then a coordinator restart with
    /// neither holding a lease: each registers again with its old id and secret, and gets an id
    /// of its own, never the other's; nobody acts as a worker without its secret.
    #[test]
    fn workers_of_one_name_keep_apart_across_a_restart() {
        let now = Instant::now();
        let mut first = Workers::new();
        let (a, a_secret) = first.register_again("gpu-node", "", "", now);
        let (b, b_secret) = first.register_again("gpu-node", "", "", now);
        assert_ne!(a, b);
        assert_ne!(a_secret, b_secret);
        assert!(
            first.authenticate(&a, &b_secret).is_err(),
            "b's secret is not a's"
        );
        assert!(first.authenticate(&a, "").is_err());
        assert!(first.authenticate(&a, &a_secret).is_ok());

        let mut second = Workers::new();
        let (a2, a2_secret) = second.register_again("gpu-node", &a, &a_secret, now);
        let (b2, _) = second.register_again("gpu-node", &b, &b_secret, now);
        for id in [&a2, &b2] {
            assert!(*id != a && *id != b, "{id} repeats an id of the first run");
        }
        assert_ne!(a2, b2);
        // b, polling as a2 without a2's secret, is refused before anything changes.
        assert!(matches!(
            second.authenticate(&a2, &b_secret),
            Err(Error::WrongSecret(_))
        ));
        assert!(second.authenticate(&a2, &a2_secret).is_ok());
    }

    /// A worker restored from a journal written without a secret matches no secret until it
    /// registers again (getting a new one) or a pool admits it with its own; its id's number
    /// is not given out again.
    #[test]
    fn a_worker_restored_without_a_secret_takes_the_first_it_is_given() {
        let now = Instant::now();
        let mut workers = Workers::new();
        workers.restore("w7-0000-h", "", "h", now);
        assert!(!workers.knows("w7-0000-h", ""), "no secret matches none");
        assert!(workers.authenticate("w7-0000-h", "anything").is_ok());
        workers.admit("w7-0000-h", "s", "h", now);
        assert!(workers.knows("w7-0000-h", "s"));
        workers.admit("w7-0000-h", "t", "h", now);
        assert!(workers.knows("w7-0000-h", "s"), "a known secret stays");
        assert_eq!(workers.secret_of("w7-0000-h"), "s");
        assert_eq!(workers.secret_of("nobody"), "");
        let (id, _) = workers.register_again("other host!", "", "", now);
        assert!(
            id.starts_with("w8-") && id.ends_with("-other_host_"),
            "{id}"
        );
        assert_eq!(workers.host_of(&id), Some("other host!"));
    }

    #[test]
    fn ids_skip_those_taken_and_hosts_are_made_safe() {
        let mut ids = Ids::new();
        let taken = format!("w1-{}-unknown", ids.run_tag);
        let id = ids.mint("", |id| id == taken);
        assert_eq!(id, format!("w2-{}-unknown", ids.run_tag));
        assert_eq!(sanitize(&"é".repeat(100)), "_".repeat(64));
        assert_eq!(sanitize("gpu-1.lab"), "gpu-1.lab");
    }

    #[test]
    fn failures_in_a_row_take_a_worker_out_of_rotation_and_a_success_resets_them() {
        let now = Instant::now();
        let mut workers = Workers::new();
        let (id, _) = workers.register_again("h", "", "", now);
        let w = workers.get_mut(&id).unwrap();
        w.ended(Some("disk full"));
        w.ended(None);
        w.ended(Some("disk full"));
        assert!(!w.out_of_rotation(2));
        w.ended(Some("no space"));
        assert!(w.out_of_rotation(2));
        assert_eq!(
            w.why_out_of_rotation(),
            "its last 2 attempts failed (the last with: no space)"
        );
        let rows = workers.status(now, 2);
        assert_eq!((rows[0].finished, rows[0].retired), (4, true));
    }
}
