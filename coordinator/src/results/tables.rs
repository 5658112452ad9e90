//! Arrow tables of the results and their Parquet files: each table's batch built from a
//! trial's record and rows, written whole or streamed (`TableWriter`); `trials.parquet` read
//! back for resuming (`read_trials`, on the shared reader of `columns`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use bnsweep_proto as pb;

use super::columns::{read_table, Column, Table};
use crate::error::{Error, Result};
use crate::sweep::config::Kind;
use crate::sweep::{ParamValue, Sweep};
use crate::trial::{Prior, Status, Summary, TrialRecord};

/// A swept parameter as a column: its name in the results, its type, its field path.
#[derive(Debug, Clone)]
pub struct ParamColumn {
    pub name: String,
    pub kind: Kind,
    pub field: &'static str,
}

pub(crate) fn param_columns(sweep: &Sweep) -> Vec<ParamColumn> {
    sweep
        .param_columns()
        .into_iter()
        .map(|(name, kind, field)| ParamColumn { name, kind, field })
        .collect()
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Float => DataType::Float64,
        Kind::Int => DataType::Int64,
        Kind::Bool => DataType::Boolean,
        // Lists are never swept (the sweep file refuses it); written as text if ever.
        Kind::Str | Kind::IntList => DataType::Utf8,
    }
}

fn value(record: &TrialRecord, field: &str) -> ParamValue {
    if field == "seed" {
        ParamValue::Int(record.trial.config.seed as i64)
    } else {
        record.trial.config.get(field)
    }
}

/// One column holding each record's value of a parameter, repeated `repeat(i)` times.
fn param_array(
    col: &ParamColumn,
    records: &[&TrialRecord],
    repeat: impl Fn(usize) -> usize,
) -> ArrayRef {
    let values: Vec<(ParamValue, usize)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (value(r, col.field), repeat(i)))
        .collect();
    match col.kind {
        Kind::Float => {
            let mut b = Float64Builder::new();
            for (v, n) in &values {
                let ParamValue::Float(x) = v else {
                    unreachable!("typed by the field")
                };
                (0..*n).for_each(|_| b.append_value(*x));
            }
            Arc::new(b.finish())
        }
        Kind::Int => {
            let mut b = Int64Builder::new();
            for (v, n) in &values {
                let ParamValue::Int(x) = v else {
                    unreachable!("typed by the field")
                };
                (0..*n).for_each(|_| b.append_value(*x));
            }
            Arc::new(b.finish())
        }
        Kind::Bool => {
            let mut b = BooleanBuilder::new();
            for (v, n) in &values {
                let ParamValue::Bool(x) = v else {
                    unreachable!("typed by the field")
                };
                (0..*n).for_each(|_| b.append_value(*x));
            }
            Arc::new(b.finish())
        }
        Kind::Str | Kind::IntList => {
            let mut b = StringBuilder::new();
            for (v, n) in &values {
                (0..*n).for_each(|_| b.append_value(v.to_string()));
            }
            Arc::new(b.finish())
        }
    }
}

/// `trial_id` and the parameter columns, each row repeated `n` times, in front of a table.
fn key_columns(
    params: &[ParamColumn],
    record: &TrialRecord,
    n: usize,
) -> (Vec<Field>, Vec<ArrayRef>) {
    let mut fields = vec![Field::new("trial_id", DataType::Utf8, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec![
        record.trial.id.as_str();
        n
    ]))];
    for col in params {
        fields.push(Field::new(&col.name, data_type(col.kind), false));
        arrays.push(param_array(col, &[record], |_| n));
    }
    (fields, arrays)
}

pub(crate) fn train_batch(
    params: &[ParamColumn],
    record: &TrialRecord,
    rows: &[pb::TrainRow],
) -> Result<RecordBatch> {
    let (mut fields, mut arrays) = key_columns(params, record, rows.len());
    fields.extend([
        Field::new("step", DataType::Int64, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("acc", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("wall_s", DataType::Float64, false),
    ]);
    // `lr` is both a parameter and a per-step column; the per-step one wins its name.
    if let Some(i) = fields[..fields.len() - 6]
        .iter()
        .position(|f| f.name() == "lr")
    {
        fields.remove(i);
        arrays.remove(i);
    }
    arrays.extend::<[ArrayRef; 6]>([
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.step as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| i64::from(r.epoch)),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.loss))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.acc))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.lr))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.wall_s),
        )),
    ]);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

