//! The README's main command: the demo sweep, end to end, and the facts it is meant to show.

use std::process::Command;

use bnsweep_e2e::{bnsweep, check_results, python, repo_root, run};

#[test]
fn the_demo_sweep_runs_and_shows_the_paper_s_qualitative_facts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let demo = repo_root().join("sweeps/demo.yaml");
    let ran = bnsweep(
        dir.path(),
        &["run", demo.to_str().unwrap(), "--out", "demo"],
    );
    assert!(ran.ok(), "{ran:?}");
    assert!(ran.stdout.contains("8 trials in"), "{ran:?}");
    let contract = check_results(
        &out,
        &[
            "--trials",
            "8",
            "--steps",
            "300",
            "--eval-every",
            "100",
            "--measure-every",
            "50",
            "--act-layers",
            "11",
        ],
    );
    assert!(contract.ok(), "{contract:?}");
    let facts = run(Command::new(python())
        .arg(repo_root().join("tests/check_demo_facts.py"))
        .arg(&out));
    assert!(facts.ok(), "{facts:?}");
}
