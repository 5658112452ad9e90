//! What one trial trains: the training fields a sweep file may set or sweep, their types and
//! defaults, and the step that turns the settings of one trial into a checked [`TrialConfig`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::diagnostic::Diagnostic;
use super::yaml::{Node, Pos, Scalar, Value};

/// The type of a training field, and so of its column in the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Float,
    Int,
    Bool,
    Str,
    /// A list of integers (`model.hidden`); set under `train`, not swept.
    IntList,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Float => "a number",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::Str => "a string",
            Kind::IntList => "a list of integers",
        }
    }
}

/// One training field, by its dotted path under `train:` (also its name under `parameters:`).
pub struct Field {
    pub path: &'static str,
    pub kind: Kind,
}

/// Every training field. A path with a dot lives in a nested mapping (`model: {width: 0.5}`).
pub const FIELDS: &[Field] = &[
    Field {
        path: "lr",
        kind: Kind::Float,
    },
    Field {
        path: "bn",
        kind: Kind::Bool,
    },
    Field {
        path: "noise",
        kind: Kind::Float,
    },
    Field {
        path: "noise_draws",
        kind: Kind::Str,
    },
    Field {
        path: "noise_moments",
        kind: Kind::Str,
    },
    Field {
        path: "noise_spread",
        kind: Kind::Str,
    },
    Field {
        path: "noise_head",
        kind: Kind::Bool,
    },
    Field {
        path: "batch_size",
        kind: Kind::Int,
    },
    Field {
        path: "steps",
        kind: Kind::Int,
    },
    Field {
        path: "eval_every",
        kind: Kind::Int,
    },
    Field {
        path: "model.name",
        kind: Kind::Str,
    },
    Field {
        path: "model.width",
        kind: Kind::Float,
    },
    Field {
        path: "model.hidden",
        kind: Kind::IntList,
    },
    Field {
        path: "model.init",
        kind: Kind::Str,
    },
    Field {
        path: "model.bn_momentum",
        kind: Kind::Float,
    },
    Field {
        path: "dataset.name",
        kind: Kind::Str,
    },
    Field {
        path: "dataset.path",
        kind: Kind::Str,
    },
    Field {
        path: "dataset.augment",
        kind: Kind::Bool,
    },
    Field {
        path: "dataset.train_size",
        kind: Kind::Int,
    },
    Field {
        path: "dataset.test_size",
        kind: Kind::Int,
    },
    Field {
        path: "dataset.seed",
        kind: Kind::Int,
    },
    Field {
        path: "optimizer.name",
        kind: Kind::Str,
    },
    Field {
        path: "optimizer.momentum",
        kind: Kind::Float,
    },
    Field {
        path: "optimizer.weight_decay",
        kind: Kind::Float,
    },
    Field {
        path: "optimizer.nesterov",
        kind: Kind::Bool,
    },
    Field {
        path: "optimizer.beta1",
        kind: Kind::Float,
    },
    Field {
        path: "optimizer.beta2",
        kind: Kind::Float,
    },
    Field {
        path: "optimizer.eps",
        kind: Kind::Float,
    },
    Field {
        path: "divergence.loss_above",
        kind: Kind::Float,
    },
    Field {
        path: "divergence.for_steps",
        kind: Kind::Int,
    },
    Field {
        path: "precision",
        kind: Kind::Str,
    },
    Field {
        path: "channels_last",
        kind: Kind::Bool,
    },
];

/// Fields added after the first release, with their defaults: at its default such a field is
/// left out of a trial's id, so that the ids of sweeps started before it stay the same (and
/// their results directories resume).
const LATER_FIELDS: &[(&str, &str)] = &[
    ("precision", "fp32"),
    ("channels_last", "false"),
    ("noise_draws", "element"),
    ("noise_moments", "layer"),
    ("noise_spread", "std"),
    ("noise_head", "false"),
];

