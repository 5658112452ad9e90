//! Training one trial: the loop of bn-experiments.md's protocol, reporting a row per step
//! and one per evaluation.

pub mod data;
pub mod model;
pub mod rng;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bnsweep_proto as pb;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use crate::error::{Error, Result};
use data::{DeviceSplit, HostSplit, Normalizer};
use model::{Model, StepNoise};

/// Steps whose loss and accuracy are read back from the device together.
const READ_EVERY: u64 = 25;
/// Images per forward pass when evaluating.
const EVAL_BATCH: i64 = 1000;

/// Rows a trial produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Train(pb::TrainRow),
    Eval(pb::EvalRow),
}

/// How a trial that ran to its end (or blew up) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// The training loss became NaN or infinite; its rows up to that step were reported.
    Diverged,
}

/// The training and test data of a trial, on the host; shared by trials of the same dataset.
pub struct HostData {
    pub train: HostSplit,
    pub test: HostSplit,
}

/// Loads a trial's dataset on the host.
pub fn load_data(spec: &pb::DatasetSpec) -> Result<HostData> {
    match spec.name.as_str() {
        "cifar10" => {
            let dir = Path::new(&spec.path);
            Ok(HostData {
                train: data::read_cifar_files(dir, &data::TRAIN_FILES, spec.train_size as usize)?,
                test: data::read_cifar_files(dir, &[data::TEST_FILE], spec.test_size as usize)?,
            })
        }
        "synthetic" => {
            let (train, test) = data::synthetic(
                spec.data_seed,
                spec.train_size as usize,
                spec.test_size as usize,
            );
            Ok(HostData { train, test })
        }
        other => Err(Error::Unsupported(format!("dataset `{other}`"))),
    }
}

/// Trains one trial on `device`, handing every row to `emit` as soon as it is known.
pub fn train(
    spec: &pb::TrialSpec,
    data: Arc<HostData>,
    device: Device,
    mut emit: impl FnMut(Row),
) -> Result<Ending> {
    let default_model = pb::ModelSpec::default();
    let default_opt = pb::OptimizerSpec::default();
    let model_spec = spec.model.as_ref().unwrap_or(&default_model);
    let opt_spec = spec.optimizer.as_ref().unwrap_or(&default_opt);
    if opt_spec.name != "sgd" {
        return Err(Error::Unsupported(format!("optimizer `{}`", opt_spec.name)));
    }
    let augment = spec.dataset.as_ref().is_some_and(|d| d.augment);
    let model = Model::new(
        &model_spec.name,
        model_spec.width,
        spec.bn,
        spec.seed,
        device,
    )
    .ok_or_else(|| Error::Unsupported(format!("model `{}`", model_spec.name)))?;
    let mut opt = nn::Sgd {
        momentum: opt_spec.momentum,
        dampening: 0.0,
        wd: opt_spec.weight_decay,
        nesterov: opt_spec.nesterov,
    }
    .build(&model.vs, spec.lr)?;

    let (mean, std) = data::channel_stats(&data.train);
    let norm = Normalizer::new(mean, std, device);
    let train_set = DeviceSplit::new(&data.train, device);
    let test_set = DeviceSplit::new(&data.test, device);
    let batch = i64::from(spec.batch_size);
    let per_epoch = (train_set.len / batch).max(1) as u64;
    if batch > train_set.len {
        return Err(Error::Unsupported(format!(
            "batch size {batch} is larger than the training set ({} images)",
            train_set.len
        )));
    }

    let start = Instant::now();
    let mut order: Option<(u64, Tensor)> = None;
    let mut pending: Vec<(pb::TrainRow, Tensor)> = Vec::new();
    for step in 1..=spec.steps {
        let index = step - 1;
        let epoch = index / per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, epoch_order(spec.seed, epoch, train_set.len, device)));
        }
        let (_, perm) = order.as_ref().expect("set above");
        let at = ((index % per_epoch) as i64) * batch;
        let idx = perm.narrow(0, at, batch);
        let mut images = train_set.images.index_select(0, &idx);
        if augment {
            images = data::augment(&images, spec.seed, step);
        }
        let x = norm.apply(&images);
        let y = train_set.labels.index_select(0, &idx);
        let noise = StepNoise {
            level: spec.noise,
            seed: spec.seed,
            step,
        };
        let logits = model
            .net
            .forward(&x, true, (spec.noise > 0.0).then_some(noise));
        let loss = logits.cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        let acc = logits.accuracy_for_logits(&y);
        let row = pb::TrainRow {
            step,
            epoch: epoch as u32,
            loss: 0.0,
            acc: 0.0,
            lr: spec.lr,
            wall_s: start.elapsed().as_secs_f64(),
        };
        pending.push((row, Tensor::stack(&[loss.detach(), acc.detach()], 0)));
        let eval_due = step % spec.eval_every == 0 || step == spec.steps;
        if (step % READ_EVERY == 0 || eval_due) && flush(&mut pending, &mut emit)? {
            return Ok(Ending::Diverged);
        }
        if eval_due {
            let (test_loss, test_acc) = evaluate(&model, &test_set, &norm);
            emit(Row::Eval(pb::EvalRow {
                step,
                test_loss,
                test_acc,
            }));
        }
    }
    Ok(Ending::Completed)
}

