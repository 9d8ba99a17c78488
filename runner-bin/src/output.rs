//! How `runner-bin logs` prints what the daemon sends.
//!
//! - `--json`: one JSON object per response frame, in the shape this CLI has
//!   always printed (`{"lines":[{"role","stream","data"}],"truncated"}`),
//!   whatever the wire shape; bytes unchanged.
//! - A terminal: control characters other than tab are shown escaped
//!   (`\x1b`), so a guest cannot move the cursor, retitle the window or
//!   write to the operator's clipboard through its logs.
//! - Anything else (a pipe, a file): the text unchanged.

use runner_types::control::LogsResponse;
use runner_types::{GuestRole, LogStream};
use serde::Serialize;
use std::io::Write;

/// Where the output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON lines.
    Json,
    /// A terminal: escape control characters.
    Terminal,
    /// A pipe or file: unchanged.
    Raw,
}

/// The `--json` line shape.
#[derive(Serialize)]
struct JsonChunk<'a> {
    lines: Vec<JsonLine<'a>>,
    truncated: bool,
    /// Where these lines end (for `--after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    /// Bytes rotated away after the request's `--after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_bytes: Option<u64>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    role: GuestRole,
    stream: LogStream,
    data: &'a str,
}

/// Writes one response frame.
pub fn write_chunk(
    out: &mut impl Write,
    chunk: &LogsResponse,
    prefix: bool,
    mode: Mode,
) -> std::io::Result<()> {
    if mode == Mode::Json {
        let view = JsonChunk {
            lines: chunk
                .entries
                .iter()
                .map(|e| JsonLine {
                    role: e.role,
                    stream: e.stream,
                    data: &e.message,
                })
                .collect(),
            truncated: chunk.truncated,
            cursor: chunk.cursor.as_deref(),
            lost_bytes: chunk.lost_bytes,
        };
        let line = serde_json::to_string(&view).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")?;
        return out.flush();
    }
    for w in &chunk.warnings {
        writeln!(out, "[runner: {}]", shown(w, mode))?;
    }
    if chunk.truncated {
        writeln!(out, "[runner: some lines were left out]")?;
    }
    for e in &chunk.entries {
        let text = shown(&e.message, mode);
        if prefix {
            writeln!(out, "[{}/{}] {text}", e.role, e.stream)?;
        } else {
            writeln!(out, "{text}")?;
        }
    }
    out.flush()
}

/// `text` as it may be shown in `mode`.
fn shown(text: &str, mode: Mode) -> std::borrow::Cow<'_, str> {
    if mode != Mode::Terminal || !text.chars().any(is_escaped) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_escaped(c) {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// C0 controls except tab, DEL, and the C1 controls (U+0080..U+009F, which
/// some terminals act on as well).
fn is_escaped(c: char) -> bool {
    (c.is_control() && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_types::control::{LogEntry, LogSource};

    fn chunk(message: &str) -> LogsResponse {
        LogsResponse {
            entries: vec![LogEntry {
                timestamp: Some("2026-11-30T07:40:00Z".into()),
                source: LogSource::ProcessFile,
                role: GuestRole::Runtime,
                stream: LogStream::Stdout,
                message: message.into(),
                data_base64: None,
            }],
            truncated: false,
            warnings: vec![],
            cursor: None,
            lost_bytes: None,
        }
    }

    fn render(c: &LogsResponse, prefix: bool, mode: Mode) -> String {
        let mut out = Vec::new();
        write_chunk(&mut out, c, prefix, mode).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn terminal_escapes_controls_and_pipes_do_not() {
        let c = chunk("red \x1b[31mX\x07\tend\u{9b}");
        assert_eq!(
            render(&c, false, Mode::Terminal),
            "red \\x1b[31mX\\x07\tend\\x9b\n"
        );
        assert_eq!(
            render(&c, false, Mode::Raw),
            "red \x1b[31mX\x07\tend\u{9b}\n"
        );
        assert_eq!(
            render(&chunk("plain"), true, Mode::Terminal),
            "[runtime/stdout] plain\n"
        );
    }

    #[test]
    fn json_keeps_the_cli_shape_and_the_bytes() {
        let c = chunk("a\x1bb");
        assert_eq!(
            render(&c, true, Mode::Json),
            "{\"lines\":[{\"role\":\"runtime\",\"stream\":\"stdout\",\"data\":\"a\\u001bb\"}],\"truncated\":false}\n"
        );
    }
}
