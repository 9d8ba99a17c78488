//! The control plane: [`ControlListenerActor`] accepts connections on
//! `run/runner-control.sock`; each connection is served by its own task
//! (`connection.rs`), so a slow or hostile client never blocks another.

mod connection;
mod listener;
mod logs;

pub use listener::{ControlListenerActor, ControlListenerHandle, ControlListenerMsg};

use crate::log_pump::LogPumpHandle;
use crate::session::SessionMsg;
use ractor::ActorRef;
use runner_core::{UserId, Workspace};
use runner_types::HealthStatus;
use std::time::Duration;
use tokio::sync::watch;

/// What connection tasks need from the session.
#[derive(Clone)]
pub struct ControlContext {
    /// The session's user (checked by `shutdown_user`).
    pub user: UserId,
    /// The workspace (socket path, log files).
    pub workspace: Workspace,
    /// Latest health snapshot.
    pub health: watch::Receiver<HealthStatus>,
    /// The supervisor, to request shutdown.
    pub supervisor: ActorRef<SessionMsg>,
    /// Log sinks, for `logs` and `logs` with `follow`.
    pub pumps: Vec<LogPumpHandle>,
    /// Deadline passed with a `shutdown_user` request.
    pub shutdown_deadline: Duration,
    /// Keep `ipc/runner-control.sock` linked to the socket while serving.
    pub ipc_link: bool,
    /// The runner's metrics: answers `metrics`, counts requests.
    pub metrics: runner_core::metrics::RunnerMetrics,
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ControlLimits {
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// A connection that sends no complete request for this long is dropped.
    pub read_timeout: Duration,
    /// A response that cannot be written within this long drops the client.
    pub write_timeout: Duration,
}

/// Default [`ControlLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default [`ControlLimits::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`ControlLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}
