//! The results directory, the public contract of bnsweep (docs/results.md):
//!
//! ```text
//! DIR/sweep.yaml               the sweep file as submitted
//! DIR/trials.parquet           one row per trial
//! DIR/train/<trial_id>.parquet one row per training step
//! DIR/eval/<trial_id>.parquet  one row per evaluation
//! DIR/logs/                    logs of the local workers (`bnsweep run`)
//! DIR/journal/                 rows of the attempts running now (see `journal`)
//! ```
//!
//! Every file appears whole or not at all: it is written under a temporary name and renamed.
//! A sweep run again on its own directory resumes: the trials `trials.parquet` records as
//! finished, whose files are there, are not run again.

pub mod journal;
mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bnsweep_proto as pb;

use crate::error::{Error, Result};
use crate::scheduler::{AttemptRows, Summary, TrialRecord};
use crate::sweep::Sweep;
use journal::{Journal, Restored};

pub use tables::{read_row_count, ParamColumn, Prior};

/// What a results directory holds, as seen by a sweep about to use it.
pub enum Holding {
    /// Nothing: it does not exist or is empty.
    Nothing,
    /// The results of this very sweep (the same trials), complete or not.
    Same,
    /// Something else, in words.
    Other(String),
}

/// Looks at what `dir` holds.
pub fn holds(dir: &Path, sweep: &Sweep) -> Result<Holding> {
    if !dir.exists() {
        return Ok(Holding::Nothing);
    }
    let mut entries = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != ".lock"));
    if entries.next().is_none() {
        return Ok(Holding::Nothing); // empty, or only its lock file
    }
    let stored = dir.join("sweep.yaml");
    let Ok(text) = fs::read_to_string(&stored) else {
        return Ok(Holding::Other(
            "files but no sweep.yaml (not a bnsweep results directory)".into(),
        ));
    };
    let Ok(earlier) = Sweep::parse(&stored.display().to_string(), &text) else {
        return Ok(Holding::Other(
            "a sweep.yaml this version cannot read".into(),
        ));
    };
    let ids = |s: &Sweep| {
        let mut v: Vec<String> = s.trials.iter().map(|t| t.id.clone()).collect();
        v.sort();
        v
    };
    if ids(&earlier) == ids(sweep) {
        Ok(Holding::Same)
    } else {
        Ok(Holding::Other(format!(
            "the results of another sweep (`{}`, {} trials)",
            earlier.name,
            earlier.trials.len()
        )))
    }
}

/// One results directory, one coordinator: an exclusive lock (flock) on `DIR/.lock`, which
/// holds the pid of the process that has it. The operating system lets it go when that
/// process ends, however it ends. A directory locked by another process is refused, naming it.
fn lock(dir: &Path) -> Result<fs::File> {
    let path = dir.join(".lock");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {
            use std::io::Write;
            f.set_len(0)
                .and_then(|()| writeln!(f, "{}", std::process::id()))
                .map_err(|e| Error::io(&path, e))?;
            Ok(f)
        }
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            Err(Error::Refused(format!(
                "{} is in use by another bnsweep (pid {}): one results directory, one coordinator; stop that one, or pass another --out",
                dir.display(),
                holder.trim()
            )))
        }
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Writes one sweep's results.
pub struct ResultsDir {
    dir: PathBuf,
    params: Vec<ParamColumn>,
    journal: Journal,
    /// `DIR/.lock`, locked for as long as this coordinator has the directory open.
    _lock: fs::File,
}

/// What an earlier run of the same sweep left in its directory.
#[derive(Default)]
pub struct Resume {
    /// How each trial stood: `trials.parquet`, brought up to date by the log of ended trials.
    pub priors: Vec<Prior>,
    /// Attempts that were running, read back from their journals.
    pub running: Vec<Restored>,
}

