//! Session start: the sidecar, then the runtime (with the sidecar's
//! endpoint in its envelope; side by side where the backend allows),
//! while the log files are opened and the control socket is bound on the
//! blocking pool; then the pumps get their open logs and the control
//! socket is served.

use super::{SessionMsg, SessionState, on_guest_update};
use crate::control::{BoundControlSocket, ControlLimits, supervisor_control};
use crate::error::SessionError;
use crate::events::EventBus;
use crate::guest::{GuestActor, GuestArgs, GuestHandle};
use crate::log_pump::LogPumpHandle;
use ractor::{Actor, ActorRef};
use runner_core::backend::{LaunchSpec, SandboxBackend};
use runner_core::bootstrap::{EnvelopeParams, build_envelope};
use runner_core::config::{RunnerConfig, UserConfig};
use runner_core::control::server::ServerContext;
use runner_core::guest_env::GuestEnv;
use runner_core::health::SessionPhase;
use runner_core::logs::LogSink;
use runner_core::metrics::{RunnerMetrics, SessionSource};
use runner_core::{UserId, Workspace};
use runner_types::{
    DegradedReason, GuestRole, GuestStatus, HealthStatus, LogStream, SandboxTier, StartupStatus,
};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Upper bound on one guest's launch (image checks, VM boot, ...).
pub(crate) const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What a shutdown needs beyond the guests' stops and the log drain: the
/// control listener's stop and the children's `post_stop`, with room to
/// spare.
pub(crate) const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// How much longer than [`LAUNCH_TIMEOUT`] the supervisor waits for a guest
/// actor's answer before calling the actor unresponsive.
pub(crate) const LAUNCH_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Everything a session supervisor is started with (built by [`crate::Runner`]).
pub struct SessionArgs {
    pub(crate) user: UserId,
    pub(crate) session_id: String,
    pub(crate) tier: SandboxTier,
    pub(crate) config: Arc<RunnerConfig>,
    pub(crate) user_config: UserConfig,
    pub(crate) backend: Arc<dyn SandboxBackend>,
    pub(crate) workspace: Workspace,
    /// What every guest of the session runs as (`None`: the runner's uid).
    pub(crate) run_as: Option<runner_core::identity::GuestUser>,
    pub(crate) startup: StartupStatus,
    pub(crate) degraded: Vec<DegradedReason>,
    pub(crate) env: GuestEnv,
    /// The guests' readiness checks.
    pub(crate) readiness: runner_core::readiness::ReadinessChecks,
    /// Whether the runtime can reach the sidecar, on tiers where the runner
    /// links them (`None`: always).
    pub(crate) sidecar_link: Option<watch::Receiver<bool>>,
    pub(crate) control_limits: ControlLimits,
    pub(crate) health_tx: watch::Sender<HealthStatus>,
    pub(crate) phase_tx: watch::Sender<SessionPhase>,
    pub(crate) events: EventBus,
    /// Set when shutdown begins; guest actors then stop restarting.
    pub(crate) quiescing: Arc<AtomicBool>,
    /// Cancelled to force a shutdown: grace and log drain end at once.
    pub(crate) force: CancellationToken,
    /// Cancelled to abandon the start: launches still in flight are not
    /// waited for, and the session shuts down.
    pub(crate) start_cancel: CancellationToken,
    /// The last shutdown's report, for callers whose own request was
    /// overtaken by another shutdown.
    pub(crate) report_tx: watch::Sender<Option<super::ShutdownReport>>,
    /// The runner's metrics, where the session registers itself.
    pub(crate) metrics: RunnerMetrics,
    /// The provisioning task, which goes on to open the session's log
    /// files and bind its control socket, and then hands them over with
    /// the session lock; taken by the start.
    pub(crate) files: Option<FilesJob>,
    /// Held for the session's life: one session per user and workspace.
    /// The files job hands it over (it holds it until then, so nothing it
    /// opened or bound outlives the lock, whatever happens to the start).
    pub(crate) lock: Option<runner_core::lock::SessionLock>,
}

