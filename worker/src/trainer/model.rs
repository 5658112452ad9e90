//! The networks, for 32x32 RGB inputs and 10 classes: VGGs (docs/training.md's `vgg8` and
//! the standard configurations) and an MLP, with BatchNorm on or off and the noise of
//! docs/training.md injected where BatchNorm sits (after it when it is on).
//!
//! Nothing here assumes a single trial per model: layers hold no global state, and the noise
//! is passed in per forward pass.

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::rng::{self, Stream};

/// Conv stacks: output channels, `None` a 2x2 max-pool.
const C64: Option<i64> = Some(64);
const C128: Option<i64> = Some(128);
const C256: Option<i64> = Some(256);
const C512: Option<i64> = Some(512);
const M: Option<i64> = None;
/// `vgg8` of docs/sweep-file.md (8 convs; the conv stack of VGG-11, configuration A).
const VGG8: &[Option<i64>] = &[C64, M, C128, M, C256, C256, M, C512, C512, M, C512, C512, M];
/// 10 convs: configuration B (VGG-13), the ten-conv VGG of the blog study.
const VGG13: &[Option<i64>] = &[
    C64, C64, M, C128, C128, M, C256, C256, M, C512, C512, M, C512, C512, M,
];
/// Configuration D.
const VGG16: &[Option<i64>] = &[
    C64, C64, M, C128, C128, M, C256, C256, C256, M, C512, C512, C512, M, C512, C512, C512, M,
];
/// Configuration E.
const VGG19: &[Option<i64>] = &[
    C64, C64, M, C128, C128, M, C256, C256, C256, C256, M, C512, C512, C512, C512, M, C512, C512,
    C512, C512, M,
];

/// The models a trial may ask for.
pub const MODELS: &[&str] = &["vgg8", "vgg10", "vgg11", "vgg13", "vgg16", "vgg19", "mlp"];

/// Width of the fully connected hidden layers of the VGG head at width 1.
const FC_HIDDEN: i64 = 512;

/// Channels at a width multiplier: at least 1.
pub fn scaled(channels: i64, width: f64) -> i64 {
    ((channels as f64 * width).round() as i64).max(1)
}

enum Layer {
    /// A 3x3 conv (padding 1), optional BatchNorm, noise, ReLU.
    Conv {
        conv: nn::Conv2D,
        bn: Option<Box<nn::BatchNorm>>,
    },
    Pool,
    /// A linear layer. Hidden MLP layers take BatchNorm and noise like convs (`normed`); the
    /// VGG head does not. The last layer has no ReLU.
    Dense {
        lin: nn::Linear,
        bn: Option<Box<nn::BatchNorm>>,
        normed: bool,
        relu: bool,
    },
}

/// One layer with weights, for the measurements: its name and its parameters.
pub struct WeightLayer {
    /// `conv0`, `fc1`, ... in forward order.
    pub name: String,
    /// The weight matrix or kernel.
    pub weight: Tensor,
    /// The bias, where the layer has one (none before a BatchNorm).
    pub bias: Option<Tensor>,
    /// Every parameter of the layer: weight, bias, BatchNorm scale and shift.
    pub params: Vec<Tensor>,
}

/// A layer's activations in one forward pass: after its conv or linear map, before any
/// normalisation (`pre`), and at the end of its block (`post`).
pub struct Capture {
    pub layer: usize,
    pub pre: Tensor,
    pub post: Tensor,
}

/// A network for CIFAR-shaped inputs and 10 classes.
pub struct Net {
    layers: Vec<Layer>,
    names: Vec<String>,
}

/// The noise of one training step: level v, what its draws are keyed by, and its options.
#[derive(Debug, Clone, Copy)]
pub struct StepNoise {
    pub level: f64,
    pub seed: u64,
    pub step: u64,
    pub options: NoiseOptions,
}

/// Where the noise definitions leave a choice (docs/training.md, "The noise"). The default
/// is the paper's recipe as the project reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoiseOptions {
    /// m and s: one draw per channel (shared by every sample and position), not per element.
    pub channel_draws: bool,
    /// mu_t and sigma_t: one per channel, not one per layer.
    pub channel_moments: bool,
    /// The spread of s, 0.1 v, read as a variance rather than a standard deviation.
    pub spread_is_variance: bool,
    /// Noise in a VGG head's hidden linear layers too (before their ReLU).
    pub head: bool,
}

