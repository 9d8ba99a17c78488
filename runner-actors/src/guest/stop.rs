//! Stopping a guest: grace, then force (at once when the session's stop
//! is forced), then the launch's clean-up.

use super::{GuestActorState, set_state};
use runner_core::backend::GuestControl;
use runner_types::{GuestExit, GuestRole, GuestState};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(super) async fn on_stop(state: &mut GuestActorState, grace: Duration) -> Option<GuestExit> {
    // Bump the generation so a pending restart timer or exit report is ignored.
    state.generation += 1;
    let Some(running) = state.current.take() else {
        if matches!(
            state.status.state,
            GuestState::BackingOff | GuestState::Starting
        ) {
            set_state(state, GuestState::Stopped);
        }
        return None;
    };
    set_state(state, GuestState::Stopping);
    let role = state.args.spec.role;
    let exit = stop_guest(&*running.control, role, grace, &state.args.force).await;
    running.abort_watchers();
    if let Err(e) = running.control.cleanup().await {
        tracing::warn!(%role, error = %e, "cleanup after stop failed");
    }
    if exit.is_some() {
        state.status.last_exit = exit;
    }
    // A stop that failed leaves a guest that may still run: say so.
    let final_state = if exit.is_some() {
        GuestState::Stopped
    } else {
        GuestState::Failed
    };
    set_state(state, final_state);
    exit
}

/// Stops a running guest within `grace` (none once `force` is cancelled);
/// `None` if the stop failed.
async fn stop_guest(
    control: &dyn GuestControl,
    role: GuestRole,
    grace: Duration,
    force: &CancellationToken,
) -> Option<GuestExit> {
    let grace = if force.is_cancelled() {
        Duration::ZERO
    } else {
        grace
    };
    // A forced stop abandons the graceful wait (which only waits for the
    // exit) and stops again without grace: SIGKILL, kill, docker kill.
    let stopped = tokio::select! {
        r = control.stop(grace) => r,
        () = force.cancelled() => {
            tracing::warn!(%role, "forced stop: no more grace");
            control.stop(Duration::ZERO).await
        }
    };
    match stopped {
        Ok(exit) => Some(exit),
        Err(e) => {
            tracing::error!(%role, error = %e, "stop failed");
            None
        }
    }
}
