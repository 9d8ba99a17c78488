//! Reading lines back from a log and its rotations: the last N lines, or
//! the lines written since a time, within a byte budget; or the lines after
//! a [`LogCursor`], a stream position that survives rotation.
//!
//! Positions count bytes of the stream from the start of the oldest file
//! kept when the sink was opened; a cursor also names that numbering (its
//! `epoch`), so a cursor from another run of the runner is recognised and
//! never taken for a position in this one. Bytes rotated away after a
//! cursor are reported as [`Loss`], never skipped silently.
//!
//! The files `.log.{k}` … `.log.1` `.log` are read as one stream (a line cut
//! by rotation is one line). Tail reads backwards in blocks from the end;
//! "since" finds its starting offset through the time indexes and then reads
//! backwards to it, so neither reads more than the answer plus one block.

use super::LogError;
use super::index::{INDEX_INTERVAL_MS, RECORD_LEN, first_offset_after, index_path};
use super::rotate::rotated_path;
use crate::workspace::file::{OpenHow, open_regular};
use runner_types::control::MAX_LOG_TAIL;
use runner_types::{GuestRole, LogStream};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default [`LogQuery::max_bytes`].
pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

/// Backwards scan block.
const BLOCK: usize = 64 * 1024;

/// Attempts at a consistent snapshot while a writer may be rotating.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// What lines to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    /// At most this many lines, the newest ones (capped at
    /// [`MAX_LOG_TAIL`]).
    pub tail: u32,
    /// Only lines completed (newline written) at or after this time, ms
    /// since the Unix epoch, and the final line without newline if any of
    /// it was written since. Never misses such a line, but may also return
    /// lines completed up to [`INDEX_INTERVAL_MS`] earlier (the index's
    /// precision).
    pub since_ms: Option<u64>,
    /// At most this many line bytes in total (newlines not counted); older
    /// lines that do not fit are left out and [`LogLines::truncated`] set.
    pub max_bytes: usize,
}

impl LogQuery {
    /// The last `n` lines, within [`DEFAULT_MAX_BYTES`].
    pub fn tail(n: u32) -> Self {
        Self {
            tail: n,
            since_ms: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Restricts to lines written at or after `unix_ms`.
    pub fn since(self, unix_ms: u64) -> Self {
        Self {
            since_ms: Some(unix_ms),
            ..self
        }
    }

    /// Sets the byte budget.
    pub fn max_bytes(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }
}

/// Lines read from a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogLines {
    /// Raw line bytes without the `\n`, oldest first. A final line that has
    /// no newline yet is included.
    pub lines: Vec<Vec<u8>>,
    /// Matching lines were left out to stay within the byte budget.
    pub truncated: bool,
}

/// A position in a log stream (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LogCursor {
    /// Which numbering: fixed when the sink was opened.
    pub epoch: u64,
    /// Bytes from the start of that numbering.
    pub pos: u64,
}

/// Bytes after a cursor that are no longer kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Nothing was lost.
    None,
    /// This many bytes were rotated away; reading resumed at the oldest
    /// byte kept.
    Bytes(u64),
    /// The cursor is from another numbering (another run): how much was
    /// lost is unknown; reading resumed at the oldest byte kept.
    Unknown,
}

/// Complete lines read forward from a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinesAfter {
    /// Lines without their `\n`, oldest first, each with the position just
    /// after it (after its newline; a line longer than the byte budget is
    /// returned in pieces, each ending where the next begins).
    pub lines: Vec<(Vec<u8>, LogCursor)>,
    /// Where reading started (the requested cursor, or the oldest byte
    /// kept after a loss).
    pub from: LogCursor,
    /// Where to continue: after the last line returned.
    pub next: LogCursor,
    /// Bytes after the requested cursor that were no longer kept.
    pub loss: Loss,
    /// More complete lines follow `next` (a final line without newline
    /// does not count: it is returned once complete).
    pub more: bool,
}

