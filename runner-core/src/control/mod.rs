//! The control socket: codec, client and server.
//!
//! - [`codec`]: length-prefixed JSON framing, typed per direction
//!   ([`ServerCodec`], [`ClientCodec`]), with frame-level and message-level
//!   errors kept apart.
//! - [`client`]: [`ControlClient`], used by `runner-bin status|stop|logs`
//!   and by tests.
//! - [`server`]: the accept loop and one handler per connection, answering
//!   every op from a [`server::ServerContext`]. The socket file itself
//!   belongs to the workspace ([`crate::workspace::ControlSocket`]); the
//!   actor that runs the server only starts and stops it.

pub mod client;
pub mod codec;
pub mod ipc_link;
pub mod server;
pub mod since;

pub use client::{ControlClient, ControlClientError};
pub use codec::{ClientCodec, ControlCodec, ControlCodecError, EncodedJson, ServerCodec};
