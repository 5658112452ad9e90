//! The one reader of the results' Parquet files: a whole file read back as plain columns, by
//! name (`Table`, `Column`). The report reads trials.parquet and each trial's tables with it;
//! resuming reads trials.parquet with it (`tables::read_trials`).
//!
//! A column holds floats, integers, booleans, strings or timestamps (microseconds since the
//! epoch, whatever their time zone); a column of any other type is kept as its length alone.
//! Nulls read as None. How values are written as text is the caller's (the report's).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow_array::{
    Array, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    F64(Vec<Option<f64>>),
    I64(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<Option<String>>),
    /// Timestamps in microseconds since the epoch.
    Time(Vec<Option<i64>>),
    /// A column of another type: its length.
    Other(usize),
}

impl Column {
    /// An Arrow array's values.
    fn of(array: &dyn Array) -> Column {
        let a = array.as_any();
        if let Some(x) = a.downcast_ref::<Float64Array>() {
            Column::F64(x.iter().collect())
        } else if let Some(x) = a.downcast_ref::<Int64Array>() {
            Column::I64(x.iter().collect())
        } else if let Some(x) = a.downcast_ref::<BooleanArray>() {
            Column::Bool(x.iter().collect())
        } else if let Some(x) = a.downcast_ref::<StringArray>() {
            Column::Str(x.iter().map(|s| s.map(str::to_string)).collect())
        } else if let Some(x) = a.downcast_ref::<TimestampMicrosecondArray>() {
            Column::Time(x.iter().collect())
        } else {
            Column::Other(array.len())
        }
    }

