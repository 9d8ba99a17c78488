//! The `logs` op: a one-shot answer, or a follow stream of new lines.

use super::connection::{Conn, error, send};
use super::{ControlContext, ControlLimits};
use futures::StreamExt;
use runner_core::control::log_lines::{EntryMeta, LINES_BUDGET, batches, encode_line, keep_newest};
use runner_core::control::since::{SinceError, rfc3339_ms, since_ms};
use runner_core::logs::{LineSplitter, LogQuery};
use runner_types::control::{DEFAULT_LOG_TAIL, LogEntry, LogSource, LogsRequest, LogsResponse};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{ControlErrorCode, ControlResponse, GuestRole, LogStream};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc};

/// Longest line a follower is sent in one piece.
const FOLLOW_MAX_LINE: usize = 16 * 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The log query a request asks for, or why its `since` is unusable.
pub(super) fn query(req: &LogsRequest, files: usize) -> Result<LogQuery, SinceError> {
    let q = LogQuery::tail(req.tail.unwrap_or(DEFAULT_LOG_TAIL))
        .max_bytes(MAX_CONTROL_FRAME / files.max(1));
    Ok(match &req.since {
        Some(s) => q.since(since_ms(s, now_ms())?),
        None => q,
    })
}

fn meta(ctx: &ControlContext, req: &LogsRequest, role: GuestRole, stream: LogStream) -> EntryMeta {
    EntryMeta {
        role,
        stream,
        source: LogSource::for_tier(ctx.health.borrow().sandbox_tier),
        format: req.format,
    }
}

fn selected<'a>(
    ctx: &'a ControlContext,
    req: &LogsRequest,
) -> Vec<&'a crate::log_pump::LogPumpHandle> {
    ctx.pumps
        .iter()
        .filter(|p| {
            req.role.roles().contains(&p.role()) && req.stream.streams().contains(&p.stream())
        })
        .collect()
}

/// Answers a one-shot `logs` request with the newest matching lines that
/// fit in one frame.
/// A file that cannot be read becomes a warning; the other files are still
/// answered.
pub(super) async fn logs_chunk(ctx: &ControlContext, req: &LogsRequest) -> ControlResponse {
    let pumps = selected(ctx, req);
    let q = match query(req, pumps.len()) {
        Ok(q) => q,
        Err(e) => return error(ControlErrorCode::InvalidRequest, e.to_string()),
    };
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let mut truncated = false;
    for pump in &pumps {
        match pump.sink().read(q).await {
            Ok(read) => {
                truncated |= read.truncated;
                let m = meta(ctx, req, pump.role(), pump.stream());
                lines.extend(read.lines.iter().map(|l| encode_line(m, l, None)));
            }
            Err(e) => warnings.push(format!("Cannot read {}: {e}", pump.name())),
        }
    }
    if !pumps.is_empty() && warnings.len() == pumps.len() {
        return error(ControlErrorCode::Internal, warnings.join("; "));
    }
    let (entries, cut) = keep_newest(lines, LINES_BUDGET);
    ControlResponse::Logs(LogsResponse {
        entries,
        truncated: truncated || cut,
        warnings,
    })
}

/// Sends the matching tail, then every new line as further `logs` frames
/// until the client goes away (or stops reading).
pub(super) async fn follow_logs(
    conn: &mut Conn,
    ctx: &ControlContext,
    req: &LogsRequest,
    limits: ControlLimits,
) {
    let pumps = selected(ctx, req);
    let q = match query(req, pumps.len()) {
        Ok(q) => q,
        Err(e) => {
            send(
                conn,
                error(ControlErrorCode::InvalidRequest, e.to_string()),
                limits,
            )
            .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Feed>(64);
    let mut initial = Vec::new();
    let mut forwarders = tokio::task::JoinSet::new();
    for pump in &pumps {
        let (read, live) = match pump.sink().follow(q).await {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("Cannot read {}: {e}", pump.name());
                send(conn, error(ControlErrorCode::Internal, msg), limits).await;
                return;
            }
        };
        let m = meta(ctx, req, pump.role(), pump.stream());
        initial.extend(read.lines.iter().map(|l| encode_line(m, l, None)));
        forwarders.spawn(forward(pump.role(), pump.stream(), live, tx.clone()));
    }
    drop(tx);
    let (initial, cut) = keep_newest(initial, LINES_BUDGET);
    if !send(conn, chunk(initial, cut), limits).await {
        return;
    }
    let mut splitters: Vec<((GuestRole, LogStream), LineSplitter)> = Vec::new();
    loop {
        tokio::select! {
            incoming = conn.next() => {
                // The client closed, failed, or sent something: a follow
                // connection carries no further requests, so end it.
                if incoming.is_none() || matches!(incoming, Some(Err(_))) {
                    return;
                }
            }
            feed = rx.recv() => {
                let Some(first) = feed else { return };
                let mut lines = Vec::new();
                let mut lagged = false;
                let mut taken = 0usize;
                let mut next = Some(first);
                // Batch what is already queued, but never more than about one
                // frame's worth: a guest writing at full speed must not make a
                // follower's batch grow without bound.
                while let Some(f) = next {
                    match f {
                        Feed::Bytes(role, stream, bytes) => {
                            taken += bytes.len();
                            let splitter = splitter_for(&mut splitters, role, stream);
                            let (m, at) = (meta(ctx, req, role, stream), rfc3339_ms(now_ms()));
                            for l in splitter.push(&bytes) {
                                lines.push(encode_line(m, &l, Some(at.clone())));
                            }
                        }
                        Feed::Lagged => {
                            // Bytes were skipped: do not join the pieces on
                            // either side of the gap into one false line.
                            lagged = true;
                            splitters.clear();
                        }
                    }
                    next = if taken < LINES_BUDGET { rx.try_recv().ok() } else { None };
                }
                let mut frames = batches(lines, LINES_BUDGET);
                if frames.is_empty() && lagged {
                    frames.push(Vec::new());
                }
                for (n, frame) in frames.into_iter().enumerate() {
                    if !send(conn, chunk(frame, lagged && n == 0), limits).await {
                        return;
                    }
                }
            }
        }
    }
}

fn splitter_for(
    splitters: &mut Vec<((GuestRole, LogStream), LineSplitter)>,
    role: GuestRole,
    stream: LogStream,
) -> &mut LineSplitter {
    let i = match splitters.iter().position(|(k, _)| *k == (role, stream)) {
        Some(i) => i,
        None => {
            splitters.push(((role, stream), LineSplitter::new(FOLLOW_MAX_LINE)));
            splitters.len() - 1
        }
    };
    &mut splitters[i].1
}

enum Feed {
    Bytes(GuestRole, LogStream, bytes::Bytes),
    Lagged,
}

async fn forward(
    role: GuestRole,
    stream: LogStream,
    mut live: broadcast::Receiver<bytes::Bytes>,
    tx: mpsc::Sender<Feed>,
) {
    loop {
        let feed = match live.recv().await {
            Ok(b) => Feed::Bytes(role, stream, b),
            Err(broadcast::error::RecvError::Lagged(_)) => Feed::Lagged,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(feed).await.is_err() {
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
