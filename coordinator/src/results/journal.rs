//! The journal of running attempts: `DIR/journal/<trial_id>.<attempt>.journal`, one
//! append-only file per leased attempt, holding the lease (a `JournalHeader`) and then every
//! metric batch acknowledged for it. A batch is appended before the worker gets its
//! acknowledgement, so a coordinator killed mid-sweep loses no row it acknowledged: started
//! again, it reads the journals back and the attempts carry on where they were.
//!
//! Each record is `[length: u32 LE][crc32 of the bytes: u32 LE][protobuf bytes]`. A torn last
//! record (the process died while writing it) fails its length or checksum and is cut off.
//! Records are written straight to the file, without a user-space buffer: they survive the
//! death of the process; surviving the machine's is left to the operating system.
//!
//! `DIR/journal/ended.log`, in the same framing, logs every trial whose files were written
//! (`TrialEnded`): `trials.parquet` is rewritten from the state at most about once a second,
//! and a restarted coordinator reads this log on top of it, so no ended trial is forgotten
//! and run again. It goes once the sweep is done and `trials.parquet` holds everything.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bnsweep_proto as pb;
use prost::Message;

use crate::error::{Error, Result};

/// Largest record accepted when reading back (a metric batch is at most 64 MiB on the wire).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// An attempt read back from its journal.
pub struct Restored {
    pub header: pb::JournalHeader,
    pub batches: Vec<pb::MetricsBatch>,
}

/// What a journal directory held when it was opened.
#[derive(Default)]
pub struct Recovered {
    pub running: Vec<Restored>,
    /// Trials that ended (in order; a later record of a trial wins).
    pub ended: Vec<pb::TrialEnded>,
}

pub struct Journal {
    dir: PathBuf,
    open: Mutex<HashMap<(String, u32), File>>,
    ended: Mutex<Option<File>>,
}

const ENDED: &str = "ended.log";

impl Journal {
    /// Opens the journal directory (creating it), and reads back every attempt it holds.
    /// Their files stay open for appending; the caller ends those it does not take back.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            ended: Mutex::new(None),
        };
        let mut recovered = Recovered::default();
        let log = dir.join(ENDED);
        if log.is_file() {
            let (records, good_len) = read_records(&log)?;
            recovered.ended = records
                .iter()
                .map_while(|r| pb::TrialEnded::decode(r.as_slice()).ok())
                .collect();
            truncate(&log, good_len)?;
        }
        let restored = &mut recovered.running;
        let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.extension().is_none_or(|e| e != "journal") {
                continue;
            }
            match read(&path)? {
                Some((r, good_len)) => {
                    truncate(&path, good_len)?;
                    let file = OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .map_err(|e| Error::io(&path, e))?;
                    journal
                        .files()
                        .insert((r.header.trial_id.clone(), r.header.attempt), file);
                    restored.push(r);
                }
                None => {
                    tracing::warn!("{}: no readable lease; removed", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok((journal, recovered))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), File>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, trial_id: &str, attempt: u32) -> PathBuf {
        self.dir.join(format!("{trial_id}.{attempt}.journal"))
    }

    /// Starts the journal of an attempt just leased.
    pub fn begin(&self, header: &pb::JournalHeader) -> Result<()> {
        let path = self.path(&header.trial_id, header.attempt);
        let mut file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        file.write_all(&frame(&header.encode_to_vec()))
            .map_err(|e| Error::io(&path, e))?;
        self.files()
            .insert((header.trial_id.clone(), header.attempt), file);
        Ok(())
    }

    /// Appends one metric batch of a journaled attempt.
    pub fn append(&self, batch: &pb::MetricsBatch) -> Result<()> {
        let path = self.path(&batch.trial_id, batch.attempt);
        let mut files = self.files();
        let file = files
            .get_mut(&(batch.trial_id.clone(), batch.attempt))
            .ok_or_else(|| {
                Error::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no journal open"),
                )
            })?;
        file.write_all(&frame(&batch.encode_to_vec()))
            .map_err(|e| Error::io(&path, e))
    }

    /// Ends the journal of an attempt whose rows are written or discarded.
    pub fn end(&self, trial_id: &str, attempt: u32) {
        self.files().remove(&(trial_id.to_string(), attempt));
        let path = self.path(trial_id, attempt);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

impl Journal {
    /// Logs a trial whose files are written.
    pub fn ended(&self, e: &pb::TrialEnded) -> Result<()> {
        let path = self.dir.join(ENDED);
        let mut log = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if log.is_none() {
            *log = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?,
            );
        }
        let file = log.as_mut().expect("opened above");
        file.write_all(&frame(&e.encode_to_vec()))
            .map_err(|e| Error::io(&path, e))
    }

    /// Removes the log of ended trials, once `trials.parquet` holds them all.
    pub fn clear_ended(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = fs::remove_file(self.dir.join(ENDED));
    }
}

