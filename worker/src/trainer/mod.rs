//! Training one trial: the loop of docs/training.md, reporting a row per step
//! and one per evaluation.

pub mod amp;
pub mod data;
pub mod measured_step;
pub mod model;
pub mod probes;
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
use amp::{LossScale, Precision};
use data::{DeviceSplit, HostSplit, Normalizer};
use measured_step::{Measurer, Plan};
use model::{Arch, Init, Model, NoiseOptions, StepNoise};

/// Steps whose loss and accuracy are read back from the device together.
const READ_EVERY: u64 = 25;
/// Images per forward pass when evaluating.
const EVAL_BATCH: i64 = 1000;

/// Rows a trial produces, in order: the protocol crate's one type for the five kinds.
pub use bnsweep_proto::Row;

/// How a trial that ran to its end (or blew up) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// The training loss became NaN or infinite, or stayed above the bound; its rows up to
    /// that step were reported.
    Diverged,
}

impl Ending {
    /// The trial's status on the wire.
    pub fn status(self) -> pb::TrialStatus {
        match self {
            Ending::Completed => pb::TrialStatus::Completed,
            Ending::Diverged => pb::TrialStatus::Diverged,
        }
    }
}

/// Tells divergence from a loss read back step by step.
#[derive(Debug, Clone)]
struct Divergence {
    loss_above: f64,
    for_steps: u64,
    /// Consecutive steps above the bound so far.
    run: u64,
}

impl Divergence {
    fn new(spec: Option<&pb::DivergenceSpec>) -> Divergence {
        let (loss_above, for_steps) =
            spec.map_or((f64::INFINITY, 1), |d| (d.loss_above, d.for_steps.max(1)));
        Divergence {
            loss_above,
            for_steps,
            run: 0,
        }
    }

    /// True once the trial has diverged, this loss included.
    fn diverged(&mut self, loss: f64) -> bool {
        if !loss.is_finite() {
            return true;
        }
        self.run = if loss > self.loss_above {
            self.run + 1
        } else {
            0
        };
        self.run >= self.for_steps
    }
}

/// The training and test data of a trial, on the host; shared by trials of the same dataset.
pub struct HostData {
    pub train: HostSplit,
    pub test: HostSplit,
}

