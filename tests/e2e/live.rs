//! The live report of `bnsweep serve`, opened in headless Chromium while the sweep runs.

use std::process::{Command, Stdio};
use std::time::Duration;

use bnsweep_e2e::{
    bnsweep, chromium, chromium_window, python, run, serve, wait_until, within, worker_command,
    Running,
};

/// The address of the live report that `serve` reports ("bnsweep: live report at
/// SCHEME://ADDR/..."), started with `--http 127.0.0.1:0`.
fn live_addr(serve: &mut Running) -> String {
    let line = serve.wait_to_say("bnsweep: live report at ", Duration::from_secs(60));
    let url = line.split_whitespace().nth(4).expect("a URL");
    bnsweep_e2e::addr_of(url).trim_end_matches('/').to_string()
}

/// The page renders its figures, and its progress line moves on as trials end (without a token
/// here: the token's login is tested below, by plain HTTP clients).
#[test]
fn the_live_page_renders_its_figures_and_follows_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name: live\nparameters:\n  lr: [0.05]\n  bn: [true, false]\nmeasure: {every: 50, ics: true, landscape: {eta: [1, 2]}}\ntrain:\n  model: {width: 0.125}\n  dataset: {train_size: 512, test_size: 64}\n  batch_size: 64\n  steps: 300\n  eval_every: 100\n";
    std::fs::write(dir.path().join("live.yaml"), text).unwrap();
    let (mut serve, url) = serve(dir.path(), "live.yaml", "out", &["--http", "127.0.0.1:0"]);
    let mut worker =
        Running::spawn(worker_command(&url, &["--threads", "1"]).stderr(Stdio::null()));

    // The page, at the address the coordinator reports once its port is bound.
    let http = live_addr(&mut serve);
    let with_token = format!("http://{http}/");
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
        let mut last = None;
        let seen = within(Duration::from_secs(120), || {
            let s = bnsweep(dir.path(), &["status", "--coordinator", &url]);
            let seen = s.stdout.contains(want);
            last = Some(s);
            seen
        });
        assert!(seen, "never `{want}`: {last:?}");
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
    // The page is rebuilt every 3 s at most: it follows within a few of its reloads.
    let mut second = String::new();
    let followed = within(Duration::from_secs(15), || {
        second = dom("after the first trial");
        progress(&second).contains("1/2 trials done")
    });
    assert!(followed, "{}", progress(&second));
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

    assert!(worker.wait().success());
    assert!(serve.wait().success());
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
    let (mut serve, _) = serve(
        dir.path(),
        "login.yaml",
        "out",
        &[
            "--token-file",
            "token",
            "--http",
            "127.0.0.1:0",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
    );
    let http = live_addr(&mut serve);
    let page = format!("https://{http}/");
    // curl: -k trusts the self-signed certificate; -i shows the status line and headers.
    let curl = |args: &[&str]| -> String {
        let ran = run(Command::new("curl")
            .args(["-sk", "-i", "--max-time", "10"])
            .args(args));
        ran.stdout
    };
    let mut first = String::new();
    wait_until(
        &format!("the live page on {page}"),
        Duration::from_secs(30),
        || {
            first = curl(&[&page]);
            !first.is_empty()
        },
    );
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
    // `serve` (a sweep of 3000 steps, no worker) is killed as it goes out of scope.
}
