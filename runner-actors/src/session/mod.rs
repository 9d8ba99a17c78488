//! `SessionSupervisor`: one per user session; the root of the actor tree.
//!
//! ```text
//! SessionSupervisor
//! ├── GuestActor(sidecar)  started first; its endpoint goes into the runtime's envelope
//! ├── GuestActor(runtime)
//! │   owned as tasks (not actors), see `LogPumpHandle`, `ControlListenerHandle`:
//! ├── log pumps × N        one per (guest, stream), alive for the whole session
//! └── control listener     (optional)
//! ```
//!
//! Messages: `Start` (answered; launches everything in order), `GuestUpdate`
//! and `GuestFailed` (from guest actors), `LogLoss` (from a task watching
//! each log sink's dropped-bytes count), `Shutdown` (answered).
//!
//! Shutdown guarantee, in order and bounded: the control listener stops
//! accepting (no new work; its server winds down and its socket is removed
//! while the guests stop) → runtime stopped → sidecar stopped (each grace
//! then force, then its per-launch resources removed; each guest's actor is
//! told to stop once its guest has) → every log pump drained to EOF or cut
//! at `log_drain` → guest actors awaited, stopped *by us*, so each one's
//! `post_stop` runs (ractor would otherwise kill linked children without
//! it) → the pumps' copy tasks stopped. A child
//! exiting never stops the supervisor: the default `handle_supervisor_evt`
//! is overridden. The state's drop guard stops the pumps and the listener
//! however the supervisor ends.

mod handle;
pub(crate) mod start;
#[cfg(test)]
mod tests;

pub(crate) use handle::SUPERVISOR_EXIT_BOUND;
pub use handle::{FORCED_STOP_BOUND, SessionHandle};
pub(crate) use start::LAUNCH_TIMEOUT;
pub use start::LOSS_REPORT_INTERVAL;
pub use start::SessionArgs;

