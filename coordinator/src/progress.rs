//! The progress line: trials done / running / queued, and an estimate of the time left.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::scheduler::Progress;

pub struct Reporter {
    start: Instant,
    tty: bool,
    last: Option<(Instant, Progress)>,
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn line(p: &Progress, elapsed: Duration) -> String {
    let eta = if p.fraction > 0.0 && p.fraction < 1.0 {
        human(elapsed.mul_f64((1.0 - p.fraction) / p.fraction))
    } else if p.fraction >= 1.0 {
        "0s".into()
    } else {
        "?".into()
    };
    format!(
        "[{}] {}/{} trials done ({} completed, {} diverged, {} failed) | {} running | {} queued | {} workers | {:.0}% | ETA {}",
        human(elapsed),
        p.finished(),
        p.total,
        p.completed,
        p.diverged,
        p.failed,
        p.running,
        p.queued,
        p.workers,
        p.fraction * 100.0,
        eta
    )
}

impl Reporter {
    /// Shows the progress: in place on a terminal, else a line when something changed (at most
    /// every 10 s) .
    pub fn show(&mut self, p: &Progress) {
        let now = Instant::now();
        let text = line(p, now - self.start);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
        } else {
            let due = match &self.last {
                None => true,
                Some((at, last)) => {
                    (last.finished() != p.finished() || last.running != p.running)
                        && now - *at >= Duration::from_secs(2)
                        || now - *at >= Duration::from_secs(10)
                }
            };
            if !due {
                return;
            }
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
        self.last = Some((now, p.clone()));
    }

    /// Ends the display with the final state on a line of its own.
    pub fn finish(&mut self, p: &Progress) {
        let text = line(p, self.start.elapsed());
        if self.tty {
            eprintln!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }
}

/// The progress a coordinator reports in its answer to `Status`.
pub fn of_status(s: &bnsweep_proto::StatusResponse) -> Progress {
    Progress {
        total: s.total as usize,
        queued: s.queued as usize,
        running: s.running as usize,
        completed: s.completed as usize,
        diverged: s.diverged as usize,
        failed: s.failed as usize,
        fraction: s.fraction,
        workers: s.workers.len(),
    }
}

/// A sweep's state in a word, from its `Status`: `finished`, `cancelled`, `running` (trials
/// running) or `queued`.
pub fn state(s: &bnsweep_proto::StatusResponse) -> &'static str {
    if s.finished {
        "finished"
    } else if s.cancelled {
        "cancelled"
    } else if s.running > 0 {
        "running"
    } else {
        "queued"
    }
}
