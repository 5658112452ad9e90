//! `bnsweep-worker trace`: trains one trial on the CPU and writes what an independent
//! implementation needs to train it again and compare: the trial's settings (trial.json), its
//! initial weights (init.safetensors), the batch order it used (order.safetensors), every row
//! it produced (rows.jsonl) and, when it ran to its end, its final weights and BatchNorm
//! statistics (final.safetensors). docs/training.md, "Checking it against PyTorch";
//! `tests/reference/` reads it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use bnsweep_proto as pb;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::trainer::model::Model;
use crate::trainer::{self, Row, Watch};

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Directory to write trial.json, init.safetensors, order.safetensors, rows.jsonl and
    /// final.safetensors to.
    #[arg(long)]
    pub out: PathBuf,
    /// The CIFAR-10 binary directory (data_batch_1.bin ... test_batch.bin).
    #[arg(long)]
    pub cifar: PathBuf,
    #[arg(long, default_value_t = 512)]
    pub train_size: u32,
    #[arg(long, default_value_t = 100)]
    pub test_size: u32,
    /// vgg8 ... vgg19 or mlp.
    #[arg(long, default_value = "vgg8")]
    pub model: String,
    #[arg(long, default_value_t = 0.125)]
    pub width: f64,
    /// mlp: hidden layer sizes, e.g. 64,32.
    #[arg(long, value_delimiter = ',', default_value = "256,128,64")]
    pub hidden: Vec<i64>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub bn: bool,
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// element or channel (docs/training.md, "The noise").
    #[arg(long, default_value = "element")]
    pub noise_draws: String,
    /// layer or channel.
    #[arg(long, default_value = "layer")]
    pub noise_moments: String,
    /// std or variance.
    #[arg(long, default_value = "std")]
    pub noise_spread: String,
    #[arg(long)]
    pub noise_head: bool,
    #[arg(long, default_value = "pytorch")]
    pub init: String,
    #[arg(long, default_value_t = 0.1)]
    pub bn_momentum: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// sgd or adam.
    #[arg(long, default_value = "sgd")]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    #[arg(long)]
    pub nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Take every measurement every this many steps; 0 measures nothing.
    #[arg(long, default_value_t = 10)]
    pub measure_every: u64,
    /// Landscape step sizes, as multiples of the learning rate.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
    pub eta: Vec<f64>,
    #[arg(long, default_value_t = 8)]
    pub bins: u32,
    #[arg(long, default_value_t = 256)]
    pub sample: u32,
    /// Histogram range, `LO,HI`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "-3,3",
        allow_hyphen_values = true
    )]
    pub range: Vec<f64>,
    /// CPU threads for libtorch's operators.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
}

impl TraceArgs {
    fn spec(&self) -> Result<pb::TrialSpec> {
        let [lo, hi] = self.range[..] else {
            return Err(Error::Unsupported(
                "--range takes two numbers, LO,HI".into(),
            ));
        };
        Ok(pb::TrialSpec {
            seed: self.seed,
            lr: self.lr,
            bn: self.bn,
            noise: self.noise,
            noise_draws: self.noise_draws.clone(),
            noise_moments: self.noise_moments.clone(),
            noise_spread: self.noise_spread.clone(),
            noise_head: self.noise_head,
            model: Some(pb::ModelSpec {
                name: self.model.clone(),
                width: self.width,
                hidden: self.hidden.clone(),
                init: self.init.clone(),
                bn_momentum: self.bn_momentum,
            }),
            dataset: Some(pb::DatasetSpec {
                name: "cifar10".into(),
                path: self.cifar.to_string_lossy().into_owned(),
                train_size: self.train_size,
                test_size: self.test_size,
                ..Default::default()
            }),
            optimizer: Some(pb::OptimizerSpec {
                name: self.optimizer.clone(),
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
            }),
            batch_size: self.batch,
            steps: self.steps,
            eval_every: self.steps,
            divergence: None,
            measure: (self.measure_every > 0).then(|| pb::MeasureSpec {
                every: self.measure_every,
                ics: true,
                landscape: true,
                eta: self.eta.clone(),
                eta_relative_to_lr: true,
                weights: true,
                activations: true,
                activation_layers: Vec::new(),
                bins: self.bins,
                sample: self.sample,
                range_lo: lo,
                range_hi: hi,
            }),
            precision: String::new(),
            channels_last: false,
        })
    }

    /// The settings as trial.json: step sizes absolute (multiplied by the learning rate).
    fn json(&self) -> String {
        let list = |v: &[f64]| v.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", ");
        let eta: Vec<f64> = self.eta.iter().map(|e| e * self.lr).collect();
        let hidden: Vec<String> = self.hidden.iter().map(i64::to_string).collect();
        format!(
            "{{\"model\": \"{}\", \"width\": {}, \"hidden\": [{}], \"bn\": {}, \"noise\": {}, \
             \"noise_draws\": \"{}\", \"noise_moments\": \"{}\", \"noise_spread\": \"{}\", \
             \"noise_head\": {}, \"init\": \"{}\", \"bn_momentum\": {}, \"seed\": {}, \"lr\": {}, \
             \"optimizer\": {{\"name\": \"{}\", \"momentum\": {}, \"nesterov\": {}, \
             \"weight_decay\": {}, \"beta1\": {}, \"beta2\": {}, \"eps\": {}}}, \
             \"batch_size\": {}, \"steps\": {}, \"measure\": {{\"every\": {}, \"eta\": [{}], \
             \"bins\": {}, \"sample\": {}, \"range\": [{}]}}, \"data\": {{\"dir\": \"{}\", \
             \"train_size\": {}, \"test_size\": {}}}, \"threads\": {}}}\n",
            self.model,
            num(self.width),
            hidden.join(", "),
            self.bn,
            num(self.noise),
            self.noise_draws,
            self.noise_moments,
            self.noise_spread,
            self.noise_head,
            self.init,
            num(self.bn_momentum),
            self.seed,
            num(self.lr),
            self.optimizer,
            num(self.momentum),
            self.nesterov,
            num(self.weight_decay),
            num(self.beta1),
            num(self.beta2),
            num(self.eps),
            self.batch,
            self.steps,
            self.measure_every,
            list(&eta),
            self.bins,
            self.sample,
            list(&self.range),
            self.cifar
                .display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\""),
            self.train_size,
            self.test_size,
            self.threads,
        )
    }
}

