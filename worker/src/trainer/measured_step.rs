//! A measured training step: what to measure ([`Plan`]), and the real step with the probes of
//! [`super::probes`] around it and the rows they produce ([`Measurer`]). An unmeasured step
//! and a measured one change the weights, the optimizer state and the BatchNorm running
//! statistics identically.

use bnsweep_proto as pb;
use tch::{nn, Kind, Tensor};

use super::model::{Capture, Model};
use super::probes::{self, QUANTILES};
use super::rng::{self, Stream};
use super::Row;

/// What to measure, resolved for one trial.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The trial's seed: the activation sample's positions are drawn from it.
    pub seed: u64,
    pub every: u64,
    pub ics: bool,
    /// Absolute step sizes; empty: no landscape.
    pub etas: Vec<f64>,
    pub weights: bool,
    pub activations: bool,
    /// Layer indices whose activations are kept (all when empty).
    pub layers: Vec<u32>,
    pub bins: i64,
    pub sample: i64,
    pub range: (f64, f64),
}

impl Plan {
    /// From the wire form; `None` when nothing is measured.
    pub fn new(spec: Option<&pb::MeasureSpec>, lr: f64, seed: u64) -> Option<Plan> {
        let m = spec?;
        let scale = if m.eta_relative_to_lr { lr } else { 1.0 };
        let plan = Plan {
            seed,
            every: m.every,
            ics: m.ics,
            etas: if m.landscape {
                m.eta.iter().map(|e| e * scale).collect()
            } else {
                Vec::new()
            },
            weights: m.weights,
            activations: m.activations,
            layers: m.activation_layers.clone(),
            bins: i64::from(m.bins.max(1)),
            sample: i64::from(m.sample.max(1)),
            range: (m.range_lo, m.range_hi),
        };
        let anything = plan.ics || !plan.etas.is_empty() || plan.weights || plan.activations;
        (plan.every > 0 && anything).then_some(plan)
    }

    pub fn due(&self, step: u64) -> bool {
        step.is_multiple_of(self.every)
    }

    fn keeps(&self, layer: usize) -> bool {
        self.layers.is_empty() || self.layers.contains(&(layer as u32))
    }
}

/// The state measurements keep across steps.
pub struct Measurer {
    pub plan: Plan,
    names: Vec<String>,
    /// Initial weights of every layer (when `weights` is measured).
    initial: Vec<Tensor>,
    /// BatchNorm running statistics: extra passes move them, so they are put back.
    buffers: Vec<Tensor>,
}

impl Measurer {
    pub fn new(plan: Plan, model: &Model) -> Measurer {
        let layers = model.net.weight_layers();
        let initial = if plan.weights {
            probes::snapshot(
                &layers
                    .iter()
                    .map(|l| l.weight.shallow_clone())
                    .collect::<Vec<_>>(),
            )
        } else {
            Vec::new()
        };
        let buffers = model
            .variables_by_name()
            .into_iter()
            .filter(|(n, _)| n.contains("running_"))
            .map(|(_, t)| t)
            .collect();
        Measurer {
            plan,
            names: layers.into_iter().map(|l| l.name).collect(),
            initial,
            buffers,
        }
    }

    /// Runs the optimizer step of a measured step whose loss has been backpropagated, with
    /// the measurement passes around it. `loss_at` recomputes the step's loss (same batch,
    /// same noise, training mode) at the parameters' current values.
    pub fn step(
        &self,
        step: u64,
        model: &Model,
        opt: &mut nn::Optimizer,
        captures: &[Capture],
        mut loss_at: impl FnMut() -> Tensor,
    ) -> Vec<Row> {
        let layers = model.net.weight_layers();
        let params: Vec<Tensor> = layers
            .iter()
            .flat_map(|l| l.params.iter().map(Tensor::shallow_clone))
            .collect();
        let weights: Vec<Tensor> = layers.iter().map(|l| l.weight.shallow_clone()).collect();
        let buffers = probes::snapshot(&self.buffers);
        let grads = probes::snapshot(&params.iter().map(Tensor::grad).collect::<Vec<_>>());
        let weight_grads = probes::snapshot(&weights.iter().map(Tensor::grad).collect::<Vec<_>>());
        let before: Vec<Vec<Tensor>> = layers.iter().map(|l| probes::snapshot(&l.params)).collect();

        let landscape = probes::landscape(&params, &grads, &self.plan.etas, &mut loss_at);
        opt.step();
        let ics = if self.plan.ics {
            let per_layer: Vec<Vec<Tensor>> = layers
                .iter()
                .map(|l| l.params.iter().map(Tensor::shallow_clone).collect())
                .collect();
            probes::ics(&per_layer, &weights, &before, &weight_grads, &mut loss_at)
        } else {
            Vec::new()
        };
        probes::restore(&self.buffers, &buffers);

        let mut rows = Vec::new();
        self.landscape_rows(step, &landscape, &mut rows);
        self.layer_rows(step, &weights, &weight_grads, &ics, captures, &mut rows);
        rows
    }

