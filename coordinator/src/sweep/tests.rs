//! Expansion, trial ids and the exact messages a user sees.

use super::*;

fn parse(text: &str) -> Result<Sweep, Diagnostics> {
    Sweep::parse("s.yaml", text)
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .unwrap_err()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

const GRID: &str = "\
name: g
seeds: [0, 1]
parameters:
  lr: [0.1, 0.5]
  bn: [true, false]
  noise: {values: [0.0, 1.0]}
train:
  steps: 10
";

#[test]
fn a_grid_is_the_product_of_its_axes_times_the_seeds() {
    let s = parse(GRID).unwrap();
    assert_eq!(s.trials.len(), 16);
    let first: Vec<(f64, bool, f64, u64)> = s
        .trials
        .iter()
        .take(4)
        .map(|t| (t.config.lr, t.config.bn, t.config.noise, t.config.seed))
        .collect();
    // The first axis varies slowest, seeds fastest.
    assert_eq!(
        first,
        vec![
            (0.1, true, 0.0, 0),
            (0.1, true, 0.0, 1),
            (0.1, true, 1.0, 0),
            (0.1, true, 1.0, 1)
        ]
    );
    assert_eq!(s.axes, vec!["lr", "bn", "noise"]);
    assert!(s
        .trials
        .iter()
        .all(|t| t.config.steps == 10 && t.config.model.name == "vgg8"));
}

#[test]
fn trial_ids_come_from_the_configuration_alone() {
    let a = parse(GRID).unwrap();
    let b = parse(GRID).unwrap();
    let ids: Vec<&str> = a.trials.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        b.trials.iter().map(|t| t.id.as_str()).collect::<Vec<_>>()
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 16);
    assert!(ids.iter().all(|id| id.len() == 13 && id.starts_with('t')));
    // Same trial written differently (a fixed value instead of a one-value axis): same id.
    let fixed = parse("name: other\nseeds: [1]\nparameters:\n  lr: [0.5]\ntrain:\n  bn: false\n  noise: 1\n  steps: 10\n").unwrap();
    let same = a
        .trials
        .iter()
        .find(|t| t.config == fixed.trials[0].config)
        .unwrap();
    assert_eq!(same.id, fixed.trials[0].id);
    // Any change of any field changes it.
    let longer = parse(&GRID.replace("steps: 10", "steps: 11")).unwrap();
    assert!(longer.trials.iter().all(|t| !ids.contains(&t.id.as_str())));
}

#[test]
fn noise_options_default_to_the_paper_s_recipe_and_leave_earlier_ids_alone() {
    let plain = parse(GRID).unwrap();
    let c = &plain.trials[0].config;
    let o = &c.noise_options;
    assert_eq!(
        (
            o.draws.as_str(),
            o.moments.as_str(),
            o.spread.as_str(),
            o.head
        ),
        ("element", "layer", "std", false)
    );
    assert!(!c.canonical().contains("noise_"), "{}", c.canonical());
    let explicit = parse(&GRID.replace("steps: 10", "steps: 10\n  noise_draws: element")).unwrap();
    assert_eq!(explicit.trials[0].id, plain.trials[0].id);
    let swept = parse(&GRID.replace(
        "steps: 10",
        "steps: 10\n  noise_moments: channel\n  noise_spread: variance\n  noise_head: true",
    ))
    .unwrap();
    let o = &swept.trials[0].config.noise_options;
    assert_eq!(
        (o.moments.as_str(), o.spread.as_str(), o.head),
        ("channel", "variance", true)
    );
    assert_ne!(swept.trials[0].id, plain.trials[0].id);
    // Sweepable like any field, and a wrong value is named with its line.
    let axis = parse(&GRID.replace(
        "parameters:\n",
        "parameters:\n  noise_draws: [element, channel]\n",
    ))
    .unwrap();
    assert_eq!(axis.trials.len(), 2 * plain.trials.len());
    assert_eq!(
        errors("name: x\ntrain: {lr: 0.1, noise_spread: var}\n"),
        ["s.yaml:2:32: train.noise_spread: unknown noise spread `var` (known: std, variance)"]
    );
}

