//! [`LogSink`]: the one writer of a (role, stream) log, shared by the pumps
//! that feed it over a guest's restarts, by live followers and by readers.

use super::LogError;
use super::chunk::Chunk;
use super::drain::{DrainEnd, DrainJob, drain};
use super::queue::{DEFAULT_QUEUE_BYTES, Item, Pushed, Tally, WriteQueue};
use super::reader::{LogLines, LogQuery, Snapshot};
use super::rotate::{RotatingWriter, WriteOutcome};
use super::writers::WriterThreads;
use crate::clock::unix_ms_now;
use crate::config::LogLimits;
use crate::workspace::file::check_runner_dir;
use bytes::Bytes;
use runner_types::{GuestRole, LogStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Chunks buffered per live subscriber before it lags. A chunk is at most
/// one pump buffer (128 KiB by default), so a stalled follower pins at most
/// this many of them.
const LIVE_CAPACITY: usize = 64;

/// Counters of a sink since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Bytes that reached a log file.
    pub bytes_written: u64,
    /// Bytes read from a guest but lost: refused by the full write queue
    /// or lost to failed writes (each loss is a gap record, see
    /// [`super::gaps`]).
    pub bytes_dropped: u64,
    /// Rotations performed.
    pub rotations: u64,
    /// Of `bytes_written`, bytes spliced from a pipe into the file without
    /// a copy through user space (the rest were copied: container
    /// streams, followed logs, files that refuse `splice`).
    pub bytes_spliced: u64,
    /// Times the writer thread took a busy guest pipe over to drain it
    /// itself (see the module docs of `runner_core::logs`).
    pub drains: u64,
    /// Times it gave one back (idle, EOF, stop, other work queued).
    pub drain_returns: u64,
    /// Times a pump took its pipe back from a writer stuck in a file write.
    pub drain_takeovers: u64,
}

/// The log of one guest stream: `<logs dir>/<role label>.<stream>.log` with
/// its rotations, plus a live feed of new bytes.
///
/// Cheap to clone; clones share the file. Pumps hand their chunks to the
/// sink's bounded queue ([`super::queue`]); a writer thread does every file
/// operation, so no runtime worker ever waits on the disk. The writer runs
/// only while there is output: it starts with the first chunk queued after
/// a pause and ends (closing the log's files) after
/// [`super::queue::WRITER_LINGER`] without any, or as soon as it has
/// written everything once no pump feeds the sink (its guest's streams
/// have ended), so an idle sink holds neither a thread nor an open file.
/// An ended writer's thread waits a while for the next writer of any sink
/// sharing its [`WriterThreads`]. At most one writer runs per sink: a
/// writer stuck on a hung disk holds its own thread and nothing else.
/// Normally one [`super::LogPump`] feeds a sink at a time, and when it has
/// ended the next one (a restarted guest) appends to the same files. Should an old stream still be open when a new pump
/// starts (an orphaned grandchild holding the pipe), both are captured,
/// interleaved at buffer boundaries.
#[derive(Debug, Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
}

/// The clones' share; dropping the last one closes the queue.
#[derive(Debug)]
struct SinkInner {
    shared: Arc<Shared>,
}

impl Drop for SinkInner {
    fn drop(&mut self) {
        if self.shared.queue.close() {
            self.shared.start_writer();
        }
    }
}

/// What the sink's handles and its writer thread share.
#[derive(Debug)]
struct Shared {
    role: GuestRole,
    stream: LogStream,
    path: PathBuf,
    // std Mutex: held by the writer thread for one buffer's file write, and
    // by readers (on the blocking pool) for their file opens.
    writer: Mutex<RotatingWriter>,
    queue: WriteQueue,
    /// Created by the first subscriber: an unfollowed log allocates none.
    live: OnceLock<broadcast::Sender<Bytes>>,
    bytes_written: AtomicU64,
    bytes_dropped: AtomicU64,
    rotations: AtomicU64,
    bytes_spliced: AtomicU64,
    drains: AtomicU64,
    drain_returns: AtomicU64,
    drain_takeovers: AtomicU64,
    /// Total of `bytes_dropped`, for watchers.
    dropped_watch: watch::Sender<u64>,
    /// Where the writer runs.
    writers: WriterThreads,
}

