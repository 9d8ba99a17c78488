//! `ControlListenerActor`: binds the control socket and runs the accept loop.
//!
//! Messages: none besides stop — the accept loop runs in a task the actor
//! owns (a blocking accept inside `handle` would stall the mailbox).
//! Each accepted connection is checked (peer uid must be ours or root) and
//! served by its own task in a `JoinSet`, bounded by a semaphore.
//!
//! While serving, `ipc/runner-control.sock` is a relative symlink to the
//! socket (where oxydra's clients look) unless the config turns it off.
//!
//! Shutdown guarantee: `post_stop` aborts the accept loop and every
//! connection task, then removes the link and the socket file.

use super::connection::serve;
use super::{ControlContext, ControlLimits};
use crate::error::SessionError;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use runner_core::control::ipc_link::IpcLink;
use runner_core::workspace::file::remove_stale_socket;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Pause after a failed `accept` (out of descriptors, say) before the next.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Bound on telling a client over the connection limit that it is refused.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Messages of [`ControlListenerActor`] (it only needs to be stopped).
pub enum ControlListenerMsg {}

/// The listener actor. See the module docs.
pub struct ControlListenerActor;

/// Arguments: the bound listener and what connections need.
pub struct ControlListenerArgs {
    listener: UnixListener,
    path: PathBuf,
    link: Option<IpcLink>,
    ctx: ControlContext,
    limits: ControlLimits,
}

/// State of [`ControlListenerActor`].
pub struct ControlListenerState {
    path: PathBuf,
    link: Option<IpcLink>,
    accept: JoinHandle<()>,
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
        let accept = tokio::spawn(accept_loop(args.listener, Arc::new(args.ctx), args.limits));
        Ok(ControlListenerState {
            path: args.path,
            link: args.link,
            accept,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<ControlListenerMsg>,
        state: &mut ControlListenerState,
    ) -> Result<(), ActorProcessingErr> {
        // Aborting the loop drops its JoinSet, which aborts every connection.
        state.accept.abort();
        if let Some(link) = state.link.take() {
            link.remove();
        }
        if let Err(e) = std::fs::remove_file(&state.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %state.path.display(), error = %e, "cannot remove control socket");
        }
        Ok(())
    }
}

async fn accept_loop(listener: UnixListener, ctx: Arc<ControlContext>, limits: ControlLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "control connection from another uid refused"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read control peer credentials; refused");
                continue;
            }
        }
        // Accept first, then check capacity: a full house answers "busy"
        // at once instead of leaving new clients hanging in the backlog.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conns.spawn(refuse_busy(stream, limits));
            continue;
        };
        let ctx = ctx.clone();
        conns.spawn(async move {
            serve(stream, &ctx, limits).await;
            drop(permit);
        });
    }
}

async fn refuse_busy(stream: tokio::net::UnixStream, limits: ControlLimits) {
    let mut conn = tokio_util::codec::Framed::new(stream, runner_core::control::ServerCodec::new());
    let msg = format!(
        "Too many control connections (limit {}); try again",
        limits.max_connections
    );
    let resp = super::connection::error(runner_types::ControlErrorCode::Internal, msg);
    let quick = ControlLimits {
        write_timeout: BUSY_WRITE_TIMEOUT,
        ..limits
    };
    super::connection::send(&mut conn, resp, quick).await;
}

/// Typed handle to a [`ControlListenerActor`].
#[derive(Clone)]
pub struct ControlListenerHandle {
    actor: ActorRef<ControlListenerMsg>,
}

impl ControlListenerHandle {
    /// Binds `run/runner-control.sock` (mode 0600), removing a stale socket
    /// file first, and spawns the listener linked to `supervisor`.
    ///
    /// Whether another live daemon owns the socket is the caller's concern
    /// (runner-bin holds a lock file); here a leftover file is stale.
    pub async fn spawn(supervisor: ActorCell, ctx: ControlContext) -> Result<Self, SessionError> {
        Self::spawn_with(supervisor, ctx, ControlLimits::default()).await
    }

    /// As [`ControlListenerHandle::spawn`], with explicit limits.
    pub async fn spawn_with(
        supervisor: ActorCell,
        ctx: ControlContext,
        limits: ControlLimits,
    ) -> Result<Self, SessionError> {
        let path = ctx.workspace.control_socket();
        let err = |source| SessionError::ControlSocket {
            path: path.clone(),
            source,
        };
        // Only a socket is removed as stale; `bind` never follows or
        // replaces whatever else is there (it fails), and the chmod does
        // not follow a symlink.
        if remove_stale_socket(&path)
            .map_err(|source| SessionError::ControlSocketPath { source })?
        {
            tracing::info!(path = %path.display(), "removed stale control socket");
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        fchmodat(
            AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o600),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| err(e.into()))?;
        let link = ctx.ipc_link.then(|| IpcLink::create(&ctx.workspace)).and_then(|r| {
            r.map_err(|e| {
                tracing::warn!(error = %e, "cannot link ipc/runner-control.sock for oxydra's clients");
            })
            .ok()
        });
        let args = ControlListenerArgs {
            listener,
            path: path.clone(),
            link,
            ctx,
            limits,
        };
        let (actor, _join) = Actor::spawn_linked(None, ControlListenerActor, args, supervisor)
            .await
            .map_err(SessionError::Spawn)?;
        Ok(Self { actor })
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
