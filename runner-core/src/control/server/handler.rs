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
use crate::control::{ControlCodecError, EncodedJson, ServerCodec};
use crate::metrics::{self, RequestResult};
use bytes::Bytes;
use futures::{Sink, SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use runner_types::control::{ControlError, ShutdownStatus};
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse, HealthStatus};
use serde::Serialize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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
    /// Resolves once serving stops. Created once per connection from its
    /// own child token, so waiting on it costs no shared lock per request.
    pub(super) stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The idle timer: reset lazily (when it fires early), not per request.
    idle: Pin<Box<Sleep>>,
    last_request: Instant,
    /// This connection's view of the health snapshot, and its JSON answer
    /// while the snapshot is unchanged.
    health: watch::Receiver<HealthStatus>,
    health_answer: Option<Bytes>,
    /// How the request being answered went, for the request metrics: the
    /// first error response sent for it, else `Ok`.
    result: RequestResult,
    /// The request counter used last, with its op and result: a client
    /// repeating one op is counted without the metrics family's lookup.
    counted: Option<(&'static str, RequestResult, Counter)>,
}

/// `{"op":"health_status","payload":...}` without cloning the snapshot.
#[derive(Serialize)]
#[serde(tag = "op", content = "payload", rename_all = "snake_case")]
enum HealthAnswer<'a> {
    HealthStatus(&'a HealthStatus),
}

impl Handler {
    pub(super) fn new(
        stream: UnixStream,
        ctx: Arc<ServerContext>,
        limits: ControlLimits,
        stop: &CancellationToken,
    ) -> Self {
        let now = Instant::now();
        Self {
            conn: Framed::new(stream, ServerCodec::new()),
            health: ctx.health.clone(),
            ctx,
            limits,
            stopped: Box::pin(stop.child_token().cancelled_owned()),
            idle: Box::pin(tokio::time::sleep_until(now + limits.read_timeout)),
            last_request: now,
            health_answer: None,
            result: RequestResult::Ok,
            counted: None,
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

    /// One plain arm per op; every request is counted by op and result.
    async fn dispatch(&mut self, request: ControlRequest) -> Flow {
        let op = metrics::request_op(&request);
        self.result = RequestResult::Ok;
        let flow = match request {
            ControlRequest::HealthCheck => self.on_health_check().await,
            ControlRequest::ShutdownUser { user_id } => self.on_shutdown_user(user_id).await,
            ControlRequest::Logs(req) => logs::answer(self, req).await,
            ControlRequest::Events(req) => events::answer(self, req).await,
            ControlRequest::Metrics(_) => match self.ctx.metrics.control_answer().await {
                Ok(json) => self.reply_encoded(json).await,
                Err(error) => self.reply(error).await,
            },
        };
        self.count(op);
        flow
    }

    /// Counts the request just answered (`op`, [`Self::result`]).
    fn count(&mut self, op: &'static str) {
        let result = self.result;
        match &self.counted {
            Some((last_op, last_result, counter)) if *last_op == op && *last_result == result => {
                counter.inc();
            }
            _ => {
                let counter = self.ctx.metrics.control_counter(op, result);
                counter.inc();
                self.counted = Some((op, result, counter));
            }
        }
    }

    /// The next request; `None` when the connection should end (client
    /// gone, bad frame, idle past the read timeout, or serving stopped).
    async fn next_request(&mut self) -> Option<ControlRequest> {
        loop {
            let next = tokio::select! {
                biased;
                next = self.conn.next() => next,
                () = &mut self.stopped => return None,
                () = &mut self.idle => {
                    let deadline = self.last_request + self.limits.read_timeout;
                    if Instant::now() >= deadline {
                        tracing::debug!("control client idle past the read timeout; dropped");
                        return None;
                    }
                    self.idle.as_mut().reset(deadline);
                    continue;
                }
            };
            self.last_request = Instant::now();
            return match next {
                None => None,
                Some(Ok(request)) => Some(request),
                Some(Err(e)) => {
                    self.on_bad_frame(e).await;
                    let bad = RequestResult::Error(ControlErrorCode::InvalidRequest);
                    self.ctx.metrics.control_request(metrics::OP_UNPARSED, bad);
                    None
                }
            };
        }
    }

    /// Answers `health_check` from the JSON of the current snapshot,
    /// serialised again only when the snapshot changed.
    async fn on_health_check(&mut self) -> Flow {
        let changed = self.health.has_changed().unwrap_or(true);
        let answer = match &self.health_answer {
            Some(answer) if !changed => answer.clone(),
            _ => {
                let json = serde_json::to_vec(&HealthAnswer::HealthStatus(
                    &self.health.borrow_and_update(),
                ));
                match json {
                    Ok(json) => self.health_answer.insert(Bytes::from(json)).clone(),
                    Err(e) => {
                        let msg = format!("Cannot encode health: {e}");
                        return self
                            .reply(Self::error(ControlErrorCode::Internal, msg))
                            .await;
                    }
                }
            }
        };
        self.reply_encoded(answer).await
    }

    /// Sends an answer already serialised to JSON within the write timeout.
    async fn reply_encoded(&mut self, json: Bytes) -> Flow {
        let sent = self
            .send_bounded(EncodedJson(json), self.limits.write_timeout)
            .await;
        Flow::from_sent(matches!(sent, Ok(Ok(()))))
    }

    /// Sends `item` within `timeout`. A send that completes at once (the
    /// socket had room: the usual case) arms no timer.
    async fn send_bounded<I>(
        &mut self,
        item: I,
        timeout: Duration,
    ) -> Result<Result<(), ControlCodecError>, Elapsed>
    where
        Framed<UnixStream, ServerCodec>: Sink<I, Error = ControlCodecError>,
    {
        let mut send = std::pin::pin!(self.conn.send(item));
        if let Poll::Ready(sent) = futures::poll!(send.as_mut()) {
            return Ok(sent);
        }
        tokio::time::timeout(timeout, send).await
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
        if self.result == RequestResult::Ok {
            self.result = RequestResult::of(&resp);
        }
        match self.send_bounded(resp, timeout).await {
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
