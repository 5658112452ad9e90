//! The live report of `bnsweep serve`, opened in headless Chromium while the sweep runs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bnsweep_e2e::{
    bnsweep, chromium, chromium_window, free_addr, python, run, serve_command, worker_command,
};

/// The page behind the token renders its figures, and its progress line moves on as trials end.
#[test]
fn the_live_page_renders_its_figures_and_follows_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: live\nparameters:\n  lr: [0.05]\n  bn: [true, false]\nmeasure: {every: 50, ics: true, landscape: {eta: [1, 2]}}\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 300\n  eval_every: 100\n";
    std::fs::write(dir.path().join("live.yaml"), text).unwrap();
    let (addr, url) = free_addr();
    let (http, page) = free_addr();
    let mut serve = serve_command(
        dir.path(),
        "live.yaml",
        &addr,
        "out",
        &["--token", "tok", "--http", &http],
    )
    .spawn()
    .unwrap();
    let mut worker = worker_command(&url, &["--threads", "1", "--token", "tok"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Without the token: refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&http) {
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            break answer;
        }
        assert!(Instant::now() < deadline, "no live page on {http}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let with_token = format!("{page}/?token=tok");
    let dom = |what: &str| {
        let ran = run(chromium().args(["--dump-dom", &with_token]));
        assert!(ran.ok(), "chromium ({what}): {ran:?}");
        ran.stdout
    };
    let progress = |dom: &str| {
        let at = dom.find("id=\"progress\"").expect("a progress line");
        dom[at..at + 200].to_string()
    };
    let status = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = bnsweep(
                dir.path(),
                &["status", "--coordinator", &url, "--token", "tok"],
            );
            if s.stdout.contains(want) {
                return;
            }
            assert!(Instant::now() < deadline, "never `{want}`: {s:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    status("0/2 trials done");
    status("| 1 running |");
    let first = dom("while the first trial runs");
    assert!(
        progress(&first).contains("0/2 trials done"),
        "{}",
        progress(&first)
    );
    assert!(
        first.contains("http-equiv=\"refresh\""),
        "the page reloads itself"
    );
    status("1/2 trials done");
    std::thread::sleep(Duration::from_secs(4)); // the page is rebuilt every 3 s at most
    let second = dom("after the first trial");
    assert!(
        progress(&second).contains("1/2 trials done"),
        "{}",
        progress(&second)
    );
    let figures = second.matches("<figure").count();
    assert!(figures >= 6, "{figures} figures");
    assert!(
        !second.contains("no data yet"),
        "a figure of the finished trial is empty"
    );

    // Rendered: the screenshot shows the figures' coloured lines and bands (the rest of the
    // page is black, grey and pale yellow or green); tall enough to reach below the Findings.
    let shot = dir.path().join("live.png");
    let ran = run(chromium_window(1200, 5000)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&with_token));
    assert!(ran.ok(), "{ran:?}");
    let pixels = run(Command::new(python()).args([
        "-c",
        "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); px = list(im.getdata()); \
         print(sum(max(p) - min(p) > 80 for p in px))",
        shot.to_str().unwrap(),
    ]));
    assert!(pixels.ok(), "{pixels:?}");
    let coloured: usize = pixels.stdout.trim().parse().unwrap();
    assert!(
        coloured > 500,
        "only {coloured} pixels of the lines' colours: nothing drawn?"
    );

    assert!(worker.wait().unwrap().success());
    assert!(serve.wait().unwrap().success());
}
