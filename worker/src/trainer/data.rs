//! Datasets: CIFAR-10 in its official binary layout, MNIST in its official idx files, and a
//! synthetic CIFAR-shaped set generated from a seed. Each becomes uint8 images `[N, C, H, W]`
//! (`[N, 3, 32, 32]`, MNIST `[N, 1, 28, 28]`) and int64 labels on the training device;
//! batches are drawn, augmented and normalised there.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

use super::rng::{self, Stream};

/// Bytes of one CIFAR-10 record: a label byte, then 1024 red, 1024 green, 1024 blue bytes.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// Records in each CIFAR-10 binary file.
pub const PER_FILE: usize = 10_000;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";

/// The shape of one CIFAR-10 (and synthetic) image: channels, height, width.
pub const CIFAR_SHAPE: [usize; 3] = [3, 32, 32];
/// One MNIST image.
pub const MNIST_SHAPE: [usize; 3] = [1, 28, 28];
/// MNIST's idx files, uncompressed: training images and labels, test images and labels.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Images and labels on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSplit {
    /// `n * C * H * W` bytes, channel-planar per image.
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    /// C, H, W of every image.
    pub shape: [usize; 3],
}

impl HostSplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn push_record(&mut self, record: &[u8]) {
        self.labels.push(i64::from(record[0]));
        self.images.extend_from_slice(&record[1..]);
    }
}

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads the first `limit` records (0 = all) of CIFAR-10 binary files, in order. A missing
/// file or one that is not exactly 10,000 records is an error naming it.
pub fn read_cifar_files(dir: &Path, files: &[&str], limit: usize) -> Result<HostSplit> {
    let total = files.len() * PER_FILE;
    let want = if limit == 0 { total } else { limit.min(total) };
    let mut split = HostSplit {
        images: Vec::with_capacity(want * (RECORD - 1)),
        labels: Vec::with_capacity(want),
        shape: CIFAR_SHAPE,
    };
    if !dir.is_dir() {
        return Err(data_error(
            dir,
            "no such directory (the CIFAR-10 binary release, cifar-10-batches-bin)",
        ));
    }
    for file in files {
        if split.len() >= want {
            break;
        }
        let path: PathBuf = dir.join(file);
        let bytes =
            std::fs::read(&path).map_err(|e| data_error(&path, format!("cannot read: {e}")))?;
        if bytes.len() != PER_FILE * RECORD {
            return Err(data_error(
                &path,
                format!(
                    "{} bytes; a CIFAR-10 binary file has {} ({} records of {RECORD} bytes)",
                    bytes.len(),
                    PER_FILE * RECORD,
                    PER_FILE
                ),
            ));
        }
        for record in bytes.chunks_exact(RECORD).take(want - split.len()) {
            if record[0] > 9 {
                return Err(data_error(
                    &path,
                    format!("label {} is not a CIFAR-10 class (0-9)", record[0]),
                ));
            }
            split.push_record(record);
        }
    }
    Ok(split)
}

/// Reads an MNIST idx file (`name`, or `name.gz` when only that is there) and checks its
/// magic number: 0x803 for images (then count, rows, columns), 0x801 for labels (then count).
fn read_idx(dir: &Path, name: &str, images: bool) -> Result<(PathBuf, Vec<usize>, Vec<u8>)> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let (path, bytes) = if raw.is_file() || !gz.is_file() {
        let bytes =
            std::fs::read(&raw).map_err(|e| data_error(&raw, format!("cannot read: {e}")))?;
        (raw, bytes)
    } else {
        let mut bytes = Vec::new();
        std::fs::File::open(&gz)
            .and_then(|f| {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(f), &mut bytes)
            })
            .map_err(|e| data_error(&gz, format!("cannot read: {e}")))?;
        (gz, bytes)
    };
    let word = |i: usize| -> Option<usize> {
        let b = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (magic, dims) = if images { (0x803, 3) } else { (0x801, 1) };
    if word(0) != Some(magic) {
        return Err(data_error(
            &path,
            format!(
                "not an MNIST idx {} file (magic number {magic:#x})",
                if images { "image" } else { "label" }
            ),
        ));
    }
    let shape: Vec<usize> = (1..=dims).map(|i| word(i).unwrap_or(0)).collect();
    let body = 4 * (dims + 1);
    let want = shape.iter().product::<usize>();
    if bytes.len() != body + want {
        return Err(data_error(
            &path,
            format!(
                "{} bytes; its header {shape:?} promises {}",
                bytes.len(),
                body + want
            ),
        ));
    }
    Ok((path, shape, bytes[body..].to_vec()))
}