impl LogSink {
    /// Opens the log of `role`'s `stream` in `logs_dir` (created mode 0700
    /// if missing), appending to what is there, with a write queue of
    /// [`DEFAULT_QUEUE_BYTES`]. Files are created mode 0600.
    ///
    /// `logs_dir` must be a real directory owned by the runner that no one
    /// else may write (provisioning makes `logs/` 0700); the log file, its
    /// index and gap file must be regular files (never followed if
    /// symlinks): anything else is [`LogError::Unsafe`], returned at once
    /// (a FIFO never blocks).
    ///
    /// Blocking (a few file-system calls): call it from the blocking pool.
    ///
    /// Its writer runs on threads of its own; sinks opened with
    /// [`Self::open_on`] on the same [`WriterThreads`] share them.
    pub fn open(
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
    ) -> Result<Self, LogError> {
        Self::open_on(&WriterThreads::new(), logs_dir, role, stream, limits)
    }

    /// [`Self::open`], the writer running on `writers` (shared with the
    /// other sinks opened on them; see [`WriterThreads`]).
    pub fn open_on(
        writers: &WriterThreads,
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
    ) -> Result<Self, LogError> {
        Self::open_with(logs_dir, role, stream, limits, DEFAULT_QUEUE_BYTES, writers)
    }

    /// [`Self::open`] with a write queue of `queue_bytes` (at least one
    /// buffer is always accepted into an empty queue).
    pub fn open_with_queue(
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
        queue_bytes: usize,
    ) -> Result<Self, LogError> {
        let writers = WriterThreads::new();
        Self::open_with(logs_dir, role, stream, limits, queue_bytes, &writers)
    }

