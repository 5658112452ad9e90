//! Turning a sweep file into its trials: the grid's cartesian product or the random draws,
//! times the seeds, each checked as a complete configuration and named by its content.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::config::{Origin, ParamValue, TrialConfig};
use super::diagnostic::Diagnostic;
use super::{Domain, Method, SweepFile};

/// One trial of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Derived from the full configuration: the same configuration always has the same id.
    pub id: String,
    pub config: TrialConfig,
}

/// A trial's id: `t` and the first 12 hex digits of the SHA-256 of its canonical configuration.
pub fn trial_id(config: &TrialConfig) -> String {
    let digest = Sha256::digest(config.canonical().as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("t{hex}")
}

/// One choice of a value for every axis.
type Assignment = Vec<(&'static str, ParamValue, Origin)>;

/// Expands the file into trials in dispatch order (parameter combinations outer, seeds inner),
/// plus warnings. Problems go to `diags`; each is reported once however many trials share it.
pub fn expand(file: &SweepFile, diags: &mut Vec<Diagnostic>) -> (Vec<Trial>, Vec<String>) {
    let mut warnings = Vec::new();
    // Counted from the axes' lengths before anything is built: a file that asks for more than
    // it may is refused in microseconds, whatever its size.
    let (count, how) = count(file);
    if count > u128::from(file.max_trials) {
        let n = if count == u128::MAX {
            "more than 10^38".to_string()
        } else {
            count.to_string()
        };
        diags.push(Diagnostic::new(
            file.count_pos,
            "parameters",
            format!(
                "{n} trials ({how}): more than `max_trials` ({}); split the sweep, or set `max_trials` higher if that many is meant",
                file.max_trials
            ),
        ));
        return (Vec::new(), warnings);
    }
    let mut seen: HashSet<String> = HashSet::with_capacity(count as usize);
    let assignments: Box<dyn Iterator<Item = Assignment>> = match file.method {
        Method::Grid => Box::new(grid(file)),
        Method::Random { samples, seed } => Box::new(random(file, samples, seed).into_iter()),
    };
    let mut trials: Vec<Trial> = Vec::new();
    let mut duplicates = 0usize;
    for assignment in assignments {
        let mut settings = file.base.clone();
        for (field, value, origin) in assignment {
            settings.insert(field, (value.clone(), origin.clone()));
        }
        for &seed in &file.seeds {
            match TrialConfig::build(seed, &settings) {
                Ok(config) => {
                    check_activation_layers(file, &config, diags);
                    let id = trial_id(&config);
                    if !seen.insert(id.clone()) {
                        duplicates += 1;
                    } else {
                        trials.push(Trial { id, config });
                    }
                }
                Err(found) => diags.extend(found.into_iter().filter(|d| {
                    // A field whose axis could not be read is not missing too.
                    !file.broken.iter().any(|f| d.path == format!("train.{f}"))
                })),
            }
        }
    }
    if duplicates > 0 {
        warnings.push(format!(
            "{duplicates} random draw(s) repeated an earlier trial's configuration and were dropped"
        ));
    }
    (trials, warnings)
}

/// How many trials the file asks for (saturating), and how that number comes about:
/// `lr 10 x bn 2 x 3 seeds`.
pub fn count(file: &SweepFile) -> (u128, String) {
    let mut parts: Vec<String> = Vec::new();
    let combos = match file.method {
        Method::Grid => file
            .axes
            .iter()
            .filter_map(|a| match &a.domain {
                Domain::Values(v) => Some((a.field, v.len() as u128)),
                _ => None,
            })
            .fold(1u128, |n, (field, len)| {
                parts.push(format!("{field} {len}"));
                n.saturating_mul(len)
            }),
        Method::Random { samples, .. } => {
            parts.push(format!("{samples} samples"));
            u128::from(samples)
        }
    };
    parts.push(format!("{} seeds", file.seeds.len()));
    (
        combos.saturating_mul(file.seeds.len() as u128),
        parts.join(" x "),
    )
}

/// Activation layers must exist in every trial's model.
fn check_activation_layers(file: &SweepFile, config: &TrialConfig, diags: &mut Vec<Diagnostic>) {
    let Some(a) = file.measure.as_ref().and_then(|m| m.activations.as_ref()) else {
        return;
    };
    let count = super::config::layer_count(&config.model.name, &config.model.hidden);
    for &layer in a.layers.iter().flatten() {
        if layer as usize >= count {
            diags.push(Diagnostic::new(
                a.layers_pos,
                "measure.activations.layers",
                format!(
                    "layer {layer} does not exist: `{}` has layers 0 to {}",
                    config.model.name,
                    count - 1
                ),
            ));
        }
    }
}

/// The grid's combinations in order (the first axis varies slowest), one at a time: the
/// `index`-th combination is `index` written in the mixed radix of the axes' lengths.
fn grid(file: &SweepFile) -> impl Iterator<Item = Assignment> + '_ {
    let axes: Vec<(&'static str, &Vec<(ParamValue, Origin)>)> = file
        .axes
        .iter()
        .filter_map(|a| match &a.domain {
            Domain::Values(v) => Some((a.field, v)),
            _ => None, // rejected while reading: distributions need `method: random`
        })
        .collect();
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    (0..total).map(move |mut index| {
        let mut a: Assignment = Vec::with_capacity(axes.len());
        for (field, values) in axes.iter().rev() {
            let (v, o) = &values[index % values.len()];
            index /= values.len();
            a.push((field, v.clone(), o.clone()));
        }
        a.reverse();
        a
    })
}

fn random(file: &SweepFile, samples: u32, seed: u64) -> Vec<Assignment> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..samples)
        .map(|_| {
            file.axes
                .iter()
                .map(|axis| {
                    let (value, origin) = match &axis.domain {
                        Domain::Values(values) => values[rng.gen_range(0..values.len())].clone(),
                        Domain::Uniform { min, max, origin } => (
                            ParamValue::Float(rng.gen_range(*min..=*max)),
                            origin.clone(),
                        ),
                        Domain::LogUniform { min, max, origin } => {
                            let x: f64 = rng.gen_range(min.ln()..=max.ln());
                            (ParamValue::Float(x.exp().clamp(*min, *max)), origin.clone())
                        }
                        Domain::IntUniform { min, max, origin } => {
                            (ParamValue::Int(rng.gen_range(*min..=*max)), origin.clone())
                        }
                    };
                    (axis.field, value, origin)
                })
                .collect()
        })
        .collect()
}
