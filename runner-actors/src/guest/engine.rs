//! A guest whose engine went away ([`runner_types::GuestExit::engine_lost`]):
//! reported degraded as [`ENGINE_UNREACHABLE`], polled with backoff, and
//! relaunched when the engine answers, outside the restart limit.

use super::{
    GuestActorState, GuestMsg, notify_failed, on_launch, relaunch_failed, set_state,
    tell_supervisor,
};
use crate::session::SessionMsg;
use ractor::ActorRef;
use runner_types::{DegradedReason, GuestRole, GuestState};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Degraded-reason code while a guest waits for its engine to come back.
pub const ENGINE_UNREACHABLE: &str = "engine_unreachable";
/// First wait before checking a lost engine again.
pub const ENGINE_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between two checks of a lost engine.
pub const ENGINE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Degraded, waiting for the engine: the first check comes after
/// [`ENGINE_BACKOFF_INITIAL`].
pub(super) fn wait_for_engine(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
    generation: u64,
) {
    let role = state.args.spec.role;
    set_state(state, GuestState::BackingOff);
    let reason = DegradedReason {
        code: ENGINE_UNREACHABLE.to_owned(),
        detail: format!("the {role} guest's engine went away; relaunching when it answers"),
    };
    tell_supervisor(state, SessionMsg::Degraded { role, reason });
    let delay = ENGINE_BACKOFF_INITIAL;
    myself.send_after(delay, move || GuestMsg::EngineCheck { generation, delay });
}

pub(super) async fn on_engine_check(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
    generation: u64,
    delay: Duration,
) {
    if generation != state.generation || state.status.state != GuestState::BackingOff {
        return;
    }
    if state.args.quiescing.load(Ordering::SeqCst) {
        set_state(state, GuestState::Stopped);
        return;
    }
    let role = state.args.spec.role;
    if state.args.backend.engine_ready().await {
        match on_launch(myself, state).await {
            Ok(_) => {
                engine_recovered(state, role);
                return;
            }
            // The engine answers but the launch failed anyway (its image
            // is gone, a name conflict): that is a real failure, not an
            // outage to wait out.
            Err(e) if state.args.backend.engine_ready().await => {
                tracing::error!(%role, error = %e, "relaunch after the engine came back failed");
                engine_recovered(state, role);
                notify_failed(state, relaunch_failed(role, e));
                return;
            }
            Err(e) => {
                tracing::warn!(%role, error = %e, "the engine went away again during the relaunch")
            }
        }
    }
    // on_launch bumps the generation only on success; keep waiting.
    let generation = state.generation;
    // A relaunch that failed moved the guest on; otherwise it still waits.
    if state.status.state != GuestState::BackingOff {
        set_state(state, GuestState::BackingOff);
    }
    let next = (delay * 2).min(ENGINE_BACKOFF_MAX);
    myself.send_after(next, move || GuestMsg::EngineCheck {
        generation,
        delay: next,
    });
}

/// The engine answers again: `engine_unreachable` no longer applies.
fn engine_recovered(state: &GuestActorState, role: GuestRole) {
    let code = ENGINE_UNREACHABLE.to_owned();
    tell_supervisor(state, SessionMsg::Recovered { role, code });
}
