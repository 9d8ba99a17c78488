//! Drain mode: a busy guest pipe is drained by the sink's writer thread
//! itself, with no runtime wake-up per guest write.
//!
//! A pump whose stream fills a whole chunk before its linger runs out
//! hands the guest's pipe to the writer as a queue item (so it follows the
//! chunks queued before it). The writer then loops on its own thread:
//! splice what the guest's pipe holds into one reused pipe of its own (a
//! pipe-to-pipe move, never blocked by a file system), splice that into the
//! file through the sink's usual write path (rotation, time index,
//! followers, gaps), and `poll` the guest's pipe when it is empty. The pump
//! only waits, with one watchdog timer.
//!
//! The writer gives the pipe back to the pump (and the writer thread may
//! end) when the guest's pipe has been empty for [`DRAIN_IDLE`], when
//! another item waits in the queue, when the pump is told to stop, and at
//! EOF or a read error (which end the pump).
//!
//! A slow or hung disk must not stall the guest for long. A file write in drain
//! mode holds only the writer's own pipe, never the guest's, but while it
//! lasts nobody drains the guest's pipe. So ownership of the guest's pipe
//! is an atomic state: the writer touches it only while it holds it, and
//! the pump's watchdog takes it back when one file write (or the wait for
//! the writer to pick the job up) has lasted [`STALL_BOUND`]. The pump then
//! drains into the queue as usual, dropping and counting what does not fit;
//! order holds because the writer finishes its write before the queue
//! items behind the job.

use super::chunk::{Chunk, Fill, PipeChunk, enlarge_pipe};
use super::pump::{Handover, Pump, PumpEnd};
use super::queue::{Tally, WriteQueue};
use super::rotate::WriteOutcome;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the guest's pipe must stay empty before the writer gives it
/// back to the pump (an idle stream holds no thread).
pub const DRAIN_IDLE: Duration = Duration::from_millis(50);

/// Longest one file write in drain mode (or the wait for the writer to
/// start the job) may last before the pump takes the guest's pipe back.
pub const STALL_BOUND: Duration = Duration::from_millis(100);

/// How often the pump's watchdog looks.
const STALL_CHECK: Duration = Duration::from_millis(25);

/// Longest the writer waits in one `poll` before it looks at the queue,
/// the stop flag and the idle time again.
const POLL_SLICE: Duration = Duration::from_millis(10);

/// A round that moved less than 1/`THIN_SHARE` of what it could (what the
/// guest's pipe holds, or the writer's own pipe if that is smaller) is
/// thin: the writer naps [`BATCH_NAP`] before the next one.
const THIN_SHARE: usize = 4;

/// How long the writer lets a busy guest's pipe fill after a thin round.
/// A guest that writes in small pieces (8 KiB at a time is common) would
/// otherwise cost a round per write: a `poll`, two splices and the write
/// path's bookkeeping, each one also waking the guest. After the nap one
/// round moves what many writes left. It adds about this (plus the
/// timer's slack) to a line's way into the file, and none while the log
/// is followed; a guest's pipe enlarged to the drain pipe's size (1 MiB by
/// default) does not fill meanwhile below about 5 GB/s.
const BATCH_NAP: Duration = Duration::from_micros(200);

/// Who holds the guest's pipe.
const QUEUED: u8 = 0;
/// The writer moves bytes out of it (never blocked by the disk).
const HELD: u8 = 1;
/// The writer is in a file write and does not touch the guest's pipe.
const WRITING: u8 = 2;
/// The pump took it back; the writer must not touch it again.
const RECLAIMED: u8 = 3;
/// The writer gave it back.
const RETURNED: u8 = 4;

/// Why the writer gave the pipe back.
#[derive(Debug)]
pub(crate) enum Handback {
    /// Empty for [`DRAIN_IDLE`].
    Idle,
    /// Another item waits in the queue, the pump asked to stop, or the
    /// writer had no pipe of its own to splice into.
    Yielded,
    /// The guest's pipe reached EOF.
    Eof,
    /// Reading the guest's pipe failed.
    Failed(io::Error),
}

