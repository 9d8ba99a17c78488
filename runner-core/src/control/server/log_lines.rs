//! Turning log bytes into `logs` response entries that fit one control frame.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use runner_types::control::{LogEntry, LogFormat, LogSource};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{GuestRole, LogStream};

/// Bytes of a `logs` frame left for entries once the envelope
/// (`{"op":"logs","payload":{"entries":[...],"truncated":false,"warnings":[...]}}`)
/// is counted, with room to spare for a few warnings.
pub const LINES_BUDGET: usize = MAX_CONTROL_FRAME - 4096;

/// Where an entry comes from and how it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Which guest.
    pub role: GuestRole,
    /// Which stream.
    pub stream: LogStream,
    /// How the runner captured it.
    pub source: LogSource,
    /// The request's format (`base64` adds the exact bytes).
    pub format: LogFormat,
}

/// Encodes one line; `timestamp` is RFC 3339 where known.
pub fn encode_line(meta: EntryMeta, bytes: &[u8], timestamp: Option<String>) -> LogEntry {
    LogEntry {
        timestamp,
        source: meta.source,
        role: meta.role,
        stream: meta.stream,
        message: String::from_utf8_lossy(bytes).into_owned(),
        data_base64: (meta.format == LogFormat::Base64).then(|| STANDARD.encode(bytes)),
    }
}

/// JSON size of a line inside the `lines` array, comma included: counted
/// while serialising, without building the text.
pub fn line_wire_len(line: &LogEntry) -> usize {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, line).map_or(usize::MAX, |()| counter.0 + 1)
}

/// A writer that only counts what it is given.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the newest lines of `lines` (oldest first) whose JSON fits in
/// `budget` bytes; returns them oldest first and whether any were dropped.
pub fn keep_newest(lines: Vec<LogEntry>, budget: usize) -> (Vec<LogEntry>, bool) {
    let mut used = 0usize;
    let mut keep = lines.len();
    for (i, line) in lines.iter().enumerate().rev() {
        let len = line_wire_len(line);
        if used + len > budget {
            break;
        }
        used += len;
        keep = i;
    }
    let truncated = keep > 0;
    let mut lines = lines;
    (lines.split_off(keep), truncated)
}

/// Splits lines (oldest first) into batches that each fit `budget`, keeping
/// order; a single line over the budget is cut to fit.
pub fn batches(lines: Vec<LogEntry>, budget: usize) -> Vec<Vec<LogEntry>> {
    let mut out: Vec<Vec<LogEntry>> = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0usize;
    for mut line in lines {
        let mut len = line_wire_len(&line);
        if len > budget {
            // Text grows by at most 6x when escaped; cut generously, then check.
            // The exact bytes, if carried, are cut the same way (base64
            // stays valid when cut at a multiple of 4).
            let mut cut = budget / 14;
            while !line.message.is_char_boundary(cut) {
                cut -= 1;
            }
            line.message.truncate(cut);
            if let Some(b64) = &mut line.data_base64 {
                b64.truncate((budget / 14) / 4 * 4);
            }
            len = line_wire_len(&line);
        }
        if used + len > budget && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        used += len;
        cur.push(line);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(format: LogFormat) -> EntryMeta {
        EntryMeta {
            role: GuestRole::Runtime,
            stream: LogStream::Stdout,
            source: LogSource::ProcessFile,
            format,
        }
    }

    fn line(s: &str) -> LogEntry {
        encode_line(meta(LogFormat::Text), s.as_bytes(), None)
    }

    #[test]
    fn wire_len_is_the_serialised_length_plus_a_comma() {
        for text in [
            "",
            "plain",
            "quote \" backslash \\ tab \t",
            "\u{1}\u{7f} é ☃",
        ] {
            let entry = line(text);
            let json = serde_json::to_vec(&entry).unwrap();
            assert_eq!(line_wire_len(&entry), json.len() + 1, "{text:?}");
        }
    }

    #[test]
    fn keeps_the_newest_lines_that_fit() {
        let lines: Vec<_> = (0..100).map(|i| line(&format!("line {i}"))).collect();
        let one = line_wire_len(&lines[99]);
        let (kept, truncated) = keep_newest(lines.clone(), one * 3);
        assert!(truncated);
        assert_eq!(kept.last().unwrap().message, "line 99");
        assert!(kept.len() <= 3 && !kept.is_empty());
        let (all, truncated) = keep_newest(lines, usize::MAX / 2);
        assert!(!truncated);
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn base64_is_byte_exact_and_text_is_lossy() {
        let raw = b"a\xffb";
        let b = encode_line(meta(LogFormat::Base64), raw, None);
        assert_eq!(STANDARD.decode(b.data_base64.unwrap()).unwrap(), raw);
        assert_eq!(b.message, "a\u{fffd}b");
        for format in [LogFormat::Text, LogFormat::Json] {
            let t = encode_line(meta(format), raw, Some("t".into()));
            assert_eq!(t.message, "a\u{fffd}b");
            assert_eq!((t.data_base64, t.timestamp.as_deref()), (None, Some("t")));
        }
    }

    #[test]
    fn batches_fit_and_keep_order() {
        let lines: Vec<_> = (0..50).map(|i| line(&format!("{i:04}"))).collect();
        let budget = line_wire_len(&lines[0]) * 7;
        let b = batches(lines, budget);
        assert!(
            b.iter()
                .all(|b| b.iter().map(line_wire_len).sum::<usize>() <= budget)
        );
        let flat: Vec<_> = b.into_iter().flatten().map(|l| l.message).collect();
        assert_eq!(flat.first().unwrap(), "0000");
        assert_eq!(flat.len(), 50);
        let huge = vec![line(&"x".repeat(10_000))];
        let b = batches(huge, 1000);
        assert!(line_wire_len(&b[0][0]) <= 1000);
        let huge = vec![encode_line(meta(LogFormat::Base64), &[0xff; 10_000], None)];
        let b = batches(huge, 1000);
        assert!(line_wire_len(&b[0][0]) <= 1000);
    }
}
