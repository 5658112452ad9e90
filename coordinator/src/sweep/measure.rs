//! The `measure:` section: what every trial measures besides its loss, and how often.

use bnsweep_proto as pb;

use super::diagnostic::Diagnostic;
use super::yaml::{Node, Pos, Scalar, Value};

/// Step sizes of the landscape, as multiples of the learning rate, by default.
pub const DEFAULT_ETA: [f64; 8] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0];

#[derive(Debug, Clone, PartialEq)]
pub struct Landscape {
    pub eta: Vec<f64>,
    pub relative_to_lr: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    /// Layer indices in forward order; `None` is all layers.
    pub layers: Option<Vec<u32>>,
    /// Where `layers` stands in the file, for errors found per trial.
    pub layers_pos: Pos,
    pub bins: u32,
    pub sample: u32,
    pub range: (f64, f64),
}

/// What to measure. Measurements never change training, so they are no part of a trial's id.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureConfig {
    pub every: u64,
    pub ics: bool,
    pub landscape: Option<Landscape>,
    pub activations: Option<Activations>,
    pub weights: bool,
}

impl MeasureConfig {
    /// What a worker is sent of it, with every trial.
    pub fn to_spec(&self) -> pb::MeasureSpec {
        let (landscape, eta, relative) = match &self.landscape {
            Some(l) => (true, l.eta.clone(), l.relative_to_lr),
            None => (false, Vec::new(), false),
        };
        let a = self.activations.as_ref();
        pb::MeasureSpec {
            every: self.every,
            ics: self.ics,
            landscape,
            eta,
            eta_relative_to_lr: relative,
            weights: self.weights,
            activations: a.is_some(),
            activation_layers: a.and_then(|a| a.layers.clone()).unwrap_or_default(),
            bins: a.map_or(0, |a| a.bins),
            sample: a.map_or(0, |a| a.sample),
            range_lo: a.map_or(0.0, |a| a.range.0),
            range_hi: a.map_or(0.0, |a| a.range.1),
        }
    }
}

const KEYS: &[&str] = &["every", "ics", "landscape", "activations", "weights"];

fn entries<'a>(
    n: &'a Node,
    path: &str,
    keys: &[&str],
    diags: &mut Vec<Diagnostic>,
) -> &'a [(String, Pos, Node)] {
    let Some(entries) = n.as_map() else {
        diags.push(Diagnostic::new(
            n.pos,
            path,
            format!("expected a mapping, got {}", n.kind()),
        ));
        return &[];
    };
    for (k, p, _) in entries {
        if !keys.contains(&k.as_str()) {
            diags.push(Diagnostic::new(
                *p,
                format!("{path}.{k}"),
                format!("unknown key `{k}` (expected one of: {})", keys.join(", ")),
            ));
        }
    }
    entries
}

fn get<'a>(entries: &'a [(String, Pos, Node)], key: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n)
}

fn boolean(n: &Node, path: &str, diags: &mut Vec<Diagnostic>) -> bool {
    match n.value {
        Value::Scalar(Scalar::Bool(b)) => b,
        _ => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("expected true or false, got {}", n.kind()),
            ));
            false
        }
    }
}

fn int(n: &Node, path: &str, min: i64, max: i64, diags: &mut Vec<Diagnostic>) -> i64 {
    match n.value {
        Value::Scalar(Scalar::Int(v)) if (min..=max).contains(&v) => v,
        Value::Scalar(Scalar::Int(v)) => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                if max == i64::MAX {
                    format!("must be >= {min}, got {v}")
                } else {
                    format!("must be in [{min}, {max}], got {v}")
                },
            ));
            min
        }
        _ => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("expected an integer, got {}", n.kind()),
            ));
            min
        }
    }
}

fn number(n: &Node, path: &str, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    match n.value {
        Value::Scalar(Scalar::Float(v)) if v.is_finite() => Some(v),
        Value::Scalar(Scalar::Int(v)) => Some(v as f64),
        _ => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("expected a finite number, got {}", n.kind()),
            ));
            None
        }
    }
}

