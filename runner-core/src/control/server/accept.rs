//! The accept loop: peer check, connection limit, a task per connection,
//! and the bounded close once serving is cancelled.

use super::handler::Handler;
use super::{ControlLimits, ServerContext};
use runner_types::ControlErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept` (out of descriptors, say) before the next.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Bound on telling a client over the connection limit that it is refused.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Serves `listener` until `stop` is cancelled, then gives every
/// connection [`ControlLimits::close_bound`] to finish and drops the rest.
///
/// Only peers with this process's uid, or root, are served; a peer over
/// [`ControlLimits::max_connections`] is answered `busy` and closed.
pub async fn serve(
    listener: UnixListener,
    ctx: ServerContext,
    limits: ControlLimits,
    stop: CancellationToken,
) {
    let ctx = Arc::new(ctx);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        if !peer_allowed(&stream) {
            continue;
        }
        // Accept first, then check capacity: a full house answers "busy"
        // at once instead of leaving new clients hanging in the backlog.
        let handler = Handler::new(stream, ctx.clone(), limits, &stop);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                conns.spawn(async move {
                    handler.run().await;
                    drop(permit);
                });
            }
            Err(_) => {
                conns.spawn(refuse_busy(handler, limits.max_connections));
            }
        }
    }
    drop(listener);
    close_all(conns, limits.close_bound).await;
}

/// Waits up to `bound` for every connection to end, then drops the rest.
async fn close_all(mut conns: JoinSet<()>, bound: Duration) {
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::debug!(
            left = conns.len(),
            "control connections still open at the close bound; dropped"
        );
    }
    // Dropping the set aborts whatever is left.
}

fn peer_allowed(stream: &UnixStream) -> bool {
    let own_uid = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "control connection from another uid refused"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read control peer credentials; refused");
            false
        }
    }
}

async fn refuse_busy(mut handler: Handler, max: usize) {
    let msg = format!("Too many control connections (limit {max}); try again");
    let resp = Handler::error(ControlErrorCode::Busy, msg);
    let refused = crate::metrics::RequestResult::Error(ControlErrorCode::Busy);
    handler
        .ctx
        .metrics
        .control_request(crate::metrics::OP_REFUSED, refused);
    handler.send_within(resp, BUSY_WRITE_TIMEOUT).await;
}
