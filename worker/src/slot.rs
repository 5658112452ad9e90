//! Slot processes: every trial a worker runs at once trains in a process of its own
//! (`bnsweep-worker slot`), so that a crash, a CUDA error or an out-of-memory kill costs that
//! trial, not the worker and its other trials. A slot keeps its process — its loaded data, its
//! CUDA context, cuDNN's tuned kernels — from one trial to the next; one that died is started
//! again for the slot's next trial.
//!
//! The worker writes [`pb::SlotCommand`]s to the slot's stdin, the slot writes
//! [`pb::SlotEvent`]s to its stdout (the attempt's rows as they are known, then its end), each
//! framed by its length as 4 little-endian bytes ([`crate::framing`]). The slot logs to the
//! worker's stderr. A slot whose worker is gone (its stdin closes, or the kernel's parent-death
//! signal) stops at once; signals sent to the whole job (SIGTERM, SIGINT, SIGHUP, SIGUSR1/2,
//! SIGALRM) are ignored.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bnsweep_proto as pb;
use pb::slot_command::Command as SlotCmd;
use pb::slot_event::Event;
use tch::Device;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::device;
use crate::error::{Error, Result};
use crate::framing::{frame, read_frame, read_frame_async};
use crate::runner::{Msg, Runner, Started, Stop};
use crate::trainer::{self, Ending, HostData, Row};

/// How often a running attempt's stop condition is looked at (and a stop sent again).
const STOP_CHECK: Duration = Duration::from_millis(250);
/// Signals slot processes ignore: those a cluster scheduler sends to every process of a job.
const JOB_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

/// The worker's side of a slot's event: a row, or how the attempt ended.
impl From<Event> for Msg {
    fn from(event: Event) -> Msg {
        match Row::try_from(event) {
            Ok(row) => Msg::Row(row),
            Err(end) => Msg::End(result_of(end)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The slot process.

/// Datasets loaded on the host, kept for the slot's next trials.
#[derive(Default)]
struct DataCache(HashMap<String, Arc<HostData>>);

impl DataCache {
    fn get(&mut self, spec: &pb::DatasetSpec) -> Result<Arc<HostData>> {
        let key = format!("{spec:?}");
        if let Some(d) = self.0.get(&key) {
            return Ok(d.clone());
        }
        let data = Arc::new(trainer::load_data(spec)?);
        if self.0.len() >= 2 {
            self.0.clear();
        }
        self.0.insert(key, data.clone());
        Ok(data)
    }
}

/// The body of `bnsweep-worker slot`: trains the attempts its worker sends, one at a time,
/// until its stdin closes.
pub fn serve(device: Device) -> Result<()> {
    // Frames go to a private copy of stdout; anything else written to stdout (a library's
    // message) lands on stderr instead of corrupting them.
    // SAFETY: plain descriptor calls on this process's own standard streams.
    let frames_fd = unsafe { libc::dup(1) };
    if frames_fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return Err(Error::SlotSetup(io::Error::last_os_error()));
    }
    // SAFETY: `frames_fd` is a fresh descriptor owned by nothing else.
    let out: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(frames_fd) };
    let mut out = io::BufWriter::new(out);

    let stop: Arc<Mutex<Option<String>>> = Arc::default();
    let (starts, started) = std::sync::mpsc::channel::<pb::TrialAssignment>();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            let gone = || {
                *stop.lock().unwrap_or_else(|e| e.into_inner()) = Some("the worker is gone".into());
            };
            loop {
                match read_frame::<pb::SlotCommand>(&mut stdin) {
                    Ok(Some(pb::SlotCommand {
                        command: Some(SlotCmd::Start(a)),
                    })) => {
                        if starts.send(a).is_err() {
                            break;
                        }
                    }
                    Ok(Some(pb::SlotCommand {
                        command: Some(SlotCmd::Stop(reason)),
                    })) => *stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        gone();
                        break;
                    }
                }
            }
        });
    }
    let mut cache = DataCache::default();
    // Commands arrive in order, and the worker sends an attempt's stop only before it has
    // its end: a stop read before a start belongs to the previous attempt.
    for a in started {
        *stop.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut send = |event: Event| {
            let bytes = frame(&pb::SlotEvent { event: Some(event) });
            if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                *stop.lock().unwrap_or_else(|e| e.into_inner()) = Some("the worker is gone".into());
            }
        };
        let result = train_one(&a, device, &mut cache, &stop, |row| send(row.into()));
        send(Event::End(end_of(&result)));
    }
    Ok(())
}