fn list<'a>(n: &'a Node, path: &str, diags: &mut Vec<Diagnostic>) -> &'a [Node] {
    match &n.value {
        Value::Seq(items) if !items.is_empty() => items,
        Value::Seq(_) => {
            diags.push(Diagnostic::new(n.pos, path, "empty list"));
            &[]
        }
        _ => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("expected a list, got {}", n.kind()),
            ));
            &[]
        }
    }
}

/// Reads `measure:`. A part set to `false` (or left out) is not measured.
pub fn read(n: &Node, diags: &mut Vec<Diagnostic>) -> MeasureConfig {
    let e = entries(n, "measure", KEYS, diags);
    let every = get(e, "every").map_or(100, |v| int(v, "measure.every", 1, i64::MAX, diags) as u64);
    let ics = get(e, "ics").is_some_and(|v| boolean(v, "measure.ics", diags));
    let weights = get(e, "weights").is_some_and(|v| boolean(v, "measure.weights", diags));
    let landscape = get(e, "landscape").and_then(|v| read_landscape(v, diags));
    let activations = get(e, "activations").and_then(|v| read_activations(v, diags));
    MeasureConfig {
        every,
        ics,
        landscape,
        activations,
        weights,
    }
}

fn read_landscape(n: &Node, diags: &mut Vec<Diagnostic>) -> Option<Landscape> {
    let path = "measure.landscape";
    if let Value::Scalar(_) = n.value {
        return boolean(n, path, diags).then(|| Landscape {
            eta: DEFAULT_ETA.to_vec(),
            relative_to_lr: true,
        });
    }
    let e = entries(n, path, &["eta", "relative_to_lr"], diags);
    let relative_to_lr = get(e, "relative_to_lr")
        .is_none_or(|v| boolean(v, "measure.landscape.relative_to_lr", diags));
    let eta = match get(e, "eta") {
        None => DEFAULT_ETA.to_vec(),
        Some(v) => list(v, "measure.landscape.eta", diags)
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let p = format!("measure.landscape.eta[{i}]");
                let x = number(item, &p, diags)?;
                if x <= 0.0 {
                    diags.push(Diagnostic::new(
                        item.pos,
                        p,
                        format!("step sizes must be > 0, got {x}"),
                    ));
                    return None;
                }
                Some(x)
            })
            .collect(),
    };
    Some(Landscape {
        eta,
        relative_to_lr,
    })
}

fn read_activations(n: &Node, diags: &mut Vec<Diagnostic>) -> Option<Activations> {
    let path = "measure.activations";
    let mut a = Activations {
        layers: None,
        layers_pos: n.pos,
        bins: 64,
        sample: 4096,
        range: (-6.0, 6.0),
    };
    if let Value::Scalar(_) = n.value {
        return boolean(n, path, diags).then_some(a);
    }
    let e = entries(n, path, &["layers", "bins", "sample", "range"], diags);
    if let Some(v) = get(e, "layers") {
        a.layers_pos = v.pos;
        match &v.value {
            Value::Scalar(Scalar::Str(s)) if s == "all" => {}
            _ => {
                let items = list(v, "measure.activations.layers", diags);
                let layers = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        int(
                            item,
                            &format!("measure.activations.layers[{i}]"),
                            0,
                            1000,
                            diags,
                        ) as u32
                    })
                    .collect();
                a.layers = Some(layers);
            }
        }
    }
    if let Some(v) = get(e, "bins") {
        a.bins = int(v, "measure.activations.bins", 1, 1024, diags) as u32;
    }
    if let Some(v) = get(e, "sample") {
        a.sample = int(v, "measure.activations.sample", 1, 10_000_000, diags) as u32;
    }
    if let Some(v) = get(e, "range") {
        let items = list(v, "measure.activations.range", diags);
        let bounds: Vec<f64> = items
            .iter()
            .filter_map(|i| number(i, "measure.activations.range", diags))
            .collect();
        match bounds[..] {
            [lo, hi] if lo < hi => a.range = (lo, hi),
            _ => diags.push(Diagnostic::new(
                v.pos,
                "measure.activations.range",
                "expected [lo, hi] with lo < hi",
            )),
        }
    }
    Some(a)
}
