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
    /// Take every measurement (ICS, landscape at 8 step sizes, activations, weights) every
    /// this many steps; 0 measures nothing.
    #[arg(long, default_value_t = 0)]
    pub measure_every: u64,
    /// fp32, bf16 or fp16 (autocast) for the training steps.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Train in the channels-last memory layout.
    #[arg(long)]
    pub channels_last: bool,
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
            hidden: Vec::new(),
            ..Default::default()
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
        divergence: None,
        measure: (args.measure_every > 0).then(|| pb::MeasureSpec {
            every: args.measure_every,
            ics: true,
            landscape: true,
            eta: vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
            eta_relative_to_lr: true,
            weights: true,
            activations: true,
            activation_layers: Vec::new(),
            bins: 64,
            sample: 4096,
            range_lo: -6.0,
            range_hi: 6.0,
        }),
        precision: args.precision.clone(),
        channels_last: args.channels_last,
        ..Default::default()
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
        "{{\"impl\": \"bnsweep-tch\", \"device\": \"{}\", \"batch\": {}, \"width\": {}, \"bn\": {}, \"measure_every\": {}, \"precision\": \"{}\", \"channels_last\": {}, \"steps\": {}, \"seconds\": {:.3}, \"img_per_s\": {:.1}}}",
        crate::device::name(device),
        args.batch,
        args.width,
        args.bn,
        args.measure_every,
        args.precision,
        args.channels_last,
        args.steps,
        secs,
        images / secs
    );
    Ok(())
}