pub const MODELS: &[&str] = &["vgg8", "vgg10", "vgg11", "vgg13", "vgg16", "vgg19", "mlp"];
pub const DATASETS: &[&str] = &["cifar10", "mnist", "synthetic"];
pub const OPTIMIZERS: &[&str] = &["sgd", "adam"];
pub const PRECISIONS: &[&str] = &["fp32", "bf16", "fp16"];
/// The noise options (docs/training.md, "The noise"): the first of each is the default.
pub const NOISE_DRAWS: &[&str] = &["element", "channel"];
pub const NOISE_MOMENTS: &[&str] = &["layer", "channel"];
pub const NOISE_SPREADS: &[&str] = &["std", "variance"];
/// Initial weight schemes (docs/training.md).
pub const INITS: &[&str] = &[
    "pytorch",
    "glorot_uniform",
    "glorot_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "lecun_normal",
];

/// Layers with weights (convs and linear maps) of a model: what activation layer indices
/// count.
pub fn layer_count(model: &str, hidden: &[i64]) -> usize {
    match model {
        "vgg8" | "vgg11" => 11,
        "vgg10" | "vgg13" => 13,
        "vgg16" => 16,
        "vgg19" => 19,
        _ => hidden.len() + 1,
    }
}

pub fn field(path: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.path == path)
}

/// A typed value of a training field.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Float(f64),
    Int(i64),
    Bool(bool),
    Str(String),
    IntList(Vec<i64>),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v}"),
            ParamValue::IntList(v) => write!(f, "{v:?}"),
        }
    }
}

impl ParamValue {
    /// Reads a YAML node as a value of `kind`; an integer is a fine number.
    pub fn from_node(node: &Node, kind: Kind, path: &str) -> Result<ParamValue, Diagnostic> {
        let value = match (&node.value, kind) {
            (Value::Scalar(Scalar::Float(v)), Kind::Float) => Some(ParamValue::Float(*v)),
            (Value::Scalar(Scalar::Int(v)), Kind::Float) => Some(ParamValue::Float(*v as f64)),
            (Value::Scalar(Scalar::Int(v)), Kind::Int) => Some(ParamValue::Int(*v)),
            (Value::Scalar(Scalar::Bool(v)), Kind::Bool) => Some(ParamValue::Bool(*v)),
            (Value::Scalar(Scalar::Str(v)), Kind::Str) => Some(ParamValue::Str(v.clone())),
            (Value::Seq(items), Kind::IntList) => items
                .iter()
                .map(|i| match i.value {
                    Value::Scalar(Scalar::Int(v)) => Some(v),
                    _ => None,
                })
                .collect::<Option<Vec<i64>>>()
                .map(ParamValue::IntList),
            _ => None,
        };
        value.ok_or_else(|| {
            Diagnostic::new(
                node.pos,
                path,
                format!("expected {}, got {}", kind.expected(), node.kind()),
            )
        })
    }
}

/// Where a setting came from: its position and its path in the file (`train.lr`,
/// `parameters.lr[1]`), for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub pos: Pos,
    pub path: String,
}

/// The settings of one trial: field path -> value, before defaults and checks.
pub type Settings = BTreeMap<&'static str, (ParamValue, Origin)>;

/// Reads the `train:` mapping into settings, reporting unknown keys and wrong types. Fields
/// whose value could not be read are added to `broken`.
pub fn read_train(
    node: &Node,
    broken: &mut Vec<&'static str>,
    diags: &mut Vec<Diagnostic>,
) -> Settings {
    let mut settings = Settings::new();
    read_group(node, "", "train", &mut settings, broken, diags);
    settings
}

