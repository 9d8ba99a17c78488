//! The control plane: [`ControlListenerHandle`], owned by the session
//! supervisor, holds the socket file and runs the server of
//! `runner_core::control::server` in a task; each
//! connection is served by its own task there, so a slow or hostile client
//! never blocks another.

mod listener;

pub use listener::ControlListenerHandle;
pub use runner_core::control::server::{
    ControlLimits, DEFAULT_CLOSE_BOUND, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
};

use crate::log_pump::LogPumpHandle;
use crate::session::SessionMsg;
use ractor::ActorRef;
use runner_core::control::server::{ServerContext, SessionControl};
use runner_core::events::EventHistory;
use runner_core::{UserId, Workspace};
use runner_types::HealthStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the control listener needs from the session.
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
    /// The session's kept events, for `events`.
    pub events: EventHistory,
    /// Deadline passed with a `shutdown_user` request.
    pub shutdown_deadline: Duration,
    /// Keep `ipc/runner-control.sock` linked to the socket while serving.
    pub ipc_link: bool,
    /// The runner's metrics: answers `metrics`, counts requests.
    pub metrics: runner_core::metrics::RunnerMetrics,
}

impl ControlContext {
    /// The server's view: plain data and the supervisor behind a trait.
    fn server_context(&self) -> ServerContext {
        ServerContext {
            user: self.user.clone(),
            health: self.health.clone(),
            logs: self.pumps.iter().map(|p| p.sink().clone()).collect(),
            events: self.events.clone(),
            session: Arc::new(Supervisor(self.supervisor.clone())),
            shutdown_deadline: self.shutdown_deadline,
            metrics: self.metrics.clone(),
        }
    }
}

/// The session supervisor, as the server sees it.
struct Supervisor(ActorRef<SessionMsg>);

impl SessionControl for Supervisor {
    fn request_shutdown(&self, deadline: Duration) -> bool {
        let msg = SessionMsg::Shutdown {
            deadline,
            reply: None,
        };
        self.0.cast(msg).is_ok()
    }
}