/// Reads the pending steps' loss and accuracy back in one transfer and emits their rows.
/// Returns true if a loss was not finite: rows up to and including that step are emitted.
fn flush(pending: &mut Vec<(pb::TrainRow, Tensor)>, emit: &mut impl FnMut(Row)) -> Result<bool> {
    if pending.is_empty() {
        return Ok(false);
    }
    let values = Tensor::stack(&pending.iter().map(|(_, t)| t).collect::<Vec<_>>(), 0)
        .to_kind(Kind::Double)
        .to_device(Device::Cpu);
    let values: Vec<f64> = Vec::try_from(values.flatten(0, -1))?;
    for ((mut row, _), pair) in pending.drain(..).zip(values.chunks_exact(2)) {
        row.loss = pair[0];
        row.acc = pair[1];
        let diverged = !row.loss.is_finite();
        emit(Row::Train(row));
        if diverged {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The order of the training images in one epoch: a permutation drawn on the host from the
/// trial's seed and the epoch, moved to the device once per epoch.
fn epoch_order(seed: u64, epoch: u64, n: i64, device: Device) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(rng::key(seed, 0, epoch));
    let mut perm: Vec<i64> = (0..n).collect();
    perm.shuffle(&mut rng);
    Tensor::from_slice(&perm).to_device(device)
}

/// Mean loss and accuracy over the whole test split, in evaluation mode, without noise.
fn evaluate(model: &Model, test: &DeviceSplit, norm: &Normalizer) -> (f64, f64) {
    tch::no_grad(|| {
        let mut loss_sum = Tensor::zeros([], (Kind::Double, test.images.device()));
        let mut correct = Tensor::zeros([], (Kind::Int64, test.images.device()));
        let mut at = 0;
        while at < test.len {
            let n = EVAL_BATCH.min(test.len - at);
            let x = norm.apply(&test.images.narrow(0, at, n));
            let y = test.labels.narrow(0, at, n);
            let logits = model.net.forward(&x, false, None);
            let batch_loss = logits.cross_entropy_for_logits(&y).to_kind(Kind::Double) * (n as f64);
            loss_sum += batch_loss;
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64);
            at += n;
        }
        let n = test.len.max(1) as f64;
        (
            loss_sum.double_value(&[]) / n,
            correct.double_value(&[]) / n,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lr: f64, bn: bool, noise: f64, augment: bool) -> pb::TrialSpec {
        pb::TrialSpec {
            seed: 5,
            lr,
            bn,
            noise,
            model: Some(pb::ModelSpec {
                name: "vgg8".into(),
                width: 0.125,
            }),
            dataset: Some(pb::DatasetSpec {
                name: "synthetic".into(),
                augment,
                train_size: 256,
                test_size: 64,
                data_seed: 0,
                ..Default::default()
            }),
            optimizer: Some(pb::OptimizerSpec {
                name: "sgd".into(),
                momentum: 0.9,
                ..Default::default()
            }),
            batch_size: 32,
            steps: 30,
            eval_every: 10,
        }
    }

    fn run(spec: &pb::TrialSpec) -> (Ending, Vec<Row>) {
        let data = Arc::new(load_data(spec.dataset.as_ref().unwrap()).unwrap());
        let mut rows = Vec::new();
        let ending = train(spec, data, Device::Cpu, |r| rows.push(r)).unwrap();
        (ending, rows)
    }

    fn losses(rows: &[Row]) -> Vec<f64> {
        rows.iter()
            .filter_map(|r| match r {
                Row::Train(t) => Some(t.loss),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn same_configuration_and_seed_give_the_same_loss_curve() {
        tch::set_num_threads(1);
        let s = spec(0.05, true, 1.0, true);
        let (ending, a) = run(&s);
        let (_, b) = run(&s);
        assert_eq!(ending, Ending::Completed);
        assert_eq!(losses(&a), losses(&b));
        let other = pb::TrialSpec { seed: 6, ..s };
        assert_ne!(losses(&a), losses(&run(&other).1));
        let evals: Vec<u64> = a
            .iter()
            .filter_map(|r| match r {
                Row::Eval(e) => Some(e.step),
                _ => None,
            })
            .collect();
        assert_eq!(evals, vec![10, 20, 30]);
        assert_eq!(losses(&a).len(), 30);
    }

    #[test]
    fn a_nan_loss_ends_the_trial_as_diverged_keeping_its_rows() {
        let s = pb::TrialSpec {
            steps: 200,
            eval_every: 1000,
            ..spec(1e6, false, 0.0, false)
        };
        let (ending, rows) = run(&s);
        assert_eq!(ending, Ending::Diverged);
        let l = losses(&rows);
        assert!(!l.is_empty() && l.len() < 200, "{} rows", l.len());
        assert!(!l.last().unwrap().is_finite());
        assert!(l[..l.len() - 1].iter().all(|v| v.is_finite()));
    }
}