pub(crate) fn eval_batch(
    params: &[ParamColumn],
    record: &TrialRecord,
    rows: &[pb::EvalRow],
) -> Result<RecordBatch> {
    let (mut fields, mut arrays) = key_columns(params, record, rows.len());
    fields.extend([
        Field::new("step", DataType::Int64, false),
        Field::new("test_loss", DataType::Float64, false),
        Field::new("test_acc", DataType::Float64, false),
    ]);
    arrays.extend::<[ArrayRef; 3]>([
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.step as i64),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.test_loss),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.test_acc),
        )),
    ]);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// A nullable double column from optional values.
fn opt_f64<'a, T: 'a>(rows: &'a [T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(rows.iter().map(f)))
}

fn f64s<T>(rows: &[T], f: impl Fn(&T) -> f64) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
}

fn i64s<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}

fn strs<T>(rows: &[T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

/// `step`, `layer` and `layer_name`, the first columns of the per-layer tables.
fn per_layer_columns<'a, T>(
    rows: &'a [T],
    key: impl Fn(&'a T) -> (u64, u32, &'a str),
) -> Vec<(&'static str, DataType, bool, ArrayRef)> {
    vec![
        (
            "step",
            DataType::Int64,
            false,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| key(r).0 as i64),
            )),
        ),
        (
            "layer",
            DataType::Int64,
            false,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| i64::from(key(r).1)),
            )),
        ),
        (
            "layer_name",
            DataType::Utf8,
            false,
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| key(r).2))),
        ),
    ]
}