use crate::control::ControlListenerHandle;
use crate::error::SessionError;
use crate::events::SessionEvent;
use crate::guest::GuestHandle;
use crate::log_pump::LogPumpHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use runner_core::failure::{FailureReason, SessionChild};
use runner_core::health::{HealthInputs, SessionPhase, health_report};
use runner_types::{DegradedReason, GuestRole, GuestStatus, HealthStatus, LogStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Bound on stopping the control listener (aborting its tasks, removing
/// its socket and link) at the start of a shutdown.
const LISTENER_STOP_BOUND: Duration = Duration::from_secs(2);
/// Least time the children get to run their `post_stop` at the end of a
/// shutdown, even when the caller's deadline is spent.
const CHILDREN_STOP_MIN: Duration = Duration::from_secs(2);
/// The reason the supervisor gives its child actors when it stops them.
const CHILD_STOP_REASON: &str = "session shutdown";

/// Messages of [`SessionSupervisor`].
pub enum SessionMsg {
    /// Launch pumps, guests (sidecar first) and the control listener.
    Start(RpcReplyPort<Result<(), SessionError>>),
    /// A guest's status changed.
    GuestUpdate(GuestStatus),
    /// A guest gave up (restart limit, relaunch failure).
    GuestFailed {
        /// Why (names the guest).
        reason: FailureReason,
    },
    /// A guest stream's log lost output: `total` bytes so far.
    LogLoss {
        /// Which guest.
        role: GuestRole,
        /// Which stream.
        stream: LogStream,
        /// Bytes lost so far in this session.
        total: u64,
    },
    /// A guest runs degraded for a reason that may pass (its engine is
    /// unreachable); health reports it until `Recovered`.
    Degraded {
        /// Which guest.
        role: GuestRole,
        /// Code and detail.
        reason: DegradedReason,
    },
    /// What `Degraded` reported for `role` with `code` is over.
    Recovered {
        /// Which guest.
        role: GuestRole,
        /// The code that no longer applies.
        code: String,
    },
    /// Ordered, bounded shutdown within `deadline`; then the actor stops.
    Shutdown {
        /// Upper bound on the whole shutdown.
        deadline: Duration,
        /// Answer once done (optional: the control socket fires and forgets).
        reply: Option<RpcReplyPort<ShutdownReport>>,
    },
}

/// What a shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Guests stopped, with their final exits.
    pub guests: Vec<GuestStatus>,
    /// Streams whose pumps were cut at the drain timeout instead of reaching EOF.
    pub cut_streams: Vec<String>,
    /// Log files whose writes had not finished when the shutdown gave up on
    /// them (a stuck disk or mount; their writer threads are abandoned).
    pub stuck_logs: Vec<std::path::PathBuf>,
    /// How long the shutdown took.
    pub took: Duration,
}

/// The supervisor actor. See the module docs.
pub struct SessionSupervisor;

/// State of [`SessionSupervisor`].
pub struct SessionState {
    args: SessionArgs,
    phase: SessionPhase,
    guests: Vec<GuestHandle>,
    statuses: Vec<GuestStatus>,
    pumps: Vec<LogPumpHandle>,
    /// Tasks that turn each sink's dropped-bytes count into `LogLoss`.
    loss_watchers: Vec<tokio::task::JoinHandle<()>>,
    /// Bytes lost per guest stream (only streams that lost any).
    log_bytes_dropped: Vec<(GuestRole, LogStream, u64)>,
    listener: Option<ControlListenerHandle>,
    /// Reasons reported by `Degraded` and not yet `Recovered`, per guest.
    degraded_by: Vec<(GuestRole, DegradedReason)>,
    /// `degraded_by`'s reasons, as health reports them.
    degraded: Vec<DegradedReason>,
    /// The session in its runner's metrics, while it lives.
    metrics_registration: Option<runner_core::metrics::SessionRegistration>,
}

/// The drop guard: however the supervisor ends (a shutdown, a panic, being
/// killed), the tasks it owns end with it — every log copy task (bytes
/// already read are still written), the loss watchers, and the control
/// listener (whose own drop guard stops its server and removes its socket).
impl Drop for SessionState {
    fn drop(&mut self) {
        for pump in &self.pumps {
            pump.stop();
        }
        for watcher in &self.loss_watchers {
            watcher.abort();
        }
    }
}

impl Actor for SessionSupervisor {
    type Msg = SessionMsg;
    // Boxed: ractor boxes the state again when the actor ends (for the
    // supervision event), and a state this size is a large allocation
    // (glibc consolidates its free lists before each one).
    type State = Box<SessionState>;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<Box<SessionState>, ActorProcessingErr> {
        Ok(Box::new(SessionState {
            args,
            phase: SessionPhase::Starting,
            guests: Vec::new(),
            statuses: Vec::new(),
            pumps: Vec::new(),
            loss_watchers: Vec::new(),
            log_bytes_dropped: Vec::new(),
            listener: None,
            degraded_by: Vec::new(),
            degraded: Vec::new(),
            metrics_registration: None,
        }))
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut Box<SessionState>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Start(reply) => {
                let result = start::on_start(&myself, state).await;
                let failed = result.is_err();
                if failed {
                    on_shutdown(&myself, state, state.args.shutdown_bound()).await;
                } else {
                    set_phase(state, SessionPhase::Running);
                    emit(state, SessionEvent::SessionStarted);
                }
                if reply.send(result).is_err() {
                    tracing::debug!("start requester went away");
                }
                if failed {
                    myself.stop(Some("start failed".into()));
                }
            }
            SessionMsg::GuestUpdate(status) => on_guest_update(state, status),
            SessionMsg::GuestFailed { reason } => on_failed(state, reason),
            SessionMsg::LogLoss {
                role,
                stream,
                total,
            } => on_log_loss(state, role, stream, total),
            SessionMsg::Degraded { role, reason } => on_degraded(state, role, Some(reason), None),
            SessionMsg::Recovered { role, code } => on_degraded(state, role, None, Some(code)),
            SessionMsg::Shutdown { deadline, reply } => {
                let report = on_shutdown(&myself, state, deadline).await;
                if let Some(reply) = reply
                    && reply.send(report).is_err()
                {
                    tracing::debug!("shutdown requester went away");
                }
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SessionMsg>,
        evt: SupervisionEvent,
        state: &mut Box<SessionState>,
    ) -> Result<(), ActorProcessingErr> {
        // Override ractor's default, which would stop this supervisor when any
        // child exits. Guest exits are events handled by the guest actors; a
        // child *actor* failing is a bug, and the session reports it.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            match failed_guest(state, cell.get_id()) {
                Some(role) => {
                    let reason = FailureReason::ChildFailed {
                        child: SessionChild::Guest(role),
                        error: err.to_string(),
                    };
                    on_failed(state, reason);
                }
                None => tracing::error!(error = %err, "unknown child actor failed"),
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SessionMsg>,
        state: &mut Box<SessionState>,
    ) -> Result<(), ActorProcessingErr> {
        if state.phase != SessionPhase::Stopped {
            // Stopped from outside without Shutdown: still run the ordered
            // path. Boxed so that the future ractor boxes for every actor's
            // end stays small.
            let bound = state.args.shutdown_bound();
            Box::pin(on_shutdown(&myself, state, bound)).await;
        }
        Ok(())
    }
}

fn on_guest_update(state: &mut SessionState, status: GuestStatus) {
    match state.statuses.iter_mut().find(|s| s.role == status.role) {
        Some(s) => *s = status,
        None => state.statuses.push(status),
    }
    state.statuses.sort_by_key(|s| s.role != GuestRole::Sidecar);
    publish_health(state);
}

fn on_log_loss(state: &mut SessionState, role: GuestRole, stream: LogStream, total: u64) {
    let lost = &mut state.log_bytes_dropped;
    match lost.iter_mut().find(|l| l.0 == role && l.1 == stream) {
        Some(entry) => entry.2 = total,
        None => lost.push((role, stream, total)),
    }
    tracing::warn!(%role, %stream, total, "guest output lost instead of logged");
    // Health first: whoever gets the event finds the count in health.
    publish_health(state);
    emit(
        state,
        SessionEvent::LogBytesDropped {
            role,
            stream,
            total,
        },
    );
}

/// Adds `add` for `role` (replacing one with the same code), or removes
/// `role`'s reason with code `remove`; emits the event and republishes
/// health when something changed.
fn on_degraded(
    state: &mut SessionState,
    role: GuestRole,
    add: Option<DegradedReason>,
    remove: Option<String>,
) {
    let code = match (&add, &remove) {
        (Some(r), _) => r.code.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => return,
    };
    let before = state.degraded_by.len();
    state
        .degraded_by
        .retain(|(r, reason)| !(*r == role && reason.code == code));
    let removed = state.degraded_by.len() < before;
    match add {
        Some(reason) => {
            tracing::warn!(%role, code = %reason.code, detail = %reason.detail, "degraded");
            emit(
                state,
                SessionEvent::Degraded {
                    role,
                    reason: reason.clone(),
                },
            );
            state.degraded_by.push((role, reason));
        }
        None if removed => {
            tracing::info!(%role, %code, "recovered");
            emit(state, SessionEvent::Recovered { role, code });
        }
        None => return,
    }
    state.degraded = state.degraded_by.iter().map(|(_, r)| r.clone()).collect();
    publish_health(state);
}

/// The guest whose actor has id `id` (guests are a supervisor's only
/// child actors: log pumps and the control listener are tasks it owns).
fn failed_guest(state: &SessionState, id: ractor::ActorId) -> Option<GuestRole> {
    state
        .guests
        .iter()
        .find(|g| g.actor().get_id() == id)
        .map(GuestHandle::role)
}

fn on_failed(state: &mut SessionState, reason: FailureReason) {
    tracing::error!(reason = %reason.to_text(), "session failed");
    if !state.phase.is_shutdown() {
        emit(
            state,
            SessionEvent::SessionFailed {
                reason: reason.clone(),
            },
        );
        set_phase(state, SessionPhase::Failed { reason });
    }
}

async fn on_shutdown(
    myself: &ActorRef<SessionMsg>,
    state: &mut SessionState,
    deadline: Duration,
) -> ShutdownReport {
    let started = Instant::now();
    let left = || deadline.saturating_sub(started.elapsed());
    set_phase(state, SessionPhase::ShuttingDown);
    emit(state, SessionEvent::ShutdownStarted);
    // From here on an exiting guest is not restarted.
    state.args.quiescing.store(true, Ordering::SeqCst);

    // 1. No new control work: the listener stops accepting now. Its server
    //    winds down (open connections send their last frames) and its
    //    socket file is removed while the guests stop: waiting for that
    //    first would only delay the stops.
    let listener = state.listener.take();
    if let Some(listener) = &listener {
        listener.close();
    }
    let listener_bound = left().min(LISTENER_STOP_BOUND);
    let listener_stop = async move {
        if let Some(mut listener) = listener {
            listener.stop(listener_bound).await;
        }
    }
    .instrument(tracing::debug_span!("shutdown.listener"));
    // 2. Runtime, then sidecar; each guest's actor is told to stop as soon
    //    as its guest has stopped.
    let guests = stop_guests(state, deadline.saturating_sub(started.elapsed()))
        .instrument(tracing::debug_span!("shutdown.guests"));
    tokio::join!(listener_stop, guests);
    // 3. Drain every pump to EOF, all at once, bounded by log_drain (not at
    //    all when forced: what is left is cut).
    let drain = if state.args.force.is_cancelled() {
        Duration::ZERO
    } else {
        state.args.config.shutdown.log_drain.min(left())
    };
    let (cut_streams, stuck_logs) = drain_pumps(&state.pumps, drain)
        .instrument(tracing::debug_span!("shutdown.drain"))
        .await;
    // 4. Wait for the guest actors, stopped by us (above) so that each
    //    one's post_stop runs (a guest actor's post_stop still stops its
    //    guest, bounded); then whatever child is left.
    let overrun = state.args.backend.stop_overrun();
    let children_bound = CHILDREN_STOP_MIN.max(left()) + overrun;
    stop_children(myself, &state.guests, children_bound)
        .instrument(tracing::debug_span!("shutdown.children"))
        .await;
    state.guests.clear();
    let _finish = tracing::debug_span!("shutdown.finish").entered();
    for pump in state.pumps.drain(..) {
        pump.stop();
    }
    for watcher in state.loss_watchers.drain(..) {
        watcher.abort();
    }
    remove_sidecar_socket(state);
    set_phase(state, SessionPhase::Stopped);
    emit(state, SessionEvent::ShutdownComplete);
    let report = ShutdownReport {
        guests: state.statuses.clone(),
        cut_streams,
        stuck_logs,
        took: started.elapsed(),
    };
    state.args.report_tx.send_replace(Some(report.clone()));
    report
}

/// Stops the runtime, then the sidecar, within `left`. A short deadline
/// shortens the grace, never the force step: a guest is always killed and
/// reaped, not abandoned.
async fn stop_guests(state: &mut SessionState, left: Duration) {
    let started = Instant::now();
    let overrun = state.args.backend.stop_overrun();
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        if let Some(g) = state.guests.iter().find(|g| g.role() == role) {
            let remaining = left.saturating_sub(started.elapsed());
            let grace = state
                .args
                .config
                .shutdown
                .grace
                .min(remaining.saturating_sub(overrun));
            let stop = g
                .stop(grace, grace + overrun)
                .instrument(tracing::debug_span!("shutdown.stop_guest", %role));
            let stopped = stop.await;
            // Its actor has nothing left to do: it winds down while the
            // next guest stops (`stop_children` waits for it).
            g.actor().stop(Some(CHILD_STOP_REASON.into()));
            match stopped {
                Ok(status) => on_guest_update(state, status),
                Err(e) => tracing::error!(%role, error = %e, "guest did not stop in time"),
            }
        }
    }
}

/// Stops every guest actor (those already told to stop are only waited
/// for) and waits for them within `bound`, so each one's `post_stop` has
/// run; then stops and waits for any other child actor the same way.
async fn stop_children(myself: &ActorRef<SessionMsg>, guests: &[GuestHandle], bound: Duration) {
    let waits = guests.iter().map(|g| {
        g.actor().stop(Some(CHILD_STOP_REASON.into()));
        g.actor().wait(Some(bound))
    });
    for (g, waited) in guests.iter().zip(futures::future::join_all(waits).await) {
        if waited.is_err() {
            tracing::warn!(role = %g.role(), ?bound, "guest actor still running after its stop");
        }
    }
    let others = myself
        .get_children()
        .into_iter()
        .any(|c| guests.iter().all(|g| g.actor().get_id() != c.get_id()));
    if others {
        myself
            .stop_children_and_wait(Some(CHILD_STOP_REASON.into()), Some(bound))
            .await;
    }
}

/// Drains every pump at once within `drain`; returns the streams cut
/// before their EOF and the logs whose writes did not finish.
async fn drain_pumps(
    pumps: &[LogPumpHandle],
    drain: Duration,
) -> (Vec<String>, Vec<std::path::PathBuf>) {
    let outcomes = futures::future::join_all(pumps.iter().map(|p| p.drain(drain))).await;
    let cut_streams = outcomes
        .iter()
        .zip(pumps)
        .filter(|(d, _)| d.cut)
        .map(|(_, p)| p.name().to_owned())
        .collect::<Vec<_>>();
    let stuck_logs = outcomes
        .iter()
        .zip(pumps)
        .filter(|(d, _)| d.writes_stuck)
        .filter_map(|(_, p)| p.sink().map(|s| s.path().to_path_buf()))
        .collect::<Vec<_>>();
    if !cut_streams.is_empty() {
        tracing::warn!(?cut_streams, "log pumps cut at the drain timeout");
    }
    (cut_streams, stuck_logs)
}

/// The sidecar's Unix socket lives in `ipc/`: a stale one would greet the
/// next runtime with a dead endpoint. `ipc/` is the guests' directory, so
/// only a socket is removed (checked with `lstat`), never whatever else a
/// guest put under that name.
fn remove_sidecar_socket(state: &SessionState) {
    let path = state.args.workspace.sidecar_socket();
    match runner_core::workspace::file::remove_stale_socket(&path) {
        Ok(true) => tracing::debug!(path = %path.display(), "removed sidecar socket"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove sidecar socket"),
    }
}

fn set_phase(state: &mut SessionState, phase: SessionPhase) {
    state.phase = phase.clone();
    if state.args.phase_tx.send(phase).is_err() {
        tracing::trace!("no phase watchers");
    }
    publish_health(state);
}

fn publish_health(state: &SessionState) {
    let a = &state.args;
    let log_dir = a.workspace.logs.display().to_string();
    let health: HealthStatus = health_report(&HealthInputs {
        user_id: a.user.as_str(),
        tier: a.tier,
        startup: &a.startup,
        phase: &state.phase,
        log_dir: &log_dir,
        guests: &state.statuses,
        // Read at every publish: the backend changes it before the guest
        // status change that goes with it (bridge up before the runtime is
        // reported running, down before its exit is).
        sidecar_linked: a.sidecar_link.as_ref().is_none_or(|l| *l.borrow()),
        log_bytes_dropped: &state.log_bytes_dropped,
        degraded: &state.degraded,
    });
    a.health_tx.send_replace(health);
}

fn emit(state: &SessionState, event: SessionEvent) {
    let _subscribers = state.args.events.send(event).unwrap_or(0);
}
