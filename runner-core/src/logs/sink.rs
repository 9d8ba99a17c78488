//! [`LogSink`]: the one writer of a (role, stream) log, shared by the pumps
//! that feed it over a guest's restarts, by live followers and by readers.

use super::LogError;
use super::queue::{DEFAULT_QUEUE_BYTES, Item, WriteQueue};
use super::reader::{LogLines, LogQuery, Snapshot};
use super::rotate::{RotatingWriter, WriteOutcome};
use crate::config::LogLimits;
use crate::workspace::file::check_runner_dir;
use bytes::Bytes;
use runner_types::{GuestRole, LogStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
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
}

/// The log of one guest stream: `<logs dir>/<role label>.<stream>.log` with
/// its rotations, plus a live feed of new bytes.
///
/// Cheap to clone; clones share the file. Pumps hand their buffers to the
/// sink's bounded queue ([`super::queue`]); one writer thread per sink,
/// started by [`Self::open`] and ended when the last clone is dropped (after
/// writing what is queued), does every file operation, so no runtime worker
/// ever waits on the disk. Normally one [`super::LogPump`] feeds a sink at a
/// time, and when it has ended the next one (a restarted guest) appends to
/// the same files. Should an old stream still be open when a new pump
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
        self.shared.queue.close();
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
    live: broadcast::Sender<Bytes>,
    bytes_written: AtomicU64,
    bytes_dropped: AtomicU64,
    rotations: AtomicU64,
    /// Total of `bytes_dropped`, for watchers.
    dropped_watch: watch::Sender<u64>,
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
    pub fn open(
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
    ) -> Result<Self, LogError> {
        Self::open_with_queue(logs_dir, role, stream, limits, DEFAULT_QUEUE_BYTES)
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
        let writer = RotatingWriter::open(path.clone(), limits)?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let shared = Arc::new(Shared {
            role,
            stream,
            path: path.clone(),
            writer: Mutex::new(writer),
            queue: WriteQueue::new(queue_bytes),
            live,
            bytes_written: AtomicU64::new(0),
            bytes_dropped: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            dropped_watch: watch::Sender::new(0),
        });
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name(format!("log-{}.{}", role.label(), stream))
            .spawn(move || for_thread.write_queued())
            .map_err(|source| LogError::WriterThread { path, source })?;
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

    /// Counts bytes a pump could not queue.
    pub(crate) fn count_dropped(&self, bytes: u64) {
        self.inner.shared.count_dropped(bytes);
    }

    /// Live feed of the bytes pumped from now on, in order, in chunks that
    /// need not end at line boundaries (see [`super::LineSplitter`]). A
    /// subscriber that falls more than a few MiB behind gets
    /// [`broadcast::error::RecvError::Lagged`]; it never slows the pump.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.inner.shared.live.subscribe()
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

impl Shared {
    /// The writer thread: writes queued buffers until the queue is closed
    /// and empty.
    fn write_queued(&self) {
        while let Some((seq, item)) = self.queue.next() {
            match item {
                Item::Data { bytes, tally } => {
                    let out = self.write(&bytes);
                    tally.written.fetch_add(out.written, Ordering::Relaxed);
                    tally.dropped.fetch_add(out.dropped, Ordering::Relaxed);
                    self.queue.finished(seq, Some(bytes));
                }
                Item::Dropped { bytes, at_ms } => {
                    self.lock_writer().note_dropped(bytes, at_ms);
                    // Record the gap now if the disk takes it (else before
                    // the next bytes that reach the file).
                    self.write(&[]);
                    self.queue.finished(seq, None);
                }
            }
        }
        self.write(&[]);
        tracing::trace!(path = %self.path.display(), "Log writer ended");
    }

    /// Writes a buffer to the files and the live feed.
    fn write(&self, data: &[u8]) -> WriteOutcome {
        let mut writer = self.lock_writer();
        let out = writer.write(data, now_ms());
        // Sent under the lock so `follow` sees each buffer exactly once.
        if !data.is_empty() && self.live.receiver_count() > 0 {
            // No receiver left by now is fine: nobody is following.
            if self.live.send(Bytes::copy_from_slice(data)).is_err() {
                tracing::trace!(path = %self.path.display(), "Live log followers left");
            }
        }
        drop(writer);
        self.bytes_written.fetch_add(out.written, Ordering::Relaxed);
        self.count_dropped(out.dropped);
        self.rotations.fetch_add(out.rotations, Ordering::Relaxed);
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

/// Wall-clock milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LogPump, PumpEnd, read_gaps};
    use std::sync::mpsc;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(20);

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
        let pump = LogPump::spawn(Box::pin(std::io::Cursor::new(data.clone())), &sink);
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
