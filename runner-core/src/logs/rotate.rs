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
//! This writer is synchronous; the pump calls it from its own task or from
//! the blocking pool. It never fails a write back to its caller: a failed
//! write or rotation drops the rest of the chunk, is logged once per failure
//! streak, and the next chunk tries again (reopening the file).

use super::LogError;
use super::index::{IndexWriter, index_path};
use crate::config::LogLimits;
use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use std::fs::{self, File};
use std::io::{self, Write};
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
    health: WriterHealth,
}

impl RotatingWriter {
    /// Opens (or creates, mode 0600) `base` for appending and removes
    /// rotated files numbered beyond `limits.max_files` (left over from a
    /// run with a larger limit). The log and an existing index must be
    /// regular files (see [`open_regular`]).
    pub(crate) fn open(base: PathBuf, limits: LogLimits) -> Result<Self, LogError> {
        let mut writer = Self {
            index: IndexWriter::new(index_path(&base)),
            base,
            // Validated config has both > 0; a zero cap would never make room.
            max_file_bytes: limits.max_file_bytes.max(1),
            max_files: limits.max_files,
            file: None,
            len: 0,
            health: WriterHealth::Healthy,
        };
        writer.open_file().map_err(log_error)?;
        writer.index.open_existing().map_err(log_error)?;
        writer.remove_beyond_limit();
        Ok(writer)
    }

    /// Appends `data`, rotating as often as needed; `now_ms` goes into the
    /// time index.
    pub(crate) fn write(&mut self, mut data: &[u8], now_ms: u64) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        while !data.is_empty() {
            if let Err(error) = self.make_room(&mut out) {
                self.fail(&mut out, data.len(), "rotate", &error);
                return out;
            }
            let room = self.max_file_bytes - self.len;
            let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.index.note(now_ms, self.len);
            let file = self.file.as_mut().expect("make_room opened the file");
            match file.write(&data[..take]) {
                Ok(0) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    self.fail(&mut out, data.len(), "write", &error);
                    return out;
                }
                Ok(n) => {
                    self.len += n as u64;
                    out.written += n as u64;
                    data = &data[n..];
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.fail(&mut out, data.len(), "write", &error);
                    return out;
                }
            }
        }
        if let WriterHealth::Failing { dropped } = self.health {
            tracing::info!(path = %self.base.display(), dropped_bytes = dropped, "Log writes recovered");
            self.health = WriterHealth::Healthy;
        }
        out
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
            let file = open_regular(&self.base, OpenHow::Append { mode: 0o600 })?;
            self.len = file
                .metadata()
                .map_err(|source| HostFileError::Io {
                    path: self.base.clone(),
                    source,
                })?
                .len();
            self.file = Some(file);
        }
        Ok(())
    }

    /// Shifts every file up by one number; the current file becomes `.1`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        self.index.close();
        if self.max_files == 0 {
            remove_if_exists(&index_path(&self.base))?;
            return remove_if_exists(&self.base);
        }
        // Delete the oldest first so that no rename below replaces an
        // existing file: ext4 flushes a file renamed over another one
        // (auto_da_alloc), which would cost a synchronous writeback per
        // rotation.
        let oldest = rotated_path(&self.base, self.max_files);
        remove_if_exists(&index_path(&oldest))?;
        remove_if_exists(&oldest)?;
        for n in (1..=self.max_files).rev() {
            let from = rotated_path(&self.base, n - 1);
            let to = rotated_path(&self.base, n);
            if !rename_if_exists(&from, &to)? {
                continue;
            }
            // The index follows its log; a stale index must not describe
            // the file that replaced it.
            remove_if_exists(&index_path(&to))?;
            rename_if_exists(&index_path(&from), &index_path(&to))?;
        }
        Ok(())
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
    fn fail(&mut self, out: &mut WriteOutcome, lost: usize, op: &str, error: &io::Error) {
        self.file = None;
        out.dropped += lost as u64;
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
        assert_eq!((out.written, out.dropped, out.rotations), (4, 0, 1));
        assert_eq!(read(&rotated_path(&base, 1)), b"abcd");
        assert_eq!(read(&base), b"ijkl");
    }
}
