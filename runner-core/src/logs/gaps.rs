//! The gap record kept beside each log file: where output was lost, how
//! much, and when.
//!
//! Bytes are lost when the sink's write queue is full (the disk stalls) or
//! a write fails (ENOSPC, EIO). The loss is not hidden: it is counted
//! ([`super::SinkStats::bytes_dropped`]) and, once the writer can write
//! again, recorded in `<log file>.gaps` (for example
//! `oxydra-vm.stdout.log.gaps`; renamed and deleted together with its log
//! file, like the time index). The file is a flat sequence of 32-byte
//! records, no header:
//!
//! ```text
//! offset 0   u64 big-endian   unix_ms: wall-clock time the first lost byte was read, ms since the Unix epoch
//! offset 8   u64 big-endian   offset:  byte offset in the companion log file where the lost bytes belong
//! offset 16  u64 big-endian   bytes:   how many bytes of the guest's output are missing there
//! offset 24  u64 big-endian   flags:   bit 0 (NEWLINE_INSERTED): the byte at `offset` is a `\n` the
//!                                      runner wrote, not the guest; other bits are zero
//! ```
//!
//! What readers see: the log file holds the guest's bytes in order, minus
//! the lost ones. A gap never glues two lines together: when the bytes
//! before a gap do not end with `\n`, the writer first writes one `\n` at
//! the gap's offset (and sets `NEWLINE_INSERTED`), so the line cut by the
//! gap ends there and the output after the gap starts a new line (which may
//! be the tail of a line whose start was lost). Line readers need not look
//! at this file; byte-exact consumers subtract the inserted newlines.
//!
//! A record is written before the first byte that follows its gap, so a
//! record always describes bytes already in the file. Loss that is still
//! ongoing (the disk is still full) is only counted until writing resumes.
//! A trailing partial record (a torn write) is ignored by readers and cut
//! off by the writer when it reopens the file.

use super::index::open_for_append;
use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Suffix appended to a log file's name to name its gap file.
pub const GAPS_SUFFIX: &str = ".gaps";

/// Size of one gap record in bytes.
pub const GAP_RECORD_LEN: u64 = 32;

/// Flag bit: the runner wrote a `\n` at the gap's offset.
pub const NEWLINE_INSERTED: u64 = 1;

/// Path of the gap file that belongs to `log_path`.
pub fn gaps_path(log_path: &Path) -> PathBuf {
    super::index::with_suffix(log_path, GAPS_SUFFIX)
}

/// One gap record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapRecord {
    /// When the first lost byte was read, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Offset in the log file where the lost bytes belong.
    pub offset: u64,
    /// Bytes lost.
    pub bytes: u64,
    /// Flag bits ([`NEWLINE_INSERTED`]).
    pub flags: u64,
}

impl GapRecord {
    /// Whether the runner wrote a `\n` at [`Self::offset`].
    pub fn newline_inserted(&self) -> bool {
        self.flags & NEWLINE_INSERTED != 0
    }

    /// The record's on-disk bytes.
    pub fn encode(self) -> [u8; GAP_RECORD_LEN as usize] {
        let mut out = [0u8; GAP_RECORD_LEN as usize];
        for (i, v) in [self.unix_ms, self.offset, self.bytes, self.flags]
            .into_iter()
            .enumerate()
        {
            out[i * 8..(i + 1) * 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Parses on-disk bytes.
    pub fn decode(bytes: [u8; GAP_RECORD_LEN as usize]) -> Self {
        let field =
            |i: usize| u64::from_be_bytes(bytes[i * 8..(i + 1) * 8].try_into().expect("8 bytes"));
        Self {
            unix_ms: field(0),
            offset: field(1),
            bytes: field(2),
            flags: field(3),
        }
    }
}

/// Reads every whole record of the gap file of `log_path` (none if the
/// file does not exist). Blocking.
pub fn read_gaps(log_path: &Path) -> Result<Vec<GapRecord>, HostFileError> {
    let path = gaps_path(log_path);
    let mut file = match open_regular(&path, OpenHow::Read) {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| HostFileError::Io { path, source })?;
    Ok(bytes
        .chunks_exact(GAP_RECORD_LEN as usize)
        .map(|c| GapRecord::decode(c.try_into().expect("whole record")))
        .collect())
}

/// Appends gap records for one log file.
#[derive(Debug)]
pub(crate) struct GapWriter {
    path: PathBuf,
    file: Option<File>,
}

impl GapWriter {
    /// A writer for the gap file at `path`; opened on first use.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Opens the gap file now if it exists, refusing a symlink, FIFO or
    /// other non-regular file.
    pub(crate) fn open_existing(&mut self) -> Result<(), HostFileError> {
        match open_for_append(&self.path, OpenHow::AppendExisting, GAP_RECORD_LEN) {
            Ok(file) => {
                self.file = Some(file);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Appends `record`, creating the file (mode 0600) if needed.
    pub(crate) fn append(&mut self, record: GapRecord) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                open_for_append(&self.path, OpenHow::Append { mode: 0o600 }, GAP_RECORD_LEN)
                    .map_err(io::Error::other)?,
            ),
        };
        let result = file.write_all(&record.encode());
        if result.is_err() {
            // Reopen next time; the reopen cuts off a torn record.
            self.file = None;
        }
        result
    }

    /// Closes the file (its log is being rotated).
    pub(crate) fn close(&mut self) {
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_torn_tail_is_cut() {
        let r = GapRecord {
            unix_ms: 0x0102_0304_0506_0708,
            offset: 9,
            bytes: 77,
            flags: NEWLINE_INSERTED,
        };
        let bytes = r.encode();
        assert_eq!(&bytes[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(GapRecord::decode(bytes), r);
        assert!(r.newline_inserted());

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.stdout.log");
        let mut w = GapWriter::new(gaps_path(&log));
        w.append(r).unwrap();
        drop(w);
        std::fs::OpenOptions::new()
            .append(true)
            .open(gaps_path(&log))
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        assert_eq!(read_gaps(&log).unwrap(), vec![r]);
        let mut w = GapWriter::new(gaps_path(&log));
        w.open_existing().unwrap();
        w.append(GapRecord { flags: 0, ..r }).unwrap();
        let got = read_gaps(&log).unwrap();
        assert_eq!(got.len(), 2);
        assert!(!got[1].newline_inserted());
    }
}
