//! `bnsweep-worker simulate`: many workers in one process, for load tests of a coordinator
//! (bench/load.sh). Each simulated worker is the real agent (registration, polls and leases,
//! numbered metric batches, retries, outcomes) on a connection of its own; only the training is
//! fake: a trial emits, at a set pace per step, the rows a real one would (a train row every
//! step, an eval row every `eval_every` steps and at the last), without touching libtorch.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tch::Device;
use tokio::sync::mpsc;

use crate::agent::{self, Config};
use crate::error::{Error, Result};
use crate::runner::{Msg, Runner, Started, Stop};
use crate::trainer::{Ending, Row};

#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Simulated workers, each with its own connection and registration.
    #[arg(long, default_value_t = 100)]
    pub agents: u32,
    /// Milliseconds each simulated training step takes (0: as fast as the rows can go).
    #[arg(long, default_value_t = 10.0)]
    pub step_ms: f64,
}

/// What a simulated worker does instead of training, and what it measures.
#[derive(Debug)]
pub struct Simulation {
    pub step: Duration,
    /// Trials each simulated worker runs at once.
    pub slots: u32,
    /// Dispatch latencies: from a poll asking for trials to the trials starting.
    pub dispatch: Mutex<Vec<Duration>>,
}

impl Simulation {
    pub fn new(args: &SimulateArgs, slots: u32) -> Simulation {
        Simulation {
            step: Duration::from_secs_f64(args.step_ms.max(0.0) / 1000.0),
            slots: slots.max(1),
            dispatch: Mutex::new(Vec::new()),
        }
    }
}

impl Runner for Simulation {
    fn slots(&self) -> u32 {
        self.slots
    }

    fn devices(&self) -> Vec<Device> {
        vec![Device::Cpu]
    }

    /// Fakes the attempt on a thread of its own, at once.
    fn start(
        self: Arc<Self>,
        attempt: pb::TrialAssignment,
        stop: Stop,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Started {
        let (spec, pace) = (attempt.spec.unwrap_or_default(), self.step);
        std::thread::spawn(move || {
            let emit = |row| {
                let _ = tx.send(Msg::Row(row));
            };
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| train(&spec, pace, emit, stop)))
                    .unwrap_or_else(|_| Err(Error::Crashed("the simulation panicked".into())));
            let _ = tx.send(Msg::End(result));
        });
        Box::pin(std::future::ready(Device::Cpu))
    }

    fn dispatched(&self, took: Duration) {
        self.dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took);
    }
}

/// Emits a trial's rows at the simulation's pace; stops early when `stop` says why.
pub fn train(
    spec: &pb::TrialSpec,
    step: Duration,
    mut emit: impl FnMut(Row),
    stop: impl Fn() -> Option<String>,
) -> Result<Ending> {
    let start = Instant::now();
    let every = spec.eval_every.max(1);
    // Rows go out in bursts of whatever is due, so that hundreds of simulated workers do not
    // cost a thread wake-up per step.
    let tick = Duration::from_millis(50);
    let mut done = 0u64;
    while done < spec.steps {
        if let Some(why) = stop() {
            return Err(Error::Stopped(why));
        }
        let due = if step.is_zero() {
            spec.steps
        } else {
            ((start.elapsed().as_secs_f64() / step.as_secs_f64()) as u64).min(spec.steps)
        };
        for s in done + 1..=due {
            let loss = 2.3 / (1.0 + s as f64 / 100.0);
            emit(Row::Train(pb::TrainRow {
                step: s,
                epoch: 0,
                loss,
                acc: 1.0 - loss / 2.3,
                lr: spec.lr,
                wall_s: start.elapsed().as_secs_f64(),
            }));
            if s % every == 0 || s == spec.steps {
                emit(Row::Eval(pb::EvalRow {
                    step: s,
                    test_loss: loss * 1.1,
                    test_acc: 1.0 - loss / 2.3 - 0.05,
                }));
            }
        }
        done = due;
        if done < spec.steps {
            std::thread::sleep(tick);
        }
    }
    Ok(Ending::Completed)
}

/// Runs `args.agents` simulated workers, each running its trials on `sim`, against the
/// coordinator of `base` until the sweep is done; prints one JSON line: agents, trials
/// started, dispatch latency percentiles, wall time.
pub async fn run(args: &SimulateArgs, sim: Arc<Simulation>, base: Config) -> Result<agent::Exit> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        let cfg = Config {
            name: format!("{}-{i}", base.name),
            runner: sim.clone(),
            ..base.clone()
        };
        tasks.push(tokio::spawn(agent::run(cfg)));
    }
    let (mut failed, mut left) = (0, false);
    for t in tasks {
        match t.await {
            Ok(Ok(agent::Exit::Finished)) => {}
            Ok(Ok(agent::Exit::WorkLeft)) => left = true,
            Ok(Err(e)) => {
                failed += 1;
                tracing::error!("a simulated worker failed: {e}");
            }
            Err(e) => {
                failed += 1;
                tracing::error!("a simulated worker panicked: {e}");
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = sim
        .dispatch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        "{{\"agents\": {}, \"failed_agents\": {failed}, \"dispatches\": {}, \"dispatch_p50_ms\": {:.3}, \"dispatch_p99_ms\": {:.3}, \"dispatch_max_ms\": {:.3}, \"wall_s\": {wall:.3}}}",
        args.agents,
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    if failed > 0 {
        return Err(Error::Simulation(format!(
            "{failed} of {} simulated workers failed",
            args.agents
        )));
    }
    Ok(if left {
        agent::Exit::WorkLeft
    } else {
        agent::Exit::Finished
    })
}
