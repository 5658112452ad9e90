//! `bnsweep run`: a coordinator on loopback and two real worker processes, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

use bnsweep_e2e::{bnsweep, check_results, cifar_dir};

const TINY: &str = "\
name: tiny
seeds: [0, 1]
parameters:
  lr: [0.05, 0.2]
  bn: [true, false]
  noise: [0.0, 1.0]
measure:
  every: 10
  ics: true
  landscape: true
  activations: {layers: [0, 10], bins: 16}
  weights: true
train:
  model: {name: vgg8, width: 0.125}
  dataset: {name: synthetic, train_size: 256, test_size: 64, augment: true}
  batch_size: 32
  steps: 40
  eval_every: 15
  optimizer: {name: sgd, momentum: 0.9}
";

/// What `tests/read_results.py` checks of TINY's results.
const TINY_CHECKS: [&str; 12] = [
    "--trials",
    "16",
    "--steps",
    "40",
    "--eval-every",
    "15",
    "--measure-every",
    "10",
    "--act-layers",
    "2",
    "--bins",
    "16",
];

#[test]
fn a_sweep_runs_on_two_workers_into_parquet_that_every_reader_opens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.yaml"), TINY).unwrap();
    let ran = bnsweep(
        dir.path(),
        &[
            "run",
            "tiny.yaml",
            "--workers",
            "2",
            "--out",
            "out",
            "--threads",
            "1",
        ],
    );
    assert!(ran.ok(), "{ran:?}");
    assert!(ran.stdout.contains("16 trials in"), "{ran:?}");
    assert!(ran.stdout.contains("results: out"), "{ran:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/sweep.yaml")).unwrap(),
        TINY
    );
    let out = dir.path().join("out");
    let checked = check_results(
        &out,
        &[TINY_CHECKS.as_slice(), &["--min-workers", "2"]].concat(),
    );
    assert!(checked.ok(), "{checked:?}");
    // The same sweep again on its directory resumes: nothing is run again, no file rewritten.
    let train_file = std::fs::read_dir(out.join("train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let written = std::fs::metadata(&train_file).unwrap().modified().unwrap();
    let again = bnsweep(dir.path(), &["run", "tiny.yaml", "--out", "out"]);
    assert!(again.ok(), "{again:?}");
    assert!(
        again.stderr.contains("16 of 16 trials already done"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::metadata(&train_file).unwrap().modified().unwrap(),
        written
    );
    // After a power loss a finished trial's file can be cut short: resuming reads every
    // table's footer and row count, and runs again the trials whose files do not hold up
    // (here one train table and another trial's measurements), and only those.
    let cut = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    };
    cut(&train_file);
    let measured: Vec<PathBuf> = std::fs::read_dir(out.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name() != train_file.file_name())
        .collect();
    cut(&measured[0]);
    // A third, completed, trial lost its landscape table altogether.
    let completed = bnsweep_e2e::run(Command::new(bnsweep_e2e::python()).args([
        "-c",
        "import sys, pyarrow.parquet as pq; print(' '.join(r['trial_id'] for r in pq.read_table(sys.argv[1]).to_pylist() if r['status'] == 'completed'))",
        out.join("trials.parquet").to_str().unwrap(),
    ]));
    let stem = |p: &Path| p.file_stem().unwrap().to_string_lossy().into_owned();
    let third = completed
        .stdout
        .split_whitespace()
        .find(|id| *id != stem(&train_file) && *id != stem(&measured[0]))
        .expect("a third completed trial")
        .to_string();
    std::fs::remove_file(out.join("landscape").join(format!("{third}.parquet"))).unwrap();
    let again = bnsweep(dir.path(), &["run", "tiny.yaml", "--out", "out"]);
    assert!(again.ok(), "{again:?}");
    assert!(
        again.stderr.contains("13 of 16 trials already done")
            && again.stderr.matches("running it again").count() == 3
            && again.stderr.contains("its landscape table is missing"),
        "{again:?}"
    );
    let checked = check_results(&out, &TINY_CHECKS);
    assert!(checked.ok(), "{checked:?}");
    // Another sweep is refused there.
    std::fs::write(
        dir.path().join("other.yaml"),
        TINY.replace("steps: 40", "steps: 41"),
    )
    .unwrap();
    let other = bnsweep(dir.path(), &["run", "other.yaml", "--out", "out"]);
    assert_eq!(other.code, Some(1), "{other:?}");
    assert!(
        other
            .stderr
            .contains("holds the results of another sweep (`tiny`, 16 trials)"),
        "{other:?}"
    );
}

#[test]
fn cifar10_files_in_the_official_layout_train() {
    let dir = tempfile::tempdir().unwrap();
    let (cifar, which) = cifar_dir(dir.path());
    eprintln!("training on {which}: {}", cifar.display());
    let text = format!(
        "name: cifar\nparameters:\n  lr: [0.05]\ntrain:\n  model: {{name: vgg8, width: 0.125}}\n  \
         dataset: {{name: cifar10, path: {}, train_size: 2048, test_size: 500}}\n  batch_size: 64\n  \
         steps: 20\n  eval_every: 10\n",
        cifar.display()
    );
    std::fs::write(dir.path().join("cifar.yaml"), text).unwrap();
    let ran = bnsweep(
        dir.path(),
        &["run", "cifar.yaml", "--workers", "1", "--out", "out"],
    );
    assert!(ran.ok(), "{ran:?}");
    let checked = check_results(
        &dir.path().join("out"),
        &["--trials", "1", "--steps", "20", "--eval-every", "10"],
    );
    assert!(checked.ok(), "{checked:?}");
}

/// A shipped sweep as it is, but for what `replace` shrinks (width, steps, data, seeds): what is
/// measured, on which layers, stays.
fn shrunk(file: &str, replace: &[(&str, String)]) -> String {
    let path = bnsweep_e2e::repo_root().join(file);
    let mut out =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replace {
        assert!(out.contains(from), "{file} no longer holds `{from}`");
        out = out.replace(from, to);
    }
    out
}

#[test]
fn the_paper_s_vgg16_sweep_runs_at_a_small_width_with_every_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let (cifar, which) = cifar_dir(dir.path());
    eprintln!("training on {which}: {}", cifar.display());
    let text = shrunk(
        "sweeps/paper-vgg16.yaml",
        &[
            ("seeds: [0, 1]", "seeds: [0]".into()),
            ("width: 1.0", "width: 0.0625".into()),
            (
                "path: data/cifar-10-batches-bin",
                format!("path: {}, train_size: 256, test_size: 100", cifar.display()),
            ),
            ("batch_size: 128", "batch_size: 32".into()),
            ("steps: 15000", "steps: 4".into()),
            ("eval_every: 500", "eval_every: 2".into()),
            ("every: 100", "every: 2".into()),
        ],
    );
    std::fs::write(dir.path().join("vgg16.yaml"), text).unwrap();
    let ran = bnsweep(
        dir.path(),
        &["run", "vgg16.yaml", "--workers", "2", "--out", "out"],
    );
    assert!(ran.ok(), "{ran:?}");
    // VGG-16: 13 convs and 3 linear layers, each measured (the paper's layers #1 .. #16).
    let checked = check_results(
        &dir.path().join("out"),
        &[
            "--trials",
            "8",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--measure-every",
            "2",
            "--layers",
            "16",
            "--act-layers",
            "16",
        ],
    );
    assert!(checked.ok(), "{checked:?}");
}

