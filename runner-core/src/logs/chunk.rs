//! What a pump hands to its sink's writer: bytes in memory, or bytes held
//! in a pipe of the pump's own that the writer splices into the file.
//!
//! Why a pipe of our own instead of splicing the guest's pipe straight into
//! the file: `splice` from a pipe into a file holds that pipe's lock for the
//! whole file write. On a hung file system that lock would be held for
//! good, and the guest's next `write` would block on it: the guest's pipe
//! would be left undrained. Moving bytes from the guest's pipe into a
//! [`PipeChunk`] is a pipe-to-pipe splice (page references move, nothing is
//! copied and no file system is involved), so a pump can always do it on a
//! runtime worker; only the writer, on its own thread, touches the file,
//! and a stuck write holds only that chunk's pipe. The writer's drain mode
//! ([`super::drain`]) keeps the same rule with one reused [`PipeChunk`].

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Bytes waiting for the writer.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// Read into memory (streams that are not pipes).
    Bytes(Vec<u8>),
    /// Still in the kernel, in a pipe of the pump's own.
    Pipe(PipeChunk),
}

impl Chunk {
    /// Bytes it holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Bytes(bytes) => bytes.len(),
            Self::Pipe(pipe) => pipe.len,
        }
    }
}

/// A pipe of the pump's own holding `len` bytes moved out of a guest's
/// pipe.
#[derive(Debug)]
pub(crate) struct PipeChunk {
    read: OwnedFd,
    /// Dropped when handed to the writer: it never needs it.
    write: Option<OwnedFd>,
    len: usize,
    capacity: usize,
}

/// What one [`PipeChunk::fill_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Moved this many bytes (more than zero).
    Moved(usize),
    /// The guest's pipe is at EOF (every writer closed it).
    Eof,
    /// The guest's pipe has bytes but this chunk has no room for them.
    Full,
}

/// Asks the kernel to make the pipe behind `fd` hold `bytes`, and says
/// what it holds now: the size set, or, when the kernel refuses (an
/// unprivileged user over the pipe-memory quota), the size it kept.
/// `what` names the pipe in the trace of a refusal.
pub(crate) fn enlarge_pipe(fd: BorrowedFd<'_>, bytes: usize, what: &str) -> io::Result<usize> {
    let want = i32::try_from(bytes).unwrap_or(i32::MAX);
    let size = match fcntl(fd, FcntlArg::F_SETPIPE_SZ(want)) {
        Ok(size) => size,
        Err(error) => {
            tracing::trace!(%error, "Cannot enlarge {what}");
            fcntl(fd, FcntlArg::F_GETPIPE_SZ)?
        }
    };
    Ok(usize::try_from(size).unwrap_or(0))
}

