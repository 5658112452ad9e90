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
//!
//! `tables` builds its Parquet tables and writes them; `columns` reads any of them back as
//! plain columns (the report, and `trials.parquet` on resuming); `journal` keeps the rows of
//! running attempts and the log of ended trials.

pub mod columns;
pub mod journal;
mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bnsweep_proto as pb;

use crate::error::{Error, Result};
use crate::sweep::Sweep;
use crate::trial::{Prior, Status, Summary, Tally, TrialRecord};
use journal::{Journal, Restored};

pub use tables::{read_row_count, ParamColumn};

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
                let always = pb::Table::ALL.into_iter().filter(|t| t.always());
                for sub in ["", "logs"].into_iter().chain(always.map(pb::Table::name)) {
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
        status: Status,
        measure: Option<&crate::sweep::measure::MeasureConfig>,
    ) -> std::result::Result<(), String> {
        let rows = |table: pb::Table| -> std::result::Result<Option<i64>, String> {
            let path = self
                .dir
                .join(table.name())
                .join(format!("{}.parquet", trial.id));
            if !path.exists() {
                return Ok(None);
            }
            read_row_count(&path).map(Some).map_err(|e| format!("{e}"))
        };
        let train = rows(pb::Table::Train)?.ok_or("its train table is missing")?;
        let eval = rows(pb::Table::Eval)?.ok_or("its eval table is missing")?;
        let measured = measure.filter(|m| {
            status == Status::Completed
                && m.every > 0
                && trial.config.steps >= m.every
                && (m.ics || m.weights || m.landscape.is_some() || m.activations.is_some())
        });
        for table in pb::Table::ALL.into_iter().filter(|t| !t.always()) {
            let needed = measured.is_some_and(|m| match table {
                pb::Table::Train | pb::Table::Eval | pb::Table::Layers => true,
                pb::Table::Landscape => m.landscape.is_some(),
                pb::Table::Activations => m.activations.is_some(),
            });
            if rows(table)?.is_none() && needed {
                return Err(format!("its {table} table is missing"));
            }
        }
        let steps = trial.config.steps as i64;
        match status {
            Status::Completed if train != steps => Err(format!(
                "its train table has {train} rows for {steps} steps"
            )),
            Status::Completed if eval < 1 => Err("its eval table is empty".into()),
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

    /// Writes the tables of a trial that has ended, from its attempt's journal: train and eval
    /// always, the measurement tables (layers, landscape, activations) when the trial measured
    /// them. The journal is read a batch at a time and the rows go to the tables a few thousand
    /// at a time, so that writing a trial takes memory that does not grow with its rows. What
    /// the journal gives must be what the coordinator counted (`tally`), or nothing is written.
    pub fn write_trial(&self, record: &TrialRecord, tally: &Tally) -> Result<()> {
        let mut tables = TrialTables::create(self, record, tally)?;
        let streamed = self.stream_journal(record, tally, &mut tables);
        if let Err(e) = streamed {
            tables.abandon();
            return Err(e);
        }
        let dirs = tables.finish()?;
        for d in dirs {
            // The renames are durable with the next journal sync (the one that makes the
            // trial's line in ended.log durable), shared with other trials ending meanwhile.
            let _ = self.journal.renamed_into(&d)?;
        }
        Ok(())
    }

    /// Feeds the attempt's journaled rows to its tables, and checks that they are what was
    /// counted while it ran.
    fn stream_journal(
        &self,
        record: &TrialRecord,
        tally: &Tally,
        tables: &mut TrialTables,
    ) -> Result<()> {
        if tally.next_seq == 0 {
            return Ok(()); // it sent nothing (a failure before its first batch)
        }
        let mut reader = self.journal.batches(&record.trial.id, record.attempts)?;
        while let Some(batch) = reader.next_batch()? {
            tables.add(&self.params, record, batch)?;
        }
        tables.flush(&self.params, record)?;
        let read = reader.tally();
        let (counted, journaled) = (tally.rows.per_table(), read.rows.per_table());
        if counted != journaled {
            return Err(Error::io(
                reader.path(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the journal of trial {} attempt {} holds {} batches with {journaled:?} rows (train, eval, layers, landscape, activations), but {} batches with {counted:?} were acknowledged",
                        record.trial.id, record.attempts, read.next_seq, tally.next_seq
                    ),
                ),
            ));
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

/// Rows decoded from the journal wait in a table's buffer until this many are there, then go
/// to its Parquet writer as one record batch.
const CHUNK: usize = 4096;

/// Builds a record batch of a table from its rows.
type Build<T> = fn(&[ParamColumn], &TrialRecord, &[T]) -> Result<arrow_array::RecordBatch>;

/// One table of a trial being written: its file, and the rows waiting for the next chunk.
struct Streamed<T> {
    writer: tables::TableWriter,
    dir: PathBuf,
    rows: Vec<T>,
    build: Build<T>,
    /// Takes this table's rows out of a batch.
    take: fn(&mut pb::MetricsBatch) -> Vec<T>,
}

/// A table being written, whatever its kind of row.
trait Sink {
    /// Takes this table's rows out of `batch`, writing a chunk when enough are waiting.
    fn add(
        &mut self,
        params: &[ParamColumn],
        record: &TrialRecord,
        batch: &mut pb::MetricsBatch,
    ) -> Result<()>;
    /// Writes the rows still waiting.
    fn flush(&mut self, params: &[ParamColumn], record: &TrialRecord) -> Result<()>;
    /// Its writer and directory.
    fn into_parts(self: Box<Self>) -> (tables::TableWriter, PathBuf);
}

impl<T: 'static> Streamed<T> {
    /// Starts the table `table` of a trial, of `rows` rows.
    fn create(
        (results, table, record, rows): (&ResultsDir, pb::Table, &TrialRecord, u64),
        build: Build<T>,
        take: fn(&mut pb::MetricsBatch) -> Vec<T>,
    ) -> Result<Box<dyn Sink>> {
        let dir = results.dir.join(table.name());
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let schema = build(&results.params, record, &[])?.schema();
        let path = dir.join(format!("{}.parquet", record.trial.id));
        Ok(Box::new(Streamed {
            writer: tables::TableWriter::create(&path, schema, rows)?,
            dir,
            rows: Vec::new(),
            build,
            take,
        }))
    }
}

impl<T> Sink for Streamed<T> {
    fn add(
        &mut self,
        params: &[ParamColumn],
        record: &TrialRecord,
        batch: &mut pb::MetricsBatch,
    ) -> Result<()> {
        self.rows.extend((self.take)(batch));
        if self.rows.len() >= CHUNK {
            self.flush(params, record)?;
        }
        Ok(())
    }

    fn flush(&mut self, params: &[ParamColumn], record: &TrialRecord) -> Result<()> {
        for chunk in self.rows.chunks(CHUNK) {
            self.writer.write(&(self.build)(params, record, chunk)?)?;
        }
        self.rows.clear();
        self.rows.shrink_to(CHUNK);
        Ok(())
    }

    fn into_parts(self: Box<Self>) -> (tables::TableWriter, PathBuf) {
        (self.writer, self.dir)
    }
}

/// Starts one table of a trial: the one place that pairs each table with how its rows become
/// columns and where they are in a batch.
fn start_table(
    results: &ResultsDir,
    table: pb::Table,
    record: &TrialRecord,
    rows: u64,
) -> Result<Box<dyn Sink>> {
    use std::mem::take;
    let target = (results, table, record, rows);
    match table {
        pb::Table::Train => Streamed::create(target, tables::train_batch, |b| take(&mut b.train)),
        pb::Table::Eval => Streamed::create(target, tables::eval_batch, |b| take(&mut b.eval)),
        pb::Table::Layers => {
            Streamed::create(target, tables::layers_batch, |b| take(&mut b.layers))
        }
        pb::Table::Landscape => {
            Streamed::create(target, tables::landscape_batch, |b| take(&mut b.landscape))
        }
        pb::Table::Activations => Streamed::create(target, tables::activations_batch, |b| {
            take(&mut b.activations)
        }),
    }
}

/// The tables of a trial being written from its journal, each under a temporary name until
/// every one is whole: train and eval always, a measurement table when the trial sent rows
/// for it; in [`pb::Table::ALL`]'s order.
struct TrialTables(Vec<Box<dyn Sink>>);

impl TrialTables {
    fn create(results: &ResultsDir, record: &TrialRecord, tally: &Tally) -> Result<TrialTables> {
        let mut made = TrialTables(Vec::new());
        // Started one by one: one that cannot be leaves none behind.
        for table in pb::Table::ALL {
            let rows = tally.rows[table];
            if !table.always() && rows == 0 {
                continue;
            }
            match start_table(results, table, record, rows) {
                Ok(sink) => made.0.push(sink),
                Err(e) => {
                    made.abandon();
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    /// Each table takes its rows of a batch. Rows of a table the trial was not counted as
    /// having are refused (the counts of the journal then differ from the tally, and nothing
    /// is written).
    fn add(
        &mut self,
        params: &[ParamColumn],
        record: &TrialRecord,
        mut batch: pb::MetricsBatch,
    ) -> Result<()> {
        for sink in &mut self.0 {
            sink.add(params, record, &mut batch)?;
        }
        match pb::Table::ALL.into_iter().find(|&t| batch.rows_of(t) > 0) {
            None => Ok(()),
            Some(kind) => Err(Error::Refused(format!(
                "the journal of trial {} attempt {} holds {kind} rows that were not acknowledged",
                record.trial.id, record.attempts
            ))),
        }
    }

    fn flush(&mut self, params: &[ParamColumn], record: &TrialRecord) -> Result<()> {
        self.0
            .iter_mut()
            .try_for_each(|sink| sink.flush(params, record))
    }

    /// Syncs the tables and renames them into place, train first; returns their directories
    /// (to be synced). A table that cannot be finished removes the ones not yet renamed.
    fn finish(self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        let mut pending = self.0.into_iter().map(|sink| sink.into_parts());
        while let Some((writer, dir)) = pending.next() {
            if let Err(e) = writer.finish() {
                pending.for_each(|(w, _)| w.abandon());
                return Err(e);
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Removes every temporary file.
    fn abandon(self) {
        for sink in self.0 {
            sink.into_parts().0.abandon();
        }
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
        status: Status::parse(&e.status),
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
    use prost::Message;

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

    /// Batch `seq` of the attempt of the test below: 500 train rows, and an evaluation every
    /// other batch.
    fn sent(trial_id: &str, seq: u64) -> pb::MetricsBatch {
        let steps = seq * 500 + 1..=seq * 500 + 500;
        pb::MetricsBatch {
            worker_id: "w1-0000-h".into(),
            trial_id: trial_id.into(),
            attempt: 1,
            seq,
            train: steps
                .map(|step| pb::TrainRow {
                    step,
                    epoch: (step / 391) as u32,
                    loss: 1.0 / step as f64,
                    acc: (step % 100) as f64 / 100.0,
                    lr: 0.1 - step as f64 * 1e-6,
                    wall_s: step as f64 * 0.01,
                })
                .collect(),
            eval: if seq % 2 == 1 {
                vec![pb::EvalRow {
                    step: (seq + 1) * 500,
                    test_loss: 2.0 / seq as f64,
                    test_acc: seq as f64 / 20.0,
                }]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    /// A Parquet file's rows, as one record batch.
    fn read_table(path: &Path) -> arrow_array::RecordBatch {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let mut batches: Vec<_> =
            ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap())
                .unwrap()
                .with_batch_size(1 << 20)
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
        assert_eq!(batches.len(), 1);
        batches.remove(0)
    }

    /// The same columns with the same rows.
    fn same_table(got: &arrow_array::RecordBatch, expected: &arrow_array::RecordBatch) -> bool {
        got.schema().fields() == expected.schema().fields() && got.columns() == expected.columns()
    }

    /// A trial's tables are written from its journal, not from memory: every row sent once,
    /// though the journal holds a batch twice and was cut short by a kill (a torn last record)
    /// before the attempt carried on; and the files are the ones the same rows written in one
    /// go make. A journal that does not hold what was acknowledged writes nothing.
    /// A journal holding rows of a table the attempt was not counted as having is refused, and
    /// a table that cannot be started (its directory is a file) leaves none of the others'
    /// temporary files behind.
    #[test]
    fn a_trial_s_tables_are_all_written_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let text = "name: s\nparameters:\n  lr: [0.1]\ntrain: {steps: 10}\n";
        let sweep = Sweep::parse("s.yaml", text).unwrap();
        let trial = sweep.trials[0].clone();
        let header = pb::JournalHeader {
            trial_id: trial.id.clone(),
            attempt: 1,
            ..Default::default()
        };
        let mut batch = pb::MetricsBatch {
            trial_id: trial.id.clone(),
            attempt: 1,
            ..Default::default()
        };
        for step in 1..=10 {
            batch.push(pb::Row::Train(pb::TrainRow {
                step,
                ..Default::default()
            }));
        }
        batch.push(pb::Row::Eval(pb::EvalRow::default()));
        batch.push(pb::Row::Layer(pb::LayerRow::default()));
        batch.push(pb::Row::Landscape(pb::LandscapeRow::default()));
        let (results, _) = ResultsDir::open(&out, &sweep).unwrap();
        let j = results.journal();
        j.sync(j.begin(&header).unwrap()).unwrap();
        j.sync(j.append(&batch).unwrap()).unwrap();
        let record = TrialRecord {
            trial,
            status: Status::Completed,
            attempts: 1,
            handed_back: 0,
            summary: Summary::default(),
            last_step: 10,
            persisted: false,
        };
        let left = || {
            ["train", "eval", "layers", "landscape"]
                .iter()
                .flat_map(|d| fs::read_dir(out.join(d)).into_iter().flatten())
                .count()
        };

        let mut counted = Tally::default();
        counted.take(&batch);
        let mut without_layers = counted.clone();
        without_layers.rows[pb::Table::Layers] = 0;
        let err = results.write_trial(&record, &without_layers).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds layers rows that were not acknowledged"),
            "{err}"
        );
        assert_eq!(left(), 0);

        fs::remove_dir(out.join("landscape")).unwrap();
        fs::write(out.join("landscape"), "a file where the directory goes").unwrap();
        let err = results.write_trial(&record, &counted).unwrap_err();
        assert!(err.to_string().contains("landscape"), "{err}");
        assert_eq!(
            left(),
            0,
            "train, eval and layers were started, then removed"
        );

        fs::remove_file(out.join("landscape")).unwrap();
        results.write_trial(&record, &counted).unwrap();
        for d in ["train", "eval", "layers", "landscape"] {
            assert_eq!(fs::read_dir(out.join(d)).unwrap().count(), 1, "{d}");
        }
    }

    #[test]
    fn a_trial_s_tables_are_written_from_its_journal_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let text = "name: s\nparameters:\n  lr: [0.1]\ntrain: {steps: 10000, eval_every: 1000}\n";
        let sweep = Sweep::parse("s.yaml", text).unwrap();
        let trial = sweep.trials[0].clone();
        let id = trial.id.as_str();
        let header = pb::JournalHeader {
            trial_id: id.into(),
            attempt: 1,
            worker_id: "w1-0000-h".into(),
            ..Default::default()
        };
        {
            let (results, _) = ResultsDir::open(&out, &sweep).unwrap();
            let j = results.journal();
            j.sync(j.begin(&header).unwrap()).unwrap();
            for seq in 0..12 {
                j.sync(j.append(&sent(id, seq)).unwrap()).unwrap();
            }
            j.sync(j.append(&sent(id, 11)).unwrap()).unwrap(); // twice
        }
        // Killed while writing batch 12.
        let file = out.join("journal").join("attempt-000000.journal");
        let bytes = sent(id, 12).encode_to_vec();
        let mut torn = (bytes.len() as u32).to_le_bytes().to_vec();
        torn.extend(crc32fast::hash(&bytes).to_le_bytes());
        torn.extend(&bytes[..bytes.len() / 2]);
        let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
        std::io::Write::write_all(&mut f, &torn).unwrap();
        drop(f);

        let (results, resume) = ResultsDir::open(&out, &sweep).unwrap();
        assert_eq!(resume.running.len(), 1);
        let mut tally = resume.running[0].tally.clone();
        assert_eq!(
            (
                tally.next_seq,
                tally.rows[pb::Table::Train],
                tally.rows[pb::Table::Eval]
            ),
            (12, 6000, 6)
        );
        // The attempt carries on from batch 12 (resent whole) to its end.
        let j = results.journal();
        for seq in 12..20 {
            j.sync(j.append(&sent(id, seq)).unwrap()).unwrap();
            tally.take(&sent(id, seq));
        }
        let record = TrialRecord {
            trial: trial.clone(),
            status: Status::Completed,
            attempts: 1,
            handed_back: 0,
            summary: Summary::default(),
            last_step: 10_000,
            persisted: false,
        };
        let train = out.join("train").join(format!("{id}.parquet"));
        let eval = out.join("eval").join(format!("{id}.parquet"));

        // Counted one batch more than the journal holds: refused, nothing left behind.
        let mut more = tally.clone();
        more.take(&sent(id, 20));
        let err = results.write_trial(&record, &more).unwrap_err().to_string();
        assert!(err.contains("holds 20 batches"), "{err}");
        for d in ["train", "eval"] {
            assert_eq!(fs::read_dir(out.join(d)).unwrap().count(), 0, "{d}");
        }

        results.write_trial(&record, &tally).unwrap();
        let all: Vec<pb::MetricsBatch> = (0..20).map(|seq| sent(id, seq)).collect();
        let train_rows: Vec<pb::TrainRow> = all.iter().flat_map(|b| b.train.clone()).collect();
        let eval_rows: Vec<pb::EvalRow> = all.iter().flat_map(|b| b.eval.clone()).collect();
        let expected = tables::train_batch(&results.params, &record, &train_rows).unwrap();
        assert!(
            same_table(&read_table(&train), &expected),
            "train: each step once, in order"
        );
        let expected_eval = tables::eval_batch(&results.params, &record, &eval_rows).unwrap();
        assert!(same_table(&read_table(&eval), &expected_eval));
        // Byte for byte what writing the same rows in one go gives.
        let one_go = dir.path().join("one-go.parquet");
        tables::write_parquet(&one_go, &expected).unwrap();
        assert_eq!(fs::read(&train).unwrap(), fs::read(&one_go).unwrap());
        assert!(
            fs::read_dir(out.join("layers")).is_err(),
            "nothing measured"
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
        let priors: Vec<(&str, Option<Status>)> = resume
            .priors
            .iter()
            .map(|p| (p.trial_id.as_str(), p.status))
            .collect();
        assert_eq!(priors, [(id.as_str(), Some(Status::Completed))]);
    }
}
