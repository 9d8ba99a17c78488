//! The pump's zero-copy path for a guest's pipe: its bytes are spliced
//! into a [`PipeChunk`] of the pump's own (a pipe-to-pipe move of page
//! references, no file system involved, so it runs on a runtime worker)
//! and the chunk is handed to the sink's writer, which splices it into the
//! file. The bytes never enter this process's memory unless someone
//! follows the log or the file refuses `splice`.
//!
//! A chunk is handed over when it is full, when its oldest byte has waited
//! [`super::PumpTuning::linger`] (at once for the first few chunks after a
//! quiet spell), or at the end. A chunk that fills before its linger runs out
//! means a busy stream: the guest's pipe then goes to the writer thread
//! (drain mode, [`super::drain`]) until the writer gives it back or the
//! pump's watchdog takes it back from a stalled write. Should no pipe be
//! available for a chunk (out of file descriptors), the pump reads the
//! guest's pipe into memory instead, so the pipe is drained whatever
//! happens.

use super::chunk::{Chunk, Fill, PipeChunk};
use super::drain::Drained;
use super::pump::{Handover, Pump, PumpEnd, PumpReport};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Bytes read into memory per step when no chunk pipe can be created.
const FALLBACK_READ: usize = 64 * 1024;

/// What one round of moving bytes did.
enum Step {
    /// The guest's pipe is empty for now.
    Drained,
    /// A chunk filled before its linger ran out: time for drain mode.
    Busy,
    /// The stream ended.
    Ended(PumpEnd),
}

/// Where a pump's current chunk stands.
#[derive(Default)]
struct Batch {
    chunk: Option<PipeChunk>,
    /// When the oldest byte in `chunk` must be handed over.
    flush_by: Option<Instant>,
    /// When the pump last moved bytes (the stream is quiet if not within
    /// a linger).
    moved_at: Option<Instant>,
    /// Chunks still to be handed over at once since the stream was last
    /// quiet (see [`Pump::pipe_linger`]).
    eager: u8,
}

/// Chunks handed over without lingering after a quiet spell: a guest's few
/// start-up lines (often separate writes microseconds apart) reach the file
/// at once; a stream that keeps writing is batched from the next chunk on.
const EAGER_CHUNKS: u8 = 4;

