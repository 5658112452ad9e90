//! Sweep files: reading, checking and expanding them into trials.
//!
//! A sweep file is read in three steps: the YAML text becomes a tree that remembers positions
//! ([`yaml`]), the tree becomes a checked [`SweepFile`] (this module), and the file expands into
//! its [`Trial`]s ([`expand`]), each checked as a complete [`TrialConfig`]. Every problem of every
//! step is collected and reported at once, with `FILE:LINE:COL` and the field's path.

pub mod config;
pub mod diagnostic;
pub mod expand;
pub mod fields;
pub mod measure;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use config::{ParamValue, TrialConfig};
pub use diagnostic::{Diagnostic, Diagnostics};
pub use expand::Trial;

use config::{Kind, Settings};
use yaml::{Node, Pos, Scalar, Value};

/// How parameter combinations are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Every combination of every axis.
    Grid,
    /// `samples` independent draws, reproducible from `seed`.
    Random { samples: u32, seed: u64 },
}

/// The values one swept field takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// An explicit list; each value with where it stands in the file.
    Values(Vec<(ParamValue, config::Origin)>),
    /// A float drawn uniformly from [min, max] (random only).
    Uniform {
        min: f64,
        max: f64,
        origin: config::Origin,
    },
    /// A float whose logarithm is uniform on [ln min, ln max] (random only).
    LogUniform {
        min: f64,
        max: f64,
        origin: config::Origin,
    },
    /// An integer drawn uniformly from min..=max (random only).
    IntUniform {
        min: i64,
        max: i64,
        origin: config::Origin,
    },
}

/// One swept training field.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// The field's dotted path (`lr`, `optimizer.momentum`).
    pub field: &'static str,
    pub domain: Domain,
}

/// A checked sweep file, before expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepFile {
    pub name: String,
    pub method: Method,
    pub seeds: Vec<u64>,
    pub axes: Vec<Axis>,
    /// The `train:` settings shared by every trial.
    pub base: Settings,
    /// What every trial measures besides its loss.
    pub measure: Option<measure::MeasureConfig>,
    /// Fields whose value or axis could not be read (already reported): not reported again as missing.
    pub broken: Vec<&'static str>,
    /// The most trials the file may ask for (`max_trials`).
    pub max_trials: u64,
    /// Where the sweep stands among others on a `bnsweep server` (`priority`).
    pub priority: i64,
    /// Where a count above it is reported: `parameters` (or `seeds`, or the file's start).
    pub count_pos: Pos,
}

/// The default of `max_trials`: a sweep larger than this is more likely a mistake (an axis
/// too many) than a plan, and would take the coordinator's memory with it.
pub const MAX_TRIALS: u64 = 1_000_000;
/// The largest `priority` either way.
const PRIORITY_LIMIT: i64 = 1000;

/// The largest `max_trials` a file may set.
pub const MAX_TRIALS_LIMIT: u64 = 100_000_000;

/// A sweep ready to run: its source text and its trials, in dispatch order.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    /// The file as the user wrote it, kept next to the results.
    pub source: String,
    /// The swept fields, in file order: the parameter columns of the results besides
    /// `lr`, `bn`, `noise` and `seed`, which are always there.
    pub axes: Vec<&'static str>,
    pub trials: Vec<Trial>,
    /// Things worth telling the user that do not stop the sweep.
    pub warnings: Vec<String>,
    /// What every trial measures besides its loss.
    pub measure: Option<measure::MeasureConfig>,
    /// On a `bnsweep server`, sweeps of a higher priority get trials first (default 0).
    pub priority: i64,
}

/// Where a missing top-level key is reported.
const FILE_START: Pos = Pos { line: 1, col: 1 };

const TOP_KEYS: &[&str] = &[
    "measure",
    "max_trials",
    "priority",
    "name",
    "description",
    "method",
    "samples",
    "seed",
    "seeds",
    "parameters",
    "train",
];