/// The files job: its files (or why they could not be had) and the session
/// lock, or `None` when provisioning itself failed or nobody waited for it.
pub(crate) type FilesJob = JoinHandle<
    Option<(
        Result<SessionFiles, SessionError>,
        runner_core::lock::SessionLock,
    )>,
>;

impl SessionArgs {
    /// A bound on an ordered shutdown with the configured timings.
    pub fn shutdown_bound(&self) -> Duration {
        let s = self.config.shutdown;
        2 * (s.grace + self.backend.stop_overrun()) + s.log_drain + SHUTDOWN_SLACK
    }

    fn has_sidecar(&self) -> bool {
        self.backend.has_sidecar()
    }

    fn roles(&self) -> Vec<GuestRole> {
        session_roles(self.has_sidecar())
    }
}

/// A session's guests, in start order.
fn session_roles(has_sidecar: bool) -> Vec<GuestRole> {
    GuestRole::START_ORDER
        .into_iter()
        .filter(|r| *r == GuestRole::Runtime || has_sidecar)
        .collect()
}

/// Every (guest, stream) of a session, in its pumps' order.
fn session_streams(has_sidecar: bool) -> Vec<(GuestRole, LogStream)> {
    session_roles(has_sidecar)
        .into_iter()
        .flat_map(|role| LogStream::ALL.map(|stream| (role, stream)))
        .collect()
}

pub(super) async fn on_start(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
) -> Result<(), SessionError> {
    let roles = state.args.roles();
    for role in &roles {
        on_guest_update(state, GuestStatus::starting(*role));
    }
    // The log files and the control socket are file-system work: the
    // provisioning task does it on the blocking pool while the guests
    // launch. A guest's output waits in its pipe until its log is open;
    // the socket is served once both guests run.
    state.pumps = session_streams(state.args.has_sidecar())
        .into_iter()
        .map(|(role, stream)| LogPumpHandle::unopened(role, stream))
        .collect();
    let launched = prepare_and_launch(myself, state, roles).await;
    // Awaited even when a launch failed, so that nothing opened or bound
    // for this session outlives its failed start (and its lock).
    let files = take_files(state)
        .instrument(tracing::debug_span!("session.files_wait"))
        .await;
    launched?;
    let (sinks, control) = files?;
    open_pumps(myself, state, sinks);
    if let Some(bound) = control {
        serve_control(myself, state, bound)
            .instrument(tracing::debug_span!("session.control_socket"))
            .await?;
    }
    state.metrics_registration = Some(state.args.metrics.register(SessionSource {
        user: state.args.user.to_string(),
        tier: state.args.tier,
        health: state.args.health_tx.subscribe(),
        logs: sinks_of(state),
    }));
    Ok(())
}

/// The backend's pre-flight, then the guests.
async fn prepare_and_launch(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    roles: Vec<GuestRole>,
) -> Result<(), SessionError> {
    state
        .args
        .backend
        .prepare_session(&state.args.user, &state.args.workspace)
        .instrument(tracing::debug_span!("session.prepare"))
        .await
        .map_err(SessionError::Prepare)?;
    launch_guests(myself, state, roles).await
}

/// A session's open log sinks (in its pumps' order) and its bound control
/// socket (`None` when it serves none).
pub(crate) type SessionFiles = (Vec<LogSink>, Option<BoundControlSocket>);

/// What the files job needs besides the provisioned workspace.
#[derive(Debug, Clone)]
pub(crate) struct FilesPlan {
    /// The session has a sidecar (its streams get logs too).
    pub(crate) has_sidecar: bool,
    /// Log limits.
    pub(crate) limits: runner_core::config::LogLimits,
    /// Threads the log writers run on (the runner's).
    pub(crate) writers: runner_core::logs::WriterThreads,
    /// Bind the control socket (`Some`), with its `ipc/` link (`true`).
    pub(crate) control: Option<bool>,
}