impl NoiseOptions {
    /// From the wire form (empty strings: the defaults); an error names an unknown value.
    pub fn parse(draws: &str, moments: &str, spread: &str, head: bool) -> Result<Self, String> {
        let pick = |v: &str, what: &str, default: &str, other: &str| match v {
            "" => Ok(false),
            v if v == default => Ok(false),
            v if v == other => Ok(true),
            v => Err(format!("{what} `{v}` (known: {default}, {other})")),
        };
        Ok(NoiseOptions {
            channel_draws: pick(draws, "noise_draws", "element", "channel")?,
            channel_moments: pick(moments, "noise_moments", "layer", "channel")?,
            spread_is_variance: pick(spread, "noise_spread", "std", "variance")?,
            head,
        })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Arch<'a> {
    /// Channels, height and width of the input images (VGGs need 32x32).
    pub input: [i64; 3],
    pub name: &'a str,
    pub width: f64,
    /// Hidden layer sizes of `mlp` (before the width multiplier).
    pub hidden: &'a [i64],
    pub bn: bool,
    pub init: Init,
    /// BatchNorm's running-statistics momentum, PyTorch's convention.
    pub bn_momentum: f64,
}

/// How the initial weights of convs and linear layers are drawn (docs/training.md).
/// BatchNorm always starts at scale 1 and shift 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `nn.Conv2d` / `nn.Linear.reset_parameters` of PyTorch 2.x: weights and biases
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    PyTorch,
    GlorotUniform,
    GlorotNormal,
    /// He et al. with the ReLU gain, over fan_in (tch's own default for convs).
    KaimingUniform,
    KaimingNormal,
    /// flax's default: a normal truncated at two deviations, of variance 1/fan_in.
    LecunNormal,
}

/// fan_in and fan_out of a weight `[out, in, kh, kw]` (or `[out, in]`).
fn fans(shape: &[i64]) -> (f64, f64) {
    let receptive: i64 = shape[2..].iter().product();
    ((shape[1] * receptive) as f64, (shape[0] * receptive) as f64)
}

/// erf(sqrt 2): the normal distribution's mass within two standard deviations, as 2P - 1.
const ERF_SQRT2: f64 = 0.954_499_736_103_641_6;
/// The standard deviation of a standard normal truncated to [-2, 2].
const TRUNCATED_STD: f64 = 0.879_625_661_034_239_8;

impl Init {
    /// The trial spec's text (empty is `pytorch`); `None` for an unknown scheme.
    pub fn parse(text: &str) -> Option<Init> {
        Some(match text {
            "" | "pytorch" => Init::PyTorch,
            "glorot_uniform" => Init::GlorotUniform,
            "glorot_normal" => Init::GlorotNormal,
            "kaiming_uniform" => Init::KaimingUniform,
            "kaiming_normal" => Init::KaimingNormal,
            "lecun_normal" => Init::LecunNormal,
            _ => return None,
        })
    }

    /// A weight of `shape` (`[out, in]` or `[out, in, kh, kw]`), drawn on the CPU from
    /// libtorch's current generator.
    pub fn weight(self, shape: &[i64]) -> Tensor {
        let (fan_in, fan_out) = fans(shape);
        let mut w = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        let uniform = |w: &mut Tensor, bound: f64| w.uniform_(-bound, bound);
        match self {
            Init::PyTorch => uniform(&mut w, 1.0 / fan_in.sqrt()),
            Init::GlorotUniform => uniform(&mut w, (6.0 / (fan_in + fan_out)).sqrt()),
            Init::GlorotNormal => w.normal_(0.0, (2.0 / (fan_in + fan_out)).sqrt()),
            Init::KaimingUniform => uniform(&mut w, (6.0 / fan_in).sqrt()),
            Init::KaimingNormal => w.normal_(0.0, (2.0 / fan_in).sqrt()),
            Init::LecunNormal => {
                // Inverse CDF of a uniform draw over the normal's central two deviations.
                let sd = (1.0 / fan_in).sqrt() / TRUNCATED_STD;
                let z = uniform(&mut w, ERF_SQRT2).erfinv() * std::f64::consts::SQRT_2;
                z.clamp(-2.0, 2.0) * sd
            }
        }
    }