/// Keeps the initial and final weights (BatchNorm's running statistics included) and the
/// batch order.
#[derive(Default)]
struct Recorder {
    init: Vec<(String, Tensor)>,
    last: Vec<(String, Tensor)>,
    order: Vec<Tensor>,
}

fn copy_of(model: &Model) -> Vec<(String, Tensor)> {
    model
        .variables_by_name()
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).copy()))
        .collect()
}

impl Watch for Recorder {
    fn start(&mut self, model: &Model) {
        self.init = copy_of(model);
    }

    fn batch(&mut self, _step: u64, indices: &Tensor) {
        self.order.push(indices.to_device(Device::Cpu));
    }

    fn end(&mut self, model: &Model) {
        self.last = copy_of(model);
    }
}

/// Trains the trial on the CPU and writes the trace; prints the directory.
pub fn run(args: &TraceArgs) -> Result<()> {
    let spec = args.spec()?;
    let data = Arc::new(trainer::load_data(
        spec.dataset.as_ref().expect("set above"),
    )?);
    let mut rows = String::new();
    let mut recorder = Recorder::default();
    let ending = trainer::train_with(
        &spec,
        data,
        Device::Cpu,
        |row| write_row(&mut rows, &row),
        &mut recorder,
    )?;
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(|source| Error::Write {
        path: out.clone(),
        source,
    })?;
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Write { path, source })
    };
    write("trial.json", &args.json())?;
    write("rows.jsonl", &rows)?;
    let named = |vars: &[(String, Tensor)]| -> Vec<(String, Tensor)> {
        vars.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    };
    Tensor::write_safetensors(&named(&recorder.init), out.join("init.safetensors"))?;
    if !recorder.last.is_empty() {
        Tensor::write_safetensors(&named(&recorder.last), out.join("final.safetensors"))?;
    }
    let order = Tensor::stack(&recorder.order, 0);
    Tensor::write_safetensors(&[("order", &order)], out.join("order.safetensors"))?;
    println!("{} ({ending:?})", out.display());
    Ok(())
}

/// A JSON number; NaN and the infinities as Python's json module reads them.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v:?}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "null".into(), num)
}

fn stats(s: &Option<pb::ActivationStats>) -> String {
    match s {
        None => "null".into(),
        Some(s) => {
            let q: Vec<String> = s.quantiles.iter().map(|v| num(*v)).collect();
            format!(
                "{{\"mean\": {}, \"std\": {}, \"quantiles\": [{}]}}",
                num(s.mean),
                num(s.std),
                q.join(", ")
            )
        }
    }
}

fn write_row(out: &mut String, row: &Row) {
    let _ = match row {
        Row::Train(r) => writeln!(
            out,
            "{{\"kind\": \"train\", \"step\": {}, \"loss\": {}, \"acc\": {}}}",
            r.step,
            num(r.loss),
            num(r.acc)
        ),
        Row::Eval(r) => writeln!(
            out,
            "{{\"kind\": \"eval\", \"step\": {}, \"test_loss\": {}, \"test_acc\": {}}}",
            r.step,
            num(r.test_loss),
            num(r.test_acc)
        ),
        Row::Layer(r) => writeln!(
            out,
            "{{\"kind\": \"layer\", \"step\": {}, \"layer\": {}, \"layer_name\": \"{}\", \
             \"ics_l2\": {}, \"ics_cos\": {}, \"grad_norm\": {}, \"weight_dist\": {}, \
             \"weight_dist_rel\": {}, \"pre\": {}, \"post\": {}}}",
            r.step,
            r.layer,
            r.layer_name,
            opt(r.ics_l2),
            opt(r.ics_cos),
            opt(r.grad_norm),
            opt(r.weight_dist),
            opt(r.weight_dist_rel),
            stats(&r.pre),
            stats(&r.post)
        ),
        Row::Landscape(r) => writeln!(
            out,
            "{{\"kind\": \"landscape\", \"step\": {}, \"eta\": {}, \"loss\": {}, \
             \"grad_dist\": {}, \"beta\": {}, \"loss_min\": {}, \"loss_max\": {}, \
             \"gradpred_min\": {}, \"gradpred_max\": {}, \"beta_smoothness\": {}, \
             \"nonfinite_probes\": {}}}",
            r.step,
            num(r.eta),
            num(r.loss),
            num(r.grad_dist),
            num(r.beta),
            num(r.loss_min),
            num(r.loss_max),
            num(r.gradpred_min),
            num(r.gradpred_max),
            num(r.beta_smoothness),
            r.nonfinite_probes
        ),
        Row::Activation(r) => writeln!(
            out,
            "{{\"kind\": \"activation\", \"step\": {}, \"layer\": {}, \"layer_name\": \"{}\", \
             \"point\": \"{}\", \"bin\": {}, \"lo\": {}, \"hi\": {}, \"count\": {}}}",
            r.step,
            r.layer,
            r.layer_name,
            r.point,
            r.bin,
            num(r.lo),
            num(r.hi),
            r.count
        ),
    };
}
