//! The `events` op's wire shapes: a session's lifecycle events, each with a
//! sequence number that a reconnecting client passes back as `after`.
//!
//! A frame is `{"op":"events","payload":{"events":[...],"cursor":N}}`,
//! oldest first. When events the client asked for are no longer kept, the
//! answer says so with a `gap` before any event; events are never skipped
//! silently. This whole op is this runner's addition.

use crate::health::GuestExit;
use crate::tier::{GuestRole, LogStream};
use serde::{Deserialize, Serialize};

/// Parameters of an `events` request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRequest {
    /// Keep the connection open and send new events as further frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// Only events with a sequence number above this (a previous frame's
    /// `cursor`); absent: every event still kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// One `events` frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsResponse {
    /// Events the client asked for were no longer kept (or its cursor is
    /// from another session); sent before any event of the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<EventGap>,
    /// Events, oldest first, with increasing `seq`.
    pub events: Vec<EventRecord>,
    /// Where to resume: pass as `after` to miss nothing from here on (the
    /// last event's `seq`, or the request's position if none was sent).
    pub cursor: u64,
    /// More events are kept than fitted this one-shot answer: ask again
    /// with `after: cursor`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Events that were asked for but are no longer kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventGap {
    /// The position asked for (the request's `after`, 0 if none).
    pub after: u64,
    /// The oldest event still kept: the answer resumes there.
    pub resumed_at: u64,
    /// How many events were lost; absent when the cursor belongs to
    /// another session (an earlier daemon), where the count is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Sequence number: increases by one per event of the session, and
    /// starts above any earlier session's (it begins at the session's
    /// start time in microseconds).
    pub seq: u64,
    /// When it happened (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// The guest concerned; absent for session-wide events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<GuestRole>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// Every guest was launched; the session runs.
    SessionStarted,
    /// A guest was launched (first start or restart).
    GuestStarted {
        /// Host pid, where there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// Container name, where there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_name: Option<String>,
        /// Restarts before this launch.
        restarts: u32,
    },
    /// A guest exited on its own (not stopped by the runner).
    GuestExited {
        /// How.
        exit: GuestExit,
    },
    /// A guest will be relaunched after a backoff.
    GuestRestarting {
        /// Restart number in this session (1-based).
        attempt: u32,
        /// Backoff before the relaunch, in milliseconds.
        backoff_ms: u64,
    },
    /// The session is failed (restart limit exceeded, relaunch failed).
    SessionFailed {
        /// Why, as text (with its causes).
        reason: String,
        /// Why, as a stable code: `restart_limit`, `relaunch_failed` or
        /// `child_failed`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// The session runs degraded for a reason that may pass.
    Degraded {
        /// Machine-readable code (for example `engine_unreachable`).
        code: String,
        /// Detail.
        detail: String,
    },
    /// A `degraded` reason no longer applies.
    Recovered {
        /// The reason's code.
        code: String,
    },
    /// Output of a guest stream was lost instead of logged.
    LogBytesDropped {
        /// Which stream.
        stream: LogStream,
        /// Bytes lost so far in this session.
        total: u64,
    },
    /// Ordered shutdown began.
    Stopping,
    /// Ordered shutdown finished.
    Stopped,
}
