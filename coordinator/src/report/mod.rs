//! `bnsweep report`: the paper's figures for a results directory, as one self-contained HTML
//! page (figures inline, no scripts, opens offline) and the same figures as SVG files.
//!
//! Trials are grouped by their other parameters (one panel per learning rate, and per any other
//! swept field) and, within a panel, by BatchNorm and noise (one line each); seeds are averaged,
//! their spread (min to max) shaded. Works on partial results: what is not there yet is said.

pub mod data;
pub mod findings;
pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use bnsweep_proto as pb;

use crate::error::{Error, Result};
use crate::results::columns::Table;
use crate::trial::Status;
use data::{texts, Results, TrialInfo, Variant};
use svg::{esc, Chart, Series, PALETTE};

/// One figure: its file name (without `.svg`), caption and drawing.
pub struct Figure {
    pub name: String,
    pub caption: String,
    pub svg: String,
}

pub struct Section {
    pub heading: String,
    pub intro: String,
    pub figures: Vec<Figure>,
}

pub struct Report {
    pub title: String,
    /// Where the sweep stands, and what is missing.
    pub status: Vec<String>,
    /// Final test accuracy: (panel, variant, cell text, mean, sd, seeds with a value).
    pub table: Vec<AccuracyRow>,
    /// The paper's claims, checked (docs/findings.md).
    pub findings: Vec<findings::Finding>,
    pub sections: Vec<Section>,
}

pub struct AccuracyRow {
    pub panel: String,
    pub variant: String,
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    pub seeds: usize,
    pub finished: usize,
    pub diverged: usize,
    pub failed: usize,
}

impl AccuracyRow {
    /// "mean ± sd", the mean alone for one seed, a dash for none.
    fn accuracy(&self) -> String {
        match (self.mean, self.sd) {
            (Some(m), Some(sd)) => format!("{m:.4} ± {sd:.4}"),
            (Some(m), None) => format!("{m:.4}"),
            _ => "—".into(),
        }
    }
}

/// The final test accuracy table as Markdown (`bnsweep report --markdown`).
pub fn accuracy_markdown(r: &Report) -> String {
    let mut out = String::from(
        "| parameters | variant | test accuracy (mean ± sd over seeds) | seeds finished | diverged | failed |\n|---|---|---|---|---|---|\n",
    );
    for row in &r.table {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} of {} | {} | {} |",
            row.panel.replace('|', "/"),
            row.variant,
            row.accuracy(),
            row.finished,
            row.seeds,
            row.diverged,
            row.failed
        );
    }
    out
}

/// `bnsweep report --markdown`: the findings, then the final accuracy table.
pub fn markdown(r: &Report) -> String {
    format!(
        "{}## Final test accuracy\n\n{}",
        findings::markdown(&r.findings),
        accuracy_markdown(r)
    )
}

/// The tables of one trial that the figures use.
struct TrialData {
    info: TrialInfo,
    train: Option<Table>,
    eval: Option<Table>,
    layers: Option<Table>,
    landscape: Option<Table>,
    activations: Option<Table>,
}

/// A line: (x, y) points.
type Line = Vec<(f64, f64)>;
/// A band: (x, low, high).
type Band = Vec<(f64, f64, f64)>;

/// Values per step of several seeds, averaged: the line (mean) and the band (min, max).
fn over_seeds(runs: &[Line]) -> (Line, Band) {
    let mut by_x: BTreeMap<i64, (f64, Vec<f64>)> = BTreeMap::new();
    for run in runs {
        for &(x, y) in run {
            by_x.entry((x * 1000.0).round() as i64)
                .or_insert((x, Vec::new()))
                .1
                .push(y);
        }
    }
    let mut line = Vec::new();
    let mut band = Vec::new();
    for (x, ys) in by_x.into_values() {
        let ok: Vec<f64> = ys.iter().copied().filter(|y| y.is_finite()).collect();
        if ok.is_empty() {
            line.push((x, f64::NAN));
            continue;
        }
        let mean = ok.iter().sum::<f64>() / ok.len() as f64;
        line.push((x, mean));
        if runs.len() > 1 {
            let lo = ok.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ok.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            band.push((x, lo, hi));
        }
    }
    (line, band)
}

