//! [`LogPump`]: copies one guest output stream into its [`LogSink`], byte
//! for byte, until EOF or until its owner stops it.
//!
//! The pump never stops reading because of the bytes (no line parsing, no
//! UTF-8) or the disk: it only moves bytes out of the stream and hands full
//! chunks to the sink's bounded write queue; the sink's writer thread does
//! the file work. A pipe ([`GuestStream::Pipe`]) is never read into memory:
//! its bytes are spliced into a pipe of the pump's own and from there into
//! the file (see [`super::chunk`] for why two steps). Any other stream
//! ([`GuestStream::Reader`]) is read into buffers. Chunks are handed over
//! when full or when their oldest byte has waited [`PumpTuning::linger`],
//! so a fast producer's many small pipe writes become few large file
//! writes; the first bytes after a quiet spell (nothing read for a linger)
//! are handed over as soon as the stream has nothing more to read, so a
//! lone line is never held back. A pipe busy enough to fill a chunk before
//! its linger runs out is handed to the writer thread to drain itself
//! (see [`super::drain`]) until it quiets down. A chunk the full queue
//! cannot take (the disk stalls) is dropped and counted after at most
//! [`super::queue::FULL_WAIT`], never held back by leaving the pipe
//! unread.

use super::chunk::Chunk;
use super::queue::{FULL_WAIT, Tally};
use super::sink::LogSink;
use crate::clock::unix_ms_now;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

/// How a pump buffers. [`Default`] is what the runner uses; other values
/// are for benchmarks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpTuning {
    /// Size of the read buffer handed to the queue when full. Default
    /// 128 KiB.
    pub buffer: usize,
    /// Longest a byte waits in the buffer before it is handed over: short
    /// enough for followers to see output at once, long enough that a fast
    /// writer's many small pipe writes become few large file writes.
    /// Default 2 ms.
    pub linger: Duration,
    /// Bytes of a pipe chunk (the pump's own pipe a [`GuestStream::Pipe`]
    /// is spliced into; the kernel rounds it to whole pages, and an
    /// unprivileged runner over its pipe quota gets less). Default 1 MiB.
    pub pipe_chunk: usize,
}

impl Default for PumpTuning {
    fn default() -> Self {
        Self {
            buffer: 128 * 1024,
            linger: Duration::from_millis(2),
            pipe_chunk: 1 << 20,
        }
    }
}

/// Capacity a copy-path pump's buffer has while it waits for the first
/// bytes; it grows to [`PumpTuning::buffer`] once output flows.
const IDLE_BUFFER: usize = 4096;

/// After a pump is told to stop, how long the writer may take to write what
/// the pump already read before the pump is aborted (its owner's wait ends;
/// a writer stuck on the disk keeps its thread, never a runtime worker).
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// A byte stream being copied into a [`LogSink`].
pub type GuestReader = Pin<Box<dyn AsyncRead + Send>>;

/// A guest output stream, as a backend hands it over.
pub enum GuestStream {
    /// A pipe's read end (process-tier streams, the Firecracker console):
    /// spliced into the log without a copy through user space.
    Pipe(pipe::Receiver),
    /// Any other byte stream (a container's demultiplexed attach stream):
    /// read into buffers and copied.
    Reader(GuestReader),
}

impl From<GuestReader> for GuestStream {
    fn from(reader: GuestReader) -> Self {
        Self::Reader(reader)
    }
}

impl From<pipe::Receiver> for GuestStream {
    fn from(pipe: pipe::Receiver) -> Self {
        Self::Pipe(pipe)
    }
}

impl GuestStream {
    /// The stream as a plain byte reader (for callers that read it
    /// themselves instead of pumping it into a log).
    pub fn into_reader(self) -> GuestReader {
        match self {
            Self::Pipe(pipe) => Box::pin(pipe),
            Self::Reader(reader) => reader,
        }
    }
}

/// Reads the stream's bytes (no splicing): for callers that read a guest's
/// output themselves.
impl AsyncRead for GuestStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Pipe(pipe) => Pin::new(pipe).poll_read(cx, buf),
            Self::Reader(reader) => reader.as_mut().poll_read(cx, buf),
        }
    }
}

impl std::fmt::Debug for GuestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pipe(_) => "GuestStream::Pipe",
            Self::Reader(_) => "GuestStream::Reader",
        })
    }
}

