//! The time index kept beside each log file, so "lines since T" can seek
//! instead of scanning bytes that carry no timestamps.
//!
//! Format of `<log file>.idx` (for example `oxydra-vm.stdout.log.idx`, and
//! `oxydra-vm.stdout.log.1.idx` after rotation — an index is renamed and
//! deleted together with its log file): a flat sequence of 16-byte records,
//! no header,
//!
//! ```text
//! offset 0   u64 big-endian   unix_ms: wall-clock time of the write, ms since the Unix epoch
//! offset 8   u64 big-endian   offset:  byte offset in the companion log file where that write began
//! ```
//!
//! A record is appended when a chunk is written and no record was appended
//! in the previous [`INDEX_INTERVAL_MS`] (the first write after the file is
//! opened or rotated always gets one). Records are therefore in file order,
//! and every byte between a record's offset and the next record's offset was
//! written less than [`INDEX_INTERVAL_MS`] after that record's time. A
//! trailing partial record (a torn write) is ignored by readers and cut off
//! by the writer when it reopens the file.

use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Suffix appended to a log file's name to name its index.
pub const INDEX_SUFFIX: &str = ".idx";

/// At most one index record per this many milliseconds; also the precision
/// of "since" queries (they may return lines up to this much older).
pub const INDEX_INTERVAL_MS: u64 = 50;

/// Size of one record in bytes.
pub const RECORD_LEN: u64 = 16;

/// Path of the index that belongs to `log_path`.
pub fn index_path(log_path: &Path) -> PathBuf {
    with_suffix(log_path, INDEX_SUFFIX)
}

/// `log_path` with `suffix` appended to its file name (the files that
/// belong to a log: its index, its gap record).
pub(super) fn with_suffix(log_path: &Path, suffix: &str) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// One index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRecord {
    /// When the write happened, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Where in the log file the write began.
    pub offset: u64,
}

impl IndexRecord {
    /// The record's on-disk bytes.
    pub fn encode(self) -> [u8; RECORD_LEN as usize] {
        let mut out = [0u8; RECORD_LEN as usize];
        out[..8].copy_from_slice(&self.unix_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    /// Parses on-disk bytes.
    pub fn decode(bytes: [u8; RECORD_LEN as usize]) -> Self {
        let (ms, off) = bytes.split_at(8);
        Self {
            unix_ms: u64::from_be_bytes(ms.try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(off.try_into().expect("8 bytes")),
        }
    }
}

/// Appends records for one log file, at most one per [`INDEX_INTERVAL_MS`].
#[derive(Debug)]
pub(crate) struct IndexWriter {
    path: PathBuf,
    file: Option<File>,
    last_ms: Option<u64>,
    failing: bool,
}

impl IndexWriter {
    /// A writer for the index at `path`; the file is opened on first use.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            last_ms: None,
            failing: false,
        }
    }

    /// Opens the index now if it exists, refusing a symlink, FIFO or other
    /// non-regular file (a missing one is created on first use).
    pub(crate) fn open_existing(&mut self) -> Result<(), HostFileError> {
        match open_for_append(&self.path, OpenHow::AppendExisting, RECORD_LEN) {
            Ok(file) => {
                self.file = Some(file);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Records that a write starting at `offset` happens at `now_ms`, if the
    /// previous record is old enough. Failures are logged, never returned:
    /// a missing record only makes "since" queries less precise.
    pub(crate) fn note(&mut self, now_ms: u64, offset: u64) {
        if self
            .last_ms
            .is_some_and(|last| now_ms < last.saturating_add(INDEX_INTERVAL_MS))
        {
            return;
        }
        let record = IndexRecord {
            unix_ms: now_ms,
            offset,
        };
        match self.append(record) {
            Ok(()) => {
                self.last_ms = Some(now_ms);
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %self.path.display(), "Log index writes recovered");
                }
            }
            Err(error) => {
                // Reopen next time; the reopen cuts off any torn record.
                self.file = None;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(path = %self.path.display(), %error, "Cannot write log index; since-queries lose precision");
                }
            }
        }
    }

    /// Closes the file but remembers the last record (the log is idle; the
    /// next note reopens it).
    pub(crate) fn release(&mut self) {
        self.file = None;
    }

    /// Closes the file and forgets the last record (the log file is being
    /// rotated; the next write starts a fresh index).
    pub(crate) fn close(&mut self) {
        self.file = None;
        self.last_ms = None;
    }

    fn append(&mut self, record: IndexRecord) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                open_for_append(&self.path, OpenHow::Append { mode: 0o600 }, RECORD_LEN)
                    .map_err(io::Error::other)?,
            ),
        };
        file.write_all(&record.encode())
    }
}

