//! The journal of running attempts: `DIR/journal/attempt-N.journal`, one append-only file per
//! leased attempt, holding the lease (a `JournalHeader`) and then every metric batch
//! acknowledged for it. An empty file is free: an attempt that ends empties its file for
//! the next one rather than deleting it, because creating and deleting a file per trial costs
//! the file system more than the rest of the trial's bookkeeping. Every `*.journal` file in
//! the directory is read back, whatever its name (earlier builds wrote `slot-N.journal`). A
//! batch is appended before the worker gets its acknowledgement, so a coordinator killed
//! mid-sweep loses no row it acknowledged: started again, it reads the journals back and the
//! attempts carry on where they were.
//!
//! The journal is also where an attempt's rows are kept while it runs: the coordinator holds
//! only their counts in memory ([`Tally`]), and the trial's tables are written by streaming its
//! journal back ([`Journal::batches`]) once it ends. Every reader takes the batches the same way,
//! in the order of the file, each batch number once ([`AttemptReader`]), so what is counted is
//! what is written.
//!
//! Each record is `[length: u32 LE][crc32 of the bytes: u32 LE][protobuf bytes]`. A torn last
//! record (the process died while writing it) fails its length or checksum and is cut off.
//! Records are written straight to the file, without a user-space buffer, and synced to the
//! disk (fdatasync) before the caller answers: they survive the death of the process and of
//! the machine. Syncs are grouped: a caller waits for one sync that covers its record, and
//! one sync covers every record written before it started (`sync`).
//!
//! `DIR/journal/ended.log`, in the same framing, logs every trial whose files were written
//! (`TrialEnded`): `trials.parquet` is rewritten from the state at most about once a second,
//! and a restarted coordinator reads this log on top of it, so no ended trial is forgotten
//! and run again. It goes once the sweep is done and `trials.parquet` holds everything.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bnsweep_proto as pb;
use prost::Message;

use crate::error::{Error, Result};
use crate::trial::Tally;

/// Largest record accepted when reading back (a metric batch is at most 64 MiB on the wire).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// An attempt read back from its journal: its lease, and its batches counted (not kept).
pub struct Restored {
    pub header: pb::JournalHeader,
    pub tally: Tally,
}

/// What a journal directory held when it was opened.
#[derive(Default)]
pub struct Recovered {
    pub running: Vec<Restored>,
    /// Trials that ended (in order; a later record of a trial wins).
    pub ended: Vec<pb::TrialEnded>,
}

/// One journal file, open for appending.
struct AttemptFile {
    path: PathBuf,
    handle: File,
}

impl AttemptFile {
    fn open(path: PathBuf) -> Result<AttemptFile> {
        let handle = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(AttemptFile { path, handle })
    }

    /// Appends one record; a write that fails part way (a full disk) is cut back off, so the
    /// file never holds a torn record before later whole ones.
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let before = self
            .handle
            .metadata()
            .map_err(|e| Error::io(&self.path, e))?
            .len();
        self.handle.write_all(&frame(bytes)).map_err(|e| {
            let _ = self.handle.set_len(before);
            Error::io(&self.path, e)
        })
    }

    fn empty(&mut self) -> Result<()> {
        self.handle.set_len(0).map_err(|e| Error::io(&self.path, e))
    }
}

#[derive(Default)]
struct Files {
    live: HashMap<(String, u32), AttemptFile>,
    free: Vec<AttemptFile>,
    /// Files made so far (the next is `attempt-{made}.journal`).
    made: u64,
}

pub struct Journal {
    dir: PathBuf,
    files: Mutex<Files>,
    ended: Mutex<Option<File>>,
    commit: GroupCommit,
}

/// A write to be made durable by [`Journal::sync`].
#[must_use = "a journal write is durable only once synced"]
pub struct Ticket(u64);

/// Group commit: every write takes a ticket (a sequence number) and leaves its file among the
/// dirty ones; a sync takes the dirty files, syncs them, and so covers every ticket issued
/// before it began. Callers whose ticket is covered return at once.
#[derive(Default)]
struct GroupCommit {
    issued: AtomicU64,
    /// Files written since the last sync began, by path.
    dirty: Mutex<HashMap<PathBuf, File>>,
    /// The highest ticket known durable; held while a sync runs.
    synced: Mutex<u64>,
}

