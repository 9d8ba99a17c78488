//! Turning log bytes into `logs` response lines that fit one control frame.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use runner_types::control::{LogFormat, LogLine};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{GuestRole, LogStream};

/// Bytes of a `logs` frame left for lines once the envelope
/// (`{"op":"logs","payload":{"lines":[...],"truncated":false}}`) is counted,
/// with room to spare.
pub const LINES_BUDGET: usize = MAX_CONTROL_FRAME - 1024;

/// Encodes one line as the request's format says.
pub fn encode_line(role: GuestRole, stream: LogStream, bytes: &[u8], format: LogFormat) -> LogLine {
    let data = match format {
        LogFormat::Text => String::from_utf8_lossy(bytes).into_owned(),
        LogFormat::Base64 => STANDARD.encode(bytes),
    };
    LogLine { role, stream, data }
}

/// JSON size of a line inside the `lines` array, comma included.
pub fn line_wire_len(line: &LogLine) -> usize {
    serde_json::to_vec(line).map_or(usize::MAX, |v| v.len() + 1)
}

/// Keeps the newest lines of `lines` (oldest first) whose JSON fits in
/// `budget` bytes; returns them oldest first and whether any were dropped.
pub fn keep_newest(lines: Vec<LogLine>, budget: usize) -> (Vec<LogLine>, bool) {
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
pub fn batches(lines: Vec<LogLine>, budget: usize) -> Vec<Vec<LogLine>> {
    let mut out: Vec<Vec<LogLine>> = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0usize;
    for mut line in lines {
        let mut len = line_wire_len(&line);
        if len > budget {
            // Text grows by at most 6x when escaped; cut generously, then check.
            let mut cut = budget / 7;
            while !line.data.is_char_boundary(cut) {
                cut -= 1;
            }
            line.data.truncate(cut);
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

    fn line(s: &str) -> LogLine {
        encode_line(
            GuestRole::Runtime,
            LogStream::Stdout,
            s.as_bytes(),
            LogFormat::Text,
        )
    }

    #[test]
    fn keeps_the_newest_lines_that_fit() {
        let lines: Vec<_> = (0..100).map(|i| line(&format!("line {i}"))).collect();
        let one = line_wire_len(&lines[99]);
        let (kept, truncated) = keep_newest(lines.clone(), one * 3);
        assert!(truncated);
        assert_eq!(kept.last().unwrap().data, "line 99");
        assert!(kept.len() <= 3 && !kept.is_empty());
        let (all, truncated) = keep_newest(lines, usize::MAX / 2);
        assert!(!truncated);
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn base64_is_byte_exact_and_text_is_lossy() {
        let raw = b"a\xffb";
        let b = encode_line(
            GuestRole::Sidecar,
            LogStream::Stderr,
            raw,
            LogFormat::Base64,
        );
        assert_eq!(STANDARD.decode(b.data).unwrap(), raw);
        let t = encode_line(GuestRole::Sidecar, LogStream::Stderr, raw, LogFormat::Text);
        assert_eq!(t.data, "a\u{fffd}b");
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
        let flat: Vec<_> = b.into_iter().flatten().map(|l| l.data).collect();
        assert_eq!(flat.first().unwrap(), "0000");
        assert_eq!(flat.len(), 50);
        let huge = vec![line(&"x".repeat(10_000))];
        let b = batches(huge, 1000);
        assert!(line_wire_len(&b[0][0]) <= 1000);
    }
}
