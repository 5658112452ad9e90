//! Probes: the computations behind the measurements of docs/measurements.md (what they mean
//! and why: docs/science.md), run by a measured step ([`super::measured_step`]) on its training
//! batch, in training mode, with that step's noise:
//!
//! - gradient ICS per layer (the paper's Definition 2.1, docs/science.md): `ics`;
//! - the loss landscape along the plain gradient: `landscape`;
//! - activation statistics and fixed-bin histograms: `activation_stats`, `histogram`;
//! - distance of the weights from their initial values (in the trainer).
//!
//! The extra passes never touch `.grad` (gradients come from `run_backward`), and every
//! parameter they move is put back. BatchNorm running statistics, which every training-mode
//! forward pass updates, are the caller's to save and restore (`Buffers`).

use tch::{Kind, Tensor};

use super::rng;

/// Quantiles reported for activations, in [0, 1].
pub const QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];

/// Copies of tensors (weights, gradients, statistics) at one moment.
pub fn snapshot(ts: &[Tensor]) -> Vec<Tensor> {
    tch::no_grad(|| ts.iter().map(|t| t.detach().copy()).collect())
}

/// Writes values back into live tensors, in place.
pub fn restore(live: &[Tensor], values: &[Tensor]) {
    tch::no_grad(|| {
        for (l, v) in live.iter().zip(values) {
            l.shallow_clone().copy_(v);
        }
    });
}

/// The Euclidean norm of several tensors taken together, as a 0-dim double tensor.
fn joint_norm<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Tensor {
    let squares: Vec<Tensor> = ts
        .into_iter()
        .map(|t| t.to_kind(Kind::Double).square().sum(Kind::Double))
        .collect();
    Tensor::stack(&squares, 0).sum(Kind::Double).sqrt()
}

/// One step size of the landscape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LandscapePoint {
    pub eta: f64,
    /// L(w - eta g).
    pub loss: f64,
    /// ||g_eta - g||.
    pub grad_dist: f64,
    /// ||g_eta - g|| / ||eta g||.
    pub beta: f64,
}

/// Evaluates the loss and its gradient at `w - eta g` for every eta, where `w` are `params`
/// now and `g` their gradients `grads`; `loss_at` computes the loss of the measured batch at
/// the parameters' current values. The parameters are left as they were.
pub fn landscape(
    params: &[Tensor],
    grads: &[Tensor],
    etas: &[f64],
    mut loss_at: impl FnMut() -> Tensor,
) -> Vec<LandscapePoint> {
    let origin = snapshot(params);
    let g_norm = joint_norm(grads);
    let mut raw = Vec::new();
    for &eta in etas {
        tch::no_grad(|| {
            for ((p, w), g) in params.iter().zip(&origin).zip(grads) {
                p.shallow_clone().copy_(&(w - g * eta));
            }
        });
        let loss = loss_at();
        let g_eta = Tensor::run_backward(&[&loss], params, false, false);
        let dist = joint_norm(
            g_eta
                .iter()
                .zip(grads)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>()
                .iter(),
        );
        raw.push(Tensor::stack(
            &[
                loss.detach().to_kind(Kind::Double),
                dist.shallow_clone(),
                dist / (&g_norm * eta),
            ],
            0,
        ));
    }
    restore(params, &origin);
    if raw.is_empty() {
        return Vec::new();
    }
    let values: Vec<f64> = Vec::try_from(
        Tensor::stack(&raw, 0)
            .to_device(tch::Device::Cpu)
            .flatten(0, -1),
    )
    .unwrap_or_default();
    etas.iter()
        .zip(values.chunks_exact(3))
        .map(|(&eta, v)| LandscapePoint {
            eta,
            loss: v[0],
            grad_dist: v[1],
            beta: v[2],
        })
        .collect()
}