impl GroupCommit {
    fn written(&self, path: &Path, file: &File) -> Result<Ticket> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !dirty.contains_key(path) {
            let handle = file.try_clone().map_err(|e| Error::io(path, e))?;
            dirty.insert(path.to_path_buf(), handle);
        }
        // Issued under the dirty lock: a sync that takes the files takes this one's too.
        Ok(Ticket(self.issued.fetch_add(1, Ordering::SeqCst) + 1))
    }

    fn sync(&self, ticket: Ticket) -> Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= ticket.0 {
            return Ok(()); // another caller's sync covered it
        }
        let (upto, files) = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            (
                self.issued.load(Ordering::SeqCst),
                std::mem::take(&mut *dirty),
            )
        };
        let failed = files
            .iter()
            .find_map(|(path, file)| file.sync_data().err().map(|e| Error::io(path, e)));
        if let Some(e) = failed {
            // Not durable: the files stay dirty for the next try.
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            for (p, f) in files {
                dirty.entry(p).or_insert(f);
            }
            return Err(e);
        }
        *synced = upto;
        Ok(())
    }
}

const ENDED: &str = "ended.log";

impl Journal {
    /// Opens the journal directory (creating it), and reads back every attempt it holds.
    /// Their files stay open for appending; the caller ends those it does not take back.
    pub fn open(dir: &Path) -> Result<(Journal, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut recovered = Recovered::default();
        let log = dir.join(ENDED);
        if log.is_file() {
            let mut records = Records::open(&log)?;
            // Up to the first record that is not a TrialEnded; the whole ones after it stay.
            let mut reading = true;
            while let Some(r) = records.next_record()? {
                if reading {
                    match pb::TrialEnded::decode(r.as_slice()) {
                        Ok(e) => recovered.ended.push(e),
                        Err(_) => reading = false,
                    }
                }
            }
            truncate(&log, records.finish())?;
        }
        let mut files = Files::default();
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "journal"))
            .collect();
        paths.sort();
        for path in paths {
            let read = read(&path)?;
            if let Some((_, good_len)) = &read {
                truncate(&path, *good_len)?;
            }
            let mut file = AttemptFile::open(path)?;
            files.made += 1;
            match read {
                Some((r, _)) => {
                    let key = (r.header.trial_id.clone(), r.header.attempt);
                    files.live.insert(key, file);
                    recovered.running.push(r);
                }
                None => {
                    file.empty()?;
                    files.free.push(file);
                }
            }
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            files: Mutex::new(files),
            ended: Mutex::new(None),
            commit: GroupCommit::default(),
        };
        Ok((journal, recovered))
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for everything written so far: synced, it makes sure a batch seen before (a
    /// resend) is on the disk before it is acknowledged again.
    pub fn barrier(&self) -> Ticket {
        Ticket(self.commit.issued.load(Ordering::SeqCst))
    }

    /// Makes the writes up to `ticket` durable (see `GroupCommit`). Blocking: call it
    /// outside any lock the rest of the coordinator needs.
    pub fn sync(&self, ticket: Ticket) -> Result<()> {
        self.commit.sync(ticket)
    }

    /// Starts the journal of an attempt just leased, in a free file or a new one; durable once
    /// the ticket is synced.
    pub fn begin(&self, header: &pb::JournalHeader) -> Result<Ticket> {
        let mut files = self.files();
        let mut file = match files.free.pop() {
            Some(file) => file,
            None => {
                let path = self.dir.join(format!("attempt-{:06}.journal", files.made));
                files.made += 1;
                AttemptFile::open(path)?
            }
        };
        let written = file
            .write(&header.encode_to_vec())
            .and_then(|()| self.commit.written(&file.path, &file.handle));
        let ticket = match written {
            Ok(t) => t,
            Err(e) => {
                let _ = file.empty();
                files.free.push(file);
                return Err(e);
            }
        };
        files
            .live
            .insert((header.trial_id.clone(), header.attempt), file);
        Ok(ticket)
    }

    /// Reads back the batches of a journaled attempt, each once, in order (see
    /// [`AttemptReader`]), one at a time: the attempt's rows, to be written to its tables.
    pub fn batches(&self, trial_id: &str, attempt: u32) -> Result<AttemptReader> {
        let path = self
            .files()
            .live
            .get(&(trial_id.to_string(), attempt))
            .map(|file| file.path.clone())
            .ok_or_else(|| {
                Error::io(
                    &self.dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no journal open for trial {trial_id} attempt {attempt}"),
                    ),
                )
            })?;
        match AttemptReader::open(&path)? {
            Some(reader)
                if reader.header.trial_id == trial_id && reader.header.attempt == attempt =>
            {
                Ok(reader)
            }
            _ => Err(Error::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("does not hold the lease of trial {trial_id} attempt {attempt}"),
                ),
            )),
        }
    }

    /// Appends one metric batch of a journaled attempt; durable once the ticket is synced.
    pub fn append(&self, batch: &pb::MetricsBatch) -> Result<Ticket> {
        let mut files = self.files();
        let file = files
            .live
            .get_mut(&(batch.trial_id.clone(), batch.attempt))
            .ok_or_else(|| {
                Error::io(
                    &self.dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "no journal open for trial {} attempt {}",
                            batch.trial_id, batch.attempt
                        ),
                    ),
                )
            })?;
        file.write(&batch.encode_to_vec())?;
        self.commit.written(&file.path, &file.handle)
    }

    /// Ends the journal of an attempt whose rows are written or discarded: its file is
    /// emptied and free again.
    pub fn end(&self, trial_id: &str, attempt: u32) {
        let mut files = self.files();
        if let Some(mut file) = files.live.remove(&(trial_id.to_string(), attempt)) {
            match file.empty() {
                Ok(()) => files.free.push(file),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }

    /// Once the sweep is done: removes the free files and the log of ended trials.
    pub fn finish(&self) {
        let mut files = self.files();
        for file in files.free.drain(..) {
            let _ = fs::remove_file(&file.path);
        }
        drop(files);
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = fs::remove_file(self.dir.join(ENDED));
    }
}

impl Journal {
    /// Logs a trial whose files are written; durable once the ticket is synced.
    pub fn ended(&self, e: &pb::TrialEnded) -> Result<Ticket> {
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
        let before = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        file.write_all(&frame(&e.encode_to_vec())).map_err(|e| {
            let _ = file.set_len(before); // no torn record before later whole ones
            Error::io(&path, e)
        })?;
        self.commit.written(&path, file)
    }

    /// Notes a file renamed into `dir`: the directory is synced with the next sync.
    pub fn renamed_into(&self, dir: &Path) -> Result<Ticket> {
        let handle = File::open(dir).map_err(|e| Error::io(dir, e))?;
        self.commit.written(dir, &handle)
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

/// The whole records of a file, read one at a time; the first torn or corrupt one (its length
/// or checksum wrong, cut short) ends them.
struct Records {
    path: PathBuf,
    file: BufReader<File>,
    /// Bytes of whole records read so far.
    good_len: u64,
    done: bool,
}

impl Records {
    fn open(path: &Path) -> Result<Records> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Records {
            path: path.to_path_buf(),
            file: BufReader::with_capacity(64 * 1024, file),
            good_len: 0,
            done: false,
        })
    }

    /// The next whole record; None at the end of the file or at a torn record.
    fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        if !self.read_exact(&mut head)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        if len > MAX_RECORD {
            self.done = true;
            return Ok(None);
        }
        let mut body = vec![0u8; len];
        if !self.read_exact(&mut body)? || crc32fast::hash(&body) != crc {
            self.done = true;
            return Ok(None);
        }
        self.good_len += 8 + len as u64;
        Ok(Some(body))
    }

    /// Fills `buf`; false (and done) when the file ends first.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<bool> {
        match self.file.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.done = true;
                Ok(false)
            }
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Once every record is read: their length, the file's but for a torn tail (said).
    fn finish(self) -> u64 {
        let len = fs::metadata(&self.path).map_or(self.good_len, |m| m.len());
        if len > self.good_len {
            tracing::warn!(
                "{}: cut a torn record off the end ({} bytes)",
                self.path.display(),
                len - self.good_len
            );
        }
        self.good_len
    }
}

