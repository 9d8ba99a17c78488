//! `logs` with `follow`: the matching tail (or, with `after`, everything
//! after the cursor), then every new line as further `logs` frames, each
//! with the cursor where it ends.

use super::cursor::StreamCursors;
use super::handler::Handler;
use super::log_lines::{LINES_BUDGET, batches, encode_line, keep_newest};
use super::logs::{Labels, Page, logs_frame, name, start_of};
use crate::clock::unix_ms_now;
use crate::control::since::rfc3339_ms;
use crate::logs::{LineSplitter, LogBacklog, LogCursor, LogQuery, LogSink};
use futures::StreamExt;
use runner_types::control::{DEFAULT_LOG_TAIL, LogEntry, LogsRequest};
use runner_types::{ControlErrorCode, ControlResponse, GuestRole, LogStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

/// Longest line a follower is sent in one piece.
const FOLLOW_MAX_LINE: usize = 16 * 1024;
/// Feed chunks queued between the sinks' forwarders and one follower.
const FEED_QUEUE: usize = 64;

/// Follows `sinks` until the client goes away (or stops reading), or
/// serving stops (then what is already queued is sent first).
pub(super) async fn follow(
    h: &mut Handler,
    req: &LogsRequest,
    sinks: &[LogSink],
    q: LogQuery,
    after: Option<StreamCursors>,
) {
    let (mut feed, backlogs) = match Feed::start(&h.ctx, req, sinks).await {
        Ok(started) => started,
        Err(resp) => {
            h.send(resp).await;
            return;
        }
    };
    let caught_up = match after {
        None => send_tail(h, &mut feed, &backlogs, q).await,
        Some(after) => send_after(h, &mut feed, req, &backlogs, &after).await,
    };
    if caught_up {
        feed.run(h).await;
    }
}

/// Sends the newest matching lines of each backlog as the first frame.
async fn send_tail(
    h: &mut Handler,
    feed: &mut Feed,
    backlogs: &[(LogSink, LogBacklog)],
    q: LogQuery,
) -> bool {
    let mut initial = Vec::new();
    for (sink, backlog) in backlogs {
        match backlog.query(q).await {
            Ok(read) => {
                let m = feed.labels.meta(sink.role(), sink.stream());
                initial.extend(read.lines.iter().map(|l| encode_line(m, l, None)));
            }
            Err(e) => {
                h.send(read_error(sink, &e)).await;
                return false;
            }
        }
    }
    let (initial, cut) = keep_newest(initial, LINES_BUDGET);
    h.send(logs_frame(initial, cut, Vec::new(), feed.cursor(), None))
        .await
}

/// Sends every complete line after `after` in each backlog (as many frames
/// as it takes), then hands the unfinished last lines to the feed.
async fn send_after(
    h: &mut Handler,
    feed: &mut Feed,
    req: &LogsRequest,
    backlogs: &[(LogSink, LogBacklog)],
    after: &StreamCursors,
) -> bool {
    let max_lines = req.tail.unwrap_or(DEFAULT_LOG_TAIL) as usize;
    let mut cursors = after.clone();
    let mut sent_any = false;
    for (sink, backlog) in backlogs {
        let meta = feed.labels.meta(sink.role(), sink.stream());
        let mut from = start_of(after, sink);
        loop {
            let mut page = Page::new(cursors.clone());
            let read = match backlog.lines_after(from, max_lines, page.budget / 16).await {
                Ok(read) => read,
                Err(e) => {
                    h.send(read_error(sink, &e)).await;
                    return false;
                }
            };
            let more = read.more;
            page.add(sink, meta, read);
            from = page.cursors.get(sink.role(), sink.stream()).unwrap_or(from);
            cursors = page.cursors.clone();
            page.truncated = false;
            if !page.entries.is_empty() || !page.warnings.is_empty() || !sent_any {
                sent_any = true;
                if !h.send(page.into_frame()).await {
                    return false;
                }
            }
            if !more {
                break;
            }
        }
        match backlog.tail_bytes(from).await {
            Ok(partial) => feed.prime(sink.role(), sink.stream(), &partial, backlog.end()),
            Err(e) => {
                h.send(read_error(sink, &e)).await;
                return false;
            }
        }
    }
    feed.flush_primed(h).await
}

fn read_error(sink: &LogSink, e: &crate::logs::LogError) -> ControlResponse {
    let msg = format!("Cannot read {}: {e}", name(sink));
    Handler::error(ControlErrorCode::Internal, msg)
}

/// What the sinks' forwarders hand a follower.
enum Item {
    Bytes(GuestRole, LogStream, bytes::Bytes),
    Lagged(GuestRole, LogStream),
}

/// One stream's state in a feed.
struct StreamState {
    role: GuestRole,
    stream: LogStream,
    splitter: LineSplitter,
    /// Position after the last byte received (`None` once bytes were missed).
    pos: Option<LogCursor>,
}

/// A follower's live feed: one forwarder task per sink, merged into one
/// queue, split into lines per (role, stream).
struct Feed {
    rx: mpsc::Receiver<Item>,
    labels: Labels,
    streams: Vec<StreamState>,
    /// Lines the priming produced (a long unfinished line), not yet sent.
    primed: Vec<LogEntry>,
    /// Dropped with the feed, which aborts the forwarders.
    _forwarders: JoinSet<()>,
}

impl Feed {
    /// Fixes each sink's backlog and subscribes at its end.
    async fn start(
        ctx: &super::ServerContext,
        req: &LogsRequest,
        sinks: &[LogSink],
    ) -> Result<(Self, Vec<(LogSink, LogBacklog)>), ControlResponse> {
        let (tx, rx) = mpsc::channel(FEED_QUEUE);
        let mut forwarders = JoinSet::new();
        let (mut streams, mut backlogs) = (Vec::new(), Vec::new());
        for sink in sinks {
            let (backlog, live) = sink.backlog(true).await.map_err(|e| read_error(sink, &e))?;
            let live = live.expect("subscribed");
            forwarders.spawn(forward(sink.role(), sink.stream(), live, tx.clone()));
            streams.push(StreamState {
                role: sink.role(),
                stream: sink.stream(),
                splitter: LineSplitter::new(FOLLOW_MAX_LINE),
                pos: Some(backlog.end()),
            });
            backlogs.push((sink.clone(), backlog));
        }
        let feed = Self {
            rx,
            labels: Labels::new(ctx, req),
            streams,
            primed: Vec::new(),
            _forwarders: forwarders,
        };
        Ok((feed, backlogs))
    }

    /// Where every stream's delivered lines end, if known for all.
    fn cursor(&self) -> Option<String> {
        let mut cursors = StreamCursors::default();
        for s in &self.streams {
            let mut at = s.pos?;
            at.pos -= s.splitter.pending() as u64;
            cursors.set(s.role, s.stream, at);
        }
        Some(cursors.encode())
    }

    fn state(&mut self, role: GuestRole, stream: LogStream) -> &mut StreamState {
        let i = self
            .streams
            .iter()
            .position(|s| (s.role, s.stream) == (role, stream))
            .expect("a stream of this feed");
        &mut self.streams[i]
    }

    /// Starts `role`'s `stream` with the unfinished line read from the
    /// backlog, which ends at `end`.
    fn prime(&mut self, role: GuestRole, stream: LogStream, partial: &[u8], end: LogCursor) {
        let meta = self.labels.meta(role, stream);
        let state = self.state(role, stream);
        state.pos = Some(end);
        let lines = state.splitter.push(partial);
        self.primed
            .extend(lines.iter().map(|l| encode_line(meta, l, None)));
    }

    async fn flush_primed(&mut self, h: &mut Handler) -> bool {
        if self.primed.is_empty() {
            return true;
        }
        let lines = std::mem::take(&mut self.primed);
        self.send_lines(h, lines, false).await
    }

    /// Forwards new lines until the client leaves or serving stops.
    async fn run(&mut self, h: &mut Handler) {
        loop {
            let first = tokio::select! {
                () = &mut h.stopped => {
                    self.flush(h).await;
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
                next = self.rx.recv() => match next {
                    Some(item) => item,
                    None => return,
                },
            };
            if !self.send_batch(h, first).await {
                return;
            }
        }
    }

    /// Sends `first` and whatever else is already queued (about one frame's
    /// worth at most) as `logs` frames; `false` if the client is gone.
    async fn send_batch(&mut self, h: &mut Handler, first: Item) -> bool {
        let (lines, lagged) = self.take_batch(first);
        self.send_lines(h, lines, lagged).await
    }

    /// Sends `lines` in frames that fit; the last frame carries the cursor.
    async fn send_lines(&mut self, h: &mut Handler, lines: Vec<LogEntry>, lagged: bool) -> bool {
        let mut frames = batches(lines, LINES_BUDGET);
        if frames.is_empty() && lagged {
            frames.push(Vec::new());
        }
        let last = frames.len().saturating_sub(1);
        for (n, frame) in frames.into_iter().enumerate() {
            let cursor = if n == last { self.cursor() } else { None };
            let truncated = lagged && n == 0;
            if !h
                .send(logs_frame(frame, truncated, Vec::new(), cursor, None))
                .await
            {
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
                    let (m, at) = (self.labels.meta(role, stream), rfc3339_ms(unix_ms_now()));
                    let state = self.state(role, stream);
                    if let Some(pos) = &mut state.pos {
                        pos.pos += bytes.len() as u64;
                    }
                    for l in state.splitter.push(&bytes) {
                        lines.push(encode_line(m, &l, Some(at.clone())));
                    }
                }
                Item::Lagged(role, stream) => {
                    // Do not join the pieces on either side of the gap into
                    // one false line; the position is unknown from here on.
                    lagged = true;
                    let state = self.state(role, stream);
                    state.splitter = LineSplitter::new(FOLLOW_MAX_LINE);
                    state.pos = None;
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
            Err(broadcast::error::RecvError::Lagged(_)) => Item::Lagged(role, stream),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}
