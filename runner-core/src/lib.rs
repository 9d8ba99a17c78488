//! The sandbox runner's domain, without actors.
//!
//! - [`user`] and [`workspace`]: validated user ids and the on-disk layout.
//! - [`config`]: loading and validating `runner.toml` and per-user files.
//! - [`backend`]: the [`backend::SandboxBackend`] trait and one module per tier.
//! - [`bootstrap`]: building each guest's envelope.
//! - [`logs`]: byte-exact log pumps with rotation, and the log reader.
//! - [`control`]: the control-socket codec and client.
//! - [`failure`]: why a session failed, as a typed reason.
//! - `backend::fake` (feature `test-util`, also reachable as `fake`): a
//!   scripted backend for actor tests, beside the trait it fakes.

pub mod backend;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod control;
pub mod events;
pub mod failure;
pub mod guest_env;
pub mod health;
pub mod identity;
pub mod limits;
pub mod lock;
pub mod logs;
pub mod metrics;
pub mod procfs;
pub mod readiness;
pub mod restart;
pub mod user;
pub mod workspace;

#[cfg(feature = "test-util")]
pub use backend::fake;
pub use user::UserId;
pub use workspace::Workspace;