#[test]
fn fast_kernels_are_opt_in_and_leave_earlier_ids_alone() {
    let plain = parse(GRID).unwrap();
    let c = &plain.trials[0].config;
    assert_eq!((c.precision.as_str(), c.channels_last), ("fp32", false));
    // Fields added later are not hashed at their defaults: ids of older sweeps stay.
    let text = c.canonical();
    assert!(
        !text.contains("precision") && !text.contains("channels_last"),
        "{text}"
    );
    let explicit = parse(&GRID.replace("steps: 10", "steps: 10\n  precision: fp32")).unwrap();
    assert_eq!(explicit.trials[0].id, plain.trials[0].id);
    let fast = parse(&GRID.replace(
        "steps: 10",
        "steps: 10\n  precision: bf16\n  channels_last: true",
    ))
    .unwrap();
    let f = &fast.trials[0].config;
    assert_eq!((f.precision.as_str(), f.channels_last), ("bf16", true));
    assert_ne!(fast.trials[0].id, plain.trials[0].id);
    assert!(f
        .canonical()
        .ends_with(";precision=bf16;channels_last=true"));
    assert_eq!(
        errors("name: x\ntrain: {lr: 0.1, precision: fp8}\n"),
        ["s.yaml:2:29: train.precision: unknown precision `fp8` (known: fp32, bf16, fp16)"]
    );
}

#[test]
fn the_initialisation_is_part_of_every_id() {
    let plain = parse(GRID).unwrap();
    let c = &plain.trials[0].config;
    assert_eq!(
        (c.model.init.as_str(), c.model.bn_momentum),
        ("pytorch", 0.1)
    );
    // Hashed even at their defaults: they came with a change of what every trial trains,
    // so a directory of the earlier initialisation is not resumed as if it were this one.
    let text = c.canonical();
    assert!(
        text.contains(";model.hidden=[256, 128, 64];model.init=pytorch;model.bn_momentum=0.1;"),
        "{text}"
    );
    // Pinned: ids must not change by accident, or existing results directories stop resuming.
    assert_eq!(plain.trials[0].id, "t04bcaf4fe8a4");
    let explicit = parse(&GRID.replace(
        "steps: 10",
        "steps: 10\n  model: {init: pytorch, bn_momentum: 0.1}",
    ))
    .unwrap();
    assert_eq!(explicit.trials[0].id, plain.trials[0].id);
    let swept = parse(&GRID.replace(
        "  bn: [true, false]",
        "  bn: [true, false]\n  model.init: [pytorch, lecun_normal]",
    ))
    .unwrap();
    assert_eq!(swept.trials.len(), 32);
    assert_eq!(swept.trials[4].config.model.init, "lecun_normal");
    assert_ne!(swept.trials[4].id, swept.trials[0].id);
    assert_eq!(
        errors("name: x\ntrain:\n  lr: 0.1\n  model: {init: xavier, bn_momentum: 1.5}\n"),
        [
            "s.yaml:4:17: train.model.init: unknown initialisation `xavier` (known: pytorch, glorot_uniform, glorot_normal, kaiming_uniform, kaiming_normal, lecun_normal)",
            "s.yaml:4:38: train.model.bn_momentum: BatchNorm momentum must be in (0, 1] (PyTorch's convention: flax's 0.99 is 0.01), got 1.5",
        ]
    );
}

#[test]
fn random_sampling_is_reproducible_from_its_seed() {
    let text = "\
name: r
method: random
samples: 6
seed: 3
seeds: [0, 1]
parameters:
  lr: {distribution: log_uniform, min: 0.001, max: 1.0}
  noise: {distribution: uniform, min: 0, max: 2}
  batch_size: {distribution: int_uniform, min: 16, max: 64}
  bn: [true, false]
";
    let a = parse(text).unwrap();
    let b = parse(text).unwrap();
    assert_eq!(a.trials.len(), 12);
    assert_eq!(a.trials, b.trials);
    for t in &a.trials {
        assert!((0.001..=1.0).contains(&t.config.lr));
        assert!((0.0..=2.0).contains(&t.config.noise));
        assert!((16..=64).contains(&t.config.batch_size));
    }
    let c = parse(&text.replace("seed: 3", "seed: 4")).unwrap();
    assert_ne!(a.trials[0].config.lr, c.trials[0].config.lr);
    assert_eq!(
        a.param_columns()
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>(),
        ["lr", "bn", "noise", "seed", "batch_size"]
    );
}

