//! The `logs` op: a one-shot answer (the newest lines, or with `after` the
//! oldest lines after a cursor), or a follow stream (see `follow.rs`).
//! Every answer carries a cursor: where its lines end in each stream.

use super::ServerContext;
use super::cursor::StreamCursors;
use super::follow::follow;
use super::handler::{Flow, Handler};
use super::log_lines::{EntryMeta, LINES_BUDGET, encode_line, keep_newest, line_wire_len};
use crate::clock::unix_ms_now;
use crate::control::since::{SinceError, since_ms};
use crate::logs::{LinesAfter, LogCursor, LogQuery, LogSink, Loss};
use runner_types::control::{
    DEFAULT_LOG_TAIL, LogEntry, LogFormat, LogSource, LogsRequest, LogsResponse, MAX_LOG_TAIL,
};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{ControlErrorCode, ControlResponse, GuestRole, LogStream};

/// Answers a `logs` request; a follow ends the connection when it ends.
pub(super) async fn answer(h: &mut Handler, req: LogsRequest) -> Flow {
    let sinks = selected(&h.ctx, &req);
    let checked = check(&req, &sinks).and_then(|after| {
        let q = query(&req, sinks.len()).map_err(|e| e.to_string())?;
        Ok((after, q))
    });
    let (after, q) = match checked {
        Ok(v) => v,
        Err(msg) => {
            let flow = h
                .reply(Handler::error(ControlErrorCode::InvalidRequest, msg))
                .await;
            return if req.follow { Flow::Close } else { flow };
        }
    };
    if req.follow {
        follow(h, &req, &sinks, q, after).await;
        return Flow::Close;
    }
    let resp = match after {
        Some(after) => one_shot_after(&h.ctx, &req, &sinks, &after).await,
        None => one_shot(&h.ctx, &req, &sinks, q).await,
    };
    h.reply(resp).await
}

/// Checks `tail` and parses `after` (which must cover every selected stream).
fn check(req: &LogsRequest, sinks: &[LogSink]) -> Result<Option<StreamCursors>, String> {
    if let Some(n) = req.tail.filter(|n| *n > MAX_LOG_TAIL) {
        return Err(format!("tail {n} is over the limit of {MAX_LOG_TAIL}"));
    }
    let Some(after) = &req.after else {
        return Ok(None);
    };
    let after = StreamCursors::parse(after).map_err(|e| e.to_string())?;
    if let Some(s) = sinks
        .iter()
        .find(|s| after.get(s.role(), s.stream()).is_none())
    {
        return Err(format!(
            "after has no position for {}; select the streams it was issued for",
            name(s)
        ));
    }
    Ok(Some(after))
}

/// The log query a request asks for, or why its `since` is unusable.
fn query(req: &LogsRequest, files: usize) -> Result<LogQuery, SinceError> {
    let q = LogQuery::tail(req.tail.unwrap_or(DEFAULT_LOG_TAIL))
        .max_bytes(MAX_CONTROL_FRAME / files.max(1));
    Ok(match &req.since {
        Some(s) => q.since(since_ms(s, unix_ms_now())?),
        None => q,
    })
}

/// The sinks a request selects, in the session's order.
fn selected(ctx: &ServerContext, req: &LogsRequest) -> Vec<LogSink> {
    ctx.logs
        .iter()
        .filter(|s| {
            req.role.roles().contains(&s.role()) && req.stream.streams().contains(&s.stream())
        })
        .cloned()
        .collect()
}

/// How every entry of this answer is labelled and encoded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Labels {
    source: LogSource,
    format: LogFormat,
}

impl Labels {
    pub(super) fn new(ctx: &ServerContext, req: &LogsRequest) -> Self {
        Self {
            source: LogSource::for_tier(ctx.health.borrow().sandbox_tier),
            format: req.format,
        }
    }

    pub(super) fn meta(self, role: GuestRole, stream: LogStream) -> EntryMeta {
        EntryMeta {
            role,
            stream,
            source: self.source,
            format: self.format,
        }
    }
}

/// `<role label>.<stream>`, for messages.
pub(super) fn name(sink: &LogSink) -> String {
    format!("{}.{}", sink.role().label(), sink.stream())
}

