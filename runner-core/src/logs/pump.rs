//! [`LogPump`]: copies one guest output stream into its [`LogSink`], byte
//! for byte, until EOF or until its owner stops it.
//!
//! The pump never stops reading because of the bytes (no line parsing, no
//! UTF-8) or the disk (failed writes are counted as dropped and logged by
//! the sink's writer). Bytes are written when the buffer is full or its
//! oldest byte has waited [`PumpTuning::linger`], so a fast producer's many
//! small pipe writes become few large file writes.
//!
//! Writes normally run on the pump task itself: a buffer's page-cache write
//! takes tens of microseconds, and a hand-off to another thread per buffer
//! measured twice the CPU per GiB. A write that takes
//! [`PumpTuning::slow_write`] or more (a throttled or slow disk) moves the
//! pump's writes to the blocking pool for a while, overlapped with reading,
//! so a slow disk does not stall a runtime worker.

use super::rotate::WriteOutcome;
use super::sink::LogSink;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

/// How a pump buffers and where it writes. [`Default`] is what the runner
/// uses; other values are for benchmarks and for tests that exercise the
/// blocking-pool path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpTuning {
    /// Size of the read buffer (two while a write runs on the blocking
    /// pool). Default 128 KiB.
    pub buffer: usize,
    /// Longest a byte waits in the buffer before it is written: short
    /// enough for followers to see output at once, long enough that a fast
    /// writer's many small pipe writes become few large file writes.
    /// Default 2 ms.
    pub linger: Duration,
    /// An inline write that takes this long moves the pump's writes to the
    /// blocking pool for `offload_for`. Default 20 ms.
    pub slow_write: Duration,
    /// How long writes stay on the blocking pool after a slow one. Default
    /// 2 s.
    pub offload_for: Duration,
}

impl Default for PumpTuning {
    fn default() -> Self {
        Self {
            buffer: 128 * 1024,
            linger: Duration::from_millis(2),
            slow_write: Duration::from_millis(20),
            offload_for: Duration::from_secs(2),
        }
    }
}

/// After a pump is told to stop, how long it may take to write what it
/// already read before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// A guest stream being copied into a [`LogSink`].
pub type GuestReader = Pin<Box<dyn AsyncRead + Send>>;

/// Starts pumps; see [`LogPump::spawn`].
#[derive(Debug, Clone, Copy)]
pub struct LogPump;

impl LogPump {
    /// Spawns a task that copies `reader` into `sink` until EOF, appending
    /// to the sink's files. Must be called within a Tokio runtime (with
    /// its time driver enabled).
    pub fn spawn(reader: GuestReader, sink: &LogSink) -> PumpHandle {
        Self::spawn_tuned(reader, sink, PumpTuning::default())
    }

    /// [`Self::spawn`] with non-default buffering.
    pub fn spawn_tuned(reader: GuestReader, sink: &LogSink, tuning: PumpTuning) -> PumpHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let pump = Pump {
            sink: sink.clone(),
            tuning: PumpTuning {
                buffer: tuning.buffer.max(1),
                ..tuning
            },
            progress: progress.clone(),
        };
        let task = tokio::spawn(pump.run(reader, stop_rx));
        PumpHandle {
            task,
            stop: Some(stop_tx),
            progress,
            path: sink.path().to_path_buf(),
        }
    }
}

/// Owner's handle on a running pump.
///
/// Dropping it stops the pump the way [`PumpHandle::finish`] does after
/// its timeout (bytes already read are still written).
#[derive(Debug)]
pub struct PumpHandle {
    task: JoinHandle<PumpReport>,
    stop: Option<oneshot::Sender<()>>,
    progress: Arc<AtomicU64>,
    path: PathBuf,
}

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The stream reached EOF and everything read was handed to the sink.
    Eof,
    /// Stopped before EOF (the drain timeout ran out, or the handle was
    /// dropped); everything read was handed to the sink.
    Cut,
    /// The stream failed; everything read before was handed to the sink.
    ReadFailed {
        /// Cause.
        source: io::Error,
    },
    /// Told to stop, it did not finish its last write within
    /// [`STOP_GRACE`] and was aborted; counters may miss that write.
    Abandoned,
    /// The pump task panicked.
    Panicked,
}