impl Sweep {
    /// Reads, checks and expands a sweep file. `Err` holds every problem found.
    pub fn load(path: &Path) -> Result<Sweep, Diagnostics> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics::new(
                &shown,
                vec![Diagnostic::new(
                    Pos { line: 0, col: 0 },
                    "",
                    format!("cannot read the file: {e}"),
                )],
            )
        })?;
        Sweep::parse(&shown, &text)
    }

    /// Like [`Sweep::load`], from text; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Sweep, Diagnostics> {
        let root = yaml::parse(text).map_err(|e| {
            Diagnostics::new(
                file,
                vec![Diagnostic::new(
                    e.pos,
                    "",
                    format!("YAML syntax error: {}", e.message),
                )],
            )
        })?;
        let mut diags = Vec::new();
        let parsed = SweepFile::from_tree(&root, &mut diags);
        let expanded = expand::expand(&parsed, &mut diags);
        if !diags.is_empty() {
            return Err(Diagnostics::new(file, diags));
        }
        let (trials, mut warnings) = expanded;
        let mut axes: Vec<&'static str> = Vec::new();
        for a in &parsed.axes {
            if !axes.contains(&a.field) {
                axes.push(a.field);
            }
        }
        for w in &mut warnings {
            *w = format!("{file}: {w}");
        }
        Ok(Sweep {
            name: parsed.name,
            source: text.to_string(),
            axes,
            trials,
            warnings,
            measure: parsed.measure,
            priority: parsed.priority,
        })
    }

    /// Column names of the swept parameters for the results, in order: `lr`, `bn`, `noise`,
    /// `seed`, then every other swept field with its dots written as underscores.
    pub fn param_columns(&self) -> Vec<(String, Kind, &'static str)> {
        let mut cols: Vec<(String, Kind, &'static str)> = vec![
            ("lr".into(), Kind::Float, "lr"),
            ("bn".into(), Kind::Bool, "bn"),
            ("noise".into(), Kind::Float, "noise"),
            ("seed".into(), Kind::Int, "seed"),
        ];
        for a in &self.axes {
            if !cols.iter().any(|c| c.2 == *a) {
                let kind = config::field(a).map(|f| f.kind).unwrap_or(Kind::Str);
                cols.push((a.replace('.', "_"), kind, a));
            }
        }
        cols
    }
}

/// A top-level mapping's entry by key.
type Entries = [(String, Pos, Node)];

fn entry<'a>(entries: &'a Entries, key: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n)
}

impl SweepFile {
    /// Checks the top level of the file and its `parameters` and `train` sections.
    pub fn from_tree(root: &Node, diags: &mut Vec<Diagnostic>) -> SweepFile {
        let mut out = SweepFile {
            name: String::new(),
            method: Method::Grid,
            seeds: vec![0],
            axes: Vec::new(),
            base: Settings::new(),
            measure: None,
            broken: Vec::new(),
            max_trials: MAX_TRIALS,
            priority: 0,
            count_pos: FILE_START,
        };
        let Some(entries) = root.as_map() else {
            diags.push(Diagnostic::new(
                root.pos,
                "",
                format!("a sweep file is a mapping, got {}", root.kind()),
            ));
            return out;
        };
        let get = |key: &str| entry(entries, key);
        for (key, pos, _) in entries {
            if !TOP_KEYS.contains(&key.as_str()) {
                diags.push(Diagnostic::new(
                    *pos,
                    key.clone(),
                    format!(
                        "unknown key `{key}` (expected one of: {})",
                        TOP_KEYS.join(", ")
                    ),
                ));
            }
        }
        out.name = read_name(get("name"), diags);
        if let Some(n) = get("description") {
            if !matches!(n.value, Value::Scalar(Scalar::Str(_))) {
                diags.push(Diagnostic::new(
                    n.pos,
                    "description",
                    format!("expected a string, got {}", n.kind()),
                ));
            }
        }
        out.method = read_method(entries, diags);
        // Distributions are read as random even when `samples` is missing (reported above).
        let random = get("method")
            .is_some_and(|m| matches!(&m.value, Value::Scalar(Scalar::Str(s)) if s == "random"));
        if let Some(n) = get("seeds") {
            out.seeds = read_seeds(n, diags);
        }
        if let Some(n) = get("max_trials") {
            let v = non_negative(n, "max_trials", diags);
            if (1..=MAX_TRIALS_LIMIT).contains(&v) {
                out.max_trials = v;
            } else {
                diags.push(Diagnostic::new(
                    n.pos,
                    "max_trials",
                    format!("must be in [1, {MAX_TRIALS_LIMIT}], got {v}"),
                ));
            }
        }
        if let Some(n) = get("priority") {
            match &n.value {
                Value::Scalar(Scalar::Int(p)) if (-PRIORITY_LIMIT..=PRIORITY_LIMIT).contains(p) => {
                    out.priority = *p
                }
                Value::Scalar(Scalar::Int(p)) => diags.push(Diagnostic::new(
                    n.pos,
                    "priority",
                    format!("must be in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}], got {p}"),
                )),
                _ => diags.push(Diagnostic::new(
                    n.pos,
                    "priority",
                    format!("expected an integer, got {}", n.kind()),
                )),
            }
        }
        let key_pos = |key: &str| entries.iter().find(|(k, _, _)| k == key).map(|e| e.1);
        out.count_pos = key_pos("parameters")
            .or_else(|| key_pos("samples"))
            .or_else(|| key_pos("seeds"))
            .unwrap_or(FILE_START);
        if let Some(n) = get("measure") {
            out.measure = Some(measure::read(n, diags));
        }
        out.read_training(get("train"), get("parameters"), random, diags);
        out
    }

