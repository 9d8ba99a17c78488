//! The actor layer of the sandbox runner: one ractor supervision tree per
//! user session.
//!
//! ```text
//! SessionSupervisor
//! ├── GuestActor(sidecar)    started first
//! ├── GuestActor(runtime)    gets the sidecar's endpoint in its envelope
//! │   tasks the supervisor owns (not actors):
//! ├── log pumps × N          one per (guest, stream)
//! └── control listener       run/runner-control.sock; a task per connection
//! ```
//!
//! Embedding:
//!
//! ```no_run
//! # async fn demo(config: runner_core::config::RunnerConfig,
//! #               backend: std::sync::Arc<dyn runner_core::backend::SandboxBackend>)
//! #   -> Result<(), Box<dyn std::error::Error>> {
//! use runner_actors::{Backends, Runner};
//! use std::time::Duration;
//!
//! let runner = Runner::new(config, Backends::new().with(backend));
//! let session = runner.start_session("alice").await?;
//! let health = session.health().await?;
//! let mut events = session.events();
//! session.shutdown(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Actors orchestrate only: parsing, policy and IO live in `runner-core`.

mod call;
pub mod control;
mod error;
mod events;
mod guest;
mod log_pump;
mod runner;
mod session;

pub use error::{HandleError, SessionError};
pub use events::{EventBus, SessionEvent};
pub use guest::{ENGINE_BACKOFF_INITIAL, ENGINE_BACKOFF_MAX, ENGINE_UNREACHABLE};
pub use runner::{Backends, Runner, SessionOptions};
pub use runner_core::failure::{FailureReason, SessionChild};
pub use session::{FORCED_STOP_BOUND, LOSS_REPORT_INTERVAL, SessionHandle, ShutdownReport};
