//! One control connection: read a request, answer it, repeat.
//!
//! Every read is bounded by the read timeout and every write by the write
//! timeout, so a client that sends nothing, sends slowly or never reads its
//! answers is dropped without affecting anyone else. A frame that is not a
//! valid request is answered with `invalid_request`; a length prefix over
//! the cap drops the connection (the stream can no longer be trusted).

use super::logs::{follow_logs, logs_chunk};
use super::{ControlContext, ControlLimits};
use crate::session::SessionMsg;
use futures::{SinkExt, StreamExt};
use runner_core::control::{ControlCodecError, ServerCodec};
use runner_core::metrics::{self, RequestResult};
use runner_types::control::{ControlError, LogsRequest, MAX_LOG_TAIL, ShutdownStatus};
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// The connection's framed socket.
pub(super) type Conn = Framed<UnixStream, ServerCodec>;

/// Serves one connection until the client leaves, misbehaves or times out.
pub(super) async fn serve(stream: UnixStream, ctx: &ControlContext, limits: ControlLimits) {
    let mut conn = Framed::new(stream, ServerCodec::new());
    loop {
        let next = match tokio::time::timeout(limits.read_timeout, conn.next()).await {
            Err(_) => {
                tracing::debug!("control client idle past the read timeout; dropped");
                return;
            }
            Ok(None) => return,
            Ok(Some(next)) => next,
        };
        let request = match next {
            Ok(r) => r,
            Err(e) => {
                let bad = RequestResult::Error(ControlErrorCode::InvalidRequest);
                ctx.metrics.control_request(metrics::OP_UNPARSED, bad);
                on_bad_frame(&mut conn, e, limits).await;
                return;
            }
        };
        let op = metrics::request_op(&request);
        match request {
            ControlRequest::HealthCheck => {
                let health = ctx.health.borrow().clone();
                ctx.metrics.control_request(op, RequestResult::Ok);
                if !send(&mut conn, ControlResponse::HealthStatus(health), limits).await {
                    return;
                }
            }
            ControlRequest::Metrics(_) => {
                let answer = ctx.metrics.control_answer().await;
                ctx.metrics.control_request(op, RequestResult::of(&answer));
                if !send(&mut conn, answer, limits).await {
                    return;
                }
            }
            ControlRequest::ShutdownUser { user_id } => {
                // The listener stops soon after an accepted shutdown, which
                // ends this task; until then the client may keep asking.
                if !on_shutdown_user(&mut conn, ctx, user_id, limits).await {
                    return;
                }
            }
            ControlRequest::Logs(req) => {
                let invalid = invalid_logs_request(&req);
                let result = invalid
                    .as_ref()
                    .map_or(RequestResult::Ok, RequestResult::of);
                ctx.metrics.control_request(op, result);
                if let Some(err) = invalid {
                    if !send(&mut conn, err, limits).await {
                        return;
                    }
                    continue;
                }
                if req.follow {
                    follow_logs(&mut conn, ctx, &req, limits).await;
                    return;
                }
                let chunk = logs_chunk(ctx, &req).await;
                if !send(&mut conn, chunk, limits).await {
                    return;
                }
            }
        }
    }
}

async fn on_bad_frame(conn: &mut Conn, e: ControlCodecError, limits: ControlLimits) {
    match e {
        ControlCodecError::Json(e) => {
            let msg = format!("Invalid request: {e}");
            send(conn, error(ControlErrorCode::InvalidRequest, msg), limits).await;
        }
        ControlCodecError::FrameTooLarge { len, max } => {
            tracing::debug!(len, max, "control frame over the cap; dropping client");
            let msg = format!("Frame of {len} bytes exceeds the {max}-byte limit");
            send(conn, error(ControlErrorCode::InvalidRequest, msg), limits).await;
        }
        ControlCodecError::Io(e) => tracing::debug!(error = %e, "control connection failed"),
    }
}

/// Answers `shutdown_user`; `false` if the client is gone.
async fn on_shutdown_user(
    conn: &mut Conn,
    ctx: &ControlContext,
    user_id: String,
    limits: ControlLimits,
) -> bool {
    let op = "shutdown_user";
    if user_id != ctx.user.as_str() {
        let msg = format!("This runner serves user {}, not {user_id:?}", ctx.user);
        let unknown = RequestResult::Error(ControlErrorCode::UnknownUser);
        ctx.metrics.control_request(op, unknown);
        return send(conn, error(ControlErrorCode::UnknownUser, msg), limits).await;
    }
    ctx.metrics.control_request(op, RequestResult::Ok);
    // Answer first: the shutdown begins by stopping this listener, which
    // ends this task.
    let already_stopped = ctx.health.borrow().shutdown;
    let status = ShutdownStatus {
        user_id,
        shutdown: true,
        already_stopped,
        message: already_stopped.then(|| "The session was already stopping".to_owned()),
    };
    let sent = send(conn, ControlResponse::ShutdownStatus(status), limits).await;
    let msg = SessionMsg::Shutdown {
        deadline: ctx.shutdown_deadline,
        reply: None,
    };
    if ctx.supervisor.cast(msg).is_err() {
        tracing::debug!("shutdown requested but the session is already stopping");
    }
    sent
}

fn invalid_logs_request(req: &LogsRequest) -> Option<ControlResponse> {
    match req.tail {
        Some(n) if n > MAX_LOG_TAIL => Some(error(
            ControlErrorCode::InvalidRequest,
            format!("tail {n} is over the limit of {MAX_LOG_TAIL}"),
        )),
        _ => None,
    }
}

/// An `error` response.
pub(super) fn error(code: ControlErrorCode, message: String) -> ControlResponse {
    ControlResponse::Error(ControlError { code, message })
}

/// Sends one response within the write timeout; `false` if the client is gone.
pub(super) async fn send(conn: &mut Conn, resp: ControlResponse, limits: ControlLimits) -> bool {
    match tokio::time::timeout(limits.write_timeout, conn.send(resp)).await {
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