    /// The `train` settings and the `parameters` axes; a field may be in one, not both.
    fn read_training(
        &mut self,
        train: Option<&Node>,
        parameters: Option<&Node>,
        random: bool,
        diags: &mut Vec<Diagnostic>,
    ) {
        if let Some(n) = train {
            self.base = config::read_train(n, &mut self.broken, diags);
        }
        if let Some(n) = parameters {
            let (axes, broken) = read_axes(n, random, diags);
            self.axes = axes;
            self.broken.extend(broken);
        }
        for axis in &self.axes {
            if let Some((_, origin)) = self.base.get(axis.field) {
                diags.push(Diagnostic::new(
                    origin.pos,
                    origin.path.clone(),
                    format!(
                        "`{}` is swept under `parameters`; remove it from `train`",
                        axis.field
                    ),
                ));
            }
        }
    }
}

fn read_name(n: Option<&Node>, diags: &mut Vec<Diagnostic>) -> String {
    match n {
        Some(Node {
            value: Value::Scalar(Scalar::Str(s)),
            pos,
        }) => {
            if let Err(why) = check_name(s) {
                diags.push(Diagnostic::new(*pos, "name", why));
            }
            s.clone()
        }
        Some(n) => {
            diags.push(Diagnostic::new(
                n.pos,
                "name",
                format!("expected a string, got {}", n.kind()),
            ));
            String::new()
        }
        None => {
            diags.push(Diagnostic::new(
                FILE_START,
                "name",
                "missing: every sweep needs a `name`",
            ));
            String::new()
        }
    }
}

/// `method`, with `samples` and `seed` for a random sweep.
fn read_method(entries: &Entries, diags: &mut Vec<Diagnostic>) -> Method {
    let seed = match entry(entries, "seed") {
        Some(n) => non_negative(n, "seed", diags),
        None => 0,
    };
    let random = match entry(entries, "method") {
        None => false,
        Some(Node {
            value: Value::Scalar(Scalar::Str(m)),
            pos,
        }) => match m.as_str() {
            "grid" => false,
            "random" => true,
            other => {
                diags.push(Diagnostic::new(
                    *pos,
                    "method",
                    format!("unknown method `{other}` (known: grid, random)"),
                ));
                false
            }
        },
        Some(n) => {
            diags.push(Diagnostic::new(
                n.pos,
                "method",
                format!("expected grid or random, got {}", n.kind()),
            ));
            false
        }
    };
    match (entry(entries, "samples"), random) {
        (Some(n), true) => {
            let samples = non_negative(n, "samples", diags);
            if samples == 0 || samples > 1_000_000 {
                diags.push(Diagnostic::new(
                    n.pos,
                    "samples",
                    format!("must be in [1, 1000000], got {samples}"),
                ));
            }
            return Method::Random {
                samples: samples.clamp(1, 1_000_000) as u32,
                seed,
            };
        }
        (None, true) => diags.push(Diagnostic::new(
            FILE_START,
            "samples",
            "missing: `method: random` needs `samples`",
        )),
        (Some(n), false) => diags.push(Diagnostic::new(
            n.pos,
            "samples",
            "only `method: random` takes `samples`",
        )),
        (None, false) => {}
    }
    Method::Grid
}

fn non_negative(n: &Node, path: &str, diags: &mut Vec<Diagnostic>) -> u64 {
    match &n.value {
        Value::Scalar(Scalar::Int(i)) if *i >= 0 => *i as u64,
        Value::Scalar(Scalar::Int(i)) => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("must be >= 0, got {i}"),
            ));
            0
        }
        _ => {
            diags.push(Diagnostic::new(
                n.pos,
                path,
                format!("expected an integer, got {}", n.kind()),
            ));
            0
        }
    }
}

/// A sweep's name names its results directory: 1 to 64 of `A-Z a-z 0-9 . _ -`, not `.` or
/// `..`, so that it can never reach outside `results/`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.chars().count() > 64 {
        Err(format!(
            "{} characters; a name has at most 64",
            name.chars().count()
        ))
    } else if name == "." || name == ".." {
        Err(format!("`{name}` is not a name (it names a directory)"))
    } else if let Some(c) = name.chars().find(|&c| !ok(c)) {
        Err(format!(
            "`{c}` is not allowed: a name is made of letters, digits, `.`, `_` and `-` (it names the results directory)"
        ))
    } else {
        Ok(())
    }
}