    fn open_with(
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
        queue_bytes: usize,
        writers: &WriterThreads,
    ) -> Result<Self, LogError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(logs_dir)
            .map_err(|source| LogError::CreateDir {
                path: logs_dir.to_path_buf(),
                source,
            })?;
        check_runner_dir(logs_dir, nix::unistd::geteuid().as_raw())
            .map_err(|source| LogError::Unsafe { source })?;
        let path = logs_dir.join(stream.file_name(role));
        let mut writer = RotatingWriter::open(path.clone(), limits)?;
        // Checked and created; reopened by the first write.
        writer.close_files();
        let shared = Arc::new(Shared {
            role,
            stream,
            path,
            writer: Mutex::new(writer),
            queue: WriteQueue::new(queue_bytes),
            live: OnceLock::new(),
            bytes_written: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            bytes_spliced: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            drain_returns: AtomicU64::new(0),
            drain_takeovers: AtomicU64::new(0),
            dropped_watch: watch::Sender::new(0),
            writers: writers.clone(),
        });
        Ok(Self {
            inner: Arc::new(SinkInner { shared }),
        })
    }

    /// Which guest.
    pub fn role(&self) -> GuestRole {
        self.inner.shared.role
    }

    /// Which stream.
    pub fn stream(&self) -> LogStream {
        self.inner.shared.stream
    }

    /// The current (newest) log file; rotated ones add `.1`, `.2`, ...
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Counters since the sink was opened.
    pub fn stats(&self) -> SinkStats {
        let s = &self.inner.shared;
        SinkStats {
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            bytes_dropped: s.bytes_dropped.load(Ordering::Relaxed),
            rotations: s.rotations.load(Ordering::Relaxed),
            bytes_spliced: s.bytes_spliced.load(Ordering::Relaxed),
            drains: s.drains.load(Ordering::Relaxed),
            drain_returns: s.drain_returns.load(Ordering::Relaxed),
            drain_takeovers: s.drain_takeovers.load(Ordering::Relaxed),
        }
    }

    /// The total of [`SinkStats::bytes_dropped`], updated as loss happens
    /// (for health and events).
    pub fn watch_dropped(&self) -> watch::Receiver<u64> {
        self.inner.shared.dropped_watch.subscribe()
    }

    pub(crate) fn queue(&self) -> &WriteQueue {
        &self.inner.shared.queue
    }

    /// Queues `chunk`, waiting up to `wait` for room (see [`super::queue`]);
    /// starts the writer if none runs. Gives the chunk back if it found no
    /// room.
    pub(crate) async fn push_within(
        &self,
        chunk: Chunk,
        tally: &Arc<Tally>,
        wait: Duration,
    ) -> Result<u64, Chunk> {
        let pushed = self.queue().push_within(chunk, tally, wait).await?;
        Ok(self.started(pushed))
    }

    /// Tells the writer that `bytes` were dropped at `at_ms`; returns the
    /// sequence number that covers it.
    pub(crate) fn push_dropped(&self, bytes: u64, at_ms: u64) -> u64 {
        let pushed = self.queue().push_dropped(bytes, at_ms);
        self.started(pushed)
    }

    /// Queues a drain job (see [`super::drain`]); returns its sequence
    /// number.
    pub(crate) fn push_drain(&self, job: DrainJob) -> u64 {
        let pushed = self.queue().push_drain(job);
        self.started(pushed)
    }

    /// Counts a pump taking its pipe back from a stalled writer.
    pub(crate) fn count_takeover(&self) {
        self.inner
            .shared
            .drain_takeovers
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A pump no longer feeds the sink (see [`WriteQueue::feeder_ended`]).
    pub(crate) fn feeder_ended(&self) {
        if self.queue().feeder_ended() {
            self.inner.shared.start_writer();
        }
    }

    fn started(&self, pushed: Pushed) -> u64 {
        if pushed.start_writer {
            self.inner.shared.start_writer();
        }
        pushed.seq
    }

    /// Counts bytes a pump could not queue.
    pub(crate) fn count_dropped(&self, bytes: u64) {
        self.inner.shared.count_dropped(bytes);
    }

    /// Live feed of the bytes pumped from now on, in order, in chunks that
    /// need not end at line boundaries (see [`super::LineSplitter`]). A
    /// subscriber that falls more than a few MiB behind gets
    /// [`broadcast::error::RecvError::Lagged`]; it never slows the pump.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.inner
            .shared
            .live
            .get_or_init(|| broadcast::channel(LIVE_CAPACITY).0)
            .subscribe()
    }

    /// Whether anyone follows the live feed now. The pump hands bytes over
    /// at once then, instead of lingering to batch them: a follower waits
    /// for every byte it is shown.
    pub fn is_followed(&self) -> bool {
        self.inner.shared.is_followed()
    }

    /// Reads lines from the log files (see [`LogQuery`]). Runs on a
    /// blocking task; never reads whole files into memory.
    pub async fn read(&self, query: LogQuery) -> Result<LogLines, LogError> {
        let (lines, _) = self.snapshot_and_query(query, false).await?;
        Ok(lines)
    }

    /// Like [`Self::read`], and also subscribes to the live feed at the very
    /// point the read ends: the lines and then the feed's chunks are the
    /// stream without gap or overlap (`logs -f`). If the last line has no
    /// newline yet, the feed's first bytes continue it.
    pub async fn follow(
        &self,
        query: LogQuery,
    ) -> Result<(LogLines, broadcast::Receiver<Bytes>), LogError> {
        let (lines, live) = self.snapshot_and_query(query, true).await?;
        Ok((lines, live.expect("subscribed")))
    }

    async fn snapshot_and_query(
        &self,
        query: LogQuery,
        subscribe: bool,
    ) -> Result<(LogLines, Option<broadcast::Receiver<Bytes>>), LogError> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || {
            let (snapshot, live) = sink.locked_snapshot(subscribe)?;
            Ok((snapshot.query(&query)?, live))
        })
        .await
        .map_err(|source| LogError::ReaderTask {
            path: self.inner.shared.path.clone(),
            source,
        })?
    }

    /// Opens the files as they are now, with their stream positions, and
    /// with `subscribe` the live feed from exactly that point. Blocking.
    pub(crate) fn locked_snapshot(
        &self,
        subscribe: bool,
    ) -> Result<(Snapshot, Option<broadcast::Receiver<Bytes>>), LogError> {
        // Holding the writer lock: no write or rotation can happen between
        // opening the files and subscribing.
        let writer = self.inner.shared.lock_writer();
        let (epoch, pruned) = writer.position_base();
        let snapshot = Snapshot::open(&self.inner.shared.path)?.positioned(epoch, pruned);
        Ok((snapshot, subscribe.then(|| self.subscribe())))
    }
}

/// Held by a running writer: if it unwinds, the queue no longer counts it
/// as running.
struct WriterRunning<'a>(&'a WriteQueue);

impl Drop for WriterRunning<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.writer_failed();
        }
    }
}

impl Shared {
    /// Whether anyone follows the live feed now.
    fn is_followed(&self) -> bool {
        self.live
            .get()
            .is_some_and(|live| live.receiver_count() > 0)
    }