/// An attempt's journal read back: its lease, then its batches one at a time, in the order of
/// the file, each batch number once (the next one due; one seen before, or a record that is
/// not a batch, is skipped, and a torn record ends them). Memory: one batch at a time.
pub struct AttemptReader {
    pub header: pb::JournalHeader,
    records: Records,
    /// The batches taken, counted.
    tally: Tally,
}

impl AttemptReader {
    /// None when not even the lease is readable (an empty, free file).
    fn open(path: &Path) -> Result<Option<AttemptReader>> {
        let mut records = Records::open(path)?;
        let Some(header) = records
            .next_record()?
            .and_then(|b| pb::JournalHeader::decode(b.as_slice()).ok())
        else {
            return Ok(None);
        };
        Ok(Some(AttemptReader {
            header,
            records,
            tally: Tally::default(),
        }))
    }

    /// The next batch of the attempt, counted in [`AttemptReader::tally`].
    pub fn next_batch(&mut self) -> Result<Option<pb::MetricsBatch>> {
        while let Some(record) = self.records.next_record()? {
            let Ok(batch) = pb::MetricsBatch::decode(record.as_slice()) else {
                continue;
            };
            if batch.seq == self.tally.next_seq {
                self.tally.take(&batch);
                return Ok(Some(batch));
            }
        }
        Ok(None)
    }

    /// What the batches taken so far hold.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.records.path
    }
}