/// A fresh numbering for a sink being opened: the time in microseconds.
pub(crate) fn new_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Reads lines of `role`'s `stream` from `logs_dir` without a [`super::LogSink`]
/// (for example after the session ended). Safe against a concurrent writer:
/// it retries when a rotation moves files under it.
pub async fn read_log_files(
    logs_dir: &Path,
    role: GuestRole,
    stream: LogStream,
    query: LogQuery,
) -> Result<LogLines, LogError> {
    let base = logs_dir.join(stream.file_name(role));
    let path = base.clone();
    tokio::task::spawn_blocking(move || Snapshot::open_verified(&base)?.query(&query))
        .await
        .map_err(|source| LogError::ReaderTask { path, source })?
}

/// One file of a snapshot.
#[derive(Debug)]
struct SnapFile {
    path: PathBuf,
    file: File,
    /// Length when the snapshot was taken; later bytes are ignored.
    len: u64,
    /// Index file and its record count at snapshot time.
    index: Option<(File, u64)>,
    mtime_ms: u64,
}

/// Open handles on a log's files, oldest first, fixed at one instant:
/// rotations after it do not disturb the read.
#[derive(Debug)]
pub(crate) struct Snapshot {
    files: Vec<SnapFile>,
    /// Stream offset where each file starts.
    starts: Vec<u64>,
    total: u64,
    /// The numbering of positions, and the position of offset 0.
    epoch: u64,
    base: u64,
}

impl Snapshot {
    /// Opens `base` and its rotations `.1`, `.2`, ... up to the first
    /// missing number. Consistent when no rotation runs concurrently (the
    /// caller holds the writer's lock).
    pub(crate) fn open(base: &Path) -> Result<Self, LogError> {
        let mut files = Vec::new();
        for n in 0.. {
            let path = rotated_path(base, n);
            match open_snap_file(&path) {
                Ok(Some(f)) => files.push(f),
                // A missing current file just means nothing was written.
                Ok(None) if n == 0 => {}
                Ok(None) => break,
                Err(source) => return Err(LogError::Open { path, source }),
            }
        }
        // Empty files add nothing and would make offsets ambiguous.
        files.retain(|f| f.len > 0);
        files.reverse();
        let mut starts = Vec::with_capacity(files.len());
        let mut total = 0;
        for f in &files {
            starts.push(total);
            total += f.len;
        }
        Ok(Self {
            files,
            starts,
            total,
            epoch: 0,
            base: 0,
        })
    }

    /// Sets where this snapshot's offset 0 is in the stream's numbering.
    pub(crate) fn positioned(self, epoch: u64, base: u64) -> Self {
        Self {
            epoch,
            base,
            ..self
        }
    }

    fn cursor_at(&self, offset: u64) -> LogCursor {
        LogCursor {
            epoch: self.epoch,
            pos: self.base + offset,
        }
    }

    /// The offset `from` names in this snapshot, and what was lost before it.
    fn resolve(&self, from: LogCursor) -> (u64, Loss) {
        if from.epoch != self.epoch || from.pos > self.base + self.total {
            (0, Loss::Unknown)
        } else if from.pos < self.base {
            (0, Loss::Bytes(self.base - from.pos))
        } else {
            (from.pos - self.base, Loss::None)
        }
    }

