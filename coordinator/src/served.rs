//! A sweep being served: its scheduler (behind one lock, every change made through it), its
//! results directory, and the writing of its files outside the lock: `trials.parquet` when
//! it is due, an ended trial's tables from its journal (a bounded number at once), and what a
//! full disk held back, once it can. One per sweep, whoever serves it (`bnsweep serve`, `run`
//! or `server`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bnsweep_proto as pb;
use tonic::Status;

use crate::error::{Error, Result};
use crate::results::ResultsDir;
use crate::scheduler::{Finished, Scheduler};

/// A sweep being served.
pub struct ServedSweep {
    pub scheduler: Mutex<Scheduler>,
    pub results: ResultsDir,
    /// Held while `trials.parquet` is rewritten, so that two rewrites never interleave; holds
    /// when it was last rewritten.
    write_lock: Mutex<Instant>,
    /// Set when the records changed since `trials.parquet` was last rewritten.
    dirty: AtomicBool,
    /// Trials that ended while the disk took no writes (full): they wait here (their rows in
    /// their journals) and are written once it does.
    unwritten: Mutex<Vec<Finished>>,
    /// Set while the disk refuses writes, so that it is said once, not at every write.
    disk_full: AtomicBool,
    /// However many trials end at once (every worker's, when they run in step), only so many
    /// are written at a time, so that the memory their writers take is bounded as well as
    /// each writer's (`ResultsDir::write_trial`).
    writing: Permits,
}

/// A counting semaphore for blocking threads.
struct Permits {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One of the [`Permits`], given back when dropped.
struct Permit<'a>(&'a Permits);

impl Permits {
    /// Trials' tables written at once: twice the cores (writing is encoding and compressing,
    /// and syncing, which the others overlap), at least 8.
    fn for_writing() -> Permits {
        let n = std::thread::available_parallelism().map_or(8, |n| (2 * n.get()).max(8));
        Permits {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a permit.
    fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// How often `trials.parquet` is rewritten at most while trials end; the log of ended trials
/// covers the time between.
const REWRITE_EVERY: Duration = Duration::from_secs(1);

impl ServedSweep {
    pub fn new(scheduler: Scheduler, results: ResultsDir) -> Arc<ServedSweep> {
        Arc::new(ServedSweep {
            scheduler: Mutex::new(scheduler),
            results,
            write_lock: Mutex::new(Instant::now()),
            dirty: AtomicBool::new(true),
            unwritten: Mutex::new(Vec::new()),
            disk_full: AtomicBool::new(false),
            writing: Permits::for_writing(),
        })
    }

    /// Notes that `trials.parquet` is behind the records.
    pub fn touch(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Notes how a write went: a full (or failing) disk is said once, with the directory,
    /// and so is its recovery. Storage errors are kept from stopping the coordinator.
    pub fn storage<T>(&self, written: Result<T>) -> Result<Option<T>> {
        match written {
            Ok(v) => {
                if self.disk_full.swap(false, Ordering::SeqCst) {
                    eprintln!(
                        "bnsweep: {} takes writes again; carrying on",
                        self.results.dir().display()
                    );
                }
                Ok(Some(v))
            }
            Err(e) if e.is_storage() => {
                if !self.disk_full.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "bnsweep: cannot write to {} ({e}); keeping every row in the journal and answering workers UNAVAILABLE until it takes writes again (free some space)",
                        self.results.dir().display()
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The answer to a call that could not write: UNAVAILABLE on a full disk (said once), so
    /// that the worker backs off and retries; the error's own code otherwise.
    pub fn refuse(&self, e: Error) -> Status {
        let dir = self.results.dir().display().to_string();
        match self.storage(Err::<(), Error>(e)) {
            Ok(_) => {
                let mut s = Status::unavailable(format!(
                    "the coordinator cannot write to {dir} now (disk full?): try again later"
                ));
                // The coordinator is there, only waiting: workers do not count this against
                // their patience.
                s.metadata_mut()
                    .insert(pb::WAITING_ON_DISK, "1".parse().expect("ASCII"));
                s
            }
            Err(e) => e.into(),
        }
    }

    /// Writes the trials that ended while the disk was full, now that it may take them.
    pub fn write_unwritten(&self) -> Result<()> {
        let waiting =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|e| e.into_inner()));
        let mut waiting = waiting.into_iter();
        while let Some(f) = waiting.next() {
            if let Err(e) = self.persist(f) {
                // Another kind of failure (a read-only file system): the rest keep waiting.
                self.unwritten
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(waiting);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Rewrites `trials.parquet` when the records changed and it was last rewritten over
    /// `REWRITE_EVERY` ago.
    pub fn write_trials_if_due(&self) -> Result<()> {
        let due = self.dirty.load(Ordering::SeqCst)
            && self
                .write_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                >= REWRITE_EVERY;
        if due {
            self.write_trials()?;
        }
        Ok(())
    }

    pub fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites `trials.parquet` from the current records.
    pub fn write_trials(&self) -> Result<()> {
        let mut last = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty.store(false, Ordering::SeqCst);
        let records = self.scheduler().records().to_vec();
        *last = Instant::now();
        self.results
            .write_trials(&records)
            .inspect_err(|_| self.touch())
    }

    /// Writes a trial that just ended and logs it, then counts it as done. A trial whose
    /// files cannot be written ends `failed` with the reason; on a full disk it waits instead
    /// (its rows in its journal) and is written once the disk takes writes.
    pub fn persist(&self, finished: Finished) -> Result<()> {
        let record = self.scheduler().records()[finished.index].clone();
        let written = {
            let _permit = self.writing.take();
            self.results.write_trial(&record, &finished.tally)
        };
        let written = match self.storage(written) {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                self.unwritten
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(finished);
                return Ok(());
            }
            Err(e) => Err(e),
        };
        let record = {
            let mut s = self.scheduler();
            if let Err(e) = &written {
                s.fail_unwritten(finished.index, format!("writing results: {e}"));
            }
            s.records()[finished.index].clone()
        };
        // On a full disk the line waits: trials.parquet records the trial once it is rewritten.
        let logged = self.storage(self.results.log_ended(&record));
        if logged.is_ok() {
            self.results
                .journal()
                .end(&record.trial.id, record.attempts);
        }
        // Done last: once every trial is, the sweep ends and its journal is removed, which
        // must not find this trial's journal still in use.
        self.scheduler().persisted(finished.index);
        self.touch();
        logged?;
        written
    }

    /// Removes the journals of attempts that ended without a result.
    pub fn end_journals(&self) {
        let ended = self.scheduler().take_ended();
        for (trial, attempt) in ended {
            self.results.journal().end(&trial, attempt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn no_more_trials_are_written_at_once_than_there_are_permits() {
        let permits = Permits {
            free: Mutex::new(2),
            freed: std::sync::Condvar::new(),
        };
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let _permit = permits.take();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(*permits.free.lock().unwrap(), 2, "every permit given back");
    }
}