impl ResultsDir {
    /// Opens the results directory of a sweep: a new (or empty) one is created with
    /// `sweep.yaml`; one that holds the same sweep (the same trials) is resumed, and the trials
    /// it already finished are returned; one that holds anything else is refused, so that no
    /// earlier results are overwritten.
    pub fn open(dir: &Path, sweep: &Sweep) -> Result<(ResultsDir, Resume)> {
        // Locked before anything in it is read or written: of two coordinators started at
        // once on the same directory, the second is refused before it touches a file.
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock(dir)?;
        let mut priors = match holds(dir, sweep)? {
            Holding::Nothing => {
                for sub in ["", "train", "eval", "logs"] {
                    let d = dir.join(sub);
                    fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                }
                write_atomic(&dir.join("sweep.yaml"), sweep.source.as_bytes())?;
                Vec::new()
            }
            Holding::Same => {
                let d = dir.join("logs");
                fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                let path = dir.join("trials.parquet");
                if path.is_file() {
                    // Unreadable (cut short by a power loss): the log of ended trials below
                    // still says which trials finished; the others run again.
                    tables::read_trials(&path).unwrap_or_else(|e| {
                        eprintln!(
                            "bnsweep: {e}; resuming from {} alone",
                            dir.join("journal").join("ended.log").display()
                        );
                        Vec::new()
                    })
                } else {
                    Vec::new()
                }
            }
            Holding::Other(what) => {
                return Err(Error::Refused(format!(
                    "{} holds {what}; pass another --out, or remove it first",
                    dir.display()
                )))
            }
        };
        let (journal, recovered) = Journal::open(&dir.join("journal"))?;
        priors.extend(recovered.ended.into_iter().map(prior_of));
        let results = ResultsDir {
            dir: dir.to_path_buf(),
            params: tables::param_columns(sweep),
            journal,
            _lock: lock,
        };
        let resume = Resume {
            priors,
            running: recovered.running,
        };
        Ok((results, resume))
    }

    /// The journal of running attempts and ended trials.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Logs a trial whose files are written (before `trials.parquet` says so), durably: its
    /// files' renames and its line in the log are synced before this returns.
    pub fn log_ended(&self, r: &TrialRecord) -> Result<()> {
        let s = &r.summary;
        let ticket = self.journal.ended(&pb::TrialEnded {
            trial_id: r.trial.id.clone(),
            status: r.status.as_str().to_string(),
            attempts: r.attempts,
            worker: s.worker.clone().unwrap_or_default(),
            device: s.device.clone().unwrap_or_default(),
            started_at_ms: s.started_at.map_or(0, millis),
            ended_at_ms: s.ended_at.map_or(0, millis),
            final_test_acc: s.final_test_acc,
            final_train_loss: s.final_train_loss,
            error: s.error.clone().unwrap_or_default(),
        })?;
        self.journal.sync(ticket)
    }

