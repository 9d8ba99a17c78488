//! The backend abstraction: launch one guest from a [`LaunchSpec`] and get a
//! [`LaunchedGuest`] back — its identity, its output streams, an exit watch and
//! a stop handle. One module per tier implements it.

pub mod clean_start;
pub mod docker;
pub mod exit;
#[cfg(feature = "test-util")]
pub mod fake;
pub mod firecracker;
mod parent_death;
pub mod process;

use crate::UserId;
use crate::logs::{GuestReader, GuestStream};
use crate::workspace::Workspace;
use async_trait::async_trait;
use runner_types::{
    BootstrapEnvelope, GuestExit, GuestRole, LogStream, ResourceLimits, SandboxTier,
    SidecarEndpoint,
};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncRead;
use tokio::net::unix::pipe;

pub use exit::{ExitNotifier, ExitWatch};

/// Default [`SandboxBackend::stop_overrun`]: a SIGKILL and a reap.
pub const DEFAULT_STOP_OVERRUN: Duration = Duration::from_secs(3);

/// Everything a backend needs to launch one guest.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Which guest.
    pub role: GuestRole,
    /// The session's user.
    pub user_id: UserId,
    /// Unique per session start; used in labels and per-launch file names.
    pub session_id: String,
    /// The user's workspace.
    pub workspace: Workspace,
    /// The envelope this guest must receive.
    pub envelope: BootstrapEnvelope,
    /// Extra environment for the guest (`-e` / `--env-file`), on top of the
    /// backend's configured environment.
    pub extra_env: BTreeMap<String, String>,
    /// Resource limits from the user's config.
    pub resources: ResourceLimits,
    /// Host uid/gid the guest runs as; `None` runs it as the runner's own
    /// user (the runner is not root, or the tier does not apply it).
    pub run_as: Option<crate::identity::GuestUser>,
}

/// How the runner can name a launched guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestIdentity {
    /// A host process (process tier).
    Process {
        /// Its pid (also its process-group id).
        pid: u32,
    },
    /// A Docker container.
    Container {
        /// Container name.
        name: String,
        /// Container id.
        id: String,
    },
    /// A Firecracker microVM.
    MicroVm {
        /// The firecracker process's pid.
        pid: u32,
    },
}