#[test]
fn nested_fields_can_be_swept_by_their_dotted_path() {
    let s = parse("name: n\nparameters:\n  lr: [0.1]\n  optimizer.momentum: [0.0, 0.9]\n  model.width: [0.5]\n").unwrap();
    assert_eq!(s.trials.len(), 2);
    assert_eq!(s.trials[1].config.optimizer.momentum, 0.9);
    assert_eq!(s.trials[1].config.model.width, 0.5);
    let cols: Vec<String> = s.param_columns().into_iter().map(|c| c.0).collect();
    assert_eq!(
        cols,
        [
            "lr",
            "bn",
            "noise",
            "seed",
            "optimizer_momentum",
            "model_width"
        ]
    );
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let s = parse("name: d\nparameters:\n  lr: [0.1]\n").unwrap();
    let c = &s.trials[0].config;
    assert_eq!(
        (c.bn, c.noise, c.batch_size, c.steps, c.eval_every, c.seed),
        (true, 0.0, 128, 1000, 500, 0)
    );
    assert_eq!(
        (
            c.dataset.name.as_str(),
            c.dataset.train_size,
            c.dataset.test_size
        ),
        ("synthetic", 5000, 1000)
    );
    assert_eq!(
        (c.optimizer.name.as_str(), c.optimizer.momentum),
        ("sgd", 0.0)
    );
}

#[test]
fn a_dataset_without_a_path_comes_from_the_cache_under_the_id_it_always_had() {
    let cached =
        parse("name: d\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: cifar10}\n").unwrap();
    let before = parse(
        "name: d\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: cifar10, path: data/cifar-10-batches-bin}\n",
    )
    .unwrap();
    assert_eq!(cached.trials[0].config.dataset.path, "");
    assert_eq!(cached.trials[0].id, before.trials[0].id);
    let elsewhere =
        parse("name: d\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: cifar10, path: /x}\n")
            .unwrap();
    assert_ne!(elsewhere.trials[0].id, before.trials[0].id);
    assert_eq!(
        errors("name: d\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: cifar10, path: \"\"}\n"),
        ["s.yaml:5:34: train.dataset.path: must not be empty (leave it out to use the downloaded release)"]
    );
}

#[test]
fn mnist_trains_the_mlp_without_augmentation() {
    let ok = parse("name: m\nparameters:\n  lr: [0.1]\ntrain:\n  model: {name: mlp}\n  dataset: {name: mnist}\n")
        .unwrap();
    let d = &ok.trials[0].config.dataset;
    assert_eq!(
        (d.name.as_str(), d.train_size, d.test_size),
        ("mnist", 0, 0)
    );
    assert_eq!(
        errors("name: m\nparameters:\n  lr: [0.1]\ntrain:\n  dataset: {name: mnist, augment: true, train_size: 70000}\n"),
        [
            "s.yaml:5:19: train.dataset.name: `vgg8` takes 32x32 colour images; MNIST's are 28x28 grey: use `model.name: mlp`",
            "s.yaml:5:35: train.dataset.augment: random crops and flips are for CIFAR-10's images, not MNIST's digits",
            "s.yaml:5:53: train.dataset.train_size: must be in [0, 60000], got 70000",
        ]
    );
}