/// The first `limit` images (0 = all) of an MNIST split: `train` or `t10k` idx files.
pub fn read_mnist(dir: &Path, images: &str, labels: &str, limit: usize) -> Result<HostSplit> {
    if !dir.is_dir() {
        return Err(data_error(
            dir,
            "no such directory (MNIST's four idx files)",
        ));
    }
    let (ipath, ishape, pixels) = read_idx(dir, images, true)?;
    let (lpath, lshape, label_bytes) = read_idx(dir, labels, false)?;
    if ishape[1..] != MNIST_SHAPE[1..] {
        return Err(data_error(
            &ipath,
            format!("images of {}x{}, not 28x28", ishape[1], ishape[2]),
        ));
    }
    if lshape[0] != ishape[0] {
        return Err(data_error(
            &lpath,
            format!(
                "{} labels for {} images in {}",
                lshape[0],
                ishape[0],
                ipath.display()
            ),
        ));
    }
    if let Some(bad) = label_bytes.iter().find(|&&l| l > 9) {
        return Err(data_error(
            &lpath,
            format!("label {bad} is not a digit (0-9)"),
        ));
    }
    let n = if limit == 0 {
        ishape[0]
    } else {
        limit.min(ishape[0])
    };
    Ok(HostSplit {
        images: pixels[..n * 784].to_vec(),
        labels: label_bytes[..n].iter().map(|&l| i64::from(l)).collect(),
        shape: MNIST_SHAPE,
    })
}

/// A deterministic, learnable CIFAR-shaped set: each class is a smooth colour pattern; each
/// image is its class's pattern, shifted, dimmed or brightened, under pixel noise.
pub fn synthetic(seed: u64, train: usize, test: usize) -> (HostSplit, HostSplit) {
    let mut rng = ChaCha8Rng::seed_from_u64(rng::mix(seed));
    // Per class and channel: two plane waves with random direction and phase.
    let waves: Vec<[(f32, f32, f32, f32); 2]> = (0..30)
        .map(|_| {
            std::array::from_fn(|_| {
                (
                    rng.gen_range(-0.6..0.6f32),
                    rng.gen_range(-0.6..0.6f32),
                    rng.gen_range(0.0..std::f32::consts::TAU),
                    rng.gen_range(10.0..22.0f32),
                )
            })
        })
        .collect();
    let mut make = |n: usize| {
        let mut split = HostSplit {
            images: Vec::with_capacity(n * 3072),
            labels: Vec::with_capacity(n),
            shape: CIFAR_SHAPE,
        };
        for _ in 0..n {
            let class = rng.gen_range(0..10usize);
            let (dx, dy) = (rng.gen_range(-4.0..4.0f32), rng.gen_range(-4.0..4.0f32));
            let gain = rng.gen_range(0.6..1.2f32);
            let offset = rng.gen_range(-30.0..30.0f32);
            for c in 0..3 {
                let w = &waves[class * 3 + c];
                for y in 0..32 {
                    for x in 0..32 {
                        let (fx, fy) = (x as f32 + dx, y as f32 + dy);
                        let signal: f32 = w
                            .iter()
                            .map(|(kx, ky, ph, amp)| amp * (kx * fx + ky * fy + ph).sin())
                            .sum();
                        let noise: f32 =
                            (rng.gen::<f32>() + rng.gen::<f32>() + rng.gen::<f32>() - 1.5) * 90.0;
                        split
                            .images
                            .push((128.0 + offset + gain * signal + noise).clamp(0.0, 255.0) as u8);
                    }
                }
            }
            split.labels.push(class as i64);
        }
        split
    };
    let train_split = make(train);
    let test_split = make(test);
    (train_split, test_split)
}

