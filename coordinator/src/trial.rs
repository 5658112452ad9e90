//! A trial's vocabulary, shared by the scheduler (which changes it) and the results (which
//! write and read it back): where a trial stands, what is recorded of it, what a running
//! attempt has sent (counted), and how an earlier run left it.

use std::collections::VecDeque;
use std::time::SystemTime;

use bnsweep_proto as pb;

use crate::sweep::Trial;

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Completed,
    Diverged,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
        }
    }

    /// The status of its name (`as_str`), as `trials.parquet` and the journal write it.
    pub fn parse(name: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Completed,
            Status::Diverged,
            Status::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Diverged | Status::Failed)
    }
}

/// What `trials.parquet` records of a trial besides its parameters, status and attempts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The worker of the last attempt.
    pub worker: Option<String>,
    pub device: Option<String>,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    pub final_test_acc: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub error: Option<String>,
}

/// One trial's record: what `trials.parquet` holds about it.
#[derive(Debug, Clone)]
pub struct TrialRecord {
    pub trial: Trial,
    pub status: Status,
    /// Attempts started so far.
    pub attempts: u32,
    /// Of those, attempts a stopping worker gave back (they use up no retry).
    pub handed_back: u32,
    pub summary: Summary,
    /// Last training step reported by the running attempt (progress).
    pub last_step: u64,
    /// True once a final trial's files are on disk.
    pub persisted: bool,
}

/// Training steps whose mean loss is a trial's `final_train_loss`.
const FINAL_LOSS_STEPS: usize = 50;

/// What the coordinator keeps of a running attempt: counts, and the few values
/// `trials.parquet` records, never the rows themselves. Those are in the attempt's journal
/// (appended and synced before each acknowledgement), and the trial's tables are written from
/// there when it ends; so this does not grow with the rows an attempt sends.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Batches taken: the next one due is numbered this.
    pub next_seq: u64,
    /// Rows taken, by table.
    pub rows: pb::rows::Counts,
    /// The step of the last train row.
    pub last_step: Option<u64>,
    /// Test accuracy of the last evaluation.
    pub last_test_acc: Option<f64>,
    /// Losses of the last [`FINAL_LOSS_STEPS`] train rows, oldest first.
    loss_tail: VecDeque<f64>,
}

impl Tally {
    /// Counts the next batch in.
    pub fn take(&mut self, batch: &pb::MetricsBatch) {
        self.next_seq += 1;
        self.rows.add(&batch.counts());
        if let Some(r) = batch.train.last() {
            self.last_step = Some(r.step);
        }
        if let Some(e) = batch.eval.last() {
            self.last_test_acc = Some(e.test_acc);
        }
        let tail = &batch.train[batch.train.len().saturating_sub(FINAL_LOSS_STEPS)..];
        for r in tail {
            if self.loss_tail.len() == FINAL_LOSS_STEPS {
                self.loss_tail.pop_front();
            }
            self.loss_tail.push_back(r.loss);
        }
    }

    /// Mean training loss over the last 50 steps (fewer if the attempt had fewer).
    pub fn final_train_loss(&self) -> Option<f64> {
        let n = self.loss_tail.len();
        (n > 0).then(|| self.loss_tail.iter().sum::<f64>() / n as f64)
    }

    /// Bytes this takes in memory, its own and on the heap.
    pub fn bytes(&self) -> usize {
        size_of::<Tally>() + self.loss_tail.capacity() * size_of::<f64>()
    }
}

/// A trial as an earlier run of the same sweep left it in `trials.parquet`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    pub trial_id: String,
    /// `None` for a status this version does not know.
    pub status: Option<Status>,
    pub attempts: u32,
    pub summary: Summary,
}