/// The newest matching lines that fit in one frame. A file that cannot be
/// read becomes a warning; the other files are still answered.
async fn one_shot(
    ctx: &ServerContext,
    req: &LogsRequest,
    sinks: &[LogSink],
    q: LogQuery,
) -> ControlResponse {
    let labels = Labels::new(ctx, req);
    let (mut lines, mut warnings) = (Vec::new(), Vec::new());
    let mut truncated = false;
    let mut cursors = StreamCursors::default();
    for sink in sinks {
        let read = match sink.backlog(false).await {
            Ok((backlog, _)) => backlog.query(q).await.map(|r| (r, backlog.end())),
            Err(e) => Err(e),
        };
        match read {
            Ok((read, end)) => {
                truncated |= read.truncated;
                cursors.set(sink.role(), sink.stream(), end);
                let m = labels.meta(sink.role(), sink.stream());
                lines.extend(read.lines.iter().map(|l| encode_line(m, l, None)));
            }
            Err(e) => warnings.push(format!("Cannot read {}: {e}", name(sink))),
        }
    }
    if !sinks.is_empty() && warnings.len() == sinks.len() {
        return Handler::error(ControlErrorCode::Internal, warnings.join("; "));
    }
    let (entries, cut) = keep_newest(lines, LINES_BUDGET);
    let cursor = (warnings.is_empty()).then(|| cursors.encode());
    logs_frame(entries, truncated || cut, warnings, cursor, None)
}

/// The oldest complete lines after `after` in each stream, as many as fit
/// one frame (at most `tail` per stream). Raw bytes are read in sixteenths
/// of the frame budget: escaped JSON grows a line at most about 7.4 times,
/// so the first line read always fits and a reader always makes progress.
async fn one_shot_after(
    ctx: &ServerContext,
    req: &LogsRequest,
    sinks: &[LogSink],
    after: &StreamCursors,
) -> ControlResponse {
    let labels = Labels::new(ctx, req);
    let max_lines = req.tail.unwrap_or(DEFAULT_LOG_TAIL) as usize;
    let mut page = Page::new(after.clone());
    for sink in sinks {
        let from = after.get(sink.role(), sink.stream()).unwrap_or_default();
        match sink.read_after(from, max_lines, page.budget / 16).await {
            Ok(read) => page.add(sink, labels.meta(sink.role(), sink.stream()), read),
            Err(e) => {
                page.failed += 1;
                page.warnings
                    .push(format!("Cannot read {}: {e}", name(sink)));
            }
        }
    }
    if !sinks.is_empty() && page.failed == sinks.len() {
        return Handler::error(ControlErrorCode::Internal, page.warnings.join("; "));
    }
    page.into_frame()
}

/// One frame of lines read forward, being filled.
pub(super) struct Page {
    pub(super) entries: Vec<LogEntry>,
    pub(super) cursors: StreamCursors,
    pub(super) warnings: Vec<String>,
    pub(super) lost: Option<u64>,
    pub(super) truncated: bool,
    /// JSON bytes left for entries.
    pub(super) budget: usize,
    /// Streams that could not be read.
    pub(super) failed: usize,
}

impl Page {
    pub(super) fn new(cursors: StreamCursors) -> Self {
        Self {
            entries: Vec::new(),
            cursors,
            warnings: Vec::new(),
            lost: None,
            truncated: false,
            budget: LINES_BUDGET,
            failed: 0,
        }
    }

    /// Adds the lines of `read` that fit, oldest first, and moves the
    /// stream's cursor to the end of the last one taken.
    pub(super) fn add(&mut self, sink: &LogSink, meta: EntryMeta, read: LinesAfter) {
        self.note_loss(sink, read.loss);
        let mut at = read.from;
        let mut cut = false;
        for (line, end) in &read.lines {
            let entry = encode_line(meta, line, None);
            let len = line_wire_len(&entry);
            if len > self.budget {
                cut = true;
                break;
            }
            self.budget -= len;
            self.entries.push(entry);
            at = *end;
        }
        self.truncated |= cut || read.more;
        self.cursors.set(sink.role(), sink.stream(), at);
    }

    fn note_loss(&mut self, sink: &LogSink, loss: Loss) {
        let text = match loss {
            Loss::None => return,
            Loss::Bytes(n) => {
                self.lost = Some(self.lost.unwrap_or(0) + n);
                format!("{n} bytes")
            }
            Loss::Unknown => {
                "an unknown number of bytes (the cursor is from an earlier run)".to_owned()
            }
        };
        self.warnings.push(format!(
            "{}: {text} after the cursor were rotated away; resumed at the oldest kept",
            name(sink)
        ));
    }

    pub(super) fn into_frame(self) -> ControlResponse {
        let cursor = Some(self.cursors.encode());
        logs_frame(
            self.entries,
            self.truncated,
            self.warnings,
            cursor,
            self.lost,
        )
    }
}

/// A `logs` frame.
pub(super) fn logs_frame(
    entries: Vec<LogEntry>,
    truncated: bool,
    warnings: Vec<String>,
    cursor: Option<String>,
    lost_bytes: Option<u64>,
) -> ControlResponse {
    ControlResponse::Logs(LogsResponse {
        entries,
        truncated,
        warnings,
        cursor,
        lost_bytes,
    })
}

/// Where `cursor` stands for `sink` (a default if absent).
pub(super) fn start_of(after: &StreamCursors, sink: &LogSink) -> LogCursor {
    after.get(sink.role(), sink.stream()).unwrap_or_default()
}