impl GuestIdentity {
    /// Host pid, where there is one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Process { pid } | Self::MicroVm { pid } => Some(*pid),
            Self::Container { .. } => None,
        }
    }

    /// Container name, where there is one.
    pub fn container_name(&self) -> Option<&str> {
        match self {
            Self::Container { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// One output stream of a guest, to be pumped into its log file.
pub struct GuestOutput {
    /// Which stream.
    pub stream: LogStream,
    /// The bytes, until EOF (a pipe is spliced into its log, see
    /// [`GuestStream`]).
    pub reader: GuestStream,
}

impl GuestOutput {
    /// The usual pair: a guest's stdout and stderr.
    pub fn pair(
        stdout: impl AsyncRead + Send + 'static,
        stderr: impl AsyncRead + Send + 'static,
    ) -> Vec<GuestOutput> {
        let boxed = |r: GuestReader| GuestStream::Reader(r);
        Self::streams(boxed(Box::pin(stdout)), boxed(Box::pin(stderr)))
    }

    /// A guest's stdout and stderr pipes (spliced into their logs without
    /// a copy through user space).
    pub fn pipes(stdout: pipe::Receiver, stderr: pipe::Receiver) -> Vec<GuestOutput> {
        Self::streams(GuestStream::Pipe(stdout), GuestStream::Pipe(stderr))
    }

    fn streams(stdout: GuestStream, stderr: GuestStream) -> Vec<GuestOutput> {
        vec![
            GuestOutput {
                stream: LogStream::Stdout,
                reader: stdout,
            },
            GuestOutput {
                stream: LogStream::Stderr,
                reader: stderr,
            },
        ]
    }
}

impl std::fmt::Debug for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestOutput")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// A running guest, as a backend hands it over.
#[derive(Debug)]
pub struct LaunchedGuest {
    /// How to name it.
    pub identity: GuestIdentity,
    /// Its output streams (usually stdout and stderr).
    pub outputs: Vec<GuestOutput>,
    /// Resolves once when it exits, however it exits.
    pub exit: ExitWatch,
    /// Stops it and cleans up after it.
    pub control: Box<dyn GuestControl>,
}

/// Stop and clean-up of one launched guest: each tier's `<Tier>Control`
/// (in its `control.rs`).
///
/// What every implementation must do (checked for every tier by one
/// contract suite in the `runner-tests` crate):
///
/// - **Bounded:** `stop` returns within `grace` plus a small, fixed kill
///   allowance ([`SandboxBackend::stop_overrun`]), whatever the guest does.
/// - **Idempotent:** `stop` on an exited guest returns the exit it already
///   published; `cleanup` a second time finds nothing left and succeeds.
/// - **One exit:** the [`ExitWatch`] of the launch resolves once, to the
///   same value every watcher and every `stop` sees.
/// - **Drop kills:** dropping the control of a guest that is still running
///   kills it (process group, container, VM) without an `await`. This, not
///   an actor's `post_stop`, is what guarantees no guest outlives its owner:
///   an actor that panics or is killed never runs `post_stop`, but its state,
///   and with it the control, is still dropped.
#[async_trait]
pub trait GuestControl: Send + Sync + std::fmt::Debug {
    /// Asks the guest to stop (SIGTERM, `docker stop`, Ctrl-Alt-Del), waits up
    /// to `grace`, then forces it (SIGKILL to the whole process group, kill).
    /// Returns the exit. Calling it on an exited guest returns that exit.
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError>;

    /// Removes per-launch resources (container, API socket, generated files).
    /// Called after the guest has exited; calling it again is harmless.
    async fn cleanup(&self) -> Result<(), StopError>;
}

/// A tier implementation.
#[async_trait]
pub trait SandboxBackend: Send + Sync + std::fmt::Debug + 'static {
    /// The tier this backend provides.
    fn tier(&self) -> SandboxTier;

    /// Whether this backend has a sidecar command/image configured.
    fn has_sidecar(&self) -> bool;

    /// Whether a session may launch its runtime while its sidecar's launch
    /// is still under way. `false` (the default): the runtime's launch
    /// begins once the sidecar's has returned (its container started, its
    /// VM process spawned and booting), so the sidecar gets the runtime's
    /// whole launch as a head start to listen on its endpoint before the
    /// runtime looks for it.
    fn overlaps_launches(&self) -> bool {
        false
    }

    /// The most a [`GuestControl::stop`] may take beyond its grace period
    /// (kill, reap, engine round trips). Callers bound their waits by
    /// `grace + stop_overrun()`.
    fn stop_overrun(&self) -> Duration {
        DEFAULT_STOP_OVERRUN
    }

    /// Where the sidecar of `workspace` listens, as the runtime guest should
    /// reach it.
    fn sidecar_endpoint(&self, workspace: &Workspace) -> SidecarEndpoint;

    /// Called once per session start, before any launch: for example to
    /// remove guests a crashed runner left behind.
    async fn prepare_session(
        &self,
        user: &UserId,
        workspace: &Workspace,
    ) -> Result<(), LaunchError> {
        let _ = (user, workspace);
        Ok(())
    }

    /// Launches one guest.
    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError>;

    /// Whether the engine behind this backend answers now (bounded). Only
    /// tiers driven through an engine (Docker) can lose it; a guest whose
    /// exit says [`GuestExit::engine_lost`] is relaunched once this is
    /// true again, without counting against the restart limit.
    async fn engine_ready(&self) -> bool {
        true
    }

    /// Whether the runtime guest of `workspace` can reach its sidecar right
    /// now, for tiers where that needs a runner-side link (the micro_vm
    /// tier's vsock bridge). `None`: the tier connects the guests by itself.
    /// The value must change before the guest status change that causes it
    /// is reported, so a health report built on that status is consistent.
    fn sidecar_link(&self, workspace: &Workspace) -> Option<tokio::sync::watch::Receiver<bool>> {
        let _ = workspace;
        None
    }

    /// Why this backend runs degraded (reported in health), if it does.
    fn degraded_reasons(&self) -> Vec<runner_types::DegradedReason> {
        Vec::new()
    }
}

/// Why a guest could not be launched.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// Process tier.
    #[error(transparent)]
    Process(#[from] process::ProcessLaunchError),
    /// Container tier (and macOS micro_vm).
    #[error(transparent)]
    Docker(#[from] docker::DockerLaunchError),
    /// micro_vm tier (Firecracker).
    #[error(transparent)]
    Firecracker(#[from] firecracker::FirecrackerLaunchError),
    /// The launch did not finish in time (the runner gave up waiting).
    #[error("Launching the {role} guest took longer than {after:?}")]
    TimedOut {
        /// The role.
        role: GuestRole,
        /// The bound.
        after: Duration,
    },
    /// The launch was abandoned: the session start was cancelled or its
    /// stop forced while it ran.
    #[error("Launching the {role} guest was cancelled")]
    Cancelled {
        /// The role.
        role: GuestRole,
    },
    /// The backend has no command/image for this role.
    #[error("No {role} guest is configured for the {tier} tier")]
    NotConfigured {
        /// The role.
        role: GuestRole,
        /// The tier.
        tier: SandboxTier,
    },
}

/// Why stopping or cleaning up after a guest failed.
#[derive(Debug, Error)]
pub enum StopError {
    /// Docker engine trouble while stopping or removing a container.
    #[error(transparent)]
    Docker(#[from] docker::DockerStopError),
    /// A signal could not be delivered.
    #[error("Cannot signal process group {pgid}")]
    Signal {
        /// Process group.
        pgid: u32,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// The guest did not exit even after being forced.
    #[error("Guest did not exit within {waited:?} after being killed")]
    StillRunning {
        /// How long we waited after the kill.
        waited: Duration,
    },
    /// Removing a per-launch file failed.
    #[error("Cannot remove {path}")]
    RemoveFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
