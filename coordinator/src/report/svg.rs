//! Line charts as standalone SVG: axes with "nice" ticks and labels, a legend, lines with an
//! optional shaded band (the spread over seeds), linear or logarithmic y. Non-finite points
//! break a line instead of bending it.

use std::fmt::Write;

/// Colours that stay apart for up to eight lines (and in grey print).
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub label: String,
    pub color: String,
    /// (x, y); a non-finite y breaks the line.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high): shaded behind the line.
    pub band: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub log_y: bool,
    /// Values above are drawn at this level (a diverging run would flatten the rest).
    pub y_max: Option<f64>,
    pub width: f64,
    pub height: f64,
}

const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

impl Chart {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            log_y: false,
            y_max: None,
            width: 520.0,
            height: 320.0,
        }
    }

    fn ty(&self, y: f64) -> f64 {
        let y = match self.y_max {
            Some(cap) => y.min(cap),
            None => y,
        };
        if self.log_y {
            y.max(f64::MIN_POSITIVE).log10()
        } else {
            y
        }
    }

    /// The data range in plot units (x, then y transformed), or None without finite points.
    fn range(&self) -> Option<(f64, f64, f64, f64)> {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for s in &self.series {
            for &(x, y) in &s.points {
                if x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0) {
                    xs.push(x);
                    ys.push(self.ty(y));
                }
            }
            for &(x, lo, hi) in &s.band {
                for y in [lo, hi] {
                    if x.is_finite() && y.is_finite() && (!self.log_y || y > 0.0) {
                        xs.push(x);
                        ys.push(self.ty(y));
                    }
                }
            }
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if xs.is_empty() {
            return None;
        }
        let (mut x0, mut x1, mut y0, mut y1) = (min(&xs), max(&xs), min(&ys), max(&ys));
        if x1 <= x0 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        if y1 <= y0 {
            let pad = if y0 == 0.0 { 0.5 } else { y0.abs() * 0.1 };
            y0 -= pad;
            y1 += pad;
        }
        let pad = (y1 - y0) * 0.04;
        Some((x0, x1, y0 - pad, y1 + pad))
    }

    pub fn render(&self) -> String {
        let (w, h) = (self.width, self.height);
        let mut out = begin(&self.title, w, h);
        let Some((x0, x1, y0, y1)) = self.range() else {
            return no_data(out, w, h);
        };
        let frame = Frame {
            x0,
            x1,
            y0,
            y1,
            pw: w - LEFT - RIGHT,
            ph: h - TOP - BOTTOM,
        };
        self.axes(&mut out, &frame);
        self.bands(&mut out, &frame);
        self.lines(&mut out, &frame);
        self.legend(&mut out, frame.pw);
        out.push_str("</svg>");
        out
    }

    /// Whether a value can be drawn on the y axis.
    fn drawable(&self, y: f64) -> bool {
        y.is_finite() && (!self.log_y || y > 0.0)
    }

    /// The frame, grid, ticks and axis labels.
    fn axes(&self, out: &mut String, f: &Frame) {
        let (pw, ph) = (f.pw, f.ph);
        let _ = write!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for t in ticks(f.x0, f.x1) {
            let x = f.sx(t);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 14.0,
                fmt_num(t)
            );
        }
        for t in self.y_ticks(f.y0, f.y1) {
            let y = f.sy(t);
            let label = if self.log_y {
                fmt_num(10f64.powf(t))
            } else {
                fmt_num(t)
            };
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                LEFT + pw,
                LEFT - 4.0,
                y + 4.0
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            self.height - 8.0,
            esc(&self.x_label)
        );
        let _ = write!(
            out,
            r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            esc(&self.y_label)
        );
    }

    /// The y ticks in plot units: decades on a log axis (round values under a decade).
    fn y_ticks(&self, y0: f64, y1: f64) -> Vec<f64> {
        if !self.log_y {
            return ticks(y0, y1);
        }
        let v: Vec<f64> = (y0.ceil() as i32..=y1.floor() as i32)
            .map(f64::from)
            .collect();
        if v.len() >= 2 {
            v
        } else {
            // Under a decade: round values, placed on the log scale.
            ticks(10f64.powf(y0), 10f64.powf(y1))
                .into_iter()
                .filter(|t| *t > 0.0)
                .map(f64::log10)
                .collect()
        }
    }

    /// Each series' band, shaded (drawn under the lines).
    fn bands(&self, out: &mut String, f: &Frame) {
        for s in &self.series {
            let band: Vec<&(f64, f64, f64)> = s
                .band
                .iter()
                .filter(|(_, lo, hi)| self.drawable(*lo) && self.drawable(*hi))
                .collect();
            if band.len() < 2 {
                continue;
            }
            let mut d = String::new();
            for (i, (x, _, hi)) in band.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if i == 0 { "M" } else { "L" },
                    f.sx(*x),
                    f.sy(self.ty(*hi))
                );
            }
            for (x, lo, _) in band.iter().rev() {
                let _ = write!(d, "L{:.1},{:.1}", f.sx(*x), f.sy(self.ty(*lo)));
            }
            let _ = write!(
                out,
                r#"<path d="{d}Z" fill="{}" fill-opacity="0.18" stroke="none"/>"#,
                s.color
            );
        }
    }

    /// Each series' line, lifted over points that cannot be drawn.
    fn lines(&self, out: &mut String, f: &Frame) {
        for s in &self.series {
            let mut d = String::new();
            let mut pen_up = true;
            for &(x, y) in &s.points {
                if !self.drawable(y) {
                    pen_up = true;
                    continue;
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1}",
                    if pen_up { "M" } else { "L" },
                    f.sx(x),
                    f.sy(self.ty(y))
                );
                pen_up = false;
            }
            let _ = write!(
                out,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.6"{}><title>{}</title></path>"#,
                s.color,
                dash(s),
                esc(&s.label)
            );
        }
    }

    /// The legend, top right inside the plot.
    fn legend(&self, out: &mut String, pw: f64) {
        let lw = self
            .series
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(0) as f64
            * 6.2
            + 30.0;
        let lx = LEFT + pw - lw - 4.0;
        if !self.series.is_empty() {
            let _ = write!(
                out,
                r##"<rect x="{lx:.1}" y="{:.1}" width="{lw:.1}" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
                TOP + 4.0,
                self.series.len() as f64 * 14.0 + 6.0
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let y = TOP + 14.0 + i as f64 * 14.0;
            let _ = write!(
                out,
                r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 4.0,
                lx + 22.0,
                s.color,
                dash(s),
                lx + 26.0,
                y + 4.0,
                esc(&s.label)
            );
        }
    }
}

