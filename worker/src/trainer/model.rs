//! The networks, for 32x32 RGB inputs and 10 classes, with BatchNorm on or off and the
//! noise of bn-experiments.md injected after each conv's normalisation.
//!
//! Nothing here assumes a single trial per model: layers hold no global state, and the noise
//! is passed in per forward pass.

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::rng::{self, Stream};

/// `vgg8` of bn-experiments.md: conv widths, `None` a 2x2 max-pool.
const VGG8: &[Option<i64>] = &[
    Some(64),
    None,
    Some(128),
    None,
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    None,
];

/// Width of the fully connected hidden layers at width 1.
const FC_HIDDEN: i64 = 512;

/// Channels at a width multiplier: at least 1.
pub fn scaled(channels: i64, width: f64) -> i64 {
    ((channels as f64 * width).round() as i64).max(1)
}

enum Layer {
    Conv {
        conv: nn::Conv2D,
        bn: Option<Box<nn::BatchNorm>>,
    },
    Pool,
}

/// A VGG network for CIFAR-shaped inputs.
pub struct Vgg {
    layers: Vec<Layer>,
    fc: Vec<nn::Linear>,
}

/// The noise of one training step: level v, and what its draws are keyed by.
#[derive(Debug, Clone, Copy)]
pub struct StepNoise {
    pub level: f64,
    pub seed: u64,
    pub step: u64,
}

impl Vgg {
    /// Builds `name` (only `vgg8` so far) with its weights under `vs`.
    pub fn new(vs: &nn::Path, name: &str, width: f64, bn: bool) -> Option<Vgg> {
        let cfg = match name {
            "vgg8" => VGG8,
            _ => return None,
        };
        let mut layers = Vec::new();
        let mut channels = 3;
        for (i, entry) in cfg.iter().enumerate() {
            match entry {
                None => layers.push(Layer::Pool),
                Some(c) => {
                    let out = scaled(*c, width);
                    let conv_cfg = nn::ConvConfig {
                        padding: 1,
                        bias: !bn,
                        ..Default::default()
                    };
                    let conv = nn::conv2d(vs / format!("conv{i}"), channels, out, 3, conv_cfg);
                    let norm = bn.then(|| {
                        Box::new(nn::batch_norm2d(
                            vs / format!("bn{i}"),
                            out,
                            Default::default(),
                        ))
                    });
                    layers.push(Layer::Conv { conv, bn: norm });
                    channels = out;
                }
            }
        }
        let hidden = scaled(FC_HIDDEN, width);
        let fc = vec![
            nn::linear(vs / "fc0", channels, hidden, Default::default()),
            nn::linear(vs / "fc1", hidden, hidden, Default::default()),
            nn::linear(vs / "fc2", hidden, 10, Default::default()),
        ];
        Some(Vgg { layers, fc })
    }

    /// Logits for a batch `[B, 3, 32, 32]`. `noise` applies in training only.
    pub fn forward(&self, x: &Tensor, train: bool, noise: Option<StepNoise>) -> Tensor {
        let mut h = x.shallow_clone();
        let mut conv_index = 0u64;
        for layer in &self.layers {
            h = match layer {
                Layer::Pool => h.max_pool2d_default(2),
                Layer::Conv { conv, bn } => {
                    let mut z = h.apply(conv);
                    if let Some(bn) = bn {
                        z = z.apply_t(bn.as_ref(), train);
                    }
                    if let (true, Some(n)) = (train, noise) {
                        z = add_noise(&z, n, conv_index);
                    }
                    conv_index += 1;
                    z.relu()
                }
            };
        }
        let mut h = h.flatten(1, -1);
        for (i, fc) in self.fc.iter().enumerate() {
            h = h.apply(fc);
            if i + 1 < self.fc.len() {
                h = h.relu();
            }
        }
        h
    }
}

