//! The "Findings" of `bnsweep report`: each claim of Santurkar et al. (2018, "How Does Batch
//! Normalization Help Optimization?") and of the blog study, checked on a sweep's results.
//! docs/findings.md states every rule; the constants below are its thresholds.
//!
//! Two steps. `summarize` reduces a trial's tables to a few numbers (`TrialSummary`); `findings`
//! decides each claim from those summaries alone, so every rule is tested on made-up summaries
//! that support it and on ones that refute it.
//!
//! Comparisons are made within a panel (trials with the same other parameters, the learning
//! rate included) between the variants no BN (`bn: false, noise: 0`), BN (`bn: true,
//! noise: 0`) and noisy BN (`bn: true, noise > 0`). A verdict compares the groups' means over
//! seeds, and says seed by seed (paired by seed) where the ordering holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::data::{texts, TrialInfo};
use super::svg::{esc, fmt_num};
use crate::results::columns::Table;
use crate::sweep::Sweep;
use crate::trial::Status;

/// A net "trains" when its final test accuracy reaches this: twice chance for 10 classes.
pub const TRAINS_FROM: f64 = 0.2;
/// The accuracy a diverged trial counts as: chance for 10 classes.
pub const CHANCE: f64 = 0.1;
/// (b): noisy BN trains "nearly as well" as BN when its mean accuracy is at most this much lower.
pub const NEARLY: f64 = 0.05;
/// (c): BN's ICS ℓ2 is "not lower" when it is at least (1 − this) times no BN's.
pub const ICS_L2_MARGIN: f64 = 0.1;
/// (c): BN's ICS cosine is "not lower shift" (not nearer 1) when at most this above no BN's.
pub const ICS_COS_MARGIN: f64 = 0.05;
/// Fewer seeds than this in a compared group is a caveat.
pub const MIN_SEEDS: usize = 3;
/// Fewer measured steps than this in a compared trial is a caveat.
pub const MIN_STEPS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Supported,
    Mixed,
    NotSupported,
    NotEnoughData,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Supported => "Supported",
            Verdict::Mixed => "Mixed",
            Verdict::NotSupported => "Not supported",
            Verdict::NotEnoughData => "Not enough data",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Mixed => "mixed",
            Verdict::NotSupported => "refuted",
            Verdict::NotEnoughData => "nodata",
        }
    }
}

/// Several verdicts (the parts of a claim, or its panels) as one: those without data left out,
/// Supported (or Not supported) when all the others are, Mixed otherwise.
pub fn combine(verdicts: &[Verdict]) -> Verdict {
    let decided: Vec<Verdict> = verdicts
        .iter()
        .copied()
        .filter(|v| *v != Verdict::NotEnoughData)
        .collect();
    if decided.is_empty() {
        Verdict::NotEnoughData
    } else if decided.iter().all(|v| *v == Verdict::Supported) {
        Verdict::Supported
    } else if decided.iter().all(|v| *v == Verdict::NotSupported) {
        Verdict::NotSupported
    } else {
        Verdict::Mixed
    }
}

/// A trial's layers table, reduced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerSummary {
    /// Measured steps.
    pub steps: usize,
    /// Median of `ics_l2` over measured steps and layers after the first (non-finite: +∞).
    pub ics_l2: Option<f64>,
    /// Median of the finite `ics_cos` over the same (null where undefined).
    pub ics_cos: Option<f64>,
    /// `weight_dist_rel` at the last step that has it, mean over layers (non-finite: +∞).
    pub weight_dist_rel: Option<f64>,
    /// Per normalised layer, the spread of its activations over training.
    pub act: Vec<LayerAct>,
}

/// How much a layer's activations (`post`: at the end of its block) moved over training: the
/// standard deviation over measured steps of their mean and of their standard deviation.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerAct {
    pub layer: usize,
    pub name: String,
    pub sd_mean: f64,
    pub sd_std: f64,
}

/// A trial's landscape table, reduced: medians over measured steps, a step whose summary is not
/// finite counting as +∞ (the roughest).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LandscapeSummary {
    pub steps: usize,
    /// Median of `loss_max − loss_min`.
    pub loss_range: f64,
    /// Median of `gradpred_max`.
    pub gradpred: f64,
    /// Median of `beta_smoothness`.
    pub beta: f64,
    /// Steps whose summary is not finite.
    pub nan_steps: usize,
    /// Steps with a non-finite probe (`nonfinite_probes` > 0); None where the column is absent.
    pub nonfinite_steps: Option<usize>,
}

/// One trial as the findings see it.
#[derive(Clone, Debug, Default)]
pub struct TrialSummary {
    /// The other parameters, the learning rate included ("lr = 0.5, ...").
    pub panel: String,
    /// The same without the learning rate.
    pub setting: String,
    pub lr: Option<f64>,
    pub bn: bool,
    pub noise: f64,
    pub seed: i64,
    /// As `trials.parquet` records it; None when it holds a status bnsweep does not write.
    pub status: Option<Status>,
    pub final_test_acc: Option<f64>,
    pub layers: Option<LayerSummary>,
    pub landscape: Option<LandscapeSummary>,
}

/// What the sweep file asks to measure, and how much of it is recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    pub ics: bool,
    pub landscape: bool,
    pub activations: bool,
    pub weights: bool,
    /// Trials of the sweep not yet in trials.parquet.
    pub unrecorded: usize,
}

impl Context {
    pub fn of(sweep: &Sweep, recorded: usize) -> Context {
        let m = sweep.measure.as_ref();
        Context {
            ics: m.is_some_and(|m| m.ics),
            landscape: m.is_some_and(|m| m.landscape.is_some()),
            activations: m.is_some_and(|m| m.activations.is_some()),
            weights: m.is_some_and(|m| m.weights),
            unrecorded: sweep.trials.len().saturating_sub(recorded),
        }
    }
}

/// Mean and seeds' spread of a group's per-trial values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        Some(Stat {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// "min – max", or the one value.
    pub fn spread(&self) -> String {
        if self.n == 1 {
            num(self.min)
        } else {
            format!("{} – {}", num(self.min), num(self.max))
        }
    }
}

/// A number of a finding: a group's mean over seeds and its spread.
#[derive(Clone, Debug, PartialEq)]
pub struct Number {
    pub panel: String,
    pub quantity: String,
    pub variant: String,
    pub stat: Stat,
}

/// A claim and what the sweep says about it.
#[derive(Clone, Debug)]
pub struct Finding {
    /// "a" ... "f".
    pub key: &'static str,
    pub claim: &'static str,
    pub verdict: Verdict,
    /// Per panel: its verdict and the comparison behind it.
    pub details: Vec<String>,
    pub numbers: Vec<Number>,
    pub caveats: Vec<String>,
    /// What the sweep would need for a verdict (or a firmer one).
    pub to_add: Vec<String>,
}