    /// The bias of a layer whose weight has `shape`, drawn like [`Init::weight`].
    pub fn bias(self, shape: &[i64]) -> Tensor {
        let (fan_in, _) = fans(shape);
        let mut b = Tensor::zeros([shape[0]], (Kind::Float, Device::Cpu));
        match self {
            Init::PyTorch => {
                let bound = 1.0 / fan_in.sqrt();
                b.uniform_(-bound, bound)
            }
            _ => b,
        }
    }
}

/// BatchNorm as the nets use it. Weights are drawn afterwards by `Model::new`; BatchNorm
/// starts at scale 1, shift 0.
fn bn_config(arch: &Arch<'_>) -> nn::BatchNormConfig {
    nn::BatchNormConfig {
        momentum: arch.bn_momentum,
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

impl Net {
    /// Builds the architecture with its weights under `vs`; `None` for an unknown name.
    pub fn new(vs: &nn::Path<'_>, arch: &Arch<'_>) -> Option<Net> {
        let stack = match arch.name {
            "vgg8" | "vgg11" => VGG8,
            "vgg10" | "vgg13" => VGG13,
            "vgg16" => VGG16,
            "vgg19" => VGG19,
            "mlp" => &[],
            _ => return None,
        };
        let mut net = Net {
            layers: Vec::new(),
            names: Vec::new(),
        };
        let channels = net.convs(vs, arch, stack);
        if arch.name == "mlp" {
            let mut inputs: i64 = arch.input.iter().product();
            for &h in arch.hidden {
                let h = scaled(h, arch.width);
                net.dense(vs, arch, inputs, h, true, true);
                inputs = h;
            }
            net.dense(vs, arch, inputs, 10, false, false);
        } else {
            let hidden = scaled(FC_HIDDEN, arch.width);
            net.dense(vs, arch, channels, hidden, false, true);
            net.dense(vs, arch, hidden, hidden, false, true);
            net.dense(vs, arch, hidden, 10, false, false);
        }
        Some(net)
    }

    /// Appends the convolutions of `stack` (`None`: a max-pool), each with its BatchNorm if
    /// the net has them; returns the channels of the last.
    fn convs(&mut self, vs: &nn::Path<'_>, arch: &Arch<'_>, stack: &[Option<i64>]) -> i64 {
        let mut channels = arch.input[0];
        for entry in stack {
            match entry {
                None => self.layers.push(Layer::Pool),
                Some(c) => {
                    let i = self.names.len();
                    let out = scaled(*c, arch.width);
                    let cfg = nn::ConvConfig {
                        padding: 1,
                        bias: !arch.bn,
                        ws_init: nn::Init::Const(0.0),
                        bs_init: nn::Init::Const(0.0),
                        ..Default::default()
                    };
                    let conv = nn::conv2d(vs / format!("conv{i}"), channels, out, 3, cfg);
                    let bn = arch.bn.then(|| {
                        Box::new(nn::batch_norm2d(
                            vs / format!("bn_conv{i}"),
                            out,
                            bn_config(arch),
                        ))
                    });
                    self.layers.push(Layer::Conv { conv, bn });
                    self.names.push(format!("conv{i}"));
                    channels = out;
                }
            }
        }
        channels
    }

    /// Appends a fully connected layer, `normed` by BatchNorm if the net has it.
    fn dense(
        &mut self,
        vs: &nn::Path<'_>,
        arch: &Arch<'_>,
        inputs: i64,
        outputs: i64,
        normed: bool,
        relu: bool,
    ) {
        let name = format!(
            "fc{}",
            self.names.iter().filter(|n| n.starts_with("fc")).count()
        );
        let bn = (normed && arch.bn).then(|| {
            Box::new(nn::batch_norm1d(
                vs / format!("bn_{name}"),
                outputs,
                bn_config(arch),
            ))
        });
        let cfg = nn::LinearConfig {
            bias: !(normed && arch.bn),
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
        };
        let lin = nn::linear(vs / name.as_str(), inputs, outputs, cfg);
        self.layers.push(Layer::Dense {
            lin,
            bn,
            normed,
            relu,
        });
        self.names.push(name);
    }

    /// Names of the layers with weights, in forward order.
    pub fn layer_names(&self) -> &[String] {
        &self.names
    }

    /// The layers with weights, in forward order (handles to the live parameters).
    pub fn weight_layers(&self) -> Vec<WeightLayer> {
        let opt = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
        let bn_params = |bn: &Option<Box<nn::BatchNorm>>| -> Vec<Tensor> {
            bn.as_ref()
                .map(|b| [opt(&b.ws), opt(&b.bs)].into_iter().flatten().collect())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for layer in &self.layers {
            let (weight, bias, bn) = match layer {
                Layer::Pool => continue,
                Layer::Conv { conv, bn } => (&conv.ws, &conv.bs, bn),
                Layer::Dense { lin, bn, .. } => (&lin.ws, &lin.bs, bn),
            };
            let mut params = vec![weight.shallow_clone()];
            params.extend(opt(bias));
            params.extend(bn_params(bn));
            out.push(WeightLayer {
                name: self.names[out.len()].clone(),
                weight: weight.shallow_clone(),
                bias: opt(bias),
                params,
            });
        }
        out
    }

    /// Logits for a batch `[B, C, H, W]` (`[B, 3, 32, 32]` for a VGG). `noise` applies in training only. With `capture`,
    /// every weight layer's activations are kept (detached).
    pub fn forward(
        &self,
        x: &Tensor,
        train: bool,
        noise: Option<StepNoise>,
        mut capture: Option<&mut Vec<Capture>>,
    ) -> Tensor {
        let mut h = x.shallow_clone();
        let mut index = 0usize;
        let mut noisy_index = 0u64;
        for layer in &self.layers {
            let (z, bn, normed, relu) = match layer {
                Layer::Pool => {
                    h = h.max_pool2d_default(2);
                    continue;
                }
                Layer::Conv { conv, bn } => (h.apply(conv), bn, true, true),
                Layer::Dense {
                    lin,
                    bn,
                    normed,
                    relu,
                } => {
                    if h.dim() > 2 {
                        h = h.flatten(1, -1);
                    }
                    (h.apply(lin), bn, *normed, *relu)
                }
            };
            let mut out = match bn {
                Some(bn) => z.apply_t(bn.as_ref(), train),
                None => z.shallow_clone(),
            };
            // Noisy: where BatchNorm sits (or would), and a VGG head's hidden layers on request.
            let head = !normed && relu && noise.is_some_and(|n| n.options.head);
            if normed || head {
                if let (true, Some(n)) = (train, noise) {
                    out = add_noise(&out, n, noisy_index);
                }
                noisy_index += 1;
            }
            if relu {
                out = out.relu();
            }
            if let Some(c) = capture.as_deref_mut() {
                c.push(Capture {
                    layer: index,
                    pre: z.detach(),
                    post: out.detach(),
                });
            }
            index += 1;
            h = out;
        }
        h
    }
}

/// `s * z + m` with the draws of docs/training.md at level v (v = 1 is the paper's setting);
/// by default per layer and step mu ~ U(-v/2, v/2), sigma ~ U(1, 1 + v/4), and per element
/// m ~ U(mu - v/10, mu + v/10), s ~ N(sigma, (v/10)^2). The options draw mu and sigma per
/// channel, m and s per channel, or read v/10 as the variance of s. Channels are dimension 1
/// (conv maps `[B, C, H, W]`, linear outputs `[B, F]`).
pub fn add_noise(z: &Tensor, n: StepNoise, layer: u64) -> Tensor {
    if n.level == 0.0 {
        return z.shallow_clone();
    }
    let v = n.level;
    let o = n.options;
    let (device, size) = (z.device(), z.size());
    let channels = size[1];
    // A per-channel draw, shaped to broadcast along dimension 1.
    let mut per_channel = vec![1; size.len()];
    per_channel[1] = channels;
    let moments: &[i64] = if o.channel_moments {
        &[2, channels]
    } else {
        &[2]
    };
    let draws: &[i64] = if o.channel_draws { &[channels] } else { &size };
    let (u, m, s) = rng::seeded(n.seed, Stream::Noise as u64 + layer, n.step, || {
        (
            Tensor::rand(moments, (Kind::Float, device)),
            Tensor::rand(draws, (Kind::Float, device)),
            Tensor::randn(draws, (Kind::Float, device)),
        )
    });
    let along_channels = |t: Tensor, per_channel_draw: bool| {
        if per_channel_draw {
            t.view(per_channel.as_slice())
        } else {
            t
        }
    };
    let mu = along_channels((u.get(0) - 0.5) * v, o.channel_moments);
    let sigma = along_channels(u.get(1) * (0.25 * v) + 1.0, o.channel_moments);
    let spread = if o.spread_is_variance {
        (0.1 * v).sqrt()
    } else {
        0.1 * v
    };
    let m = along_channels((m * 2.0 - 1.0) * (0.1 * v), o.channel_draws) + mu;
    let s = along_channels(s * spread, o.channel_draws) + sigma;
    z * s + m
}

/// A model and its weights on one device.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Net,
}

impl Model {
    /// Builds a model with initial weights drawn from the trial's seed: each layer's weight
    /// and bias from a key of their own (the seed, the layer's index, which of the two), on
    /// the CPU, then moved to `device`. So the same seed gives the same weights on every
    /// device, and BatchNorm on or off changes no weight the two nets share.
    pub fn new(arch: &Arch<'_>, seed: u64, device: Device) -> Option<Model> {
        let vs = nn::VarStore::new(device);
        let net = Net::new(&vs.root(), arch)?;
        tch::no_grad(|| {
            for (i, layer) in net.weight_layers().iter_mut().enumerate() {
                let shape = layer.weight.size();
                let key = 2 * i as u64;
                let w = rng::seeded(seed, Stream::Init as u64, key, || arch.init.weight(&shape));
                layer.weight.copy_(&w);
                if let Some(bias) = layer.bias.as_mut() {
                    let b = rng::seeded(seed, Stream::Init as u64, key + 1, || {
                        arch.init.bias(&shape)
                    });
                    bias.copy_(&b);
                }
            }
        });
        Some(Model { vs, net })
    }
}

impl Model {
    /// Every variable (weights, BatchNorm parameters and running statistics) by name, in
    /// name order: handles to the live tensors.
    pub fn variables_by_name(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
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

    fn arch(name: &'static str, bn: bool) -> Arch<'static> {
        Arch {
            input: [3, 32, 32],
            name,
            width: 0.125,
            hidden: &[256, 128, 64],
            bn,
            init: Init::PyTorch,
            bn_momentum: 0.1,
        }
    }

    #[test]
    fn every_model_maps_cifar_batches_to_ten_logits() {
        let convs = [
            ("vgg8", 8),
            ("vgg10", 10),
            ("vgg11", 8),
            ("vgg13", 10),
            ("vgg16", 13),
            ("vgg19", 16),
            ("mlp", 0),
        ];
        for (name, n_conv) in convs {
            for bn in [true, false] {
                let m = Model::new(&arch(name, bn), 0, Device::Cpu).unwrap();
                let x = Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu));
                let mut caps = Vec::new();
                let noise = StepNoise {
                    level: 1.0,
                    seed: 0,
                    step: 1,
                    options: NoiseOptions::default(),
                };
                assert_eq!(
                    m.net.forward(&x, true, Some(noise), Some(&mut caps)).size(),
                    vec![4, 10],
                    "{name}"
                );
                let layers = m.net.weight_layers();
                let fcs = if name == "mlp" { 4 } else { 3 };
                assert_eq!(layers.len(), n_conv + fcs, "{name}");
                assert_eq!(caps.len(), layers.len(), "{name}");
                // Every parameter belongs to exactly one layer.
                let owned: usize = layers.iter().map(|l| l.params.len()).sum();
                assert_eq!(owned, m.vs.trainable_variables().len(), "{name} bn={bn}");
            }
        }
        assert!(Model::new(&arch("vgg99", true), 0, Device::Cpu).is_none());
        for name in MODELS {
            assert!(
                Model::new(&arch(name, true), 0, Device::Cpu).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_weights() {
        let a = Model::new(&arch("vgg8", true), 7, Device::Cpu).unwrap();
        let b = Model::new(&arch("vgg8", true), 7, Device::Cpu).unwrap();
        let c = Model::new(&arch("vgg8", true), 8, Device::Cpu).unwrap();
        let (va, vb, vc) = (a.vs.variables(), b.vs.variables(), c.vs.variables());
        let w = "conv0.weight";
        assert!(va[w].equal(&vb[w]));
        assert!(!va[w].equal(&vc[w]));
    }

    fn vars(m: &Model) -> std::collections::HashMap<String, Tensor> {
        m.vs.variables()
    }

    fn stat(t: &Tensor) -> (f64, f64, f64) {
        let t = t.to_kind(Kind::Double);
        (
            t.mean(Kind::Double).double_value(&[]),
            t.std(true).double_value(&[]),
            t.abs().max().double_value(&[]),
        )
    }

    #[test]
    fn every_init_scheme_draws_the_spread_of_its_formula() {
        // conv7 of vgg8 at width 1: a 512x512x3x3 kernel (2.4 million draws, so the sample
        // standard deviation is within 0.1 % of the true one), fan_in = fan_out = 4608.
        let fan = 4608.0f64;
        let uniform_sd = |bound: f64| bound / 3f64.sqrt();
        let cases = [
            (
                "pytorch",
                uniform_sd(1.0 / fan.sqrt()),
                Some(1.0 / fan.sqrt()),
            ),
            (
                "glorot_uniform",
                uniform_sd((6.0 / (2.0 * fan)).sqrt()),
                Some((6.0 / (2.0 * fan)).sqrt()),
            ),
            ("glorot_normal", (2.0 / (2.0 * fan)).sqrt(), None),
            (
                "kaiming_uniform",
                uniform_sd((6.0 / fan).sqrt()),
                Some((6.0 / fan).sqrt()),
            ),
            ("kaiming_normal", (2.0 / fan).sqrt(), None),
            // Truncated at two deviations of sqrt(1/fan)/0.8796: variance 1/fan.
            (
                "lecun_normal",
                (1.0 / fan).sqrt(),
                Some(2.0 * (1.0 / fan).sqrt() / TRUNCATED_STD),
            ),
        ];
        for (name, sd, bound) in cases {
            let init = Init::parse(name).unwrap();
            let a = Arch {
                width: 1.0,
                init,
                ..arch("vgg8", false)
            };
            let v = vars(&Model::new(&a, 0, Device::Cpu).unwrap());
            let w = &v["conv7.weight"];
            assert_eq!(w.size(), vec![512, 512, 3, 3]);
            let (mean, got, max) = stat(w);
            assert!((got / sd - 1.0).abs() < 0.01, "{name}: sd {got} vs {sd}");
            assert!(mean.abs() < 0.01 * sd, "{name}: mean {mean}");
            match bound {
                // Uniform draws reach their bound; truncated ones stop at it.
                Some(b) if name != "lecun_normal" => {
                    assert!(max <= b && max > 0.999 * b, "{name}: max {max} vs {b}")
                }
                Some(b) => assert!(max <= b * (1.0 + 1e-6) && max > 0.99 * b, "{name}: {max}"),
                // A normal's 2.4 million draws reach beyond 4.5 deviations.
                None => assert!(max > 4.5 * sd, "{name}: max {max}"),
            }
            let (_, bias_sd, bias_max) = stat(&v["conv7.bias"]);
            if init == Init::PyTorch {
                // 512 draws of U(-b, b): the sample deviation within 15 %.
                let b = 1.0 / fan.sqrt();
                assert!(bias_max <= b && (bias_sd / uniform_sd(b) - 1.0).abs() < 0.15);
            } else {
                assert_eq!((bias_sd, bias_max), (0.0, 0.0), "{name}: biases start at 0");
            }
            // Linear layers: fc0 maps 512 -> 512 at width 1.
            let (_, fc_sd, _) = stat(&v["fc0.weight"]);
            let fc_expected = sd * (fan / 512.0).sqrt();
            assert!(
                (fc_sd / fc_expected - 1.0).abs() < 0.03,
                "{name}: fc0 sd {fc_sd}"
            );
        }
        assert!(Init::parse("xavier").is_none());
    }

    #[test]
    fn batchnorm_starts_at_scale_one_and_keeps_pytorch_momentum() {
        let a = Arch {
            bn_momentum: 0.3,
            ..arch("mlp", true)
        };
        let m = Model::new(&a, 0, Device::Cpu).unwrap();
        let v = vars(&m);
        for (name, t) in &v {
            let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
            let expected = match name.rsplit('.').next().unwrap() {
                "weight" | "running_var" if name.starts_with("bn_") => 1.0,
                "bias" | "running_mean" if name.starts_with("bn_") => 0.0,
                _ => continue,
            };
            assert_eq!((lo, hi), (expected, expected), "{name}");
        }
        // One training pass: running_mean = (1 - 0.3) x 0 + 0.3 x the batch mean.
        let x = rng::seeded(0, 9, 0, || {
            Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu))
        });
        let mut caps = Vec::new();
        let _ = m.net.forward(&x, true, None, Some(&mut caps));
        let batch_mean = caps[0].pre.mean_dim(0, false, Kind::Float);
        let running = &vars(&m)["bn_fc0.running_mean"];
        assert!(running.allclose(&(batch_mean * 0.3), 1e-5, 1e-6, false));
    }

    #[test]
    fn batchnorm_on_and_off_start_from_the_same_weights() {
        for name in ["vgg8", "mlp"] {
            let on = vars(&Model::new(&arch(name, true), 11, Device::Cpu).unwrap());
            let off = vars(&Model::new(&arch(name, false), 11, Device::Cpu).unwrap());
            let mut shared = 0;
            for (key, t) in &off {
                if let Some(u) = on.get(key) {
                    assert!(t.equal(u), "{name}: {key} differs with BatchNorm on");
                    shared += 1;
                } else {
                    // Only the biases a BatchNorm replaces are missing.
                    assert!(key.ends_with(".bias"), "{name}: {key}");
                }
            }
            let layers = if name == "mlp" { 4 } else { 11 };
            assert!(shared >= layers, "{name}: {shared} shared tensors");
            // And another seed, other weights.
            let other = vars(&Model::new(&arch(name, false), 12, Device::Cpu).unwrap());
            assert!(!other["fc0.weight"].equal(&off["fc0.weight"]));
        }
    }

    #[test]
    fn a_gpu_starts_from_the_cpu_weights() {
        if !tch::Cuda::is_available() {
            // The draws are made on the CPU whatever the device (Model::new), so the CPU
            // build has nothing to compare; this runs where libtorch sees a GPU.
            eprintln!("no CUDA device: only the CPU side is checked");
            let a = Model::new(&arch("vgg8", true), 3, Device::Cpu).unwrap();
            assert_eq!(a.vs.device(), Device::Cpu);
            return;
        }
        let cpu = vars(&Model::new(&arch("vgg8", false), 3, Device::Cpu).unwrap());
        let gpu = vars(&Model::new(&arch("vgg8", false), 3, Device::Cuda(0)).unwrap());
        for (key, t) in &cpu {
            assert!(t.equal(&gpu[key].to_device(Device::Cpu)), "{key}");
        }
    }

    #[test]
    fn noise_follows_the_definition_at_level_one() {
        let z = Tensor::zeros([64, 8, 16, 16], (Kind::Float, Device::Cpu));
        let ones = Tensor::ones([64, 8, 16, 16], (Kind::Float, Device::Cpu));
        let n = StepNoise {
            level: 1.0,
            seed: 3,
            step: 5,
            options: NoiseOptions::default(),
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

    /// m and s of a draw: with z = 0 the output is m, with z = 1 it is s + m.
    fn m_and_s(shape: &[i64], n: StepNoise) -> (Tensor, Tensor) {
        let z = Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let m = add_noise(&z, n, 2);
        let s = add_noise(&z.ones_like(), n, 2) - &m;
        (m, s)
    }

    fn at(level: f64, options: NoiseOptions) -> StepNoise {
        StepNoise {
            level,
            seed: 9,
            step: 4,
            options,
        }
    }

    fn range(t: &Tensor) -> f64 {
        t.max().double_value(&[]) - t.min().double_value(&[])
    }

    fn value(t: Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn noise_ranges_scale_with_the_level_as_documented() {
        let shape = [64, 8, 16, 16];
        for v in [0.5, 2.0] {
            for variance in [false, true] {
                let options = NoiseOptions {
                    spread_is_variance: variance,
                    ..NoiseOptions::default()
                };
                let (m, s) = m_and_s(&shape, at(v, options));
                // m ~ U(mu - v/10, mu + v/10) with mu in [-v/2, v/2]: 131,072 draws fill it.
                let r = range(&m);
                assert!(r <= 0.2 * v + 1e-5 && r > 0.19 * v, "v {v}: m spans {r}");
                let mu = value(m.mean(Kind::Float));
                assert!(mu.abs() <= 0.5 * v + 1e-3, "v {v}: mu {mu}");
                // s ~ N(sigma, spread^2), sigma in [1, 1 + v/4].
                let sigma = value(s.mean(Kind::Float));
                assert!(
                    (1.0 - 1e-3..=1.0 + 0.25 * v + 1e-3).contains(&sigma),
                    "{sigma}"
                );
                let sd = value(s.std(true));
                let spread = if variance { (0.1 * v).sqrt() } else { 0.1 * v };
                assert!(
                    (sd / spread - 1.0).abs() < 0.02,
                    "v {v}: s sd {sd}, want {spread}"
                );
            }
        }
    }

    #[test]
    fn noise_options_draw_per_channel_where_asked() {
        // 512 channels of 256 elements each, on conv maps and on linear outputs.
        for shape in [vec![64i64, 512, 2, 2], vec![256, 512]] {
            for v in [0.5, 2.0] {
                let per_channel = |t: &Tensor| {
                    let dims: Vec<i64> = (0..shape.len() as i64).filter(|&d| d != 1).collect();
                    (
                        t.amin(dims.as_slice(), false),
                        t.amax(dims.as_slice(), false),
                        t.mean_dim(dims.as_slice(), false, Kind::Float),
                    )
                };
                // One draw of m and s per channel: constant within a channel.
                let draws = NoiseOptions {
                    channel_draws: true,
                    ..NoiseOptions::default()
                };
                let (m, s) = m_and_s(&shape, at(v, draws));
                for t in [&m, &s] {
                    let (lo, hi, _) = per_channel(t);
                    assert!(lo.equal(&hi), "{shape:?}: varies within a channel");
                }
                let (_, _, sc) = per_channel(&s);
                let r = range(&m);
                assert!(
                    r <= 0.2 * v + 1e-5 && r > 0.18 * v,
                    "{shape:?} v {v}: m spans {r}"
                );
                let sd = value(sc.std(true));
                assert!(
                    (sd / (0.1 * v) - 1.0).abs() < 0.15,
                    "{shape:?} v {v}: s sd {sd}"
                );
                // mu and sigma per channel: the channels' means spread over [-v/2, v/2] and
                // [1, 1 + v/4]; once per layer they would all sit within v/10 of one value.
                let moments = NoiseOptions {
                    channel_moments: true,
                    ..NoiseOptions::default()
                };
                let (m, s) = m_and_s(&shape, at(v, moments));
                let ((_, _, mc), (_, _, sc)) = (per_channel(&m), per_channel(&s));
                assert!(range(&mc) > 0.9 * v && range(&mc) <= v, "{}", range(&mc));
                assert!(range(&sc) > 0.2 * v && value(sc.min()) > 1.0 - 0.05 * v);
                let (layer_m, _) = m_and_s(&shape, at(v, NoiseOptions::default()));
                assert!(range(&per_channel(&layer_m).2) < 0.05 * v);
            }
        }
    }

    /// The noise sits before the ReLU: after BatchNorm when it is on, after the conv or linear
    /// map when it is off; in a VGG head's hidden layers only with `head`.
    #[test]
    fn noise_sits_where_batchnorm_sits_and_in_the_head_on_request() {
        for bn in [false, true] {
            for head in [false, true] {
                let m = Model::new(&arch("vgg8", bn), 1, Device::Cpu).unwrap();
                let x = rng::seeded(4, 0, 0, || {
                    Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu))
                });
                let n = at(
                    2.0,
                    NoiseOptions {
                        head,
                        ..NoiseOptions::default()
                    },
                );
                let mut caps = Vec::new();
                let _logits = m.net.forward(&x, true, Some(n), Some(&mut caps));
                let mut noisy = 0;
                for (i, c) in caps.iter().enumerate() {
                    let name = &m.net.layer_names()[i];
                    let conv = name.starts_with("conv");
                    let last = i == caps.len() - 1;
                    let expected = if last {
                        c.pre.shallow_clone()
                    } else if conv || head {
                        // BatchNorm in training mode at its initial scale 1 and shift 0.
                        let z = if bn && conv {
                            let dims = [0i64, 2, 3];
                            let mean = c.pre.mean_dim(dims.as_slice(), true, Kind::Float);
                            let var = c.pre.var_dim(dims.as_slice(), false, true);
                            (&c.pre - mean) / (var + 1e-5).sqrt()
                        } else {
                            c.pre.shallow_clone()
                        };
                        noisy += 1;
                        add_noise(&z, n, noisy - 1).relu()
                    } else {
                        c.pre.relu()
                    };
                    assert!(
                        c.post.allclose(&expected, 1e-4, 1e-4, false),
                        "bn {bn} head {head}: {name}"
                    );
                }
                assert_eq!(noisy, if head { 10 } else { 8 });
            }
        }
    }
}