#[test]
fn messages_name_file_line_column_and_field() {
    assert_eq!(
        errors("name: x\nparameters:\n  lr: []\n"),
        ["s.yaml:3:7: parameters.lr: empty axis: give at least one value"]
    );
    assert_eq!(
        errors("name: x\nparameters:\n  lr: [0.1, 0]\n"),
        ["s.yaml:3:13: parameters.lr[1]: learning rate must be > 0, got 0"]
    );
    assert_eq!(
        errors("name: x\ntrain:\n  lr: 0.1\n  noise: -0.5\n"),
        ["s.yaml:4:10: train.noise: noise level must be >= 0, got -0.5"]
    );
    assert_eq!(
        errors("name: x\ntrain:\n  lr: fast\n"),
        ["s.yaml:3:7: train.lr: expected a number, got a string"]
    );
    assert_eq!(
        errors("name: x\ntrain:\n  lr: 0.1\n  dataset: {name: imagenet}\n"),
        ["s.yaml:4:19: train.dataset.name: unknown dataset `imagenet` (known: cifar10, mnist, synthetic)"]
    );
    assert_eq!(
        errors("name: x\ntrain:\n  lr: 0.1\n  model: {depth: 3}\n"),
        ["s.yaml:4:11: train.model.depth: unknown key `depth` (expected one of: name, width, hidden, init, bn_momentum)"]
    );
    assert_eq!(
        errors("name: x\nmethod: bayes\ntrain: {lr: 0.1}\n"),
        ["s.yaml:2:9: method: unknown method `bayes` (known: grid, random)"]
    );
    assert_eq!(
        errors("train: {lr: 0.1}\n"),
        ["s.yaml:1:1: name: missing: every sweep needs a `name`"]
    );
    assert_eq!(
        errors("name: x\nparameters:\n  bn: [true]\n"),
        ["s.yaml:1:1: train.lr: missing: set `lr` under `train` or sweep it under `parameters`"]
    );
    assert_eq!(
        errors("name: x\nparameters:\n  lr: {distribution: uniform, min: 0.1, max: 1}\n"),
        ["s.yaml:3:22: parameters.lr.distribution: a distribution needs `method: random`; a grid sweep takes a list of values"]
    );
    assert_eq!(
        errors("name: x\nseeds: [0, 0]\ntrain: {lr: 0.1}\n"),
        ["s.yaml:2:12: seeds[1]: seed 0 is listed twice"]
    );
    assert_eq!(
        errors("name: x\nparameters:\n  lr: [0.1]\ntrain:\n  lr: 0.2\n"),
        ["s.yaml:5:7: train.lr: `lr` is swept under `parameters`; remove it from `train`"]
    );
    assert_eq!(
        errors("name: x\nparameters:\n  seed: [1, 2]\ntrain: {lr: 0.1}\n"),
        ["s.yaml:3:3: parameters.seed: seeds are swept with the top-level `seeds` list"]
    );
    assert_eq!(
        errors("name: x\ntrain: {lr: 0.1, batch_size: 64, dataset: {train_size: 32}}\n"),
        ["s.yaml:2:30: train.batch_size: batch size 64 is larger than the training set (32 images)"]
    );
}

#[test]
fn every_problem_is_reported_once_even_when_many_trials_share_it() {
    let errs = errors(
        "name: x\nseeds: [0, 1, 2]\nparameters:\n  lr: [0.1, 0.2]\ntrain:\n  model: {width: -1}\n",
    );
    assert_eq!(
        errs,
        ["s.yaml:6:18: train.model.width: width must be in (0, 16], got -1"]
    );
}

#[test]
fn the_measure_section_is_read_and_checked() {
    let s = parse("name: m\nmeasure:\n  every: 50\n  ics: true\n  landscape: true\n  activations: {layers: [0, 3], bins: 8}\ntrain: {lr: 0.1}\n").unwrap();
    let m = s.measure.unwrap();
    assert_eq!((m.every, m.ics, m.weights), (50, true, false));
    assert_eq!(m.landscape.unwrap().eta, measure::DEFAULT_ETA.to_vec());
    let a = m.activations.unwrap();
    assert_eq!(
        (a.layers, a.bins, a.sample, a.range),
        (Some(vec![0, 3]), 8, 4096, (-6.0, 6.0))
    );
    assert!(parse("name: m\ntrain: {lr: 0.1}\n")
        .unwrap()
        .measure
        .is_none());

    assert_eq!(
        errors("name: m\nmeasure:\n  every: 0\n  landscape: {eta: [0.5, -1]}\n  colour: red\ntrain: {lr: 0.1}\n"),
        [
            "s.yaml:3:10: measure.every: must be >= 1, got 0",
            "s.yaml:4:26: measure.landscape.eta[1]: step sizes must be > 0, got -1",
            "s.yaml:5:3: measure.colour: unknown key `colour` (expected one of: every, ics, landscape, activations, weights)",
        ]
    );
    assert_eq!(
        errors("name: m\nparameters:\n  model.name: [vgg8, mlp]\nmeasure:\n  activations: {layers: [11]}\ntrain:\n  lr: 0.1\n  model: {hidden: [8, 8]}\n"),
        [
            "s.yaml:5:25: measure.activations.layers: layer 11 does not exist: `mlp` has layers 0 to 2",
            "s.yaml:5:25: measure.activations.layers: layer 11 does not exist: `vgg8` has layers 0 to 10",
        ]
    );
}

