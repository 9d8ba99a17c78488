//! The bounded queue between a sink's pumps (async, on runtime workers) and
//! its writer thread (the only place that touches the log's files).
//!
//! A pump hands over whole buffers and never blocks on the disk: when the
//! queue holds [`LogSink::open_with_queue`]'s `queue_bytes` (default
//! [`DEFAULT_QUEUE_BYTES`]) a pump waits at most [`FULL_WAIT`] for room,
//! once per overflow; if there is still none the buffer is dropped and
//! counted, and every further buffer is dropped at once until the writer
//! has made room again. A disk that completes each buffer's write within
//! [`FULL_WAIT`] loses nothing, however full the queue; a stalled one costs the guest at most [`FULL_WAIT`] of pipe time before
//! its output is dropped instead of held back. The writer records each
//! loss as a gap (see [`super::gaps`]).
//!
//! Besides chunks and drop records, the queue carries drain jobs (a busy
//! guest pipe the writer drains itself: drain mode); a writer in
//! drain mode gives the pipe back as soon as anything else is queued.
//!
//! The queue also decides when a writer runs: the push that finds no
//! writer running says so (`Pushed::start_writer`) and the sink starts
//! one; a writer that finds no work for [`WRITER_LINGER`] ends, and so does
//! one that has emptied the queue while no pump feeds it (the queue counts
//! its pumps): nothing more can come until a new pump starts. So a sink
//! holds a thread only while its guest writes, never while it is idle.
//!
//! [`LogSink::open_with_queue`]: super::LogSink::open_with_queue

use super::chunk::Chunk;
use super::drain::DrainJob;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes a sink's queue holds by default: 8 MiB, a few milliseconds of a
/// guest writing as fast as a pipe allows, and seconds of any normal one.
/// A sink's memory is bounded by this plus one pump buffer.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

/// Longest a pump waits for room in a full queue before it drops a buffer
/// (then it drops without waiting until the queue has room again).
pub const FULL_WAIT: Duration = Duration::from_millis(50);

/// Emptied buffers kept for pumps to reuse while the writer runs (they are
/// freed when it ends).
const SPARE_BUFFERS: usize = 4;

/// How long a writer with nothing to do waits for more before it ends
/// (and closes the log's files).
pub const WRITER_LINGER: Duration = Duration::from_millis(250);

/// Per-pump counters, updated by the writer for that pump's buffers.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// One queued piece of work for the writer.
pub(crate) enum Item {
    /// Bytes to append.
    Data { chunk: Chunk, tally: Arc<Tally> },
    /// Bytes a pump had to drop here (the queue was full).
    Dropped { bytes: u64, at_ms: u64 },
    /// A busy guest pipe for the writer to drain itself (see
    /// [`super::drain`]).
    Drain(Box<DrainJob>),
}

#[derive(Default)]
struct State {
    items: VecDeque<(u64, Item)>,
    /// Data bytes queued or being written.
    queued: usize,
    /// Sequence number of the last item pushed.
    pushed: u64,
    closed: bool,
    /// Pumps feeding the queue now.
    feeders: usize,
    /// How long the writer waits for work before it ends
    /// ([`WRITER_LINGER`]; tests set others).
    linger: Duration,
    /// A writer is running (or has been asked to start).
    writer: bool,
    /// The writer waits on `has_work` (a wake-up is a system call even
    /// when nobody waits, so only a waiting writer is woken).
    waiting: bool,
    spare: Vec<Vec<u8>>,
}

/// An accepted push.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pushed {
    /// Sequence number of the item.
    pub(crate) seq: u64,
    /// No writer was running: the caller must start one.
    pub(crate) start_writer: bool,
}