fn read_seeds(n: &Node, diags: &mut Vec<Diagnostic>) -> Vec<u64> {
    let Value::Seq(items) = &n.value else {
        diags.push(Diagnostic::new(
            n.pos,
            "seeds",
            format!("expected a list of integers, got {}", n.kind()),
        ));
        return vec![0];
    };
    if items.is_empty() {
        diags.push(Diagnostic::new(
            n.pos,
            "seeds",
            "empty list: give at least one seed",
        ));
    }
    let mut seeds = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("seeds[{i}]");
        let s = non_negative(item, &path, diags);
        if !seen.insert(s) {
            diags.push(Diagnostic::new(
                item.pos,
                path,
                format!("seed {s} is listed twice"),
            ));
        } else {
            seeds.push(s);
        }
    }
    seeds
}

/// The axes that could be read, and the fields of those that could not.
fn read_axes(
    n: &Node,
    random: bool,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Axis>, Vec<&'static str>) {
    let Some(entries) = n.as_map() else {
        diags.push(Diagnostic::new(
            n.pos,
            "parameters",
            format!("expected a mapping, got {}", n.kind()),
        ));
        return (Vec::new(), Vec::new());
    };
    let mut axes = Vec::new();
    let mut broken = Vec::new();
    for (key, key_pos, value) in entries {
        let shown = format!("parameters.{key}");
        if config::field(key).is_some_and(|f| f.kind == Kind::IntList) {
            diags.push(Diagnostic::new(
                *key_pos,
                shown,
                format!("`{key}` cannot be swept; set it under `train`"),
            ));
            continue;
        }
        let Some(field) = config::field(key) else {
            let hint = if key == "seed" {
                "seeds are swept with the top-level `seeds` list".to_string()
            } else {
                let all: Vec<&str> = config::FIELDS
                    .iter()
                    .filter(|f| f.kind != Kind::IntList)
                    .map(|f| f.path)
                    .collect();
                format!("unknown parameter `{key}` (sweepable: {})", all.join(", "))
            };
            diags.push(Diagnostic::new(*key_pos, shown, hint));
            continue;
        };
        match read_domain(value, field, &shown, random, diags) {
            Some(domain) => axes.push(Axis {
                field: field.path,
                domain,
            }),
            None => broken.push(field.path),
        }
    }
    (axes, broken)
}

fn read_domain(
    n: &Node,
    field: &'static config::Field,
    shown: &str,
    random: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Domain> {
    let list = match &n.value {
        Value::Seq(items) => Some((items, n.pos, shown.to_string())),
        Value::Map(entries) => {
            let get = |k: &str| entries.iter().find(|(key, _, _)| key == k);
            for (k, p, _) in entries.iter() {
                if !["values", "distribution", "min", "max"].contains(&k.as_str()) {
                    diags.push(Diagnostic::new(
                        *p,
                        format!("{shown}.{k}"),
                        format!("unknown key `{k}` (expected `values`, or `distribution` with `min` and `max`)"),
                    ));
                }
            }
            match (get("values"), get("distribution")) {
                (Some((_, _, v)), None) => match &v.value {
                    Value::Seq(items) => Some((items, v.pos, format!("{shown}.values"))),
                    _ => {
                        diags.push(Diagnostic::new(
                            v.pos,
                            format!("{shown}.values"),
                            format!("expected a list, got {}", v.kind()),
                        ));
                        return None;
                    }
                },
                (None, Some((_, _, d))) => {
                    return read_distribution(n, d, field, shown, random, diags)
                }
                (Some(_), Some((_, p, _))) => {
                    diags.push(Diagnostic::new(
                        *p,
                        shown,
                        "give either `values` or `distribution`, not both",
                    ));
                    return None;
                }
                (None, None) => {
                    diags.push(Diagnostic::new(
                        n.pos,
                        shown,
                        "expected `values: [...]` or `distribution: ...`",
                    ));
                    return None;
                }
            }
        }
        Value::Scalar(_) => {
            diags.push(Diagnostic::new(
                n.pos,
                shown,
                format!(
                    "expected a list of values, got {} (a fixed value belongs under `train`)",
                    n.kind()
                ),
            ));
            return None;
        }
    };
    let (items, pos, list_path) = list?;
    if items.is_empty() {
        diags.push(Diagnostic::new(
            pos,
            list_path,
            "empty axis: give at least one value",
        ));
        return None;
    }
    let mut values: Vec<(ParamValue, config::Origin)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{list_path}[{i}]");
        match ParamValue::from_node(item, field.kind, &path) {
            Ok(v) if values.iter().any(|(w, _)| *w == v) => {
                diags.push(Diagnostic::new(
                    item.pos,
                    path,
                    format!("value {v} is listed twice"),
                ));
            }
            Ok(v) => values.push((
                v,
                config::Origin {
                    pos: item.pos,
                    path,
                },
            )),
            Err(d) => diags.push(d),
        }
    }
    Some(Domain::Values(values))
}