/// Numbers in the findings: short, ∞ for the roughest.
pub fn num(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "∞" } else { "−∞" }.into();
    }
    if x.is_nan() {
        return "NaN".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{x:.2e}")
    } else {
        fmt_num(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Summaries of a trial's tables.

/// A value where a non-finite one counts as the roughest.
fn rough(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        f64::INFINITY
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Sample standard deviation; +∞ when a value is not finite; None for fewer than two.
fn sd(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Some(f64::INFINITY);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    Some((v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub fn summarize(
    info: &TrialInfo,
    layers: Option<&Table>,
    landscape: Option<&Table>,
) -> TrialSummary {
    TrialSummary {
        panel: info.panel.clone(),
        setting: info.setting.clone(),
        lr: info.lr,
        bn: info.variant.bn,
        noise: info.variant.noise,
        seed: info.seed,
        status: info.status,
        final_test_acc: info.final_test_acc,
        layers: layers.map(layer_summary),
        landscape: landscape.map(landscape_summary),
    }
}

/// The layers whose block normalises (where BatchNorm goes with `bn: true`): the convs of a VGG;
/// of a net without convs (the MLP), every layer but the last.
fn normalised(names: &BTreeMap<usize, String>) -> Vec<usize> {
    if names.values().any(|n| n.starts_with("conv")) {
        names
            .iter()
            .filter(|(_, n)| n.starts_with("conv"))
            .map(|(&i, _)| i)
            .collect()
    } else {
        let last = names.keys().max().copied();
        names.keys().copied().filter(|&i| Some(i) != last).collect()
    }
}

pub fn layer_summary(t: &Table) -> LayerSummary {
    let (step, layer, name) = (t.f64s("step"), t.f64s("layer"), texts(t, "layer_name"));
    let (l2, cos, dist) = (
        t.f64s("ics_l2"),
        t.f64s("ics_cos"),
        t.f64s("weight_dist_rel"),
    );
    let (am, asd) = (t.f64s("act_post_mean"), t.f64s("act_post_std"));
    let rows = || (0..t.rows).filter_map(|i| Some((i, step[i]? as i64, layer[i]? as usize)));
    let steps: BTreeSet<i64> = rows().map(|(_, s, _)| s).collect();
    let later = || rows().filter(|&(_, _, l)| l >= 1);
    let ics_l2 = median(later().filter_map(|(i, _, _)| l2[i].map(rough)).collect());
    let ics_cos = median(
        later()
            .filter_map(|(i, _, _)| cos[i].filter(|c| c.is_finite()))
            .collect(),
    );
    let last = rows()
        .filter(|&(i, _, _)| dist[i].is_some())
        .map(|(_, s, _)| s)
        .max();
    let weight_dist_rel = last.and_then(|last| {
        mean(
            &rows()
                .filter(|&(_, s, _)| s == last)
                .filter_map(|(i, _, _)| dist[i].map(rough))
                .collect::<Vec<_>>(),
        )
    });
    let mut names = BTreeMap::new();
    for (i, _, l) in rows() {
        if let Some(n) = &name[i] {
            names.entry(l).or_insert_with(|| n.clone());
        }
    }
    let mut act = Vec::new();
    for l in normalised(&names) {
        // Per step (in step order) the layer's activation mean and std.
        let mut by_step: BTreeMap<i64, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for (i, s, li) in rows() {
            if li == l {
                by_step.insert(s, (am[i], asd[i]));
            }
        }
        let means: Vec<f64> = by_step.values().filter_map(|v| v.0).collect();
        let stds: Vec<f64> = by_step.values().filter_map(|v| v.1).collect();
        if let (Some(sd_mean), Some(sd_std)) = (sd(&means), sd(&stds)) {
            act.push(LayerAct {
                layer: l,
                name: names[&l].clone(),
                sd_mean,
                sd_std,
            });
        }
    }
    LayerSummary {
        steps: steps.len(),
        ics_l2,
        ics_cos,
        weight_dist_rel,
        act,
    }
}

pub fn landscape_summary(t: &Table) -> LandscapeSummary {
    let step = t.f64s("step");
    let (lo, hi) = (t.f64s("loss_min"), t.f64s("loss_max"));
    let (gp, beta) = (t.f64s("gradpred_max"), t.f64s("beta_smoothness"));
    let probes = t
        .col("nonfinite_probes")
        .map(|_| t.f64s("nonfinite_probes"));
    // Every row of a step carries the step's summary: take its first row.
    let mut first: BTreeMap<i64, usize> = BTreeMap::new();
    for (i, s) in step.iter().enumerate() {
        if let Some(s) = s {
            first.entry(*s as i64).or_insert(i);
        }
    }
    let value = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let mut ranges = Vec::new();
    let mut gps = Vec::new();
    let mut betas = Vec::new();
    let mut nan_steps = 0;
    for &i in first.values() {
        let r = value(hi[i]) - value(lo[i]);
        let (g, b) = (value(gp[i]), value(beta[i]));
        if !(r.is_finite() && g.is_finite() && b.is_finite()) {
            nan_steps += 1;
        }
        ranges.push(rough(r));
        gps.push(rough(g));
        betas.push(rough(b));
    }
    let nonfinite_steps = probes.map(|p| {
        first
            .values()
            .filter(|&&i| p[i].is_some_and(|n| n > 0.0))
            .count()
    });
    let m = |v| median(v).unwrap_or(f64::NAN);
    LandscapeSummary {
        steps: first.len(),
        loss_range: m(ranges),
        gradpred: m(gps),
        beta: m(betas),
        nan_steps,
        nonfinite_steps,
    }
}

// ---------------------------------------------------------------------------------------------
// The claims.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Group {
    NoBn,
    Bn,
    Noisy(f64),
}

impl Group {
    fn of(t: &TrialSummary) -> Option<Group> {
        match (t.bn, t.noise > 0.0) {
            (false, false) => Some(Group::NoBn),
            (true, false) => Some(Group::Bn),
            (true, true) => Some(Group::Noisy(t.noise)),
            (false, true) => None,
        }
    }

    fn label(self) -> String {
        match self {
            Group::NoBn => "no BN".into(),
            Group::Bn => "BN".into(),
            Group::Noisy(v) => format!("BN + noise {}", fmt_num(v)),
        }
    }
}

/// The groups present among `ts`: no BN, BN, then the noise levels.
fn groups(ts: &[&TrialSummary]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for t in ts {
        if let Some(g) = Group::of(t) {
            if !out.contains(&g) {
                out.push(g);
            }
        }
    }
    let key = |g: &Group| match g {
        Group::NoBn => (0, 0),
        Group::Bn => (1, 0),
        Group::Noisy(v) => (2, (v * 1e6) as i64),
    };
    out.sort_by_key(key);
    out
}

fn finished(t: &TrialSummary) -> bool {
    matches!(t.status, Some(Status::Completed | Status::Diverged))
}

/// A finished trial's accuracy for the claims: its final test accuracy, chance when it diverged
/// (or has none).
pub fn accuracy(t: &TrialSummary) -> Option<f64> {
    match t.status {
        Some(Status::Completed) => {
            Some(t.final_test_acc.filter(|a| a.is_finite()).unwrap_or(CHANCE))
        }
        Some(Status::Diverged) => Some(CHANCE),
        _ => None,
    }
}

/// Whether a finished trial trained: it completed with a test accuracy of at least
/// `TRAINS_FROM`.
pub fn trains(t: &TrialSummary) -> Option<bool> {
    accuracy(t).map(|a| t.status == Some(Status::Completed) && a >= TRAINS_FROM)
}

/// The trials in panel order.
fn by_key(
    trials: &[TrialSummary],
    key: impl Fn(&TrialSummary) -> &str,
) -> Vec<(String, Vec<&TrialSummary>)> {
    let mut out: Vec<(String, Vec<&TrialSummary>)> = Vec::new();
    for t in trials {
        match out.iter_mut().find(|(k, _)| k == key(t)) {
            Some((_, v)) => v.push(t),
            None => out.push((key(t).to_string(), vec![t])),
        }
    }
    out
}

fn in_group<'a>(ts: &[&'a TrialSummary], g: Group) -> Vec<&'a TrialSummary> {
    ts.iter()
        .copied()
        .filter(|t| Group::of(t) == Some(g))
        .collect()
}

/// One group's per-trial values, by seed.
struct Side {
    label: String,
    values: Vec<(i64, f64)>,
}

impl Side {
    fn of(ts: &[&TrialSummary], g: Group, value: &dyn Fn(&TrialSummary) -> Option<f64>) -> Side {
        Side {
            label: g.label(),
            values: in_group(ts, g)
                .into_iter()
                .filter_map(|t| Some((t.seed, value(t)?)))
                .collect(),
        }
    }

    fn plain(&self) -> Vec<f64> {
        self.values.iter().map(|v| v.1).collect()
    }
}

/// A part of a claim: `holds(a, b)` on the groups' means decides it; seed by seed, where both
/// groups have the seed, the ordering is counted. Supported when it holds on the means and for
/// every paired seed, Mixed when it holds on the means but not for every paired seed, Not
/// supported when it does not hold on the means.
fn compare(
    quantity: &str,
    a: &Side,
    b: &Side,
    claim: &str,
    holds: &dyn Fn(f64, f64) -> bool,
) -> (Verdict, String) {
    let (Some(sa), Some(sb)) = (Stat::of(&a.plain()), Stat::of(&b.plain())) else {
        let missing = if a.values.is_empty() {
            &a.label
        } else {
            &b.label
        };
        return (
            Verdict::NotEnoughData,
            format!("{quantity}: no values for {missing}"),
        );
    };
    let mut pairs = 0;
    let mut agree = 0;
    for (seed, x) in &a.values {
        if let Some((_, y)) = b.values.iter().find(|(s, _)| s == seed) {
            pairs += 1;
            agree += usize::from(holds(*x, *y));
        }
    }
    let on_means = holds(sa.mean, sb.mean);
    let verdict = if !on_means {
        Verdict::NotSupported
    } else if agree < pairs {
        Verdict::Mixed
    } else {
        Verdict::Supported
    };
    let seeds = if pairs == 0 {
        "no seed in both to pair".to_string()
    } else {
        format!("seed by seed in {agree} of {pairs}")
    };
    (
        verdict,
        format!(
            "{quantity}: {} {} vs {} {}; {claim}: {} on the means, {seeds}",
            a.label,
            num(sa.mean),
            b.label,
            num(sb.mean),
            if on_means { "holds" } else { "does not hold" }
        ),
    )
}

/// A finding being put together.
struct Draft {
    f: Finding,
    verdicts: Vec<Verdict>,
    /// Groups with few seeds: "lr = 0.5, BN (2)".
    thin: Vec<String>,
    /// Compared trials with few measured steps.
    short: BTreeSet<(String, i64, String)>,
}

impl Draft {
    fn new(key: &'static str, claim: &'static str) -> Draft {
        Draft {
            f: Finding {
                key,
                claim,
                verdict: Verdict::NotEnoughData,
                details: Vec::new(),
                numbers: Vec::new(),
                caveats: Vec::new(),
                to_add: Vec::new(),
            },
            verdicts: Vec::new(),
            thin: Vec::new(),
            short: BTreeSet::new(),
        }
    }

    fn add(&mut self, what: &str) {
        if !self.f.to_add.iter().any(|w| w == what) {
            self.f.to_add.push(what.to_string());
        }
    }

    fn caveat(&mut self, c: String) {
        if !self.f.caveats.contains(&c) {
            self.f.caveats.push(c);
        }
    }

    fn seeds(&mut self, panel: &str, side: &Side) {
        let n = side.values.len();
        if n > 0 && n < MIN_SEEDS {
            let s = format!("{}{} ({n})", with_comma(panel), side.label);
            if !self.thin.contains(&s) {
                self.thin.push(s);
            }
        }
    }

    fn number(&mut self, panel: &str, quantity: &str, variant: &str, values: &[f64]) {
        if let Some(stat) = Stat::of(values) {
            self.f.numbers.push(Number {
                panel: panel.into(),
                quantity: quantity.into(),
                variant: variant.into(),
                stat,
            });
        }
    }

    fn panel(&mut self, panel: &str, verdict: Verdict, parts: &[String]) {
        self.verdicts.push(verdict);
        let name = if panel.is_empty() {
            "all trials"
        } else {
            panel
        };
        self.f.details.push(format!(
            "{name}: {} — {}.",
            verdict.label(),
            parts.join("; ")
        ));
    }

    fn finish(mut self, trials: &[TrialSummary], ctx: &Context) -> Finding {
        self.f.verdict = combine(&self.verdicts);
        if !self.thin.is_empty() {
            let c = format!(
                "Fewer than {MIN_SEEDS} seeds in {}: the spread is thin; use at least {MIN_SEEDS} seeds (`seeds: [0, 1, 2]`).",
                self.thin.join(", ")
            );
            self.caveat(c);
        }
        if !self.short.is_empty() {
            let c = format!(
                "{} compared trial(s) have fewer than {MIN_STEPS} measured steps: measure more often (a smaller `measure.every`) or train longer.",
                self.short.len()
            );
            self.caveat(c);
        }
        let pending = trials
            .iter()
            .filter(|t| matches!(t.status, Some(Status::Running | Status::Queued)))
            .count()
            + ctx.unrecorded;
        if pending > 0 {
            self.caveat(format!(
                "{pending} trial(s) have not finished yet: the verdict may change."
            ));
        }
        let failed = trials
            .iter()
            .filter(|t| t.status == Some(Status::Failed))
            .count();
        if failed > 0 {
            self.caveat(format!(
                "{failed} failed trial(s) are left out (their `error` is in trials.parquet)."
            ));
        }
        if self.f.details.is_empty() && self.f.caveats.is_empty() && self.f.to_add.is_empty() {
            self.f
                .details
                .push("No panel has the trials this claim compares.".into());
        }
        self.f
    }
}

fn with_comma(panel: &str) -> String {
    if panel.is_empty() {
        String::new()
    } else {
        format!("{panel}, ")
    }
}

const ADD_NO_BN: &str = "add trials without BatchNorm: `bn: [true, false]`";
const ADD_BN: &str = "add trials with plain BatchNorm: `bn: true` with `noise: 0`";
const ADD_NOISE: &str = "add a noise level > 0 with `bn: true` (e.g. `noise: [0, 1]`)";
const ADD_LR: &str = "sweep `lr` over at least two values (e.g. `lr: [0.05, 0.5]`)";

/// Asks for the variants a BN-vs-no-BN claim needs that the sweep lacks.
fn need_bn_and_no_bn(d: &mut Draft, trials: &[TrialSummary]) {
    if !trials.iter().any(|t| Group::of(t) == Some(Group::NoBn)) {
        d.add(ADD_NO_BN);
    }
    if !trials.iter().any(|t| Group::of(t) == Some(Group::Bn)) {
        d.add(ADD_BN);
    }
}

/// All findings, in the order of the claims.
pub fn findings(trials: &[TrialSummary], ctx: &Context) -> Vec<Finding> {
    vec![
        claim_a(trials, ctx),
        claim_b(trials, ctx),
        claim_c(trials, ctx),
        claim_d(trials, ctx),
        claim_e(trials, ctx),
        claim_f(trials, ctx),
    ]
}

/// (a): at the largest learning rate where both BN and no-BN trials are swept, no BN does not
/// train (no seed trains) and BN does (every seed trains).
pub fn claim_a(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new(
        "a",
        "Without BatchNorm the net does not train at the higher learning rate; with BatchNorm it does.",
    );
    need_bn_and_no_bn(&mut d, trials);
    for (setting, ts) in by_key(trials, |t| &t.setting) {
        let lrs = rates_with_bn_and_no_bn(&ts);
        if lrs.len() < 2 {
            if !lrs.is_empty() {
                d.add(ADD_LR);
            }
            continue;
        }
        claim_a_numbers(&mut d, &setting, &ts, &lrs);
        claim_a_highest_rate(&mut d, &setting, &ts, &lrs);
    }
    d.finish(trials, ctx)
}

/// The trials of `ts` at learning rate `lr`.
fn at_rate<'a>(ts: &[&'a TrialSummary], lr: f64) -> Vec<&'a TrialSummary> {
    ts.iter().copied().filter(|t| t.lr == Some(lr)).collect()
}

