//! Reading a results directory back for the report: trials.parquet and each trial's tables, as
//! plain columns. A table that is not there yet (a trial still queued or running) is simply
//! absent.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::report::svg::fmt_num;
use crate::sweep::Sweep;

/// One column of a table; nulls and other types read as None.
#[derive(Debug, Clone)]
pub enum Column {
    F64(Vec<Option<f64>>),
    I64(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<Option<String>>),
    Other(usize),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::F64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Other(n) => *n,
        }
    }

    /// The value at `i` as a number (integers and booleans too).
    pub fn f64(&self, i: usize) -> Option<f64> {
        match self {
            Column::F64(v) => v[i],
            Column::I64(v) => v[i].map(|x| x as f64),
            Column::Bool(v) => v[i].map(|b| f64::from(u8::from(b))),
            _ => None,
        }
    }

    /// The value at `i` as text, numbers written short.
    pub fn text(&self, i: usize) -> Option<String> {
        match self {
            Column::F64(v) => v[i].map(fmt_num),
            Column::I64(v) => v[i].map(|x| x.to_string()),
            Column::Bool(v) => v[i].map(|b| b.to_string()),
            Column::Str(v) => v[i].clone(),
            Column::Other(_) => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Table {
    pub rows: usize,
    columns: HashMap<String, Column>,
}

impl Table {
    /// A table from its columns (all of the same length).
    pub fn from_columns(columns: Vec<(&str, Column)>) -> Table {
        Table {
            rows: columns.first().map_or(0, |c| c.1.len()),
            columns: columns
                .into_iter()
                .map(|(name, c)| (name.to_string(), c))
                .collect(),
        }
    }

    pub fn col(&self, name: &str) -> Option<&Column> {
        self.columns.get(name)
    }

    /// A numeric column's values (missing column: all None).
    pub fn f64s(&self, name: &str) -> Vec<Option<f64>> {
        match self.col(name) {
            Some(c) => (0..self.rows).map(|i| c.f64(i)).collect(),
            None => vec![None; self.rows],
        }
    }

    pub fn texts(&self, name: &str) -> Vec<Option<String>> {
        match self.col(name) {
            Some(c) => (0..self.rows).map(|i| c.text(i)).collect(),
            None => vec![None; self.rows],
        }
    }
}

/// Reads a whole Parquet file into columns.
pub fn read_table(path: &Path) -> Result<Table> {
    let parquet_err = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err)?
        .build()
        .map_err(parquet_err)?;
    let mut table = Table::default();
    for batch in reader {
        let batch = batch?;
        for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
            let a = array.as_any();
            let n = array.len();
            let more = if let Some(x) = a.downcast_ref::<Float64Array>() {
                Column::F64(
                    (0..n)
                        .map(|i| (!x.is_null(i)).then(|| x.value(i)))
                        .collect(),
                )
            } else if let Some(x) = a.downcast_ref::<Int64Array>() {
                Column::I64(
                    (0..n)
                        .map(|i| (!x.is_null(i)).then(|| x.value(i)))
                        .collect(),
                )
            } else if let Some(x) = a.downcast_ref::<BooleanArray>() {
                Column::Bool(
                    (0..n)
                        .map(|i| (!x.is_null(i)).then(|| x.value(i)))
                        .collect(),
                )
            } else if let Some(x) = a.downcast_ref::<StringArray>() {
                Column::Str(
                    (0..n)
                        .map(|i| (!x.is_null(i)).then(|| x.value(i).to_string()))
                        .collect(),
                )
            } else {
                Column::Other(n)
            };
            let entry = table
                .columns
                .entry(field.name().clone())
                .or_insert_with(|| match &more {
                    Column::F64(_) => Column::F64(Vec::new()),
                    Column::I64(_) => Column::I64(Vec::new()),
                    Column::Bool(_) => Column::Bool(Vec::new()),
                    Column::Str(_) => Column::Str(Vec::new()),
                    Column::Other(_) => Column::Other(0),
                });
            match (entry, more) {
                (Column::F64(a), Column::F64(b)) => a.extend(b),
                (Column::I64(a), Column::I64(b)) => a.extend(b),
                (Column::Bool(a), Column::Bool(b)) => a.extend(b),
                (Column::Str(a), Column::Str(b)) => a.extend(b),
                (Column::Other(a), more) => *a += more.len(),
                _ => {}
            }
        }
        table.rows += batch.num_rows();
    }
    Ok(table)
}