    /// The same column's next rows (of a later record batch) after these.
    fn extend(&mut self, more: Column) {
        match (self, more) {
            (Column::F64(a), Column::F64(b)) => a.extend(b),
            (Column::I64(a), Column::I64(b)) => a.extend(b),
            (Column::Bool(a), Column::Bool(b)) => a.extend(b),
            (Column::Str(a), Column::Str(b)) => a.extend(b),
            (Column::Time(a), Column::Time(b)) => a.extend(b),
            (Column::Other(a), more) => *a += more.len(),
            // The batches of one file share its schema.
            (_, more) => unreachable!("a column changed type: {more:?}"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::F64(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Str(v) => v.len(),
            Column::Time(v) => v.len(),
            Column::Other(n) => *n,
        }
    }

    /// The value at `i` as a number (integers and booleans too; timestamps and other types
    /// not).
    pub fn f64(&self, i: usize) -> Option<f64> {
        match self {
            Column::F64(v) => v[i],
            Column::I64(v) => v[i].map(|x| x as f64),
            Column::Bool(v) => v[i].map(|b| f64::from(u8::from(b))),
            _ => None,
        }
    }

    /// A float column's values; None for a column of another type.
    pub fn floats(&self) -> Option<&[Option<f64>]> {
        match self {
            Column::F64(v) => Some(v),
            _ => None,
        }
    }

    /// An integer column's values; None for a column of another type.
    pub fn ints(&self) -> Option<&[Option<i64>]> {
        match self {
            Column::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A string column's values; None for a column of another type.
    pub fn strings(&self) -> Option<&[Option<String>]> {
        match self {
            Column::Str(v) => Some(v),
            _ => None,
        }
    }

    /// A timestamp column's values (microseconds since the epoch); None for a column of
    /// another type.
    pub fn times(&self) -> Option<&[Option<i64>]> {
        match self {
            Column::Time(v) => Some(v),
            _ => None,
        }
    }
}

/// A table's columns by name, all `rows` long.
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
}

/// Reads a whole Parquet file into columns: those of its schema, rows or not.
pub fn read_table(path: &Path) -> Result<Table> {
    let parquet_err = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let schema = builder.schema().clone();
    // In the schema's order: each record batch's arrays are in the same.
    let mut columns: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| Column::of(arrow_array::new_empty_array(f.data_type()).as_ref()))
        .collect();
    let mut rows = 0;
    for batch in builder.build().map_err(parquet_err)? {
        let batch = batch?;
        for (column, array) in columns.iter_mut().zip(batch.columns()) {
            column.extend(Column::of(array.as_ref()));
        }
        rows += batch.num_rows();
    }
    Ok(Table {
        rows,
        columns: schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .zip(columns)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int32Array, RecordBatch};
    use parquet::arrow::ArrowWriter;

    use super::*;

    /// Row `i`'s value, null every seventh row.
    fn some<T>(i: usize, v: T) -> Option<T> {
        (i % 7 != 3).then_some(v)
    }

    /// Every column type, nulls included, over more rows than one record batch holds (1024
    /// by default): the batches are put back together.
    #[test]
    fn each_column_type_reads_back_with_its_nulls() {
        let n = 2500;
        let f: Vec<Option<f64>> = (0..n).map(|i| some(i, i as f64 / 4.0)).collect();
        let int: Vec<Option<i64>> = (0..n).map(|i| some(i, i as i64 - 7)).collect();
        let b: Vec<Option<bool>> = (0..n).map(|i| some(i, i % 2 == 0)).collect();
        let s: Vec<Option<String>> = (0..n).map(|i| some(i, format!("t{i}"))).collect();
        let t: Vec<Option<i64>> = (0..n)
            .map(|i| some(i, 1_700_000_000_000_000 + i as i64))
            .collect();
        let arrays: Vec<(&str, ArrayRef)> = vec![
            ("f", Arc::new(Float64Array::from(f.clone()))),
            ("i", Arc::new(Int64Array::from(int.clone()))),
            ("b", Arc::new(BooleanArray::from(b.clone()))),
            ("s", Arc::new(StringArray::from(s.clone()))),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(t.clone()).with_timezone("UTC")),
            ),
            ("o", Arc::new(Int32Array::from(vec![Some(1); n]))),
        ];
        let batch = RecordBatch::try_from_iter(arrays).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.parquet");
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let table = read_table(&path).unwrap();
        assert_eq!(table.rows, n);
        let col = |name| table.col(name).unwrap();
        assert_eq!(col("f"), &Column::F64(f.clone()));
        assert_eq!(col("i"), &Column::I64(int.clone()));
        assert_eq!(col("b"), &Column::Bool(b));
        assert_eq!(col("s"), &Column::Str(s.clone()));
        assert_eq!(col("t"), &Column::Time(t.clone()));
        assert_eq!(col("o"), &Column::Other(n));
        assert!(table.col("missing").is_none());
        // Typed accessors: the column's type or None.
        assert_eq!(col("f").floats(), Some(&f[..]));
        assert_eq!(col("i").ints(), Some(&int[..]));
        assert_eq!(col("s").strings(), Some(&s[..]));
        assert_eq!(col("t").times(), Some(&t[..]));
        assert_eq!(col("t").ints(), None);
        assert_eq!(col("i").floats(), None);
        assert_eq!(col("f").strings(), None);
        assert_eq!(col("s").times(), None);
        // As numbers: integers and booleans too; strings, timestamps and others not.
        assert_eq!(table.f64s("i")[11], Some(4.0));
        assert_eq!(table.f64s("i")[3], None);
        assert_eq!(table.f64s("b")[..2].to_vec(), [Some(1.0), Some(0.0)]);
        for name in ["s", "t", "o", "missing"] {
            assert_eq!(table.f64s(name), vec![None; n], "{name}");
        }
    }

    /// A table of no rows still has its columns, of their types.
    #[test]
    fn a_table_of_no_rows_has_its_columns() {
        let batch = RecordBatch::try_from_iter([
            (
                "s",
                Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef,
            ),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from(Vec::<i64>::new())),
            ),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let table = read_table(&path).unwrap();
        assert_eq!(table.rows, 0);
        assert_eq!(table.col("s"), Some(&Column::Str(Vec::new())));
        assert_eq!(table.col("t"), Some(&Column::Time(Vec::new())));
    }
}
