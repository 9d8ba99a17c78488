//! [`Handler`]: one control connection, from its first request to its close.
//!
//! Every read is bounded by the read timeout and every write by the write
//! timeout, so a client that sends nothing, sends slowly or never reads its
//! answers is dropped without affecting anyone else. A frame that is not a
//! valid request is answered with `invalid_request`; a length prefix over
//! the cap drops the connection (the stream can no longer be trusted).
//! Cancelling the server's token ends an idle connection with a clean
//! close; followers select on it too and flush before they close.

use super::{ControlLimits, ServerContext, events, logs};
use crate::control::{ControlCodecError, ServerCodec};
use futures::{SinkExt, StreamExt};
use runner_types::control::{ControlError, ShutdownStatus};
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// After answering a request: keep serving, or close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Read the next request.
    Continue,
    /// The client is gone, misbehaved, or the op ends the connection.
    Close,
}

impl Flow {
    fn from_sent(sent: bool) -> Self {
        if sent { Self::Continue } else { Self::Close }
    }
}

/// One connection: the framed socket, its limits, the session's context and
/// the server's stop token.
pub(super) struct Handler {
    /// The framed socket.
    pub(super) conn: Framed<UnixStream, ServerCodec>,
    /// What the session offers.
    pub(super) ctx: Arc<ServerContext>,
    /// Timeouts and bounds.
    pub(super) limits: ControlLimits,
    /// Cancelled when serving stops.
    pub(super) stop: CancellationToken,
}

impl Handler {
    pub(super) fn new(
        stream: UnixStream,
        ctx: Arc<ServerContext>,
        limits: ControlLimits,
        stop: CancellationToken,
    ) -> Self {
        Self {
            conn: Framed::new(stream, ServerCodec::new()),
            ctx,
            limits,
            stop,
        }
    }

    /// Serves requests until the client leaves, misbehaves, times out, an op
    /// ends the connection, or serving stops; then closes it.
    pub(super) async fn run(mut self) {
        while let Some(request) = self.next_request().await {
            if self.dispatch(request).await == Flow::Close {
                break;
            }
        }
        self.close().await;
    }

    /// One plain arm per op.
    async fn dispatch(&mut self, request: ControlRequest) -> Flow {
        match request {
            ControlRequest::HealthCheck => {
                let health = self.ctx.health.borrow().clone();
                self.reply(ControlResponse::HealthStatus(health)).await
            }
            ControlRequest::ShutdownUser { user_id } => self.on_shutdown_user(user_id).await,
            ControlRequest::Logs(req) => logs::answer(self, req).await,
            ControlRequest::Events(req) => events::answer(self, req).await,
        }
    }

    /// The next request; `None` when the connection should end.
    async fn next_request(&mut self) -> Option<ControlRequest> {
        let next = tokio::select! {
            () = self.stop.cancelled() => return None,
            next = tokio::time::timeout(self.limits.read_timeout, self.conn.next()) => next,
        };
        match next {
            Err(_) => {
                tracing::debug!("control client idle past the read timeout; dropped");
                None
            }
            Ok(None) => None,
            Ok(Some(Ok(request))) => Some(request),
            Ok(Some(Err(e))) => {
                self.on_bad_frame(e).await;
                None
            }
        }
    }

    async fn on_bad_frame(&mut self, e: ControlCodecError) {
        match e {
            ControlCodecError::Json(e) => {
                let msg = format!("Invalid request: {e}");
                self.send(Self::error(ControlErrorCode::InvalidRequest, msg))
                    .await;
            }
            ControlCodecError::FrameTooLarge { len, max } => {
                tracing::debug!(len, max, "control frame over the cap; dropping client");
                let msg = format!("Frame of {len} bytes exceeds the {max}-byte limit");
                self.send(Self::error(ControlErrorCode::InvalidRequest, msg))
                    .await;
            }
            ControlCodecError::Io(e) => tracing::debug!(error = %e, "control connection failed"),
        }
    }

    /// Answers `shutdown_user`: first the answer, then the request (the
    /// shutdown begins by stopping the server, which ends this connection).
    async fn on_shutdown_user(&mut self, user_id: String) -> Flow {
        if user_id != self.ctx.user.as_str() {
            let msg = format!("This runner serves user {}, not {user_id:?}", self.ctx.user);
            return self
                .reply(Self::error(ControlErrorCode::UnknownUser, msg))
                .await;
        }
        let already_stopped = self.ctx.health.borrow().shutdown;
        let status = ShutdownStatus {
            user_id,
            shutdown: true,
            already_stopped,
            message: already_stopped.then(|| "The session was already stopping".to_owned()),
        };
        let flow = self.reply(ControlResponse::ShutdownStatus(status)).await;
        if !self
            .ctx
            .session
            .request_shutdown(self.ctx.shutdown_deadline)
        {
            tracing::debug!("shutdown requested but the session is already stopping");
        }
        flow
    }

    /// Sends `resp`; [`Flow::Close`] if the client is gone.
    pub(super) async fn reply(&mut self, resp: ControlResponse) -> Flow {
        Flow::from_sent(self.send(resp).await)
    }

    /// Sends one response within the write timeout; `false` if the client
    /// is gone.
    pub(super) async fn send(&mut self, resp: ControlResponse) -> bool {
        self.send_within(resp, self.limits.write_timeout).await
    }

    /// Sends one response within `timeout`; `false` if the client is gone.
    pub(super) async fn send_within(&mut self, resp: ControlResponse, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.conn.send(resp)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "control write failed");
                false
            }
            Err(_) => {
                tracing::debug!("control client not reading; dropped");
                false
            }
        }
    }

    /// An `error` response.
    pub(super) fn error(code: ControlErrorCode, message: String) -> ControlResponse {
        ControlResponse::Error(ControlError { code, message })
    }

    /// Flushes and shuts the write side down, so the client reads a clean
    /// end of stream; bounded by the close bound.
    async fn close(&mut self) {
        let bound = self.limits.close_bound.min(self.limits.write_timeout);
        let closing = SinkExt::<ControlResponse>::close(&mut self.conn);
        match tokio::time::timeout(bound, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::trace!(error = %e, "control close failed"),
            Err(_) => tracing::debug!("control client not reading at close; dropped"),
        }
    }
}
