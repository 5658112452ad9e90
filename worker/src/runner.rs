//! What runs a worker's attempts, as the agent sees it: the [`Runner`] trait, implemented by
//! the slot processes ([`crate::slot::Slots`]) and by the load test's fake training
//! ([`crate::simulate::Simulation`]), and the messages an attempt sends while it runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bnsweep_proto as pb;
use tch::Device;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::trainer::{Ending, Row};

/// What an attempt tells the worker while it runs.
pub enum Msg {
    Row(Row),
    End(Result<Ending>),
}

/// Asked while an attempt runs: a reason stops it at its next step (it is handed back).
pub type Stop = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Where a started attempt runs, once it has started.
pub type Started = Pin<Box<dyn Future<Output = Device> + Send>>;

/// Runs a worker's attempts, as many at once as it has slots.
pub trait Runner: Send + Sync {
    /// How many attempts may run at once.
    fn slots(&self) -> u32;

    /// The devices the attempts run on, as registered with the coordinator.
    fn devices(&self) -> Vec<Device>;

    /// Starts `attempt` (waiting for a free slot if need be), which sends its rows and then
    /// its end to `tx`, and is stopped when `stop` gives a reason; resolves to the device it
    /// runs on.
    fn start(
        self: Arc<Self>,
        attempt: pb::TrialAssignment,
        stop: Stop,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Started;

    /// Told, for each attempt a poll brought, how long after the poll was sent it arrived.
    fn dispatched(&self, _took: Duration) {}
}
