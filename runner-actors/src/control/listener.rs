//! `ControlListenerActor`: owns the control socket file and the task that
//! serves it (`runner_core::control::server::serve`).
//!
//! Messages: none besides stop — the accept loop runs in a task the actor
//! owns (a blocking accept inside `handle` would stall the mailbox).
//!
//! Shutdown guarantee: `post_stop` cancels the server's token and waits for
//! its task, which gives every connection the close bound to send its last
//! frame and close; the task is aborted if it overruns that (plus a
//! margin). Then the `ipc/` link and the socket file are removed.

use super::{ControlContext, ControlLimits};
use crate::error::SessionError;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use runner_core::control::server::{CancellationToken, serve};
use runner_core::workspace::{ControlSocket, ControlSocketError};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How much longer than the close bound `post_stop` waits for the server.
const STOP_MARGIN: Duration = Duration::from_millis(200);

/// Messages of [`ControlListenerActor`] (it only needs to be stopped).
pub enum ControlListenerMsg {}

/// The listener actor. See the module docs.
pub struct ControlListenerActor;

/// Arguments: the bound socket and the server's task and token.
pub struct ControlListenerArgs {
    socket: ControlSocket,
    server: JoinHandle<()>,
    stop: CancellationToken,
    close_bound: Duration,
}

/// State of [`ControlListenerActor`].
pub struct ControlListenerState {
    socket: Option<ControlSocket>,
    server: JoinHandle<()>,
    stop: CancellationToken,
    close_bound: Duration,
}

impl Actor for ControlListenerActor {
    type Msg = ControlListenerMsg;
    type State = ControlListenerState;
    type Arguments = ControlListenerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ControlListenerMsg>,
        args: ControlListenerArgs,
    ) -> Result<ControlListenerState, ActorProcessingErr> {
        Ok(ControlListenerState {
            socket: Some(args.socket),
            server: args.server,
            stop: args.stop,
            close_bound: args.close_bound,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<ControlListenerMsg>,
        state: &mut ControlListenerState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        let bound = state.close_bound + STOP_MARGIN;
        if tokio::time::timeout(bound, &mut state.server)
            .await
            .is_err()
        {
            tracing::warn!("control server overran its close bound; aborted");
            state.server.abort();
        }
        if let Some(socket) = state.socket.take() {
            socket.remove();
        }
        Ok(())
    }
}

/// Typed handle to a [`ControlListenerActor`].
#[derive(Clone)]
pub struct ControlListenerHandle {
    actor: ActorRef<ControlListenerMsg>,
}

impl ControlListenerHandle {
    /// Binds `run/runner-control.sock` (mode 0600, a stale socket removed
    /// first) and spawns the listener linked to `supervisor`.
    pub async fn spawn(supervisor: ActorCell, ctx: ControlContext) -> Result<Self, SessionError> {
        Self::spawn_with(supervisor, ctx, ControlLimits::default()).await
    }

    /// As [`ControlListenerHandle::spawn`], with explicit limits.
    pub async fn spawn_with(
        supervisor: ActorCell,
        ctx: ControlContext,
        limits: ControlLimits,
    ) -> Result<Self, SessionError> {
        let (socket, listener) =
            ControlSocket::bind(&ctx.workspace, ctx.ipc_link).map_err(|e| match e {
                ControlSocketError::Path { source } => SessionError::ControlSocketPath { source },
                ControlSocketError::Bind { path, source } => {
                    SessionError::ControlSocket { path, source }
                }
            })?;
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, ctx.server_context(), limits, stop.clone()));
        let args = ControlListenerArgs {
            socket,
            server,
            stop: stop.clone(),
            close_bound: limits.close_bound,
        };
        match Actor::spawn_linked(None, ControlListenerActor, args, supervisor).await {
            Ok((actor, _join)) => Ok(Self { actor }),
            Err(e) => {
                // The arguments (socket, task) went with the failed spawn:
                // at least stop serving.
                stop.cancel();
                Err(SessionError::Spawn(e))
            }
        }
    }

    /// Stops the listener and waits (bounded) until its socket is gone.
    pub async fn stop(&self, timeout: Duration) {
        if let Err(e) = self
            .actor
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await
        {
            tracing::warn!(error = %e, "control listener did not stop in time");
        }
    }
}
