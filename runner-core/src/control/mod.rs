//! Control-socket codec and client.
//!
//! - [`codec`]: length-prefixed JSON framing, typed per direction
//!   ([`ServerCodec`], [`ClientCodec`]), with frame-level and message-level
//!   errors kept apart.
//! - [`client`]: [`ControlClient`], used by `runner-bin status|stop|logs`
//!   and by tests.
//!
//! The server side (accepting connections, peer-uid checks, answering)
//! belongs to the control listener actor; it uses [`ServerCodec`].

pub mod client;
pub mod codec;
pub mod ipc_link;
pub mod log_lines;
pub mod since;

pub use client::{ControlClient, ControlClientError};
pub use codec::{ClientCodec, ControlCodec, ControlCodecError, ServerCodec};
