//! Opt-in faster kernels: automatic mixed precision (autocast) and the channels-last memory
//! layout. The paper's protocol is exact fp32 in the default layout; these change only how the
//! training steps compute, never the measurements (which always run in fp32).
//!
//! tch 0.24 turns autocast on for CUDA in fp16 only, so the worker calls libtorch's own
//! `at::autocast` functions, which take the device type and the lower precision. tch has no
//! memory-format API either: permuting to NHWC, making that contiguous and permuting back gives
//! a tensor of the same shape with channels-last strides, which convolutions then keep.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// What a sweep's `precision` asks of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Exact fp32 (cuDNN's default TF32 convolutions on GPUs that have them).
    Fp32,
    /// bf16 autocast: fp32's range, no loss scaling needed.
    Bf16,
    /// fp16 autocast, with a dynamic loss scale.
    Fp16,
}

impl Precision {
    /// The trial spec's text (empty is fp32).
    pub fn parse(text: &str) -> Result<Precision> {
        match text {
            "" | "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(Error::Unsupported(format!("precision `{other}`"))),
        }
    }

    fn kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }
}

// c10::DeviceType and c10::ScalarType values (c10/core/DeviceType.h, ScalarType.h).
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

// libtorch 2.11's `at::autocast` (ATen/autocast_mode.h). The enums are one-byte `enum class`es,
// passed as integers.
unsafe extern "C" {
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_autocast_clear_cache();
}

fn device_type(device: Device) -> i8 {
    if device.is_cuda() {
        DEVICE_CUDA
    } else {
        DEVICE_CPU
    }
}

/// Runs `f` with autocast to `precision` on `device` (plain fp32 for [`Precision::Fp32`]).
/// Autocast regions do not nest here; the cast weights are dropped at the end, since the
/// optimizer changes the weights before the next region.
pub fn autocast<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    let Some(kind) = precision.kind() else {
        return f();
    };
    let dt = device_type(device);
    let scalar = if kind == Kind::Half {
        SCALAR_HALF
    } else {
        SCALAR_BFLOAT16
    };
    // SAFETY: libtorch's thread-local autocast state, set and restored on this thread.
    unsafe {
        at_set_autocast_dtype(dt, scalar);
        at_set_autocast_enabled(dt, true);
    }
    struct Restore(i8);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: as above; runs even if `f` panics.
            unsafe {
                at_set_autocast_enabled(self.0, false);
                at_autocast_clear_cache();
            }
        }
    }
    let _restore = Restore(dt);
    f()
}

/// Whether autocast is on for `device` on this thread.
pub fn autocast_enabled(device: Device) -> bool {
    // SAFETY: reads libtorch's thread-local state.
    unsafe { at_is_autocast_enabled(device_type(device)) }
}

/// The same values with channels-last strides (4-D tensors; others are returned as they are).
pub fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Lays every 4-D weight of `vs` out channels-last, in place (the optimizer's handles follow).
pub fn weights_channels_last(vs: &tch::nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let laid = channels_last(&v);
                v.set_data(&laid);
            }
        }
    });
}

/// True when a 4-D tensor is laid out channels-last.
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    size.len() == 4 && stride[1] == 1 && stride[3] == size[1] && stride[2] == size[1] * size[3]
}

/// fp16's dynamic loss scale, as PyTorch's GradScaler keeps it: the loss is multiplied by the
/// scale before the backward pass and the gradients divided by it after; a step whose
/// gradients overflowed is skipped and the scale halved; after `GROWTH_EVERY` clean steps in a
/// row it doubles. Deciding to skip reads one number back from the device per step.
#[derive(Debug, Clone)]
pub struct LossScale {
    pub scale: f64,
    clean: u32,
}

impl LossScale {
    pub const START: f64 = 65536.0;
    pub const GROWTH_EVERY: u32 = 2000;