fn read_group(
    node: &Node,
    prefix: &str,
    file_path: &str,
    settings: &mut Settings,
    broken: &mut Vec<&'static str>,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(entries) = node.as_map() else {
        diags.push(Diagnostic::new(
            node.pos,
            file_path,
            format!("expected a mapping, got {}", node.kind()),
        ));
        return;
    };
    for (key, key_pos, value) in entries {
        let path = format!("{prefix}{key}");
        let shown = format!("{file_path}.{key}");
        if let Some(f) = field(&path) {
            match ParamValue::from_node(value, f.kind, &shown) {
                Ok(v) => {
                    settings.insert(
                        f.path,
                        (
                            v,
                            Origin {
                                pos: value.pos,
                                path: shown,
                            },
                        ),
                    );
                }
                Err(d) => {
                    broken.push(f.path);
                    diags.push(d);
                }
            }
        } else if FIELDS
            .iter()
            .any(|f| f.path.starts_with(&format!("{path}.")))
        {
            read_group(value, &format!("{path}."), &shown, settings, broken, diags);
        } else {
            diags.push(Diagnostic::new(
                *key_pos,
                shown,
                format!(
                    "unknown key `{key}` (expected one of: {})",
                    keys_under(prefix)
                ),
            ));
        }
    }
}