/// Opens the session's log sinks and binds its control socket. Blocking:
/// the provisioning task runs it once the workspace is ready.
pub(crate) fn open_files(
    workspace: &runner_core::Workspace,
    plan: FilesPlan,
) -> Result<SessionFiles, SessionError> {
    let streams = session_streams(plan.has_sidecar);
    let sinks = tracing::debug_span!("session.log_sinks").in_scope(|| {
        LogPumpHandle::open_sinks(&plan.writers, &workspace.logs, &streams, plan.limits)
    })?;
    let bound = plan.control.map(|link| {
        tracing::debug_span!("session.control_bind")
            .in_scope(|| BoundControlSocket::bind(workspace, link))
    });
    Ok((sinks, bound.transpose()?))
}

/// Waits for the files job: its files, with the session lock moved into
/// the session's arguments.
async fn take_files(state: &mut SessionState) -> Result<SessionFiles, SessionError> {
    // The runner always gives a started session its job, and a job whose
    // provisioning succeeded always answers: `Gone` covers what cannot
    // happen (a second start).
    let job = state.args.files.take().ok_or(SessionError::Gone)?;
    let done = job.await.map_err(|source| SessionError::BlockingTask {
        what: "opening logs and binding the control socket",
        source,
    })?;
    let (files, lock) = done.ok_or(SessionError::Gone)?;
    state.args.lock = Some(lock);
    files
}

/// Hands each pump its open sink (starting the copy of what its guest
/// wrote so far), with a task reporting the sink's loss.
fn open_pumps(myself: &ActorRef<SessionMsg>, state: &mut SessionState, sinks: Vec<LogSink>) {
    for (pump, sink) in state.pumps.iter().zip(sinks) {
        pump.open_with(sink);
        if let Some(watcher) = watch_log_loss(myself.clone(), pump) {
            state.loss_watchers.push(watcher);
        }
    }
}

/// The pumps' open sinks.
fn sinks_of(state: &SessionState) -> Vec<LogSink> {
    state
        .pumps
        .iter()
        .filter_map(|p| p.sink().cloned())
        .collect()
}

/// Launches the guests in `roles`' order (the sidecar first), the runtime
/// with the sidecar's endpoint in its envelope (known before the sidecar
/// runs). Each launch begins once the one before it has returned, unless
/// the backend [overlaps launches](SandboxBackend::overlaps_launches):
/// then they run side by side. Unless the start is cancelled, every launch
/// begun is awaited before an error is returned: the error of the first
/// guest, in start order, whose launch failed.
async fn launch_guests(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    roles: Vec<GuestRole>,
) -> Result<(), SessionError> {
    let sidecar_endpoint = state
        .args
        .has_sidecar()
        .then(|| state.args.backend.sidecar_endpoint(&state.args.workspace));
    let overlap = state.args.backend.overlaps_launches();
    let mut pending = Vec::with_capacity(roles.len());
    for role in roles {
        let endpoint = match role {
            GuestRole::Runtime => sidecar_endpoint.clone(),
            GuestRole::Sidecar => None,
        };
        let guest = spawn_guest(myself, state, role, endpoint)
            .instrument(tracing::debug_span!("session.spawn_guest_actor", %role))
            .await?;
        // Pushed before the launch, so a failed or timed-out launch is
        // still stopped (and cleaned up) by the shutdown that follows.
        state.guests.push(guest.clone());
        // The guest actor bounds the launch itself; this is a backstop.
        pending.push(
            async move {
                let launched = guest.launch(LAUNCH_TIMEOUT + LAUNCH_ANSWER_MARGIN).await;
                let launched =
                    launched.map_err(|e| SessionError::LaunchUnanswered { role, source: e })?;
                launched.map_err(|source| SessionError::Launch { role, source })
            }
            .instrument(tracing::debug_span!("session.launch", %role)),
        );
        if !overlap {
            await_launches(state, std::mem::take(&mut pending)).await?;
        }
    }
    await_launches(state, pending).await
}

