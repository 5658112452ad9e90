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

    // The report, checked against the Parquet it was made from.
    let report = bnsweep(dir.path(), &["report", "demo"]);
    assert!(report.ok(), "{report:?}");
    assert!(
        report.stdout.contains("report: demo/report.html"),
        "{report:?}"
    );
    let checked = run(Command::new(python())
        .arg(repo_root().join("tests/check_report.py"))
        .arg(&out));
    assert!(checked.ok(), "{checked:?}");

    // The analysis examples run on it and draw their figures.
    for (script, png, says) in [
        ("loss_curves_polars.py", "loss.png", "from 8 trials"),
        ("final_accuracy_duckdb.py", "acc.png", "8 configurations"),
    ] {
        let png = dir.path().join(png);
        let ran = run(Command::new(python())
            .arg(repo_root().join("examples").join(script))
            .arg(&out)
            .arg(&png));
        assert!(ran.ok() && ran.stdout.contains(says), "{script}: {ran:?}");
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 10_000),
            "{script} drew nothing"
        );
    }
}
