//! The official dataset files, downloaded once per machine into a cache and checked.
//!
//! `dataset: {name: cifar10}` or `{name: mnist}` without a `path` reads the dataset from
//! `$BNSWEEP_DATA` (default `~/.cache/bnsweep/data`): `cifar-10-batches-bin/` and `mnist/`.
//! What is missing there is downloaded from its official address (or from the mirror named by
//! `$BNSWEEP_DATA_MIRROR`, which serves the same file names), checked against its size and
//! SHA-256, and only then unpacked into place by a rename. A download that is cut short or
//! does not match is thrown away and tried again, never used. Processes that need the same
//! dataset at once wait on a lock file; one downloads. docs/sweep-file.md, "Datasets".

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One file of an official release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub url: &'static str,
    pub bytes: u64,
    pub sha256: &'static str,
}

impl Source {
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }
}

/// The CIFAR-10 binary release (Krizhevsky): a tar.gz of `cifar-10-batches-bin/`.
pub const CIFAR10: Source = Source {
    url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    bytes: 170_052_171,
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
};

/// MNIST's four gzipped idx files (LeCun et al.), from PyTorch's mirror of the original site.
pub const MNIST: [Source; 4] = [
    Source {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        bytes: 9_912_422,
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    },
    Source {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
        bytes: 28_881,
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    },
    Source {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
        bytes: 1_648_877,
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    },
    Source {
        url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
        bytes: 4_542,
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
];

/// Tries per file before giving up.
const ATTEMPTS: u32 = 3;

/// The cache directory: `$BNSWEEP_DATA`, else `$XDG_CACHE_HOME/bnsweep/data`, else
/// `~/.cache/bnsweep/data`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BNSWEEP_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("bnsweep").join("data")
}

/// Where to download `source` from: its official address, or the same file name under
/// `$BNSWEEP_DATA_MIRROR`.
fn address(source: &Source) -> String {
    match std::env::var("BNSWEEP_DATA_MIRROR") {
        Ok(m) if !m.is_empty() => format!("{}/{}", m.trim_end_matches('/'), source.file_name()),
        _ => source.url.to_string(),
    }
}

