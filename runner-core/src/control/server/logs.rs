//! The `logs` op: a one-shot answer, or a follow stream of new lines.

use super::handler::{Flow, Handler};
use super::log_lines::{EntryMeta, LINES_BUDGET, batches, encode_line, keep_newest};
use super::{ServerContext, now_ms};
use crate::control::since::{SinceError, rfc3339_ms, since_ms};
use crate::logs::{LineSplitter, LogQuery, LogSink};
use futures::StreamExt;
use runner_types::control::{
    DEFAULT_LOG_TAIL, LogEntry, LogFormat, LogSource, LogsRequest, LogsResponse, MAX_LOG_TAIL,
};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{ControlErrorCode, ControlResponse, GuestRole, LogStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// Longest line a follower is sent in one piece.
const FOLLOW_MAX_LINE: usize = 16 * 1024;
/// Feed chunks queued between the sinks' forwarders and one follower.
const FEED_QUEUE: usize = 64;

/// Answers a `logs` request; a follow ends the connection when it ends.
pub(super) async fn answer(h: &mut Handler, req: LogsRequest) -> Flow {
    if let Some(n) = req.tail.filter(|n| *n > MAX_LOG_TAIL) {
        let msg = format!("tail {n} is over the limit of {MAX_LOG_TAIL}");
        return h
            .reply(Handler::error(ControlErrorCode::InvalidRequest, msg))
            .await;
    }
    let sinks = selected(&h.ctx, &req);
    let q = match query(&req, sinks.len()) {
        Ok(q) => q,
        Err(e) => {
            let err = Handler::error(ControlErrorCode::InvalidRequest, e.to_string());
            let flow = h.reply(err).await;
            return if req.follow { Flow::Close } else { flow };
        }
    };
    if req.follow {
        follow(h, &req, &sinks, q).await;
        return Flow::Close;
    }
    let resp = one_shot(&h.ctx, &req, &sinks, q).await;
    h.reply(resp).await
}

/// The log query a request asks for, or why its `since` is unusable.
fn query(req: &LogsRequest, files: usize) -> Result<LogQuery, SinceError> {
    let q = LogQuery::tail(req.tail.unwrap_or(DEFAULT_LOG_TAIL))
        .max_bytes(MAX_CONTROL_FRAME / files.max(1));
    Ok(match &req.since {
        Some(s) => q.since(since_ms(s, now_ms())?),
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
struct Labels {
    source: LogSource,
    format: LogFormat,
}

impl Labels {
    fn new(ctx: &ServerContext, req: &LogsRequest) -> Self {
        Self {
            source: LogSource::for_tier(ctx.health.borrow().sandbox_tier),
            format: req.format,
        }
    }

    fn meta(self, role: GuestRole, stream: LogStream) -> EntryMeta {
        EntryMeta {
            role,
            stream,
            source: self.source,
            format: self.format,
        }
    }
}

fn name(sink: &LogSink) -> String {
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
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let mut truncated = false;
    for sink in sinks {
        match sink.read(q).await {
            Ok(read) => {
                truncated |= read.truncated;
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
    ControlResponse::Logs(LogsResponse {
        entries,
        truncated: truncated || cut,
        warnings,
    })
}

/// Sends the matching tail, then every new line as further `logs` frames
/// until the client goes away (or stops reading), or serving stops (then
/// what is already queued is sent first).
async fn follow(h: &mut Handler, req: &LogsRequest, sinks: &[LogSink], q: LogQuery) {
    let (initial, mut feed) = match Feed::start(&h.ctx, req, sinks, q).await {
        Ok(started) => started,
        Err(resp) => {
            h.send(resp).await;
            return;
        }
    };
    let (initial, cut) = keep_newest(initial, LINES_BUDGET);
    if !h.send(chunk(initial, cut)).await {
        return;
    }
    loop {
        let first = tokio::select! {
            () = &mut h.stopped => {
                feed.flush(h).await;
                return;
            }
            incoming = h.conn.next() => {
                // The client closed or failed: end. A follow connection
                // carries no further requests; anything it sends is ignored.
                if matches!(incoming, None | Some(Err(_))) {
                    return;
                }
                continue;
            }
            next = feed.rx.recv() => match next {
                Some(item) => item,
                None => return,
            },
        };
        if !feed.send_batch(h, first).await {
            return;
        }
    }
}

/// What the sinks' forwarders hand a follower.
enum Item {
    Bytes(GuestRole, LogStream, bytes::Bytes),
    Lagged,
}

/// A follower's live feed: one forwarder task per sink, merged into one
/// queue, split into lines per (role, stream).
struct Feed {
    rx: mpsc::Receiver<Item>,
    labels: Labels,
    splitters: Vec<((GuestRole, LogStream), LineSplitter)>,
    /// Dropped with the feed, which aborts the forwarders.
    _forwarders: JoinSet<()>,
}

impl Feed {
    /// Reads each sink's matching lines and subscribes at the point the
    /// read ends; returns the lines (as entries) and the feed, or the error
    /// to answer.
    async fn start(
        ctx: &ServerContext,
        req: &LogsRequest,
        sinks: &[LogSink],
        q: LogQuery,
    ) -> Result<(Vec<LogEntry>, Self), ControlResponse> {
        let labels = Labels::new(ctx, req);
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let mut initial = Vec::new();
        let mut forwarders = JoinSet::new();
        for sink in sinks {
            let (read, live) = sink.follow(q).await.map_err(|e| {
                let msg = format!("Cannot read {}: {e}", name(sink));
                Handler::error(ControlErrorCode::Internal, msg)
            })?;
            let m = labels.meta(sink.role(), sink.stream());
            initial.extend(read.lines.iter().map(|l| encode_line(m, l, None)));
            forwarders.spawn(forward(sink.role(), sink.stream(), live, tx.clone()));
        }
        let feed = Self {
            rx,
            labels,
            splitters: Vec::new(),
            _forwarders: forwarders,
        };
        Ok((initial, feed))
    }

    /// Sends `first` and whatever else is already queued (about one frame's
    /// worth at most) as `logs` frames; `false` if the client is gone.
    async fn send_batch(&mut self, h: &mut Handler, first: Item) -> bool {
        let (lines, lagged) = self.take_batch(first);
        let mut frames = batches(lines, LINES_BUDGET);
        if frames.is_empty() && lagged {
            frames.push(Vec::new());
        }
        for (n, frame) in frames.into_iter().enumerate() {
            if !h.send(chunk(frame, lagged && n == 0)).await {
                return false;
            }
        }
        true
    }

    /// Sends everything queued now, then stops.
    async fn flush(&mut self, h: &mut Handler) {
        while let Ok(first) = self.rx.try_recv() {
            if !self.send_batch(h, first).await {
                return;
            }
        }
    }

    /// Splits `first` and what is already queued into entries, but never
    /// more than about one frame's worth: a guest writing at full speed must
    /// not make a follower's batch grow without bound. Also says whether
    /// the follower fell behind (bytes were skipped).
    fn take_batch(&mut self, first: Item) -> (Vec<LogEntry>, bool) {
        let mut lines = Vec::new();
        let mut lagged = false;
        let mut taken = 0usize;
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Item::Bytes(role, stream, bytes) => {
                    taken += bytes.len();
                    let (m, at) = (self.labels.meta(role, stream), rfc3339_ms(now_ms()));
                    for l in self.splitter(role, stream).push(&bytes) {
                        lines.push(encode_line(m, &l, Some(at.clone())));
                    }
                }
                Item::Lagged => {
                    // Do not join the pieces on either side of the gap into
                    // one false line.
                    lagged = true;
                    self.splitters.clear();
                }
            }
            next = if taken < LINES_BUDGET {
                self.rx.try_recv().ok()
            } else {
                None
            };
        }
        (lines, lagged)
    }

    fn splitter(&mut self, role: GuestRole, stream: LogStream) -> &mut LineSplitter {
        let key = (role, stream);
        let i = match self.splitters.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let splitter = LineSplitter::new(FOLLOW_MAX_LINE);
                self.splitters.push((key, splitter));
                self.splitters.len() - 1
            }
        };
        &mut self.splitters[i].1
    }
}

async fn forward(
    role: GuestRole,
    stream: LogStream,
    mut live: broadcast::Receiver<bytes::Bytes>,
    tx: mpsc::Sender<Item>,
) {
    loop {
        let item = match live.recv().await {
            Ok(b) => Item::Bytes(role, stream, b),
            Err(broadcast::error::RecvError::Lagged(_)) => Item::Lagged,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}

fn chunk(entries: Vec<LogEntry>, truncated: bool) -> ControlResponse {
    ControlResponse::Logs(LogsResponse {
        entries,
        truncated,
        warnings: Vec::new(),
    })
}
