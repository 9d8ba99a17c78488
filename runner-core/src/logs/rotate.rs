//! The size-capped rotating file writer behind a [`super::LogSink`].
//!
//! Bytes go to `<name>.log` until it holds exactly `max_file_bytes`; the next
//! byte first rotates (`<name>.log.{max_files}` is deleted, then each
//! `.log.{n-1}` becomes `.log.{n}`, down to `.log` → `.log.1`) and then
//! continues in a fresh `<name>.log`. So `.log.{max_files}` … `.log.1`
//! `.log`, concatenated, are the newest bytes of the stream, byte for byte.
//! Each file's time index moves with it. With `max_files = 0` the full file
//! is simply deleted.
//!
//! Bytes held in a pipe ([`PipeChunk`]) are spliced into the file: the
//! kernel moves them from the pipe's pages into the file's without a copy
//! through user space. The file is opened without `O_APPEND` for that
//! (`splice` refuses append-mode files) and written at its end, which the
//! writer tracks. Where the kernel refuses to splice into the file (an
//! append-only file, which cannot lose `O_APPEND`; a file system without
//! splice support) the bytes are read from the pipe and written instead,
//! for the rest of that file's life.
//!
//! This writer is synchronous; only the sink's writer thread calls it. It
//! never fails a write back to its caller: a failed write or rotation drops
//! the rest of the chunk, is logged once per failure streak, and the next
//! chunk tries again (reopening the file). Lost bytes (failed writes, and
//! chunks the queue refused, see [`RotatingWriter::note_dropped`]) become a
//! gap record written before the next byte that reaches the file (format
//! and what readers see: [`super::gaps`]).

use super::LogError;
use super::chunk::{Chunk, PipeChunk};
use super::gaps::{GapRecord, GapWriter, NEWLINE_INSERTED, gaps_path};
use super::index::{IndexWriter, index_path};
use crate::config::LogLimits;
use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Path of rotated file number `n` of `base` (`n == 0` is `base` itself).
pub fn rotated_path(base: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return base.to_path_buf();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// What one [`RotatingWriter::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WriteOutcome {
    /// Bytes that reached a log file.
    pub(crate) written: u64,
    /// Bytes lost to a failed write or rotation.
    pub(crate) dropped: u64,
    /// Rotations performed.
    pub(crate) rotations: u64,
    /// Of `written`, bytes spliced (no user-space copy).
    pub(crate) spliced: u64,
}

impl WriteOutcome {
    fn add(&mut self, other: WriteOutcome) {
        self.written += other.written;
        self.dropped += other.dropped;
        self.rotations += other.rotations;
        self.spliced += other.spliced;
    }
}

/// Whether writes currently succeed; only used to log streaks once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterHealth {
    Healthy,
    Failing { dropped: u64 },
}

/// Appends to `<name>.log` with size-capped rotation.
#[derive(Debug)]
pub(crate) struct RotatingWriter {
    base: PathBuf,
    max_file_bytes: u64,
    max_files: u32,
    file: Option<File>,
    /// Bytes in the current file (valid while `file` is open).
    len: u64,
    index: IndexWriter,
    gaps: GapWriter,
    /// Output lost since the last byte that reached the file.
    pending_gap: Option<PendingGap>,
    /// The last byte written to the stream (any file), if known.
    last_byte: Option<u8>,
    /// The last byte was spliced: `last_byte` is stale, the byte is the
    /// current file's last (read back when needed).
    last_byte_in_file: bool,
    /// The open file accepts `splice` (else bytes in pipes are copied).
    splice_ok: bool,
    health: WriterHealth,
    /// Stream positions (see [`Self::position_base`]): when this writer
    /// was opened, and the bytes of files rotation has deleted since.
    epoch: u64,
    pruned: u64,
}

/// Lost output not yet recorded in the gap file.
#[derive(Debug, Clone, Copy)]
struct PendingGap {
    bytes: u64,
    since_ms: u64,
    /// Offset of a `\n` already written for this gap (its record failed).
    newline_at: Option<u64>,
}

impl RotatingWriter {
    /// Opens (or creates, mode 0600) `base` for appending and removes
    /// rotated files numbered beyond `limits.max_files` (left over from a
    /// run with a larger limit). The log and an existing index must be
    /// regular files (see [`open_regular`]).
    pub(crate) fn open(base: PathBuf, limits: LogLimits) -> Result<Self, LogError> {
        let mut writer = Self {
            index: IndexWriter::new(index_path(&base)),
            gaps: GapWriter::new(gaps_path(&base)),
            pending_gap: None,
            last_byte: None,
            last_byte_in_file: false,
            splice_ok: false,
            base,
            // Validated config has both > 0; a zero cap would never make room.
            max_file_bytes: limits.max_file_bytes.max(1),
            max_files: limits.max_files,
            file: None,
            len: 0,
            health: WriterHealth::Healthy,
            epoch: super::reader::new_epoch(),
            pruned: 0,
        };
        writer.open_file().map_err(log_error)?;
        writer.index.open_existing().map_err(log_error)?;
        writer.gaps.open_existing().map_err(log_error)?;
        writer.last_byte = writer.read_last_byte();
        writer.remove_beyond_limit();
        Ok(writer)
    }

