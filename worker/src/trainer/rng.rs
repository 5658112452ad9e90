//! Reproducible randomness for trials that share a process.
//!
//! libtorch draws from one global generator per device. Each random draw of a trial (its
//! initial weights, its augmentation, its noise) therefore happens under a process-wide lock,
//! with the generator reseeded from the trial's seed and the draw's own key first. A draw then
//! depends only on (seed, stream, step), never on what other trials in the process do.

use std::sync::Mutex;

static GENERATOR: Mutex<()> = Mutex::new(());

/// Independent streams of randomness within a trial.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Init = 1,
    Augment = 2,
    /// Noise of layer `n` is stream `Noise as u64 + n`.
    Noise = 1000,
    /// The activation sample of layer `i` is stream `Sample as u64 + i` (drawn on the host
    /// from the key, not from libtorch's generator).
    Sample = 2000,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from a key.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed for one draw.
pub fn key(seed: u64, stream: u64, step: u64) -> u64 {
    mix(mix(mix(seed) ^ stream) ^ step)
}

/// Runs `draw` with libtorch's generators seeded for (seed, stream, step).
pub fn seeded<T>(seed: u64, stream: u64, step: u64, draw: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    // Positive i64 seeds keep libtorch's CPU and CUDA generators on the same footing.
    tch::manual_seed((key(seed, stream, step) >> 1) as i64);
    draw()
}