impl PipeChunk {
    /// A new empty pipe sized (if the kernel allows) to hold `capacity`
    /// bytes. No file-system call: pipes live in the kernel's pipe
    /// file system, never on a disk.
    pub(crate) fn new(capacity: usize) -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Over the quota the chunk keeps the default size; it is then
        // handed over sooner, nothing else changes.
        let size = enlarge_pipe(write.as_fd(), capacity, "a log chunk pipe")?;
        Ok(Self::holding(read, write, size, capacity))
    }

    /// A new empty pipe of the kernel's default size (16 pages) for bytes
    /// handed over at once: a few lines need no resizing (two system
    /// calls, and the kernel's allocation of a larger ring).
    pub(crate) fn small() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // A user over the quota gets fewer pages; a pipe out of slots
        // reports itself full (see `fill_from`), so guessing high is safe.
        let size = 16 * rustix::param::page_size();
        Ok(Self::holding(read, write, size, size))
    }

    /// An empty chunk over a new pipe of `size` bytes, used up to
    /// `capacity`.
    fn holding(read: OwnedFd, write: OwnedFd, size: usize, capacity: usize) -> Self {
        Self {
            read,
            write: Some(write),
            len: 0,
            capacity: size.min(capacity.max(1)),
        }
    }

    /// Bytes it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left, in bytes.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len)
    }

    /// Moves what the guest's pipe `from` holds, up to [`Self::room`], into
    /// this chunk without blocking. `Err(WouldBlock)` means `from` is
    /// empty. Never touches a file system, so it may run on a runtime
    /// worker.
    pub(crate) fn fill_from(&mut self, from: BorrowedFd<'_>) -> io::Result<Fill> {
        let Some(write) = &self.write else {
            return Ok(Fill::Full);
        };
        let room = self.room();
        if room == 0 {
            return Ok(Fill::Full);
        }
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        match splice(from, None, write, None, room, flags) {
            Ok(0) => Ok(Fill::Eof),
            Ok(n) => {
                self.len += n;
                Ok(Fill::Moved(n))
            }
            // EAGAIN: either `from` is empty or this pipe's slots are
            // used up (a pipe counts buffers, not bytes, so it can fill
            // before `room` bytes; then even `from`'s EOF reads as EAGAIN).
            // Only an empty `from` that still has writers "would block".
            Err(nix::errno::Errno::EAGAIN) if !self.is_empty() && !waits_for_writers(from)? => {
                Ok(Fill::Full)
            }
            Err(errno) => Err(errno.into()),
        }
    }

    /// Seals it for the writer: drops the write end.
    pub(crate) fn seal(mut self) -> Self {
        self.write = None;
        self
    }

    /// The read end, for the writer's splice into the file.
    pub(crate) fn reader(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empties it for reuse after a write that took `written` of its
    /// bytes: bytes a failed write left behind (already counted as lost)
    /// are read and discarded.
    pub(crate) fn clear(&mut self, written: u64) -> io::Result<()> {
        let left = if written == self.len as u64 {
            0
        } else {
            usize::try_from(rustix::io::ioctl_fionread(&self.read)?).unwrap_or(usize::MAX)
        };
        if left > 0 {
            self.read_rest(left)?;
        }
        self.len = 0;
        Ok(())
    }

    /// Reads the `left` bytes it still holds into memory (the copy path: a
    /// file that refuses `splice`, or live followers who need the bytes).
    pub(crate) fn read_rest(&self, left: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; left.min(self.len)];
        let mut at = 0;
        while at < out.len() {
            match nix::unistd::read(&self.read, &mut out[at..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => at += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(out)
    }
}

/// Whether the pipe `fd` is empty and still open for writing (so a read
/// would block), as opposed to holding bytes or being at EOF.
fn waits_for_writers(fd: BorrowedFd<'_>) -> io::Result<bool> {
    if rustix::io::ioctl_fionread(fd)? > 0 {
        return Ok(false);
    }
    let mut polled = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut polled, PollTimeout::ZERO)?;
    let hung_up = polled[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLHUP));
    Ok(!hung_up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn guest_pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn moves_what_fits_and_reports_full_eof_and_empty() {
        let (r, mut w) = guest_pipe();
        let mut chunk = PipeChunk::new(4096).unwrap();
        assert_eq!(chunk.room(), 4096);
        assert_eq!(
            chunk.fill_from(r.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        w.write_all(&[7u8; 5000]).unwrap();
        // A partial splice: only the room moves, the rest stays behind.
        assert_eq!(chunk.fill_from(r.as_fd()).unwrap(), Fill::Moved(4096));
        assert_eq!(chunk.fill_from(r.as_fd()).unwrap(), Fill::Full);
        let sealed = chunk.seal();
        assert_eq!(sealed.read_rest(sealed.len()).unwrap(), vec![7u8; 4096]);

        let mut next = PipeChunk::new(4096).unwrap();
        assert_eq!(next.fill_from(r.as_fd()).unwrap(), Fill::Moved(904));
        drop(w);
        // Its one page is used: the guest's EOF cannot be seen through it,
        // so it reports full; a fresh chunk sees the EOF.
        assert_eq!(next.fill_from(r.as_fd()).unwrap(), Fill::Full);
        assert_eq!(next.len(), 904);
        let mut last = PipeChunk::new(4096).unwrap();
        assert_eq!(last.fill_from(r.as_fd()).unwrap(), Fill::Eof);
    }

    #[test]
    fn a_small_chunk_holds_the_default_pipe_and_then_reports_full() {
        let (r, mut w) = guest_pipe();
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let default = 16 * rustix::param::page_size();
        w.write_all(&vec![3u8; default + 100]).unwrap();
        let mut chunk = PipeChunk::small().unwrap();
        assert_eq!(chunk.room(), default);
        assert_eq!(chunk.fill_from(r.as_fd()).unwrap(), Fill::Moved(default));
        assert_eq!(chunk.fill_from(r.as_fd()).unwrap(), Fill::Full);
        // The rest waits in the guest's pipe for the next chunk.
        let mut next = PipeChunk::small().unwrap();
        assert_eq!(next.fill_from(r.as_fd()).unwrap(), Fill::Moved(100));
        let sealed = chunk.seal();
        assert_eq!(sealed.read_rest(sealed.len()).unwrap(), vec![3u8; default]);
    }
}
