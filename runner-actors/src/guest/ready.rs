//! A guest's readiness check (`[readiness.<guest>]`): started after every
//! launch; the guest is reported ready once it passes, and `not_ready`
//! (degraded, not failed) while it misses its timeout.

use super::tell_supervisor;
use super::{GuestActorState, GuestMsg, report_status};
use crate::session::SessionMsg;
use ractor::ActorRef;
use runner_core::readiness::{self, Readiness};
use runner_types::DegradedReason;
use tokio::task::JoinHandle;

/// Starts launch `generation`'s readiness check, if the guest has one: the
/// guest is not ready until it passes.
pub(super) fn start_readiness(
    myself: &ActorRef<GuestMsg>,
    state: &mut GuestActorState,
    generation: u64,
) -> Option<JoinHandle<()>> {
    let check = state.args.readiness.clone()?;
    state.status.ready = Some(false);
    let (me, role) = (myself.clone(), state.args.spec.role);
    let user_root = state.args.spec.workspace.user_root.clone();
    let for_reason = check.clone();
    Some(tokio::spawn(readiness::run_check(
        user_root,
        check,
        move |r| {
            let msg = match r {
                Readiness::Ready => GuestMsg::Ready { generation },
                Readiness::TimedOut(why) => GuestMsg::NotReady {
                    generation,
                    reason: readiness::not_ready(role, &for_reason, &why),
                },
            };
            if me.cast(msg).is_err() {
                tracing::debug!("guest actor gone before readiness could be reported");
            }
        },
    )))
}

pub(super) fn on_ready(state: &mut GuestActorState, generation: u64) {
    if generation != state.generation || state.current.is_none() {
        return;
    }
    let role = state.args.spec.role;
    tracing::info!(%role, "guest ready");
    state.status.ready = Some(true);
    report_status(state);
    if std::mem::take(&mut state.not_ready_reported) {
        let code = readiness::NOT_READY.to_owned();
        tell_supervisor(state, SessionMsg::Recovered { role, code });
    }
}

pub(super) fn on_not_ready(state: &mut GuestActorState, generation: u64, reason: DegradedReason) {
    if generation != state.generation || state.current.is_none() {
        return;
    }
    let role = state.args.spec.role;
    state.not_ready_reported = true;
    tell_supervisor(state, SessionMsg::Degraded { role, reason });
}