/// Waits for every launch in `launches` (run side by side); the first
/// error in their order. A cancelled start stops waiting: the shutdown
/// that follows stops each guest once its (bounded) launch is over.
async fn await_launches<T>(
    state: &SessionState,
    launches: Vec<impl Future<Output = Result<T, SessionError>>>,
) -> Result<(), SessionError> {
    let launched = tokio::select! {
        all = futures::future::join_all(launches) => all,
        () = state.args.start_cancel.cancelled() => return Err(SessionError::Cancelled),
    };
    launched.into_iter().try_for_each(|r| r.map(drop))
}

/// Serves the control socket bound for the session.
async fn serve_control(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    bound: BoundControlSocket,
) -> Result<(), SessionError> {
    let ctx = ServerContext {
        user: state.args.user.clone(),
        health: state.args.health_tx.subscribe(),
        logs: sinks_of(state),
        events: state.args.events.history().clone(),
        session: supervisor_control(myself.clone()),
        shutdown_deadline: state.args.shutdown_bound(),
        metrics: state.args.metrics.clone(),
    };
    state.listener = Some(bound.serve(ctx, state.args.control_limits)?);
    Ok(())
}

async fn spawn_guest(
    myself: &ActorRef<SessionMsg>,
    state: &SessionState,
    role: GuestRole,
    sidecar_endpoint: Option<runner_types::SidecarEndpoint>,
) -> Result<GuestHandle, SessionError> {
    let a = &state.args;
    let envelope = build_envelope(EnvelopeParams {
        user: &a.user,
        tier: a.tier,
        role,
        workspace: &a.workspace,
        user_config: &a.user_config,
        sidecar_endpoint,
        sidecar_running: a.has_sidecar(),
        degraded_reasons: a.degraded.clone(),
    });
    let spec = LaunchSpec {
        run_as: a.run_as,
        role,
        user_id: a.user.clone(),
        session_id: a.session_id.clone(),
        workspace: a.workspace.clone(),
        envelope,
        extra_env: a.env.for_role(role).clone(),
        resources: a.user_config.resources.clone(),
    };
    let pumps = state
        .pumps
        .iter()
        .filter(|p| p.role() == role)
        .map(|p| (p.stream(), p.clone()))
        .collect();
    let args = GuestArgs {
        spec,
        backend: a.backend.clone(),
        restart: a.config.restart,
        grace: a.config.shutdown.grace,
        pumps,
        supervisor: myself.clone(),
        events: a.events.clone(),
        quiescing: a.quiescing.clone(),
        force: a.force.clone(),
        start_cancel: a.start_cancel.clone(),
        launch_timeout: LAUNCH_TIMEOUT,
        readiness: a.readiness.for_role(role).cloned(),
    };
    let (actor, _join) = Actor::spawn_linked(None, GuestActor, args, myself.get_cell())
        .await
        .map_err(SessionError::Spawn)?;
    Ok(GuestHandle::new(actor, role))
}

/// Least time between two `LogLoss` reports of one stream: a disk that
/// stays full drops output continuously, and health and events need the
/// count, not every buffer.
pub const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Reports growth of `pump`'s dropped-bytes count to the supervisor, at
/// most once per [`LOSS_REPORT_INTERVAL`] (`None`: its sink is not open).
fn watch_log_loss(
    supervisor: ActorRef<SessionMsg>,
    pump: &LogPumpHandle,
) -> Option<JoinHandle<()>> {
    let mut dropped = pump.sink()?.watch_dropped();
    let (role, stream) = (pump.role(), pump.stream());
    Some(tokio::spawn(async move {
        while dropped.changed().await.is_ok() {
            let total = *dropped.borrow_and_update();
            let loss = SessionMsg::LogLoss {
                role,
                stream,
                total,
            };
            if supervisor.cast(loss).is_err() {
                return;
            }
            tokio::time::sleep(LOSS_REPORT_INTERVAL).await;
        }
    }))
}