    /// Starts the writer (the queue has work and none runs).
    fn start_writer(self: &Arc<Self>) {
        let shared = self.clone();
        let started = self.writers.run(Box::new(move || shared.write_queued()));
        if let Err(error) = started {
            // The queue fills and the pump drops (and counts) until a
            // later push starts a writer.
            self.queue.writer_failed();
            tracing::warn!(path = %self.path.display(), %error, "Cannot start a log writer thread");
        }
    }

    /// The writer: writes queued chunks until the queue has been empty for
    /// [`super::queue::WRITER_LINGER`] (or is empty and closed, or fed by no pump), then
    /// closes the log's files and ends (its thread goes back to the
    /// [`WriterThreads`]).
    fn write_queued(&self) {
        // Should the writer panic (a bug), the next push starts another.
        let _running = WriterRunning(&self.queue);
        while let Some((seq, item)) = self.queue.next_item() {
            match item {
                Item::Data { chunk, tally } => {
                    let out = self.write(&chunk);
                    tally.written.fetch_add(out.written, Ordering::Relaxed);
                    tally.dropped.fetch_add(out.dropped, Ordering::Relaxed);
                    self.queue.finished(seq, Some(chunk));
                }
                Item::Dropped { bytes, at_ms } => {
                    self.lock_writer().note_dropped(bytes, at_ms);
                    // Record the gap now if the disk takes it (else before
                    // the next bytes that reach the file).
                    self.write(&Chunk::Bytes(Vec::new()));
                    self.queue.finished(seq, None);
                }
                Item::Drain(job) => {
                    let ran = drain(
                        *job,
                        &self.queue,
                        || {
                            self.drains.fetch_add(1, Ordering::Relaxed);
                        },
                        &|| self.is_followed(),
                        |chunk| self.write(chunk),
                    );
                    if ran == DrainEnd::Returned {
                        self.drain_returns.fetch_add(1, Ordering::Relaxed);
                    }
                    self.queue.finished(seq, None);
                }
            }
        }
        // Records a gap still pending if the disk takes it now.
        self.write(&Chunk::Bytes(Vec::new()));
        // A new writer may already run; it reopens what this one closes.
        self.lock_writer().close_files();
        tracing::trace!(path = %self.path.display(), "Log writer idle; ended");
    }

    /// Writes a chunk to the files and, if anyone follows, the live feed.
    fn write(&self, chunk: &Chunk) -> WriteOutcome {
        let mut writer = self.lock_writer();
        let followed = chunk.len() > 0 && self.is_followed();
        let out = if followed {
            self.write_followed(&mut writer, chunk)
        } else {
            writer.write_chunk(chunk, unix_ms_now())
        };
        drop(writer);
        self.bytes_written.fetch_add(out.written, Ordering::Relaxed);
        self.count_dropped(out.dropped);
        self.rotations.fetch_add(out.rotations, Ordering::Relaxed);
        self.bytes_spliced.fetch_add(out.spliced, Ordering::Relaxed);
        out
    }

    /// Writes a chunk someone follows: its bytes are needed in memory, so
    /// it takes the copy path, and goes to the feed under the writer lock
    /// so `follow` sees each chunk exactly once.
    fn write_followed(&self, writer: &mut RotatingWriter, chunk: &Chunk) -> WriteOutcome {
        let data = match chunk {
            Chunk::Bytes(bytes) => Bytes::copy_from_slice(bytes),
            Chunk::Pipe(pipe) => match pipe.read_rest(pipe.len()) {
                Ok(bytes) => Bytes::from(bytes),
                // Cannot happen with a pipe we filled; let the writer
                // account for it as a failed write.
                Err(error) => {
                    tracing::warn!(path = %self.path.display(), %error, "Cannot read a log chunk for followers");
                    return writer.write_chunk(chunk, unix_ms_now());
                }
            },
        };
        let out = writer.write(&data, unix_ms_now());
        if let Some(live) = self.live.get()
            && live.send(data).is_err()
        {
            // No receiver left by now is fine: nobody is following.
            tracing::trace!(path = %self.path.display(), "Live log followers left");
        }
        out
    }

    fn count_dropped(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let total = self.bytes_dropped.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.dropped_watch.send_replace(total);
    }

