//! Health and per-guest status, as the control socket and the embedding API
//! report them.

use crate::envelope::StartupStatus;
use crate::tier::{GuestRole, LogStream, SandboxTier};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Answer to `health_check`: oxydra's fields plus per-guest detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// The session's user.
    pub user_id: String,
    /// Every guest that should run is running.
    pub healthy: bool,
    /// Tier in effect.
    pub sandbox_tier: SandboxTier,
    /// What was set up at start.
    pub startup_status: StartupStatus,
    /// Shell tools available.
    pub shell_available: bool,
    /// Browser tools available.
    pub browser_available: bool,
    /// The session is shutting down or has shut down.
    pub shutdown: bool,
    /// Why the session is unhealthy or failed, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Host directory holding the guest logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    /// Host pid of the runtime guest (process tier) or its VMM (micro_vm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_pid: Option<u32>,
    /// Container name of the runtime guest (container tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_container_name: Option<String>,
    /// One entry per configured guest, sidecar first.
    #[serde(default)]
    pub guests: Vec<GuestStatus>,
}

/// State of one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// Which guest.
    pub role: GuestRole,
    /// Lifecycle state.
    pub state: GuestState,
    /// Host pid (process tier; firecracker's pid on micro_vm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Container name (container tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Container id (container tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// How the guest last exited, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<GuestExit>,
    /// Restarts so far in this session.
    pub restarts: u32,
    /// Whether the guest's readiness check has passed (absent when the
    /// guest has none configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// When the current launch started, in milliseconds since the Unix
    /// epoch (absent before the first launch); with `state` running, the
    /// guest's uptime is now minus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_unix_ms: Option<u64>,
    /// Bytes of this guest's output that never reached its log in this
    /// session (write queue full, failed writes), per stream; absent while
    /// nothing was lost. Each loss is recorded as a gap beside the log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub log_bytes_dropped: BTreeMap<LogStream, u64>,
}

impl GuestStatus {
    /// A guest about to be launched for the first time.
    pub fn starting(role: GuestRole) -> Self {
        Self {
            role,
            state: GuestState::Starting,
            pid: None,
            container_name: None,
            container_id: None,
            last_exit: None,
            restarts: 0,
            ready: None,
            started_at_unix_ms: None,
            log_bytes_dropped: BTreeMap::new(),
        }
    }
}

/// Lifecycle state of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    /// Launch in progress.
    Starting,
    /// Launched and not exited.
    Running,
    /// Exited; waiting out the restart backoff.
    BackingOff,
    /// Exited and will not be restarted (policy).
    Exited,
    /// Restart limit exceeded, or relaunch failed.
    Failed,
    /// Being stopped by the runner.
    Stopping,
    /// Stopped by the runner.
    Stopped,
}

impl GuestState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Starting,
        Self::Running,
        Self::BackingOff,
        Self::Exited,
        Self::Failed,
        Self::Stopping,
        Self::Stopped,
    ];

    /// The wire spelling (`running`, `backing_off`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::BackingOff => "backing_off",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One exit of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestExit {
    /// Exit code or signal.
    pub status: ExitStatus,
    /// When the exit was seen, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The kernel's OOM killer ended it (container tier reports this).
    #[serde(default)]
    pub oom_killed: bool,
    /// The guest ended because its engine went away (the Docker engine
    /// stopped or restarted): not the guest's failure, so it does not count
    /// against the restart limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub engine_lost: bool,
}

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether this counts as a success for the restart policy.
    pub fn success(self) -> bool {
        matches!(self, Self::Code(0))
    }

    /// Shell-style code: the exit code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => write!(f, "signal {s}"),
        }
    }
}
