//! The README's main command: the demo sweep, end to end, and the facts it is meant to show.

use std::process::Command;

use bnsweep_e2e::{bnsweep, check_results, chromium, python, repo_root, run};

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

    // The page opens with the Findings: in the DOM Chromium builds, the heading and a verdict
    // for each claim come before the first figure; on its first screen the verdicts' colours
    // show (the demo supports (a), that no BN fails at lr 0.5 where BN trains, among others).
    let page = format!("file://{}", out.join("report.html").display());
    let dom = run(chromium().args(["--dump-dom", &page]));
    assert!(dom.ok(), "{dom:?}");
    let first_figure = dom.stdout.find("<figure").expect("figures");
    let findings = dom
        .stdout
        .find("<h2>Findings</h2>")
        .expect("a Findings section");
    assert!(findings < first_figure, "Findings after the figures");
    for claim in ["a", "b", "c", "d", "e", "f"] {
        let at = dom.stdout.find(&format!("id=\"finding-{claim}\"")).unwrap();
        assert!(at < first_figure, "finding ({claim}) after the figures");
    }
    let a = dom.stdout.find("id=\"finding-a\"").unwrap();
    assert!(
        dom.stdout[a..a + 400].contains("verdict supported"),
        "{}",
        &dom.stdout[a..a + 400]
    );
    let shot = dir.path().join("report.png");
    let ran = run(chromium()
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&page));
    assert!(ran.ok(), "{ran:?}");
    // Pixels of the "Supported" badge's background, #d9f2d9, on the first 1200 x 1600.
    let pixels = run(Command::new(python()).args([
        "-c",
        "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); \
         print(sum(abs(r - 0xd9) + abs(g - 0xf2) + abs(b - 0xd9) < 8 for r, g, b in im.getdata()))",
        shot.to_str().unwrap(),
    ]));
    assert!(pixels.ok(), "{pixels:?}");
    let badge: usize = pixels.stdout.trim().parse().unwrap();
    assert!(
        badge > 300,
        "{badge} pixels of a Supported verdict on the first screen"
    );

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