/// Starts pumps; see [`LogPump::spawn`].
#[derive(Debug, Clone, Copy)]
pub struct LogPump;

impl LogPump {
    /// Spawns a task that moves `stream` into `sink` until EOF, appending
    /// to the sink's files. Must be called within a Tokio runtime (with
    /// its time driver enabled).
    pub fn spawn(stream: impl Into<GuestStream>, sink: &LogSink) -> PumpHandle {
        Self::spawn_tuned(stream, sink, PumpTuning::default())
    }

    /// [`Self::spawn`] with non-default buffering.
    pub fn spawn_tuned(
        stream: impl Into<GuestStream>,
        sink: &LogSink,
        tuning: PumpTuning,
    ) -> PumpHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(0));
        // The pump counts among the sink's feeders (see `super::queue`)
        // until it is dropped: its task ended or was aborted.
        sink.queue().feeder_started();
        let pump = Pump {
            sink: sink.clone(),
            tuning: PumpTuning {
                buffer: tuning.buffer.max(1),
                pipe_chunk: tuning.pipe_chunk.max(1),
                ..tuning
            },
            progress: progress.clone(),
            tally: Arc::new(Tally::default()),
            feeding: true,
        };
        let task = tokio::spawn(pump.run(stream.into(), stop_rx));
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
    /// The stream reached EOF and the writer handled everything read
    /// (written, or counted as dropped).
    Eof,
    /// Stopped before EOF (the drain timeout ran out, or the handle was
    /// dropped); everything read was handed to the sink.
    Cut,
    /// The stream failed; everything read before was handed to the sink.
    ReadFailed {
        /// Cause.
        source: io::Error,
    },
    /// Told to stop, the writer did not handle what the pump read within
    /// [`STOP_GRACE`] (a stuck disk) and the pump was aborted; counters
    /// may miss those bytes.
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
    /// Bytes read but lost (queue full, failed writes).
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

impl Pump {
    /// How long bytes just read may wait to be batched with more: the
    /// tuning's linger, or nothing while someone follows the log (a
    /// follower waits for every byte it is shown).
    pub(super) fn linger(&self) -> Duration {
        if self.sink.is_followed() {
            Duration::ZERO
        } else {
            self.tuning.linger
        }
    }
}

/// What the pump task owns besides its stream.
pub(super) struct Pump {
    pub(super) sink: LogSink,
    pub(super) tuning: PumpTuning,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) tally: Arc<Tally>,
    /// Still counted among the sink's feeders.
    feeding: bool,
}

impl Pump {
    /// Gives up the pump's place among the sink's feeders (once): with no
    /// feeder left, the writer ends as soon as the queue is empty.
    fn stop_feeding(&mut self) {
        if std::mem::take(&mut self.feeding) {
            self.sink.feeder_ended();
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop_feeding();
    }
}

/// Where the pump stands with the sink's queue.
#[derive(Debug, Default)]
pub(super) struct Handover {
    /// Sequence number of the last item this pump queued.
    pub(super) last_seq: u64,
    /// The queue refused a chunk and has not taken one since.
    overflowing: bool,
}

impl Pump {
    /// The pump task: move the stream into chunks until it ends, then wait
    /// for the writer to handle them all.
    async fn run(mut self, stream: GuestStream, mut stop: oneshot::Receiver<()>) -> PumpReport {
        let mut report = PumpReport::new();
        let mut handover = Handover::default();
        report.end = match stream {
            GuestStream::Reader(reader) => {
                self.copy_reader(reader, &mut stop, &mut report, &mut handover)
                    .await
            }
            GuestStream::Pipe(pipe) => {
                self.splice_pipe(pipe, &mut stop, &mut report, &mut handover)
                    .await
            }
        };
        // Nothing more comes from this pump: a writer that has written
        // its last chunk ends without waiting to be told.
        self.stop_feeding();
        // The owner bounds this wait (`PumpHandle::finish`).
        self.sink.queue().handled(handover.last_seq).await;
        // In drain mode the writer reads for the pump.
        report.bytes_read = self.progress.load(Ordering::Relaxed);
        report.bytes_written = self.tally.written.load(Ordering::Relaxed);
        report.bytes_dropped = self.tally.dropped.load(Ordering::Relaxed);
        tracing::debug!(
            path = %self.sink.path().display(),
            bytes_read = report.bytes_read,
            bytes_dropped = report.bytes_dropped,
            end = ?report.end,
            "Log pump ended"
        );
        report
    }

