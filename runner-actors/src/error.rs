//! Errors of the actor layer.

use runner_core::backend::LaunchError;
use runner_core::config::ConfigError;
use runner_core::user::UserIdError;
use runner_core::workspace::WorkspaceError;
use runner_types::{GuestRole, SandboxTier};
use std::path::PathBuf;
use thiserror::Error;

/// Why a session could not be started.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The user id is not acceptable.
    #[error("Invalid user id")]
    UserId(#[from] UserIdError),
    /// The config is not acceptable for this session.
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    /// No backend was supplied for the tier the user runs at.
    #[error("No backend is available for the {tier} tier")]
    NoBackend {
        /// The tier.
        tier: SandboxTier,
    },
    /// Another live session (in this process or another) serves this user.
    #[error("A runner is already serving user {user}")]
    AlreadyRunning {
        /// The user.
        user: String,
        /// Details, with the holder's pid.
        #[source]
        source: runner_core::lock::LockError,
    },
    /// The session lock could not be used.
    #[error("Cannot lock the workspace of user {user}")]
    Lock {
        /// The user.
        user: String,
        /// Cause.
        #[source]
        source: runner_core::lock::LockError,
    },
    /// The guest actor did not answer the launch request.
    #[error("The {role} guest's actor did not answer its launch")]
    LaunchUnanswered {
        /// Which guest.
        role: GuestRole,
        /// Cause.
        #[source]
        source: HandleError,
    },
    /// The start was cancelled; whatever it had started was stopped again
    /// before this was returned.
    #[error("The session start was cancelled")]
    Cancelled,
    /// The workspace could not be provisioned.
    #[error("Cannot provision the workspace")]
    Workspace(#[from] WorkspaceError),
    /// No host uid/gid could be decided for the user's guests.
    #[error("Cannot decide the guests' host identity")]
    Identity(#[from] runner_core::identity::IdentityError),
    /// The backend's per-session preparation failed.
    #[error("Cannot prepare the session")]
    Prepare(#[source] LaunchError),
    /// A guest could not be launched.
    #[error("Cannot launch the {role} guest")]
    Launch {
        /// Which guest.
        role: GuestRole,
        /// Cause.
        #[source]
        source: LaunchError,
    },
    /// A log file could not be opened.
    #[error("Cannot open log file {path}")]
    Logs {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: runner_core::logs::LogError,
    },
    /// The control socket could not be served.
    #[error("Cannot serve the control socket {path}")]
    ControlSocket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a stale socket is where the control socket goes.
    #[error("Refusing the control socket path")]
    ControlSocketPath {
        /// What is there (names the path).
        #[source]
        source: runner_core::workspace::HostFileError,
    },
    /// A blocking task of the session start panicked or was cancelled.
    #[error("The blocking task for {what} did not complete")]
    BlockingTask {
        /// What the task did.
        what: &'static str,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A session actor could not be spawned.
    #[error("Cannot spawn a session actor")]
    Spawn(#[source] ractor::SpawnErr),
    /// The supervisor stopped before it finished starting the session.
    #[error("The session supervisor stopped during start")]
    Gone,
}

/// Why a call on a handle failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandleError {
    /// The actor has stopped.
    #[error("The session has stopped")]
    Gone,
    /// The actor did not answer in time.
    #[error("The session did not answer within {0:?}")]
    Timeout(std::time::Duration),
}