/// Trailing moving average over `w` points; a non-finite value stays as it is.
fn smooth(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    let mut window: std::collections::VecDeque<f64> = Default::default();
    for &(x, y) in points {
        if !y.is_finite() {
            out.push((x, y));
            continue;
        }
        window.push_back(y);
        sum += y;
        if window.len() > w {
            sum -= window.pop_front().unwrap_or(0.0);
        }
        out.push((x, sum / window.len() as f64));
    }
    out
}

/// Pairs of two columns of a table, rows where `keep` holds.
fn xy(t: &Table, x: &str, y: &str, keep: impl Fn(usize) -> bool) -> Vec<(f64, f64)> {
    let (xs, ys) = (t.f64s(x), t.f64s(y));
    (0..t.rows)
        .filter(|&i| keep(i))
        .filter_map(|i| Some((xs[i]?, ys[i].unwrap_or(f64::NAN))))
        .collect()
}

fn mean_sd(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt());
    (Some(m), sd)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

pub fn build(results: &Results) -> Result<Report> {
    let trials = load_trials(results)?;
    let figures = Figures::of(results, &trials);
    let mut training = Vec::new();
    let mut landscape = Vec::new();
    let mut ics = Vec::new();
    let mut ridges = Vec::new();
    for p in &results.panels() {
        let title_p = if p.is_empty() {
            String::new()
        } else {
            format!(" — {p}")
        };
        training.extend(figures.training(p, &title_p));
        if figures.has(|t| t.landscape.is_some()) {
            landscape.extend(figures.landscape(p, &title_p));
        }
        if figures.has(|t| t.layers.is_some()) {
            ics.extend(figures.ics(p, &title_p));
        }
        if figures.has(|t| t.activations.is_some()) {
            ridges.extend(figures.ridges(p, &title_p));
        }
    }
    Ok(Report {
        title: format!("bnsweep report: {}", results.sweep.name),
        status: sweep_status(results, &trials),
        table: accuracy_table(results, &figures),
        findings: findings_of(results, &trials),
        sections: sections(training, landscape, ics, ridges),
    })
}

/// Every trial's tables (those that are there).
fn load_trials(results: &Results) -> Result<Vec<TrialData>> {
    results
        .trials
        .iter()
        .map(|info| {
            let table = |t| results.table(t, &info.id);
            Ok(TrialData {
                info: info.clone(),
                train: table(pb::Table::Train)?,
                eval: table(pb::Table::Eval)?,
                layers: table(pb::Table::Layers)?,
                landscape: table(pb::Table::Landscape)?,
                activations: table(pb::Table::Activations)?,
            })
        })
        .collect()
}

/// Where the sweep stands, and what is missing.
fn sweep_status(results: &Results, trials: &[TrialData]) -> Vec<String> {
    let total = results.sweep.trials.len();
    let count = |s: Status| {
        results
            .trials
            .iter()
            .filter(|t| t.status == Some(s))
            .count()
    };
    let (completed, diverged, failed) = (
        count(Status::Completed),
        count(Status::Diverged),
        count(Status::Failed),
    );
    let finished = completed + diverged + failed;
    let mut status = vec![format!(
        "{finished} of {total} trials finished: {completed} completed, {diverged} diverged, {failed} failed."
    )];
    if finished < total {
        status.push(format!(
            "Partial results: {} running, {} queued, {} not yet recorded. The figures show what has arrived; run `bnsweep report` again for more.",
            count(Status::Running),
            count(Status::Queued),
            total.saturating_sub(results.trials.len())
        ));
    }
    let measured = trials
        .iter()
        .any(|t| t.layers.is_some() || t.landscape.is_some() || t.activations.is_some());
    if finished > 0 && !measured {
        status.push(
            "No measurements (ICS, landscape, activations): the sweep file has no `measure:` section.".into(),
        );
    }
    status
}

/// Final test accuracy of each panel's variants: mean and spread over the completed seeds.
fn accuracy_table(results: &Results, figures: &Figures<'_>) -> Vec<AccuracyRow> {
    let mut table = Vec::new();
    for p in &results.panels() {
        for v in &figures.variants {
            let g = figures.group(p, v);
            if g.is_empty() {
                continue;
            }
            let accs: Vec<f64> = g
                .iter()
                .filter(|t| t.info.status == Some(Status::Completed))
                .filter_map(|t| t.info.final_test_acc)
                .collect();
            let (mean, sd) = mean_sd(&accs);
            let st = |s: Status| g.iter().filter(|t| t.info.status == Some(s)).count();
            table.push(AccuracyRow {
                panel: p.clone(),
                variant: v.label(),
                mean,
                sd,
                seeds: g.len(),
                finished: st(Status::Completed) + st(Status::Diverged) + st(Status::Failed),
                diverged: st(Status::Diverged),
                failed: st(Status::Failed),
            });
        }
    }
    table
}