/// What a pump did.
#[derive(Debug)]
pub struct PumpReport {
    /// Bytes read from the stream.
    pub bytes_read: u64,
    /// Bytes that reached a log file.
    pub bytes_written: u64,
    /// Bytes read but lost to failed writes.
    pub bytes_dropped: u64,
    /// How it ended.
    pub end: PumpEnd,
}

impl PumpReport {
    fn new() -> Self {
        Self {
            bytes_read: 0,
            bytes_written: 0,
            bytes_dropped: 0,
            end: PumpEnd::Eof,
        }
    }

    /// Whether the stream was cut off before its end.
    pub fn was_cut(&self) -> bool {
        matches!(self.end, PumpEnd::Cut | PumpEnd::Abandoned)
    }
}

impl PumpHandle {
    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Whether the pump has ended (EOF, error, or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Lets the pump drain to EOF for up to `timeout`, then stops it (it
    /// writes what it already read, within [`STOP_GRACE`]) and reports.
    /// Returns within `timeout + STOP_GRACE`.
    pub async fn finish(mut self, timeout: Duration) -> PumpReport {
        if let Ok(joined) = tokio::time::timeout(timeout, &mut self.task).await {
            return self.reported(joined);
        }
        if let Some(stop) = self.stop.take()
            && stop.send(()).is_err()
        {
            tracing::trace!(path = %self.path.display(), "Log pump ended while being stopped");
        }
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(joined) => self.reported(joined),
            Err(_) => {
                self.task.abort();
                tracing::warn!(path = %self.path.display(), "Log pump did not stop in time; aborted");
                PumpReport {
                    bytes_read: self.bytes_read(),
                    end: PumpEnd::Abandoned,
                    ..PumpReport::new()
                }
            }
        }
    }

    fn reported(&self, joined: Result<PumpReport, JoinError>) -> PumpReport {
        joined.unwrap_or_else(|error| {
            tracing::error!(path = %self.path.display(), %error, "Log pump task failed");
            PumpReport {
                bytes_read: self.bytes_read(),
                end: PumpEnd::Panicked,
                ..PumpReport::new()
            }
        })
    }
}

/// Where the pump's file writes run.
#[derive(Debug, Clone, Copy)]
enum WriteMode {
    /// On the pump task itself: a page-cache write of one buffer takes tens
    /// of microseconds, and staying on one thread halves the CPU cost of
    /// logging compared with a hand-off per buffer.
    Inline,
    /// On the blocking pool, overlapped with reading, until `until`: a
    /// write took [`PumpTuning::slow_write`] or longer (a slow or throttled
    /// disk), and such writes must not stall a runtime worker.
    Offloaded { until: Instant },
}

/// A buffer being written on a blocking task.
struct InFlight {
    task: JoinHandle<(Vec<u8>, WriteOutcome)>,
    len: u64,
}

/// What the pump task owns besides its stream.
struct Pump {
    sink: LogSink,
    tuning: PumpTuning,
    progress: Arc<AtomicU64>,
}

impl Pump {
    /// The pump task: read into the buffer; write it when full, when its
    /// oldest byte has waited `linger`, or at the end.
    async fn run(self, mut reader: GuestReader, mut stop: oneshot::Receiver<()>) -> PumpReport {
        let cap = self.tuning.buffer;
        let mut report = PumpReport::new();
        let mut buf: Vec<u8> = Vec::with_capacity(cap);
        let mut spare: Option<Vec<u8>> = None;
        let mut inflight: Option<InFlight> = None;
        let mut end: Option<PumpEnd> = None;
        let mut mode = WriteMode::Inline;
        // When the oldest byte in `buf` must be written.
        let mut flush_by: Option<Instant> = None;
        let mut linger_fired = false;
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            let due = flush_by.is_some_and(|t| {
                end.is_some() || linger_fired || buf.len() >= cap || Instant::now() >= t
            });
            if inflight.is_none() && due {
                flush_by = None;
                linger_fired = false;
                match mode {
                    WriteMode::Offloaded { until } if Instant::now() < until => {
                        let next = spare.take().unwrap_or_else(|| Vec::with_capacity(cap));
                        let chunk = std::mem::replace(&mut buf, next);
                        inflight = Some(start_write(&self.sink, chunk));
                    }
                    _ => {
                        // Back inline: the second buffer is not needed.
                        spare = None;
                        mode = self.write_inline(&mut buf, &mut report);
                    }
                }
            }
            if let Some(reason) = end.take() {
                // Ending: finish the write in flight (and the buffer behind it).
                match inflight.take() {
                    Some(w) => {
                        let len = w.len;
                        self.settle(w.task.await, len, &mut report, &mut spare);
                        end = Some(reason);
                        continue;
                    }
                    None => {
                        report.end = reason;
                        break;
                    }
                }
            }
            tokio::select! {
                biased;
                // A send or a dropped handle both mean stop.
                _ = &mut stop => end = Some(PumpEnd::Cut),
                joined = async { (&mut inflight.as_mut().expect("guarded").task).await }, if inflight.is_some() => {
                    let len = inflight.take().expect("guarded").len;
                    self.settle(joined, len, &mut report, &mut spare);
                }
                read = reader.read_buf(&mut buf), if buf.len() < cap => match read {
                    Ok(0) => end = Some(PumpEnd::Eof),
                    Ok(n) => {
                        report.bytes_read += n as u64;
                        self.progress.store(report.bytes_read, Ordering::Relaxed);
                        if flush_by.is_none() {
                            let at = Instant::now() + self.tuning.linger;
                            flush_by = Some(at);
                            linger.as_mut().reset(at);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        tracing::warn!(path = %self.sink.path().display(), error = %source, "Guest output stream failed");
                        end = Some(PumpEnd::ReadFailed { source });
                    }
                },
                () = &mut linger, if inflight.is_none() && flush_by.is_some() => linger_fired = true,
            }
        }
        tracing::debug!(
            path = %self.sink.path().display(),
            bytes_read = report.bytes_read,
            bytes_dropped = report.bytes_dropped,
            end = ?report.end,
            "Log pump ended"
        );
        report
    }

