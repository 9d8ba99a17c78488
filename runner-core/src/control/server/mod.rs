//! Serving the control socket: the accept loop ([`serve`]), one
//! `Handler` per connection, and the answers to each op.
//!
//! The session is reached only through [`ServerContext`]: plain data (the
//! health snapshot's watch, the log sinks, the event history) and the small
//! [`SessionControl`] trait for the one thing the socket can ask of it
//! (shut down). The caller owns the socket file ([`crate::workspace::ControlSocket`])
//! and a [`CancellationToken`]: cancelling it stops accepting, and every
//! connection then ends within [`ControlLimits::close_bound`]: an idle
//! one is closed cleanly, a follower first gets what was already queued for
//! it, and whatever is still running at the bound is dropped.
//!
//! Every connection is its own task, bounded by a semaphore; a client over
//! the limit is answered `busy` at once. Reads and writes have timeouts, so
//! a slow, silent or hostile client never blocks another.

mod accept;
mod cursor;
mod events;
mod follow;
mod handler;
pub mod log_lines;
mod logs;

pub use accept::serve;
pub use events::FRAME_EVENTS;

use crate::UserId;
use crate::events::EventHistory;
use crate::logs::LogSink;
use runner_types::HealthStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
pub use tokio_util::sync::CancellationToken;

/// What the control socket may ask of the session beyond reading its data.
pub trait SessionControl: Send + Sync {
    /// Starts an ordered shutdown bounded by `deadline` and returns at once;
    /// `false` if the session is already gone.
    fn request_shutdown(&self, deadline: Duration) -> bool;
}

/// What connections need from the session.
#[derive(Clone)]
pub struct ServerContext {
    /// The session's user (checked by `shutdown_user`).
    pub user: UserId,
    /// Latest health snapshot.
    pub health: watch::Receiver<HealthStatus>,
    /// Every captured stream's sink, for `logs` (selected by role and stream).
    pub logs: Vec<LogSink>,
    /// The session's lifecycle events, for `events`.
    pub events: EventHistory,
    /// Asks the session to shut down.
    pub session: Arc<dyn SessionControl>,
    /// Deadline passed with a `shutdown_user` request.
    pub shutdown_deadline: Duration,
    /// The runner's metrics: answers `metrics` and counts every request by
    /// op and result.
    pub metrics: crate::metrics::RunnerMetrics,
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ControlLimits {
    /// Connections served at once; more are answered `busy`.
    pub max_connections: usize,
    /// A connection that sends no complete request for this long is dropped.
    pub read_timeout: Duration,
    /// A response that cannot be written within this long drops the client.
    pub write_timeout: Duration,
    /// Once serving is cancelled, how long connections get to send their
    /// last frame and close before they are dropped.
    pub close_bound: Duration,
}

/// Default [`ControlLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default [`ControlLimits::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ControlLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ControlLimits::close_bound`]: well inside the session's bound
/// on stopping its control listener.
pub const DEFAULT_CLOSE_BOUND: Duration = Duration::from_millis(500);

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            close_bound: DEFAULT_CLOSE_BOUND,
        }
    }
}