    /// Counts `n` bytes read.
    pub(super) fn note_read(&self, report: &mut PumpReport, n: usize) {
        report.bytes_read += n as u64;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The copy path: read into the buffer; hand it over when full, when
    /// its oldest byte has waited `linger`, or at the end. The first bytes
    /// after a quiet spell (nothing read for a linger) are handed over as
    /// soon as the stream has nothing more to read right away.
    async fn copy_reader(
        &self,
        mut reader: GuestReader,
        stop: &mut oneshot::Receiver<()>,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> PumpEnd {
        let cap = self.tuning.buffer;
        let mut buf: Vec<u8> = Vec::new();
        let mut end: Option<PumpEnd> = None;
        // When the oldest byte in `buf` must be handed over.
        let mut flush_by: Option<Instant> = None;
        // `eager`: hand over once the reader has nothing more (the first
        // bytes after a quiet spell); `fired`: hand over now.
        let (mut eager, mut fired, mut read_at) = (false, false, None);
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            let due = flush_by
                .is_some_and(|t| end.is_some() || fired || buf.len() >= cap || Instant::now() >= t);
            if due {
                (flush_by, fired, eager) = (None, false, false);
                buf = self.hand_over_buffer(buf, handover).await;
            }
            if let Some(reason) = end.take() {
                return reason;
            }
            // Small while waiting for output, full size once it flows.
            let want = cap.min(if buf.is_empty() { IDLE_BUFFER } else { cap });
            buf.reserve_exact(want.saturating_sub(buf.len()));
            tokio::select! {
                biased;
                // A send or a dropped handle both mean stop.
                _ = &mut *stop => end = Some(PumpEnd::Cut),
                read = reader.read_buf(&mut buf), if buf.len() < cap => match read {
                    Ok(0) => end = Some(PumpEnd::Eof),
                    Ok(n) => {
                        self.note_read(report, n);
                        let now = Instant::now();
                        if flush_by.is_none() {
                            let at = now + self.linger();
                            flush_by = Some(at);
                            linger.as_mut().reset(at);
                            eager = self.first_linger(read_at, now).is_zero();
                        }
                        read_at = Some(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        tracing::warn!(path = %self.sink.path().display(), error = %source, "Guest output stream failed");
                        end = Some(PumpEnd::ReadFailed { source });
                    }
                },
                // Polled only when the read above is pending: nothing more
                // to batch right now.
                () = std::future::ready(()), if eager => fired = true,
                () = &mut linger, if flush_by.is_some() => fired = true,
            }
        }
    }

    /// Hands `buf` over; returns an empty buffer to read into next (the
    /// same one if it was dropped, else a spare one, else none yet).
    async fn hand_over_buffer(&self, buf: Vec<u8>, handover: &mut Handover) -> Vec<u8> {
        match self.hand_over(Chunk::Bytes(buf), handover).await {
            Some(Chunk::Bytes(mut emptied)) => {
                emptied.clear();
                emptied
            }
            _ => self.sink.queue().spare().unwrap_or_default(),
        }
    }

    /// Hands `chunk` to the sink's queue, or drops and counts it if the
    /// queue stays full (giving it back, so a buffer can be reused).
    pub(super) async fn hand_over(&self, chunk: Chunk, h: &mut Handover) -> Option<Chunk> {
        if chunk.len() == 0 {
            return Some(chunk);
        }
        let wait = if h.overflowing {
            Duration::ZERO
        } else {
            FULL_WAIT
        };
        match self.sink.push_within(chunk, &self.tally, wait).await {
            Ok(seq) => {
                if h.overflowing {
                    tracing::info!(path = %self.sink.path().display(), "Log write queue has room again");
                }
                h.last_seq = seq;
                h.overflowing = false;
                None
            }
            Err(chunk) => {
                let n = chunk.len() as u64;
                if !h.overflowing {
                    tracing::warn!(path = %self.sink.path().display(), "Log write queue full (the disk is not keeping up); dropping output until it has room");
                }
                h.overflowing = true;
                // Queued before counted: whoever sees the count can rely on
                // the writer knowing of the gap.
                h.last_seq = self.sink.push_dropped(n, unix_ms_now());
                self.tally.dropped.fetch_add(n, Ordering::Relaxed);
                self.sink.count_dropped(n);
                Some(chunk)
            }
        }
    }
}
