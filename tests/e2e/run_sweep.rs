//! `bnsweep run`: a coordinator on loopback and two real worker processes, end to end.

use std::path::Path;

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
        &[
            "--trials",
            "16",
            "--steps",
            "40",
            "--eval-every",
            "15",
            "--min-workers",
            "2",
            "--measure-every",
            "10",
            "--act-layers",
            "2",
            "--bins",
            "16",
        ],
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

/// The shipped paper sweeps as they are, but for their size: a sixteenth of the width, a few
/// steps on a few hundred images, one seed. What is measured, on which layers, stays.
fn shrunk(file: &str, cifar: &Path) -> String {
    let path = bnsweep_e2e::repo_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = text.clone();
    for (from, to) in [
        ("seeds: [0, 1]", "seeds: [0]".to_string()),
        ("width: 1.0", "width: 0.0625".to_string()),
        (
            "path: data/cifar-10-batches-bin",
            format!("path: {}, train_size: 256, test_size: 100", cifar.display()),
        ),
        ("batch_size: 128", "batch_size: 32".to_string()),
        ("steps: 15000", "steps: 4".to_string()),
        ("eval_every: 500", "eval_every: 2".to_string()),
        ("every: 100", "every: 2".to_string()),
    ] {
        assert!(out.contains(from), "{file} no longer holds `{from}`");
        out = out.replace(from, &to);
    }
    out
}

#[test]
fn the_paper_s_vgg16_sweep_runs_at_a_small_width_with_every_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let (cifar, which) = cifar_dir(dir.path());
    eprintln!("training on {which}: {}", cifar.display());
    std::fs::write(
        dir.path().join("vgg16.yaml"),
        shrunk("sweeps/paper-vgg16.yaml", &cifar),
    )
    .unwrap();
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
