//! `bnsweep-worker bench`: training throughput of the real trainer, for comparison with the
//! PyTorch eager script in bench/ (same model, batch, optimizer and data handling).

use std::sync::Arc;
use std::time::Instant;

use bnsweep_proto as pb;
use tch::Device;

use crate::error::Result;
use crate::trainer::{self, Row};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch: u32,
    /// Width multiplier of vgg8.
    #[arg(long, default_value_t = 1.0)]
    pub width: f64,
    /// BatchNorm on or off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub bn: bool,
    /// Noise level v.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Timed steps, after the warm-up.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Untimed steps first (a multiple of 25, where the trainer reads results back).
    #[arg(long, default_value_t = 25)]
    pub warmup: u64,
    /// Training images (synthetic).
    #[arg(long, default_value_t = 10_000)]
    pub train_size: u32,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
}

/// Trains one synthetic trial and prints a JSON line with the images per second of the timed
/// steps, measured between two points where the trainer has synchronised with the device.
pub fn run(args: &BenchArgs, device: Device) -> Result<()> {
    let steps = args.warmup + args.steps;
    let spec = pb::TrialSpec {
        seed: 0,
        lr: 0.01,
        bn: args.bn,
        noise: args.noise,
        model: Some(pb::ModelSpec {
            name: "vgg8".into(),
            width: args.width,
        }),
        dataset: Some(pb::DatasetSpec {
            name: "synthetic".into(),
            train_size: args.train_size,
            test_size: 100,
            ..Default::default()
        }),
        optimizer: Some(pb::OptimizerSpec {
            name: "sgd".into(),
            momentum: args.momentum,
            ..Default::default()
        }),
        batch_size: args.batch,
        steps,
        eval_every: steps + 1,
    };
    let data = Arc::new(trainer::load_data(
        spec.dataset.as_ref().expect("set above"),
    )?);
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    trainer::train(&spec, data, device, |row| {
        if let Row::Train(r) = row {
            seen.push((r.step, Instant::now()));
        }
    })?;
    let at = |step: u64| seen.iter().find(|(s, _)| *s == step).map(|(_, t)| *t);
    let (start, end) = (at(args.warmup.max(1)), at(steps));
    let secs = match (start, end) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    let images = (args.steps * u64::from(args.batch)) as f64;
    println!(
        "{{\"impl\": \"bnsweep-tch\", \"device\": \"{}\", \"batch\": {}, \"width\": {}, \"bn\": {}, \"steps\": {}, \"seconds\": {:.3}, \"img_per_s\": {:.1}}}",
        crate::device::name(device),
        args.batch,
        args.width,
        args.bn,
        args.steps,
        secs,
        images / secs
    );
    Ok(())
}