#[test]
fn models_optimizers_and_the_divergence_bound_are_training_fields() {
    let s = parse(
        "name: x\nparameters:\n  model.name: [vgg16, mlp]\n  optimizer.name: [sgd, adam]\ntrain:\n  lr: 0.01\n  model: {hidden: [32]}\n  optimizer: {beta2: 0.99}\n  divergence: {loss_above: .inf, for_steps: 3}\n",
    )
    .unwrap();
    assert_eq!(s.trials.len(), 4);
    let c = &s.trials[3].config;
    assert_eq!(
        (
            c.model.name.as_str(),
            c.model.hidden.as_slice(),
            c.optimizer.name.as_str()
        ),
        ("mlp", &[32i64][..], "adam")
    );
    assert_eq!((c.optimizer.beta1, c.optimizer.beta2), (0.9, 0.99));
    assert_eq!(
        (c.divergence.loss_above, c.divergence.for_steps),
        (f64::INFINITY, 3)
    );
    assert_eq!(
        errors("name: x\nparameters:\n  model.hidden: [[8], [16]]\ntrain:\n  lr: 0.1\n  divergence: {loss_above: -1}\n"),
        [
            "s.yaml:3:3: parameters.model.hidden: `model.hidden` cannot be swept; set it under `train`",
            "s.yaml:6:28: train.divergence.loss_above: must be > 0 (.inf turns the bound off), got -1",
        ]
    );
}

#[test]
fn a_grid_too_large_is_refused_from_its_axes_before_anything_is_built() {
    // 10 seeds x 7 axes of 10 values: 10^8 trials, which would take gigabytes to expand.
    let ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]";
    let text = format!(
        "name: huge\nseeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\nparameters:\n  lr: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]\n  \
         batch_size: {ten}\n  steps: {ten}\n  eval_every: {ten}\n  dataset.seed: {ten}\n  dataset.train_size: {ten}\n  \
         dataset.test_size: {ten}\n"
    );
    assert_eq!(
        errors(&text),
        ["s.yaml:3:1: parameters: 100000000 trials (lr 10 x batch_size 10 x steps 10 x eval_every 10 x dataset.seed 10 x dataset.train_size 10 x dataset.test_size 10 x 10 seeds): more than `max_trials` (1000000); split the sweep, or set `max_trials` higher if that many is meant"]
    );
    // The limit is the file's to set, within reason.
    let four = "name: g\nseeds: [0, 1]\nparameters:\n  lr: [0.1, 0.2]\n";
    assert_eq!(parse(four).unwrap().trials.len(), 4);
    assert_eq!(
        errors(&format!("{four}max_trials: 3\n")),
        ["s.yaml:3:1: parameters: 4 trials (lr 2 x 2 seeds): more than `max_trials` (3); split the sweep, or set `max_trials` higher if that many is meant"]
    );
    assert_eq!(
        parse(&format!("{four}max_trials: 4\n"))
            .unwrap()
            .trials
            .len(),
        4
    );
    assert_eq!(
        errors(&format!("{four}max_trials: 0\n")),
        ["s.yaml:5:13: max_trials: must be in [1, 100000000], got 0"]
    );
}