    fn landscape_rows(&self, step: u64, points: &[probes::LandscapePoint], rows: &mut Vec<Row>) {
        if points.is_empty() {
            return;
        }
        let summary =
            |f: fn(&probes::LandscapePoint) -> f64, min: bool| extremum(points.iter().map(f), min);
        let (loss_min, loss_max) = (summary(|p| p.loss, true), summary(|p| p.loss, false));
        let (gradpred_min, gradpred_max) = (
            summary(|p| p.grad_dist, true),
            summary(|p| p.grad_dist, false),
        );
        let beta_smoothness = summary(|p| p.beta, false);
        let nonfinite_probes = points
            .iter()
            .filter(|p| ![p.loss, p.grad_dist, p.beta].iter().all(|v| v.is_finite()))
            .count() as u32;
        for p in points {
            rows.push(Row::Landscape(pb::LandscapeRow {
                step,
                eta: p.eta,
                loss: p.loss,
                grad_dist: p.grad_dist,
                beta: p.beta,
                loss_min,
                loss_max,
                gradpred_min,
                gradpred_max,
                beta_smoothness,
                nonfinite_probes,
            }));
        }
    }

    /// Per-layer rows and activation histograms, read back from the device in one transfer.
    fn layer_rows(
        &self,
        step: u64,
        weights: &[Tensor],
        grads: &[Tensor],
        ics: &[(f64, f64)],
        captures: &[Capture],
        rows: &mut Vec<Row>,
    ) {
        let keeps: Vec<bool> = (0..weights.len())
            .map(|i| self.plan.activations && self.plan.keeps(i))
            .collect();
        let values = self.layer_values(step, weights, grads, captures, &keeps);
        let stats_len = 2 + QUANTILES.len() as i64;
        let hist_len = self.plan.bins + 2;
        let mut at = 0usize;
        let mut take = |n: i64| {
            let s = &values[at..at + n as usize];
            at += n as usize;
            s.to_vec()
        };
        for (i, (name, &keep)) in self.names.iter().zip(&keeps).enumerate() {
            let name = name.clone();
            let grad_norm = take(1)[0];
            let (weight_dist, weight_dist_rel) = if self.plan.weights {
                let v = take(2);
                // Undefined (null) for a weight that started at zero.
                (Some(v[0]), Some(v[1]).filter(|r| r.is_finite()))
            } else {
                (None, None)
            };
            let stats = |v: Vec<f64>| pb::ActivationStats {
                mean: v[0],
                std: v[1],
                quantiles: v[2..].to_vec(),
            };
            let (pre, post) = if keep {
                (Some(stats(take(stats_len))), Some(stats(take(stats_len))))
            } else {
                (None, None)
            };
            if keep {
                for point in ["pre", "post"] {
                    self.histogram_rows(step, i, &name, point, take(hist_len), rows);
                }
            }
            rows.push(Row::Layer(pb::LayerRow {
                step,
                layer: i as u32,
                layer_name: name,
                ics_l2: ics.get(i).map(|v| v.0),
                // Undefined (null) when G_i or G'_i is zero, as in a layer of dead units.
                ics_cos: ics.get(i).map(|v| v.1).filter(|c| !c.is_nan()),
                grad_norm: Some(grad_norm),
                weight_dist,
                weight_dist_rel,
                pre,
                post,
            }));
        }
    }