/// Reads an attempt's journal through: its lease and its batches counted, and the length of
/// its whole records. None when not even the lease is readable.
fn read(path: &Path) -> Result<Option<(Restored, u64)>> {
    let Some(mut reader) = AttemptReader::open(path)? else {
        return Ok(None);
    };
    while reader.next_batch()?.is_some() {}
    let AttemptReader {
        header,
        records,
        tally,
    } = reader;
    let good_len = records.finish();
    Ok(Some((Restored { header, tally }, good_len)))
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
    fn journal_files_of_any_name_are_read_back() {
        // Earlier builds named the files `slot-N.journal`; a directory they left mid-sweep
        // resumes all the same.
        let dir = tempfile::tempdir().unwrap();
        let header = pb::JournalHeader {
            trial_id: "t1".into(),
            attempt: 2,
            ..Default::default()
        };
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            j.sync(j.begin(&header).unwrap()).unwrap();
            j.sync(j.append(&batch(0)).unwrap()).unwrap();
        }
        let old = dir.path().join("slot-000000.journal");
        fs::rename(dir.path().join("attempt-000000.journal"), &old).unwrap();
        let (j, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.running.len(), 1);
        assert_eq!(recovered.running[0].header, header);
        assert_eq!(recovered.running[0].tally.next_seq, 1);
        // A new attempt takes a new file beside it.
        let next = pb::JournalHeader {
            trial_id: "t2".into(),
            ..header
        };
        j.sync(j.begin(&next).unwrap()).unwrap();
        assert!(old.is_file());
        assert!(dir.path().join("attempt-000001.journal").is_file());
    }

    #[test]
    fn batches_come_back_after_a_restart_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let header = pb::JournalHeader {
            trial_id: "t1".into(),
            attempt: 2,
            worker_id: "w1-h".into(),
            worker_secret: "s".into(),
            host: "h".into(),
            started_at_ms: 1_800_000_000_000,
        };
        {
            let (j, recovered) = Journal::open(dir.path()).unwrap();
            assert!(recovered.running.is_empty());
            j.sync(j.begin(&header).unwrap()).unwrap();
            j.sync(j.append(&batch(0)).unwrap()).unwrap();
            j.sync(j.append(&batch(1)).unwrap()).unwrap();
        }
        // The process died halfway through writing a third record.
        let path = dir.path().join("attempt-000000.journal");
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
        assert_eq!(restored[0].tally.next_seq, 2);
        let mut reader = j.batches("t1", 2).unwrap();
        let mut seqs = Vec::new();
        while let Some(b) = reader.next_batch().unwrap() {
            seqs.push(b.seq);
        }
        assert_eq!(seqs, [0, 1]);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
        // Appending goes on after the last whole record.
        j.sync(j.append(&batch(2)).unwrap()).unwrap();
        drop(j);
        let (
            j,
            Recovered {
                running: restored, ..
            },
        ) = Journal::open(dir.path()).unwrap();
        assert_eq!(restored[0].tally.next_seq, 3);
        j.end("t1", 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "the file is free");
        assert!(
            j.append(&batch(3)).is_err(),
            "an ended journal takes no more"
        );
        // The next attempt reuses the file; a restart finds only it.
        let next = pb::JournalHeader {
            trial_id: "t2".into(),
            ..header.clone()
        };
        j.sync(j.begin(&next).unwrap()).unwrap();
        drop(j);
        let (j, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.running.len(), 1);
        assert_eq!(recovered.running[0].header, next);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        j.end("t2", 2);
        j.finish();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Many writers, one file each, syncing at once: every ticket is covered by a sync that
    /// began after it was issued, and a ticket already covered costs no second sync.
    #[test]
    fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let j = std::sync::Arc::new(j);
        let writers: Vec<_> = (0..8u32)
            .map(|w| {
                let j = j.clone();
                std::thread::spawn(move || {
                    let header = pb::JournalHeader {
                        trial_id: format!("t{w}"),
                        attempt: 1,
                        ..Default::default()
                    };
                    j.sync(j.begin(&header).unwrap()).unwrap();
                    for seq in 0..50 {
                        let b = pb::MetricsBatch {
                            trial_id: format!("t{w}"),
                            attempt: 1,
                            ..batch(seq)
                        };
                        let t = j.append(&b).unwrap();
                        let n = t.0;
                        j.sync(t).unwrap();
                        assert!(*j.commit.synced.lock().unwrap() >= n);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(*j.commit.synced.lock().unwrap(), 8 * 51);
        assert!(j.commit.dirty.lock().unwrap().is_empty());
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.running.len(), 8);
        assert!(recovered.running.iter().all(|r| r.tally.next_seq == 50));
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
            j.sync(j.ended(&ended("t1")).unwrap()).unwrap();
            j.sync(j.ended(&ended("t2")).unwrap()).unwrap();
        }
        let (j, recovered) = Journal::open(dir.path()).unwrap();
        assert_eq!(recovered.ended, vec![ended("t1"), ended("t2")]);
        j.sync(j.ended(&ended("t3")).unwrap()).unwrap();
        j.finish();
        let (_, recovered) = Journal::open(dir.path()).unwrap();
        assert!(recovered.ended.is_empty());
    }
}