#[test]
fn the_grid_comes_out_in_the_same_order_one_combination_at_a_time() {
    let s = parse(
        "name: o\nparameters:\n  lr: [0.1, 0.2]\n  bn: [true, false]\n  noise: [0.0, 1.0, 2.0]\n",
    )
    .unwrap();
    let order: Vec<(f64, bool, f64)> = s
        .trials
        .iter()
        .map(|t| (t.config.lr, t.config.bn, t.config.noise))
        .collect();
    let mut want = Vec::new();
    for lr in [0.1, 0.2] {
        for bn in [true, false] {
            for noise in [0.0, 1.0, 2.0] {
                want.push((lr, bn, noise));
            }
        }
    }
    assert_eq!(order, want, "the first axis varies slowest");
}

#[test]
fn many_random_draws_are_deduplicated_in_linear_time() {
    // 200,000 draws from 4 x 3 combinations: all but 12 repeat an earlier one.
    let s = parse(
        "name: r\nmethod: random\nsamples: 200000\nparameters:\n  lr: [0.1, 0.2, 0.3, 0.4]\n  noise: [0.0, 1.0, 2.0]\n",
    )
    .unwrap();
    assert_eq!(s.trials.len(), 12);
    assert!(
        s.warnings[0].contains("199988 random draw(s) repeated"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn a_sweep_name_is_a_plain_directory_name() {
    for bad in ["../../../tmp/x", "a/b", ".", "..", "with space", "é"] {
        let e = errors(&format!("name: \"{bad}\"\nparameters:\n  lr: [0.1]\n"));
        assert!(
            e.len() == 1 && e[0].starts_with("s.yaml:1:7: name: "),
            "{bad}: {e:?}"
        );
    }
    let long = "x".repeat(65);
    assert_eq!(
        errors(&format!("name: {long}\nparameters:\n  lr: [0.1]\n")),
        ["s.yaml:1:7: name: 65 characters; a name has at most 64"]
    );
    for good in ["paper-vgg16", "blog_part1.v2", "A.b-c_9", &"x".repeat(64)] {
        assert!(
            parse(&format!("name: {good}\nparameters:\n  lr: [0.1]\n")).is_ok(),
            "{good}"
        );
    }
}

/// A file that sets every training field away from its default.
const EVERY_FIELD: &str = "\
name: every
seeds: [7]
parameters:
  lr: [0.05, 1e-3]
  noise_draws: [channel]
train:
  bn: false
  noise: 0.25
  noise_moments: channel
  noise_spread: variance
  noise_head: true
  batch_size: 64
  steps: 300
  eval_every: 30
  model: {name: mlp, width: 0.75, hidden: [32, 16], init: kaiming_normal, bn_momentum: 0.01}
  dataset: {name: cifar10, path: /data/c10, augment: true, train_size: 1000, test_size: 200, seed: 3}
  optimizer: {name: sgd, momentum: 0.9, weight_decay: 5e-4, nesterov: true, beta1: 0.8, beta2: 0.99, eps: 1e-9}
  divergence: {loss_above: .inf, for_steps: 5}
  precision: bf16
  channels_last: true
";

#[test]
fn golden_ids_pin_every_field_s_canonical_form() {
    // Pinned, text and id: an id that changes orphans every results directory holding it.
    // Every field away from its default, then the defaults, the cache's dataset path (hashed
    // as the former default) and random floats (in their shortest round-trip notation).
    let files = [
        EVERY_FIELD,
        "name: d\ntrain: {lr: 0.1}\n",
        "name: c\ntrain: {lr: 0.1, dataset: {name: mnist}, model: {name: mlp}}\n",
        "name: r\nmethod: random\nsamples: 2\nseed: 5\nparameters:\n  lr: {distribution: log_uniform, min: 0.0001, max: 1}\n  batch_size: {distribution: int_uniform, min: 8, max: 256}\n",
    ];
    let got: Vec<(String, String)> = files
        .iter()
        .flat_map(|f| parse(f).unwrap().trials)
        .map(|t| (t.config.canonical(), t.id))
        .collect();
    let want = [
        (
            "seed=7;lr=0.05;bn=false;noise=0.25;noise_draws=channel;noise_moments=channel;noise_spread=variance;noise_head=true;batch_size=64;steps=300;eval_every=30;model.name=mlp;model.width=0.75;model.hidden=[32, 16];model.init=kaiming_normal;model.bn_momentum=0.01;dataset.name=cifar10;dataset.path=/data/c10;dataset.augment=true;dataset.train_size=1000;dataset.test_size=200;dataset.seed=3;optimizer.name=sgd;optimizer.momentum=0.9;optimizer.weight_decay=0.0005;optimizer.nesterov=true;optimizer.beta1=0.8;optimizer.beta2=0.99;optimizer.eps=1e-9;divergence.loss_above=inf;divergence.for_steps=5;precision=bf16;channels_last=true",
            "tee22eb1a1ab3",
        ),
        (
            "seed=7;lr=0.001;bn=false;noise=0.25;noise_draws=channel;noise_moments=channel;noise_spread=variance;noise_head=true;batch_size=64;steps=300;eval_every=30;model.name=mlp;model.width=0.75;model.hidden=[32, 16];model.init=kaiming_normal;model.bn_momentum=0.01;dataset.name=cifar10;dataset.path=/data/c10;dataset.augment=true;dataset.train_size=1000;dataset.test_size=200;dataset.seed=3;optimizer.name=sgd;optimizer.momentum=0.9;optimizer.weight_decay=0.0005;optimizer.nesterov=true;optimizer.beta1=0.8;optimizer.beta2=0.99;optimizer.eps=1e-9;divergence.loss_above=inf;divergence.for_steps=5;precision=bf16;channels_last=true",
            "t1e97322c298f",
        ),
        (
            "seed=0;lr=0.1;bn=true;noise=0.0;batch_size=128;steps=1000;eval_every=500;model.name=vgg8;model.width=1.0;model.hidden=[256, 128, 64];model.init=pytorch;model.bn_momentum=0.1;dataset.name=synthetic;dataset.path=data/cifar-10-batches-bin;dataset.augment=false;dataset.train_size=5000;dataset.test_size=1000;dataset.seed=0;optimizer.name=sgd;optimizer.momentum=0.0;optimizer.weight_decay=0.0;optimizer.nesterov=false;optimizer.beta1=0.9;optimizer.beta2=0.999;optimizer.eps=1e-8;divergence.loss_above=100.0;divergence.for_steps=20",
            "tf763f4be3814",
        ),
        (
            "seed=0;lr=0.1;bn=true;noise=0.0;batch_size=128;steps=1000;eval_every=500;model.name=mlp;model.width=1.0;model.hidden=[256, 128, 64];model.init=pytorch;model.bn_momentum=0.1;dataset.name=mnist;dataset.path=data/cifar-10-batches-bin;dataset.augment=false;dataset.train_size=0;dataset.test_size=0;dataset.seed=0;optimizer.name=sgd;optimizer.momentum=0.0;optimizer.weight_decay=0.0;optimizer.nesterov=false;optimizer.beta1=0.9;optimizer.beta2=0.999;optimizer.eps=1e-8;divergence.loss_above=100.0;divergence.for_steps=20",
            "t0820f142d3b3",
        ),
        (
            "seed=0;lr=0.0006382617422862233;bn=true;noise=0.0;batch_size=186;steps=1000;eval_every=500;model.name=vgg8;model.width=1.0;model.hidden=[256, 128, 64];model.init=pytorch;model.bn_momentum=0.1;dataset.name=synthetic;dataset.path=data/cifar-10-batches-bin;dataset.augment=false;dataset.train_size=5000;dataset.test_size=1000;dataset.seed=0;optimizer.name=sgd;optimizer.momentum=0.0;optimizer.weight_decay=0.0;optimizer.nesterov=false;optimizer.beta1=0.9;optimizer.beta2=0.999;optimizer.eps=1e-8;divergence.loss_above=100.0;divergence.for_steps=20",
            "tfa22bd3b39c2",
        ),
        (
            "seed=0;lr=0.18456795268420959;bn=true;noise=0.0;batch_size=223;steps=1000;eval_every=500;model.name=vgg8;model.width=1.0;model.hidden=[256, 128, 64];model.init=pytorch;model.bn_momentum=0.1;dataset.name=synthetic;dataset.path=data/cifar-10-batches-bin;dataset.augment=false;dataset.train_size=5000;dataset.test_size=1000;dataset.seed=0;optimizer.name=sgd;optimizer.momentum=0.0;optimizer.weight_decay=0.0;optimizer.nesterov=false;optimizer.beta1=0.9;optimizer.beta2=0.999;optimizer.eps=1e-8;divergence.loss_above=100.0;divergence.for_steps=20",
            "tf9c41e18a445",
        ),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((text, id), (want_text, want_id)) in got.iter().zip(want) {
        assert_eq!((text.as_str(), id.as_str()), (want_text, want_id));
    }
}

#[test]
fn every_field_reaches_the_worker() {
    use bnsweep_proto as pb;
    let every = parse(EVERY_FIELD).unwrap();
    let measure = pb::MeasureSpec {
        every: 10,
        ..Default::default()
    };
    let spec = every.trials[1].config.to_spec(Some(measure.clone()));
    let want = pb::TrialSpec {
        seed: 7,
        lr: 1e-3,
        bn: false,
        noise: 0.25,
        noise_draws: "channel".into(),
        noise_moments: "channel".into(),
        noise_spread: "variance".into(),
        noise_head: true,
        model: Some(pb::ModelSpec {
            name: "mlp".into(),
            width: 0.75,
            hidden: vec![32, 16],
            init: "kaiming_normal".into(),
            bn_momentum: 0.01,
        }),
        dataset: Some(pb::DatasetSpec {
            name: "cifar10".into(),
            path: "/data/c10".into(),
            augment: true,
            train_size: 1000,
            test_size: 200,
            data_seed: 3,
        }),
        optimizer: Some(pb::OptimizerSpec {
            name: "sgd".into(),
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-9,
        }),
        batch_size: 64,
        steps: 300,
        eval_every: 30,
        divergence: Some(pb::DivergenceSpec {
            loss_above: f64::INFINITY,
            for_steps: 5,
        }),
        measure: Some(measure),
        precision: "bf16".into(),
        channels_last: true,
    };
    assert_eq!(spec, want);
    // At the defaults, every message is there (a worker never guesses a default).
    let plain = parse(GRID).unwrap().trials[0].config.to_spec(None);
    assert!(plain.model.is_some() && plain.dataset.is_some());
    assert!(plain.optimizer.is_some() && plain.divergence.is_some());
    assert_eq!(
        (plain.precision.as_str(), plain.noise_draws.as_str()),
        ("fp32", "element")
    );
}

#[test]
fn the_sweep_file_reference_lists_every_training_field_in_order() {
    let doc = include_str!("../../../docs/sweep-file.md");
    let table = doc
        .split("## Training fields")
        .nth(1)
        .and_then(|s| s.split("\n\n").find(|p| p.starts_with("| field |")))
        .expect("docs/sweep-file.md has a table of the training fields");
    let documented: Vec<&str> = table
        .lines()
        .skip(2)
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    let declared: Vec<&str> = config::FIELDS.iter().map(|f| f.path).collect();
    assert_eq!(documented, declared);
}

#[test]
fn priority_is_an_integer_within_bounds_and_leaves_the_trials_as_they_were() {
    let base = "name: p\nparameters:\n  lr: [0.1, 0.2]\n";
    let plain = parse(base).unwrap();
    assert_eq!(plain.priority, 0);
    let urgent = parse(&format!("{base}priority: 5\n")).unwrap();
    assert_eq!(urgent.priority, 5);
    assert_eq!(
        parse(&format!("{base}priority: -3\n")).unwrap().priority,
        -3
    );
    let ids = |s: &Sweep| s.trials.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plain), ids(&urgent), "priority is not part of a trial");
    assert_eq!(
        errors(&format!("{base}priority: 1001\n")),
        ["s.yaml:4:11: priority: must be in [-1000, 1000], got 1001"]
    );
    assert_eq!(
        errors(&format!("{base}priority: high\n")),
        ["s.yaml:4:11: priority: expected an integer, got a string"]
    );
}