/// What the pump and the writer share about one drain job.
#[derive(Debug)]
pub(crate) struct DrainCtl {
    state: AtomicU8,
    /// File writes started (the watchdog tells a stuck write from a new one).
    writes: AtomicU64,
    stop: AtomicBool,
    /// The pump's count of bytes read (the writer reads for it).
    progress: Arc<AtomicU64>,
}

/// A drain job as queued for the writer.
#[derive(Debug)]
pub(crate) struct DrainJob {
    pub(crate) pipe: Arc<OwnedFd>,
    pub(crate) ctl: Arc<DrainCtl>,
    pub(crate) tally: Arc<Tally>,
    /// Size of the writer's own pipe.
    pub(crate) pipe_bytes: usize,
    /// Where the writer says why it gave the pipe back.
    pub(crate) back: oneshot::Sender<Handback>,
}

impl DrainCtl {
    pub(crate) fn new(progress: Arc<AtomicU64>) -> Self {
        Self {
            state: AtomicU8::new(QUEUED),
            writes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            progress,
        }
    }

    fn shift(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Writer: about to write to the file.
    fn begin_write(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.state.store(WRITING, Ordering::SeqCst);
    }

    /// Writer: the write is done; false if the pump took the pipe back.
    fn end_write(&self) -> bool {
        self.shift(WRITING, HELD)
    }

    /// Pump: stop draining (the writer gives the pipe up at its next look;
    /// a job not started yet is skipped).
    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shift(QUEUED, RECLAIMED);
    }

    /// Pump's watchdog: takes the pipe back if the same file write (or the
    /// wait for the writer) has lasted [`STALL_BOUND`]. `seen` is what the
    /// previous look saw, and since when.
    fn reclaim_if_stalled(&self, seen: &mut Option<(u8, u64, Instant)>) -> bool {
        let state = self.state.load(Ordering::SeqCst);
        let writes = self.writes.load(Ordering::SeqCst);
        if state != WRITING && state != QUEUED {
            *seen = None;
            return false;
        }
        match *seen {
            Some((s, w, since)) if (s, w) == (state, writes) => {
                since.elapsed() >= STALL_BOUND && self.shift(state, RECLAIMED)
            }
            _ => {
                *seen = Some((state, writes, Instant::now()));
                false
            }
        }
    }
}

/// How a drain job ended, on the writer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainEnd {
    /// Stopped or taken back before the writer came to it.
    Skipped,
    /// The writer gave the pipe back.
    Returned,
    /// The pump took it back (the writer was stuck in a write).
    TakenBack,
}

/// Writer side: runs a drain job until it gives the pipe back or the pump
/// takes it. `started` runs once the writer holds the pipe; `followed`
/// says whether anyone follows the log now; `write` is the sink's write
/// path.
pub(crate) fn drain(
    job: DrainJob,
    queue: &WriteQueue,
    started: impl FnOnce(),
    followed: &dyn Fn() -> bool,
    write: impl FnMut(&Chunk) -> WriteOutcome,
) -> DrainEnd {
    if !job.ctl.shift(QUEUED, HELD) {
        return DrainEnd::Skipped;
    }
    started();
    let mut drainer = Drainer {
        job: &job,
        queue,
        followed,
        write,
    };
    match drainer.run() {
        Some(why) => {
            job.ctl.state.store(RETURNED, Ordering::SeqCst);
            // The pump may have stopped waiting (it was stopped itself).
            let _ = job.back.send(why);
            DrainEnd::Returned
        }
        None => DrainEnd::TakenBack,
    }
}

struct Drainer<'a, W> {
    job: &'a DrainJob,
    queue: &'a WriteQueue,
    /// Whether anyone follows the log now (then no nap: see [`Pause`]).
    followed: &'a dyn Fn() -> bool,
    write: W,
}