/// The report's sections, those without figures left out (but Training).
fn sections(
    training: Vec<Figure>,
    landscape: Vec<Figure>,
    ics: Vec<Figure>,
    ridges: Vec<Figure>,
) -> Vec<Section> {
    let mut sections = vec![Section {
        heading: "Training".into(),
        intro: "Loss and accuracy for every learning rate, BatchNorm on and off, with and without injected noise.".into(),
        figures: training,
    }];
    if !landscape.is_empty() {
        sections.push(Section {
            heading: "Loss landscape".into(),
            intro: "Santurkar et al. argue BatchNorm helps by making the landscape smoother: the loss and its gradient change less along the gradient direction.".into(),
            figures: landscape,
        });
    }
    if !ics.is_empty() {
        sections.push(Section {
            heading: "Internal covariate shift".into(),
            intro: "The gradient view of ICS (docs/measurements.md): the change of a layer's gradient caused by updating the layers before it. Layers are named as in the results (`conv0` is `layer` 0) with the paper's 1-based number beside: conv4 (#5) is the paper's layer #5.".into(),
            figures: ics,
        });
    }
    if !ridges.is_empty() {
        sections.push(Section {
            heading: "Activation distributions".into(),
            intro: "Noisy BatchNorm keeps the activations' distribution moving, yet (the paper's point) trains as well as BatchNorm.".into(),
            figures: ridges,
        });
    }
    sections
}

/// What the figures draw from: the trials' tables, grouped by panel and variant (one line per
/// variant, its color fixed across the report).
struct Figures<'a> {
    trials: &'a [TrialData],
    variants: Vec<Variant>,
    /// The moving average of the training curves, in steps.
    window: usize,
}

impl<'a> Figures<'a> {
    fn of(results: &Results, trials: &'a [TrialData]) -> Figures<'a> {
        let steps = results
            .sweep
            .trials
            .iter()
            .map(|t| t.config.steps)
            .max()
            .unwrap_or(1);
        Figures {
            trials,
            variants: results.variants(),
            window: (steps as usize / 50).max(1),
        }
    }

    /// Whether any trial has what `f` looks for.
    fn has(&self, f: impl Fn(&TrialData) -> bool) -> bool {
        self.trials.iter().any(f)
    }

    fn color(&self, v: &Variant) -> String {
        let i = self.variants.iter().position(|x| x == v).unwrap_or(0);
        PALETTE[i % PALETTE.len()].to_string()
    }

    /// The trials (seeds) of one variant in one panel.
    fn group(&self, p: &str, v: &Variant) -> Vec<&'a TrialData> {
        self.trials
            .iter()
            .filter(|t| t.info.panel == p && &t.info.variant == v)
            .collect()
    }

    /// One line per variant: its seeds' runs (what `run` takes from a trial's tables, None
    /// when they are not there) averaged, their spread shaded.
    fn add_lines(&self, chart: &mut Chart, p: &str, run: &dyn Fn(&TrialData) -> Option<Line>) {
        for v in &self.variants {
            let runs: Vec<Line> = self.group(p, v).into_iter().filter_map(run).collect();
            if runs.is_empty() {
                continue;
            }
            let (points, band) = over_seeds(&runs);
            chart.series.push(Series {
                label: v.label(),
                color: self.color(v),
                points,
                band,
                dashed: v.noise > 0.0,
            });
        }
    }