/// Gradient ICS of every layer. `layers[i]` are the parameters of layer i (forward order),
/// `weights[i]` its weight tensor, `before[i]` copies of its parameters at W(t), and `g[i]` the
/// gradient of the loss with respect to `weights[i]` at W(t). The parameters must hold W(t+1),
/// the real update of the step; they hold it again on return.
///
/// G'_i is the gradient with respect to `weights[i]` at (W_1(t+1), ..., W_{i-1}(t+1), W_i(t),
/// ..., W_k(t)). Returns (||G_i - G'_i||, cos(G_i, G'_i)) per layer; the cosine is NaN when
/// either gradient is zero. For the first layer G'_1 =
/// G_1 by definition: (0, 1) without a pass.
pub fn ics(
    layers: &[Vec<Tensor>],
    weights: &[Tensor],
    before: &[Vec<Tensor>],
    g: &[Tensor],
    mut loss_at: impl FnMut() -> Tensor,
) -> Vec<(f64, f64)> {
    let after: Vec<Vec<Tensor>> = layers.iter().map(|l| snapshot(l)).collect();
    for (live, old) in layers.iter().zip(before) {
        restore(live, old);
    }
    let mut raw = Vec::new();
    for i in 0..layers.len() {
        if i > 0 {
            restore(&layers[i - 1], &after[i - 1]);
            let loss = loss_at();
            let g_shift = Tensor::run_backward(&[&loss], &[&weights[i]], false, false).remove(0);
            let (a, b) = (g[i].to_kind(Kind::Double), g_shift.to_kind(Kind::Double));
            let cos = (&a * &b).sum(Kind::Double) / (a.norm() * b.norm());
            raw.push(Tensor::stack(&[(&a - &b).norm(), cos], 0));
        }
    }
    if let Some(last) = layers.last() {
        restore(last, &after[layers.len() - 1]);
    }
    let mut out = vec![(0.0, 1.0)];
    if !raw.is_empty() {
        let values: Vec<f64> = Vec::try_from(
            Tensor::stack(&raw, 0)
                .to_device(tch::Device::Cpu)
                .flatten(0, -1),
        )
        .unwrap_or_default();
        out.extend(values.chunks_exact(2).map(|v| (v[0], v[1])));
    }
    out.truncate(layers.len());
    out
}

/// The flat positions whose elements give a layer's activation quantiles at one measured
/// step: every position when there are at most `sample` elements; otherwise `sample`
/// positions drawn with replacement, p_j = h(key xor j) mod n for j = 0 .. sample - 1, with h
/// SplitMix64's finaliser and `key` the draw's key (docs/measurements.md). Drawn on the host
/// from the key alone, so the same trial picks the same positions on every run and device,
/// and no position is favoured by the tensor's shape.
pub fn sample_positions(n: i64, sample: i64, key: u64) -> Option<Vec<i64>> {
    let n_u = u64::try_from(n).ok().filter(|&n| n > 0)?;
    (n > sample.max(1)).then(|| {
        (0..sample.max(1) as u64)
            .map(|j| (rng::mix(key ^ j) % n_u) as i64)
            .collect()
    })
}

/// Mean, standard deviation and quantiles of a tensor's elements, as one double tensor of
/// 2 + 7 values (read back with the step's other values). Mean and deviation are over every
/// element; the quantiles over the elements at [`sample_positions`] (`sample`, `key`).
pub fn activation_stats(x: &Tensor, sample: i64, key: u64) -> Tensor {
    let flat = x.detach().flatten(0, -1).to_kind(Kind::Double);
    let n = flat.size()[0];
    let picked = match sample_positions(n, sample, key) {
        Some(p) => flat.index_select(0, &Tensor::from_slice(&p).to_device(flat.device())),
        None => flat.shallow_clone(),
    };
    let q = Tensor::from_slice(&QUANTILES).to_device(flat.device());
    let quantiles = picked.quantile(&q, None, false, "linear");
    Tensor::cat(
        &[
            flat.mean(Kind::Double).view([1]),
            flat.std(true).view([1]),
            quantiles,
        ],
        0,
    )
}