/// The CIFAR-10 binary directory in the cache, downloaded and unpacked first if needed.
pub fn cifar10() -> Result<PathBuf> {
    let cache = cache_dir();
    let dir = cache.join("cifar-10-batches-bin");
    if dir.join("test_batch.bin").is_file() {
        return Ok(dir);
    }
    let _lock = lock(&cache)?;
    if dir.join("test_batch.bin").is_file() {
        return Ok(dir); // another process unpacked it while this one waited
    }
    let archive = cache.join("downloads").join(CIFAR10.file_name());
    ensure(&CIFAR10, &address(&CIFAR10), &archive)?;
    let unpacking = cache.join(format!(".unpacking-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&unpacking);
    let unpacked = File::open(&archive)
        .and_then(|f| tar::Archive::new(flate2::read::GzDecoder::new(f)).unpack(&unpacking));
    unpacked.map_err(|e| data_error(&archive, format!("cannot unpack: {e}")))?;
    let inner = unpacking.join("cifar-10-batches-bin");
    if !inner.join("test_batch.bin").is_file() {
        return Err(data_error(
            &archive,
            "holds no cifar-10-batches-bin/test_batch.bin",
        ));
    }
    rename_into_place(&inner, &dir)?;
    let _ = std::fs::remove_dir_all(&unpacking);
    Ok(dir)
}

/// The MNIST directory in the cache (the four idx files, uncompressed), downloaded first if
/// needed.
pub fn mnist() -> Result<PathBuf> {
    let cache = cache_dir();
    let dir = cache.join("mnist");
    let complete = |d: &Path| MNIST.iter().all(|s| d.join(idx_name(s)).is_file());
    if complete(&dir) {
        return Ok(dir);
    }
    let _lock = lock(&cache)?;
    std::fs::create_dir_all(&dir).map_err(|e| data_error(&dir, format!("cannot create: {e}")))?;
    for source in &MNIST {
        let target = dir.join(idx_name(source));
        if target.is_file() {
            continue;
        }
        let gz = cache.join("downloads").join(source.file_name());
        ensure(source, &address(source), &gz)?;
        let partial = target.with_extension("partial");
        let copied = File::open(&gz).and_then(|f| {
            let mut out = File::create(&partial)?;
            std::io::copy(&mut flate2::read::GzDecoder::new(f), &mut out)?;
            out.sync_all()
        });
        copied.map_err(|e| data_error(&gz, format!("cannot decompress: {e}")))?;
        std::fs::rename(&partial, &target)
            .map_err(|e| data_error(&target, format!("cannot rename into place: {e}")))?;
    }
    Ok(dir)
}

/// `train-images-idx3-ubyte` for `train-images-idx3-ubyte.gz`.
fn idx_name(source: &Source) -> &'static str {
    source.file_name().trim_end_matches(".gz")
}

/// Makes sure `path` holds `source`'s file, checked: kept if it is already there and matches,
/// otherwise downloaded from `url` (up to three tries, each checked before it is renamed into
/// place). The error names the address and the path to put the file at by hand.
pub fn ensure(source: &Source, url: &str, path: &Path) -> Result<()> {
    if path.is_file() && check(source, path).is_ok() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| data_error(dir, format!("cannot create: {e}")))?;
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            eprintln!("bnsweep-worker: {why}; trying again ({attempt} of {ATTEMPTS})");
            std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
        }
        let got = download(source, url, &partial).and_then(|()| check(source, &partial));
        match got {
            Ok(()) => {
                return std::fs::rename(&partial, path)
                    .map_err(|e| data_error(path, format!("cannot rename into place: {e}")));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                why = e;
            }
        }
    }
    Err(data_error(
        path,
        format!(
            "could not download {url}: {why}. Offline? Put the official file there by hand \
             ({} bytes, SHA-256 {}), or point BNSWEEP_DATA_MIRROR at a copy, and run again",
            source.bytes, source.sha256
        ),
    ))
}