/// `s * z + m` with the draws of bn-experiments.md at level v (v = 1 is the paper's setting):
/// per layer and step mu ~ U(-v/2, v/2), sigma ~ U(1, 1 + v/4); per element
/// m ~ U(mu - v/10, mu + v/10), s ~ N(sigma, (v/10)^2).
pub fn add_noise(z: &Tensor, n: StepNoise, layer: u64) -> Tensor {
    if n.level == 0.0 {
        return z.shallow_clone();
    }
    let v = n.level;
    let (device, size) = (z.device(), z.size());
    let (u, m, s) = rng::seeded(n.seed, Stream::Noise as u64 + layer, n.step, || {
        (
            Tensor::rand([2], (Kind::Float, device)),
            Tensor::rand(size.as_slice(), (Kind::Float, device)),
            Tensor::randn(size.as_slice(), (Kind::Float, device)),
        )
    });
    let mu = (u.get(0) - 0.5) * v;
    let sigma = u.get(1) * (0.25 * v) + 1.0;
    let m = (m * 2.0 - 1.0) * (0.1 * v) + mu;
    let s = s * (0.1 * v) + sigma;
    z * s + m
}

/// A model and its weights on one device.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Vgg,
}

impl Model {
    /// Builds a model with initial weights drawn from the trial's seed.
    pub fn new(name: &str, width: f64, bn: bool, seed: u64, device: Device) -> Option<Model> {
        rng::seeded(seed, Stream::Init as u64, 0, || {
            let vs = nn::VarStore::new(device);
            let net = Vgg::new(&vs.root(), name, width, bn)?;
            Some(Model { vs, net })
        })
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({} tensors)", self.vs.variables().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg8_maps_cifar_batches_to_ten_logits() {
        for bn in [true, false] {
            let m = Model::new("vgg8", 0.125, bn, 0, Device::Cpu).unwrap();
            let x = Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu));
            assert_eq!(m.net.forward(&x, true, None).size(), vec![4, 10]);
        }
        assert!(Model::new("vgg99", 1.0, true, 0, Device::Cpu).is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let a = Model::new("vgg8", 0.125, true, 7, Device::Cpu).unwrap();
        let b = Model::new("vgg8", 0.125, true, 7, Device::Cpu).unwrap();
        let c = Model::new("vgg8", 0.125, true, 8, Device::Cpu).unwrap();
        let (va, vb, vc) = (a.vs.variables(), b.vs.variables(), c.vs.variables());
        let w = "conv0.weight";
        assert!(va[w].equal(&vb[w]));
        assert!(!va[w].equal(&vc[w]));
    }

    #[test]
    fn noise_follows_the_definition_at_level_one() {
        let z = Tensor::zeros([64, 8, 16, 16], (Kind::Float, Device::Cpu));
        let ones = Tensor::ones([64, 8, 16, 16], (Kind::Float, Device::Cpu));
        let n = StepNoise {
            level: 1.0,
            seed: 3,
            step: 5,
        };
        // With z = 0 the output is m: within mu +- 0.1, mu in [-0.5, 0.5].
        let m = add_noise(&z, n, 0);
        let (lo, hi) = (m.min().double_value(&[]), m.max().double_value(&[]));
        assert!(
            hi - lo <= 0.2 + 1e-6 && lo >= -0.6 && hi <= 0.6,
            "m in [{lo}, {hi}]"
        );
        // With z = 1 the output is s + m: s has mean sigma in [1, 1.25] and sd 0.1.
        let out = add_noise(&ones, n, 0) - &m;
        let (mean, sd) = (
            out.mean(Kind::Float).double_value(&[]),
            out.std(true).double_value(&[]),
        );
        assert!((1.0..=1.25).contains(&mean), "s mean {mean}");
        assert!((sd - 0.1).abs() < 0.01, "s sd {sd}");
        // The same key gives the same draw; another step another one; level 0 nothing.
        assert!(add_noise(&z, n, 0).equal(&m));
        assert!(!add_noise(&z, StepNoise { step: 6, ..n }, 0).equal(&m));
        assert!(add_noise(&ones, StepNoise { level: 0.0, ..n }, 0).equal(&ones));
    }
}