/// Opens a file of `record_len`-byte records (an index, a gap file) for
/// appending (only ever a regular file, see [`open_regular`]), cutting off
/// a torn trailing record.
pub(super) fn open_for_append(
    path: &Path,
    how: OpenHow,
    record_len: u64,
) -> Result<File, HostFileError> {
    let file = open_regular(path, how)?;
    let io_err = |source| HostFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io_err)?.len();
    if len % record_len != 0 {
        file.set_len(len - len % record_len).map_err(io_err)?;
    }
    Ok(file)
}

/// Reads record `i` of an index file.
fn read_record(file: &File, i: u64) -> io::Result<IndexRecord> {
    let mut buf = [0u8; RECORD_LEN as usize];
    file.read_exact_at(&mut buf, i * RECORD_LEN)?;
    Ok(IndexRecord::decode(buf))
}

/// Offset of the first write recorded after `threshold_ms` among the first
/// `records` records of `file` (0 if that is the first record), or `None`
/// if every record is at or before it. Binary search, so it reads O(log n)
/// records.
pub(crate) fn first_offset_after(
    file: &File,
    records: u64,
    threshold_ms: u64,
) -> io::Result<Option<u64>> {
    let (mut lo, mut hi) = (0u64, records);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read_record(file, mid)?.unix_ms > threshold_ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    match lo {
        _ if lo == records => Ok(None),
        // Bytes before the first record have no known time: keep them.
        0 => Ok(Some(0)),
        _ => Ok(Some(read_record(file, lo)?.offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_index(path: &Path, records: &[(u64, u64)]) {
        let mut bytes = Vec::new();
        for &(unix_ms, offset) in records {
            bytes.extend_from_slice(&IndexRecord { unix_ms, offset }.encode());
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn record_round_trips_big_endian() {
        let r = IndexRecord {
            unix_ms: 0x0102_0304_0506_0708,
            offset: 42,
        };
        let bytes = r.encode();
        assert_eq!(&bytes[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[8..], &42u64.to_be_bytes());
        assert_eq!(IndexRecord::decode(bytes), r);
    }

    #[test]
    fn index_path_appends_suffix() {
        assert_eq!(
            index_path(Path::new("/l/a.stdout.log.2")),
            PathBuf::from("/l/a.stdout.log.2.idx")
        );
    }

    #[test]
    fn writer_coalesces_within_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        let mut w = IndexWriter::new(path.clone());
        w.note(1000, 0);
        w.note(1000 + INDEX_INTERVAL_MS - 1, 10);
        w.note(1000 + INDEX_INTERVAL_MS, 20);
        w.close();
        w.note(1000 + INDEX_INTERVAL_MS + 1, 30);
        let bytes = std::fs::read(&path).unwrap();
        let recs: Vec<_> = bytes
            .chunks_exact(16)
            .map(|c| IndexRecord::decode(c.try_into().unwrap()))
            .map(|r| (r.unix_ms, r.offset))
            .collect();
        assert_eq!(recs, vec![(1000, 0), (1050, 20), (1051, 30)]);
    }

    #[test]
    fn reopen_cuts_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        write_index(&path, &[(5, 0)]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let mut w = IndexWriter::new(path.clone());
        w.note(100, 7);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        let f = File::open(&path).unwrap();
        assert_eq!(read_record(&f, 1).unwrap().offset, 7);
    }

    #[test]
    fn lookup_finds_first_record_after_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        write_index(&path, &[(100, 0), (200, 10), (300, 20), (400, 30)]);
        let f = File::open(&path).unwrap();
        assert_eq!(first_offset_after(&f, 4, 0).unwrap(), Some(0));
        assert_eq!(first_offset_after(&f, 4, 100).unwrap(), Some(10));
        assert_eq!(first_offset_after(&f, 4, 250).unwrap(), Some(20));
        assert_eq!(first_offset_after(&f, 4, 399).unwrap(), Some(30));
        assert_eq!(first_offset_after(&f, 4, 400).unwrap(), None);
        // Only the snapshot's records count.
        assert_eq!(first_offset_after(&f, 2, 250).unwrap(), None);
        assert_eq!(first_offset_after(&f, 0, 0).unwrap(), None);
    }

    #[test]
    fn bytes_before_the_first_record_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        write_index(&path, &[(100, 40), (200, 50)]);
        let f = File::open(&path).unwrap();
        assert_eq!(first_offset_after(&f, 2, 99).unwrap(), Some(0));
        assert_eq!(first_offset_after(&f, 2, 100).unwrap(), Some(50));
    }
}
