//! [`SessionHandle`]: the cloneable, typed face of a running session.

use super::{SessionMsg, ShutdownReport};
use crate::HandleError;
use crate::events::{EventBus, SessionEvent};
use ractor::ActorRef;
use runner_core::health::SessionPhase;
use runner_core::{UserId, Workspace};
use runner_types::HealthStatus;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How long a forced shutdown may take once the guests' stops are under way:
/// the kill and reap of each guest (the backend's stop overrun, a few
/// seconds), the control listener's stop and the children's `post_stop`.
pub const FORCED_STOP_BOUND: Duration = Duration::from_secs(10);

/// How much longer than its deadline a caller waits for the shutdown's
/// answer (the reply's own trip through the mailbox).
const REPLY_MARGIN: Duration = Duration::from_secs(1);
/// Bound on the supervisor task ending once the session is stopped.
pub(crate) const SUPERVISOR_EXIT_BOUND: Duration = Duration::from_secs(5);

/// A running session. Cheap to clone; every method is bounded.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) actor: ActorRef<SessionMsg>,
    pub(crate) user: UserId,
    pub(crate) workspace: Workspace,
    pub(crate) serves_control: bool,
    pub(crate) health: watch::Receiver<HealthStatus>,
    pub(crate) phase: watch::Receiver<SessionPhase>,
    pub(crate) events: EventBus,
    /// Subscribed before the session started, for the first `events()` call.
    pub(crate) first_events: Arc<Mutex<Option<broadcast::Receiver<SessionEvent>>>>,
    /// The last shutdown's report.
    pub(crate) report: watch::Receiver<Option<ShutdownReport>>,
    /// The supervisor's task: awaited so `shutdown` returns only once every
    /// actor (and each one's `post_stop`) has finished.
    pub(crate) join: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    pub(crate) shutdown_bound: Duration,
    /// Cancelled by [`SessionHandle::force_shutdown`].
    pub(crate) force: CancellationToken,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("user", &self.user)
            .field("phase", &*self.phase.borrow())
            .finish_non_exhaustive()
    }
}

impl SessionHandle {
    /// The session's user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The session's workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    /// The control socket, if this session serves one.
    pub fn control_socket(&self) -> Option<PathBuf> {
        self.serves_control.then(|| self.workspace.control_socket())
    }

    /// Current health — the same struct the control socket returns.
    ///
    /// The supervisor publishes a fresh snapshot on every change, so this
    /// never waits on the supervisor's mailbox.
    pub async fn health(&self) -> Result<HealthStatus, HandleError> {
        Ok(self.health.borrow().clone())
    }

    /// Every health snapshot the session publishes, to wait for a change
    /// (`changed()`) instead of polling [`SessionHandle::health`].
    pub fn watch_health(&self) -> watch::Receiver<HealthStatus> {
        self.health.clone()
    }

    /// A deadline within which an ordered shutdown with the configured
    /// grace and drain timings always finishes.
    pub fn shutdown_bound(&self) -> Duration {
        self.shutdown_bound
    }

    /// Current phase.
    pub fn phase(&self) -> SessionPhase {
        self.phase.borrow().clone()
    }

    /// Subscribes to lifecycle events.
    ///
    /// The first call (on any clone) gets a receiver subscribed before the
    /// session started, so it also sees the start itself (the first 64
    /// events are kept); later calls see events from the moment of the call.
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        let first = self
            .first_events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        first.unwrap_or_else(|| self.events.subscribe())
    }

    /// Ordered shutdown, bounded by `deadline` (the configured grace and drain
    /// timings still apply within it). Returns what was stopped.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, HandleError> {
        let wait = deadline + REPLY_MARGIN;
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let asked = self.actor.cast(SessionMsg::Shutdown {
            deadline,
            reply: Some(reply.into()),
        });
        if asked.is_err() {
            return self.overtaken(wait).await;
        }
        // The supervisor's task ends right after it answers, and this
        // returns only once it has: waiting for the end alone (the answer
        // is read afterwards) wakes this caller once instead of twice.
        let Some(join) = self.join.lock().await.take() else {
            // Another caller waits for the task's end; wait for the answer.
            return match tokio::time::timeout(wait, answer).await {
                Ok(Ok(report)) => Ok(report),
                Ok(Err(_)) => self.overtaken(wait).await,
                Err(_) => Err(HandleError::Timeout(wait)),
            };
        };
        let ended = tokio::time::timeout(wait + SUPERVISOR_EXIT_BOUND, join).await;
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "session supervisor task failed"),
            Err(_) => tracing::warn!("session supervisor still running after shutdown"),
        }
        match answer.try_recv() {
            Ok(report) => Ok(report),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                Err(HandleError::Timeout(wait))
            }
            // Another shutdown (a signal, shutdown_user) got there first and
            // our request was dropped with the actor: report that one.
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => self.overtaken(wait).await,
        }
    }

    /// The report of the shutdown that overtook ours, once the session has
    /// stopped (bounded by `wait`).
    async fn overtaken(&self, wait: Duration) -> Result<ShutdownReport, HandleError> {
        if !self.wait_stopped(wait).await {
            return Err(HandleError::Gone);
        }
        let report = self.report.borrow().clone().ok_or(HandleError::Gone)?;
        self.wait_terminated(SUPERVISOR_EXIT_BOUND).await;
        Ok(report)
    }

    /// Waits (bounded) until the supervisor task has ended.
    pub(crate) async fn wait_terminated(&self, timeout: Duration) {
        let Some(join) = self.join.lock().await.take() else {
            return;
        };
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "session supervisor task failed"),
            Err(_) => tracing::warn!("session supervisor still running after shutdown"),
        }
    }

    /// Forces the shutdown: a graceful stop in progress loses its grace
    /// (guests are killed at once, log pumps are cut), and a shutdown is
    /// requested if none is under way. Sockets, the lock and per-launch
    /// files are still removed. Wait for the end with
    /// [`SessionHandle::wait_stopped`], at most [`FORCED_STOP_BOUND`].
    pub fn force_shutdown(&self) {
        self.force.cancel();
        if self.request_shutdown().is_err() {
            tracing::debug!("force requested; the session is already stopping");
        }
    }

    /// Asks for a shutdown without waiting for it (as `shutdown_user` does).
    pub fn request_shutdown(&self) -> Result<(), HandleError> {
        self.actor
            .cast(SessionMsg::Shutdown {
                deadline: self.shutdown_bound,
                reply: None,
            })
            .map_err(|_| HandleError::Gone)
    }

    /// Waits until the session has fully stopped; `false` on timeout.
    pub async fn wait_stopped(&self, timeout: Duration) -> bool {
        let mut phase = self.phase.clone();
        let stopped = phase.wait_for(|p| *p == SessionPhase::Stopped);
        matches!(tokio::time::timeout(timeout, stopped).await, Ok(Ok(_)))
            || *self.phase.borrow() == SessionPhase::Stopped
    }
}