/// Loads a trial's dataset on the host.
pub fn load_data(spec: &pb::DatasetSpec) -> Result<HostData> {
    // Without a path, the official release from the machine's cache (downloaded once).
    let dir = |fetch: fn() -> Result<std::path::PathBuf>| -> Result<std::path::PathBuf> {
        if spec.path.is_empty() {
            fetch()
        } else {
            Ok(Path::new(&spec.path).to_path_buf())
        }
    };
    let (train_size, test_size) = (spec.train_size as usize, spec.test_size as usize);
    match spec.name.as_str() {
        "cifar10" => {
            let dir = dir(crate::fetch::cifar10)?;
            Ok(HostData {
                train: data::read_cifar_files(&dir, &data::TRAIN_FILES, train_size)?,
                test: data::read_cifar_files(&dir, &[data::TEST_FILE], test_size)?,
            })
        }
        "mnist" => {
            let dir = dir(crate::fetch::mnist)?;
            let [train_images, train_labels, test_images, test_labels] = data::MNIST_FILES;
            Ok(HostData {
                train: data::read_mnist(&dir, train_images, train_labels, train_size)?,
                test: data::read_mnist(&dir, test_images, test_labels, test_size)?,
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

/// What may look at a trial while it trains; every method does nothing by default.
pub trait Watch {
    /// Asked before every step: a reason ends the trial with [`Error::Stopped`].
    fn stop(&self) -> Option<String> {
        None
    }
    /// The model before its first step.
    fn start(&mut self, _model: &Model) {}
    /// The training-set indices of step `step`'s batch.
    fn batch(&mut self, _step: u64, _indices: &Tensor) {}
    /// The model after its last step (not after a divergence or a stop).
    fn end(&mut self, _model: &Model) {}
}

/// Watches nothing.
pub struct Unwatched;

impl Watch for Unwatched {}

/// Stops the trial when the function gives a reason.
pub struct StopWhen<F>(pub F);

impl<F: Fn() -> Option<String>> Watch for StopWhen<F> {
    fn stop(&self) -> Option<String> {
        (self.0)()
    }
}

/// Trains one trial on `device`, handing every row to `emit` as soon as it is known.
pub fn train(
    spec: &pb::TrialSpec,
    data: Arc<HostData>,
    device: Device,
    emit: impl FnMut(Row),
) -> Result<Ending> {
    train_with(spec, data, device, emit, &mut Unwatched)
}

/// [`train`], with `watch` asked whether to stop before every step and shown the model and
/// the batches (tests and `bnsweep-worker trace` look).
pub fn train_with(
    spec: &pb::TrialSpec,
    data: Arc<HostData>,
    device: Device,
    mut emit: impl FnMut(Row),
    watch: &mut impl Watch,
) -> Result<Ending> {
    let mut run = Run::new(spec, &data, device)?;
    watch.start(&run.model);
    let start = Instant::now();
    let mut order: Option<(u64, Tensor)> = None;
    for step in 1..=spec.steps {
        if let Some(reason) = watch.stop() {
            return Err(Error::Stopped(reason));
        }
        let index = step - 1;
        let epoch = index / run.per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((
                epoch,
                epoch_order(spec.seed, epoch, run.train_set.len, device),
            ));
        }
        let (_, perm) = order.as_ref().expect("set above");
        let at = ((index % run.per_epoch) as i64) * run.batch;
        let idx = perm.narrow(0, at, run.batch);
        watch.batch(step, &idx);
        if run.step(step, epoch, &idx, start, &mut emit)? {
            return Ok(Ending::Diverged);
        }
    }
    watch.end(&run.model);
    Ok(Ending::Completed)
}

/// A trial ready to train: its model, optimizer and data on the device, and what it measures.
struct Run<'a> {
    spec: &'a pb::TrialSpec,
    device: Device,
    augment: bool,
    precision: Precision,
    noise_options: NoiseOptions,
    model: Model,
    opt: nn::Optimizer,
    loss_scale: Option<LossScale>,
    measurer: Option<Measurer>,
    divergence: Divergence,
    norm: Normalizer,
    train_set: DeviceSplit,
    test_set: DeviceSplit,
    /// Images per step, and steps per epoch.
    batch: i64,
    per_epoch: u64,
    /// Steps trained whose loss and accuracy are not read back yet.
    pending: Vec<(pb::TrainRow, Tensor)>,
}

impl<'a> Run<'a> {
    /// Checks the trial against its data, then builds its model and optimizer and moves the
    /// data to `device`.
    fn new(spec: &'a pb::TrialSpec, data: &HostData, device: Device) -> Result<Run<'a>> {
        let default_model = pb::ModelSpec::default();
        let model_spec = spec.model.as_ref().unwrap_or(&default_model);
        let augment = spec.dataset.as_ref().is_some_and(|d| d.augment);
        let arch = arch(spec, model_spec, data, augment)?;
        let precision = Precision::parse(&spec.precision)?;
        let noise_options = NoiseOptions::parse(
            &spec.noise_draws,
            &spec.noise_moments,
            &spec.noise_spread,
            spec.noise_head,
        )
        .map_err(Error::Unsupported)?;
        let model = Model::new(&arch, spec.seed, device)
            .ok_or_else(|| Error::Unsupported(format!("model `{}`", model_spec.name)))?;
        if spec.channels_last {
            amp::weights_channels_last(&model.vs);
        }
        let loss_scale = (precision == Precision::Fp16).then(LossScale::new);
        let opt = optimizer(spec, &model)?;
        let measurer = Plan::new(spec.measure.as_ref(), spec.lr, spec.seed)
            .map(|plan| Measurer::new(plan, &model));
        let divergence = Divergence::new(spec.divergence.as_ref());

        let (mean, std) = data::channel_stats(&data.train);
        let norm = Normalizer::new(&mean, &std, device);
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
        Ok(Run {
            spec,
            device,
            augment,
            precision,
            noise_options,
            model,
            opt,
            loss_scale,
            measurer,
            divergence,
            norm,
            train_set,
            test_set,
            batch,
            per_epoch,
            pending: Vec::new(),
        })
    }

    /// Trains step `step` of `epoch` on the training images `idx`, measuring it when due, and
    /// emits the rows that are known; evaluates when due. Returns true once the trial has
    /// diverged.
    // `%` as before the split: a zero `eval_every` (which the coordinator refuses) still
    // fails the trial instead of never evaluating.
    #[allow(clippy::manual_is_multiple_of)]
    fn step(
        &mut self,
        step: u64,
        epoch: u64,
        idx: &Tensor,
        start: Instant,
        emit: &mut impl FnMut(Row),
    ) -> Result<bool> {
        let spec = self.spec;
        let (x, y) = self.inputs(step, idx);
        let noise = StepNoise {
            level: spec.noise,
            seed: spec.seed,
            step,
            options: self.noise_options,
        };
        let noise = (spec.noise > 0.0).then_some(noise);
        let measuring = self.measurer.as_ref().is_some_and(|m| m.plan.due(step));
        // Measure only a trial that has not diverged yet.
        if measuring && flush(&mut self.pending, &mut self.divergence, emit)? {
            return Ok(true);
        }
        let (logits, loss) = self.forward_and_update(step, measuring, &x, &y, noise, emit);
        let acc = logits.accuracy_for_logits(&y).to_kind(Kind::Float);
        let row = pb::TrainRow {
            step,
            epoch: epoch as u32,
            loss: 0.0,
            acc: 0.0,
            lr: spec.lr,
            wall_s: start.elapsed().as_secs_f64(),
        };
        self.pending
            .push((row, Tensor::stack(&[loss.detach(), acc.detach()], 0)));
        let eval_due = step % spec.eval_every == 0 || step == spec.steps;
        if (step % READ_EVERY == 0 || eval_due)
            && flush(&mut self.pending, &mut self.divergence, emit)?
        {
            return Ok(true);
        }
        if eval_due {
            let (test_loss, test_acc) = evaluate(&self.model, &self.test_set, &self.norm);
            emit(Row::Eval(pb::EvalRow {
                step,
                test_loss,
                test_acc,
            }));
        }
        Ok(false)
    }

    /// The step's batch: its images augmented and normalised, and its labels.
    fn inputs(&self, step: u64, idx: &Tensor) -> (Tensor, Tensor) {
        let mut images = self.train_set.images.index_select(0, idx);
        if self.augment {
            images = data::augment(&images, self.spec.seed, step);
        }
        let mut x = self.norm.apply(&images);
        if self.spec.channels_last {
            x = amp::channels_last(&x);
        }
        (x, self.train_set.labels.index_select(0, idx))
    }

    /// The forward pass, the backward pass and the optimizer's step (with the measurements
    /// around it when they are `due`, emitting their rows). Returns the logits and the loss.
    fn forward_and_update(
        &mut self,
        step: u64,
        due: bool,
        x: &Tensor,
        y: &Tensor,
        noise: Option<StepNoise>,
        emit: &mut impl FnMut(Row),
    ) -> (Tensor, Tensor) {
        let model = &self.model;
        let measuring = self.measurer.as_ref().filter(|_| due);
        let mut captures = Vec::new();
        let capture = measuring
            .is_some_and(|m| m.plan.activations)
            .then_some(&mut captures);
        // A measured step trains in fp32, like the measurements around it.
        let lowered = if measuring.is_some() {
            Precision::Fp32
        } else {
            self.precision
        };
        let (logits, loss) = amp::autocast(self.device, lowered, || {
            let logits = model.net.forward(x, true, noise, capture);
            let loss = logits.cross_entropy_for_logits(y).to_kind(Kind::Float);
            (logits, loss)
        });
        let opt = &mut self.opt;
        opt.zero_grad();
        match (measuring, self.loss_scale.as_mut()) {
            (None, None) => {
                loss.backward();
                opt.step();
            }
            (None, Some(scale)) => {
                (&loss * scale.scale).backward();
                let grads: Vec<Tensor> = model
                    .vs
                    .trainable_variables()
                    .iter()
                    .map(Tensor::grad)
                    .collect();
                if scale.unscale(&grads) {
                    opt.step();
                }
            }
            // A step whose own loss is not finite is not measured: the trial diverges here.
            (Some(_), _) if !loss.double_value(&[]).is_finite() => {
                loss.backward();
                opt.step();
            }
            (Some(m), _) => {
                loss.backward();
                let loss_at = || {
                    model
                        .net
                        .forward(x, true, noise, None)
                        .cross_entropy_for_logits(y)
                };
                for row in m.step(step, model, opt, &captures, loss_at) {
                    emit(row);
                }
            }
        }
        (logits, loss)
    }
}

/// The network a trial asks for, refused when its data does not fit it.
fn arch<'s>(
    spec: &pb::TrialSpec,
    model_spec: &'s pb::ModelSpec,
    data: &HostData,
    augment: bool,
) -> Result<Arch<'s>> {
    let [c, h, w] = data.train.shape.map(|d| d as i64);
    if model_spec.name != "mlp" && [h, w] != [32, 32] {
        return Err(Error::Unsupported(format!(
            "model `{}` takes 32x32 images, this dataset's are {h}x{w}: use `mlp`",
            model_spec.name
        )));
    }
    if augment && data.train.shape != data::CIFAR_SHAPE {
        return Err(Error::Unsupported(
            "augmentation (random crops and flips) is for 32x32 colour images".into(),
        ));
    }
    Ok(Arch {
        input: [c, h, w],
        name: &model_spec.name,
        width: model_spec.width,
        hidden: &model_spec.hidden,
        bn: spec.bn,
        init: Init::parse(&model_spec.init)
            .ok_or_else(|| Error::Unsupported(format!("init `{}`", model_spec.init)))?,
        bn_momentum: if model_spec.bn_momentum > 0.0 {
            model_spec.bn_momentum
        } else {
            0.1
        },
    })
}

/// The trial's optimizer over the model's parameters.
fn optimizer(spec: &pb::TrialSpec, model: &Model) -> Result<nn::Optimizer> {
    let default_opt = pb::OptimizerSpec::default();
    let opt_spec = spec.optimizer.as_ref().unwrap_or(&default_opt);
    Ok(match opt_spec.name.as_str() {
        "sgd" => nn::Sgd {
            momentum: opt_spec.momentum,
            dampening: 0.0,
            wd: opt_spec.weight_decay,
            nesterov: opt_spec.nesterov,
        }
        .build(&model.vs, spec.lr)?,
        "adam" => nn::Adam {
            beta1: opt_spec.beta1,
            beta2: opt_spec.beta2,
            wd: opt_spec.weight_decay,
            eps: opt_spec.eps,
            amsgrad: false,
        }
        .build(&model.vs, spec.lr)?,
        other => return Err(Error::Unsupported(format!("optimizer `{other}`"))),
    })
}

/// Reads the pending steps' loss and accuracy back in one transfer and emits their rows.
/// Returns true once the trial has diverged: rows up to and including that step are emitted.
fn flush(
    pending: &mut Vec<(pb::TrainRow, Tensor)>,
    divergence: &mut Divergence,
    emit: &mut impl FnMut(Row),
) -> Result<bool> {
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
        let diverged = divergence.diverged(row.loss);
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
            let logits = model.net.forward(&x, false, None, None);
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
                hidden: vec![],
                ..Default::default()
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
            divergence: None,
            measure: None,
            precision: String::new(),
            channels_last: false,
            ..Default::default()
        }
    }

    fn everything(every: u64) -> pb::MeasureSpec {
        pb::MeasureSpec {
            every,
            ics: true,
            landscape: true,
            eta: vec![0.5, 1.0, 2.0],
            eta_relative_to_lr: true,
            weights: true,
            activations: true,
            activation_layers: vec![],
            bins: 8,
            sample: 256,
            range_lo: -3.0,
            range_hi: 3.0,
        }
    }

    fn train_keeping_model(spec: &pb::TrialSpec) -> (Vec<Row>, Vec<(String, Tensor)>) {
        let data = Arc::new(load_data(spec.dataset.as_ref().unwrap()).unwrap());
        struct Final(Vec<(String, Tensor)>);
        impl Watch for Final {
            fn end(&mut self, m: &Model) {
                self.0 = m.variables_by_name();
            }
        }
        let mut rows = Vec::new();
        let mut vars = Final(Vec::new());
        train_with(spec, data, Device::Cpu, |r| rows.push(r), &mut vars).unwrap();
        (rows, vars.0)
    }

    #[test]
    fn measuring_leaves_no_trace_on_weights_optimizer_or_batchnorm_statistics() {
        tch::set_num_threads(1);
        for opt in ["sgd", "adam"] {
            let mut plain = spec(0.02, true, 1.0, true);
            plain.steps = 12;
            plain.optimizer = Some(pb::OptimizerSpec {
                name: opt.into(),
                momentum: 0.9,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                ..Default::default()
            });
            let measured = pb::TrialSpec {
                measure: Some(everything(3)),
                ..plain.clone()
            };
            let (rows_a, vars_a) = train_keeping_model(&plain);
            let (rows_b, vars_b) = train_keeping_model(&measured);
            // Identical losses every step, so identical optimizer state after each measurement.
            assert_eq!(losses(&rows_a), losses(&rows_b), "{opt}");
            assert_eq!(vars_a.len(), vars_b.len());
            assert!(vars_a.iter().any(|(n, _)| n.contains("running_mean")));
            for ((na, a), (nb, b)) in vars_a.iter().zip(&vars_b) {
                assert_eq!(na, nb);
                assert!(a.equal(b), "{opt}: {na} differs after measuring");
            }
            let layers = rows_b.iter().filter(|r| matches!(r, Row::Layer(_))).count();
            assert_eq!(layers, 4 * 11, "{opt}: 4 measured steps x 11 layers");
            let land = rows_b
                .iter()
                .filter(|r| matches!(r, Row::Landscape(_)))
                .count();
            assert_eq!(land, 4 * 3);
            let hist = rows_b
                .iter()
                .filter(|r| matches!(r, Row::Activation(_)))
                .count();
            assert_eq!(hist, 4 * 11 * 2 * (8 + 2));
        }
    }

    #[test]
    fn measured_values_are_sane() {
        let s = pb::TrialSpec {
            measure: Some(everything(10)),
            ..spec(0.05, true, 0.0, false)
        };
        let (_, rows) = run(&s);
        for r in &rows {
            match r {
                Row::Layer(l) => {
                    let (l2, cos) = (l.ics_l2.unwrap(), l.ics_cos.unwrap());
                    assert!(
                        l2 >= 0.0 && (-1.0 - 1e-9..=1.0 + 1e-9).contains(&cos),
                        "{l:?}"
                    );
                    if l.layer == 0 {
                        assert_eq!((l2, cos), (0.0, 1.0));
                    }
                    assert!(
                        l.grad_norm.unwrap() > 0.0 && l.weight_dist.unwrap() > 0.0,
                        "{l:?}"
                    );
                    let pre = l.pre.as_ref().unwrap();
                    assert_eq!(pre.quantiles.len(), 7);
                    assert!(pre.quantiles.windows(2).all(|w| w[0] <= w[1]), "{pre:?}");
                    assert!(
                        l.post.as_ref().unwrap().quantiles[0] >= 0.0 || l.layer_name == "fc2",
                        "post-ReLU"
                    );
                }
                Row::Landscape(p) => {
                    assert!(
                        p.loss_min <= p.loss && p.loss <= p.loss_max && p.beta <= p.beta_smoothness,
                        "{p:?}"
                    );
                    assert!((p.beta - p.grad_dist / (p.eta * 1.0)).abs() >= 0.0);
                }
                _ => {}
            }
        }
        assert_eq!(
            rows.iter().filter(|r| matches!(r, Row::Layer(_))).count(),
            3 * 11
        );
    }

    #[test]
    fn a_loss_above_the_bound_for_k_steps_diverges() {
        let mut s = spec(0.05, true, 0.0, false);
        s.divergence = Some(pb::DivergenceSpec {
            loss_above: 0.5,
            for_steps: 4,
        });
        let (ending, rows) = run(&s);
        assert_eq!(ending, Ending::Diverged);
        let l = losses(&rows);
        assert_eq!(l.len(), 4, "the first four losses are all above 0.5: {l:?}");
        assert!(l.iter().all(|v| v.is_finite() && *v > 0.5));
    }

    #[test]
    fn the_mlp_trains_with_adam() {
        let mut s = spec(0.001, true, 1.0, false);
        s.model = Some(pb::ModelSpec {
            name: "mlp".into(),
            width: 1.0,
            hidden: vec![64, 32],
            ..Default::default()
        });
        s.optimizer = Some(pb::OptimizerSpec {
            name: "adam".into(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            ..Default::default()
        });
        s.steps = 60;
        let (ending, rows) = run(&s);
        assert_eq!(ending, Ending::Completed);
        let l = losses(&rows);
        let (first, last) = (l[..10].iter().sum::<f64>(), l[50..].iter().sum::<f64>());
        assert!(last < first, "the loss goes down: {first} -> {last}");
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
    fn fast_kernels_train_close_to_fp32_and_measure_as_before() {
        tch::set_num_threads(1);
        let base = spec(0.05, true, 0.0, false);
        let exact = losses(&run(&base).1);
        let laid = pb::TrialSpec {
            channels_last: true,
            ..base.clone()
        };
        let (laid_rows, laid_vars) = train_keeping_model(&laid);
        // The conversion happened and survived the optimizer's in-place updates.
        let kernels: Vec<_> = laid_vars.iter().filter(|(_, v)| v.dim() == 4).collect();
        assert!(!kernels.is_empty());
        for (name, v) in kernels {
            assert!(amp::is_channels_last(v), "{name} is not channels-last");
        }
        // The same arithmetic in another order. Channels-last convolutions take other kernels
        // (oneDNN picks them per CPU: AVX2 and AVX-512 machines differ), which sum the same
        // fp32 products in another order. Step 1 (the same weights) and step 2 (one update
        // later) then agree to a few ulps per accumulation: seen 0 and 2e-6 relative, so 1e-4
        // holds them on any CPU, and a wrong layout (values moved, not just strides) or a
        // wrong update is far outside it. From step 3 on, training amplifies those rounding
        // differences several-fold per step (seen: 6e-5 at step 3, 2e-3 at step 8, 23 % at
        // step 29 of this run, on AVX-512 and on AVX2 kernels alike), so later losses are
        // compared as curves: both go down, and their means over the last ten steps agree
        // within 15 % (seen: 0.1-4 %; a net that stopped training stays ~30 % above).
        let relaid = losses(&laid_rows);
        assert_eq!(relaid.len(), exact.len());
        for (i, (a, b)) in exact.iter().zip(&relaid).take(2).enumerate() {
            assert!((a - b).abs() <= 1e-4 * a, "step {}: {a} vs {b}", i + 1);
        }
        let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
        for l in [&exact, &relaid] {
            assert!(mean(&l[20..]) < mean(&l[..5]), "the loss goes down: {l:?}");
        }
        let (a, b) = (mean(&exact[20..]), mean(&relaid[20..]));
        assert!((a - b).abs() <= 0.15 * a, "last ten steps: {a} vs {b}");
        for precision in ["bf16", "fp16"] {
            let s = pb::TrialSpec {
                precision: precision.into(),
                channels_last: true,
                measure: Some(everything(10)),
                ..base.clone()
            };
            let (ending, rows) = run(&s);
            assert_eq!(ending, Ending::Completed, "{precision}");
            let l = losses(&rows);
            assert_eq!(l.len(), exact.len());
            assert!(l.iter().all(|v| v.is_finite()), "{precision}: {l:?}");
            assert!(
                (l[0] - exact[0]).abs() < 0.02 * exact[0],
                "{precision}: {l:?}"
            );
            let (first, last) = (l[..5].iter().sum::<f64>(), l[25..].iter().sum::<f64>());
            assert!(last < first, "{precision}: the loss goes down: {l:?}");
            let layers = rows.iter().filter(|r| matches!(r, Row::Layer(_))).count();
            assert_eq!(layers, 3 * 11, "{precision}: measured as in fp32");
        }
        let bad = pb::TrialSpec {
            precision: "fp8".into(),
            ..base
        };
        let data = Arc::new(load_data(bad.dataset.as_ref().unwrap()).unwrap());
        let err = train(&bad, data, Device::Cpu, |_| {}).unwrap_err();
        assert!(!err.retryable() && err.to_string().contains("fp8"), "{err}");
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

    #[test]
    fn a_step_whose_own_loss_is_not_finite_is_not_measured() {
        let s = pb::TrialSpec {
            steps: 200,
            eval_every: 1000,
            measure: Some(everything(1)),
            ..spec(1e6, false, 0.0, false)
        };
        let (ending, rows) = run(&s);
        assert_eq!(ending, Ending::Diverged);
        let last = rows
            .iter()
            .filter_map(|r| match r {
                Row::Train(t) => Some(t.step),
                _ => None,
            })
            .max()
            .unwrap();
        let measured: Vec<u64> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Layer(l) => Some(l.step),
                Row::Landscape(l) => Some(l.step),
                Row::Activation(a) => Some(a.step),
                _ => None,
            })
            .collect();
        assert!(
            measured.contains(&(last - 1)),
            "the step before is measured"
        );
        assert!(
            !measured.contains(&last),
            "step {last} diverged and was measured"
        );
    }

    /// MNIST-shaped data: each digit class a bright bar at its own row, under noise.
    fn grey_digits(n: usize) -> HostSplit {
        let mut images = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % 10;
            images.extend((0..784).map(|p| {
                let row = p / 28;
                let bar = if row / 2 == class + 2 { 200 } else { 0 };
                (bar + (p * 7 + i * 13) % 50) as u8
            }));
            labels.push(class as i64);
        }
        HostSplit {
            images,
            labels,
            shape: data::MNIST_SHAPE,
        }
    }

    #[test]
    fn an_mlp_learns_28x28_grey_images_and_a_vgg_is_refused() {
        let data = Arc::new(HostData {
            train: grey_digits(320),
            test: grey_digits(100),
        });
        let mut s = spec(0.05, true, 0.0, false);
        s.model = Some(pb::ModelSpec {
            name: "mlp".into(),
            width: 0.25,
            hidden: vec![256, 128, 64],
            ..Default::default()
        });
        s.steps = 40;
        let mut rows = Vec::new();
        let ending = train(&s, data.clone(), Device::Cpu, |r| rows.push(r)).unwrap();
        assert_eq!(ending, Ending::Completed);
        let acc = rows
            .iter()
            .filter_map(|r| match r {
                Row::Eval(e) => Some(e.test_acc),
                _ => None,
            })
            .next_back()
            .unwrap();
        assert!(acc > 0.5, "test accuracy {acc} on separable digits");
        let vgg = spec(0.05, true, 0.0, false);
        let err = train(&vgg, data, Device::Cpu, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("32x32") && err.contains("28x28"), "{err}");
    }
}