/// The dash pattern of a series' line (noisy variants are dashed).
fn dash(s: &Series) -> &'static str {
    if s.dashed {
        r#" stroke-dasharray="5 3""#
    } else {
        ""
    }
}

/// The plot area: the data range (plot units) and the size it is drawn at.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    pw: f64,
    ph: f64,
}

impl Frame {
    fn sx(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * self.ph
    }
}

/// The start of a figure: the SVG element, a white background and the title.
fn begin(title: &str, w: f64, h: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11" role="img"><title>{t}</title><rect width="{w}" height="{h}" fill="white"/><text x="{}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{t}</text>"#,
        w / 2.0,
        t = esc(title)
    )
}

/// Ends a figure that has nothing to draw yet, saying so.
fn no_data(mut out: String, w: f64, h: f64) -> String {
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">no data yet</text></svg>"##,
        w / 2.0,
        h / 2.0
    );
    out
}

/// A ridge plot: one filled curve per row (a histogram at one step), stacked from the first
/// row at the top to the last at the bottom, sharing the x axis.
pub fn ridge(
    title: &str,
    x_label: &str,
    rows: &[(String, Vec<(f64, f64)>)],
    color: &str,
) -> String {
    let (w, row_h) = (420.0, 26.0);
    let h = TOP + BOTTOM + row_h * (rows.len().max(1) as f64 + 1.5);
    let mut out = begin(title, w, h);
    let xs: Vec<f64> = rows.iter().flat_map(|r| r.1.iter().map(|p| p.0)).collect();
    let peak = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    if xs.is_empty() || peak <= 0.0 {
        return no_data(out, w, h);
    }
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let pw = w - LEFT - RIGHT;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(1e-12) * pw;
    let base_y = |i: usize| TOP + row_h * (i as f64 + 2.0);
    for (i, (label, pts)) in rows.iter().enumerate() {
        let base = base_y(i);
        let mut d = format!("M{:.1},{base:.1}", sx(pts[0].0));
        for &(x, y) in pts {
            let _ = write!(d, "L{:.1},{:.1}", sx(x), base - y / peak * row_h * 1.8);
        }
        let _ = write!(d, "L{:.1},{base:.1}Z", sx(pts[pts.len() - 1].0));
        let _ = write!(
            out,
            r#"<path d="{d}" fill="{color}" fill-opacity="0.35" stroke="{color}" stroke-width="1"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            base,
            esc(label)
        );
    }
    let axis = base_y(rows.len() - 1) + 4.0;
    for t in ticks(x0, x1) {
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{axis:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            axis + 4.0,
            axis + 16.0,
            fmt_num(t),
            x = sx(t)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">step</text></svg>"#,
        LEFT + pw / 2.0,
        axis + 32.0,
        esc(x_label),
        (TOP + axis) / 2.0,
        (TOP + axis) / 2.0
    );
    out
}

/// About five round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let (k0, k1) = ((lo / step).ceil() as i64, (hi / step + 1e-9).floor() as i64);
    (k0..=k1)
        .map(|k| {
            // Rounded to the step's precision, so that 3 x 0.1 reads 0.3.
            let scale = 10f64.powi((-step.log10().floor()) as i32 + 3);
            (k as f64 * step * scale).round() / scale
        })
        .collect()
}

/// A number for a tick label or a table: short, no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Escapes text for SVG and HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 300.0),
            [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
        );
        assert_eq!(ticks(0.12, 0.58), [0.2, 0.3, 0.4, 0.5]);
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(150.0), "150");
    }

    #[test]
    fn a_chart_draws_its_lines_bands_legend_and_breaks_at_nan() {
        let mut c = Chart::new("loss", "step", "loss");
        c.series.push(Series {
            label: "BN".into(),
            color: PALETTE[0].into(),
            points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0), (4.0, 0.5)],
            band: vec![(1.0, 1.5, 2.5), (3.0, 0.8, 1.2)],
            dashed: false,
        });
        let svg = c.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("fill-opacity=\"0.18\"").count(), 1, "one band");
        let line = svg.split("stroke-width=\"1.6\"").next().unwrap();
        let d = &line[line.rfind("d=\"").unwrap()..];
        assert_eq!(d.matches('M').count(), 2, "NaN breaks the line: {d}");
        assert!(svg.contains(">BN</text>"), "legend");
        assert!(svg.contains(">step</text>") && svg.contains(">loss</text>"));
        assert!(Chart::new("e", "x", "y").render().contains("no data yet"));
    }
}
