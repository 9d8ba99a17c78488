//! [`ControlListenerHandle`]: owns the control socket file and the task
//! that serves it (`runner_core::control::server::serve`).
//!
//! Not an actor: it takes no messages, only a stop, so the session
//! supervisor owns it directly (no mailbox, task or registry entry of its
//! own per session). The accept loop and each connection run in tasks.
//!
//! Shutdown guarantee: [`ControlListenerHandle::stop`] cancels the
//! server's token and waits for its task, which gives every connection the
//! close bound to send its last frame and close; the task is aborted if it
//! overruns that (plus a margin) or the caller's bound. Then the `ipc/`
//! link and the socket file are removed. The drop guard does the same
//! without waiting (abort, then remove), so a supervisor that dies without
//! a shutdown leaves neither a server nor a socket behind.

use super::ControlLimits;
use crate::error::SessionError;
use runner_core::Workspace;
use runner_core::control::server::{CancellationToken, ServerContext, serve};
use runner_core::workspace::{ControlSocket, ControlSocketError};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How much longer than the close bound `stop` waits for the server.
const STOP_MARGIN: Duration = Duration::from_millis(200);

/// The bound socket and the task serving it. See the module docs.
pub struct ControlListenerHandle {
    socket: Option<ControlSocket>,
    server: JoinHandle<()>,
    stop: CancellationToken,
    close_bound: Duration,
}

impl ControlListenerHandle {
    /// Stops accepting at once: the server takes no new connection and
    /// tells open ones to close. [`Self::stop`] then waits for it and
    /// removes the socket; a shutdown calls this first so that the guests'
    /// stops need not wait for the connections to close.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Stops serving — open connections get the close bound, but at most
    /// `timeout`, to finish — and removes the socket.
    pub async fn stop(&mut self, timeout: Duration) {
        self.close();
        let bound = (self.close_bound + STOP_MARGIN).min(timeout);
        if tokio::time::timeout(bound, &mut self.server).await.is_err() {
            tracing::warn!("control server overran its close bound; aborted");
            self.server.abort();
        }
        if let Some(socket) = self.socket.take() {
            socket.remove();
        }
    }
}

/// A bound control socket not served yet (bound on the blocking pool while
/// a session's guests launch). Dropped unserved, it removes its socket
/// file and `ipc/` link.
#[derive(Debug)]
pub struct BoundControlSocket {
    socket: Option<ControlSocket>,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl BoundControlSocket {
    /// Binds `workspace`'s `run/runner-control.sock` (mode 0600, a stale
    /// socket removed first; with `ipc_link` also the `ipc/` link to it).
    /// Blocking, without a runtime: run it on the blocking pool.
    pub fn bind(workspace: &Workspace, ipc_link: bool) -> Result<Self, SessionError> {
        let (socket, listener) = ControlSocket::bind(workspace, ipc_link).map_err(|e| match e {
            ControlSocketError::Path { source } => SessionError::ControlSocketPath { source },
            ControlSocketError::Bind { path, source } => {
                SessionError::ControlSocket { path, source }
            }
        })?;
        Ok(Self {
            socket: Some(socket),
            listener: Some(listener),
        })
    }

    /// Starts serving `ctx` on the socket. Must be called within a Tokio
    /// runtime.
    pub fn serve(
        mut self,
        ctx: ServerContext,
        limits: ControlLimits,
    ) -> Result<ControlListenerHandle, SessionError> {
        let (Some(socket), Some(listener)) = (self.socket.take(), self.listener.take()) else {
            unreachable!("taken only here, which consumes the value")
        };
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(source) => {
                let path = socket.path().to_path_buf();
                socket.remove();
                return Err(SessionError::ControlSocket { path, source });
            }
        };
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, ctx, limits, stop.clone()));
        Ok(ControlListenerHandle {
            socket: Some(socket),
            server,
            stop,
            close_bound: limits.close_bound,
        })
    }
}

impl Drop for BoundControlSocket {
    fn drop(&mut self) {
        drop(self.listener.take());
        if let Some(socket) = self.socket.take() {
            socket.remove();
        }
    }
}

impl Drop for ControlListenerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(socket) = self.socket.take() {
            self.server.abort();
            socket.remove();
        }
    }
}
