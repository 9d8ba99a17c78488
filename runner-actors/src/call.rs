//! The one way this crate asks an actor something: a bounded `call`
//! whose failures are a [`HandleError`].

use crate::HandleError;
use ractor::{ActorRef, RpcReplyPort};
use std::time::Duration;

/// Sends `msg` to `actor` and waits at most `timeout` for the reply.
pub(crate) async fn call<M, T>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Result<T, HandleError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(HandleError::Timeout(timeout)),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Err(HandleError::Gone),
    }
}