/// Cuts a file to its whole records (a torn tail off).
fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.set_len(len).map_err(|e| Error::io(path, e))
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Reads the whole records of a file, and their length in bytes.
fn read_records(path: &Path) -> Result<(Vec<Vec<u8>>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        let Some(body) = bytes
            .get(at + 8..at + 8 + len)
            .filter(|_| len <= MAX_RECORD)
        else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        records.push(body.to_vec());
        at += 8 + len;
    }
    if at < bytes.len() {
        tracing::warn!(
            "{}: cut a torn record off the end ({} bytes)",
            path.display(),
            bytes.len() - at
        );
    }
    Ok((records, at as u64))
}

/// Reads an attempt's journal: its header and batches, and the length of its whole records.
/// None when not even the header is readable.
fn read(path: &Path) -> Result<Option<(Restored, u64)>> {
    let (records, good_len) = read_records(path)?;
    let mut records = records.into_iter();
    let Some(header) = records
        .next()
        .and_then(|b| pb::JournalHeader::decode(b.as_slice()).ok())
    else {
        return Ok(None);
    };
    let batches = records
        .map_while(|b| pb::MetricsBatch::decode(b.as_slice()).ok())
        .collect();
    Ok(Some((Restored { header, batches }, good_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> pb::MetricsBatch {
        pb::MetricsBatch {
            worker_id: "w1-h".into(),
            trial_id: "t1".into(),
            attempt: 2,
            seq,
            train: vec![pb::TrainRow {
                step: seq + 1,
                loss: 0.5,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn batches_come_back_after_a_restart_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let header = pb::JournalHeader {
            trial_id: "t1".into(),
            attempt: 2,
            worker_id: "w1-h".into(),
            host: "h".into(),
            started_at_ms: 1_800_000_000_000,
        };
        {
            let (j, recovered) = Journal::open(dir.path()).unwrap();
            assert!(recovered.running.is_empty());
            j.begin(&header).unwrap();
            j.append(&batch(0)).unwrap();
            j.append(&batch(1)).unwrap();
        }
        // The process died halfway through writing a third record.
        let path = dir.path().join("t1.2.journal");
        let whole = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&frame(&batch(2).encode_to_vec())[..10])
            .unwrap();
        drop(f);

        let (
            j,
            Recovered {
                running: restored, ..
            },
        ) = Journal::open(dir.path()).unwrap();
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].header, header);
        let seqs: Vec<u64> = restored[0].batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [0, 1]);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
        // Appending goes on after the last whole record.
        j.append(&batch(2)).unwrap();
        drop(j);
        let (
            j,
            Recovered {
                running: restored, ..
            },
        ) = Journal::open(dir.path()).unwrap();
        assert_eq!(restored[0].batches.len(), 3);
        j.end("t1", 2);
        assert!(!path.exists());
        assert!(
            j.append(&batch(3)).is_err(),
            "an ended journal takes no more"
        );
    }

    #[test]
    fn ended_trials_are_logged_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let ended = |id: &str| pb::TrialEnded {
            trial_id: id.into(),
            status: "completed".into(),
            attempts: 1,
            final_test_acc: Some(0.5),
            ..Default::default()
        };
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            j.ended(&ended("t1")).unwrap();
            j.ended(&ended("t2")).unwrap();
        }
        let (j, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.ended, vec![ended("t1"), ended("t2")]);
        j.ended(&ended("t3")).unwrap();
        j.clear_ended();
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert!(recovered.ended.is_empty());
    }
}
