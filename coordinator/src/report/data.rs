//! Reading a results directory back for the report: its sweep, trials.parquet as `TrialInfo`s
//! and each trial's tables, read as plain columns by `results::columns`; a column's values as
//! the report writes them (`text`, `texts`). A table that is not there yet (a trial still
//! queued or running) is simply absent.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::report::svg::fmt_num;
use crate::results::columns::{read_table, Column, Table};
use crate::sweep::Sweep;
use crate::trial::Status;

/// A column's value at `i` as text, numbers written short; None for a null, a timestamp or a
/// column of another type.
pub fn text(column: &Column, i: usize) -> Option<String> {
    match column {
        Column::F64(v) => v[i].map(fmt_num),
        Column::I64(v) => v[i].map(|x| x.to_string()),
        Column::Bool(v) => v[i].map(|b| b.to_string()),
        Column::Str(v) => v[i].clone(),
        Column::Time(_) | Column::Other(_) => None,
    }
}

/// A column's values as text (missing column: all None).
pub fn texts(table: &Table, name: &str) -> Vec<Option<String>> {
    match table.col(name) {
        Some(c) => (0..table.rows).map(|i| text(c, i)).collect(),
        None => vec![None; table.rows],
    }
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
    /// None: not one of the statuses bnsweep writes.
    pub status: Option<Status>,
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
        let yaml = std::fs::read_to_string(&stored).map_err(|source| Error::NotResults {
            dir: dir.to_path_buf(),
            stored: stored.clone(),
            source,
        })?;
        let sweep = Sweep::parse(&stored.display().to_string(), &yaml).map_err(Error::Sweep)?;
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
            let ids = texts(&t, "trial_id");
            let status = texts(&t, "status");
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
                            let v = t.col(c).and_then(|col| text(col, i)).unwrap_or_default();
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
                    status: status[i].as_deref().and_then(Status::parse),
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

    /// A trial's table, if written.
    pub fn table(&self, table: bnsweep_proto::Table, trial_id: &str) -> Result<Option<Table>> {
        let path = self
            .dir
            .join(table.name())
            .join(format!("{trial_id}.parquet"));
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