fn train_one(
    a: &pb::TrialAssignment,
    device: Device,
    cache: &mut DataCache,
    stop: &Mutex<Option<String>>,
    emit: impl FnMut(Row),
) -> Result<Ending> {
    let spec = a.spec.clone().unwrap_or_default();
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let data = cache.get(&spec.dataset.clone().unwrap_or_default())?;
        let stop = || stop.lock().unwrap_or_else(|e| e.into_inner()).clone();
        trainer::train_with(&spec, data, device, emit, &mut trainer::StopWhen(stop))
    }))
    .unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::Crashed(text))
    })
}

fn end_of(result: &Result<Ending>) -> pb::SlotEnd {
    match result {
        Ok(ending) => pb::SlotEnd {
            status: ending.status() as i32,
            ..Default::default()
        },
        Err(e) => pb::SlotEnd {
            status: pb::TrialStatus::Failed as i32,
            error: match e {
                Error::Stopped(reason) => reason.clone(),
                e => e.to_string(),
            },
            retryable: e.retryable(),
            stopped: matches!(e, Error::Stopped(_)),
        },
    }
}

/// The worker's view of how an attempt ended in its slot.
fn result_of(end: pb::SlotEnd) -> Result<Ending> {
    match end.status() {
        pb::TrialStatus::Completed => Ok(Ending::Completed),
        pb::TrialStatus::Diverged => Ok(Ending::Diverged),
        _ if end.stopped => Err(Error::Stopped(end.error)),
        _ => Err(Error::InSlot {
            message: end.error,
            retryable: end.retryable,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The worker's side.

/// How the worker starts its slot processes.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `bnsweep-worker` binary (this one).
    pub program: PathBuf,
    /// libtorch's CPU threads in each slot.
    pub threads: u32,
    /// Set in every slot's environment (MPS's pipe directory).
    pub env: Vec<(OsString, OsString)>,
}

/// The worker's slots: each a device and, once it has trained, its process.
pub struct Slots {
    launch: Launch,
    free: Mutex<VecDeque<Slot>>,
    /// Signalled when a slot is put back.
    freed: tokio::sync::Notify,
    total: usize,
    devices: Vec<Device>,
}

/// One slot: where it trains, and its process while it lives.
pub struct Slot {
    pub device: Device,
    process: Option<Process>,
}

struct Process {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    events: mpsc::UnboundedReceiver<io::Result<pb::SlotEvent>>,
}

impl Slots {
    /// `per_device` slots on each of `devices`, taken in turn across the devices.
    pub fn new(devices: &[Device], per_device: u32, launch: Launch) -> Slots {
        let free: VecDeque<Slot> = (0..per_device)
            .flat_map(|_| devices.iter())
            .map(|&device| Slot {
                device,
                process: None,
            })
            .collect();
        Slots {
            launch,
            total: free.len(),
            free: Mutex::new(free),
            freed: tokio::sync::Notify::new(),
            devices: devices.to_vec(),
        }
    }

    /// A free slot, once there is one. The worker never holds more attempts than it has
    /// slots, but an attempt it has let go of (its lease lost) may still be stopping in its
    /// slot when the next one arrives: that one waits for the slot.
    pub async fn take(&self) -> Slot {
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return slot;
            }
            freed.await;
        }
    }

    pub fn put(&self, slot: Slot) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(slot);
        self.freed.notify_one();
    }

    /// Trains `a` in `slot`, sending its rows and then its end to `tx`; `stop` is asked every
    /// quarter of a second, and a reason stops the attempt at its next step.
    pub async fn train(
        &self,
        slot: &mut Slot,
        a: &pb::TrialAssignment,
        stop: impl Fn() -> Option<String>,
        tx: &mpsc::UnboundedSender<Msg>,
    ) {
        let end = match self.run(slot, a, &stop, tx).await {
            Ok(end) => end,
            Err(e) => {
                // Whatever state it is in, this process is not used again.
                if let Some(mut p) = slot.process.take() {
                    let _ = p.child.start_kill();
                    let _ = p.child.wait().await;
                }
                Err(Error::Crashed(format!(
                    "the slot process on {}: {e}",
                    device::name(slot.device)
                )))
            }
        };
        let _ = tx.send(Msg::End(end));
    }

    async fn run(
        &self,
        slot: &mut Slot,
        a: &pb::TrialAssignment,
        stop: &impl Fn() -> Option<String>,
        tx: &mpsc::UnboundedSender<Msg>,
    ) -> io::Result<Result<Ending>> {
        if slot
            .process
            .as_mut()
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_some())
        {
            slot.process = None;
        }
        if slot.process.is_none() {
            slot.process = Some(self.spawn(slot.device)?);
        }
        let p = slot.process.as_mut().expect("set above");
        let start = pb::SlotCommand {
            command: Some(SlotCmd::Start(a.clone())),
        };
        p.stdin.write_all(&frame(&start)).await?;
        p.stdin.flush().await?;
        let mut check = tokio::time::interval(STOP_CHECK);
        loop {
            tokio::select! {
                event = p.events.recv() => match event {
                    Some(Ok(pb::SlotEvent { event: Some(event) })) => match Msg::from(event) {
                        Msg::End(result) => return Ok(result),
                        row => {
                            let _ = tx.send(row);
                        }
                    },
                    Some(Ok(pb::SlotEvent { event: None })) => {}
                    Some(Err(e)) => return Err(e),
                    None => {
                        let status = p.child.wait().await?;
                        return Err(io::Error::other(format!("it ended mid-trial ({status})")));
                    }
                },
                _ = check.tick() => {
                    // Sent again at every check until the attempt ends: cheap, and immune to
                    // the slot not having read its start yet.
                    if let Some(reason) = stop() {
                        let stop = pb::SlotCommand { command: Some(SlotCmd::Stop(reason)) };
                        let _ = p.stdin.write_all(&frame(&stop)).await;
                        let _ = p.stdin.flush().await;
                    }
                }
            }
        }
    }

    fn spawn(&self, device: Device) -> io::Result<Process> {
        let mut cmd = tokio::process::Command::new(&self.launch.program);
        cmd.arg("slot")
            .arg("--device")
            .arg(device::name(device))
            .arg("--threads")
            .arg(self.launch.threads.to_string())
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec. The slot is killed when
        // the worker dies, and is in a process group of its own, so that a terminal's Ctrl-C
        // reaches the worker (which stops its trials cleanly), not the slots. It ignores the
        // signals a cluster sends to every process of a job (Slurm at a time limit or
        // `scancel`, `--signal` without `B:`), inherited through exec: only its worker stops
        // it, handing the trial back instead of losing it to a crash.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setpgid(0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                for signal in JOB_SIGNALS {
                    if libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::other(format!(
                "cannot start `{} slot`: {e}",
                self.launch.program.display()
            ))
        })?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match read_frame_async::<pb::SlotEvent>(&mut stdout).await {
                    Ok(Some(event)) => {
                        if tx.send(Ok(event)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        tracing::debug!(device = %device::name(device), pid = child.id(), "slot process started");
        Ok(Process {
            child,
            stdin,
            events,
        })
    }
}

impl Runner for Slots {
    fn slots(&self) -> u32 {
        self.total as u32
    }

    fn devices(&self) -> Vec<Device> {
        self.devices.clone()
    }

    /// Trains the attempt in the next free slot, and puts the slot back after it.
    fn start(
        self: Arc<Self>,
        attempt: pb::TrialAssignment,
        stop: Stop,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Started {
        Box::pin(async move {
            let mut slot = self.take().await;
            let device = slot.device;
            tokio::spawn(async move {
                self.train(&mut slot, &attempt, stop, &tx).await;
                self.put(slot);
            });
            device
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let event = pb::SlotEvent {
            event: Some(Event::Eval(pb::EvalRow {
                step: 7,
                test_loss: 1.5,
                test_acc: 0.25,
            })),
        };
        let mut bytes = frame(&event);
        bytes.extend(frame(&pb::SlotEvent {
            event: Some(Event::End(end_of(&Err(Error::Stopped("why".into()))))),
        }));
        let mut r = bytes.as_slice();
        assert_eq!(read_frame::<pb::SlotEvent>(&mut r).unwrap(), Some(event));
        let end = match read_frame::<pb::SlotEvent>(&mut r).unwrap() {
            Some(pb::SlotEvent {
                event: Some(Event::End(end)),
            }) => end,
            other => panic!("{other:?}"),
        };
        assert!(matches!(result_of(end), Err(Error::Stopped(why)) if why == "why"));
        assert_eq!(read_frame::<pb::SlotEvent>(&mut r).unwrap(), None);
        let mut torn: &[u8] = &[200, 0, 0, 0, 1, 2];
        assert!(read_frame::<pb::SlotEvent>(&mut torn).is_err());
        let mut huge: &[u8] = &[255, 255, 255, 255];
        assert!(read_frame::<pb::SlotEvent>(&mut huge).is_err());
    }

    #[test]
    fn a_failure_in_the_slot_keeps_its_text_and_whether_to_retry() {
        let data = Err(Error::Unsupported("model `vgg99`".into()));
        match result_of(end_of(&data)) {
            Err(e) => {
                assert_eq!(e.to_string(), "unsupported trial: model `vgg99`");
                assert!(!e.retryable());
            }
            Ok(e) => panic!("{e:?}"),
        }
        let torch = Err(Error::Crashed("boom".into()));
        assert!(result_of(end_of(&torch)).unwrap_err().retryable());
        assert_eq!(
            result_of(end_of(&Ok(Ending::Diverged))).unwrap(),
            Ending::Diverged
        );
    }
}