    /// Closes every file (the log is idle); the next write reopens them.
    pub(crate) fn close_files(&mut self) {
        self.drop_file();
        self.index.release();
        self.gaps.close();
    }

    /// Closes the current log file, learning its last byte first if it is
    /// only known to be there.
    fn drop_file(&mut self) {
        if self.last_byte_in_file {
            self.last_byte = self.read_last_byte();
            self.last_byte_in_file = false;
        }
        self.file = None;
    }

    /// The last byte of the current file, if it has one.
    fn read_last_byte(&self) -> Option<u8> {
        let file = self.file.as_ref()?;
        let at = self.len.checked_sub(1)?;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).ok()?;
        Some(byte[0])
    }

    /// Records that `bytes` of the stream were lost before reaching this
    /// writer (the queue was full) at `now_ms`; the gap is written before
    /// the next byte that reaches the file.
    pub(crate) fn note_dropped(&mut self, bytes: u64, now_ms: u64) {
        if bytes == 0 {
            return;
        }
        let gap = self.pending_gap.get_or_insert(PendingGap {
            bytes: 0,
            since_ms: now_ms,
            newline_at: None,
        });
        gap.bytes += bytes;
    }

    /// Writes the pending gap's newline (if the stream is mid-line) and its
    /// record, at the current end of the current file.
    fn settle_gap(&mut self) -> io::Result<()> {
        let Some(mut gap) = self.pending_gap else {
            return Ok(());
        };
        if self.last_byte_in_file {
            self.last_byte = self.read_last_byte();
            self.last_byte_in_file = false;
        }
        if gap.newline_at.is_none() && self.last_byte.is_some_and(|b| b != b'\n') {
            let at = self.len;
            let file = self.file.as_mut().expect("make_room opened the file");
            file.write_all(b"\n")?;
            self.len += 1;
            self.last_byte = Some(b'\n');
            gap.newline_at = Some(at);
            self.pending_gap = Some(gap);
        }
        let record = GapRecord {
            unix_ms: gap.since_ms,
            offset: gap.newline_at.unwrap_or(self.len),
            bytes: gap.bytes,
            flags: if gap.newline_at.is_some() {
                NEWLINE_INSERTED
            } else {
                0
            },
        };
        self.gaps.append(record)?;
        self.pending_gap = None;
        Ok(())
    }

    /// Appends `data`, rotating as often as needed; `now_ms` goes into the
    /// time index. A pending gap is recorded first (also when `data` is
    /// empty: that only records it).
    pub(crate) fn write(&mut self, mut data: &[u8], now_ms: u64) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        if self.pending_gap.is_some() {
            // The gap first, so its record precedes the bytes after it.
            let settled = self.make_room(&mut out).and_then(|()| self.settle_gap());
            if let Err(error) = settled {
                self.fail(&mut out, data.len(), "record gap", &error, now_ms);
                return out;
            }
        }
        while !data.is_empty() {
            if let Err(error) = self.make_room(&mut out) {
                self.fail(&mut out, data.len(), "rotate", &error, now_ms);
                return out;
            }
            let room = self.max_file_bytes - self.len;
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.index.note(now_ms, self.len);
            let file = self.file.as_mut().expect("make_room opened the file");
            match file.write(&data[..take]) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    self.fail(&mut out, data.len(), "write", &error, now_ms);
                    return out;
                }
                Ok(n) => {
                    self.last_byte = Some(data[n - 1]);
                    self.last_byte_in_file = false;
                    self.len += n as u64;
                    out.written += n as u64;
                    data = &data[n..];
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.fail(&mut out, data.len(), "write", &error, now_ms);
                    return out;
                }
            }
        }
        self.recovered();
        out
    }

    /// Appends a chunk (see [`Self::write`]).
    pub(crate) fn write_chunk(&mut self, chunk: &Chunk, now_ms: u64) -> WriteOutcome {
        match chunk {
            Chunk::Bytes(bytes) => self.write(bytes, now_ms),
            Chunk::Pipe(pipe) => self.write_pipe(pipe, now_ms),
        }
    }

    /// Splices the bytes in `pipe` into the files, rotating as often as
    /// needed; falls back to reading and writing them where the file
    /// refuses `splice`.
    fn write_pipe(&mut self, pipe: &PipeChunk, now_ms: u64) -> WriteOutcome {
        let mut left = pipe.len();
        // A pending gap is recorded first, as for any write.
        let mut out = self.write(&[], now_ms);
        if self.pending_gap.is_some() {
            out.dropped += left as u64;
            self.note_dropped(left as u64, now_ms);
            return out;
        }
        while left > 0 {
            if let Err(error) = self.make_room(&mut out) {
                self.fail(&mut out, left, "rotate", &error, now_ms);
                return out;
            }
            if !self.splice_ok {
                out.add(self.copy_from_pipe(pipe, left, now_ms));
                return out;
            }
            let room = self.max_file_bytes - self.len;
            let take = left.min(usize::try_from(room).unwrap_or(usize::MAX));
            self.index.note(now_ms, self.len);
            let file = self.file.as_ref().expect("make_room opened the file");
            match splice(
                pipe.reader(),
                None,
                file,
                None,
                take,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    self.fail(&mut out, left, "write", &error, now_ms);
                    return out;
                }
                Ok(n) => {
                    self.len += n as u64;
                    self.last_byte_in_file = true;
                    out.written += n as u64;
                    out.spliced += n as u64;
                    left -= n;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                    tracing::debug!(path = %self.base.display(), "Log file refuses splice; copying instead");
                    self.splice_ok = false;
                }
                Err(errno) => {
                    self.fail(&mut out, left, "write", &errno.into(), now_ms);
                    return out;
                }
            }
        }
        self.recovered();
        out
    }

    /// The copy path for the last `left` bytes of `pipe`.
    fn copy_from_pipe(&mut self, pipe: &PipeChunk, left: usize, now_ms: u64) -> WriteOutcome {
        match pipe.read_rest(left) {
            Ok(bytes) => self.write(&bytes, now_ms),
            Err(error) => {
                let mut out = WriteOutcome::default();
                self.fail(&mut out, left, "read chunk", &error, now_ms);
                out
            }
        }
    }

    fn recovered(&mut self) {
        if let WriterHealth::Failing { dropped } = self.health {
            tracing::info!(path = %self.base.display(), dropped_bytes = dropped, "Log writes recovered");
            self.health = WriterHealth::Healthy;
        }
    }

    /// Ensures an open file with at least one byte of room.
    fn make_room(&mut self, out: &mut WriteOutcome) -> io::Result<()> {
        self.ensure_open()?;
        if self.len < self.max_file_bytes {
            return Ok(());
        }
        self.rotate()?;
        out.rotations += 1;
        self.ensure_open()?;
        if self.len >= self.max_file_bytes {
            // Someone recreated a full file under us; don't spin.
            return Err(io::Error::other("log file still full after rotation"));
        }
        Ok(())
    }

    fn ensure_open(&mut self) -> io::Result<()> {
        self.open_file().map_err(io::Error::other)
    }

    fn open_file(&mut self) -> Result<(), HostFileError> {
        if self.file.is_none() {
            let mut file = open_log(&self.base)?;
            let io_err = |source| HostFileError::Io {
                path: self.base.clone(),
                source,
            };
            self.len = file.metadata().map_err(io_err)?.len();
            file.seek(SeekFrom::End(0)).map_err(io_err)?;
            // Tried on the first chunk; the kernel's refusal (EINVAL for
            // a file in append mode) switches to copying.
            self.splice_ok = true;
            self.file = Some(file);
        }
        Ok(())
    }

    /// Shifts every file up by one number; the current file becomes `.1`.
    fn rotate(&mut self) -> io::Result<()> {
        self.drop_file();
        self.index.close();
        self.gaps.close();
        if let Some(gap) = &mut self.pending_gap {
            // A newline written for it stays in the rotated file; the
            // record goes to the new one.
            gap.newline_at = None;
        }
        if self.max_files == 0 {
            self.pruned += file_len(&self.base);
            remove_if_exists(&index_path(&self.base))?;
            remove_if_exists(&gaps_path(&self.base))?;
            return remove_if_exists(&self.base);
        }
        // Delete the oldest first so that no rename below replaces an
        // existing file: ext4 flushes a file renamed over another one
        // (auto_da_alloc), which would cost a synchronous writeback per
        // rotation.
        let oldest = rotated_path(&self.base, self.max_files);
        remove_if_exists(&index_path(&oldest))?;
        remove_if_exists(&gaps_path(&oldest))?;
        self.pruned += file_len(&oldest);
        remove_if_exists(&oldest)?;
        for n in (1..=self.max_files).rev() {
            let from = rotated_path(&self.base, n - 1);
            let to = rotated_path(&self.base, n);
            if !rename_if_exists(&from, &to)? {
                continue;
            }
            // The index and gap file follow their log; stale ones must not
            // describe the file that replaced it.
            for side in [index_path, gaps_path] {
                remove_if_exists(&side(&to))?;
                rename_if_exists(&side(&from), &side(&to))?;
            }
        }
        Ok(())
    }

    /// Where stream positions start: `(epoch, pruned)`. Positions count
    /// bytes from the start of the oldest file kept when this writer was
    /// opened (`epoch` names that numbering); the oldest file kept now
    /// starts at `pruned`. Read under the sink's writer lock, so it matches
    /// the files a reader opens.
    pub(crate) fn position_base(&self) -> (u64, u64) {
        (self.epoch, self.pruned)
    }

    /// Removes `<name>.log.{k}` and its index for every `k > max_files`.
    fn remove_beyond_limit(&self) {
        let (Some(dir), Some(name)) = (self.base.parent(), self.base.file_name()) else {
            return;
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "Cannot list log directory to prune old rotations");
                return;
            }
        };
        let prefix = format!("{}.", name.to_string_lossy());
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(rest) = file_name.to_str().and_then(|s| s.strip_prefix(&prefix)) else {
                continue;
            };
            let number = rest
                .strip_suffix(super::index::INDEX_SUFFIX)
                .or_else(|| rest.strip_suffix(super::gaps::GAPS_SUFFIX))
                .unwrap_or(rest);
            if number.parse::<u32>().is_ok_and(|k| k > self.max_files)
                && let Err(error) = fs::remove_file(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), %error, "Cannot remove old rotated log");
            }
        }
    }

    /// Drops the rest of a chunk after a failure and closes the file so the
    /// next chunk reopens it.
    fn fail(
        &mut self,
        out: &mut WriteOutcome,
        lost: usize,
        op: &str,
        error: &io::Error,
        now_ms: u64,
    ) {
        self.drop_file();
        out.dropped += lost as u64;
        self.note_dropped(lost as u64, now_ms);
        match &mut self.health {
            WriterHealth::Healthy => {
                tracing::warn!(path = %self.base.display(), op, %error, "Log write failed; dropping output until it recovers");
                self.health = WriterHealth::Failing {
                    dropped: lost as u64,
                };
            }
            WriterHealth::Failing { dropped } => *dropped += lost as u64,
        }
    }
}