    /// Training loss and accuracy (moving averages), and test accuracy.
    fn training(&self, p: &str, title_p: &str) -> Vec<Figure> {
        let window = self.window;
        let mut figures = Vec::new();
        for (col, what, y_label) in [
            ("loss", "Training loss", "cross-entropy (moving average)"),
            (
                "acc",
                "Training accuracy",
                "batch accuracy (moving average)",
            ),
        ] {
            let mut chart = Chart::new(&format!("{what}{title_p}"), "training step", y_label);
            if col == "loss" {
                // Twice the loss of a uniform guess over 10 classes: above, a run is lost.
                chart.y_max = Some(2.0 * 10f64.ln());
            }
            self.add_lines(&mut chart, p, &|t| {
                let train = t.train.as_ref()?;
                Some(smooth(&xy(train, "step", col, |_| true), window))
            });
            figures.push(Figure {
                name: slug(&format!("{col}-{p}")),
                caption: format!(
                    "{what}{title_p}: mean over seeds, shaded from the lowest to the highest seed; a moving average over {window} steps. A line that stops has diverged{}.",
                    if col == "loss" { "; losses above 4.6 (twice that of a uniform guess) are drawn at 4.6" } else { "" }
                ),
                svg: chart.render(),
            });
        }
        let mut chart = Chart::new(
            &format!("Test accuracy{title_p}"),
            "training step",
            "test accuracy",
        );
        self.add_lines(&mut chart, p, &|t| {
            Some(xy(t.eval.as_ref()?, "step", "test_acc", |_| true))
        });
        figures.push(Figure {
            name: slug(&format!("test-acc-{p}")),
            caption: format!("Test accuracy{title_p} at each evaluation, mean over seeds."),
            svg: chart.render(),
        });
        figures
    }

    /// The landscape's bands (one row per step and η; the ends are the same on every row of a
    /// step) and β-smoothness.
    fn landscape(&self, p: &str, title_p: &str) -> Vec<Figure> {
        let mut figures = Vec::new();
        for (lo, hi, what, y_label, log) in [
            (
                "loss_min",
                "loss_max",
                "Loss variation along the gradient",
                "loss L(w − η g)",
                false,
            ),
            (
                "gradpred_min",
                "gradpred_max",
                "Gradient predictiveness",
                "‖∇L(w − η g) − ∇L(w)‖",
                true,
            ),
        ] {
            let mut chart = Chart::new(&format!("{what}{title_p}"), "training step", y_label);
            chart.log_y = log;
            for v in &self.variants {
                let tables: Vec<&Table> = self
                    .group(p, v)
                    .iter()
                    .filter_map(|t| t.landscape.as_ref())
                    .collect();
                if tables.is_empty() {
                    continue;
                }
                let lows: Vec<_> = tables.iter().map(|t| xy(t, "step", lo, |_| true)).collect();
                let highs: Vec<_> = tables.iter().map(|t| xy(t, "step", hi, |_| true)).collect();
                let (low, _) = over_seeds(&lows);
                let (high, _) = over_seeds(&highs);
                let band = low
                    .iter()
                    .zip(&high)
                    .map(|(&(x, l), &(_, h))| (x, l, h))
                    .collect();
                chart.series.push(Series {
                    label: v.label(),
                    color: self.color(v),
                    points: Vec::new(),
                    band,
                    dashed: v.noise > 0.0,
                });
            }
            figures.push(Figure {
                name: slug(&format!("{lo}-{p}")),
                caption: format!("{what}{title_p}: at each measured step, the range over the step sizes η along the gradient (mean over seeds of its ends)."),
                svg: chart.render(),
            });
        }
        let mut chart = Chart::new(
            &format!("β-smoothness{title_p}"),
            "training step",
            "max over η of ‖Δ∇L‖ / ‖η g‖",
        );
        chart.log_y = true;
        self.add_lines(&mut chart, p, &|t| {
            Some(xy(t.landscape.as_ref()?, "step", "beta_smoothness", |_| {
                true
            }))
        });
        figures.push(Figure {
            name: slug(&format!("beta-{p}")),
            caption: format!(
                "Effective β-smoothness{title_p}: lower is smoother (mean over seeds)."
            ),
            svg: chart.render(),
        });
        figures
    }

    /// ICS per layer, for up to four layers spread over the depth.
    fn ics(&self, p: &str, title_p: &str) -> Vec<Figure> {
        let names = layer_names(self.trials.iter().filter_map(|t| t.layers.as_ref()));
        let mut figures = Vec::new();
        for (col, what) in [("ics_l2", "ICS ‖G − G′‖₂"), ("ics_cos", "ICS cos(G, G′)")]
        {
            for (layer, name) in spread(&names, 4) {
                let mut chart =
                    Chart::new(&format!("{what}, {name}{title_p}"), "training step", what);
                chart.width = 340.0;
                chart.height = 240.0;
                self.add_lines(&mut chart, p, &|t| {
                    let layers = t.layers.as_ref()?;
                    let l = layers.f64s("layer");
                    Some(xy(layers, "step", col, |i| l[i] == Some(layer as f64)))
                });
                figures.push(Figure {
                    name: slug(&format!("{col}-{name}-{p}")),
                    caption: format!("{what} of layer {name}{title_p}: how much the layer's gradient changes when the layers before it are updated (ℓ2: 0 is none; cosine: 1 is none)."),
                    svg: chart.render(),
                });
            }
        }
        figures
    }