    /// The numbers of the layer rows, computed on the device and read back together. Per
    /// layer: [grad_norm, weight_dist, weight_dist_rel, pre stats, post stats, pre hist, post
    /// hist], the weights' distances when measured, the activations' for the layers `keeps`.
    fn layer_values(
        &self,
        step: u64,
        weights: &[Tensor],
        grads: &[Tensor],
        captures: &[Capture],
        keeps: &[bool],
    ) -> Vec<f64> {
        let (bins, (lo, hi)) = (self.plan.bins, self.plan.range);
        let mut parts: Vec<Tensor> = Vec::new();
        tch::no_grad(|| {
            for i in 0..weights.len() {
                parts.push(grads[i].to_kind(Kind::Double).norm().view([1]));
                if self.plan.weights {
                    let dist = (&weights[i] - &self.initial[i])
                        .to_kind(Kind::Double)
                        .norm();
                    let rel = &dist / self.initial[i].to_kind(Kind::Double).norm();
                    parts.push(Tensor::stack(&[dist, rel], 0));
                }
                if keeps[i] {
                    let c = captures
                        .iter()
                        .find(|c| c.layer == i)
                        .expect("every layer is captured");
                    // One sample of positions per layer and step, the same for both points.
                    let key = rng::key(self.plan.seed, Stream::Sample as u64 + i as u64, step);
                    parts.push(probes::activation_stats(&c.pre, self.plan.sample, key));
                    parts.push(probes::activation_stats(&c.post, self.plan.sample, key));
                    parts.push(probes::histogram(&c.pre, bins, lo, hi));
                    parts.push(probes::histogram(&c.post, bins, lo, hi));
                }
            }
        });
        Vec::try_from(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu)).unwrap_or_default()
    }

    /// The rows of one activation histogram of layer `layer` at `point`; `counts` are below
    /// the range, in each bin, above it.
    fn histogram_rows(
        &self,
        step: u64,
        layer: usize,
        name: &str,
        point: &str,
        counts: Vec<f64>,
        rows: &mut Vec<Row>,
    ) {
        let (bins, (lo, hi)) = (self.plan.bins, self.plan.range);
        let width = (hi - lo) / bins as f64;
        for (b, count) in counts.into_iter().enumerate() {
            let bin = b as i32 - 1;
            let (l, h) = match bin {
                -1 => (f64::NEG_INFINITY, lo),
                b if i64::from(b) == bins => (hi, f64::INFINITY),
                b => (lo + f64::from(b) * width, lo + f64::from(b + 1) * width),
            };
            rows.push(Row::Activation(pb::ActivationRow {
                step,
                layer: layer as u32,
                layer_name: name.to_string(),
                point: point.into(),
                bin,
                lo: l,
                hi: h,
                count: count as u64,
            }));
        }
    }
}

/// The minimum (or maximum) of a step's probe values, non-finite values included: NaN when
/// any value is NaN (a probe that blew up is not skipped), +-infinity as they compare; NaN for
/// no values.
fn extremum(values: impl Iterator<Item = f64>, min: bool) -> f64 {
    let mut out: Option<f64> = None;
    for v in values {
        out = Some(match out {
            _ if v.is_nan() => return f64::NAN,
            None => v,
            Some(a) if min => a.min(v),
            Some(a) => a.max(v),
        });
    }
    out.unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::extremum;

    #[test]
    fn summaries_keep_a_probe_that_blew_up() {
        let finite = [2.0, -1.0, 5.0];
        assert_eq!(extremum(finite.into_iter(), true), -1.0);
        assert_eq!(extremum(finite.into_iter(), false), 5.0);
        // f64::max would answer 5 and f64::min -1 here, hiding the blow-up.
        for min in [true, false] {
            assert!(extremum([2.0, f64::NAN, 5.0].into_iter(), min).is_nan());
            assert!(extremum([f64::NAN, f64::NAN].into_iter(), min).is_nan());
            assert!(extremum(std::iter::empty(), min).is_nan());
        }
        assert_eq!(
            extremum([2.0, f64::INFINITY].into_iter(), false),
            f64::INFINITY
        );
        assert_eq!(
            extremum([2.0, f64::NEG_INFINITY].into_iter(), true),
            f64::NEG_INFINITY
        );
    }
}
