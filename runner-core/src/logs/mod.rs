//! Byte-exact log capture with rotation, and the log reader.
//!
//! Each captured guest stream has one [`LogSink`]: the file
//! `<logs dir>/<role label>.<stream>.log` (for example
//! `oxydra-vm.stdout.log`), its rotations `.log.1` (newest) … `.log.N`
//! (oldest, `N = max_files`), a time index beside each file, and a live feed
//! for followers. A [`LogPump`] copies one guest stream into a sink until
//! EOF; when a guest restarts, a new pump takes over the same sink and
//! appends to the same files.
//!
//! Guarantees:
//! - Byte-exact: the files hold exactly the bytes read, in order, whatever
//!   they are. Each file is filled exactly to `max_file_bytes` before the
//!   next byte rotates it, so the concatenation `.log.N` … `.log.1` `.log` is
//!   the stream's newest bytes (older ones fall off the end).
//! - Zero-copy where the stream is a pipe ([`GuestStream::Pipe`]): bytes go
//!   pipe → pipe → file with `splice(2)` and never through this process's
//!   memory (unless someone follows the log, or the file refuses splice).
//! - No file-system call runs on a runtime worker: a pump only moves bytes
//!   out of its stream and hands chunks to the sink's bounded queue
//!   (default [`DEFAULT_QUEUE_BYTES`], see [`queue`]); the sink's writer
//!   thread, which runs only while there is output, writes, rotates and
//!   indexes. Sinks opened on the same [`WriterThreads`] reuse each
//!   other's ended writers' threads. A busy pipe stream is drained by the writer thread itself
//!   (drain mode, see `drain`): no runtime wake-up per guest write, and a
//!   watchdog takes the pipe back from a writer stuck in a file write
//!   ([`STALL_BOUND`]), so the guest's pipe is still never left undrained. A pump keeps reading until EOF whatever
//!   the bytes are and whatever the disk does: a buffer the full queue
//!   cannot take (a stalled disk) and bytes a write loses (ENOSPC, EIO) are
//!   counted ([`SinkStats::bytes_dropped`], [`LogSink::watch_dropped`]),
//!   never fatal, and recorded as a gap where readers find it ([`gaps`]);
//!   writing resumes by itself when the disk does. Its owner bounds the
//!   drain with [`PumpHandle::finish`].
//! - Files are created mode 0600, a missing logs directory mode 0700.
//!   Logs and indexes are opened with
//!   [`crate::workspace::file::open_regular`]: never through a symlink, and
//!   a FIFO, device or directory where one belongs is
//!   [`LogError::Unsafe`] at once, never a blocked open. The logs
//!   directory must be the runner's own and writable by no one else.
//! - The time index (`<log file>.idx`, format in [`index`]) lets readers
//!   find "lines since T" by seeking; readers ([`LogSink::read`],
//!   [`read_log_files`]) never load whole files.
//! - The live feed ([`LogSink::subscribe`], [`LogSink::follow`]) costs one
//!   atomic load per chunk while nobody follows.

mod chunk;
mod drain;
mod error;
pub mod gaps;
pub mod index;
mod lines;
mod pump;
pub mod queue;
mod reader;
mod rotate;
mod sink;
mod splice;
mod writers;

pub use drain::{DRAIN_IDLE, STALL_BOUND};
pub use error::LogError;
pub use gaps::{GapRecord, read_gaps};
pub use lines::LineSplitter;
pub use pump::{
    GuestReader, GuestStream, LogPump, PumpEnd, PumpHandle, PumpReport, PumpTuning, STOP_GRACE,
};
pub use queue::{DEFAULT_QUEUE_BYTES, FULL_WAIT, WRITER_LINGER};
pub use reader::{
    DEFAULT_MAX_BYTES, LinesAfter, LogBacklog, LogCursor, LogLines, LogQuery, Loss, read_log_files,
};
pub use rotate::rotated_path;
pub use sink::{LogSink, SinkStats};
pub use writers::WriterThreads;
