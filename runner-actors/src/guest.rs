//! `GuestActor`: owns one guest (runtime or sidecar) across its launches.
//!
//! Messages: `Launch` (first start, answered), `Exited` (from the waiter
//! task), `RestartDue` (from the backoff timer), `EngineCheck` (while the
//! guest's engine is away), `Stop` (answered).
//!
//! An exit caused by the engine going away ([`GuestExit::engine_lost`]) is
//! not the guest's failure: the guest waits, reported degraded as
//! `engine_unreachable`, polling the engine with backoff
//! ([`ENGINE_BACKOFF_INITIAL`] doubling to [`ENGINE_BACKOFF_MAX`]), and is
//! relaunched when it answers; the restart limit is not touched.
//! It launches through the backend, hands the guest's output streams to the
//! log pumps, turns an exit into an event and applies the restart policy
//! ([`RestartTracker`]); it reports every status change to the supervisor.
//!
//! Shutdown guarantee: `Stop` stops the guest (grace, then force) and cleans
//! up after it; if the actor is stopped without `Stop`, `post_stop` does the
//! same with the configured grace, so no guest outlives its actor.

use crate::call::call;
use crate::events::{EventBus, SessionEvent};
use crate::log_pump::LogPumpHandle;
use crate::session::SessionMsg;
use engine::{on_engine_check, wait_for_engine};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ready::{on_not_ready, on_ready, start_readiness};
use runner_core::backend::{
    GuestControl, GuestIdentity, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend,
};
use runner_core::config::RestartConfig;
use runner_core::failure::FailureReason;
use runner_core::readiness::ReadinessCheck;
use runner_core::restart::{RestartDecision, RestartTracker};
use runner_types::{DegradedReason, GuestExit, GuestRole, GuestState, GuestStatus, LogStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stop::on_stop;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod engine;
mod ready;
mod stop;

pub use engine::{ENGINE_BACKOFF_INITIAL, ENGINE_BACKOFF_MAX, ENGINE_UNREACHABLE};

/// Messages of [`GuestActor`].
pub enum GuestMsg {
    /// Launch for the first time; answers with the identity or the error.
    Launch(RpcReplyPort<Result<GuestIdentity, LaunchError>>),
    /// The launch numbered `generation` exited.
    Exited {
        /// Launch number.
        generation: u64,
        /// How.
        exit: GuestExit,
    },
    /// The backoff after the exit of launch `generation` is over.
    RestartDue {
        /// Launch number that exited.
        generation: u64,
    },
    /// The engine of launch `generation` went away; check whether it is
    /// back, and relaunch if so (else check again after twice `delay`).
    EngineCheck {
        /// Launch number that exited.
        generation: u64,
        /// The delay that led here.
        delay: Duration,
    },
    /// The readiness check of launch `generation` passed.
    Ready {
        /// Launch number.
        generation: u64,
    },
    /// The readiness check of launch `generation` missed its timeout (it
    /// goes on).
    NotReady {
        /// Launch number.
        generation: u64,
        /// The `not_ready` reason for health.
        reason: DegradedReason,
    },
    /// Stop the guest (grace, then force) and clean up; answers with the
    /// guest's final status.
    Stop {
        /// SIGTERM → SIGKILL.
        grace: Duration,
        /// Answer.
        reply: RpcReplyPort<GuestStatus>,
    },
}

/// Arguments of [`GuestActor`].
pub struct GuestArgs {
    /// What to launch (reused for every restart).
    pub spec: LaunchSpec,
    /// The tier's backend.
    pub backend: Arc<dyn SandboxBackend>,
    /// Restart policy.
    pub restart: RestartConfig,
    /// Grace used when the actor stops without a `Stop` message.
    pub grace: Duration,
    /// Pumps for this guest's streams.
    pub pumps: Vec<(LogStream, LogPumpHandle)>,
    /// The session supervisor.
    pub supervisor: ActorRef<SessionMsg>,
    /// Event stream.
    pub events: EventBus,
    /// Set by the supervisor when shutdown begins: exits are then final.
    pub quiescing: Arc<AtomicBool>,
    /// Cancelled to force a stop in progress: its grace ends at once, and
    /// a launch in flight is abandoned.
    pub force: CancellationToken,
    /// Cancelled when the session's start is abandoned: a launch in flight
    /// is dropped.
    pub start_cancel: CancellationToken,
    /// Bound on one launch.
    pub launch_timeout: Duration,
    /// The guest's readiness check, run after every launch.
    pub readiness: Option<ReadinessCheck>,
}

/// Per-guest actor. See the module docs.
pub struct GuestActor;

/// State of [`GuestActor`].
pub struct GuestActorState {
    args: GuestArgs,
    tracker: RestartTracker,
    generation: u64,
    current: Option<Running>,
    status: GuestStatus,
    /// A `not_ready` reason is reported to the supervisor.
    not_ready_reported: bool,
}

struct Running {
    control: Box<dyn GuestControl>,
    waiter: JoinHandle<()>,
    /// The readiness check of this launch, while it runs.
    readiness: Option<JoinHandle<()>>,
    started: Instant,
}

impl Running {
    /// Ends the tasks that watch this launch.
    fn abort_watchers(&self) {
        self.waiter.abort();
        if let Some(r) = &self.readiness {
            r.abort();
        }
    }
}

impl Actor for GuestActor {
    type Msg = GuestMsg;
    // Boxed: see `SessionSupervisor`'s state.
    type State = Box<GuestActorState>;
    type Arguments = GuestArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<GuestMsg>,
        args: GuestArgs,
    ) -> Result<Box<GuestActorState>, ActorProcessingErr> {
        let status = GuestStatus::starting(args.spec.role);
        Ok(Box::new(GuestActorState {
            tracker: RestartTracker::new(args.spec.role, args.restart),
            args,
            generation: 0,
            current: None,
            status,
            not_ready_reported: false,
        }))
    }

    async fn handle(
        &self,
        myself: ActorRef<GuestMsg>,
        msg: GuestMsg,
        state: &mut Box<GuestActorState>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GuestMsg::Launch(reply) => {
                let result = on_launch(&myself, state).await;
                if reply.send(result).is_err() {
                    tracing::debug!("launch requester went away");
                }
            }
            GuestMsg::Exited { generation, exit } => {
                on_exited(&myself, state, generation, exit).await
            }
            GuestMsg::RestartDue { generation } => on_restart_due(&myself, state, generation).await,
            GuestMsg::EngineCheck { generation, delay } => {
                on_engine_check(&myself, state, generation, delay).await
            }
            GuestMsg::Ready { generation } => on_ready(state, generation),
            GuestMsg::NotReady { generation, reason } => on_not_ready(state, generation, reason),
            GuestMsg::Stop { grace, reply } => {
                on_stop(state, grace).await;
                if reply.send(state.status.clone()).is_err() {
                    tracing::debug!("stop requester went away");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GuestMsg>,
        state: &mut Box<GuestActorState>,
    ) -> Result<(), ActorProcessingErr> {
        if state.current.is_some() {
            let grace = state.args.grace;
            tracing::warn!(role = %state.args.spec.role, "guest actor stopped without Stop; stopping guest");
            // Boxed: see `SessionSupervisor::post_stop`.
            Box::pin(on_stop(state, grace)).await;
        }
        Ok(())
    }
}

async fn on_launch(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
) -> Result<GuestIdentity, LaunchError> {
    set_state(state, GuestState::Starting);
    match launch_bounded(&state.args).await {
        Ok(launched) => Ok(adopt(myself, state, launched)),
        Err(e) => {
            set_state(state, GuestState::Failed);
            Err(e)
        }
    }
}

/// The backend's launch, bounded by the launch timeout; a cancelled start
/// or a forced stop abandons it at once. A launch dropped half-way cleans
/// up what it had created (each backend guards its launch: a container by
/// name and labels, a process group, a VM process).
async fn launch_bounded(args: &GuestArgs) -> Result<LaunchedGuest, LaunchError> {
    let role = args.spec.role;
    let after = args.launch_timeout;
    let launch = args
        .backend
        .launch(args.spec.clone())
        .instrument(tracing::debug_span!("guest.backend_launch", %role));
    let launch = tokio::time::timeout(after, launch);
    tokio::select! {
        r = launch => r.unwrap_or(Err(LaunchError::TimedOut { role, after })),
        () = args.force.cancelled() => Err(LaunchError::Cancelled { role }),
        () = args.start_cancel.cancelled() => Err(LaunchError::Cancelled { role }),
    }
}

/// Takes a launched guest over: its streams go to the pumps, a waiter task
/// reports its exit, and the guest is announced running.
fn adopt(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
    launched: LaunchedGuest,
) -> GuestIdentity {
    state.generation += 1;
    let generation = state.generation;
    for output in launched.outputs {
        match state.args.pumps.iter().find(|(s, _)| *s == output.stream) {
            Some((_, pump)) => pump.attach(output.reader),
            None => {
                tracing::warn!(stream = %output.stream, "no log pump for stream; output dropped")
            }
        }
    }
    let mut exit = launched.exit;
    let me = myself.clone();
    let waiter = tokio::spawn(async move {
        let exit = exit.wait().await;
        if me.cast(GuestMsg::Exited { generation, exit }).is_err() {
            tracing::debug!("guest actor gone before exit could be reported");
        }
    });
    let readiness = start_readiness(myself, state, generation);
    let identity = launched.identity;
    state.status.pid = identity.pid();
    state.status.container_name = identity.container_name().map(str::to_owned);
    state.status.container_id = match &identity {
        GuestIdentity::Container { id, .. } => Some(id.clone()),
        _ => None,
    };
    state.status.started_at_unix_ms = Some(runner_core::metrics::unix_ms_now());
    state.current = Some(Running {
        control: launched.control,
        waiter,
        readiness,
        started: Instant::now(),
    });
    emit(
        state,
        SessionEvent::GuestStarted {
            role: state.args.spec.role,
            pid: state.status.pid,
            container_name: state.status.container_name.clone(),
            restarts: state.status.restarts,
        },
    );
    set_state(state, GuestState::Running);
    identity
}

async fn on_exited(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
    generation: u64,
    exit: GuestExit,
) {
    if generation != state.generation || state.current.is_none() {
        return; // a stale launch, or a stop already handled it
    }
    let role = state.args.spec.role;
    let running = state.current.take().expect("checked above");
    running.abort_watchers();
    state.status.ready = state.args.readiness.as_ref().map(|_| false);
    if let Err(e) = running.control.cleanup().await {
        tracing::warn!(%role, error = %e, "cleanup after exit failed");
    }
    state.status.last_exit = Some(exit);
    emit(state, SessionEvent::GuestExited { role, exit });
    if state.args.quiescing.load(Ordering::SeqCst) {
        // Shutting down: an exit now is final, whatever the policy says.
        set_state(state, GuestState::Stopped);
        return;
    }
    if exit.engine_lost {
        wait_for_engine(myself, state, generation);
        return;
    }
    let ran_for = running.started.elapsed();
    match state.tracker.on_exit(exit.status, Instant::now(), ran_for) {
        RestartDecision::Restart { after, attempt } => {
            set_state(state, GuestState::BackingOff);
            emit(
                state,
                SessionEvent::GuestRestarting {
                    role,
                    attempt,
                    after,
                },
            );
            myself.send_after(after, move || GuestMsg::RestartDue { generation });
        }
        RestartDecision::Done => set_state(state, GuestState::Exited),
        RestartDecision::GiveUp { reason } => {
            set_state(state, GuestState::Failed);
            notify_failed(state, reason);
        }
    }
}

async fn on_restart_due(myself: &ActorRef<GuestMsg>, state: &mut GuestActorState, generation: u64) {
    if generation != state.generation || state.status.state != GuestState::BackingOff {
        return;
    }
    if state.args.quiescing.load(Ordering::SeqCst) {
        set_state(state, GuestState::Stopped);
        return;
    }
    state.status.restarts = state.tracker.total();
    if let Err(e) = on_launch(myself, state).await {
        let role = state.args.spec.role;
        tracing::error!(%role, error = %e, "relaunch failed");
        notify_failed(state, relaunch_failed(role, e));
    }
}

fn relaunch_failed(role: GuestRole, source: LaunchError) -> FailureReason {
    FailureReason::RelaunchFailed {
        role,
        source: Arc::new(source),
    }
}

fn notify_failed(state: &GuestActorState, reason: FailureReason) {
    tell_supervisor(state, SessionMsg::GuestFailed { reason });
}

/// Casts `msg` to the session supervisor; a gone supervisor (the session
/// is ending) is not an error.
fn tell_supervisor(state: &GuestActorState, msg: SessionMsg) {
    if state.args.supervisor.cast(msg).is_err() {
        tracing::debug!("supervisor gone; message dropped");
    }
}

fn set_state(state: &mut GuestActorState, new: GuestState) {
    state.status.state = new;
    let role = state.args.spec.role;
    emit(state, SessionEvent::GuestState { role, state: new });
    report_status(state);
}

/// Sends the guest's status to the supervisor (which republishes health).
fn report_status(state: &GuestActorState) {
    tell_supervisor(state, SessionMsg::GuestUpdate(state.status.clone()));
}

fn emit(state: &GuestActorState, event: SessionEvent) {
    // No subscribers is normal.
    let _subscribers = state.args.events.send(event).unwrap_or(0);
}

/// Typed handle to a [`GuestActor`].
#[derive(Clone)]
pub struct GuestHandle {
    actor: ActorRef<GuestMsg>,
    role: GuestRole,
}

impl GuestHandle {
    /// Wraps an actor reference.
    pub fn new(actor: ActorRef<GuestMsg>, role: GuestRole) -> Self {
        Self { actor, role }
    }

    /// Which guest.
    pub fn role(&self) -> GuestRole {
        self.role
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<GuestMsg> {
        &self.actor
    }

    /// First launch. `timeout` bounds the whole call.
    pub async fn launch(
        &self,
        timeout: Duration,
    ) -> Result<Result<GuestIdentity, LaunchError>, crate::HandleError> {
        call(&self.actor, GuestMsg::Launch, timeout).await
    }

    /// Stops the guest and returns its final status; `timeout` must exceed
    /// `grace` plus the backend's kill allowance.
    pub async fn stop(
        &self,
        grace: Duration,
        timeout: Duration,
    ) -> Result<GuestStatus, crate::HandleError> {
        call(
            &self.actor,
            |reply| GuestMsg::Stop { grace, reply },
            timeout,
        )
        .await
    }
}