/// A split on the training device.
pub struct DeviceSplit {
    /// `[N, C, H, W]` uint8.
    pub images: Tensor,
    /// `[N]` int64.
    pub labels: Tensor,
    pub len: i64,
}

impl DeviceSplit {
    pub fn new(host: &HostSplit, device: Device) -> DeviceSplit {
        let n = host.len() as i64;
        let [c, h, w] = host.shape.map(|d| d as i64);
        DeviceSplit {
            images: Tensor::from_slice(&host.images)
                .view([n, c, h, w])
                .to_device(device),
            labels: Tensor::from_slice(&host.labels).to_device(device),
            len: n,
        }
    }
}

/// Per-channel mean and standard deviation of the training images, in pixel units.
pub fn channel_stats(train: &HostSplit) -> (Vec<f64>, Vec<f64>) {
    let [channels, h, w] = train.shape;
    let plane = h * w;
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    for image in train.images.chunks_exact(channels * plane) {
        for c in 0..channels {
            for &p in &image[c * plane..(c + 1) * plane] {
                let p = f64::from(p);
                sum[c] += p;
                sq[c] += p * p;
            }
        }
    }
    let n = (train.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = (0..channels)
        .map(|c| (sq[c] / n - mean[c] * mean[c]).max(1e-6).sqrt())
        .collect();
    (mean, std)
}

/// Turns uint8 images into normalised floats.
pub struct Normalizer {
    mean: Tensor,
    std: Tensor,
}

impl Normalizer {
    pub fn new(mean: &[f64], std: &[f64], device: Device) -> Normalizer {
        let t = |v: &[f64]| {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::from_slice(&v)
                .view([1, v.len() as i64, 1, 1])
                .to_device(device)
        };
        Normalizer {
            mean: t(mean),
            std: t(std),
        }
    }

    pub fn apply(&self, images_u8: &Tensor) -> Tensor {
        (images_u8.to_kind(Kind::Float) - &self.mean) / &self.std
    }
}

/// Random crop of a 4-pixel zero-padded image and a random horizontal flip, per image,
/// drawn on the images' device from the trial's seed and step.
pub fn augment(images_u8: &Tensor, seed: u64, step: u64) -> Tensor {
    let device = images_u8.device();
    let b = images_u8.size()[0];
    let (dx, dy, flip) = rng::seeded(seed, Stream::Augment as u64, step, || {
        (
            Tensor::randint(9, [b, 1], (Kind::Int64, device)),
            Tensor::randint(9, [b, 1], (Kind::Int64, device)),
            Tensor::randint(2, [b, 1], (Kind::Int64, device)),
        )
    });
    let padded = images_u8.constant_pad_nd([4, 4, 4, 4]);
    let j = Tensor::arange(32, (Kind::Int64, device)).view([1, 32]);
    let rows = (&dy + &j).view([b, 1, 32, 1]);
    // A flipped image reads its columns right to left.
    let cols = (&dx + &flip * (&j * -2 + 31) + &j).view([b, 1, 1, 32]);
    let batch = Tensor::arange(b, (Kind::Int64, device)).view([b, 1, 1, 1]);
    let channel = Tensor::arange(3, (Kind::Int64, device)).view([1, 3, 1, 1]);
    padded.index(&[Some(batch), Some(channel), Some(rows), Some(cols)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cifar(dir: &Path, name: &str, records: usize, label: u8) {
        let mut bytes = Vec::new();
        for i in 0..records {
            bytes.push(label);
            bytes.extend((0..3072).map(|p| ((p + i) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn cifar_reader_takes_records_in_order_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        write_cifar(dir.path(), "a.bin", PER_FILE, 3);
        write_cifar(dir.path(), "b.bin", PER_FILE, 7);
        let split = read_cifar_files(dir.path(), &["a.bin", "b.bin"], 10_005).unwrap();
        assert_eq!(split.len(), 10_005);
        assert_eq!(split.labels[9_999], 3);
        assert_eq!(split.labels[10_000], 7);
        assert_eq!(&split.images[3072..3075], &[1, 2, 3]);

        write_cifar(dir.path(), "short.bin", 10, 1);
        let err = read_cifar_files(dir.path(), &["short.bin"], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("short.bin") && err.contains("30730 bytes"),
            "{err}"
        );
        let err = read_cifar_files(dir.path(), &["missing.bin"], 0).unwrap_err();
        assert!(err.to_string().contains("missing.bin"), "{err}");
        assert!(!err.retryable());
    }

    /// Writes MNIST-layout idx files with `n` images whose pixels encode their index.
    fn write_mnist(dir: &Path, prefix: &str, n: u32, gz: bool) {
        let mut images = [0x803u32, n, 28, 28].map(u32::to_be_bytes).concat();
        images.extend((0..n * 784).map(|p| (p / 784 % 256) as u8));
        let mut labels = [0x801u32, n].map(u32::to_be_bytes).concat();
        labels.extend((0..n).map(|i| (i % 10) as u8));
        for (name, bytes) in [("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)] {
            let path = dir.join(format!("{prefix}-{name}"));
            if gz {
                let f = std::fs::File::create(path.with_extension("gz")).unwrap();
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                std::io::Write::write_all(&mut enc, &bytes).unwrap();
                enc.finish().unwrap();
            } else {
                std::fs::write(path, bytes).unwrap();
            }
        }
    }

    #[test]
    fn mnist_reader_takes_idx_files_raw_or_gzipped_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), "train", 30, false);
        write_mnist(dir.path(), "t10k", 12, true);
        let train = read_mnist(dir.path(), MNIST_FILES[0], MNIST_FILES[1], 25).unwrap();
        assert_eq!(
            (train.len(), train.shape, train.images.len()),
            (25, MNIST_SHAPE, 25 * 784)
        );
        assert_eq!((train.labels[13], train.images[13 * 784]), (3, 13));
        let test = read_mnist(dir.path(), MNIST_FILES[2], MNIST_FILES[3], 0).unwrap();
        assert_eq!((test.len(), test.labels[11]), (12, 1));
        // A CIFAR file under an MNIST name, and a truncated one, are named.
        write_cifar(dir.path(), "t10k-images-idx3-ubyte", 1, 0);
        let err = read_mnist(dir.path(), MNIST_FILES[2], MNIST_FILES[3], 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("t10k-images-idx3-ubyte: not an MNIST"),
            "{err}"
        );
        let path = dir.path().join(MNIST_FILES[0]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_mnist(dir.path(), MNIST_FILES[0], MNIST_FILES[1], 0).unwrap_err();
        assert!(err.to_string().contains("promises"), "{err}");
        assert!(!err.retryable());
    }

    #[test]
    fn synthetic_data_is_deterministic_and_balanced_enough() {
        let (a, t) = synthetic(1, 500, 100);
        let (b, _) = synthetic(1, 500, 100);
        let (c, _) = synthetic(2, 500, 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!((a.len(), t.len(), a.images.len()), (500, 100, 500 * 3072));
        for class in 0..10 {
            let count = a.labels.iter().filter(|&&l| l == class).count();
            assert!(count > 20, "class {class}: {count}");
        }
    }

    #[test]
    fn augmentation_crops_and_flips_within_the_padding() {
        let host = HostSplit {
            images: (0..2 * 3072).map(|p| (p % 251) as u8 + 1).collect(),
            labels: vec![0, 1],
            shape: CIFAR_SHAPE,
        };
        let split = DeviceSplit::new(&host, Device::Cpu);
        let out = augment(&split.images, 0, 0);
        assert_eq!(out.size(), vec![2, 3, 32, 32]);
        assert!(
            augment(&split.images, 0, 0).equal(&out),
            "same key, same crop"
        );
        // Every output row is a (possibly flipped) window of the padded row: zeros only where
        // the padding shows, and pixel values taken from the same image and channel.
        let padded = split.images.constant_pad_nd([4, 4, 4, 4]);
        for b in 0..2 {
            for c in 0..3 {
                let src: Vec<u8> = Vec::try_from(padded.get(b).get(c).flatten(0, -1)).unwrap();
                let got: Vec<u8> = Vec::try_from(out.get(b).get(c).flatten(0, -1)).unwrap();
                assert!(got.iter().all(|v| src.contains(v)));
            }
        }
    }
}