    fn lock_writer(&self) -> MutexGuard<'_, RotatingWriter> {
        // A panic mid-write leaves the writer usable (it reopens on error).
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogPump, PumpEnd, read_gaps};
    use std::sync::mpsc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    const WAIT: Duration = Duration::from_secs(20);

    /// Whether this process has `path` open.
    fn has_open(path: &Path) -> bool {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
    }

    /// Polls `ok` until it holds, failing after [`WAIT`].
    async fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "never {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_ends_once_no_pump_feeds_the_sink_and_its_thread_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let writers = WriterThreads::new();
        let open = |role| {
            let sink = LogSink::open_on(
                &writers,
                &dir.path().join("logs"),
                role,
                LogStream::Stdout,
                LogLimits::default(),
            )
            .unwrap();
            // Only the end of its feeders can end the writer in this test.
            sink.queue().set_linger(Duration::from_secs(3600));
            sink
        };
        let sink = open(GuestRole::Runtime);
        let (mut guest, stream) = tokio::io::duplex(1024);
        let pump = LogPump::spawn(Box::pin(stream) as crate::logs::GuestReader, &sink);
        guest.write_all(b"first\n").await.unwrap();
        until("the first line written", || {
            std::fs::read(sink.path()).unwrap() == b"first\n"
        })
        .await;
        // The guest is quiet but its stream is open: the writer waits for
        // more with the log open.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sink.queue().writer_running());
        let log = sink.path().canonicalize().unwrap();
        assert!(has_open(&log));

        drop(guest);
        let report = pump.finish(WAIT).await;
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
        until("the writer ended", || !sink.queue().writer_running()).await;
        until("the log closed", || !has_open(&log)).await;
        until("its thread idle", || writers.idle() == 1).await;
        assert_eq!(writers.threads(), 1, "its thread waits for the next writer");

        // Another sink's writer runs on that same thread.
        let other = open(GuestRole::Sidecar);
        let pump = LogPump::spawn(
            Box::pin(std::io::Cursor::new(b"second\n".to_vec())) as crate::logs::GuestReader,
            &other,
        );
        pump.finish(WAIT).await;
        assert_eq!(std::fs::read(other.path()).unwrap(), b"second\n");
        assert_eq!(writers.threads(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_instead_of_blocking_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_file_bytes: 1 << 30,
            max_files: 1,
        };
        let queue = 64 * 1024;
        let sink = LogSink::open_with_queue(
            &dir.path().join("logs"),
            GuestRole::Runtime,
            LogStream::Stdout,
            limits,
            queue,
        )
        .unwrap();
        // Stall the writer thread the way a hung disk does: its next file
        // write cannot start until this thread lets go of the writer.
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let shared = sink.inner.shared.clone();
        let staller = std::thread::spawn(move || {
            let _guard = shared.lock_writer();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
        locked_rx.recv().unwrap();

        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let total = data.len() as u64;
        let first = 128 * 1024u64;
        let mut dropped = sink.watch_dropped();
        let pump = LogPump::spawn(
            Box::pin(std::io::Cursor::new(data.clone())) as crate::logs::GuestReader,
            &sink,
        );
        // The whole stream is read while the writer is stuck: everything
        // after the first buffer (which the empty queue took) is counted
        // as dropped, nothing waits for the disk.
        tokio::time::timeout(WAIT, dropped.wait_for(|d| *d == total - first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pump.bytes_read(), total);
        assert!(
            !pump.is_finished(),
            "the writer still holds the first buffer"
        );

        release_tx.send(()).unwrap();
        staller.join().unwrap();
        let report = pump.finish(WAIT).await;
        assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
        assert_eq!(report.bytes_read, total);
        assert_eq!(report.bytes_written, first);
        assert_eq!(report.bytes_dropped, total - first);
        let stats = sink.stats();
        assert_eq!(
            (stats.bytes_written, stats.bytes_dropped),
            (first, total - first)
        );

        // The file holds the first buffer, and the gap is recorded at its
        // end (with a newline: the buffer ended mid-line).
        let first = first as usize;
        let on_disk = std::fs::read(sink.path()).unwrap();
        assert_eq!(&on_disk[..first], &data[..first]);
        assert_ne!(data[first - 1], b'\n');
        assert_eq!(&on_disk[first..], b"\n");
        let gaps = read_gaps(sink.path()).unwrap();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(
            (gaps[0].offset, gaps[0].bytes),
            (first as u64, total - first as u64)
        );
        assert!(gaps[0].newline_inserted());
    }
}
