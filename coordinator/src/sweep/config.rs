//! What one trial trains: the training fields a sweep file may set or sweep, declared once in
//! [`TrialConfig`]'s `training_fields!` (paths, types, defaults, rules, wire), the reading of
//! `train:`, and the step that turns the settings of one trial into a checked configuration.

use std::collections::BTreeMap;

use bnsweep_proto as pb;

use super::diagnostic::Diagnostic;
use super::fields::{training_fields, Build, Canonical, Get, Reader, Rule, Wire};
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

training_fields! {
    /// The complete, checked configuration of one trial: every training field, declared once.
    ///
    /// Each field's path under `train:` (its name under `parameters:`), type, default, rule
    /// and place in the worker's `TrialSpec` (when not its own) are here, in the order of a
    /// trial id's text and of docs/sweep-file.md's table. A new field takes `later: true` and
    /// a default that trains as before, so that existing ids stay the same. Rules across
    /// fields are in `check_across`.
    TrialConfig {
        /// Constant learning rate.
        lr: f64 = "lr" { rule: Rule::Number(|v| v > 0.0, "learning rate must be > 0") };
        /// BatchNorm after every conv, before the ReLU.
        bn: bool = "bn" { default: true };
        /// The noise level v (docs/training.md).
        noise: f64 = "noise" {
            default: 0.0,
            rule: Rule::Number(|v| v >= 0.0, "noise level must be >= 0"),
        };
        /// Where the noise definitions leave a choice (docs/training.md, "The noise").
        noise_options: NoiseOptions {
            /// `element`: m and s drawn per element; `channel`: one per channel (or feature).
            draws: String = "noise_draws" {
                default: NOISE_DRAWS[0],
                rule: Rule::OneOf(NOISE_DRAWS, "noise draw"),
                later: true,
            } => noise_draws;
            /// `layer`: mu_t and sigma_t once per layer and step; `channel`: once per channel.
            moments: String = "noise_moments" {
                default: NOISE_MOMENTS[0],
                rule: Rule::OneOf(NOISE_MOMENTS, "noise moment"),
                later: true,
            } => noise_moments;
            /// `std`: s ~ N(sigma_t, (0.1 v)^2); `variance`: s ~ N(sigma_t, 0.1 v).
            spread: String = "noise_spread" {
                default: NOISE_SPREADS[0],
                rule: Rule::OneOf(NOISE_SPREADS, "noise spread"),
                later: true,
            } => noise_spread;
            /// Noise in a VGG head's hidden linear layers too (before their ReLU).
            head: bool = "noise_head" { default: false, later: true } => noise_head;
        }
        batch_size: u32 = "batch_size" { default: 128, rule: Rule::Range(1, 65_536) };
        steps: u64 = "steps" { default: 1000, rule: Rule::Range(1, i64::MAX) };
        eval_every: u64 = "eval_every" { default: 500, rule: Rule::Range(1, i64::MAX) };
        model: ModelConfig {
            name: String = "model.name" { default: "vgg8", rule: Rule::OneOf(MODELS, "model") };
            width: f64 = "model.width" {
                default: 1.0,
                rule: Rule::Number(|v| v > 0.0 && v <= 16.0, "width must be in (0, 16]"),
            };
            /// mlp: hidden layer sizes.
            hidden: Vec<i64> = "model.hidden" {
                default: vec![256, 128, 64],
                rule: Rule::Each(
                    |h| (1..=1_000_000).contains(&h),
                    "hidden layer sizes must be in [1, 1000000]",
                ),
            };
            /// How the initial weights are drawn (one of [`INITS`]).
            init: String = "model.init" {
                default: "pytorch",
                rule: Rule::OneOf(INITS, "initialisation"),
            };
            /// BatchNorm's running-statistics momentum, PyTorch's convention.
            bn_momentum: f64 = "model.bn_momentum" {
                default: 0.1,
                rule: Rule::Number(
                    |v| v > 0.0 && v <= 1.0,
                    "BatchNorm momentum must be in (0, 1] (PyTorch's convention: flax's 0.99 is 0.01)",
                ),
            };
        }
        dataset: DatasetConfig {
            name: String = "dataset.name" {
                default: "synthetic",
                rule: Rule::OneOf(DATASETS, "dataset"),
            };
            /// Empty: the official release, from the workers' cache (downloaded once).
            path: String = "dataset.path" {
                default: "",
                rule: Rule::Text(
                    |p| !p.is_empty(),
                    "must not be empty (leave it out to use the downloaded release)",
                ),
                id_if_empty: FORMER_DEFAULT_PATH,
            };
            augment: bool = "dataset.augment" { default: false };
            /// 0 means the whole set (cifar10, mnist).
            train_size: u32 = "dataset.train_size" {
                default_from: |c| Sizes::of(c).train as u32,
                rule_from: |c| Rule::Range(Sizes::of(c).min, Sizes::of(c).train_max),
            };
            test_size: u32 = "dataset.test_size" {
                default_from: |c| Sizes::of(c).test as u32,
                rule_from: |c| Rule::Range(Sizes::of(c).min, Sizes::of(c).test_max),
            };
            seed: u64 = "dataset.seed" { default: 0, rule: Rule::Range(0, i64::MAX) }
                => dataset.data_seed;
        }
        optimizer: OptimizerConfig {
            name: String = "optimizer.name" {
                default: "sgd",
                rule: Rule::OneOf(OPTIMIZERS, "optimizer"),
            };
            momentum: f64 = "optimizer.momentum" {
                default: 0.0,
                rule: Rule::Number(|v| (0.0..1.0).contains(&v), "momentum must be in [0, 1)"),
            };
            weight_decay: f64 = "optimizer.weight_decay" {
                default: 0.0,
                rule: Rule::Number(|v| v >= 0.0, "weight decay must be >= 0"),
            };
            nesterov: bool = "optimizer.nesterov" { default: false };
            beta1: f64 = "optimizer.beta1" {
                default: 0.9,
                rule: Rule::Number(|v| (0.0..1.0).contains(&v), "beta1 must be in [0, 1)"),
            };
            beta2: f64 = "optimizer.beta2" {
                default: 0.999,
                rule: Rule::Number(|v| (0.0..1.0).contains(&v), "beta2 must be in [0, 1)"),
            };
            eps: f64 = "optimizer.eps" {
                default: 1e-8,
                rule: Rule::Number(|v| v > 0.0, "eps must be > 0"),
            };
        }
        /// When a finite loss counts as diverged: above `loss_above` for `for_steps` steps
        /// running.
        divergence: DivergenceConfig {
            loss_above: f64 = "divergence.loss_above" {
                default: 100.0,
                rule: Rule::NumberOrInf(|v| v > 0.0, "must be > 0 (.inf turns the bound off)"),
            };
            for_steps: u64 = "divergence.for_steps" {
                default: 20,
                rule: Rule::Range(1, i64::MAX),
            };
        }
        /// How training steps compute: fp32 (exact), bf16 or fp16 (autocast).
        precision: String = "precision" {
            default: "fp32",
            rule: Rule::OneOf(PRECISIONS, "precision"),
            later: true,
        };
        channels_last: bool = "channels_last" { default: false, later: true };
    }
}

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

