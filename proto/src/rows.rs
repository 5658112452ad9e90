//! The five kinds of metric row a trial produces, declared once: a [`Row`] is one of them,
//! and each kind goes to a [`Table`] of its own in the results directory. A
//! [`MetricsBatch`](crate::MetricsBatch) carries rows of every kind; the helpers here read and
//! fill it by table, so that code elsewhere does not list the five kinds again.

use std::ops::{Index, IndexMut};

use crate::v1 as pb;
use crate::v1::slot_event::Event;

/// One row a trial produces, of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Train(pb::TrainRow),
    Eval(pb::EvalRow),
    Layer(pb::LayerRow),
    Landscape(pb::LandscapeRow),
    Activation(pb::ActivationRow),
}

/// The table a kind of row goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Train,
    Eval,
    Layers,
    Landscape,
    Activations,
}

impl Table {
    /// Every table, in the order they are written (train first).
    pub const ALL: [Table; 5] = [
        Table::Train,
        Table::Eval,
        Table::Layers,
        Table::Landscape,
        Table::Activations,
    ];

    /// The table's name: its directory in the results directory.
    pub fn name(self) -> &'static str {
        match self {
            Table::Train => "train",
            Table::Eval => "eval",
            Table::Layers => "layers",
            Table::Landscape => "landscape",
            Table::Activations => "activations",
        }
    }

    /// What one row of this table is called in messages: its [`Row`] kind, in lower case.
    pub fn row_name(self) -> &'static str {
        match self {
            Table::Train => "train",
            Table::Eval => "eval",
            Table::Layers => "layer",
            Table::Landscape => "landscape",
            Table::Activations => "activation",
        }
    }

    /// Whether every trial has this table (train and eval), rather than only trials that
    /// measure something.
    pub fn always(self) -> bool {
        matches!(self, Table::Train | Table::Eval)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Row {
    /// The table this row goes to.
    pub fn table(&self) -> Table {
        match self {
            Row::Train(_) => Table::Train,
            Row::Eval(_) => Table::Eval,
            Row::Layer(_) => Table::Layers,
            Row::Landscape(_) => Table::Landscape,
            Row::Activation(_) => Table::Activations,
        }
    }
}

/// A number of rows per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u64; 5]);

impl Counts {
    /// Adds `other`, table by table.
    pub fn add(&mut self, other: &Counts) {
        for t in Table::ALL {
            self[t] += other[t];
        }
    }

    /// The counts in [`Table::ALL`]'s order.
    pub fn per_table(&self) -> [u64; 5] {
        self.0
    }

    /// Rows of every table together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Index<Table> for Counts {
    type Output = u64;
    fn index(&self, t: Table) -> &u64 {
        &self.0[t as usize]
    }
}

impl IndexMut<Table> for Counts {
    fn index_mut(&mut self, t: Table) -> &mut u64 {
        &mut self.0[t as usize]
    }
}

impl pb::MetricsBatch {
    /// Adds a row to the batch's list of its kind.
    pub fn push(&mut self, row: Row) {
        match row {
            Row::Train(r) => self.train.push(r),
            Row::Eval(r) => self.eval.push(r),
            Row::Layer(r) => self.layers.push(r),
            Row::Landscape(r) => self.landscape.push(r),
            Row::Activation(r) => self.activations.push(r),
        }
    }

    /// Rows of one table in the batch.
    pub fn rows_of(&self, t: Table) -> usize {
        match t {
            Table::Train => self.train.len(),
            Table::Eval => self.eval.len(),
            Table::Layers => self.layers.len(),
            Table::Landscape => self.landscape.len(),
            Table::Activations => self.activations.len(),
        }
    }

    /// The batch's rows per table.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in Table::ALL {
            c[t] = self.rows_of(t) as u64;
        }
        c
    }

    /// Rows of every kind in the batch.
    pub fn row_count(&self) -> usize {
        Table::ALL.iter().map(|&t| self.rows_of(t)).sum()
    }
}

impl From<Row> for Event {
    fn from(row: Row) -> Event {
        match row {
            Row::Train(r) => Event::Train(r),
            Row::Eval(r) => Event::Eval(r),
            Row::Layer(r) => Event::Layer(r),
            Row::Landscape(r) => Event::Landscape(r),
            Row::Activation(r) => Event::Activation(r),
        }
    }
}

impl TryFrom<Event> for Row {
    /// The event that is not a row: how the attempt ended.
    type Error = pb::SlotEnd;

    fn try_from(event: Event) -> Result<Row, pb::SlotEnd> {
        Ok(match event {
            Event::Train(r) => Row::Train(r),
            Event::Eval(r) => Row::Eval(r),
            Event::Layer(r) => Row::Layer(r),
            Event::Landscape(r) => Row::Landscape(r),
            Event::Activation(r) => Row::Activation(r),
            Event::End(end) => return Err(end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<Row> {
        vec![
            Row::Train(pb::TrainRow {
                step: 1,
                ..Default::default()
            }),
            Row::Eval(pb::EvalRow::default()),
            Row::Layer(pb::LayerRow::default()),
            Row::Landscape(pb::LandscapeRow::default()),
            Row::Activation(pb::ActivationRow::default()),
        ]
    }

    #[test]
    fn each_kind_of_row_goes_to_its_own_table_and_is_counted_there() {
        let rows = one_of_each();
        let tables: Vec<Table> = rows.iter().map(Row::table).collect();
        assert_eq!(tables, Table::ALL);
        let mut batch = pb::MetricsBatch::default();
        for (i, row) in rows.into_iter().enumerate() {
            for _ in 0..=i {
                batch.push(row.clone());
            }
        }
        assert_eq!(
            (
                batch.train.len(),
                batch.eval.len(),
                batch.layers.len(),
                batch.landscape.len(),
                batch.activations.len()
            ),
            (1, 2, 3, 4, 5)
        );
        let c = batch.counts();
        for (i, t) in Table::ALL.into_iter().enumerate() {
            assert_eq!(c[t], i as u64 + 1, "{t}");
        }
        assert_eq!((batch.row_count(), c.total()), (15, 15));
        let mut twice = c;
        twice.add(&c);
        assert_eq!(twice[Table::Activations], 10);
        assert_eq!(c.per_table(), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn table_names_are_the_results_directories() {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            ["train", "eval", "layers", "landscape", "activations"]
        );
        let rows: Vec<&str> = Table::ALL.iter().map(|t| t.row_name()).collect();
        assert_eq!(rows, ["train", "eval", "layer", "landscape", "activation"]);
        let always: Vec<Table> = Table::ALL.into_iter().filter(|t| t.always()).collect();
        assert_eq!(always, [Table::Train, Table::Eval]);
    }

    #[test]
    fn rows_travel_as_slot_events_and_back_unchanged() {
        for row in one_of_each() {
            assert_eq!(Row::try_from(Event::from(row.clone())), Ok(row));
        }
        let end = pb::SlotEnd {
            error: "x".into(),
            ..Default::default()
        };
        assert_eq!(Row::try_from(Event::End(end.clone())), Err(end));
    }
}
