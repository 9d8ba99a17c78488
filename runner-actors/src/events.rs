//! Lifecycle events a session publishes to its subscribers, and the
//! [`EventBus`] that publishes them: to live subscribers (a broadcast) and
//! into the session's [`EventHistory`] for the control socket's `events` op.

use runner_core::events::{DEFAULT_EVENT_HISTORY, EventHistory};
use runner_core::failure::FailureReason;
use runner_types::events::EventKind;
use runner_types::{DegradedReason, GuestExit, GuestRole, GuestState, LogStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;

/// Events a live subscriber may fall behind by before it lags (the
/// broadcast allocates every slot up front, per session: 64 keep a
/// session's start and several restarts; a subscriber that lags anyway
/// learns how many it missed, and the history still has them).
const LIVE_CAPACITY: usize = 64;
/// Longest text (failure reason, degraded detail) an event carries on the
/// wire, so a frame of events always fits.
const MAX_EVENT_TEXT: usize = 2048;

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Every guest was launched and the session runs.
    SessionStarted,
    /// A guest changed state.
    GuestState {
        /// Which guest.
        role: GuestRole,
        /// Its new state.
        state: GuestState,
    },
    /// A guest was launched (first start or restart).
    GuestStarted {
        /// Which guest.
        role: GuestRole,
        /// Host pid, where there is one.
        pid: Option<u32>,
        /// Container name, where there is one.
        container_name: Option<String>,
        /// Restarts before this launch.
        restarts: u32,
    },
    /// A guest exited on its own (not stopped by the runner).
    GuestExited {
        /// Which guest.
        role: GuestRole,
        /// How.
        exit: GuestExit,
    },
    /// A guest will be relaunched after a backoff.
    GuestRestarting {
        /// Which guest.
        role: GuestRole,
        /// Restart number in this session (1-based).
        attempt: u32,
        /// Backoff before the relaunch.
        after: Duration,
    },
    /// The session is failed (restart limit exceeded, relaunch failed, or
    /// one of its actors failed).
    SessionFailed {
        /// Why.
        reason: FailureReason,
    },
    /// Output of a guest stream was lost instead of logged (write queue
    /// full, failed writes); sent when the count grows, at most once per
    /// [`crate::LOSS_REPORT_INTERVAL`] per stream.
    LogBytesDropped {
        /// Which guest.
        role: GuestRole,
        /// Which stream.
        stream: LogStream,
        /// Bytes lost so far in this session.
        total: u64,
    },
    /// The session runs degraded for a reason that may pass.
    Degraded {
        /// The guest concerned.
        role: GuestRole,
        /// Code (for example `engine_unreachable`) and detail.
        reason: DegradedReason,
    },
    /// A `Degraded` reason no longer applies.
    Recovered {
        /// The guest concerned.
        role: GuestRole,
        /// The reason's code.
        code: String,
    },
    /// Ordered shutdown began.
    ShutdownStarted,
    /// Ordered shutdown finished; the session is gone.
    ShutdownComplete,
}

impl SessionEvent {
    /// The event as the control socket shows it (the guest concerned and
    /// what happened); `None` for events kept off the wire (state changes,
    /// which the other events already tell).
    pub fn to_wire(&self) -> Option<(Option<GuestRole>, EventKind)> {
        let (role, kind) = match self {
            Self::SessionStarted => (None, EventKind::SessionStarted),
            Self::GuestState { .. } => return None,
            Self::SessionFailed { reason } => (
                reason.role(),
                EventKind::SessionFailed {
                    reason: capped(reason.to_text()),
                    code: Some(reason.code().to_owned()),
                },
            ),
            Self::Degraded { role, reason } => (
                Some(*role),
                EventKind::Degraded {
                    code: reason.code.clone(),
                    detail: capped(reason.detail.clone()),
                },
            ),
            Self::Recovered { role, code } => {
                (Some(*role), EventKind::Recovered { code: code.clone() })
            }
            Self::ShutdownStarted => (None, EventKind::Stopping),
            Self::ShutdownComplete => (None, EventKind::Stopped),
            Self::GuestStarted { .. }
            | Self::GuestExited { .. }
            | Self::GuestRestarting { .. }
            | Self::LogBytesDropped { .. } => return self.guest_to_wire(),
        };
        Some((role, kind))
    }

    /// [`Self::to_wire`] for a guest's launches, exits and output loss (the
    /// only variants it is called with).
    fn guest_to_wire(&self) -> Option<(Option<GuestRole>, EventKind)> {
        let (role, kind) = match self {
            Self::GuestStarted {
                role,
                pid,
                container_name,
                restarts,
            } => (
                role,
                EventKind::GuestStarted {
                    pid: *pid,
                    container_name: container_name.clone(),
                    restarts: *restarts,
                },
            ),
            Self::GuestExited { role, exit } => (role, EventKind::GuestExited { exit: *exit }),
            Self::GuestRestarting {
                role,
                attempt,
                after,
            } => (
                role,
                EventKind::GuestRestarting {
                    attempt: *attempt,
                    backoff_ms: after.as_millis().try_into().unwrap_or(u64::MAX),
                },
            ),
            Self::LogBytesDropped {
                role,
                stream,
                total,
            } => (
                role,
                EventKind::LogBytesDropped {
                    stream: *stream,
                    total: *total,
                },
            ),
            _ => return None,
        };
        Some((Some(*role), kind))
    }
}

/// Cuts `text` to [`MAX_EVENT_TEXT`] bytes (at a character boundary).
fn capped(mut text: String) -> String {
    if text.len() > MAX_EVENT_TEXT {
        let mut cut = MAX_EVENT_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Where a session's events go: live subscribers and the kept history.
/// Cheap to clone; its `send`/`subscribe` are those of a broadcast sender.
#[derive(Debug, Clone)]
pub struct EventBus {
    live: broadcast::Sender<SessionEvent>,
    history: EventHistory,
    /// Held across "record, then broadcast" so the history's order is the
    /// order subscribers see (guest actors and the supervisor both send).
    order: Arc<Mutex<()>>,
}

impl EventBus {
    /// A bus keeping the newest [`DEFAULT_EVENT_HISTORY`] events.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_EVENT_HISTORY)
    }

    /// A bus keeping the newest `events` events.
    pub fn with_history(events: usize) -> Self {
        Self {
            live: broadcast::channel(LIVE_CAPACITY).0,
            history: EventHistory::new(events),
            order: Arc::new(Mutex::new(())),
        }
    }

    /// Records `event` in the history (if it goes on the wire) and sends it
    /// to every live subscriber; returns how many there are (an error when
    /// there are none, as a broadcast sender does).
    pub fn send(
        &self,
        event: SessionEvent,
    ) -> Result<usize, broadcast::error::SendError<SessionEvent>> {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((role, kind)) = event.to_wire() {
            self.history.record(role, kind);
        }
        self.live.send(event)
    }

    /// A new bus and its first subscriber, which sees every event from the
    /// very first.
    pub fn with_first_subscriber() -> (Self, broadcast::Receiver<SessionEvent>) {
        let bus = Self::new();
        let first = bus.subscribe();
        (bus, first)
    }

    /// A live subscription from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.live.subscribe()
    }

    /// The kept history (for the control socket).
    pub fn history(&self) -> &EventHistory {
        &self.history
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}
