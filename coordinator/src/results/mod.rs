//! The results directory, the public contract of bnsweep (docs/results.md):
//!
//! ```text
//! DIR/sweep.yaml               the sweep file as submitted
//! DIR/trials.parquet           one row per trial
//! DIR/train/<trial_id>.parquet one row per training step
//! DIR/eval/<trial_id>.parquet  one row per evaluation
//! DIR/logs/                    logs of the local workers (`bnsweep run`)
//! ```
//!
//! Every file appears whole or not at all: it is written under a temporary name and renamed.

mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::scheduler::{AttemptRows, TrialRecord};
use crate::sweep::Sweep;

pub use tables::{read_row_count, ParamColumn};

/// Writes one sweep's results.
pub struct ResultsDir {
    dir: PathBuf,
    params: Vec<ParamColumn>,
}

impl ResultsDir {
    /// Creates the directory and writes `sweep.yaml`. An existing directory holding files is
    /// refused, so that no earlier results are overwritten.
    pub fn create(dir: &Path, sweep: &Sweep) -> Result<ResultsDir> {
        if dir.exists() {
            let mut entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::Refused(format!(
                    "{} already exists and is not empty; pass another --out, or remove it first",
                    dir.display()
                )));
            }
        }
        for sub in ["", "train", "eval", "logs"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        let results = ResultsDir {
            dir: dir.to_path_buf(),
            params: tables::param_columns(sweep),
        };
        write_atomic(&dir.join("sweep.yaml"), sweep.source.as_bytes())?;
        Ok(results)
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
        }
        Ok(())
    }

    /// Rewrites `trials.parquet` from the records.
    pub fn write_trials(&self, records: &[TrialRecord]) -> Result<()> {
        let batch = tables::trials_batch(&self.params, records)?;
        tables::write_parquet(&self.dir.join("trials.parquet"), &batch)
    }
}

/// Writes a file under a temporary name in the same directory, then renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}
