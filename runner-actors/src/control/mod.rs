//! The control plane: [`ControlListenerHandle`], owned by the session
//! supervisor, holds the socket file and runs the server of
//! `runner_core::control::server` in a task; each
//! connection is served by its own task there, so a slow or hostile client
//! never blocks another.

mod listener;

pub(crate) use listener::BoundControlSocket;
pub use listener::ControlListenerHandle;
pub use runner_core::control::server::{
    ControlLimits, DEFAULT_CLOSE_BOUND, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
};

use crate::session::SessionMsg;
use ractor::ActorRef;
use runner_core::control::server::SessionControl;
use std::sync::Arc;
use std::time::Duration;

/// The session supervisor as the control server sees it (the server knows
/// no actors).
pub(crate) fn supervisor_control(supervisor: ActorRef<SessionMsg>) -> Arc<dyn SessionControl> {
    Arc::new(Supervisor(supervisor))
}

/// The session supervisor, as the server sees it.
struct Supervisor(ActorRef<SessionMsg>);

impl SessionControl for Supervisor {
    fn request_shutdown(&self, deadline: Duration) -> bool {
        let msg = SessionMsg::Shutdown {
            deadline,
            reply: None,
        };
        self.0.cast(msg).is_ok()
    }
}
