//! The pump's zero-copy path for a guest's pipe: its bytes are spliced
//! into a [`PipeChunk`] of the pump's own (a pipe-to-pipe move of page
//! references, no file system involved, so it runs on a runtime worker)
//! and the chunk is handed to the sink's writer, which splices it into the
//! file. The bytes never enter this process's memory unless someone
//! follows the log or the file refuses `splice`.
//!
//! A chunk is handed over when it is full, when its oldest byte has waited
//! [`super::PumpTuning::linger`], or at the end. Should no pipe be
//! available for a chunk (out of file descriptors), the pump reads the
//! guest's pipe into memory instead, so the pipe is drained whatever
//! happens.

use super::chunk::{Chunk, Fill, PipeChunk};
use super::pump::{Handover, Pump, PumpEnd, PumpReport};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
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
    /// The stream ended.
    Ended(PumpEnd),
}

impl Pump {
    /// Moves `pipe` into chunks until EOF, a read error or `stop`.
    pub(super) async fn splice_pipe(
        &self,
        pipe: pipe::Receiver,
        stop: &mut oneshot::Receiver<()>,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> PumpEnd {
        // Readiness is handled by hand: a splice that emptied the pipe
        // says so without another syscall to hear EAGAIN.
        let pipe = match pipe.into_nonblocking_fd().and_then(register) {
            Ok(pipe) => pipe,
            Err(source) => return PumpEnd::ReadFailed { source },
        };
        let mut chunk: Option<PipeChunk> = None;
        // When the oldest byte in `chunk` must be handed over.
        let mut flush_by: Option<Instant> = None;
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            let step = tokio::select! {
                biased;
                // A send or a dropped handle both mean stop.
                _ = &mut *stop => Step::Ended(PumpEnd::Cut),
                ready = pipe.readable() => match ready {
                    Ok(guard) => self.move_ready(guard, &mut chunk, &mut flush_by, report, handover).await,
                    Err(source) => Step::Ended(PumpEnd::ReadFailed { source }),
                },
                () = &mut linger, if flush_by.is_some() => {
                    flush_by = None;
                    self.hand_over_pipe(&mut chunk, handover).await;
                    Step::Drained
                }
            };
            match step {
                Step::Drained => {
                    // An idle pump holds no pipe of its own.
                    if chunk.as_ref().is_some_and(PipeChunk::is_empty) {
                        chunk = None;
                    }
                    match flush_by {
                        // Due already (no linger while followed): hand over
                        // now, not a timer tick (about a millisecond) later.
                        Some(at) if at <= Instant::now() => {
                            flush_by = None;
                            self.hand_over_pipe(&mut chunk, handover).await;
                        }
                        Some(at) if linger.deadline() != at => linger.as_mut().reset(at),
                        _ => {}
                    }
                }
                Step::Ended(end) => {
                    self.hand_over_pipe(&mut chunk, handover).await;
                    if let PumpEnd::ReadFailed { source } = &end {
                        tracing::warn!(path = %self.sink.path().display(), error = %source, "Guest output stream failed");
                    }
                    return end;
                }
            }
        }
    }

    /// Moves what the guest's pipe holds, handing over chunks as they
    /// fill, until the pipe is empty or ends.
    async fn move_ready(
        &self,
        mut guard: AsyncFdReadyGuard<'_, OwnedFd>,
        chunk: &mut Option<PipeChunk>,
        flush_by: &mut Option<Instant>,
        report: &mut PumpReport,
        handover: &mut Handover,
    ) -> Step {
        loop {
            // Other tasks get their turn while a fast guest keeps writing.
            tokio::task::consume_budget().await;
            if chunk.is_none() {
                match PipeChunk::new(self.tuning.pipe_chunk) {
                    Ok(fresh) => *chunk = Some(fresh),
                    Err(error) => {
                        return self.read_into_memory(guard, error, report, handover).await;
                    }
                }
            }
            let current = chunk.as_mut().expect("created above");
            let room = current.room();
            match current.fill_from(guard.get_inner().as_fd()) {
                Ok(Fill::Moved(n)) => {
                    self.note_read(report, n);
                    if flush_by.is_none() {
                        *flush_by = Some(Instant::now() + self.linger());
                    }
                    if current.room() == 0 {
                        *flush_by = None;
                        self.hand_over_pipe(chunk, handover).await;
                    } else if n < room && drained(&guard) {
                        // Splice moves all it can: a short move emptied
                        // the pipe (unless the chunk ran out of pages,
                        // which `drained` rules out).
                        guard.clear_ready();
                        return Step::Drained;
                    }
                }
                Ok(Fill::Full) => {
                    *flush_by = None;
                    self.hand_over_pipe(chunk, handover).await;
                }
                Ok(Fill::Eof) => return Step::Ended(PumpEnd::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return Step::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Step::Ended(PumpEnd::ReadFailed { source }),
            }
        }
    }

    /// Hands the current chunk (if it holds bytes) to the writer.
    async fn hand_over_pipe(&self, chunk: &mut Option<PipeChunk>, handover: &mut Handover) {
        match chunk.take() {
            Some(full) if !full.is_empty() => {
                // A chunk the queue refused is closed here: its bytes are
                // counted as dropped and its pages freed.
                drop(self.hand_over(Chunk::Pipe(full.seal()), handover).await);
            }
            // An empty chunk is kept for the next bytes (dropped when the
            // guest's pipe turns out empty).
            empty => *chunk = empty,
        }
    }

    /// No chunk pipe could be made: drains what the guest's pipe holds
    /// through memory instead.
    async fn read_into_memory(
        &self,
        mut guard: AsyncFdReadyGuard<'_, OwnedFd>,
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
fn drained(guard: &AsyncFdReadyGuard<'_, OwnedFd>) -> bool {
    !guard.ready().is_read_closed()
        && rustix::io::ioctl_fionread(guard.get_inner()).is_ok_and(|n| n == 0)
}

/// Registers the guest's pipe with the reactor, for readability.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that only it closes,
    // and its `as_raw_fd` returns that same descriptor for as long as the
    // `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}
