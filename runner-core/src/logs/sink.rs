//! [`LogSink`]: the one writer of a (role, stream) log, shared by the pumps
//! that feed it over a guest's restarts, by live followers and by readers.

use super::LogError;
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
use tokio::sync::broadcast;

/// Chunks buffered per live subscriber before it lags. A chunk is at most
/// one pump buffer (128 KiB by default), so a stalled follower pins at most
/// this many of them.
const LIVE_CAPACITY: usize = 64;

/// Counters of a sink since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Bytes that reached a log file.
    pub bytes_written: u64,
    /// Bytes read from a guest but lost to failed writes.
    pub bytes_dropped: u64,
    /// Rotations performed.
    pub rotations: u64,
}

/// The log of one guest stream: `<logs dir>/<role label>.<stream>.log` with
/// its rotations, plus a live feed of new bytes.
///
/// Cheap to clone; clones share the file. Normally one [`super::LogPump`]
/// feeds a sink at a time, and when it has ended the next one (a restarted
/// guest) appends to the same files. Should an old stream still be open
/// when a new pump starts (an orphaned grandchild holding the pipe), both
/// are captured, interleaved at chunk boundaries: every chunk is written
/// whole, under the writer's lock.
#[derive(Debug, Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
}

#[derive(Debug)]
struct SinkInner {
    role: GuestRole,
    stream: LogStream,
    path: PathBuf,
    // std Mutex: held only for one chunk's file write (or a reader's file
    // opens), never across an await.
    writer: Mutex<RotatingWriter>,
    live: broadcast::Sender<Bytes>,
    bytes_written: AtomicU64,
    bytes_dropped: AtomicU64,
    rotations: AtomicU64,
}

impl LogSink {
    /// Opens the log of `role`'s `stream` in `logs_dir` (created mode 0700
    /// if missing), appending to what is there. Files are created mode 0600.
    ///
    /// `logs_dir` must be a real directory owned by the runner that no one
    /// else may write (provisioning makes `logs/` 0700); the log file and its index must be
    /// regular files (never followed if symlinks): anything else is
    /// [`LogError::Unsafe`], returned at once (a FIFO never blocks).
    ///
    /// Blocking (a few file-system calls).
    pub fn open(
        logs_dir: &Path,
        role: GuestRole,
        stream: LogStream,
        limits: LogLimits,
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
        Ok(Self {
            inner: Arc::new(SinkInner {
                role,
                stream,
                path,
                writer: Mutex::new(writer),
                live,
                bytes_written: AtomicU64::new(0),
                bytes_dropped: AtomicU64::new(0),
                rotations: AtomicU64::new(0),
            }),
        })
    }

    /// Which guest.
    pub fn role(&self) -> GuestRole {
        self.inner.role
    }

    /// Which stream.
    pub fn stream(&self) -> LogStream {
        self.inner.stream
    }

    /// The current (newest) log file; rotated ones add `.1`, `.2`, ...
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters since the sink was opened.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            bytes_written: self.inner.bytes_written.load(Ordering::Relaxed),
            bytes_dropped: self.inner.bytes_dropped.load(Ordering::Relaxed),
            rotations: self.inner.rotations.load(Ordering::Relaxed),
        }
    }

    /// Live feed of the bytes pumped from now on, in order, in chunks that
    /// need not end at line boundaries (see [`super::LineSplitter`]). A
    /// subscriber that falls more than a few MiB behind gets
    /// [`broadcast::error::RecvError::Lagged`]; it never slows the pump.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.inner.live.subscribe()
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
            let (snapshot, live) = {
                // Holding the writer lock: no write or rotation can happen
                // between opening the files and subscribing.
                let _writer = sink.lock_writer();
                let snapshot = Snapshot::open(&sink.inner.path)?;
                (snapshot, subscribe.then(|| sink.subscribe()))
            };
            Ok((snapshot.query(&query)?, live))
        })
        .await
        .map_err(|source| LogError::ReaderTask {
            path: self.inner.path.clone(),
            source,
        })?
    }

    /// Writes a chunk to the files and the live feed. Blocking.
    pub(crate) fn write(&self, data: &[u8]) -> WriteOutcome {
        let mut writer = self.lock_writer();
        let out = writer.write(data, now_ms());
        // Sent under the lock so `follow` sees each chunk exactly once.
        if self.inner.live.receiver_count() > 0 {
            // No receiver left by now is fine: nobody is following.
            if self.inner.live.send(Bytes::copy_from_slice(data)).is_err() {
                tracing::trace!(path = %self.inner.path.display(), "Live log followers left");
            }
        }
        drop(writer);
        let inner = &self.inner;
        inner
            .bytes_written
            .fetch_add(out.written, Ordering::Relaxed);
        inner
            .bytes_dropped
            .fetch_add(out.dropped, Ordering::Relaxed);
        inner.rotations.fetch_add(out.rotations, Ordering::Relaxed);
        out
    }

    fn lock_writer(&self) -> MutexGuard<'_, RotatingWriter> {
        // A panic mid-write leaves the writer usable (it reopens on error).
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