/// Counts per bin of `bins` equal bins on [lo, hi] (the last bin includes hi), with the count
/// below lo in front and the count above hi (or NaN) at the end: bins + 2 values.
pub fn histogram(x: &Tensor, bins: i64, lo: f64, hi: f64) -> Tensor {
    let flat = x.detach().flatten(0, -1).to_kind(Kind::Double);
    let inside = flat.ge(lo).logical_and(&flat.le(hi));
    // Bin i + 1 for the inside bins, 0 for underflow, bins + 1 for overflow.
    let scaled = ((&flat - lo) * (bins as f64 / (hi - lo)))
        .floor()
        .clamp(0.0, (bins - 1) as f64)
        + 1.0;
    let outside = Tensor::where_scalar(&flat.lt(lo), 0.0, (bins + 1) as f64).to_kind(Kind::Double);
    let index = scaled.where_self(&inside, &outside).to_kind(Kind::Int64);
    index
        .bincount::<Tensor>(None, bins + 2)
        .to_kind(Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

    fn leaf(t: Tensor) -> Tensor {
        t.set_requires_grad(true)
    }

    /// Squared loss of a linear model: L(w) = |Xw - y|^2 / 2n, gradient g = X'(Xw - y)/n and
    /// Hessian H = X'X/n, so g_eta = g - eta H g, ||g_eta - g|| = eta ||Hg|| and the effective
    /// beta-smoothness is ||Hg|| / ||g|| for every eta.
    #[test]
    fn landscape_matches_the_closed_form_of_a_linear_model() {
        let (n, d) = (50, 4);
        // Under the trials' generator lock: never between another test's seed and its draw.
        let (x, y, w) = rng::seeded(1, 0, 0, || {
            (
                Tensor::randn([n, d], F64),
                Tensor::randn([n, 1], F64),
                Tensor::randn([d, 1], F64),
            )
        });
        let w = leaf(w);
        let loss_of = |w: &Tensor| (x.matmul(w) - &y).square().sum(Kind::Double) / (2.0 * n as f64);
        let loss = loss_of(&w);
        let g = Tensor::run_backward(&[&loss], &[&w], false, false).remove(0);
        let w0 = w.detach().copy();
        let etas = [0.1, 0.5, 1.0];
        let points = landscape(&[w.shallow_clone()], &[g.shallow_clone()], &etas, || {
            loss_of(&w)
        });
        let h = x.tr().matmul(&x) / n as f64;
        let hg = h.matmul(&g).norm().double_value(&[]);
        let gn = g.norm().double_value(&[]);
        for p in &points {
            let expect_loss = loss_of(&(&w0 - &g * p.eta)).double_value(&[]);
            assert!(
                (p.loss - expect_loss).abs() < 1e-9,
                "{p:?} vs {expect_loss}"
            );
            assert!((p.grad_dist - p.eta * hg).abs() < 1e-9, "{p:?}");
            assert!((p.beta - hg / gn).abs() < 1e-9, "{p:?}");
        }
        assert!(w.equal(&w0), "the weights are put back");
    }

    /// A two-layer linear net f = XAB with L = |XAB - Y|^2 / 2n: the gradient with respect to
    /// B at (A, B) is (XA)'(XAB - Y)/n, so G'_2 has a closed form at (A(t+1), B(t)).
    #[test]
    fn ics_matches_the_closed_form_of_a_deep_linear_net() {
        let n = 40.0;
        let (x, y, a, b) = rng::seeded(2, 0, 0, || {
            (
                Tensor::randn([40, 5], F64),
                Tensor::randn([40, 2], F64),
                Tensor::randn([5, 3], F64),
                Tensor::randn([3, 2], F64),
            )
        });
        let (a, b) = (leaf(a), leaf(b));
        let loss_at = || (x.matmul(&a).matmul(&b) - &y).square().sum(Kind::Double) / (2.0 * n);
        let grad_b =
            |a: &Tensor, b: &Tensor| x.matmul(a).tr().matmul(&(x.matmul(a).matmul(b) - &y)) / n;
        let loss = loss_at();
        let g = Tensor::run_backward(&[&loss], &[&a, &b], false, false);
        let before = vec![
            snapshot(&[a.shallow_clone()]),
            snapshot(&[b.shallow_clone()]),
        ];
        let lr = 0.05;
        tch::no_grad(|| {
            a.shallow_clone().copy_(&(&before[0][0] - &g[0] * lr));
            b.shallow_clone().copy_(&(&before[1][0] - &g[1] * lr));
        });
        let (a1, b1) = (a.detach().copy(), b.detach().copy());
        let layers = vec![vec![a.shallow_clone()], vec![b.shallow_clone()]];
        let got = ics(
            &layers,
            &[a.shallow_clone(), b.shallow_clone()],
            &before,
            &g,
            loss_at,
        );
        let g2 = grad_b(&before[0][0], &before[1][0]);
        assert!(
            // Two f64 evaluations of the same product in other orders: ~1e-15 apart.
            g2.allclose(&g[1], 1e-10, 1e-10, false),
            "autograd agrees with the formula"
        );
        let g2_shift = grad_b(&a1, &before[1][0]);
        let l2 = (&g2 - &g2_shift).norm().double_value(&[]);
        let cos =
            ((&g2 * &g2_shift).sum(Kind::Double) / (g2.norm() * g2_shift.norm())).double_value(&[]);
        assert_eq!(got[0], (0.0, 1.0));
        assert!(l2 > 1e-3, "the shift is visible");
        assert!(
            (got[1].0 - l2).abs() < 1e-9 && (got[1].1 - cos).abs() < 1e-9,
            "{got:?} vs ({l2}, {cos})"
        );
        assert!(
            a.equal(&a1) && b.equal(&b1),
            "the parameters hold W(t+1) again"
        );
    }

    /// Conv activations whose value is the element's spatial position (0 .. 63 on an 8x8
    /// map): with n = 32768 and `sample` 256 an even stride of n / 256 = 2 x H x W would read
    /// position (0, 0) alone, and every quantile would be 0.
    #[test]
    fn quantiles_sample_every_spatial_position() {
        let (b, c, h, w) = (32, 16, 8, 8);
        let x = Tensor::arange(h * w, F64)
            .view([1, 1, h, w])
            .expand([b, c, h, w], false);
        let stats: Vec<f64> = Vec::try_from(activation_stats(&x, 256, 11)).unwrap();
        for (q, v) in QUANTILES.iter().zip(&stats[2..]) {
            // 256 draws from 64 equally likely values: the median's standard error is ~2.
            assert!((v - 63.0 * q).abs() < 8.0, "q{q}: {v} ({stats:?})");
        }
        let n = b * c * h * w;
        let p = sample_positions(n, 256, 11).unwrap();
        assert_eq!(p.len(), 256);
        assert!(p.iter().all(|&i| (0..n).contains(&i)));
        assert_eq!(
            Some(&p),
            sample_positions(n, 256, 11).as_ref(),
            "same key, same sample"
        );
        assert_ne!(
            Some(&p),
            sample_positions(n, 256, 12).as_ref(),
            "another key, another"
        );
        assert_eq!(
            sample_positions(256, 256, 11),
            None,
            "n <= sample: every element"
        );
    }

    #[test]
    fn statistics_and_histograms_count_every_element() {
        let x = Tensor::arange(1000, F64) / 100.0 - 5.0; // -5.00 .. 4.99
        let stats: Vec<f64> = Vec::try_from(activation_stats(&x, 1000, 7)).unwrap();
        assert!((stats[0] - (-0.005)).abs() < 1e-9, "{stats:?}");
        assert!((stats[5] - (-0.005)).abs() < 1e-2, "median {stats:?}");
        let h: Vec<f64> = Vec::try_from(histogram(&x, 4, -2.0, 2.0)).unwrap();
        assert_eq!(h.len(), 6);
        assert_eq!(h.iter().sum::<f64>(), 1000.0);
        assert_eq!((h[0], h[5]), (300.0, 299.0));
    }
}