/// Appends columns to a table that starts with the key columns.
fn finish(
    mut fields: Vec<Field>,
    mut arrays: Vec<ArrayRef>,
    columns: Vec<(&str, DataType, bool, ArrayRef)>,
) -> Result<RecordBatch> {
    for (name, t, nullable, a) in columns {
        fields.push(Field::new(name, t, nullable));
        arrays.push(a);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

pub(crate) fn layers_batch(
    params: &[ParamColumn],
    record: &TrialRecord,
    rows: &[pb::LayerRow],
) -> Result<RecordBatch> {
    let (fields, arrays) = key_columns(params, record, rows.len());
    let d = DataType::Float64;
    let mut columns = per_layer_columns(rows, |r| (r.step, r.layer, r.layer_name.as_str()));
    columns.extend([
        ("ics_l2", d.clone(), true, opt_f64(rows, |r| r.ics_l2)),
        ("ics_cos", d.clone(), true, opt_f64(rows, |r| r.ics_cos)),
        ("grad_norm", d.clone(), true, opt_f64(rows, |r| r.grad_norm)),
        (
            "weight_dist",
            d.clone(),
            true,
            opt_f64(rows, |r| r.weight_dist),
        ),
        (
            "weight_dist_rel",
            d.clone(),
            true,
            opt_f64(rows, |r| r.weight_dist_rel),
        ),
    ]);
    let names: [[&str; 9]; 2] = [
        [
            "act_pre_mean",
            "act_pre_std",
            "act_pre_q01",
            "act_pre_q05",
            "act_pre_q25",
            "act_pre_q50",
            "act_pre_q75",
            "act_pre_q95",
            "act_pre_q99",
        ],
        [
            "act_post_mean",
            "act_post_std",
            "act_post_q01",
            "act_post_q05",
            "act_post_q25",
            "act_post_q50",
            "act_post_q75",
            "act_post_q95",
            "act_post_q99",
        ],
    ];
    for (point, names) in names.iter().enumerate() {
        for (k, name) in names.iter().enumerate() {
            let value = move |r: &pb::LayerRow| {
                let stats = if point == 0 {
                    r.pre.as_ref()
                } else {
                    r.post.as_ref()
                }?;
                match k {
                    0 => Some(stats.mean),
                    1 => Some(stats.std),
                    q => stats.quantiles.get(q - 2).copied(),
                }
            };
            columns.push((name, d.clone(), true, opt_f64(rows, value)));
        }
    }
    finish(fields, arrays, columns)
}

pub(crate) fn landscape_batch(
    params: &[ParamColumn],
    record: &TrialRecord,
    rows: &[pb::LandscapeRow],
) -> Result<RecordBatch> {
    let (fields, arrays) = key_columns(params, record, rows.len());
    let d = DataType::Float64;
    finish(
        fields,
        arrays,
        vec![
            (
                "step",
                DataType::Int64,
                false,
                i64s(rows, |r| r.step as i64),
            ),
            ("eta", d.clone(), false, f64s(rows, |r| r.eta)),
            ("loss", d.clone(), false, f64s(rows, |r| r.loss)),
            ("grad_dist", d.clone(), false, f64s(rows, |r| r.grad_dist)),
            ("beta", d.clone(), false, f64s(rows, |r| r.beta)),
            ("loss_min", d.clone(), false, f64s(rows, |r| r.loss_min)),
            ("loss_max", d.clone(), false, f64s(rows, |r| r.loss_max)),
            (
                "gradpred_min",
                d.clone(),
                false,
                f64s(rows, |r| r.gradpred_min),
            ),
            (
                "gradpred_max",
                d.clone(),
                false,
                f64s(rows, |r| r.gradpred_max),
            ),
            (
                "beta_smoothness",
                d,
                false,
                f64s(rows, |r| r.beta_smoothness),
            ),
            (
                "nonfinite_probes",
                DataType::Int64,
                false,
                i64s(rows, |r| i64::from(r.nonfinite_probes)),
            ),
        ],
    )
}

pub(crate) fn activations_batch(
    params: &[ParamColumn],
    record: &TrialRecord,
    rows: &[pb::ActivationRow],
) -> Result<RecordBatch> {
    let (fields, arrays) = key_columns(params, record, rows.len());
    finish(fields, arrays, {
        let mut columns = per_layer_columns(rows, |r| (r.step, r.layer, r.layer_name.as_str()));
        columns.extend([
            (
                "point",
                DataType::Utf8,
                false,
                strs(rows, |r| r.point.as_str()),
            ),
            (
                "bin",
                DataType::Int64,
                false,
                i64s(rows, |r| i64::from(r.bin)),
            ),
            ("lo", DataType::Float64, false, f64s(rows, |r| r.lo)),
            ("hi", DataType::Float64, false, f64s(rows, |r| r.hi)),
            (
                "count",
                DataType::Int64,
                false,
                i64s(rows, |r| r.count as i64),
            ),
        ]);
        columns
    })
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(|t| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    })
}

pub(crate) fn trials_batch(params: &[ParamColumn], records: &[TrialRecord]) -> Result<RecordBatch> {
    let refs: Vec<&TrialRecord> = records.iter().collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![Field::new("trial_id", DataType::Utf8, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        records.iter().map(|r| r.trial.id.as_str()),
    ))];
    for col in params {
        fields.push(Field::new(&col.name, data_type(col.kind), false));
        arrays.push(param_array(col, &refs, |_| 1));
    }
    fields.extend([
        Field::new("status", DataType::Utf8, false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("worker", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("started_at", ts.clone(), true),
        Field::new("ended_at", ts, true),
        Field::new("final_test_acc", DataType::Float64, true),
        Field::new("final_train_loss", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
    ]);
    arrays.extend::<[ArrayRef; 9]>([
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.status.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| i64::from(r.attempts)),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.summary.worker.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.summary.device.as_deref()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                records.iter().map(|r| micros(r.summary.started_at)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter(
                records.iter().map(|r| micros(r.summary.ended_at)),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter(
            records.iter().map(|r| r.summary.final_test_acc),
        )),
        Arc::new(Float64Array::from_iter(
            records.iter().map(|r| r.summary.final_train_loss),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.summary.error.as_deref()),
        )),
    ]);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Tables of fewer rows are compressed with Snappy rather than ZSTD.
const SMALL_TABLE: u64 = 4096;

/// Rows of a row group at most: what a table being written holds in memory (encoded) is at
/// most one row group's.
const ROW_GROUP: usize = 65_536;

/// Writes a ZSTD-compressed Parquet file under a temporary name, then renames it into place.
pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let mut table = TableWriter::create(path, batch.schema(), batch.num_rows() as u64)?;
    match table.write(batch) {
        Ok(()) => table.finish().map(|_| ()),
        Err(e) => {
            table.abandon();
            Err(e)
        }
    }
}

/// A Parquet file being written, batch after batch, under a temporary name: [`finish`] syncs
/// it and renames it into place, [`abandon`] removes it (a full disk leaves no temporary file
/// behind).
///
/// [`finish`]: TableWriter::finish
/// [`abandon`]: TableWriter::abandon
pub(crate) struct TableWriter {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl TableWriter {
    /// Starts a table of `rows` rows (which picks its compression) and this schema.
    pub(crate) fn create(path: &Path, schema: SchemaRef, rows: u64) -> Result<TableWriter> {
        let tmp = super::tmp_path(path);
        let created = Self::writer(&tmp, path, schema, rows);
        if created.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(TableWriter {
            writer: created?,
            tmp,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    fn writer(tmp: &Path, path: &Path, schema: SchemaRef, rows: u64) -> Result<ArrowWriter<File>> {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        // ZSTD, except for small tables: setting up ZSTD for each column costs more there than
        // it saves (a sweep of many short trials spends most of its time on it).
        let compression = if rows < SMALL_TABLE {
            Compression::SNAPPY
        } else {
            Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| parquet_error(path, e))?)
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_size(ROW_GROUP)
            .build();
        ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| parquet_error(path, e))
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| parquet_error(&self.path, e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes the file, syncs it, and renames it into place; the rename is made durable by
    /// syncing the directory (the caller's to do). Returns the rows written.
    pub(crate) fn finish(self) -> Result<u64> {
        let TableWriter {
            tmp,
            path,
            writer,
            rows,
        } = self;
        let finished = writer
            .into_inner()
            .map_err(|e| parquet_error(&path, e))
            // On the disk before its name is: a renamed file is never empty after a power loss.
            .and_then(|file| file.sync_data().map_err(|e| Error::io(&tmp, e)))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e)));
        if finished.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        finished.map(|()| rows)
    }

    /// Gives the table up: its temporary file goes.
    pub(crate) fn abandon(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `trials.parquet` back. A column it lacks, or of another type, refuses it.
pub(crate) fn read_trials(path: &Path) -> Result<Vec<Prior>> {
    let t = read_table(path)?;
    let strings = |name| typed(&t, path, name, "a string", Column::strings);
    let (ids, status, worker, device, error) = (
        strings("trial_id")?,
        strings("status")?,
        strings("worker")?,
        strings("device")?,
        strings("error")?,
    );
    let attempts = typed(&t, path, "attempts", "an int64", Column::ints)?;
    let floats = |name| typed(&t, path, name, "a double", Column::floats);
    let (acc, loss) = (floats("final_test_acc")?, floats("final_train_loss")?);
    let times = |name| typed(&t, path, name, "a timestamp", Column::times);
    let (started, ended) = (times("started_at")?, times("ended_at")?);
    let time = |us: Option<i64>| us.map(|us| UNIX_EPOCH + Duration::from_micros(us.max(0) as u64));
    Ok((0..t.rows)
        .map(|i| Prior {
            // Never null as written; a null reads as "" (an unknown status).
            trial_id: ids[i].clone().unwrap_or_default(),
            status: Status::parse(status[i].as_deref().unwrap_or_default()),
            attempts: attempts[i].unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
            summary: Summary {
                worker: worker[i].clone(),
                device: device[i].clone(),
                started_at: time(started[i]),
                ended_at: time(ended[i]),
                final_test_acc: acc[i],
                final_train_loss: loss[i],
                error: error[i].clone(),
            },
        })
        .collect())
}

/// Column `name` of `trials.parquet` as `get` reads it (`kind` names its type in the refusal).
fn typed<'t, T>(
    t: &'t Table,
    path: &Path,
    name: &str,
    kind: &str,
    get: fn(&Column) -> Option<&[Option<T>]>,
) -> Result<&'t [Option<T>]> {
    let refused =
        |what: String| Error::Refused(format!("{}: {what}; it cannot be resumed", path.display()));
    let column = t
        .col(name)
        .ok_or_else(|| refused(format!("no column `{name}`")))?;
    get(column).ok_or_else(|| refused(format!("`{name}` is not {kind} column")))
}

/// Number of rows in a Parquet file (for tests and checks).
pub fn read_row_count(path: &Path) -> Result<i64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(reader.metadata().file_metadata().num_rows())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn records(sweep: &Sweep) -> Vec<TrialRecord> {
        let at = |us: u64| Some(UNIX_EPOCH + Duration::from_micros(us));
        let record = |i: usize, status, attempts, summary| TrialRecord {
            trial: sweep.trials[i].clone(),
            status,
            attempts,
            handed_back: 0,
            summary,
            last_step: 0,
            persisted: true,
        };
        vec![
            record(
                0,
                Status::Completed,
                2,
                Summary {
                    worker: Some("w1-0000-h".into()),
                    device: Some("cuda:0".into()),
                    started_at: at(1_700_000_000_123_456),
                    ended_at: at(1_700_000_100_654_321),
                    final_test_acc: Some(0.875),
                    final_train_loss: Some(0.25),
                    error: None,
                },
            ),
            record(
                1,
                Status::Failed,
                3,
                Summary {
                    started_at: at(1_700_000_000_000_001),
                    error: Some("out of memory".into()),
                    ..Summary::default()
                },
            ),
            record(2, Status::Queued, 0, Summary::default()),
        ]
    }

    fn sweep() -> Sweep {
        Sweep::parse("s.yaml", "name: s\nparameters:\n  lr: [0.1, 0.2, 0.3]\n").unwrap()
    }

    /// trials.parquet of these records, with column `name` replaced by `array` (or dropped).
    fn written(
        dir: &Path,
        records: &[TrialRecord],
        name: &str,
        array: Option<ArrayRef>,
    ) -> PathBuf {
        let batch = trials_batch(&param_columns(&sweep()), records).unwrap();
        let (mut fields, mut arrays): (Vec<Field>, Vec<ArrayRef>) = (Vec::new(), Vec::new());
        for (f, a) in batch.schema().fields().iter().zip(batch.columns()) {
            match (f.name() == name, &array) {
                (false, _) => {
                    fields.push(f.as_ref().clone());
                    arrays.push(a.clone());
                }
                (true, Some(other)) => {
                    fields.push(Field::new(name, other.data_type().clone(), true));
                    arrays.push(other.clone());
                }
                (true, None) => {}
            }
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let path = dir.join("trials.parquet");
        write_parquet(&path, &batch).unwrap();
        path
    }

    #[test]
    fn trials_parquet_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let records = records(&sweep());
        let path = written(dir.path(), &records, "", None);
        let expected: Vec<Prior> = records
            .iter()
            .map(|r| Prior {
                trial_id: r.trial.id.clone(),
                status: Some(r.status),
                attempts: r.attempts,
                summary: r.summary.clone(),
            })
            .collect();
        assert_eq!(read_trials(&path).unwrap(), expected);
        // No trials: no rows, and nothing refused.
        let path = written(dir.path(), &[], "", None);
        assert_eq!(read_trials(&path).unwrap(), []);
    }

    /// A column missing, or of another type, refuses the file, naming the column.
    #[test]
    fn trials_parquet_without_a_column_of_its_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let records = records(&sweep());
        let refusal = |name: &str, array: Option<ArrayRef>| {
            let path = written(dir.path(), &records, name, array);
            let err = read_trials(&path).unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{err}");
            let err = err.to_string();
            assert!(err.ends_with("; it cannot be resumed"), "{err}");
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            err
        };
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1; 3]));
        for name in [
            "trial_id",
            "worker",
            "attempts",
            "final_train_loss",
            "ended_at",
        ] {
            let err = refusal(name, None);
            assert!(err.contains(&format!(": no column `{name}`;")), "{err}");
        }
        for (name, kind) in [
            ("status", "a string"),
            ("error", "a string"),
            ("final_test_acc", "a double"),
            ("started_at", "a timestamp"),
        ] {
            let err = refusal(name, Some(ints.clone()));
            assert!(
                err.contains(&format!(": `{name}` is not {kind} column;")),
                "{err}"
            );
        }
        let as_text: ArrayRef = Arc::new(StringArray::from(vec!["1"; 3]));
        let err = refusal("attempts", Some(as_text));
        assert!(
            err.contains(": `attempts` is not an int64 column;"),
            "{err}"
        );
        // Timestamps of another unit are not read as microseconds.
        let millis: ArrayRef = Arc::new(arrow_array::TimestampMillisecondArray::from(vec![1; 3]));
        let err = refusal("ended_at", Some(millis));
        assert!(
            err.contains(": `ended_at` is not a timestamp column;"),
            "{err}"
        );
    }
}