/// BatchNorm and noise: the comparison the paper makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub bn: bool,
    pub noise: f64,
}

impl Variant {
    pub fn label(&self) -> String {
        match (self.bn, self.noise > 0.0) {
            (true, false) => "BN".into(),
            (true, true) => format!("BN + noise {}", fmt_num(self.noise)),
            (false, false) => "no BN".into(),
            (false, true) => format!("no BN + noise {}", fmt_num(self.noise)),
        }
    }

    /// No BN first, then BN, then noisy BN, by noise.
    pub fn order(&self) -> (u8, i64) {
        (u8::from(self.bn), (self.noise * 1e6) as i64)
    }
}

/// One trial as the report sees it.
#[derive(Debug, Clone)]
pub struct TrialInfo {
    pub id: String,
    pub seed: i64,
    pub status: String,
    pub final_test_acc: Option<f64>,
    /// The other swept parameters (lr, ...), e.g. "lr = 0.05": one figure each.
    pub panel: String,
    /// The learning rate (`lr` of trials.parquet).
    pub lr: Option<f64>,
    /// The panel without the learning rate: trials that differ only in `lr`, `bn`, `noise` and
    /// the seed share it.
    pub setting: String,
    pub variant: Variant,
}

/// A results directory, read.
pub struct Results {
    pub dir: PathBuf,
    pub sweep: Sweep,
    pub trials: Vec<TrialInfo>,
}

impl Results {
    pub fn open(dir: &Path) -> Result<Results> {
        let stored = dir.join("sweep.yaml");
        let text = std::fs::read_to_string(&stored).map_err(|source| Error::NotResults {
            dir: dir.to_path_buf(),
            stored: stored.clone(),
            source,
        })?;
        let sweep = Sweep::parse(&stored.display().to_string(), &text).map_err(Error::Sweep)?;
        let path = dir.join("trials.parquet");
        let mut trials = Vec::new();
        if path.is_file() {
            let t = read_table(&path)?;
            let others: Vec<String> = sweep
                .param_columns()
                .into_iter()
                .map(|c| c.0)
                .filter(|c| !["bn", "noise", "seed"].contains(&c.as_str()))
                .collect();
            let ids = t.texts("trial_id");
            let status = t.texts("status");
            let seed = t.f64s("seed");
            let bn = t.f64s("bn");
            let noise = t.f64s("noise");
            let acc = t.f64s("final_test_acc");
            let lr = t.f64s("lr");
            for i in 0..t.rows {
                let named = |keep: &dyn Fn(&str) -> bool| {
                    others
                        .iter()
                        .filter(|c| keep(c))
                        .map(|c| {
                            let v = t.col(c).and_then(|col| col.text(i)).unwrap_or_default();
                            format!("{c} = {v}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let panel = named(&|_| true);
                let setting = named(&|c| c != "lr");
                trials.push(TrialInfo {
                    id: ids[i].clone().unwrap_or_default(),
                    seed: seed[i].unwrap_or(0.0) as i64,
                    status: status[i].clone().unwrap_or_default(),
                    final_test_acc: acc[i],
                    panel,
                    lr: lr[i],
                    setting,
                    variant: Variant {
                        bn: bn[i].unwrap_or(0.0) > 0.5,
                        noise: noise[i].unwrap_or(0.0),
                    },
                });
            }
        }
        Ok(Results {
            dir: dir.to_path_buf(),
            sweep,
            trials,
        })
    }

    /// A trial's table (`train`, `eval`, `layers`, ...), if written.
    pub fn table(&self, kind: &str, trial_id: &str) -> Result<Option<Table>> {
        let path = self.dir.join(kind).join(format!("{trial_id}.parquet"));
        if path.is_file() {
            read_table(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The panels (other parameters), in the order of the trials.
    pub fn panels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.trials {
            if !out.contains(&t.panel) {
                out.push(t.panel.clone());
            }
        }
        out
    }

    /// The variants, no BN first.
    pub fn variants(&self) -> Vec<Variant> {
        let mut out: Vec<Variant> = Vec::new();
        for t in &self.trials {
            if !out.contains(&t.variant) {
                out.push(t.variant.clone());
            }
        }
        out.sort_by_key(Variant::order);
        out
    }
}