impl<W: FnMut(&Chunk) -> WriteOutcome> Drainer<'_, W> {
    /// The drain loop; `None` if the pump took the pipe back.
    fn run(&mut self) -> Option<Handback> {
        let mut own = match PipeChunk::new(self.job.pipe_bytes) {
            Ok(pipe) => Chunk::Pipe(pipe),
            Err(error) => {
                tracing::debug!(%error, "No pipe for draining a log stream; the pump goes on");
                return Some(Handback::Yielded);
            }
        };
        // A busy guest's pipe is enlarged to the drain pipe's size, so the
        // guest keeps writing while a file write runs and each round moves
        // more. Idle pipes keep the default size: only streams that were
        // busy pay for the larger one. Refused over an unprivileged user's
        // pipe quota; then the default stays. What it holds when full: a
        // shorter move emptied it, so the next round waits (see `Pause`)
        // instead of hearing EAGAIN.
        let guest_size = enlarge_pipe(
            self.job.pipe.as_fd(),
            self.job.pipe_bytes,
            "a busy guest's pipe",
        )
        .unwrap_or(usize::MAX);
        let (mut moved_at, mut pause) = (Instant::now(), Pause::None);
        loop {
            if self.job.ctl.stop.load(Ordering::SeqCst) || self.queue.has_items() {
                return Some(Handback::Yielded);
            }
            pause.take(&self.job.pipe);
            let Chunk::Pipe(pipe) = &mut own else {
                return Some(Handback::Yielded);
            };
            // What this round can move at most: the own pipe may be
            // smaller than the guest's (a pipe quota).
            let most = guest_size.min(pipe.room());
            match pipe.fill_from(self.job.pipe.as_fd()) {
                Ok(Fill::Moved(n)) => {
                    self.job.ctl.progress.fetch_add(n as u64, Ordering::Relaxed);
                    let next = Pause::after(n, most, (self.followed)());
                    (moved_at, pause) = (Instant::now(), next);
                    if !self.write_out(&mut own) {
                        return None;
                    }
                }
                Ok(Fill::Eof) => return Some(Handback::Eof),
                // Cannot happen with an emptied pipe; let the pump go on.
                Ok(Fill::Full) => return Some(Handback::Yielded),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if moved_at.elapsed() >= DRAIN_IDLE {
                        return Some(Handback::Idle);
                    }
                    pause = Pause::Poll;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Some(Handback::Failed(error)),
            }
        }
    }

    /// Writes the own pipe's bytes to the file; false if the pump took the
    /// guest's pipe back meanwhile.
    fn write_out(&mut self, own: &mut Chunk) -> bool {
        self.job.ctl.begin_write();
        let out = (self.write)(own);
        let tally = &self.job.tally;
        tally.written.fetch_add(out.written, Ordering::Relaxed);
        tally.dropped.fetch_add(out.dropped, Ordering::Relaxed);
        if let Chunk::Pipe(pipe) = own
            && let Err(error) = pipe.clear(out.written)
        {
            // The bytes are counted as lost already; a fresh pipe (or
            // none: give the guest's pipe back) keeps them out of the next
            // write.
            tracing::debug!(%error, "Cannot empty a log drain pipe; replacing it");
            match PipeChunk::new(self.job.pipe_bytes) {
                Ok(fresh) => *pipe = fresh,
                Err(_) => *own = Chunk::Bytes(Vec::new()),
            }
        }
        self.job.ctl.end_write()
    }
}

/// What the writer does before its next round of draining.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pause {
    /// Nothing: the last round filled its pipe, more is there.
    None,
    /// Nap [`BATCH_NAP`]: the last round was thin, and more is coming.
    Nap,
    /// Wait for the guest's pipe to be readable: it was emptied.
    Poll,
}

