//! Serde data shared by the sandbox runner and its guests.
//!
//! This crate is deliberately small and free of async runtimes so that a guest
//! can depend on it alone: it holds the config-file shapes, the bootstrap
//! envelope and its length-prefixed frame, the control protocol, health and
//! status types, and [`reader`], the guest-side envelope reader.

pub mod config;
pub mod control;
pub mod envelope;
pub mod events;
pub mod frame;
pub mod health;
pub mod reader;
pub mod tier;

pub use control::{ControlErrorCode, ControlRequest, ControlResponse};
pub use envelope::{
    BootstrapEnvelope, DegradedReason, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SidecarEndpoint, SidecarTransport, StartupStatus,
};
pub use health::{ExitStatus, GuestExit, GuestState, GuestStatus, HealthStatus};
pub use tier::{GuestRole, LogStream, SandboxTier};