/// The learning rates of `ts` that have both BN and no-BN trials, in increasing order.
fn rates_with_bn_and_no_bn(ts: &[&TrialSummary]) -> Vec<f64> {
    let mut lrs: Vec<f64> = ts.iter().filter_map(|t| t.lr).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    lrs.retain(|&lr| {
        let g = groups(&at_rate(ts, lr));
        g.contains(&Group::NoBn) && g.contains(&Group::Bn)
    });
    lrs
}

/// (a)'s numbers: at each learning rate, per group, whether each finished seed trains and its
/// final accuracy.
fn claim_a_numbers(d: &mut Draft, setting: &str, ts: &[&TrialSummary], lrs: &[f64]) {
    const TRAINS: &str = "trains (fraction of seeds)";
    const ACC: &str = "final test accuracy (diverged: 0.1)";
    for &lr in lrs {
        let here = at_rate(ts, lr);
        let panel = format!("{}lr = {}", with_comma(setting), fmt_num(lr));
        for g in groups(&here) {
            let done: Vec<&TrialSummary> = in_group(&here, g)
                .into_iter()
                .filter(|t| finished(t))
                .collect();
            let t: Vec<f64> = done
                .iter()
                .filter_map(|t| trains(t).map(|b| f64::from(u8::from(b))))
                .collect();
            let a: Vec<f64> = done.iter().filter_map(|t| accuracy(t)).collect();
            d.number(&panel, TRAINS, &g.label(), &t);
            d.number(&panel, ACC, &g.label(), &a);
        }
    }
}