    /// Writes and empties `buf` on this thread; returns the mode for the
    /// next write.
    fn write_inline(&self, buf: &mut Vec<u8>, report: &mut PumpReport) -> WriteMode {
        let started = Instant::now();
        let out = self.sink.write(buf);
        let took = started.elapsed();
        buf.clear();
        report.bytes_written += out.written;
        report.bytes_dropped += out.dropped;
        if took < self.tuning.slow_write {
            return WriteMode::Inline;
        }
        tracing::debug!(path = %self.sink.path().display(), ?took, "Slow log write; writing from the blocking pool for a while");
        WriteMode::Offloaded {
            until: Instant::now() + self.tuning.offload_for,
        }
    }

    /// Accounts for a write that ran on the blocking pool and keeps its
    /// buffer for reuse.
    fn settle(
        &self,
        joined: Result<(Vec<u8>, WriteOutcome), JoinError>,
        len: u64,
        report: &mut PumpReport,
        spare: &mut Option<Vec<u8>>,
    ) {
        match joined {
            Ok((mut chunk, out)) => {
                report.bytes_written += out.written;
                report.bytes_dropped += out.dropped;
                chunk.clear();
                *spare = Some(chunk);
            }
            Err(error) => {
                tracing::error!(path = %self.sink.path().display(), %error, "Log write task failed; chunk dropped");
                report.bytes_dropped += len;
            }
        }
    }
}

fn start_write(sink: &LogSink, chunk: Vec<u8>) -> InFlight {
    let len = chunk.len() as u64;
    let sink = sink.clone();
    let task = tokio::task::spawn_blocking(move || {
        let out = sink.write(&chunk);
        (chunk, out)
    });
    InFlight { task, len }
}