fn read_distribution(
    n: &Node,
    d: &Node,
    field: &'static config::Field,
    shown: &str,
    random: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Domain> {
    let dist_path = format!("{shown}.distribution");
    let Value::Scalar(Scalar::Str(name)) = &d.value else {
        diags.push(Diagnostic::new(
            d.pos,
            dist_path,
            format!("expected a distribution name, got {}", d.kind()),
        ));
        return None;
    };
    if !random {
        diags.push(Diagnostic::new(
            d.pos,
            dist_path,
            "a distribution needs `method: random`; a grid sweep takes a list of values",
        ));
        return None;
    }
    let allowed: &[&str] = match field.kind {
        Kind::Float => &["uniform", "log_uniform"],
        Kind::Int => &["int_uniform"],
        _ => &[],
    };
    if !allowed.contains(&name.as_str()) {
        let msg = if allowed.is_empty() {
            format!(
                "`{}` takes a list of values, not a distribution",
                field.path
            )
        } else {
            format!(
                "unknown distribution `{name}` for `{}` (known: {})",
                field.path,
                allowed.join(", ")
            )
        };
        diags.push(Diagnostic::new(d.pos, dist_path, msg));
        return None;
    }
    let entries = n.as_map().unwrap_or(&[]);
    let bound = |key: &str, diags: &mut Vec<Diagnostic>| -> Option<(ParamValue, Pos)> {
        let path = format!("{shown}.{key}");
        match entries.iter().find(|(k, _, _)| k == key) {
            None => {
                diags.push(Diagnostic::new(
                    n.pos,
                    path,
                    format!("missing: `{name}` needs `{key}`"),
                ));
                None
            }
            Some((_, _, v)) => match ParamValue::from_node(v, field.kind, &path) {
                Ok(value) => Some((value, v.pos)),
                Err(e) => {
                    diags.push(e);
                    None
                }
            },
        }
    };
    let lo = bound("min", diags);
    let hi = bound("max", diags);
    let ((lo, lo_pos), (hi, _)) = (lo?, hi?);
    let origin = config::Origin {
        pos: lo_pos,
        path: format!("{shown}.min"),
    };
    match (lo, hi) {
        (ParamValue::Float(min), ParamValue::Float(max)) => {
            if !(min.is_finite() && max.is_finite() && min < max) {
                diags.push(Diagnostic::new(
                    lo_pos,
                    origin.path,
                    format!("needs min < max, got min {min}, max {max}"),
                ));
                return None;
            }
            if name == "log_uniform" {
                if min <= 0.0 {
                    diags.push(Diagnostic::new(
                        lo_pos,
                        origin.path,
                        format!("log_uniform needs min > 0, got {min}"),
                    ));
                    return None;
                }
                Some(Domain::LogUniform { min, max, origin })
            } else {
                Some(Domain::Uniform { min, max, origin })
            }
        }
        (ParamValue::Int(min), ParamValue::Int(max)) => {
            if min > max {
                diags.push(Diagnostic::new(
                    lo_pos,
                    origin.path,
                    format!("needs min <= max, got min {min}, max {max}"),
                ));
                return None;
            }
            Some(Domain::IntUniform { min, max, origin })
        }
        _ => None,
    }
}

/// Dataset directories named by trials (cifar10 or mnist with a `path`) that do not exist
/// here, each once. Trials without a path read the workers' cache, which they fill themselves.
pub fn missing_dataset_dirs(sweep: &Sweep) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in &sweep.trials {
        let d = &t.config.dataset;
        let needs: &[&str] = match d.name.as_str() {
            "cifar10" => &["data_batch_1.bin", "test_batch.bin"],
            "mnist" => &["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"],
            _ => continue,
        };
        if d.path.is_empty() {
            continue;
        }
        let dir = Path::new(&d.path);
        let problem = if !dir.is_dir() {
            Some(format!("dataset directory `{}` does not exist", d.path))
        } else {
            needs
                .iter()
                .find(|f| !dir.join(f).is_file() && !dir.join(format!("{f}.gz")).is_file())
                .map(|f| format!("dataset directory `{}` has no `{f}`", d.path))
        };
        if let Some(p) = problem {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}
