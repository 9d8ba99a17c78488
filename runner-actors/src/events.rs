//! Lifecycle events a session publishes to its subscribers.

use runner_core::failure::FailureReason;
use runner_types::{DegradedReason, GuestExit, GuestRole, GuestState, LogStream};
use std::time::Duration;

/// Something that happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
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
