//! The `events` op: the kept events after a cursor in one frame, or, with
//! `follow`, every kept event and then each new one as further frames.

use super::handler::{Flow, Handler};
use crate::events::{EventHistory, EventsAfter};
use futures::StreamExt;
use runner_types::ControlResponse;
use runner_types::events::{EventsRequest, EventsResponse};

/// Most events in one frame. Event text is capped where events are made
/// (a few KiB at most), so this many always fit a control frame.
pub const FRAME_EVENTS: usize = 32;

/// Answers an `events` request; a follow ends the connection when it ends.
pub(super) async fn answer(h: &mut Handler, req: EventsRequest) -> Flow {
    let history = h.ctx.events.clone();
    let cursor = req.after.unwrap_or_else(|| history.origin());
    if !req.follow {
        let read = history.after(cursor, FRAME_EVENTS);
        return h.reply(frame(read, true)).await;
    }
    follow(h, &history, cursor).await;
    Flow::Close
}

/// Sends what is kept after `cursor` (at least one frame, so the client
/// knows the follow is live and where it stands), then each new event, until
/// the client leaves or serving stops (then what was recorded is sent first).
async fn follow(h: &mut Handler, history: &EventHistory, mut cursor: u64) {
    let mut latest = history.watch();
    let mut always = true;
    loop {
        // Marked seen before reading: an event recorded after this point
        // wakes the wait below even if the read already included it.
        latest.borrow_and_update();
        if !send_kept(h, history, &mut cursor, always).await {
            return;
        }
        always = false;
        tokio::select! {
            () = &mut h.stopped => {
                send_kept(h, history, &mut cursor, false).await;
                return;
            }
            incoming = h.conn.next() => {
                // A follow connection carries no further requests: anything
                // sent is ignored; a closed or failed client ends it.
                if matches!(incoming, None | Some(Err(_))) {
                    return;
                }
            }
            changed = latest.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends every kept event after `cursor` (moving it), in frames of at most
/// [`FRAME_EVENTS`]; with `always`, at least one frame even if empty.
/// `false` if the client is gone.
async fn send_kept(
    h: &mut Handler,
    history: &EventHistory,
    cursor: &mut u64,
    mut always: bool,
) -> bool {
    loop {
        let read = history.after(*cursor, FRAME_EVENTS);
        if read.events.is_empty() && read.gap.is_none() && !always {
            return true;
        }
        *cursor = read.cursor;
        let more = read.more;
        if !h.send(frame(read, false)).await {
            return false;
        }
        if !more {
            return true;
        }
        always = false;
    }
}

fn frame(read: EventsAfter, one_shot: bool) -> ControlResponse {
    ControlResponse::Events(EventsResponse {
        gap: read.gap,
        events: read.events,
        cursor: read.cursor,
        truncated: one_shot && read.more,
    })
}