/// The sizes a dataset allows and defaults to.
struct Sizes {
    train: i64,
    test: i64,
    /// 1 for synthetic (at least one image), else 0 (the whole set).
    min: i64,
    train_max: i64,
    test_max: i64,
}

impl Sizes {
    fn of(c: &TrialConfig) -> Sizes {
        let (train, test, train_max, test_max) = match c.dataset.name.as_str() {
            "synthetic" => (5000, 1000, 1_000_000, 1_000_000),
            "mnist" => (0, 0, MNIST_TRAIN, MNIST_TEST),
            _ => (0, 0, CIFAR10_TRAIN, CIFAR10_TEST),
        };
        Sizes {
            train,
            test,
            min: i64::from(c.dataset.name == "synthetic"),
            train_max,
            test_max,
        }
    }
}

impl TrialConfig {
    /// Applies defaults and checks every value; every problem found is returned.
    pub fn build(seed: u64, s: &Settings) -> Result<TrialConfig, Vec<Diagnostic>> {
        let mut b = Build {
            config: TrialConfig {
                seed,
                ..TrialConfig::default()
            },
            reader: Reader {
                settings: s,
                diags: Vec::new(),
            },
        };
        TrialConfig::visit(&mut b);
        check_across(&b.config, &mut b.reader);
        if b.reader.diags.is_empty() {
            Ok(b.config)
        } else {
            Err(b.reader.diags)
        }
    }

    /// The value of a training field, by its path.
    pub fn get(&self, path: &str) -> ParamValue {
        let mut g = Get {
            config: self,
            path,
            found: None,
        };
        TrialConfig::visit(&mut g);
        g.found
            .unwrap_or_else(|| unreachable!("no training field `{path}`"))
    }

    /// Every field and the seed, in a fixed order and an exact notation: what a trial id hashes.
    pub fn canonical(&self) -> String {
        let mut c = Canonical {
            config: self,
            out: format!("seed={}", self.seed),
        };
        TrialConfig::visit(&mut c);
        c.out
    }

    /// What a worker is sent to train this configuration.
    pub fn to_spec(&self, measure: Option<pb::MeasureSpec>) -> pb::TrialSpec {
        let mut w = Wire {
            config: self,
            spec: pb::TrialSpec {
                seed: self.seed,
                measure,
                ..Default::default()
            },
        };
        TrialConfig::visit(&mut w);
        w.spec
    }
}

/// The rules that tie fields together, once each field is read and checked on its own.
fn check_across(c: &TrialConfig, r: &mut Reader<'_>) {
    if c.dataset.name == "mnist" {
        if c.model.name != "mlp" {
            // On the model when the file names one, else on the dataset.
            let at = if r.settings.contains_key("model.name") {
                "model.name"
            } else {
                "dataset.name"
            };
            r.fail(
                at,
                format!(
                    "`{}` takes 32x32 colour images; MNIST's are 28x28 grey: use `model.name: mlp`",
                    c.model.name
                ),
            );
        }
        if c.dataset.augment {
            r.fail(
                "dataset.augment",
                "random crops and flips are for CIFAR-10's images, not MNIST's digits".into(),
            );
        }
    }
    let available = match c.dataset.train_size {
        0 => Sizes::of(c).train_max,
        n => i64::from(n),
    };
    if i64::from(c.batch_size) > available {
        r.fail(
            "batch_size",
            format!(
                "batch size {} is larger than the training set ({available} images)",
                c.batch_size
            ),
        );
    }
    if c.optimizer.nesterov && c.optimizer.momentum == 0.0 {
        r.fail(
            "optimizer.nesterov",
            "Nesterov momentum needs optimizer.momentum > 0".into(),
        );
    }
}