/// MNIST in its official idx layout, in a data cache as the workers fill it
/// (`$BNSWEEP_DATA/mnist/`): each digit a bright bar at its own height under noise, so that
/// an MLP learns it in a few steps.
fn mnist_cache(root: &Path) -> PathBuf {
    let dir = root.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    for (prefix, n) in [("train", 1000u32), ("t10k", 300)] {
        let mut images = [0x803u32, n, 28, 28].map(u32::to_be_bytes).concat();
        let mut labels = [0x801u32, n].map(u32::to_be_bytes).concat();
        for i in 0..n {
            let digit = i % 10;
            images.extend((0..784u32).map(|p| {
                let bar = if p / 28 / 2 == digit + 2 { 180 } else { 0 };
                (bar + (p * 31 + i * 17) % 60) as u8
            }));
            labels.push(digit as u8);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    root.to_path_buf()
}

#[test]
fn the_blog_s_part_one_runs_an_mlp_on_mnist_from_the_data_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = mnist_cache(&dir.path().join("cache"));
    let text = shrunk(
        "sweeps/blog-part1.yaml",
        &[
            ("seeds: [0, 1, 2]", "seeds: [0]".into()),
            ("width: 1.0", "width: 0.25".into()),
            (
                "dataset: {name: mnist}",
                "dataset: {name: mnist, train_size: 512, test_size: 200}".into(),
            ),
            ("steps: 18750", "steps: 6".into()),
            ("eval_every: 1875", "eval_every: 3".into()),
            ("every: 250", "every: 3".into()),
        ],
    );
    std::fs::write(dir.path().join("blog.yaml"), text).unwrap();
    // No path: the workers read the cache named by BNSWEEP_DATA (no download: it is full).
    let ran = bnsweep_e2e::run(
        Command::new(bnsweep_e2e::bin("bnsweep"))
            .args(["run", "blog.yaml", "--workers", "1", "--out", "out"])
            .env("BNSWEEP_DATA", &cache)
            .env("BNSWEEP_DATA_MIRROR", "http://127.0.0.1:9/nothing-here")
            .current_dir(dir.path()),
    );
    assert!(ran.ok(), "{ran:?}");
    // The MLP's four layers (three hidden, the output), each measured.
    let checked = check_results(
        &dir.path().join("out"),
        &[
            "--trials",
            "2",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--measure-every",
            "3",
            "--layers",
            "4",
            "--act-layers",
            "4",
        ],
    );
    assert!(checked.ok(), "{checked:?}");
}
