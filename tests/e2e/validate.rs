//! `bnsweep validate` on the shipped sweeps and on broken files.

use bnsweep_e2e::{bnsweep, repo_root};

#[test]
fn the_paper_sweep_has_sixteen_trials() {
    let ran = bnsweep(&repo_root(), &["validate", "sweeps/paper.yaml"]);
    assert!(ran.ok(), "{ran:?}");
    assert!(ran.stdout.lines().any(|l| l == "16 trials"), "{ran:?}");
    let header = ran.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("trial_id") && header.contains("lr") && header.contains("noise"),
        "{header}"
    );
}

#[test]
fn every_shipped_sweep_is_valid() {
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("sweeps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .map(|f| format!("sweeps/{f}"))
        .collect();
    files.sort();
    for shipped in ["demo", "paper", "paper-vgg16", "seed"] {
        let file = format!("sweeps/{shipped}.yaml");
        assert!(files.contains(&file), "{file} is missing: {files:?}");
    }
    for file in &files {
        let ran = bnsweep(&repo_root(), &["validate", file]);
        assert!(ran.ok(), "{file}: {ran:?}");
    }
}

#[test]
fn a_broken_file_is_rejected_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
name: broken
seeds: [0]
parameters:
  lr: [0.1, -0.5]
  noise: [0.0, -1.0]
  bn: [true, maybe]
  colour: [red]
train:
  model: {name: vgg99, width: 0.5}
  batch_size: 12.5
  optimiser: sgd
";
    std::fs::write(dir.path().join("broken.yaml"), text).unwrap();
    let ran = bnsweep(dir.path(), &["validate", "broken.yaml"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let expected = "\
broken.yaml:4:13: parameters.lr[1]: learning rate must be > 0, got -0.5
broken.yaml:5:16: parameters.noise[1]: noise level must be >= 0, got -1
broken.yaml:6:14: parameters.bn[1]: expected true or false, got a string
broken.yaml:7:3: parameters.colour: unknown parameter `colour` (sweepable: lr, bn, noise, noise_draws, noise_moments, noise_spread, noise_head, batch_size, steps, eval_every, model.name, model.width, model.init, model.bn_momentum, dataset.name, dataset.path, dataset.augment, dataset.train_size, dataset.test_size, dataset.seed, optimizer.name, optimizer.momentum, optimizer.weight_decay, optimizer.nesterov, optimizer.beta1, optimizer.beta2, optimizer.eps, divergence.loss_above, divergence.for_steps, precision, channels_last)
broken.yaml:9:17: train.model.name: unknown model `vgg99` (known: vgg8, vgg10, vgg11, vgg13, vgg16, vgg19, mlp)
broken.yaml:10:15: train.batch_size: expected an integer, got a number
broken.yaml:11:3: train.optimiser: unknown key `optimiser` (expected one of: lr, bn, noise, noise_draws, noise_moments, noise_spread, noise_head, batch_size, steps, eval_every, model, dataset, optimizer, divergence, precision, channels_last)
7 problem(s) in broken.yaml; nothing was run
";
    assert_eq!(ran.stderr, expected);
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

#[test]
fn a_yaml_syntax_error_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: x\nparameters:\n  lr: [0.1, 0.2\ntrain: {}\n",
    )
    .unwrap();
    let ran = bnsweep(dir.path(), &["validate", "bad.yaml"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.starts_with("bad.yaml:"), "{ran:?}");
    assert!(ran.stderr.contains("YAML syntax error"), "{ran:?}");
}

#[test]
fn run_refuses_a_missing_dataset_and_validate_only_warns() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: c\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: cifar10, path: nowhere/cifar}\n";
    std::fs::write(dir.path().join("c.yaml"), text).unwrap();
    let ran = bnsweep(dir.path(), &["validate", "c.yaml"]);
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stderr
            .contains("warning: c.yaml: dataset directory `nowhere/cifar` does not exist"),
        "{ran:?}"
    );
    let ran = bnsweep(dir.path(), &["run", "c.yaml", "--out", "res"]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stderr
            .contains("dataset directory `nowhere/cifar` does not exist"),
        "{ran:?}"
    );
    assert!(
        !dir.path().join("res").exists(),
        "nothing may be written before the sweep can run"
    );
}