/// Streams `url` into `to`, showing progress on stderr.
fn download(source: &Source, url: &str, to: &Path) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer must not hold the cache's lock (and every slot waiting on it)
        // for ever: 170 MB in 30 minutes is under 100 kB/s.
        .timeout_recv_body(Some(Duration::from_secs(30 * 60)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut body = response.into_body().into_reader();
    let mut out = File::create(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut done, mut shown) = (0u64, Instant::now());
    eprintln!(
        "bnsweep-worker: downloading {url} ({:.1} MB) to {}",
        source.bytes as f64 / 1e6,
        to.display()
    );
    loop {
        let n = body.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > source.bytes {
            return Err(format!("more than the expected {} bytes", source.bytes));
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        if shown.elapsed() > Duration::from_secs(5) {
            shown = Instant::now();
            eprintln!(
                "bnsweep-worker: {}: {:.0} % ({:.1} of {:.1} MB)",
                source.file_name(),
                100.0 * done as f64 / source.bytes as f64,
                done as f64 / 1e6,
                source.bytes as f64 / 1e6
            );
        }
    }
    out.sync_all().map_err(|e| e.to_string())
}

/// Whether `path` is `source`'s file: its size, then its SHA-256.
fn check(source: &Source, path: &Path) -> Result<(), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != source.bytes {
        return Err(format!(
            "got {len} bytes, expected {} (cut short?)",
            source.bytes
        ));
    }
    let mut hash = Sha256::new();
    std::io::copy(&mut f, &mut hash).map_err(|e| e.to_string())?;
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if hex != source.sha256 {
        return Err(format!(
            "SHA-256 {hex} does not match the expected {} (corrupt or another file)",
            source.sha256
        ));
    }
    Ok(())
}

/// An exclusive lock on the cache, held until dropped.
fn lock(cache: &Path) -> Result<File> {
    std::fs::create_dir_all(cache).map_err(|e| data_error(cache, format!("cannot create: {e}")))?;
    let path = cache.join(".lock");
    let f = File::create(&path).map_err(|e| data_error(&path, format!("cannot create: {e}")))?;
    f.lock()
        .map_err(|e| data_error(&path, format!("cannot lock: {e}")))?;
    Ok(f)
}

fn rename_into_place(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        data_error(
            to,
            format!("cannot rename {} into place: {e}", from.display()),
        )
    })
}

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// What the test server answers for its n-th request (0-based).
    type Answer = dyn Fn(usize) -> Vec<u8> + Send + Sync;

    /// A real HTTP/1.1 server on a loopback socket; returns its base URL and the number of
    /// requests it has served.
    fn serve(answer: Arc<Answer>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let n = count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&answer(n));
            }
        });
        (url, served)
    }

    /// A response with `body`, declaring `declared` bytes.
    fn response(body: &[u8], declared: usize) -> Vec<u8> {
        let mut out =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n")
                .into_bytes();
        out.extend_from_slice(body);
        out
    }

    const BODY: &[u8] = b"hello, dataset\n";

    /// BODY's checksum as `printf 'hello, dataset\n' | sha256sum` prints it: the check
    /// below computes it with the sha2 crate, an independent implementation.
    fn source() -> Source {
        Source {
            url: "http://unused/file.bin",
            bytes: BODY.len() as u64,
            sha256: "d9b3debf14de15c59fd45dd28136ec4699f1de0f4c24954b4db5a28916e98c33",
        }
    }

    #[test]
    fn a_good_download_is_kept_and_not_fetched_again() {
        let (url, served) = serve(Arc::new(|_| response(BODY, BODY.len())));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.bin");
        ensure(&source(), &format!("{url}/file.bin"), &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), BODY);
        ensure(&source(), &format!("{url}/file.bin"), &path).unwrap();
        assert_eq!(
            served.load(Ordering::SeqCst),
            1,
            "checked, not downloaded again"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no partial file left");
    }

    #[test]
    fn a_corrupt_or_truncated_download_is_refused_and_tried_again() {
        // First a corrupt body of the right size, then one cut short, then the file.
        let answers: Arc<Answer> = Arc::new(|n| match n {
            0 => response(b"HELLO, DATASET\n", BODY.len()),
            1 => response(&BODY[..5], BODY.len()),
            _ => response(BODY, BODY.len()),
        });
        let (url, served) = serve(answers);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.bin");
        ensure(&source(), &format!("{url}/file.bin"), &path).unwrap();
        assert_eq!(served.load(Ordering::SeqCst), 3);
        assert_eq!(std::fs::read(&path).unwrap(), BODY);
    }

    #[test]
    fn a_download_that_never_matches_is_never_used() {
        let (url, served) = serve(Arc::new(|_| response(b"HELLO, DATASET\n", BODY.len())));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.bin");
        let err = ensure(&source(), &format!("{url}/file.bin"), &path).unwrap_err();
        assert_eq!(served.load(Ordering::SeqCst), ATTEMPTS as usize);
        assert!(
            !path.exists(),
            "a file that does not match is not left in place"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        let msg = err.to_string();
        assert!(msg.contains("SHA-256") && msg.contains("file.bin"), "{msg}");
        assert!(!err.retryable());
    }

    #[test]
    fn offline_the_error_names_the_address_and_where_to_put_the_file() {
        // A port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-binary.tar.gz");
        let err = ensure(&CIFAR10, &url, &path).unwrap_err().to_string();
        for part in [url.as_str(), &path.display().to_string(), CIFAR10.sha256] {
            assert!(err.contains(part), "`{part}` missing from: {err}");
        }
    }
}