/// Opens the log for reading and writing at explicit positions (`splice`
/// refuses append mode; reading lets the writer learn its last byte). A
/// file with the append-only attribute can only be opened in append mode:
/// then it is, and its bytes are copied instead of spliced.
fn open_log(path: &Path) -> Result<File, HostFileError> {
    match open_regular(path, OpenHow::ReadWrite { mode: 0o600 }) {
        Err(HostFileError::Io { source, .. })
            if source.raw_os_error() == Some(Errno::EPERM as i32) =>
        {
            tracing::debug!(path = %path.display(), "Log file is append-only; its output is copied, not spliced");
            open_regular(path, OpenHow::Append { mode: 0o600 })
        }
        other => other,
    }
}

/// Plain I/O failures stay [`LogError::Open`]; refusals are
/// [`LogError::Unsafe`].
fn log_error(e: HostFileError) -> LogError {
    match e {
        HostFileError::Io { path, source } => LogError::Open { path, source },
        refused => LogError::Unsafe { source: refused },
    }
}

/// Renames `from` to `to`; `Ok(false)` if `from` does not exist.
fn rename_if_exists(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Length of the file at `path` (0 if there is none).
fn file_len(path: &Path) -> u64 {
    fs::symlink_metadata(path).map_or(0, |m| m.len())
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn limits(max_file_bytes: u64, max_files: u32) -> LogLimits {
        LogLimits {
            max_file_bytes,
            max_files,
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        fs::read(path).unwrap()
    }

    #[test]
    fn fills_each_file_exactly_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(4, 10)).unwrap();
        let out = w.write(b"0123456789", 1);
        assert_eq!(out.written, 10);
        assert_eq!(out.rotations, 2);
        assert_eq!(read(&rotated_path(&base, 2)), b"0123");
        assert_eq!(read(&rotated_path(&base, 1)), b"4567");
        assert_eq!(read(&base), b"89");
        // A full file is rotated lazily, on the next byte.
        w.write(b"ab", 2);
        assert_eq!(read(&base), b"89ab");
        assert!(!rotated_path(&base, 3).exists());
        w.write(b"c", 3);
        assert_eq!(read(&base), b"c");
        assert_eq!(read(&rotated_path(&base, 3)), b"0123");
        let mode = fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keeps_at_most_max_files_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(2, 2)).unwrap();
        w.write(b"aabbccdde", 1);
        assert_eq!(read(&rotated_path(&base, 2)), b"cc");
        assert_eq!(read(&rotated_path(&base, 1)), b"dd");
        assert_eq!(read(&base), b"e");
        assert!(!rotated_path(&base, 3).exists());
        // Indexes moved with their logs: .2's index points at offset 0 of "cc".
        assert!(index_path(&rotated_path(&base, 2)).exists());
        assert!(!index_path(&rotated_path(&base, 3)).exists());
    }

    #[test]
    fn zero_rotated_files_truncates_instead() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(3, 0)).unwrap();
        let out = w.write(b"abcdefg", 1);
        assert_eq!(out.written, 7);
        assert_eq!(read(&base), b"g");
        assert!(!rotated_path(&base, 1).exists());
    }

    #[test]
    fn reopening_appends_and_prunes_beyond_limit() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(2, 4)).unwrap();
        w.write(b"aabbccddee", 1);
        assert!(rotated_path(&base, 4).exists());
        drop(w);
        let mut w = RotatingWriter::open(base.clone(), limits(2, 2)).unwrap();
        assert!(!rotated_path(&base, 3).exists());
        assert!(!index_path(&rotated_path(&base, 3)).exists());
        assert!(!rotated_path(&base, 4).exists());
        assert_eq!(read(&rotated_path(&base, 2)), b"cc");
        w.write(b"f", 2);
        assert_eq!(read(&base), b"f");
        assert_eq!(read(&rotated_path(&base, 1)), b"ee");
    }

    #[test]
    fn write_failure_drops_bytes_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(4, 1)).unwrap();
        w.write(b"abcd", 1);
        // A non-empty directory where `.1` should go makes the rotation's
        // rename fail, even for root.
        let blocker = rotated_path(&base, 1);
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), b"x").unwrap();
        let out = w.write(b"efgh", 2);
        assert_eq!((out.written, out.dropped), (0, 4));
        fs::remove_dir_all(&blocker).unwrap();
        let out = w.write(b"ijkl", 3);
        assert_eq!((out.written, out.dropped, out.rotations), (4, 0, 2));
        // The gap was recorded where writing resumed, with a newline so
        // "abcd" and "ijk" stay separate lines.
        assert_eq!(read(&rotated_path(&base, 1)), b"\nijk");
        assert_eq!(read(&base), b"l");
        let gaps = super::super::gaps::read_gaps(&rotated_path(&base, 1)).unwrap();
        assert_eq!(
            gaps,
            vec![GapRecord {
                unix_ms: 2,
                offset: 0,
                bytes: 4,
                flags: NEWLINE_INSERTED
            }]
        );
    }

    #[test]
    fn dropped_bytes_become_one_gap_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let mut w = RotatingWriter::open(base.clone(), limits(100, 1)).unwrap();
        w.write(b"ab\n", 1);
        w.note_dropped(3, 5);
        w.note_dropped(4, 6);
        w.write(b"cd", 7);
        // Mid-line now: the next gap gets a newline.
        w.note_dropped(2, 8);
        w.write(b"ef\n", 9);
        assert_eq!(read(&base), b"ab\ncd\nef\n");
        let gaps = super::super::gaps::read_gaps(&base).unwrap();
        let got: Vec<_> = gaps
            .iter()
            .map(|g| (g.unix_ms, g.offset, g.bytes, g.newline_inserted()))
            .collect();
        assert_eq!(got, vec![(5, 3, 7, false), (8, 5, 2, true)]);
        // Reopening learns the last byte: a gap right away needs no newline.
        drop(w);
        let mut w = RotatingWriter::open(base.clone(), limits(100, 1)).unwrap();
        w.note_dropped(1, 10);
        w.write(b"g", 11);
        assert_eq!(super::super::gaps::read_gaps(&base).unwrap()[2].flags, 0);
        // And a file that ends mid-line gets the newline after a reopen.
        drop(w);
        let mut w = RotatingWriter::open(base.clone(), limits(100, 1)).unwrap();
        w.note_dropped(1, 12);
        w.write(b"h", 13);
        assert_eq!(read(&base), b"ab\ncd\nef\ng\nh");
        let gaps = super::super::gaps::read_gaps(&base).unwrap();
        assert_eq!((gaps[3].offset, gaps[3].flags), (10, NEWLINE_INSERTED));
    }
}