    /// Activation histograms over training, one layer two thirds deep, per variant (its first
    /// seed).
    fn ridges(&self, p: &str, title_p: &str) -> Vec<Figure> {
        let names = layer_names(self.trials.iter().filter_map(|t| t.activations.as_ref()));
        let Some((layer, name)) = names.get(names.len() * 2 / 3).cloned() else {
            return Vec::new();
        };
        let mut figures = Vec::new();
        for v in &self.variants {
            let Some(t) = self
                .group(p, v)
                .into_iter()
                .find_map(|t| t.activations.as_ref())
            else {
                continue;
            };
            let rows = histograms(t, layer, "post", 8);
            figures.push(Figure {
                name: slug(&format!("activations-{name}-{}-{p}", v.label())),
                caption: format!("Activations at the end of block {name}, {}{title_p} (first seed): the histogram of one batch at each measured step, top to bottom.", v.label()),
                svg: svg::ridge(&format!("Activations, {name}, {}{title_p}", v.label()), "activation value", &rows, &self.color(v)),
            });
        }
        figures
    }
}

/// The findings from the trials' tables.
fn findings_of(results: &Results, trials: &[TrialData]) -> Vec<findings::Finding> {
    let summaries: Vec<findings::TrialSummary> = trials
        .iter()
        .map(|t| findings::summarize(&t.info, t.layers.as_ref(), t.landscape.as_ref()))
        .collect();
    let ctx = findings::Context::of(&results.sweep, results.trials.len());
    findings::findings(&summaries, &ctx)
}

/// The layers a table names, by index.
/// The layers the tables hold, by index (the `layer` column), each with its label: its name
/// and the paper's 1-based number, `conv4 (#5)` (docs/science.md, "Layer numbering").
fn layer_names<'a>(tables: impl Iterator<Item = &'a Table>) -> Vec<(usize, String)> {
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for t in tables {
        let (l, n) = (t.f64s("layer"), texts(t, "layer_name"));
        for i in 0..t.rows {
            if let (Some(l), Some(n)) = (l[i], &n[i]) {
                let layer = l as usize;
                names
                    .entry(layer)
                    .or_insert_with(|| format!("{n} (#{})", layer + 1));
            }
        }
    }
    names.into_iter().collect()
}

/// Up to `k` of the layers, spread from the first to the last.
fn spread(names: &[(usize, String)], k: usize) -> Vec<(usize, String)> {
    if names.len() <= k {
        return names.to_vec();
    }
    let mut out: Vec<(usize, String)> = (0..k)
        .map(|j| names[j * (names.len() - 1) / (k - 1)].clone())
        .collect();
    out.dedup();
    out
}

/// Density curves of a layer's histograms at up to `k` measured steps.
fn histograms(t: &Table, layer: usize, point: &str, k: usize) -> Vec<(String, Vec<(f64, f64)>)> {
    let (step, l, pt, lo, hi, count) = (
        t.f64s("step"),
        t.f64s("layer"),
        texts(t, "point"),
        t.f64s("lo"),
        t.f64s("hi"),
        t.f64s("count"),
    );
    let mut by_step: BTreeMap<i64, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for i in 0..t.rows {
        if l[i] != Some(layer as f64) || pt[i].as_deref() != Some(point) {
            continue;
        }
        if let (Some(s), Some(a), Some(b), Some(c)) = (step[i], lo[i], hi[i], count[i]) {
            by_step.entry(s as i64).or_default().push((a, b, c));
        }
    }
    let steps: Vec<i64> = by_step.keys().copied().collect();
    let chosen: Vec<i64> = if steps.len() <= k {
        steps
    } else {
        (0..k)
            .map(|j| steps[j * (steps.len() - 1) / (k - 1)])
            .collect()
    };
    chosen
        .into_iter()
        .map(|s| {
            let bins = &by_step[&s];
            let total: f64 = bins.iter().map(|b| b.2).sum::<f64>().max(1.0);
            let pts = bins
                .iter()
                .filter(|(a, b, _)| a.is_finite() && b.is_finite() && b > a)
                .map(|&(a, b, c)| ((a + b) / 2.0, c / total / (b - a)))
                .collect();
            (format!("{s}"), pts)
        })
        .collect()
}

/// The page: no scripts, no external files; figures inline.
pub fn html(r: &Report) -> String {
    page(r, None)
}