    pub fn new() -> LossScale {
        LossScale {
            scale: Self::START,
            clean: 0,
        }
    }

    /// Divides the gradients by the scale; returns false (and halves the scale) when any is
    /// not finite, in which case the step must be skipped.
    pub fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut bad = Vec::with_capacity(grads.len());
        tch::no_grad(|| {
            for g in grads.iter().filter(|g| g.defined()) {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(inv);
                bad.push(g.isfinite().logical_not().any());
            }
        });
        let overflow = !bad.is_empty() && Tensor::stack(&bad, 0).any().int64_value(&[]) != 0;
        if overflow {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean = 0;
        } else {
            self.clean += 1;
            if self.clean >= Self::GROWTH_EVERY {
                self.scale *= 2.0;
                self.clean = 0;
            }
        }
        !overflow
    }
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::rng;

    /// Test tensors, drawn under the trials' generator lock so that they never move another
    /// test's seeded draws (libtorch's generator is one per process).
    fn randn(shape: &[i64]) -> Tensor {
        rng::seeded(0, 7, shape.iter().product::<i64>() as u64, || {
            Tensor::randn(shape, (Kind::Float, Device::Cpu))
        })
    }

    #[test]
    fn autocast_lowers_convolutions_only_inside_and_only_when_asked() {
        let x = randn(&[2, 3, 8, 8]);
        let w = randn(&[4, 3, 3, 3]);
        let conv = || x.conv2d(&w, None::<Tensor>, [1], [1], [1], 1);
        assert_eq!(conv().kind(), Kind::Float);
        for (p, kind) in [
            (Precision::Fp32, Kind::Float),
            (Precision::Bf16, Kind::BFloat16),
            (Precision::Fp16, Kind::Half),
        ] {
            let (k, on) = autocast(Device::Cpu, p, || {
                (conv().kind(), autocast_enabled(Device::Cpu))
            });
            assert_eq!((k, on), (kind, p != Precision::Fp32), "{p:?}");
        }
        assert!(!autocast_enabled(Device::Cpu));
        assert_eq!(conv().kind(), Kind::Float);
        assert!(Precision::parse("fp8").is_err());
        assert_eq!(Precision::parse("").unwrap(), Precision::Fp32);
    }

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let x = randn(&[2, 3, 4, 5]);
        let y = channels_last(&x);
        assert!(x.equal(&y) && !is_channels_last(&x) && is_channels_last(&y));
        assert_eq!(y.stride(), vec![60, 1, 15, 3]);
        let w = randn(&[4, 3, 3, 3]);
        let out = y.conv2d(&channels_last(&w), None::<Tensor>, [1], [1], [1], 1);
        assert!(is_channels_last(&out), "convolutions keep the layout");
        // Other kernels, the same 27 products per output summed in another order: a few ulps
        // (about 1e-6 relative); 1e-4 holds on any CPU, a moved value does not.
        assert!(out.allclose(
            &x.conv2d(&w, None::<Tensor>, [1], [1], [1], 1),
            1e-4,
            1e-4,
            false
        ));
    }

    #[test]
    fn the_loss_scale_skips_overflowing_steps_and_grows_after_clean_ones() {
        let mut s = LossScale::new();
        let g = Tensor::from_slice(&[65536.0f32, -131072.0]);
        assert!(s.unscale(&[g.shallow_clone()]));
        assert_eq!(
            Vec::<f32>::try_from(&g).unwrap(),
            vec![1.0, -2.0],
            "unscaled in place"
        );
        let inf = Tensor::from_slice(&[f32::INFINITY, 1.0]);
        assert!(!s.unscale(&[inf]));
        assert_eq!(s.scale, LossScale::START / 2.0);
        for _ in 0..LossScale::GROWTH_EVERY {
            assert!(s.unscale(&[Tensor::from_slice(&[1.0f32])]));
        }
        assert_eq!(s.scale, LossScale::START);
    }
}
