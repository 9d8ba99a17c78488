//! The sandbox runner's domain, without actors.
//!
//! - [`user`] and [`workspace`]: validated user ids and the on-disk layout.
//! - [`config`]: loading and validating `runner.toml` and per-user files.
//! - [`backend`]: the [`backend::SandboxBackend`] trait and one module per tier.
//! - [`bootstrap`]: building each guest's envelope.
//! - [`logs`]: byte-exact log pumps with rotation, and the log reader.
//! - [`control`]: the control-socket codec and client.
//! - `fake` (feature `test-util`): a scripted backend for actor tests.

pub mod backend;
pub mod bootstrap;
pub mod config;
pub mod control;
#[cfg(feature = "test-util")]
pub mod fake;
pub mod guest_env;
pub mod health;
pub mod identity;
pub mod limits;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod restart;
pub mod user;
pub mod workspace;

pub use user::UserId;
pub use workspace::Workspace;