/// The keys allowed directly under a prefix, e.g. `name, width` under `model.`.
pub fn keys_under(prefix: &str) -> String {
    let mut keys: Vec<&str> = Vec::new();
    for f in FIELDS {
        if let Some(rest) = f.path.strip_prefix(prefix) {
            let key = rest.split('.').next().unwrap_or(rest);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys.join(", ")
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub width: f64,
    /// mlp: hidden layer sizes.
    pub hidden: Vec<i64>,
    /// How the initial weights are drawn (one of [`INITS`]).
    pub init: String,
    /// BatchNorm's running-statistics momentum, PyTorch's convention.
    pub bn_momentum: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    pub name: String,
    pub path: String,
    pub augment: bool,
    /// 0 means the whole set (cifar10).
    pub train_size: u32,
    pub test_size: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerConfig {
    pub name: String,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// Where the noise definitions leave a choice (docs/training.md, "The noise").
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseOptions {
    /// `element`: m and s drawn per element; `channel`: one per channel (or feature).
    pub draws: String,
    /// `layer`: mu_t and sigma_t once per layer and step; `channel`: once per channel.
    pub moments: String,
    /// `std`: s ~ N(sigma_t, (0.1 v)^2); `variance`: s ~ N(sigma_t, 0.1 v).
    pub spread: String,
    /// Noise in a VGG head's hidden linear layers too (before their ReLU).
    pub head: bool,
}

/// When a finite loss counts as diverged: above `loss_above` for `for_steps` steps running.
#[derive(Debug, Clone, PartialEq)]
pub struct DivergenceConfig {
    pub loss_above: f64,
    pub for_steps: u64,
}

/// The complete, checked configuration of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialConfig {
    pub seed: u64,
    pub lr: f64,
    pub bn: bool,
    pub noise: f64,
    pub noise_options: NoiseOptions,
    pub model: ModelConfig,
    pub dataset: DatasetConfig,
    pub optimizer: OptimizerConfig,
    pub batch_size: u32,
    pub steps: u64,
    pub eval_every: u64,
    pub divergence: DivergenceConfig,
    /// How training steps compute: fp32 (exact), bf16 or fp16 (autocast).
    pub precision: String,
    pub channels_last: bool,
}

/// Number of images in the CIFAR-10 training and test sets.
pub const CIFAR10_TRAIN: i64 = 50_000;
pub const CIFAR10_TEST: i64 = 10_000;
/// Number of images in the MNIST training and test sets.
pub const MNIST_TRAIN: i64 = 60_000;
pub const MNIST_TEST: i64 = 10_000;
/// What `dataset.path` meant when it was left out, before the cache existed: a trial id
/// hashes this text for a dataset read from the cache, so that the ids of sweeps written
/// then stay the same (the same official files, wherever they live).
const FORMER_DEFAULT_PATH: &str = "data/cifar-10-batches-bin";

impl TrialConfig {
    /// Applies defaults and checks every value; every problem found is returned.
    pub fn build(seed: u64, s: &Settings) -> Result<TrialConfig, Vec<Diagnostic>> {
        let mut r = Reader {
            s,
            diags: Vec::new(),
        };
        let lr = r.float("lr", None, |v| v > 0.0, "learning rate must be > 0");
        let noise = r.float("noise", Some(0.0), |v| v >= 0.0, "noise level must be >= 0");
        let bn = r.bool("bn", true);
        let noise_options = NoiseOptions {
            draws: r.choice("noise_draws", NOISE_DRAWS[0], NOISE_DRAWS, "noise draw"),
            moments: r.choice(
                "noise_moments",
                NOISE_MOMENTS[0],
                NOISE_MOMENTS,
                "noise moment",
            ),
            spread: r.choice(
                "noise_spread",
                NOISE_SPREADS[0],
                NOISE_SPREADS,
                "noise spread",
            ),
            head: r.bool("noise_head", false),
        };
        let model_name = r.choice("model.name", "vgg8", MODELS, "model");
        let width = r.float(
            "model.width",
            Some(1.0),
            |v| v > 0.0 && v <= 16.0,
            "width must be in (0, 16]",
        );
        let hidden = match s.get("model.hidden") {
            Some((ParamValue::IntList(h), _)) => h.clone(),
            _ => vec![256, 128, 64],
        };
        if hidden.iter().any(|&h| !(1..=1_000_000).contains(&h)) {
            r.fail(
                "model.hidden",
                "hidden layer sizes must be in [1, 1000000]".into(),
            );
        }
        let init = r.choice("model.init", "pytorch", INITS, "initialisation");
        let bn_momentum = r.float(
            "model.bn_momentum",
            Some(0.1),
            |v| v > 0.0 && v <= 1.0,
            "BatchNorm momentum must be in (0, 1] (PyTorch's convention: flax's 0.99 is 0.01)",
        );
        let dataset_name = r.choice("dataset.name", "synthetic", DATASETS, "dataset");
        let synthetic = dataset_name == "synthetic";
        let (train_default, test_default, train_max, test_max) = match dataset_name.as_str() {
            "synthetic" => (5000, 1000, 1_000_000, 1_000_000),
            "mnist" => (0, 0, MNIST_TRAIN, MNIST_TEST),
            _ => (0, 0, CIFAR10_TRAIN, CIFAR10_TEST),
        };
        let min_size = i64::from(synthetic);
        let train_size = r.int("dataset.train_size", train_default, min_size, train_max);
        let test_size = r.int("dataset.test_size", test_default, min_size, test_max);
        // Left out: the official release, from the workers' cache (downloaded once).
        let path = r.string("dataset.path", "");
        if path.is_empty() && s.get("dataset.path").is_some() {
            r.fail(
                "dataset.path",
                "must not be empty (leave it out to use the downloaded release)".into(),
            );
        }
        let augment = r.bool("dataset.augment", false);
        if dataset_name == "mnist" {
            if model_name != "mlp" {
                // On the model when the file names one, else on the dataset.
                let at = if s.get("model.name").is_some() {
                    "model.name"
                } else {
                    "dataset.name"
                };
                r.fail(
                    at,
                    format!("`{model_name}` takes 32x32 colour images; MNIST's are 28x28 grey: use `model.name: mlp`"),
                );
            }
            if augment {
                r.fail(
                    "dataset.augment",
                    "random crops and flips are for CIFAR-10's images, not MNIST's digits".into(),
                );
            }
        }
        let data_seed = r.int("dataset.seed", 0, 0, i64::MAX);
        let batch_size = r.int("batch_size", 128, 1, 65_536);
        let available = if train_size > 0 {
            train_size
        } else {
            train_max
        };
        if batch_size > available {
            r.fail(
                "batch_size",
                format!(
                    "batch size {batch_size} is larger than the training set ({available} images)"
                ),
            );
        }
        let steps = r.int("steps", 1000, 1, i64::MAX);
        let eval_every = r.int("eval_every", 500, 1, i64::MAX);
        let opt_name = r.choice("optimizer.name", "sgd", OPTIMIZERS, "optimizer");
        let momentum = r.float(
            "optimizer.momentum",
            Some(0.0),
            |v| (0.0..1.0).contains(&v),
            "momentum must be in [0, 1)",
        );
        let weight_decay = r.float(
            "optimizer.weight_decay",
            Some(0.0),
            |v| v >= 0.0,
            "weight decay must be >= 0",
        );
        let nesterov = r.bool("optimizer.nesterov", false);
        let beta1 = r.float(
            "optimizer.beta1",
            Some(0.9),
            |v| (0.0..1.0).contains(&v),
            "beta1 must be in [0, 1)",
        );
        let beta2 = r.float(
            "optimizer.beta2",
            Some(0.999),
            |v| (0.0..1.0).contains(&v),
            "beta2 must be in [0, 1)",
        );
        let eps = r.float("optimizer.eps", Some(1e-8), |v| v > 0.0, "eps must be > 0");
        let loss_above = match s.get("divergence.loss_above") {
            Some((ParamValue::Float(v), _)) => {
                if v.is_nan() || *v <= 0.0 {
                    r.fail(
                        "divergence.loss_above",
                        format!("must be > 0 (.inf turns the bound off), got {v}"),
                    );
                }
                *v
            }
            _ => 100.0,
        };
        let for_steps = r.int("divergence.for_steps", 20, 1, i64::MAX);
        let precision = r.choice("precision", "fp32", PRECISIONS, "precision");
        let channels_last = r.bool("channels_last", false);
        if nesterov && momentum == 0.0 {
            r.fail(
                "optimizer.nesterov",
                "Nesterov momentum needs optimizer.momentum > 0".into(),
            );
        }
        if !r.diags.is_empty() {
            return Err(r.diags);
        }
        Ok(TrialConfig {
            seed,
            lr,
            bn,
            noise,
            noise_options,
            model: ModelConfig {
                name: model_name,
                width,
                hidden,
                init,
                bn_momentum,
            },
            dataset: DatasetConfig {
                name: dataset_name,
                path,
                augment,
                train_size: train_size as u32,
                test_size: test_size as u32,
                seed: data_seed as u64,
            },
            optimizer: OptimizerConfig {
                name: opt_name,
                momentum,
                weight_decay,
                nesterov,
                beta1,
                beta2,
                eps,
            },
            batch_size: batch_size as u32,
            steps: steps as u64,
            eval_every: eval_every as u64,
            divergence: DivergenceConfig {
                loss_above,
                for_steps: for_steps as u64,
            },
            precision,
            channels_last,
        })
    }

    /// The value of a training field, by its path.
    pub fn get(&self, path: &str) -> ParamValue {
        use ParamValue::*;
        match path {
            "lr" => Float(self.lr),
            "bn" => Bool(self.bn),
            "noise" => Float(self.noise),
            "noise_draws" => Str(self.noise_options.draws.clone()),
            "noise_moments" => Str(self.noise_options.moments.clone()),
            "noise_spread" => Str(self.noise_options.spread.clone()),
            "noise_head" => Bool(self.noise_options.head),
            "batch_size" => Int(self.batch_size.into()),
            "steps" => Int(self.steps as i64),
            "eval_every" => Int(self.eval_every as i64),
            "model.name" => Str(self.model.name.clone()),
            "model.width" => Float(self.model.width),
            "model.hidden" => IntList(self.model.hidden.clone()),
            "model.init" => Str(self.model.init.clone()),
            "model.bn_momentum" => Float(self.model.bn_momentum),
            "dataset.name" => Str(self.dataset.name.clone()),
            "dataset.path" => Str(self.dataset.path.clone()),
            "dataset.augment" => Bool(self.dataset.augment),
            "dataset.train_size" => Int(self.dataset.train_size.into()),
            "dataset.test_size" => Int(self.dataset.test_size.into()),
            "dataset.seed" => Int(self.dataset.seed as i64),
            "optimizer.name" => Str(self.optimizer.name.clone()),
            "optimizer.momentum" => Float(self.optimizer.momentum),
            "optimizer.weight_decay" => Float(self.optimizer.weight_decay),
            "optimizer.nesterov" => Bool(self.optimizer.nesterov),
            "optimizer.beta1" => Float(self.optimizer.beta1),
            "optimizer.beta2" => Float(self.optimizer.beta2),
            "optimizer.eps" => Float(self.optimizer.eps),
            "divergence.loss_above" => Float(self.divergence.loss_above),
            "divergence.for_steps" => Int(self.divergence.for_steps as i64),
            "precision" => Str(self.precision.clone()),
            "channels_last" => Bool(self.channels_last),
            other => unreachable!("no training field `{other}`"),
        }
    }

    /// Every field and the seed, in a fixed order and an exact notation: what a trial id hashes.
    pub fn canonical(&self) -> String {
        let mut out = format!("seed={}", self.seed);
        for f in FIELDS {
            let value = self.get(f.path);
            if LATER_FIELDS.contains(&(f.path, value.to_string().as_str())) {
                continue;
            }
            let _ = match value {
                ParamValue::Str(p) if f.path == "dataset.path" && p.is_empty() => {
                    write!(out, ";{}={FORMER_DEFAULT_PATH}", f.path)
                }
                // `{:?}` writes the shortest text that reads back as the same f64.
                ParamValue::Float(v) => write!(out, ";{}={v:?}", f.path),
                v => write!(out, ";{}={v}", f.path),
            };
        }
        out
    }
}

struct Reader<'a> {
    s: &'a Settings,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn fail(&mut self, path: &str, message: String) {
        let (pos, shown) = match self.s.get(path) {
            Some((_, o)) => (o.pos, o.path.clone()),
            None => (Pos { line: 1, col: 1 }, format!("train.{path}")),
        };
        self.diags.push(Diagnostic::new(pos, shown, message));
    }

    fn float(
        &mut self,
        path: &str,
        default: Option<f64>,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> f64 {
        match (self.s.get(path), default) {
            (Some((ParamValue::Float(v), _)), _) => {
                let v = *v;
                if !v.is_finite() || !ok(v) {
                    self.fail(path, format!("{rule}, got {v}"));
                }
                v
            }
            (_, Some(d)) => d,
            (_, None) => {
                self.fail(
                    path,
                    format!("missing: set `{path}` under `train` or sweep it under `parameters`"),
                );
                f64::NAN
            }
        }
    }

    fn int(&mut self, path: &str, default: i64, min: i64, max: i64) -> i64 {
        match self.s.get(path) {
            Some((ParamValue::Int(v), _)) => {
                let v = *v;
                if v < min || v > max {
                    let rule = if max == i64::MAX {
                        format!("must be >= {min}")
                    } else {
                        format!("must be in [{min}, {max}]")
                    };
                    self.fail(path, format!("{rule}, got {v}"));
                }
                v.clamp(min, max)
            }
            _ => default,
        }
    }

    fn bool(&mut self, path: &str, default: bool) -> bool {
        match self.s.get(path) {
            Some((ParamValue::Bool(v), _)) => *v,
            _ => default,
        }
    }

    fn string(&mut self, path: &str, default: &str) -> String {
        match self.s.get(path) {
            Some((ParamValue::Str(v), _)) => v.clone(),
            _ => default.to_string(),
        }
    }

    fn choice(&mut self, path: &str, default: &str, known: &[&str], what: &str) -> String {
        let v = self.string(path, default);
        if !known.contains(&v.as_str()) {
            self.fail(
                path,
                format!("unknown {what} `{v}` (known: {})", known.join(", ")),
            );
        }
        v
    }
}