impl Pump {
    /// Moves `pipe` into chunks until EOF, a read error or `stop`; a busy
    /// stream is drained by the writer meanwhile (see [`super::drain`]).
    pub(super) async fn splice_pipe(
        &self,
        pipe: pipe::Receiver,
        stop: &mut oneshot::Receiver<()>,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> PumpEnd {
        let mut fd = match pipe.into_nonblocking_fd() {
            Ok(fd) => Arc::new(fd),
            Err(source) => return PumpEnd::ReadFailed { source },
        };
        // The last drain job: no new one before the writer has finished it
        // (after a stall it may still be writing).
        let mut drain_seq = 0;
        loop {
            // Readiness is handled by hand: a splice that emptied the pipe
            // says so without another syscall to hear EAGAIN.
            let registered = match register(fd) {
                Ok(registered) => registered,
                Err(source) => return PumpEnd::ReadFailed { source },
            };
            if let Some(end) = self
                .splice_until_busy(&registered, drain_seq, stop, report, handover)
                .await
            {
                return end;
            }
            fd = registered.into_inner();
            match self
                .drain_on_writer(fd.clone(), stop, handover, &mut drain_seq)
                .await
            {
                Drained::Resume => {}
                Drained::Ended(end) => return end,
            }
        }
    }

    /// Moves `pipe` into chunks until it ends (`Some`) or until it is busy
    /// enough for drain mode (`None`; only once the writer has finished the
    /// last drain job, `drain_seq`).
    async fn splice_until_busy(
        &self,
        pipe: &AsyncFd<Arc<OwnedFd>>,
        drain_seq: u64,
        stop: &mut oneshot::Receiver<()>,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> Option<PumpEnd> {
        let mut batch = Batch::default();
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            let step = tokio::select! {
                biased;
                // A send or a dropped handle both mean stop.
                _ = &mut *stop => Step::Ended(PumpEnd::Cut),
                ready = pipe.readable() => match ready {
                    Ok(guard) => self.move_ready(guard, &mut batch, drain_seq, report, handover).await,
                    Err(source) => Step::Ended(PumpEnd::ReadFailed { source }),
                },
                () = &mut linger, if batch.flush_by.is_some() => {
                    batch.flush_by = None;
                    self.hand_over_pipe(&mut batch.chunk, handover).await;
                    Step::Drained
                }
            };
            match step {
                Step::Drained => {
                    self.after_drained(&mut batch, linger.as_mut(), handover)
                        .await
                }
                Step::Busy => return None,
                Step::Ended(end) => {
                    self.hand_over_pipe(&mut batch.chunk, handover).await;
                    if let PumpEnd::ReadFailed { source } = &end {
                        tracing::warn!(path = %self.sink.path().display(), error = %source, "Guest output stream failed");
                    }
                    return Some(end);
                }
            }
        }
    }

    /// The guest's pipe is empty for now: hand over what is due, arm the
    /// linger for the rest.
    async fn after_drained(
        &self,
        batch: &mut Batch,
        linger: std::pin::Pin<&mut tokio::time::Sleep>,
        handover: &mut Handover,
    ) {
        // An idle pump holds no pipe of its own.
        if batch.chunk.as_ref().is_some_and(PipeChunk::is_empty) {
            batch.chunk = None;
        }
        match batch.flush_by {
            // Due already (first bytes after a quiet spell, or no linger
            // while followed): hand over now, not a timer tick (about a
            // millisecond) later.
            Some(at) if at <= Instant::now() => {
                batch.flush_by = None;
                self.hand_over_pipe(&mut batch.chunk, handover).await;
            }
            Some(at) if linger.deadline() != at => linger.reset(at),
            _ => {}
        }
    }

    /// Moves what the guest's pipe holds, handing over chunks as they
    /// fill, until the pipe is empty or ends, or a chunk fills before its
    /// linger ran out: the stream is busy (drain mode, once the writer has
    /// finished the last drain job, `drain_seq`).
    async fn move_ready(
        &self,
        mut guard: AsyncFdReadyGuard<'_, Arc<OwnedFd>>,
        batch: &mut Batch,
        drain_seq: u64,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> Step {
        loop {
            // Other tasks get their turn while a fast guest keeps writing.
            tokio::task::consume_budget().await;
            if batch.chunk.is_none() {
                match self.fresh_chunk(batch, &guard) {
                    Ok(Some(fresh)) => batch.chunk = Some(fresh),
                    Ok(None) => return Step::Ended(PumpEnd::Eof),
                    Err(error) => {
                        return self.read_into_memory(guard, error, report, handover).await;
                    }
                }
            }
            let current = batch.chunk.as_mut().expect("created above");
            let room = current.room();
            let filled = match current.fill_from(guard.get_inner().as_fd()) {
                Ok(Fill::Moved(n)) => {
                    self.note_read(report, n);
                    let now = Instant::now();
                    if batch.flush_by.is_none() {
                        let wait = self.pipe_linger(batch.moved_at, now, &mut batch.eager);
                        batch.flush_by = Some(now + wait);
                    }
                    batch.moved_at = Some(now);
                    if current.room() > 0 && n < room && drained(&guard) {
                        // Splice moves all it can: a short move emptied
                        // the pipe (unless the chunk ran out of pages,
                        // which `drained` rules out).
                        guard.clear_ready();
                        return Step::Drained;
                    }
                    current.room() == 0
                }
                Ok(Fill::Full) => true,
                Ok(Fill::Eof) => return Step::Ended(PumpEnd::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Step::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(source) => return Step::Ended(PumpEnd::ReadFailed { source }),
            };
            if filled {
                let early = batch.flush_by.is_some_and(|at| Instant::now() < at);
                batch.flush_by = None;
                let queued = self.hand_over_pipe(&mut batch.chunk, handover).await;
                if early && queued && self.sink.queue().is_handled(drain_seq) {
                    return Step::Busy;
                }
            }
        }
    }

    /// How long the first bytes of a chunk may wait: at once after a quiet
    /// spell (the stream moved nothing for a linger: a lone line is not
    /// held back), else the linger (a busy stream's writes are batched).
    pub(super) fn first_linger(&self, moved_at: Option<Instant>, now: Instant) -> Duration {
        let linger = self.linger();
        match moved_at {
            Some(at) if now.saturating_duration_since(at) < linger => linger,
            _ => Duration::ZERO,
        }
    }

    /// A new chunk for `batch`, or `None` at the guest's end (a guest that
    /// has closed its end leaves an empty pipe: no pipe of our own is
    /// needed to see that). A chunk to be handed over at once (the first
    /// ones after a quiet spell, see [`Self::pipe_linger`]) is a small
    /// one: it needs no room for a busy stream's batch. Not while the log
    /// is followed: then every chunk goes at once, busy stream or not.
    fn fresh_chunk(
        &self,
        batch: &Batch,
        guard: &AsyncFdReadyGuard<'_, Arc<OwnedFd>>,
    ) -> io::Result<Option<PipeChunk>> {
        if at_eof(guard) {
            return Ok(None);
        }
        let at_once = !self.sink.is_followed()
            && (batch.eager > 0 || self.first_linger(batch.moved_at, Instant::now()).is_zero());
        if at_once {
            PipeChunk::small().map(Some)
        } else {
            PipeChunk::new(self.tuning.pipe_chunk).map(Some)
        }
    }

    /// [`Self::first_linger`] for the pipe path, which also hands over at
    /// once the first [`EAGER_CHUNKS`] chunks after a quiet spell (`eager`
    /// counts them down), not only the first.
    fn pipe_linger(&self, moved_at: Option<Instant>, now: Instant, eager: &mut u8) -> Duration {
        if self.first_linger(moved_at, now).is_zero() {
            *eager = EAGER_CHUNKS;
        }
        match eager.checked_sub(1) {
            Some(left) => {
                *eager = left;
                Duration::ZERO
            }
            None => self.linger(),
        }
    }

    /// Hands the current chunk (if it holds bytes) to the writer; false if
    /// the queue refused it.
    async fn hand_over_pipe(&self, chunk: &mut Option<PipeChunk>, handover: &mut Handover) -> bool {
        match chunk.take() {
            Some(full) if !full.is_empty() => {
                // A chunk the queue refused is closed here: its bytes are
                // counted as dropped and its pages freed.
                self.hand_over(Chunk::Pipe(full.seal()), handover)
                    .await
                    .is_none()
            }
            // An empty chunk is kept for the next bytes (dropped when the
            // guest's pipe turns out empty).
            empty => {
                *chunk = empty;
                true
            }
        }
    }

    /// No chunk pipe could be made: drains what the guest's pipe holds
    /// through memory instead.
    async fn read_into_memory(
        &self,
        mut guard: AsyncFdReadyGuard<'_, Arc<OwnedFd>>,
        error: io::Error,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> Step {
        tracing::warn!(path = %self.sink.path().display(), %error, "Cannot create a log chunk pipe; copying this output instead");
        let mut buf = vec![0u8; FALLBACK_READ];
        match nix::unistd::read(guard.get_inner(), &mut buf) {
            Ok(0) => Step::Ended(PumpEnd::Eof),
            Ok(n) => {
                buf.truncate(n);
                self.note_read(report, n);
                drop(self.hand_over(Chunk::Bytes(buf), handover).await);
                // Readiness was kept: the next round tries a pipe again.
                Step::Drained
            }
            Err(nix::errno::Errno::EAGAIN) => {
                guard.clear_ready();
                Step::Drained
            }
            Err(nix::errno::Errno::EINTR) => Step::Drained,
            Err(errno) => Step::Ended(PumpEnd::ReadFailed {
                source: errno.into(),
            }),
        }
    }
}

/// Whether the guest's pipe behind `guard` is empty and its writers are
/// still there, so its readiness may be cleared (at EOF it must not be:
/// the next splice reports the end).
fn drained(guard: &AsyncFdReadyGuard<'_, Arc<OwnedFd>>) -> bool {
    !guard.ready().is_read_closed() && holds_nothing(guard)
}

/// Whether the guest's pipe behind `guard` is at its end: hung up (no
/// writer left) and empty.
fn at_eof(guard: &AsyncFdReadyGuard<'_, Arc<OwnedFd>>) -> bool {
    guard.ready().is_read_closed() && holds_nothing(guard)
}

/// Whether the guest's pipe behind `guard` holds no bytes right now.
fn holds_nothing(guard: &AsyncFdReadyGuard<'_, Arc<OwnedFd>>) -> bool {
    rustix::io::ioctl_fionread(guard.get_inner()).is_ok_and(|n| n == 0)
}

/// Registers the guest's pipe with the reactor, for readability.
#[allow(unsafe_code)]
fn register(fd: Arc<OwnedFd>) -> io::Result<AsyncFd<Arc<OwnedFd>>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor closed only when the
    // last clone of this `Arc` drops, so its `as_raw_fd` returns that same
    // open descriptor for as long as the `AsyncFd` owns this clone.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