/// See the module docs.
pub(crate) struct WriteQueue {
    state: Mutex<State>,
    capacity: usize,
    has_work: Condvar,
    /// Sequence number of the last item the writer finished.
    done: AtomicU64,
    progress: Notify,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("capacity", &self.capacity)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl WriteQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                linger: WRITER_LINGER,
                ..State::default()
            }),
            capacity: capacity.max(1),
            has_work: Condvar::new(),
            done: AtomicU64::new(0),
            progress: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `bytes` if they fit (an empty queue takes any buffer);
    /// returns the item's sequence number, or the buffer back.
    pub(crate) fn try_push(&self, chunk: Chunk, tally: &Arc<Tally>) -> Result<Pushed, Chunk> {
        let mut state = self.lock();
        if state.queued > 0 && state.queued + chunk.len() > self.capacity {
            return Err(chunk);
        }
        state.queued += chunk.len();
        let tally = tally.clone();
        Ok(self.append(state, Item::Data { chunk, tally }))
    }

    /// [`Self::try_push`], waiting up to `wait` for room.
    pub(crate) async fn push_within(
        &self,
        mut bytes: Chunk,
        tally: &Arc<Tally>,
        wait: Duration,
    ) -> Result<Pushed, Chunk> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_push(bytes, tally) {
                Ok(seq) => return Ok(seq),
                Err(back) => bytes = back,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(bytes);
            }
        }
    }

    /// Tells the writer that `bytes` were dropped here at `at_ms`; returns
    /// the item that covers it.
    pub(crate) fn push_dropped(&self, bytes: u64, at_ms: u64) -> Pushed {
        let mut state = self.lock();
        if let Some((seq, Item::Dropped { bytes: pending, .. })) = state.items.back_mut() {
            *pending += bytes;
            return Pushed {
                seq: *seq,
                start_writer: false,
            };
        }
        self.append(state, Item::Dropped { bytes, at_ms })
    }

    /// Queues a drain job (it holds no bytes, so it always fits).
    pub(crate) fn push_drain(&self, job: DrainJob) -> Pushed {
        self.append(self.lock(), Item::Drain(Box::new(job)))
    }

    /// Appends `item` under its next sequence number and wakes the writer
    /// (or says that one must be started).
    fn append(&self, mut state: MutexGuard<'_, State>, item: Item) -> Pushed {
        state.pushed += 1;
        let seq = state.pushed;
        state.items.push_back((seq, item));
        let start_writer = !std::mem::replace(&mut state.writer, true);
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.has_work.notify_one();
        }
        Pushed { seq, start_writer }
    }

    /// Whether items wait behind the one the writer works on.
    pub(crate) fn has_items(&self) -> bool {
        !self.lock().items.is_empty()
    }

    /// Whether the writer has finished item `seq` and all before it.
    pub(crate) fn is_handled(&self, seq: u64) -> bool {
        self.done.load(Ordering::Acquire) >= seq
    }

    /// The writer could not be started: the next push tries again.
    pub(crate) fn writer_failed(&self) {
        self.lock().writer = false;
    }

    /// An emptied buffer to reuse, if one is free.
    pub(crate) fn spare(&self) -> Option<Vec<u8>> {
        self.lock().spare.pop()
    }

    /// Waits until the writer has finished item `seq` and all before it.
    pub(crate) async fn handled(&self, seq: u64) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.done.load(Ordering::Acquire) >= seq {
                return;
            }
            notified.await;
        }
    }

    /// A pump starts feeding the queue.
    pub(crate) fn feeder_started(&self) {
        self.lock().feeders += 1;
    }

    /// A pump has stopped feeding the queue: once none does, the writer
    /// ends as soon as it has handled what is queued. `true`: items wait
    /// and no writer runs (one could not be started): the caller must
    /// start one, or they would wait for a push that may never come.
    #[must_use]
    pub(crate) fn feeder_ended(&self) -> bool {
        let mut state = self.lock();
        state.feeders -= 1;
        let unfed = state.feeders == 0;
        self.wake_or_restart(state, unfed)
    }

    /// No more items will come: the writer finishes the queued ones and
    /// ends. `true` as for [`Self::feeder_ended`].
    #[must_use]
    pub(crate) fn close(&self) -> bool {
        let mut state = self.lock();
        state.closed = true;
        self.wake_or_restart(state, true)
    }

    /// Wakes a running writer (if `wake`), or says that one must be
    /// started for items left queued without one.
    fn wake_or_restart(&self, mut state: MutexGuard<'_, State>, wake: bool) -> bool {
        if state.writer {
            let wake = wake && std::mem::take(&mut state.waiting);
            drop(state);
            if wake {
                self.has_work.notify_all();
            }
            return false;
        }
        let restart = !state.items.is_empty();
        state.writer = restart;
        restart
    }

    /// Whether a writer runs (or has been asked to start).
    #[cfg(test)]
    pub(crate) fn writer_running(&self) -> bool {
        self.lock().writer
    }

    /// Makes the writer wait `linger` for work before it ends.
    #[cfg(test)]
    pub(crate) fn set_linger(&self, linger: Duration) {
        self.lock().linger = linger;
    }

    /// Writer side: the next item, waiting up to the linger
    /// ([`WRITER_LINGER`]) for one. `None` (nothing came, or empty and
    /// closed or fed by no pump) means the writer must end: the queue
    /// already counts it as gone, and frees its spare buffers.
    pub(crate) fn next_item(&self) -> Option<(u64, Item)> {
        let mut state = self.lock();
        let deadline = std::time::Instant::now() + state.linger;
        loop {
            if let Some(item) = state.items.pop_front() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if state.closed || state.feeders == 0 || left.is_zero() {
                state.writer = false;
                state.spare = Vec::new();
                return None;
            }
            state.waiting = true;
            state = self
                .has_work
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting = false;
        }
    }

    /// Writer side: item `seq` is done. `chunk` is the data item's chunk
    /// (an emptied buffer may be reused).
    pub(crate) fn finished(&self, seq: u64, chunk: Option<Chunk>) {
        let mut state = self.lock();
        if let Some(chunk) = chunk {
            state.queued -= chunk.len();
            if let Chunk::Bytes(mut buffer) = chunk
                && state.spare.len() < SPARE_BUFFERS
            {
                buffer.clear();
                state.spare.push(buffer);
            }
        }
        drop(state);
        self.done.store(seq, Ordering::Release);
        self.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Chunk {
        Chunk::Bytes(b"line\n".to_vec())
    }

    #[test]
    fn items_left_by_a_writer_that_could_not_start_get_one_when_the_feeding_ends() {
        let queue = WriteQueue::new(1 << 20);
        let tally = Arc::new(Tally::default());
        queue.feeder_started();
        let pushed = queue.try_push(chunk(), &tally).unwrap();
        assert!(pushed.start_writer);
        // No thread could be created for it.
        queue.writer_failed();
        // The pump ends with its chunk still queued: its caller must start
        // a writer now, and only once.
        assert!(queue.feeder_ended());
        assert!(queue.writer_running());
        assert!(!queue.close(), "a writer is already being started");
    }

    #[test]
    fn an_empty_queue_needs_no_writer_when_the_feeding_ends() {
        let queue = WriteQueue::new(1 << 20);
        queue.feeder_started();
        assert!(!queue.feeder_ended());
        assert!(!queue.close());
        assert!(!queue.writer_running());
    }
}