    /// Whether the tables of a trial recorded as finished (`completed` or `diverged`) hold up
    /// on resume, after a crash or a power loss: train and eval are there, every table's footer
    /// reads, the train table has a row per step (completed) or at least the diverging one, and
    /// a completed trial that reached a measured step has the measurement tables `measure`
    /// implies (layers whenever anything is measured; landscape, activations when asked).
    pub fn check_trial_files(
        &self,
        trial: &crate::sweep::Trial,
        status: &str,
        measure: Option<&crate::sweep::measure::MeasureConfig>,
    ) -> std::result::Result<(), String> {
        let rows = |kind: &str| -> std::result::Result<Option<i64>, String> {
            let path = self.dir.join(kind).join(format!("{}.parquet", trial.id));
            if !path.exists() {
                return Ok(None);
            }
            read_row_count(&path).map(Some).map_err(|e| format!("{e}"))
        };
        let train = rows("train")?.ok_or("its train table is missing")?;
        let eval = rows("eval")?.ok_or("its eval table is missing")?;
        let measured = measure.filter(|m| {
            status == "completed"
                && m.every > 0
                && trial.config.steps >= m.every
                && (m.ics || m.weights || m.landscape.is_some() || m.activations.is_some())
        });
        for (kind, needed) in [
            ("layers", measured.is_some()),
            ("landscape", measured.is_some_and(|m| m.landscape.is_some())),
            (
                "activations",
                measured.is_some_and(|m| m.activations.is_some()),
            ),
        ] {
            if rows(kind)?.is_none() && needed {
                return Err(format!("its {kind} table is missing"));
            }
        }
        let steps = trial.config.steps as i64;
        match status {
            "completed" if train != steps => Err(format!(
                "its train table has {train} rows for {steps} steps"
            )),
            "completed" if eval < 1 => Err("its eval table is empty".into()),
            _ if train < 1 => Err("its train table is empty".into()),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Writes the tables of a trial that has ended: train and eval always, the measurement
    /// tables (layers, landscape, activations) when the trial measured them.
    pub fn write_trial(&self, record: &TrialRecord, rows: &AttemptRows) -> Result<()> {
        let p = &self.params;
        let mut tables = vec![
            ("train", tables::train_batch(p, record, &rows.train)?),
            ("eval", tables::eval_batch(p, record, &rows.eval)?),
        ];
        if !rows.layers.is_empty() {
            tables.push(("layers", tables::layers_batch(p, record, &rows.layers)?));
        }
        if !rows.landscape.is_empty() {
            tables.push((
                "landscape",
                tables::landscape_batch(p, record, &rows.landscape)?,
            ));
        }
        if !rows.activations.is_empty() {
            tables.push((
                "activations",
                tables::activations_batch(p, record, &rows.activations)?,
            ));
        }
        for (dir, batch) in tables {
            let d = self.dir.join(dir);
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
            tables::write_parquet(&d.join(format!("{}.parquet", record.trial.id)), &batch)?;
            // The renames are durable with the next journal sync (the one that makes the
            // trial's line in ended.log durable), shared with other trials ending meanwhile.
            let _ = self.journal.renamed_into(&d)?;
        }
        Ok(())
    }

    /// Rewrites `trials.parquet` from the records.
    pub fn write_trials(&self, records: &[TrialRecord]) -> Result<()> {
        let batch = tables::trials_batch(&self.params, records)?;
        let path = self.dir.join("trials.parquet");
        tables::write_parquet(&path, &batch)?;
        sync_dir(&path)
    }
}

/// Milliseconds since the Unix epoch, as the journal stores times.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A logged ended trial as a prior; later priors of a trial win.
fn prior_of(e: pb::TrialEnded) -> Prior {
    let time = |ms: u64| (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms));
    let text = |s: String| (!s.is_empty()).then_some(s);
    Prior {
        trial_id: e.trial_id,
        status: e.status,
        attempts: e.attempts,
        summary: Summary {
            worker: text(e.worker),
            device: text(e.device),
            started_at: time(e.started_at_ms),
            ended_at: time(e.ended_at_ms),
            final_test_acc: e.final_test_acc,
            final_train_loss: e.final_train_loss,
            error: text(e.error),
        },
    }
}

/// Writes a file under a temporary name in the same directory, syncs it, then renames it
/// into place and syncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so that a rename into it survives a power loss.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_results_directory_one_coordinator() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sweep = Sweep::parse("s.yaml", "name: s\nparameters:\n  lr: [0.1]\n").unwrap();
        let (first, _) = ResultsDir::open(&out, &sweep).unwrap();
        // A second coordinator on the same directory (the same sweep, so it would resume) is
        // refused before it touches the journal, and told who holds it.
        let err = ResultsDir::open(&out, &sweep).err().unwrap().to_string();
        let pid = std::process::id().to_string();
        assert!(
            err.contains("in use by another bnsweep") && err.contains(&pid),
            "{err}"
        );
        drop(first);
        assert!(
            ResultsDir::open(&out, &sweep).is_ok(),
            "free again once the first has closed it"
        );
    }

    #[test]
    fn an_unreadable_trials_table_falls_back_on_the_log_of_ended_trials() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sweep = Sweep::parse("s.yaml", "name: s\nparameters:\n  lr: [0.1, 0.2]\n").unwrap();
        let id = sweep.trials[1].id.clone();
        {
            let (results, _) = ResultsDir::open(&out, &sweep).unwrap();
            let ticket = results
                .journal()
                .ended(&pb::TrialEnded {
                    trial_id: id.clone(),
                    status: "completed".into(),
                    attempts: 1,
                    ..Default::default()
                })
                .unwrap();
            results.journal().sync(ticket).unwrap();
        }
        // A power loss left trials.parquet cut short.
        fs::write(out.join("trials.parquet"), b"PAR1 and nothing after").unwrap();
        let (_, resume) = ResultsDir::open(&out, &sweep).unwrap();
        let priors: Vec<(&str, &str)> = resume
            .priors
            .iter()
            .map(|p| (p.trial_id.as_str(), p.status.as_str()))
            .collect();
        assert_eq!(priors, [(id.as_str(), "completed")]);
    }
}