/// The live page: the sweep's progress on top, reloading itself every `reload`.
pub fn html_live(r: &Report, progress: &str, reload: std::time::Duration) -> String {
    page(r, Some((progress, reload)))
}

fn page(r: &Report, live: Option<(&str, std::time::Duration)>) -> String {
    let mut out = String::new();
    let refresh = live.map_or(String::new(), |(_, every)| {
        format!(
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            every.as_secs().max(1)
        )
    });
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
         th{{background:#f4f4f4}}td.l,th.l{{text-align:left}}.fig{{display:inline-block;vertical-align:top;margin:8px;max-width:540px}}\
         .fig p{{font-size:12px;color:#555;margin:2px 8px}}.status{{background:#f7f7e8;padding:8px 12px;border-left:4px solid #cc9}}\
         .diverged{{color:#b00}}.finding{{margin:1em 0 1.5em}}.finding h3{{font-size:1.05em}}\
         .verdict{{padding:1px 8px;border-radius:3px;font-size:.9em;margin-left:6px}}.supported{{background:#d9f2d9}}\
         .mixed{{background:#f7ecc8}}.refuted{{background:#f6d3d3}}.nodata{{background:#e6e6e6}}\
         .caveat,.add{{font-size:13px;color:#555;margin:4px 0}}table.numbers{{font-size:13px}}</style></head><body><h1>{t}</h1>",
        t = esc(&r.title)
    );
    if let Some((progress, _)) = live {
        let _ = write!(
            out,
            "<p class=\"status\" id=\"progress\"><b>Live:</b> {}</p>",
            esc(progress)
        );
    }
    let _ = write!(out, "<div class=\"status\" id=\"status\">");
    for line in &r.status {
        let _ = write!(out, "<p>{}</p>", esc(line));
    }
    out.push_str("</div>");
    out.push_str(&findings::html(&r.findings));
    out.push_str("<h2>Final test accuracy</h2><table id=\"accuracy\"><tr><th class=\"l\">parameters</th><th class=\"l\">variant</th><th>test accuracy (mean ± sd over seeds)</th><th>seeds finished</th><th>diverged</th><th>failed</th></tr>");
    for row in &r.table {
        let acc = row.accuracy();
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td data-mean=\"{}\">{acc}</td><td>{} of {}</td><td{}>{}</td><td>{}</td></tr>",
            esc(&row.panel),
            esc(&row.variant),
            row.mean.map(|m| format!("{m:.6}")).unwrap_or_default(),
            row.finished,
            row.seeds,
            if row.diverged > 0 { " class=\"diverged\"" } else { "" },
            row.diverged,
            row.failed
        );
    }
    out.push_str("</table>");
    for s in &r.sections {
        let _ = write!(out, "<h2>{}</h2><p>{}</p>", esc(&s.heading), esc(&s.intro));
        for f in &s.figures {
            let _ = write!(
                out,
                "<figure class=\"fig\" id=\"{}\">{}<p>{}</p></figure>",
                esc(&f.name),
                f.svg,
                esc(&f.caption)
            );
        }
    }
    let _ = write!(out, "<p style=\"color:#888;font-size:12px\">Written by bnsweep {}. Units: steps are optimizer steps; losses are mean cross-entropy (nats); accuracies are fractions in [0, 1].</p></body></html>", env!("CARGO_PKG_VERSION"));
    out
}

/// Writes the page to `out` and every figure to `figures/NAME.svg` beside it.
pub fn write(r: &Report, out: &Path) -> Result<PathBuf> {
    let figures = out.with_file_name(format!(
        "{}_figures",
        out.file_stem().and_then(|s| s.to_str()).unwrap_or("report")
    ));
    std::fs::create_dir_all(&figures).map_err(|e| Error::io(&figures, e))?;
    for s in &r.sections {
        for f in &s.figures {
            let p = figures.join(format!("{}.svg", f.name));
            crate::results::write_atomic(&p, f.svg.as_bytes())?;
        }
    }
    crate::results::write_atomic(out, html(r).as_bytes())?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::columns::Column;

    #[test]
    fn layers_keep_their_index_and_show_the_paper_s_number() {
        // Activations of layers 2 and 7 only (`layers: [2, 7]`).
        let t = Table::from_columns(vec![
            ("layer", Column::I64(vec![Some(7), Some(2), Some(7)])),
            (
                "layer_name",
                Column::Str(vec![
                    Some("conv7".into()),
                    Some("conv2".into()),
                    Some("conv7".into()),
                ]),
            ),
        ]);
        let names = layer_names([&t].into_iter());
        assert_eq!(
            names,
            [(2, "conv2 (#3)".to_string()), (7, "conv7 (#8)".to_string())]
        );
        assert_eq!(spread(&names, 4), names, "indices, not positions");
    }

    #[test]
    fn the_accuracy_table_prints_as_markdown() {
        let row = |panel: &str, mean, sd, diverged| AccuracyRow {
            panel: panel.into(),
            variant: "BN".into(),
            mean,
            sd,
            seeds: 2,
            finished: 2,
            diverged,
            failed: 0,
        };
        let r = Report {
            title: String::new(),
            status: Vec::new(),
            table: vec![
                row("precision=bf16", Some(0.5), Some(0.01), 0),
                row("a|b", None, None, 2),
            ],
            findings: Vec::new(),
            sections: Vec::new(),
        };
        let md = accuracy_markdown(&r);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert_eq!(
            lines[2],
            "| precision=bf16 | BN | 0.5000 ± 0.0100 | 2 of 2 | 0 | 0 |"
        );
        assert_eq!(lines[3], "| a/b | BN | — | 2 of 2 | 2 | 0 |");
    }

    /// A results directory written by the project's own writer, where BN trains at the high
    /// learning rate and no BN diverges (after non-finite landscape probes), noisy BN is near BN,
    /// BN shifts its gradients more, is smoother and steadier, but (so that a refuted claim is
    /// read back too) ends further from its initial weights.
    #[test]
    fn findings_are_read_from_a_results_directory() {
        use crate::results::ResultsDir;
        use crate::sweep::Sweep;
        use crate::trial::{Status, Summary, Tally, TrialRecord};
        use bnsweep_proto as pb;
        use findings::Verdict::*;

        let sweep = Sweep::parse(
            "f.yaml",
            "name: f\nseeds: [0, 1, 2]\nparameters:\n  lr: [0.05, 0.5]\n  bn: [true, false]\n  noise: [0.0, 1.0]\ntrain:\n  steps: 100\nmeasure:\n  every: 10\n  ics: true\n  landscape: true\n  activations: true\n  weights: true\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (out, _) = ResultsDir::open(dir.path(), &sweep).unwrap();
        let mut records = Vec::new();
        for trial in &sweep.trials {
            let c = &trial.config;
            let (bn, diverged) = (c.bn, !c.bn && c.lr > 0.1);
            let acc = match (bn, c.noise > 0.0, diverged) {
                (_, _, true) => 0.1,
                (true, false, _) => 0.8,
                (true, true, _) => 0.77,
                (false, _, _) => 0.6,
            };
            let record = TrialRecord {
                trial: trial.clone(),
                status: if diverged {
                    Status::Diverged
                } else {
                    Status::Completed
                },
                attempts: 1,
                handed_back: 0,
                summary: Summary {
                    final_test_acc: Some(acc),
                    ..Default::default()
                },
                last_step: 100,
                persisted: true,
            };
            // Its rows, sent as one batch: journaled, then written from the journal.
            let mut rows = pb::MetricsBatch {
                trial_id: trial.id.clone(),
                attempt: 1,
                ..Default::default()
            };
            rows.train.push(pb::TrainRow {
                step: 1,
                loss: 2.3,
                ..Default::default()
            });
            rows.eval.push(pb::EvalRow {
                step: 100,
                test_acc: acc,
                ..Default::default()
            });
            // A diverged trial is measured at its first 5 steps, the last two with NaN probes.
            for k in 0..if diverged { 5 } else { 10 } {
                let step = 10 * (k + 1);
                let wiggle = if k % 2 == 0 { 1.0 } else { -1.0 };
                let amp = if bn { 0.01 } else { 0.5 };
                let stats = |m: f64, sd: f64| {
                    Some(pb::ActivationStats {
                        mean: m,
                        std: sd,
                        quantiles: Vec::new(),
                    })
                };
                for (l, name) in ["conv0", "conv1", "fc0"].into_iter().enumerate() {
                    let first = l == 0;
                    rows.layers.push(pb::LayerRow {
                        step,
                        layer: l as u32,
                        layer_name: name.into(),
                        ics_l2: Some(if first {
                            0.0
                        } else if bn {
                            2.0
                        } else {
                            1.0
                        }),
                        ics_cos: Some(if first {
                            1.0
                        } else if bn {
                            0.5
                        } else {
                            0.9
                        }),
                        weight_dist_rel: Some(if bn { 0.5 } else { 0.2 }),
                        pre: stats(0.0, 1.0),
                        post: stats(amp * wiggle, 1.0 + amp * wiggle),
                        ..Default::default()
                    });
                }
                let nan = diverged && k >= 3;
                let v = |x: f64| if nan { f64::NAN } else { x };
                let r = if bn { 0.1 } else { 1.0 };
                for eta in [1.0, 2.0] {
                    rows.landscape.push(pb::LandscapeRow {
                        step,
                        eta,
                        loss: 2.0,
                        loss_min: v(2.0),
                        loss_max: v(2.0 + r),
                        gradpred_max: v(r),
                        beta_smoothness: v(10.0 * r),
                        nonfinite_probes: u32::from(nan),
                        ..Default::default()
                    });
                }
            }
            let journal = out.journal();
            let header = pb::JournalHeader {
                trial_id: trial.id.clone(),
                attempt: 1,
                ..Default::default()
            };
            journal.sync(journal.begin(&header).unwrap()).unwrap();
            journal.sync(journal.append(&rows).unwrap()).unwrap();
            let mut tally = Tally::default();
            tally.take(&rows);
            out.write_trial(&record, &tally).unwrap();
            journal.end(&trial.id, 1);
            records.push(record);
        }
        out.write_trials(&records).unwrap();

        let r = build(&Results::open(dir.path()).unwrap()).unwrap();
        let verdicts: Vec<(&str, findings::Verdict)> =
            r.findings.iter().map(|f| (f.key, f.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                ("a", Supported),
                ("b", Supported),
                ("c", Supported),
                ("d", Supported),
                ("e", NotSupported),
                ("f", Supported)
            ]
        );
        let f = |k: &str| r.findings.iter().find(|f| f.key == k).unwrap();
        assert_eq!(
            f("a").details,
            ["lr = 0.5: Supported — the highest learning rate with both: no BN trains in 0 of 3 seeds, BN in 3 of 3; seed by seed BN trains and no BN does not in 3 of 3; at the lower learning rates no BN trains in 3 of 3 trials."]
        );
        assert!(
            f("d").details[1].contains("no BN has a non-finite summary at 6 of 15 steps (counted as +∞) and a non-finite probe at 6 of 15 steps"),
            "{:?}",
            f("d").details
        );
        // (e): the panel where no BN diverged has no finished net to compare; the other
        // refutes it.
        assert!(f("e").details[0].starts_with("lr = 0.05: Not supported — "));
        assert!(
            f("e").details[1].ends_with("no values for no BN (its trials: 3 diverged)."),
            "{:?}",
            f("e").details
        );
        assert!(r
            .findings
            .iter()
            .all(|f| f.caveats.is_empty() && f.to_add.is_empty()));
        // On the page above the accuracy table, and first in the Markdown.
        let page = html(&r);
        let (findings_at, table_at) = (
            page.find("<h2>Findings</h2>").unwrap(),
            page.find("<h2>Final test accuracy</h2>").unwrap(),
        );
        assert!(findings_at < table_at);
        assert!(page.contains("id=\"finding-e\"><h3>(e) BatchNorm nets end closer to their initial weights. <span class=\"verdict refuted\">Not supported</span>"));
        let md = markdown(&r);
        assert!(md.starts_with("## Findings"), "{md}");
        assert!(md.contains("### (d) ") && md.contains("| parameters | variant | test accuracy"));
        assert!(md.find("### (f)").unwrap() < md.find("## Final test accuracy").unwrap());
    }

    #[test]
    fn seeds_are_averaged_with_their_spread_and_nan_only_where_all_diverged() {
        let runs = vec![
            vec![(1.0, 1.0), (2.0, 3.0), (3.0, f64::NAN)],
            vec![(1.0, 3.0), (2.0, 5.0), (3.0, f64::NAN)],
        ];
        let (line, band) = over_seeds(&runs);
        assert_eq!(line[..2], [(1.0, 2.0), (2.0, 4.0)]);
        assert!(line[2].1.is_nan());
        assert_eq!(band, [(1.0, 1.0, 3.0), (2.0, 3.0, 5.0)]);
        assert_eq!(
            smooth(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)], 2),
            [(1.0, 2.0), (2.0, 3.0), (3.0, 5.0)]
        );
    }
}