/// (a)'s verdict for one setting, at the highest learning rate with both BN and no BN, with
/// what the lower rates say about it.
fn claim_a_highest_rate(d: &mut Draft, setting: &str, ts: &[&TrialSummary], lrs: &[f64]) {
    let high = lrs[lrs.len() - 1];
    let panel = format!("{}lr = {}", with_comma(setting), fmt_num(high));
    let here = at_rate(ts, high);
    let value = |t: &TrialSummary| trains(t).map(|b| f64::from(u8::from(b)));
    let (o, b) = (
        Side::of(&here, Group::NoBn, &value),
        Side::of(&here, Group::Bn, &value),
    );
    d.seeds(&panel, &o);
    d.seeds(&panel, &b);
    let (Some(so), Some(sb)) = (Stat::of(&o.plain()), Stat::of(&b.plain())) else {
        d.panel(
            &panel,
            Verdict::NotEnoughData,
            &["its BN and no-BN trials have not finished yet".into()],
        );
        return;
    };
    let verdict = if sb.mean <= so.mean {
        Verdict::NotSupported
    } else if so.mean == 0.0 && sb.mean == 1.0 {
        Verdict::Supported
    } else {
        Verdict::Mixed
    };
    let count = |s: &Side| s.values.iter().filter(|v| v.1 > 0.5).count();
    let paired: Vec<(f64, f64)> = b
        .values
        .iter()
        .filter_map(|(seed, x)| Some((*x, o.values.iter().find(|v| v.0 == *seed)?.1)))
        .collect();
    let agree = paired.iter().filter(|(x, y)| *x > 0.5 && *y < 0.5).count();
    let mut parts = vec![format!(
        "the highest learning rate with both: no BN trains in {} of {} seeds, BN in {} of {}; seed by seed BN trains and no BN does not in {agree} of {}",
        count(&o),
        o.values.len(),
        count(&b),
        b.values.len(),
        paired.len()
    )];
    // Where no BN trains at a lower rate, the failure is the learning rate's.
    let lower: Vec<&TrialSummary> = ts
        .iter()
        .copied()
        .filter(|t| t.lr.is_some_and(|lr| lr < high && lrs.contains(&lr)))
        .filter(|t| Group::of(t) == Some(Group::NoBn) && finished(t))
        .collect();
    if !lower.is_empty() {
        let ok = lower.iter().filter(|t| trains(t) == Some(true)).count();
        parts.push(format!(
            "at the lower learning rates no BN trains in {ok} of {} trials",
            lower.len()
        ));
        if ok == 0 {
            let at = if setting.is_empty() {
                String::new()
            } else {
                format!(" ({setting})")
            };
            d.caveat(format!(
                "Without BN the net trains at none of the learning rates swept{at}, the lowest ({}) included: its failure may not be the learning rate's; add a lower `lr`.",
                fmt_num(lrs[0])
            ));
        }
    }
    d.panel(&panel, verdict, &parts);
}

/// (b): in each panel with no BN, BN and noisy BN, for each noise level: noisy BN's mean accuracy
/// is at least BN's less `NEARLY`, and above no BN's.
pub fn claim_b(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new(
        "b",
        "BatchNorm with injected noise (noisy BN) trains nearly as well as BatchNorm, and better than no BatchNorm.",
    );
    need_bn_and_no_bn(&mut d, trials);
    if !trials
        .iter()
        .any(|t| matches!(Group::of(t), Some(Group::Noisy(_))))
    {
        d.add(ADD_NOISE);
    }
    const ACC: &str = "final test accuracy (diverged: 0.1)";
    for (panel, ts) in by_key(trials, |t| &t.panel) {
        let gs = groups(&ts);
        if !(gs.contains(&Group::NoBn) && gs.contains(&Group::Bn)) {
            continue;
        }
        let value = &accuracy;
        for &g in &gs {
            let s = Side::of(&ts, g, value);
            d.number(&panel, ACC, &s.label, &s.plain());
        }
        let (o, b) = (
            Side::of(&ts, Group::NoBn, value),
            Side::of(&ts, Group::Bn, value),
        );
        for g in gs.iter().filter(|g| matches!(g, Group::Noisy(_))) {
            let n = Side::of(&ts, *g, value);
            for s in [&o, &b, &n] {
                d.seeds(&panel, s);
            }
            let (v1, t1) = compare(
                "accuracy",
                &n,
                &b,
                &format!("at most {} below BN", fmt_num(NEARLY)),
                &|x, y| x >= y - NEARLY,
            );
            let (v2, t2) = compare("accuracy", &n, &o, "above no BN", &|x, y| x > y);
            d.panel(
                &format!("{}{}", with_comma(&panel), n.label),
                combine(&[v1, v2]),
                &[t1, t2],
            );
        }
    }
    d.finish(trials, ctx)
}

/// A quantity of a BN-vs-no-BN claim: `holds(bn, no_bn)` is the claim.
struct Quantity<'a> {
    name: &'a str,
    value: &'a dyn Fn(&TrialSummary) -> Option<f64>,
    claim: &'a str,
    holds: &'a dyn Fn(f64, f64) -> bool,
    steps: &'a dyn Fn(&TrialSummary) -> Option<usize>,
}

