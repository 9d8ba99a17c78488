//! Why a session failed, as a value: the restart policy, the guest actors
//! and the supervisor produce it, health and events carry it, and only the
//! edges (the health `message`, the control wire) turn it into text.

use crate::backend::LaunchError;
use runner_types::{ExitStatus, GuestRole, LogStream};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Why a session is failed.
#[derive(Debug, Clone, Error)]
pub enum FailureReason {
    /// A guest exited more often than the restart policy allows.
    #[error(
        "the {role} guest hit its restart limit: {restarts} restarts within {}s (limit {limit}); last {last}",
        window.as_secs()
    )]
    RestartLimit {
        /// Which guest.
        role: GuestRole,
        /// Restarts counted inside the window when the limit was hit.
        restarts: u32,
        /// The configured limit (`max_restarts`).
        limit: u32,
        /// The window the restarts are counted in (`window_secs`).
        window: Duration,
        /// The exit that hit the limit.
        last: ExitStatus,
    },
    /// A guest exited and its relaunch failed.
    #[error("the {role} guest could not be relaunched")]
    RelaunchFailed {
        /// Which guest.
        role: GuestRole,
        /// Why the launch failed (shared: phases and events are cloned).
        #[source]
        source: Arc<LaunchError>,
    },
    /// One of the session's actors failed (a bug: it panicked or returned
    /// an error from a handler).
    #[error("the session's {child} actor failed: {error}")]
    ChildFailed {
        /// Which actor.
        child: SessionChild,
        /// What the actor framework reported (a panic message or the
        /// handler's error, already text when it reaches the supervisor).
        error: String,
    },
}

impl FailureReason {
    /// A stable snake_case name of the variant, for wire shapes and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::RestartLimit { .. } => "restart_limit",
            Self::RelaunchFailed { .. } => "relaunch_failed",
            Self::ChildFailed { .. } => "child_failed",
        }
    }

    /// The guest concerned, when there is one.
    pub fn role(&self) -> Option<GuestRole> {
        match self {
            Self::RestartLimit { role, .. } | Self::RelaunchFailed { role, .. } => Some(*role),
            Self::ChildFailed { child, .. } => child.role(),
        }
    }

    /// The reason and every cause below it on one line, for the edges
    /// (health's `message`, the control wire).
    pub fn to_text(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}

/// Equal when the variant and its fields are; launch errors (which hold IO
/// errors and cannot be compared) are compared by their text.
impl PartialEq for FailureReason {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::RestartLimit {
                    role: a,
                    restarts: b,
                    limit: c,
                    window: d,
                    last: e,
                },
                Self::RestartLimit {
                    role: a2,
                    restarts: b2,
                    limit: c2,
                    window: d2,
                    last: e2,
                },
            ) => (a, b, c, d, e) == (a2, b2, c2, d2, e2),
            (
                Self::RelaunchFailed { role, source },
                Self::RelaunchFailed {
                    role: role2,
                    source: source2,
                },
            ) => role == role2 && source.to_string() == source2.to_string(),
            (
                Self::ChildFailed { child, error },
                Self::ChildFailed {
                    child: child2,
                    error: error2,
                },
            ) => child == child2 && error == error2,
            _ => false,
        }
    }
}

impl Eq for FailureReason {}

/// A child actor of a session supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChild {
    /// The actor owning one guest.
    Guest(GuestRole),
    /// The log pump of one guest stream.
    LogPump {
        /// Which guest.
        role: GuestRole,
        /// Which stream.
        stream: LogStream,
    },
    /// The control socket's listener.
    ControlListener,
}

impl SessionChild {
    /// The guest the actor belongs to, if any.
    pub fn role(&self) -> Option<GuestRole> {
        match self {
            Self::Guest(role) | Self::LogPump { role, .. } => Some(*role),
            Self::ControlListener => None,
        }
    }
}

impl fmt::Display for SessionChild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Guest(role) => write!(f, "{role} guest"),
            Self::LogPump { role, stream } => write!(f, "{role} {stream} log pump"),
            Self::ControlListener => f.write_str("control listener"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_the_guest_and_the_cause() {
        let limit = FailureReason::RestartLimit {
            role: GuestRole::Runtime,
            restarts: 3,
            limit: 3,
            window: Duration::from_secs(60),
            last: ExitStatus::Signal(11),
        };
        assert_eq!(
            limit.to_text(),
            "the runtime guest hit its restart limit: 3 restarts within 60s (limit 3); last signal 11"
        );
        assert_eq!(limit.code(), "restart_limit");

        let relaunch = FailureReason::RelaunchFailed {
            role: GuestRole::Sidecar,
            source: Arc::new(LaunchError::TimedOut {
                role: GuestRole::Sidecar,
                after: Duration::from_secs(2),
            }),
        };
        assert_eq!(
            relaunch.to_text(),
            "the sidecar guest could not be relaunched: Launching the sidecar guest took longer than 2s"
        );
        assert_eq!(relaunch.role(), Some(GuestRole::Sidecar));
        assert_eq!(relaunch, relaunch.clone());
        assert_ne!(relaunch, limit);

        let child = FailureReason::ChildFailed {
            child: SessionChild::LogPump {
                role: GuestRole::Runtime,
                stream: LogStream::Stderr,
            },
            error: "boom".into(),
        };
        assert_eq!(
            child.to_text(),
            "the session's runtime stderr log pump actor failed: boom"
        );
        assert_eq!(child.role(), Some(GuestRole::Runtime));
    }
}