impl Pause {
    /// After a round that moved `moved` of at most `most` bytes. A
    /// followed log gets no nap, as it gets no linger: its followers see
    /// each write as soon as it is in the file.
    fn after(moved: usize, most: usize, followed: bool) -> Self {
        if moved < most / THIN_SHARE && !followed {
            Self::Nap
        } else if moved < most {
            Self::Poll
        } else {
            Self::None
        }
    }

    fn take(self, pipe: &OwnedFd) {
        match self {
            Self::None => {}
            Self::Nap => std::thread::sleep(BATCH_NAP),
            Self::Poll => wait_readable(pipe, POLL_SLICE),
        }
    }
}

/// Waits up to `timeout` for `fd` to be readable (or hung up).
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut polled = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    if let Err(error) = poll(&mut polled, PollTimeout::from(ms)) {
        tracing::trace!(%error, "poll on a drained log pipe");
    }
}

/// How a drain phase ended, for the pump.
pub(super) enum Drained {
    /// The pump has the pipe again and goes on.
    Resume,
    /// The stream ended (or the pump was stopped).
    Ended(PumpEnd),
}

impl Pump {
    /// Hands the busy guest pipe to the writer and waits until it comes
    /// back, the stream ends, the pump is stopped, or a stalled write makes
    /// the watchdog take it back. `drain_seq` is set to the job's queue
    /// item: no new job before the writer has finished it.
    pub(super) async fn drain_on_writer(
        &self,
        pipe: Arc<OwnedFd>,
        stop: &mut oneshot::Receiver<()>,
        handover: &mut Handover,
        drain_seq: &mut u64,
    ) -> Drained {
        let ctl = Arc::new(DrainCtl::new(self.progress.clone()));
        let (back, mut returned) = oneshot::channel();
        let job = DrainJob {
            pipe,
            ctl: ctl.clone(),
            tally: self.tally.clone(),
            pipe_bytes: self.tuning.pipe_chunk,
            back,
        };
        *drain_seq = self.sink.push_drain(job);
        handover.last_seq = *drain_seq;
        let mut watchdog = tokio::time::interval(STALL_CHECK);
        let mut seen = None;
        loop {
            tokio::select! {
                biased;
                // A send or a dropped handle both mean stop.
                _ = &mut *stop => {
                    ctl.request_stop();
                    return Drained::Ended(PumpEnd::Cut);
                }
                why = &mut returned => return match why {
                    Ok(Handback::Eof) => Drained::Ended(PumpEnd::Eof),
                    Ok(Handback::Failed(source)) => Drained::Ended(PumpEnd::ReadFailed { source }),
                    // Dropped unanswered: the writer no longer touches the
                    // pipe (its thread ended), so the pump goes on.
                    Ok(Handback::Idle | Handback::Yielded) | Err(_) => Drained::Resume,
                },
                _ = watchdog.tick() => if ctl.reclaim_if_stalled(&mut seen) {
                    self.sink.count_takeover();
                    tracing::warn!(path = %self.sink.path().display(), "Log write stalled while draining a busy stream; the pump takes the stream back (output the queue cannot hold is dropped)");
                    return Drained::Resume;
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_rounds_nap_partial_ones_poll_full_ones_go_on() {
        let size = 1 << 20;
        assert_eq!(Pause::after(8 << 10, size, false), Pause::Nap);
        assert_eq!(Pause::after(size / THIN_SHARE - 1, size, false), Pause::Nap);
        assert_eq!(Pause::after(size / THIN_SHARE, size, false), Pause::Poll);
        assert_eq!(Pause::after(size - 1, size, false), Pause::Poll);
        assert_eq!(Pause::after(size, size, false), Pause::None);
    }

    #[test]
    fn a_followed_log_never_naps() {
        assert_eq!(Pause::after(8 << 10, 1 << 20, true), Pause::Poll);
        assert_eq!(Pause::after(1 << 20, 1 << 20, true), Pause::None);
    }
}