/// A claim on measured quantities, BN against no BN in each panel: each quantity a part
/// (`compare`), the panel's verdict their `combine`. Noisy BN's numbers are shown, not judged.
fn bn_vs_no_bn(
    d: &mut Draft,
    trials: &[TrialSummary],
    keep: &dyn Fn(&TrialSummary) -> bool,
    quantities: &[Quantity<'_>],
    extra: &dyn Fn(&[&TrialSummary]) -> Vec<String>,
) {
    for (panel, all) in by_key(trials, |t| &t.panel) {
        let ts: Vec<&TrialSummary> = all.iter().copied().filter(|t| keep(t)).collect();
        let mut verdicts = Vec::new();
        let mut parts = Vec::new();
        for q in quantities {
            for g in groups(&ts) {
                let s = Side::of(&ts, g, q.value);
                d.number(&panel, q.name, &s.label, &s.plain());
            }
            let (o, b) = (
                Side::of(&ts, Group::NoBn, q.value),
                Side::of(&ts, Group::Bn, q.value),
            );
            if o.values.is_empty() && b.values.is_empty() {
                parts.push(format!("{}: no values", q.name));
                continue;
            }
            d.seeds(&panel, &o);
            d.seeds(&panel, &b);
            for t in &ts {
                if matches!(Group::of(t), Some(Group::NoBn | Group::Bn)) && (q.value)(t).is_some() {
                    if let Some(n) = (q.steps)(t) {
                        if n < MIN_STEPS {
                            d.short.insert((t.panel.clone(), t.seed, t.bn.to_string()));
                        }
                    }
                }
            }
            let (v, mut text) = compare(q.name, &b, &o, q.claim, q.holds);
            if v == Verdict::NotEnoughData {
                // Why: how the group's trials stand.
                let g = if o.values.is_empty() {
                    Group::NoBn
                } else {
                    Group::Bn
                };
                let mut n: BTreeMap<&str, usize> = BTreeMap::new();
                for t in in_group(&all, g) {
                    *n.entry(t.status.map_or("unknown", Status::as_str))
                        .or_default() += 1;
                }
                let n: Vec<String> = n.iter().map(|(s, k)| format!("{k} {s}")).collect();
                let _ = write!(text, " (its trials: {})", n.join(", "));
            }
            verdicts.push(v);
            parts.push(text);
        }
        if verdicts.is_empty() {
            continue;
        }
        parts.extend(extra(&ts));
        d.panel(&panel, combine(&verdicts), &parts);
    }
}

fn nothing(_: &[&TrialSummary]) -> Vec<String> {
    Vec::new()
}

fn layer_steps(t: &TrialSummary) -> Option<usize> {
    t.layers.as_ref().map(|l| l.steps)
}

fn landscape_steps(t: &TrialSummary) -> Option<usize> {
    t.landscape.as_ref().map(|l| l.steps)
}

/// Says why a measured claim has nothing to compare: not measured, or not finished yet.
fn not_measured(d: &mut Draft, asked: bool, has: bool, what: &str) -> bool {
    if !asked && !has {
        d.add(&format!("add `measure: {{{what}}}` to the sweep file"));
        return true;
    }
    if !has {
        d.caveat(format!(
            "No trial with `{what}` measurements has finished yet."
        ));
        return true;
    }
    false
}

/// (c): in each panel, BN's gradient ICS is not lower than no BN's: ℓ2 at least (1 −
/// `ICS_L2_MARGIN`) times no BN's, cosine at most `ICS_COS_MARGIN` above no BN's.
pub fn claim_c(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new(
        "c",
        "Internal covariate shift, in its gradient view (ℓ2 difference and cosine), is not lower with BatchNorm.",
    );
    need_bn_and_no_bn(&mut d, trials);
    let has = trials
        .iter()
        .any(|t| t.layers.as_ref().is_some_and(|l| l.ics_l2.is_some()));
    if !not_measured(&mut d, ctx.ics, has, "ics: true") {
        let l2_claim = format!(
            "BN not lower (at least {} × no BN)",
            fmt_num(1.0 - ICS_L2_MARGIN)
        );
        let cos_claim = format!(
            "BN not nearer 1 (at most no BN + {})",
            fmt_num(ICS_COS_MARGIN)
        );
        let quantities = [
            Quantity {
                name: "ICS ℓ2 ‖G − G′‖ (median over steps and layers after the first)",
                value: &|t| t.layers.as_ref()?.ics_l2,
                claim: &l2_claim,
                holds: &|b, o| b >= (1.0 - ICS_L2_MARGIN) * o,
                steps: &layer_steps,
            },
            Quantity {
                name: "ICS cos(G, G′) (median; 1 is no shift)",
                value: &|t| t.layers.as_ref()?.ics_cos,
                claim: &cos_claim,
                holds: &|b, o| b <= o + ICS_COS_MARGIN,
                steps: &layer_steps,
            },
        ];
        bn_vs_no_bn(&mut d, trials, &finished, &quantities, &nothing);
    }
    d.finish(trials, ctx)
}

/// (d): in each panel, BN's loss range, gradient predictiveness and β-smoothness (medians over
/// measured steps, a non-finite step the roughest) are lower than no BN's.
pub fn claim_d(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new(
        "d",
        "With BatchNorm the loss varies less along the gradient, the gradient is more predictive, and the effective β-smoothness is lower.",
    );
    need_bn_and_no_bn(&mut d, trials);
    let has = trials.iter().any(|t| t.landscape.is_some());
    if !not_measured(&mut d, ctx.landscape, has, "landscape: true") {
        let quantities = [
            Quantity {
                name: "loss range max − min over η (median over steps)",
                value: &|t| Some(t.landscape.as_ref()?.loss_range),
                claim: "BN lower",
                holds: &|b, o| b < o,
                steps: &landscape_steps,
            },
            Quantity {
                name: "gradient change max over η ‖∇L(w − ηg) − ∇L(w)‖ (median)",
                value: &|t| Some(t.landscape.as_ref()?.gradpred),
                claim: "BN lower",
                holds: &|b, o| b < o,
                steps: &landscape_steps,
            },
            Quantity {
                name: "effective β-smoothness (median)",
                value: &|t| Some(t.landscape.as_ref()?.beta),
                claim: "BN lower",
                holds: &|b, o| b < o,
                steps: &landscape_steps,
            },
        ];
        let nonfinite = |ts: &[&TrialSummary]| -> Vec<String> {
            let mut out = Vec::new();
            for g in groups(ts) {
                let ls: Vec<&LandscapeSummary> = in_group(ts, g)
                    .iter()
                    .filter_map(|t| t.landscape.as_ref())
                    .collect();
                let steps: usize = ls.iter().map(|l| l.steps).sum();
                let nan: usize = ls.iter().map(|l| l.nan_steps).sum();
                let probes: Option<usize> =
                    ls.iter().map(|l| l.nonfinite_steps).sum::<Option<usize>>();
                let mut s = Vec::new();
                if nan > 0 {
                    s.push(format!(
                        "a non-finite summary at {nan} of {steps} steps (counted as +∞)"
                    ));
                }
                if let Some(p) = probes.filter(|&p| p > 0) {
                    s.push(format!("a non-finite probe at {p} of {steps} steps"));
                }
                if !s.is_empty() {
                    out.push(format!("{} has {}", g.label(), s.join(" and ")));
                }
            }
            out
        };
        bn_vs_no_bn(&mut d, trials, &finished, &quantities, &nonfinite);
    }
    d.finish(trials, ctx)
}

/// (e): in each panel, among completed trials, BN's relative distance from the initial weights
/// at the last measured step (mean over layers) is lower than no BN's.
pub fn claim_e(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new("e", "BatchNorm nets end closer to their initial weights.");
    need_bn_and_no_bn(&mut d, trials);
    let has = trials.iter().any(|t| {
        t.layers
            .as_ref()
            .is_some_and(|l| l.weight_dist_rel.is_some())
    });
    if !not_measured(&mut d, ctx.weights, has, "weights: true") {
        let quantities = [Quantity {
            name: "‖W − W(0)‖ / ‖W(0)‖ at the last measured step (mean over layers)",
            value: &|t| t.layers.as_ref()?.weight_dist_rel,
            claim: "BN lower",
            holds: &|b, o| b < o,
            steps: &layer_steps,
        }];
        bn_vs_no_bn(
            &mut d,
            trials,
            &|t| t.status == Some(Status::Completed),
            &quantities,
            &nothing,
        );
    }
    d.finish(trials, ctx)
}

/// (f): in each panel, the standard deviation over measured steps of a normalised layer's
/// activation mean and of its activation std (`post`, end of block; mean over those layers) is
/// lower with BN than without.
pub fn claim_f(trials: &[TrialSummary], ctx: &Context) -> Finding {
    let mut d = Draft::new(
        "f",
        "The distributional view (the blog, Part 1): with BatchNorm a layer's activation mean and spread stay more stable over training.",
    );
    need_bn_and_no_bn(&mut d, trials);
    let has = trials
        .iter()
        .any(|t| t.layers.as_ref().is_some_and(|l| !l.act.is_empty()));
    let any_layers = trials.iter().any(|t| t.layers.is_some());
    let once = ctx.activations && any_layers && !has;
    if once {
        d.add("measure at least twice per trial (a `measure.every` below the steps)");
    }
    if !once && !not_measured(&mut d, ctx.activations, has, "activations: true") {
        let avg = |f: fn(&LayerAct) -> f64| {
            move |t: &TrialSummary| {
                let l = t.layers.as_ref()?;
                mean(&l.act.iter().map(f).collect::<Vec<_>>())
            }
        };
        let (sd_mean, sd_std) = (avg(|a| a.sd_mean), avg(|a| a.sd_std));
        let quantities = [
            Quantity {
                name: "sd over steps of the activation mean (post; mean over normalised layers)",
                value: &sd_mean,
                claim: "BN lower",
                holds: &|b, o| b < o,
                steps: &layer_steps,
            },
            Quantity {
                name: "sd over steps of the activation std (post; mean over normalised layers)",
                value: &sd_std,
                claim: "BN lower",
                holds: &|b, o| b < o,
                steps: &layer_steps,
            },
        ];
        let by_layer = |ts: &[&TrialSummary]| -> Vec<String> {
            // Per layer, the groups' means: in how many layers BN is the steadier.
            let per = |g: Group, f: fn(&LayerAct) -> f64| -> BTreeMap<usize, f64> {
                let mut v: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
                for t in in_group(ts, g) {
                    for a in t.layers.iter().flat_map(|l| &l.act) {
                        v.entry(a.layer).or_default().push(f(a));
                    }
                }
                v.into_iter()
                    .filter_map(|(l, x)| Some((l, mean(&x)?)))
                    .collect()
            };
            let mut out = Vec::new();
            for (what, f) in [
                ("mean", (|a: &LayerAct| a.sd_mean) as fn(&LayerAct) -> f64),
                ("std", |a: &LayerAct| a.sd_std),
            ] {
                let (b, o) = (per(Group::Bn, f), per(Group::NoBn, f));
                let both: Vec<usize> = b.keys().filter(|l| o.contains_key(l)).copied().collect();
                if !both.is_empty() {
                    let lower = both.iter().filter(|l| b[l] < o[l]).count();
                    out.push(format!(
                        "layer by layer, BN's activation {what} is steadier in {lower} of {}",
                        both.len()
                    ));
                }
            }
            out
        };
        bn_vs_no_bn(&mut d, trials, &finished, &quantities, &by_layer);
    }
    d.finish(trials, ctx)
}

// ---------------------------------------------------------------------------------------------
// Rendering.

const INTRO: &str = "The claims of Santurkar et al. (2018), \"How Does Batch Normalization Help Optimization?\", and of the blog study, checked on this sweep. Each compares variants within one panel (the same other parameters); numbers are means over seeds with the seeds' min – max. The rules are in docs/findings.md.";

/// The findings as an HTML section (text escaped, no scripts).
pub fn html(fs: &[Finding]) -> String {
    let mut out = format!("<h2>Findings</h2><p>{}</p>", esc(INTRO));
    for f in fs {
        let _ = write!(
            out,
            "<div class=\"finding\" id=\"finding-{k}\"><h3>({k}) {claim} <span class=\"verdict {c}\">{v}</span></h3><ul>",
            k = f.key,
            claim = esc(f.claim),
            c = f.verdict.class(),
            v = f.verdict.label()
        );
        for line in &f.details {
            let _ = write!(out, "<li>{}</li>", esc(line));
        }
        out.push_str("</ul>");
        if !f.numbers.is_empty() {
            // Folded (no script: the browser's own details element), so that the verdicts of
            // every claim fit above the figures.
            out.push_str("<details><summary>The numbers behind it</summary>");
            out.push_str("<table class=\"numbers\"><tr><th class=\"l\">parameters</th><th class=\"l\">quantity</th><th class=\"l\">variant</th><th>seeds</th><th>mean</th><th>min – max</th></tr>");
            for n in &f.numbers {
                let _ = write!(
                    out,
                    "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&n.panel),
                    esc(&n.quantity),
                    esc(&n.variant),
                    n.stat.n,
                    esc(&num(n.stat.mean)),
                    esc(&n.stat.spread())
                );
            }
            out.push_str("</table></details>");
        }
        for c in &f.caveats {
            let _ = write!(out, "<p class=\"caveat\">Caveat: {}</p>", esc(c));
        }
        for a in &f.to_add {
            let _ = write!(out, "<p class=\"add\">To decide it: {}.</p>", esc(a));
        }
        out.push_str("</div>");
    }
    out
}

/// The findings as Markdown (`bnsweep report --markdown`).
pub fn markdown(fs: &[Finding]) -> String {
    let cell = |s: &str| s.replace('|', "/");
    let mut out = format!("## Findings\n\n{INTRO}\n");
    for f in fs {
        let _ = write!(
            out,
            "\n### ({}) {} — **{}**\n\n",
            f.key,
            f.claim,
            f.verdict.label()
        );
        for line in &f.details {
            let _ = writeln!(out, "- {line}");
        }
        for c in &f.caveats {
            let _ = writeln!(out, "- Caveat: {c}");
        }
        for a in &f.to_add {
            let _ = writeln!(out, "- To decide it: {a}.");
        }
        if !f.numbers.is_empty() {
            out.push_str(
                "\n| parameters | quantity | variant | seeds | mean | min – max |\n|---|---|---|---|---|---|\n",
            );
            for n in &f.numbers {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    cell(&n.panel),
                    cell(&n.quantity),
                    cell(&n.variant),
                    n.stat.n,
                    num(n.stat.mean),
                    n.stat.spread()
                );
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::columns::Column;

    const ALL: Context = Context {
        ics: true,
        landscape: true,
        activations: true,
        weights: true,
        unrecorded: 0,
    };

    fn trial(lr: f64, bn: bool, noise: f64, seed: i64, status: &str, acc: f64) -> TrialSummary {
        TrialSummary {
            panel: format!("lr = {}", fmt_num(lr)),
            setting: String::new(),
            lr: Some(lr),
            bn,
            noise,
            seed,
            status: Status::parse(status),
            final_test_acc: Some(acc),
            layers: None,
            landscape: None,
        }
    }

    /// Three seeds of a variant at a learning rate, all with the same status and accuracy.
    fn seeds(lr: f64, bn: bool, noise: f64, status: &str, acc: f64) -> Vec<TrialSummary> {
        (0..3)
            .map(|s| trial(lr, bn, noise, s, status, acc))
            .collect()
    }

    #[test]
    fn verdicts_combine_leaving_out_parts_without_data() {
        use Verdict::*;
        assert_eq!(combine(&[Supported, NotEnoughData, Supported]), Supported);
        assert_eq!(combine(&[NotSupported, NotSupported]), NotSupported);
        assert_eq!(combine(&[Supported, NotSupported]), Mixed);
        assert_eq!(combine(&[Mixed]), Mixed);
        assert_eq!(combine(&[NotEnoughData]), NotEnoughData);
        assert_eq!(combine(&[]), NotEnoughData);
    }

    // (a)

    fn two_rates(no_bn_high: (&str, f64), bn_high: (&str, f64)) -> Vec<TrialSummary> {
        let mut t = seeds(0.05, false, 0.0, "completed", 0.7);
        t.extend(seeds(0.05, true, 0.0, "completed", 0.75));
        t.extend(seeds(0.5, false, 0.0, no_bn_high.0, no_bn_high.1));
        t.extend(seeds(0.5, true, 0.0, bn_high.0, bn_high.1));
        t
    }

    #[test]
    fn a_is_supported_when_only_bn_trains_at_the_higher_rate() {
        let f = claim_a(&two_rates(("diverged", 0.1), ("completed", 0.8)), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        assert!(f.details[0].starts_with("lr = 0.5: Supported — "), "{f:?}");
        assert!(f.details[0].contains("no BN trains in 0 of 3 seeds, BN in 3 of 3"));
        assert!(f.details[0].contains("does not in 3 of 3"));
        assert!(
            f.details[0].contains("no BN trains in 3 of 3 trials"),
            "lower rate"
        );
        assert!(f.caveats.is_empty() && f.to_add.is_empty(), "{f:?}");
        // A net that completes near chance does not train either.
        let f = claim_a(&two_rates(("completed", 0.12), ("completed", 0.8)), &ALL);
        assert_eq!(f.verdict, Verdict::Supported);
        // The numbers: trained fraction and accuracy per rate and variant.
        let n = f
            .numbers
            .iter()
            .find(|n| {
                n.panel == "lr = 0.5" && n.variant == "no BN" && n.quantity.starts_with("final")
            })
            .unwrap();
        assert_eq!((n.stat.n, n.stat.mean), (3, 0.12));
    }

    #[test]
    fn a_is_refuted_when_no_bn_trains_at_the_higher_rate_or_bn_does_not() {
        let f = claim_a(&two_rates(("completed", 0.6), ("completed", 0.8)), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        // The wrong way round: BN fails, no BN trains.
        let f = claim_a(&two_rates(("completed", 0.6), ("diverged", 0.1)), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        // Neither trains.
        let f = claim_a(&two_rates(("diverged", 0.1), ("diverged", 0.1)), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
    }

    #[test]
    fn a_is_mixed_when_one_seed_of_no_bn_trains() {
        let mut t = two_rates(("diverged", 0.1), ("completed", 0.8));
        let one = t
            .iter_mut()
            .find(|t| t.lr == Some(0.5) && !t.bn && t.seed == 1)
            .unwrap();
        one.status = Some(Status::Completed);
        one.final_test_acc = Some(0.5);
        let f = claim_a(&t, &ALL);
        assert_eq!(f.verdict, Verdict::Mixed, "{f:?}");
        assert!(f.details[0].contains("does not in 2 of 3"), "{f:?}");
    }

    #[test]
    fn a_asks_for_two_rates_and_both_variants_and_warns_when_no_bn_never_trains() {
        let mut t = seeds(0.5, false, 0.0, "diverged", 0.1);
        t.extend(seeds(0.5, true, 0.0, "completed", 0.8));
        let f = claim_a(&t, &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData);
        assert_eq!(f.to_add, [ADD_LR]);
        let f = claim_a(&seeds(0.5, true, 0.0, "completed", 0.8), &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData);
        assert!(f.to_add.contains(&ADD_NO_BN.to_string()), "{f:?}");
        // No BN at chance at the lower rate too: supported, with the caveat.
        let mut t = two_rates(("diverged", 0.1), ("completed", 0.8));
        for x in t.iter_mut().filter(|t| !t.bn) {
            x.final_test_acc = Some(0.1);
        }
        let f = claim_a(&t, &ALL);
        assert_eq!(f.verdict, Verdict::Supported);
        assert_eq!(
            f.caveats[0],
            "Without BN the net trains at none of the learning rates swept, the lowest (0.05) included: its failure may not be the learning rate's; add a lower `lr`."
        );
        // Still running at the higher rate: no verdict yet, and said so.
        let mut t = two_rates(("diverged", 0.1), ("running", 0.0));
        for x in t.iter_mut().filter(|t| t.status == Some(Status::Running)) {
            x.final_test_acc = None;
        }
        let f = claim_a(&t, &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData, "{f:?}");
        assert!(f
            .caveats
            .iter()
            .any(|c| c.contains("3 trial(s) have not finished")));
    }

    // (b)

    fn noisy(bn: f64, noisy: f64, no_bn: f64) -> Vec<TrialSummary> {
        let mut t = seeds(0.1, false, 0.0, "completed", no_bn);
        t.extend(seeds(0.1, true, 0.0, "completed", bn));
        t.extend(seeds(0.1, true, 1.0, "completed", noisy));
        t
    }

    #[test]
    fn b_is_supported_when_noisy_bn_is_near_bn_and_above_no_bn() {
        let f = claim_b(&noisy(0.80, 0.78, 0.60), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        assert!(f.details[0].starts_with("lr = 0.1, BN + noise 1: Supported — "));
        assert_eq!(f.numbers.len(), 3);
        // Diverged no BN counts at chance: noisy BN is above it.
        let mut t = noisy(0.80, 0.78, 0.60);
        for x in t.iter_mut().filter(|t| !t.bn) {
            x.status = Some(Status::Diverged);
            x.final_test_acc = Some(0.9);
        }
        assert_eq!(claim_b(&t, &ALL).verdict, Verdict::Supported);
    }

    #[test]
    fn b_is_refuted_when_noisy_bn_trains_worse_than_both() {
        let f = claim_b(&noisy(0.80, 0.55, 0.60), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        // Above no BN, but far below BN: half the claim.
        let f = claim_b(&noisy(0.80, 0.70, 0.60), &ALL);
        assert_eq!(f.verdict, Verdict::Mixed, "{f:?}");
        // Near BN but not above no BN.
        let f = claim_b(&noisy(0.80, 0.78, 0.79), &ALL);
        assert_eq!(f.verdict, Verdict::Mixed, "{f:?}");
    }

    #[test]
    fn b_is_mixed_when_the_means_hold_but_a_seed_does_not() {
        let mut t = noisy(0.80, 0.78, 0.60);
        // Seed 2 of noisy BN below no BN's seed 2; the mean stays above.
        t.iter_mut()
            .find(|t| t.noise > 0.0 && t.seed == 2)
            .unwrap()
            .final_test_acc = Some(0.59);
        t.iter_mut()
            .find(|t| t.noise > 0.0 && t.seed == 0)
            .unwrap()
            .final_test_acc = Some(0.95);
        let f = claim_b(&t, &ALL);
        assert_eq!(f.verdict, Verdict::Mixed, "{f:?}");
        assert!(f.details[0].contains("seed by seed in 2 of 3"), "{f:?}");
    }

    #[test]
    fn b_asks_for_noise_and_warns_of_few_seeds() {
        let mut t = seeds(0.1, false, 0.0, "completed", 0.6);
        t.extend(seeds(0.1, true, 0.0, "completed", 0.8));
        let f = claim_b(&t, &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData);
        assert_eq!(f.to_add, [ADD_NOISE]);
        let t: Vec<TrialSummary> = noisy(0.8, 0.78, 0.6)
            .into_iter()
            .filter(|t| t.seed < 2)
            .collect();
        let f = claim_b(&t, &ALL);
        assert_eq!(f.verdict, Verdict::Supported);
        assert!(
            f.caveats[0].starts_with("Fewer than 3 seeds in lr = 0.1, no BN (2), lr = 0.1, BN (2)"),
            "{f:?}"
        );
    }

    // (c)

    fn with_layers(mut t: TrialSummary, l2: f64, cos: Option<f64>) -> TrialSummary {
        t.layers = Some(LayerSummary {
            steps: 10,
            ics_l2: Some(l2),
            ics_cos: cos,
            ..Default::default()
        });
        t
    }

    /// Completed BN and no-BN seeds at lr 0.1, given their measurements by `with`.
    fn bn_and_no_bn<T>(
        bn: T,
        no_bn: T,
        with: impl Fn(TrialSummary, &T) -> TrialSummary,
    ) -> Vec<TrialSummary> {
        let mut t: Vec<TrialSummary> = seeds(0.1, true, 0.0, "completed", 0.8)
            .into_iter()
            .map(|t| with(t, &bn))
            .collect();
        t.extend(
            seeds(0.1, false, 0.0, "completed", 0.6)
                .into_iter()
                .map(|t| with(t, &no_bn)),
        );
        t
    }

    fn ics(bn: (f64, Option<f64>), no_bn: (f64, Option<f64>)) -> Vec<TrialSummary> {
        bn_and_no_bn(bn, no_bn, |t, v| with_layers(t, v.0, v.1))
    }

    #[test]
    fn c_is_supported_when_bn_does_not_lower_ics() {
        let f = claim_c(&ics((2.0, Some(0.5)), (1.0, Some(0.9))), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        // Within the margins counts as not lower.
        let f = claim_c(&ics((0.95, Some(0.93)), (1.0, Some(0.9))), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        // Without a cosine anywhere, ℓ2 alone decides.
        let f = claim_c(&ics((2.0, None), (1.0, None)), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        assert!(
            f.details[0].contains("cos(G, G′) (median; 1 is no shift): no values"),
            "said: {f:?}"
        );
    }

    #[test]
    fn c_is_refuted_when_bn_lowers_ics() {
        let f = claim_c(&ics((0.5, Some(0.99)), (1.0, Some(0.5))), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        let f = claim_c(&ics((0.5, Some(0.5)), (1.0, Some(0.9))), &ALL);
        assert_eq!(f.verdict, Verdict::Mixed, "{f:?}");
    }

    #[test]
    fn c_asks_for_ics_measurements() {
        let t = noisy(0.8, 0.78, 0.6);
        let f = claim_c(&t, &Context::default());
        assert_eq!(f.verdict, Verdict::NotEnoughData);
        assert_eq!(f.to_add, ["add `measure: {ics: true}` to the sweep file"]);
        // Asked for, not there yet.
        let f = claim_c(&t, &ALL);
        assert!(
            f.to_add.is_empty() && f.caveats[0].contains("finished yet"),
            "{f:?}"
        );
    }

    // (d)

    fn with_landscape(mut t: TrialSummary, v: f64) -> TrialSummary {
        t.landscape = Some(LandscapeSummary {
            steps: 10,
            loss_range: v,
            gradpred: 2.0 * v,
            beta: 10.0 * v,
            ..Default::default()
        });
        t
    }

    fn rough_runs(bn: f64, no_bn: f64) -> Vec<TrialSummary> {
        bn_and_no_bn(bn, no_bn, |t, v| with_landscape(t, *v))
    }

    #[test]
    fn d_is_supported_when_bn_is_smoother_and_refuted_when_rougher() {
        let f = claim_d(&rough_runs(0.1, 1.0), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        assert_eq!(f.numbers.len(), 6);
        let f = claim_d(&rough_runs(1.0, 0.1), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        // One quantity the other way: mixed.
        let mut t = rough_runs(0.1, 1.0);
        for x in t.iter_mut().filter(|t| t.bn) {
            x.landscape.as_mut().unwrap().beta = 100.0;
        }
        assert_eq!(claim_d(&t, &ALL).verdict, Verdict::Mixed);
        // No BN's roughest (a non-finite median) is beaten by any finite BN value.
        let f = claim_d(&rough_runs(0.1, f64::INFINITY), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        let f = claim_d(&rough_runs(f64::INFINITY, 1.0), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
    }

    #[test]
    fn d_asks_for_the_landscape_and_warns_of_few_steps() {
        let f = claim_d(&noisy(0.8, 0.78, 0.6), &Context::default());
        assert_eq!(
            f.to_add,
            ["add `measure: {landscape: true}` to the sweep file"]
        );
        let mut t = rough_runs(0.1, 1.0);
        t[0].landscape.as_mut().unwrap().steps = 2;
        let f = claim_d(&t, &ALL);
        assert!(
            f.caveats[0].starts_with("1 compared trial(s) have fewer than 5 measured steps"),
            "{f:?}"
        );
    }

    fn landscape_table(summaries: &[(i64, f64, f64, f64, f64)], probes: Option<&[i64]>) -> Table {
        // Two rows (etas) per step, the step's summary on both.
        let rows: Vec<&(i64, f64, f64, f64, f64)> = summaries.iter().flat_map(|s| [s, s]).collect();
        let f = |k: fn(&(i64, f64, f64, f64, f64)) -> f64| {
            Column::F64(rows.iter().map(|r| Some(k(r))).collect())
        };
        let mut cols = vec![
            (
                "step",
                Column::I64(rows.iter().map(|r| Some(r.0)).collect()),
            ),
            ("loss_min", f(|r| r.1)),
            ("loss_max", f(|r| r.2)),
            ("gradpred_max", f(|r| r.3)),
            ("beta_smoothness", f(|r| r.4)),
        ];
        if let Some(p) = probes {
            cols.push((
                "nonfinite_probes",
                Column::I64(p.iter().flat_map(|&n| [Some(n), Some(n)]).collect()),
            ));
        }
        Table::from_columns(cols)
    }

    #[test]
    fn a_landscape_step_with_a_nan_counts_as_the_roughest_and_is_counted() {
        let nan = f64::NAN;
        let t = landscape_table(
            &[
                (10, 2.0, 2.5, 1.0, 3.0),
                (20, 1.0, 1.2, 2.0, 5.0),
                (30, nan, nan, nan, nan),
            ],
            None,
        );
        let s = landscape_summary(&t);
        assert_eq!((s.steps, s.nan_steps, s.nonfinite_steps), (3, 1, None));
        // Medians of [0.5, 0.2, ∞], [1, 2, ∞], [3, 5, ∞]: the NaN step pulls them up.
        assert_eq!((s.loss_range, s.gradpred, s.beta), (0.5, 2.0, 5.0));
        // Most steps non-finite: the median is +∞, not the finite rest.
        let t = landscape_table(
            &[
                (10, 2.0, 2.5, 1.0, 3.0),
                (20, nan, nan, nan, nan),
                (30, nan, nan, nan, nan),
            ],
            Some(&[0, 2, 1]),
        );
        let s = landscape_summary(&t);
        assert_eq!(s.beta, f64::INFINITY);
        assert_eq!(s.nonfinite_steps, Some(2));
        // A trial with NaNs is rougher than a finite one: not silently dropped.
        let mut runs = rough_runs(0.1, 1.0);
        for x in runs.iter_mut().filter(|t| t.bn) {
            x.landscape = Some(s.clone());
        }
        let f = claim_d(&runs, &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        assert!(
            f.details[0].contains("BN has a non-finite summary at 6 of 9 steps (counted as +∞) and a non-finite probe at 6 of 9 steps"),
            "{f:?}"
        );
    }

    // (e)

    fn distances(bn: f64, no_bn: f64) -> Vec<TrialSummary> {
        bn_and_no_bn(bn, no_bn, |mut t, d| {
            t.layers = Some(LayerSummary {
                steps: 10,
                weight_dist_rel: Some(*d),
                ..Default::default()
            });
            t
        })
    }

    #[test]
    fn e_is_supported_when_bn_ends_nearer_its_start_and_refuted_otherwise() {
        assert_eq!(
            claim_e(&distances(0.2, 0.5), &ALL).verdict,
            Verdict::Supported
        );
        assert_eq!(
            claim_e(&distances(0.5, 0.2), &ALL).verdict,
            Verdict::NotSupported
        );
        // Diverged trials are left out: only completed nets "end" somewhere.
        let mut t = distances(0.2, 0.5);
        for x in t.iter_mut().filter(|t| !t.bn) {
            x.status = Some(Status::Diverged);
        }
        let f = claim_e(&t, &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData, "{f:?}");
        assert_eq!(
            claim_e(&noisy(0.8, 0.78, 0.6), &Context::default()).to_add,
            ["add `measure: {weights: true}` to the sweep file"]
        );
    }

    // (f)

    fn activity(bn: f64, no_bn: f64) -> Vec<TrialSummary> {
        let with = |mut t: TrialSummary, v: f64| {
            t.layers = Some(LayerSummary {
                steps: 10,
                act: (0..2)
                    .map(|l| LayerAct {
                        layer: l,
                        name: format!("conv{l}"),
                        sd_mean: v,
                        sd_std: v / 2.0,
                    })
                    .collect(),
                ..Default::default()
            });
            t
        };
        let mut t = bn_and_no_bn(bn, no_bn, |t, v| with(t, *v));
        t.extend(
            seeds(0.1, true, 1.0, "completed", 0.78)
                .into_iter()
                .map(|t| with(t, 3.0 * no_bn)),
        );
        t
    }

    #[test]
    fn f_is_supported_when_bn_keeps_activations_steadier_and_refuted_otherwise() {
        let f = claim_f(&activity(0.01, 0.5), &ALL);
        assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
        assert!(f.details[0].contains("steadier in 2 of 2"), "{f:?}");
        // Noisy BN is shown, not judged.
        assert!(f.numbers.iter().any(|n| n.variant == "BN + noise 1"));
        let f = claim_f(&activity(0.5, 0.01), &ALL);
        assert_eq!(f.verdict, Verdict::NotSupported, "{f:?}");
        assert!(f.details[0].contains("steadier in 0 of 2"), "{f:?}");
        assert_eq!(
            claim_f(&noisy(0.8, 0.78, 0.6), &Context::default()).verdict,
            Verdict::NotEnoughData
        );
    }

    #[test]
    fn f_asks_for_two_measured_steps() {
        let mut t = activity(0.01, 0.5);
        for x in &mut t {
            x.layers.as_mut().unwrap().act.clear();
        }
        let f = claim_f(&t, &ALL);
        assert_eq!(f.verdict, Verdict::NotEnoughData);
        assert!(f.to_add[0].starts_with("measure at least twice"), "{f:?}");
        assert!(f.caveats.is_empty(), "{f:?}");
    }

    #[test]
    fn a_layers_table_is_summarized_without_the_first_layer_and_the_head() {
        // Two steps, layers conv0, conv1, fc0.
        let step = [10, 10, 10, 20, 20, 20];
        let layer = [0, 1, 2, 0, 1, 2];
        let f = |v: [Option<f64>; 6]| Column::F64(v.to_vec());
        let t = Table::from_columns(vec![
            ("step", Column::I64(step.iter().map(|&s| Some(s)).collect())),
            (
                "layer",
                Column::I64(layer.iter().map(|&s| Some(s)).collect()),
            ),
            (
                "layer_name",
                Column::Str(
                    ["conv0", "conv1", "fc0", "conv0", "conv1", "fc0"]
                        .iter()
                        .map(|s| Some(s.to_string()))
                        .collect(),
                ),
            ),
            // Layer 0 is 0 by definition and left out: median of 2, 4, 3, f64::NAN (+∞).
            (
                "ics_l2",
                f([
                    Some(0.0),
                    Some(2.0),
                    Some(4.0),
                    Some(0.0),
                    Some(3.0),
                    Some(f64::NAN),
                ]),
            ),
            (
                "ics_cos",
                f([Some(1.0), Some(0.5), None, Some(1.0), Some(0.7), Some(0.9)]),
            ),
            (
                "weight_dist_rel",
                f([
                    Some(0.1),
                    Some(0.2),
                    Some(0.3),
                    Some(0.4),
                    Some(0.5),
                    Some(0.6),
                ]),
            ),
            (
                "act_post_mean",
                f([
                    Some(1.0),
                    Some(0.0),
                    Some(5.0),
                    Some(3.0),
                    Some(0.0),
                    Some(9.0),
                ]),
            ),
            (
                "act_post_std",
                f([
                    Some(1.0),
                    Some(1.0),
                    Some(5.0),
                    Some(1.0),
                    Some(2.0),
                    Some(9.0),
                ]),
            ),
        ]);
        let s = layer_summary(&t);
        assert_eq!(s.steps, 2);
        assert_eq!(s.ics_l2, Some(3.5));
        assert_eq!(s.ics_cos, Some(0.7));
        assert!((s.weight_dist_rel.unwrap() - 0.5).abs() < 1e-12);
        let sq2 = std::f64::consts::SQRT_2;
        assert_eq!(
            s.act,
            [
                LayerAct {
                    layer: 0,
                    name: "conv0".into(),
                    sd_mean: sq2,
                    sd_std: 0.0
                },
                LayerAct {
                    layer: 1,
                    name: "conv1".into(),
                    sd_mean: 0.0,
                    sd_std: sq2 / 2.0
                }
            ]
        );
    }

    #[test]
    fn findings_render_escaped_in_html_and_as_markdown() {
        let mut f = claim_b(&noisy(0.80, 0.78, 0.60), &ALL);
        f.details.push("a <b> & \"c\" | d".into());
        let html = html(std::slice::from_ref(&f));
        assert!(html.contains("a &lt;b&gt; &amp; &quot;c&quot;"), "{html}");
        assert!(!html.contains("<script") && !html.contains("<b>"));
        assert!(html.contains("<span class=\"verdict supported\">Supported</span>"));
        let md = markdown(&[f]);
        assert!(md.starts_with("## Findings\n"), "{md}");
        assert!(md.contains("### (b) "), "{md}");
        assert!(md.contains("— **Supported**"), "{md}");
        assert!(
            md.contains(
                "| lr = 0.1 | final test accuracy (diverged: 0.1) | BN | 3 | 0.8 | 0.8 – 0.8 |"
            ),
            "{md}"
        );
    }
}
