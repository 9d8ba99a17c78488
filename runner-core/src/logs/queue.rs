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
//! [`LogSink::open_with_queue`]: super::LogSink::open_with_queue

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

/// Emptied buffers kept for pumps to reuse.
const SPARE_BUFFERS: usize = 8;

/// Per-pump counters, updated by the writer for that pump's buffers.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// One queued piece of work for the writer.
pub(crate) enum Item {
    /// Bytes to append.
    Data { bytes: Vec<u8>, tally: Arc<Tally> },
    /// Bytes a pump had to drop here (the queue was full).
    Dropped { bytes: u64, at_ms: u64 },
}

#[derive(Default)]
struct State {
    items: VecDeque<(u64, Item)>,
    /// Data bytes queued or being written.
    queued: usize,
    /// Sequence number of the last item pushed.
    pushed: u64,
    closed: bool,
    spare: Vec<Vec<u8>>,
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
            state: Mutex::new(State::default()),
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
    pub(crate) fn try_push(&self, bytes: Vec<u8>, tally: &Arc<Tally>) -> Result<u64, Vec<u8>> {
        let mut state = self.lock();
        if state.queued > 0 && state.queued + bytes.len() > self.capacity {
            return Err(bytes);
        }
        state.queued += bytes.len();
        state.pushed += 1;
        let seq = state.pushed;
        let tally = tally.clone();
        state.items.push_back((seq, Item::Data { bytes, tally }));
        drop(state);
        self.has_work.notify_one();
        Ok(seq)
    }

    /// [`Self::try_push`], waiting up to `wait` for room.
    pub(crate) async fn push_within(
        &self,
        mut bytes: Vec<u8>,
        tally: &Arc<Tally>,
        wait: Duration,
    ) -> Result<u64, Vec<u8>> {
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
    /// the sequence number that covers it.
    pub(crate) fn push_dropped(&self, bytes: u64, at_ms: u64) -> u64 {
        let mut state = self.lock();
        if let Some((seq, Item::Dropped { bytes: pending, .. })) = state.items.back_mut() {
            *pending += bytes;
            return *seq;
        }
        state.pushed += 1;
        let seq = state.pushed;
        state.items.push_back((seq, Item::Dropped { bytes, at_ms }));
        drop(state);
        self.has_work.notify_one();
        seq
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

    /// No more items will come: the writer finishes the queued ones and
    /// ends.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.has_work.notify_all();
    }

    /// Writer side: the next item, waiting for one; `None` once closed and
    /// empty.
    pub(crate) fn next(&self) -> Option<(u64, Item)> {
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self
                .has_work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writer side: item `seq` is done; `buffer` (emptied) may be reused.
    pub(crate) fn finished(&self, seq: u64, buffer: Option<Vec<u8>>) {
        let mut state = self.lock();
        if let Some(mut buffer) = buffer {
            state.queued -= buffer.len();
            if state.spare.len() < SPARE_BUFFERS {
                buffer.clear();
                state.spare.push(buffer);
            }
        }
        drop(state);
        self.done.store(seq, Ordering::Release);
        self.progress.notify_waiters();
    }
}
