//! The live report of `bnsweep serve`, opened in headless Chromium while the sweep runs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bnsweep_e2e::{
    bnsweep, chromium, chromium_window, free_addr, python, run, serve_command, worker_command,
};

/// The page renders its figures, and its progress line moves on as trials end (without a token
/// here: the token's login is tested below, by plain HTTP clients).
#[test]
fn the_live_page_renders_its_figures_and_follows_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: live\nparameters:\n  lr: [0.05]\n  bn: [true, false]\nmeasure: {every: 50, ics: true, landscape: {eta: [1, 2]}}\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 300\n  eval_every: 100\n";
    std::fs::write(dir.path().join("live.yaml"), text).unwrap();
    let (addr, url) = free_addr();
    let (http, page) = free_addr();
    let mut serve = serve_command(dir.path(), "live.yaml", &addr, "out", &["--http", &http])
        .spawn()
        .unwrap();
    let mut worker = worker_command(&url, &["--threads", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The page, once the coordinator serves it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&http).is_err() {
        assert!(Instant::now() < deadline, "no live page on {http}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let with_token = format!("{page}/");
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
            let s = bnsweep(dir.path(), &["status", "--coordinator", &url]);
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

/// With a token, the page asks for it once, in a form posted over HTTPS (the coordinator's own
/// certificate), and keeps the viewer in with an HttpOnly, Secure, SameSite cookie; the token
/// never travels in a URL, and plain HTTP gets nothing.
#[test]
fn the_live_page_asks_for_the_token_once_and_keeps_it_in_a_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: login\nparameters:\n  lr: [0.05]\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 256, test_size: 64}\n  batch_size: 32\n  steps: 3000\n";
    std::fs::write(dir.path().join("login.yaml"), text).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("token"), "tok\n").unwrap();
    let (addr, _) = free_addr();
    let (http, _) = free_addr();
    let mut serve = serve_command(
        dir.path(),
        "login.yaml",
        &addr,
        "out",
        &[
            "--token-file",
            "token",
            "--http",
            &http,
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
    )
    .spawn()
    .unwrap();
    let page = format!("https://{http}/");
    // curl: -k trusts the self-signed certificate; -i shows the status line and headers.
    let curl = |args: &[&str]| -> String {
        let ran = run(Command::new("curl")
            .args(["-sk", "-i", "--max-time", "10"])
            .args(args));
        ran.stdout
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let got = curl(&[&page]);
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "no live page on {page}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(
        first.contains("<form method=\"post\" action=\"/login\">"),
        "{first}"
    );
    assert!(
        !first.contains("id=\"progress\""),
        "the sweep shows without the token"
    );
    let in_url = curl(&[&format!("{page}?token=tok")]);
    assert!(
        in_url.starts_with("HTTP/1.1 401"),
        "a token in the URL opens the page: {in_url}"
    );
    let wrong = curl(&["-d", "token=nope", &format!("{page}login")]);
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = curl(&["-d", "token=tok", &format!("{page}login")]);
    assert!(right.starts_with("HTTP/1.1 303"), "{right}");
    let cookie_line = right
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {right}"));
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(cookie_line.contains(part), "{cookie_line}");
    }
    let cookie = cookie_line["set-cookie:".len()..]
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let inside = curl(&["-H", &format!("Cookie: {cookie}"), &page]);
    assert!(
        inside.starts_with("HTTP/1.1 200") && inside.contains("id=\"progress\""),
        "{inside}"
    );
    let bearer = curl(&["-H", "Authorization: Bearer tok", &page]);
    assert!(bearer.starts_with("HTTP/1.1 200"), "{bearer}");
    let forged = curl(&[
        "-H",
        "Cookie: bnsweep_live=0123456789abcdef0123456789abcdef",
        &page,
    ]);
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    // Plain HTTP to the TLS port: no page.
    let plain = curl(&[&format!("http://{http}/")]);
    assert!(!plain.contains("HTTP/1.1 200"), "{plain}");
    let _ = serve.kill();
    let _ = serve.wait();
}