    /// Up to `max_lines` complete lines after `from`, within `max_bytes` of
    /// line bytes (a longer line comes in pieces of `max_bytes`).
    pub(crate) fn lines_after(
        &self,
        from: LogCursor,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<LinesAfter, LogError> {
        let (start, loss) = self.resolve(from);
        let (ranges, more) = self.scan_forward(start, max_lines.max(1), max_bytes.max(1) as u64)?;
        let mut lines = Vec::with_capacity(ranges.len());
        let mut next = start;
        for (begin, end, after) in ranges {
            let mut line = vec![0; (end - begin) as usize];
            self.read_exact_at(begin, &mut line)?;
            lines.push((line, self.cursor_at(after)));
            next = after;
        }
        Ok(LinesAfter {
            lines,
            from: self.cursor_at(start),
            next: self.cursor_at(next),
            loss,
            more,
        })
    }

    /// The bytes from `from` to the snapshot's end (a final line without
    /// newline, after [`Self::lines_after`] returned all the rest).
    pub(crate) fn tail_bytes(&self, from: LogCursor) -> Result<Vec<u8>, LogError> {
        let (start, _) = self.resolve(from);
        let mut bytes = vec![0; (self.total - start) as usize];
        self.read_exact_at(start, &mut bytes)?;
        Ok(bytes)
    }

    /// The position just after the snapshot's last byte.
    pub(crate) fn end(&self) -> LogCursor {
        self.cursor_at(self.total)
    }

    /// Line ranges `(start, end without newline, next)` from `start`,
    /// reading forward in blocks; and whether more complete lines follow.
    fn scan_forward(
        &self,
        start: u64,
        max_lines: usize,
        mut budget: u64,
    ) -> Result<(Vec<LineRange>, bool), LogError> {
        let mut out = Vec::new();
        let mut line_start = start;
        let mut pos = start;
        let mut block = vec![0u8; BLOCK];
        while pos < self.total {
            let n = (self.total - pos).min(BLOCK as u64) as usize;
            self.read_exact_at(pos, &mut block[..n])?;
            let mut from = 0;
            while let Some(i) = block[from..n].iter().position(|&b| b == b'\n') {
                let newline = pos + (from + i) as u64;
                if newline - line_start > budget {
                    return Ok(cut(out, line_start, budget));
                }
                budget -= newline - line_start;
                out.push((line_start, newline, newline + 1));
                line_start = newline + 1;
                if out.len() == max_lines {
                    return Ok((out, line_start < self.total));
                }
                from += i + 1;
            }
            pos += n as u64;
            if pos - line_start > budget {
                return Ok(cut(out, line_start, budget));
            }
        }
        Ok((out, false))
    }

    /// Like [`Self::open`], but re-checks that every path still names the
    /// file it opened (a rotation renames them) and retries if not.
    pub(crate) fn open_verified(base: &Path) -> Result<Self, LogError> {
        let mut snapshot = Self::open(base)?;
        for _ in 1..SNAPSHOT_ATTEMPTS {
            if snapshot.still_current(base) {
                break;
            }
            snapshot = Self::open(base)?;
        }
        Ok(snapshot)
    }

    fn still_current(&self, base: &Path) -> bool {
        let same = |f: &SnapFile| match (std::fs::metadata(&f.path), f.file.metadata()) {
            (Ok(now), Ok(then)) => now.dev() == then.dev() && now.ino() == then.ino(),
            _ => false,
        };
        let next = rotated_path(base, self.files.len() as u32);
        self.files.iter().all(same) && !next.exists()
    }

    /// Answers `query` from this snapshot.
    pub(crate) fn query(&self, query: &LogQuery) -> Result<LogLines, LogError> {
        let floor = match query.since_ms {
            Some(since) => self.since_offset(since)?,
            None => 0,
        };
        let (bounds, truncated) = self.scan_back(query, floor)?;
        let mut lines = Vec::with_capacity(bounds.len());
        for &(start, end) in bounds.iter().rev() {
            let mut line = vec![0; (end - start) as usize];
            self.read_exact_at(start, &mut line)?;
            lines.push(line);
        }
        Ok(LogLines { lines, truncated })
    }

    /// Stream offset of the first byte that may have been written at or
    /// after `since` (the stream's end if none).
    fn since_offset(&self, since: u64) -> Result<u64, LogError> {
        let threshold = since.saturating_sub(INDEX_INTERVAL_MS);
        for (f, &start) in self.files.iter().zip(&self.starts) {
            let found = match &f.index {
                Some((index, records)) if *records > 0 => {
                    first_offset_after(index, *records, threshold).map_err(|source| {
                        LogError::Read {
                            path: index_path(&f.path),
                            source,
                        }
                    })?
                }
                // No index: all we know is when the file last changed.
                _ => (f.mtime_ms > threshold).then_some(0),
            };
            if let Some(offset) = found {
                return Ok(start + offset.min(f.len));
            }
        }
        Ok(self.total)
    }

    /// Finds the lines to return, newest first, as `[start, end)` stream
    /// ranges, reading backwards in blocks. A line is included if its end
    /// (its newline, or the stream's end) is at or after `floor`.
    fn scan_back(&self, query: &LogQuery, floor: u64) -> Result<(Vec<(u64, u64)>, bool), LogError> {
        let want = query.tail.min(MAX_LOG_TAIL) as usize;
        let mut lines = Vec::new();
        if self.total == 0 || want == 0 || floor >= self.total {
            return Ok((lines, false));
        }
        let mut last = [0u8];
        self.read_exact_at(self.total - 1, &mut last)?;
        // The final newline ends the last line; it does not start a new one.
        let mut line_end = self.total - u64::from(last[0] == b'\n');
        let mut budget = query.max_bytes as u64;
        let mut pos = line_end;
        let mut block = vec![0u8; BLOCK];
        loop {
            if line_end < floor {
                return Ok((lines, false));
            }
            if pos == 0 {
                if line_end > budget {
                    return Ok((lines, true));
                }
                lines.push((0, line_end));
                return Ok((lines, false));
            }
            let block_start = pos.saturating_sub(BLOCK as u64);
            let buf = &mut block[..(pos - block_start) as usize];
            self.read_exact_at(block_start, buf)?;
            let mut search = &buf[..];
            while let Some(i) = search.iter().rposition(|&b| b == b'\n') {
                let newline = block_start + i as u64;
                let len = line_end - newline - 1;
                if len > budget {
                    return Ok((lines, true));
                }
                budget -= len;
                lines.push((newline + 1, line_end));
                if lines.len() == want {
                    return Ok((lines, false));
                }
                line_end = newline;
                if line_end < floor {
                    return Ok((lines, false));
                }
                search = &search[..i];
            }
            pos = block_start;
            if line_end - pos > budget {
                // The line being scanned is already too long to fit.
                return Ok((lines, true));
            }
        }
    }

    /// Reads exactly `buf.len()` bytes at stream offset `pos`.
    fn read_exact_at(&self, mut pos: u64, mut buf: &mut [u8]) -> Result<(), LogError> {
        while !buf.is_empty() {
            let i = self.starts.partition_point(|&s| s <= pos) - 1;
            let f = &self.files[i];
            let within = pos - self.starts[i];
            let n = buf.len().min((f.len - within) as usize);
            f.file
                .read_exact_at(&mut buf[..n], within)
                .map_err(|source| LogError::Read {
                    path: f.path.clone(),
                    source,
                })?;
            pos += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// A line found by a forward scan: `(start, end without newline, next)`.
type LineRange = (u64, u64, u64);

/// Ends a forward scan at a line longer than what is left of the budget:
/// if nothing was taken yet, its first `budget` bytes become a piece.
fn cut(mut out: Vec<LineRange>, line_start: u64, budget: u64) -> (Vec<LineRange>, bool) {
    if out.is_empty() {
        out.push((line_start, line_start + budget, line_start + budget));
    }
    (out, true)
}

impl super::LogSink {
    /// Up to `max_lines` complete lines after `from`, within `max_bytes`
    /// of line bytes, with the position after each (`logs` with `after`).
    /// Runs on a blocking task.
    pub async fn read_after(
        &self,
        from: LogCursor,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<LinesAfter, LogError> {
        let sink = self.clone();
        tokio::task::spawn_blocking(move || {
            let (snapshot, _) = sink.locked_snapshot(false)?;
            snapshot.lines_after(from, max_lines, max_bytes)
        })
        .await
        .map_err(|source| LogError::ReaderTask {
            path: self.path().to_path_buf(),
            source,
        })?
    }

    /// The log as it is now ([`LogBacklog`], to read at leisure), and with
    /// `subscribe` the live feed from exactly its end: together, the stream
    /// without gap or overlap.
    pub async fn backlog(
        &self,
        subscribe: bool,
    ) -> Result<
        (
            LogBacklog,
            Option<tokio::sync::broadcast::Receiver<bytes::Bytes>>,
        ),
        LogError,
    > {
        let sink = self.clone();
        let (snapshot, live) = tokio::task::spawn_blocking(move || sink.locked_snapshot(subscribe))
            .await
            .map_err(|source| LogError::ReaderTask {
                path: self.path().to_path_buf(),
                source,
            })??;
        let backlog = LogBacklog {
            snapshot: std::sync::Arc::new(snapshot),
            path: self.path().to_path_buf(),
        };
        Ok((backlog, live))
    }
}

/// A log's files fixed at one instant (see [`super::LogSink::backlog`]);
/// rotations after it do not disturb reading it.
#[derive(Debug, Clone)]
pub struct LogBacklog {
    snapshot: std::sync::Arc<Snapshot>,
    path: PathBuf,
}

impl LogBacklog {
    /// The position where the live feed begins.
    pub fn end(&self) -> LogCursor {
        self.snapshot.end()
    }

    /// Answers `query` (see [`super::LogSink::read`]) from this backlog.
    pub async fn query(&self, query: LogQuery) -> Result<LogLines, LogError> {
        let snapshot = self.snapshot.clone();
        self.blocking(move || snapshot.query(&query)).await
    }

    /// As [`super::LogSink::read_after`], within this backlog.
    pub async fn lines_after(
        &self,
        from: LogCursor,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<LinesAfter, LogError> {
        let snapshot = self.snapshot.clone();
        self.blocking(move || snapshot.lines_after(from, max_lines, max_bytes))
            .await
    }

    /// The bytes from `from` to the end (the start of a line the live feed
    /// will finish).
    pub async fn tail_bytes(&self, from: LogCursor) -> Result<Vec<u8>, LogError> {
        let snapshot = self.snapshot.clone();
        self.blocking(move || snapshot.tail_bytes(from)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|source| LogError::ReaderTask {
                path: self.path.clone(),
                source,
            })?
    }
}

/// Opens one log file and its index; `None` if the log does not exist.
fn open_snap_file(path: &Path) -> io::Result<Option<SnapFile>> {
    let file = match open_regular(path, OpenHow::Read) {
        Ok(file) => file,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    };
    let meta = file.metadata()?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let index = match open_regular(&index_path(path), OpenHow::Read) {
        Ok(index) => {
            let records = index.metadata()?.len() / RECORD_LEN;
            Some((index, records))
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(io::Error::other(e)),
    };
    Ok(Some(SnapFile {
        path: path.to_path_buf(),
        file,
        len: meta.len(),
        index,
        mtime_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogLimits;
    use crate::logs::rotate::RotatingWriter;

    struct Log {
        _dir: tempfile::TempDir,
        base: PathBuf,
        writer: RotatingWriter,
    }

    fn log(max_file_bytes: u64, max_files: u32) -> Log {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("a.stdout.log");
        let limits = LogLimits {
            max_file_bytes,
            max_files,
        };
        let writer = RotatingWriter::open(base.clone(), limits).unwrap();
        Log {
            _dir: dir,
            base,
            writer,
        }
    }

    impl Log {
        fn query(&self, q: LogQuery) -> LogLines {
            Snapshot::open(&self.base).unwrap().query(&q).unwrap()
        }
    }

    fn lines(v: &[&[u8]]) -> Vec<Vec<u8>> {
        v.iter().map(|l| l.to_vec()).collect()
    }

    #[test]
    fn empty_or_missing_log_has_no_lines() {
        let l = log(100, 2);
        assert_eq!(l.query(LogQuery::tail(10)), LogLines::default());
        std::fs::remove_file(&l.base).unwrap();
        assert_eq!(l.query(LogQuery::tail(10)), LogLines::default());
    }

    #[test]
    fn tail_counts_a_final_partial_line() {
        let mut l = log(1000, 2);
        l.writer.write(b"one\ntwo\n\nfour\xff\xfe", 1);
        let got = l.query(LogQuery::tail(3));
        assert_eq!(got.lines, lines(&[b"two", b"", b"four\xff\xfe"]));
        assert!(!got.truncated);
        l.writer.write(b"\n", 2);
        let got = l.query(LogQuery::tail(10));
        assert_eq!(got.lines, lines(&[b"one", b"two", b"", b"four\xff\xfe"]));
        assert_eq!(l.query(LogQuery::tail(0)), LogLines::default());
    }

    #[test]
    fn only_newlines_are_empty_lines() {
        let mut l = log(1000, 2);
        l.writer.write(b"\n\n", 1);
        assert_eq!(l.query(LogQuery::tail(10)).lines, lines(&[b"", b""]));
    }

    #[test]
    fn tail_joins_lines_cut_by_rotation() {
        let mut l = log(4, 5);
        l.writer.write(b"abcdef\nghijklmnop\nq", 1);
        assert!(rotated_path(&l.base, 4).exists());
        let got = l.query(LogQuery::tail(10));
        assert_eq!(got.lines, lines(&[b"abcdef", b"ghijklmnop", b"q"]));
    }

    #[test]
    fn tail_spans_many_blocks() {
        let mut l = log(50_000, 10);
        let mut data = Vec::new();
        for i in 0..20_000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        l.writer.write(&data, 1);
        let got = l.query(LogQuery::tail(1000).max_bytes(usize::MAX));
        assert_eq!(got.lines.len(), 1000);
        assert_eq!(got.lines[0], b"line 19000");
        assert_eq!(got.lines[999], b"line 19999");
        assert!(!got.truncated);
        // More than MAX_LOG_TAIL is capped.
        assert_eq!(l.query(LogQuery::tail(5000)).lines.len(), 1000);
    }

    #[test]
    fn budget_keeps_newest_whole_lines() {
        let mut l = log(1000, 2);
        l.writer.write(b"aaaa\nbbbb\ncccc\n", 1);
        let got = l.query(LogQuery::tail(10).max_bytes(9));
        assert_eq!(got.lines, lines(&[b"bbbb", b"cccc"]));
        assert!(got.truncated);
        let got = l.query(LogQuery::tail(10).max_bytes(3));
        assert_eq!(got.lines, Vec::<Vec<u8>>::new());
        assert!(got.truncated);
        let got = l.query(LogQuery::tail(10).max_bytes(12));
        assert_eq!(got.lines.len(), 3);
        assert!(!got.truncated);
    }

    #[test]
    fn budget_stops_scanning_a_huge_line() {
        let mut l = log(1 << 20, 2);
        let mut data = b"x\n".to_vec();
        data.extend(std::iter::repeat_n(b'y', 300_000));
        data.extend_from_slice(b"\nlast");
        l.writer.write(&data, 1);
        let got = l.query(LogQuery::tail(10).max_bytes(1000));
        assert_eq!(got.lines, lines(&[b"last"]));
        assert!(got.truncated);
    }

    #[test]
    fn since_uses_the_index_across_rotations() {
        let mut l = log(10, 3);
        l.writer.write(b"old1\nold2\n", 1_000);
        l.writer.write(b"mid\n", 2_000);
        // Same interval as the previous write: no new record, same segment.
        l.writer.write(b"mid2\n", 2_010);
        l.writer.write(b"new1\nnew2", 3_000);
        let since = |t| l.query(LogQuery::tail(100).since(t)).lines;
        assert_eq!(
            since(0),
            lines(&[b"old1", b"old2", b"mid", b"mid2", b"new1", b"new2"])
        );
        assert_eq!(since(2_000), lines(&[b"mid", b"mid2", b"new1", b"new2"]));
        assert_eq!(since(2_040), lines(&[b"mid", b"mid2", b"new1", b"new2"]));
        assert_eq!(since(2_051), lines(&[b"new1", b"new2"]));
        assert_eq!(since(3_049), lines(&[b"new1", b"new2"]));
        assert_eq!(since(3_051), Vec::<Vec<u8>>::new());
        // Combined with tail: the newest of those.
        let got = l.query(LogQuery::tail(1).since(2_000)).lines;
        assert_eq!(got, lines(&[b"new2"]));
    }

    #[test]
    fn since_includes_a_line_finished_after_the_time() {
        let mut l = log(1000, 2);
        l.writer.write(b"before\nhalf", 1_000);
        l.writer.write(b"-done\nafter\n", 2_000);
        let got = l.query(LogQuery::tail(100).since(2_000)).lines;
        assert_eq!(got, lines(&[b"half-done", b"after"]));
    }

    #[test]
    fn since_without_index_falls_back_to_mtime() {
        let mut l = log(1000, 2);
        l.writer.write(b"a\nb\n", 1_000);
        std::fs::remove_file(index_path(&l.base)).unwrap();
        assert_eq!(l.query(LogQuery::tail(10).since(1)).lines.len(), 2);
        assert!(l.query(LogQuery::tail(10).since(u64::MAX)).lines.is_empty());
    }

    #[test]
    fn snapshot_ignores_bytes_written_after_it() {
        let mut l = log(4, 3);
        l.writer.write(b"ab\ncd\n", 1);
        let snap = Snapshot::open_verified(&l.base).unwrap();
        l.writer.write(b"ef\ngh\n", 2);
        let got = snap.query(&LogQuery::tail(10)).unwrap();
        assert_eq!(got.lines, lines(&[b"ab", b"cd"]));
    }

    impl Log {
        fn positioned(&self) -> Snapshot {
            let (epoch, base) = self.writer.position_base();
            Snapshot::open(&self.base).unwrap().positioned(epoch, base)
        }
    }

    fn texts(read: &LinesAfter) -> Vec<Vec<u8>> {
        read.lines.iter().map(|(l, _)| l.clone()).collect()
    }

    #[test]
    fn a_cursor_resumes_exactly_across_rotations() {
        let mut l = log(8, 50);
        let origin = l.positioned().cursor_at(0);
        let mut seen = Vec::new();
        let mut cursor = origin;
        let mut written = Vec::new();
        for round in 0..20u32 {
            let chunk = format!("line {round}\nhalf-");
            written.extend_from_slice(chunk.as_bytes());
            l.writer.write(chunk.as_bytes(), u64::from(round));
            // Read in small pages, each resuming at the last cursor.
            loop {
                let read = l.positioned().lines_after(cursor, 2, 1 << 20).unwrap();
                assert_eq!(read.loss, Loss::None);
                assert_eq!(read.from, cursor);
                seen.extend(texts(&read));
                cursor = read.next;
                if !read.more {
                    break;
                }
            }
        }
        assert!(rotated_path(&l.base, 10).exists(), "rotated many times");
        // Every complete line exactly once, in order; the unfinished one
        // ("half-") is not returned until it is complete.
        let expected: Vec<Vec<u8>> = written
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
            .to_vec();
        assert_eq!(seen, expected);
        assert_eq!(cursor.pos, (written.len() - "half-".len()) as u64);
        let snap = l.positioned();
        assert_eq!(snap.tail_bytes(cursor).unwrap(), b"half-");
        assert_eq!(snap.end().pos, written.len() as u64);
    }

    #[test]
    fn a_rotated_away_cursor_reports_the_bytes_lost() {
        let mut l = log(10, 2);
        l.writer.write(b"0123456789abcdefghi\n", 1);
        let early = l.positioned().cursor_at(3);
        // 3 files of 10 bytes are kept; write enough to push the first out.
        for _ in 0..5 {
            l.writer.write(b"xxxxxxxxx\n", 2);
        }
        let snap = l.positioned();
        let (_, pruned) = l.writer.position_base();
        assert!(pruned > 3, "the cursor's file is gone");
        let read = snap.lines_after(early, 100, 1 << 20).unwrap();
        assert_eq!(read.loss, Loss::Bytes(pruned - 3));
        assert_eq!(read.from.pos, pruned);
        let total: u64 = read.lines.iter().map(|(l, _)| l.len() as u64 + 1).sum();
        assert_eq!(pruned + total, 20 + 50, "what is kept is read whole");
        // A cursor of another numbering: resumed at the start, amount unknown.
        let foreign = LogCursor {
            epoch: early.epoch + 1,
            pos: 0,
        };
        assert_eq!(
            snap.lines_after(foreign, 100, 1 << 20).unwrap().loss,
            Loss::Unknown
        );
    }

    #[test]
    fn a_line_over_the_budget_comes_in_pieces() {
        let mut l = log(1000, 2);
        l.writer.write(b"abcdefghij\nk\n", 1);
        let snap = l.positioned();
        let first = snap.lines_after(snap.cursor_at(0), 10, 4).unwrap();
        assert_eq!(texts(&first), vec![b"abcd".to_vec()]);
        assert!(first.more);
        let mut cursor = first.next;
        let mut rest = Vec::new();
        loop {
            let read = snap.lines_after(cursor, 10, 4).unwrap();
            rest.extend(texts(&read));
            cursor = read.next;
            if !read.more {
                break;
            }
        }
        assert_eq!(rest, vec![b"efgh".to_vec(), b"ij".to_vec(), b"k".to_vec()]);
    }
}
