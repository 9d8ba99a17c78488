//! The validated runner config (what the runner runs on), built from the raw
//! file shapes in [`runner_types::config`] by [`load_runner_config`].
//!
//! Loading resolves relative paths against the file's directory, reads each
//! registered user's file, and rejects bad values with a [`ConfigError`] that
//! names the file and the key.

mod error;
mod identity;
mod load;
mod oxydra;
mod parse;
mod readiness;

pub use error::{ConfigError, Location, TomlError};
pub use load::{load_runner_config, load_user_config, parse_runner_config, parse_user_config};
pub use oxydra::{DEFAULT_TIMEZONE, is_env_name};

use crate::UserId;
use crate::identity::{GuestIdRange, GuestIdentityChoice};
use crate::readiness::ReadinessChecks;
use crate::workspace::MountOverrides;
use runner_types::config::{ControlSection, DockerSection, FirecrackerSection, RestartPolicy};
use runner_types::{ResourceLimits, SandboxTier};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Validated `runner.toml` plus the per-user files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// The file this came from; `None` for built-in defaults.
    pub source: Option<PathBuf>,
    /// Absolute workspace root.
    pub workspace_root: PathBuf,
    /// Tier for users without their own.
    pub default_tier: SandboxTier,
    /// Images and Firecracker templates.
    pub guest_images: GuestImages,
    /// Registered users.
    pub users: BTreeMap<UserId, UserConfig>,
    /// Process-tier commands; `None` means "use the built-in demo guests",
    /// which the embedding program (runner-bin) supplies.
    pub process: Option<ProcessConfig>,
    /// Log limits.
    pub logs: LogLimits,
    /// Shutdown timings.
    pub shutdown: ShutdownTimings,
    /// Restart policy.
    pub restart: RestartConfig,
    /// Container tier settings.
    pub docker: DockerSection,
    /// micro_vm tier settings.
    pub firecracker: FirecrackerSection,
    /// `[guest_identity]`: the range guest uids are allocated from.
    pub guest_identity: GuestIdRange,
    /// Control socket settings.
    pub control: ControlSection,
    /// `[readiness]`: the guests' readiness checks, unless a user's file
    /// names its own (see [`RunnerConfig::readiness_for`]).
    pub readiness: ReadinessChecks,
    /// Things in the files that load but that the operator should hear
    /// about (the binary logs each once).
    pub notices: Vec<ConfigNotice>,
}

/// Something a config file asks for that this runner accepts but does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigNotice {
    /// oxydra's `[web]` table: this runner has no web UI.
    WebIgnored {
        /// The file with the table.
        path: PathBuf,
    },
}

impl std::fmt::Display for ConfigNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WebIgnored { path } => write!(
                f,
                "`[web]` in {} is ignored: this runner has no web UI",
                path.display()
            ),
        }
    }
}

/// A channel's bot token, which the runner forwards from its own
/// environment to the runtime guest (never the sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSecret {
    /// The channel (`telegram`).
    pub channel: String,
    /// The variable named by its `bot_token_env`.
    pub env: String,
}

/// `[guest_images]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImages {
    /// Runtime image reference (non-empty).
    pub oxydra_vm: String,
    /// Sidecar image reference (non-empty).
    pub shell_vm: String,
    /// Absolute path of the runtime's Firecracker template.
    pub firecracker_oxydra_vm_config: Option<PathBuf>,
    /// Absolute path of the sidecar's Firecracker template.
    pub firecracker_shell_vm_config: Option<PathBuf>,
}

/// One user's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// Mount overrides (absolute paths).
    pub mounts: MountOverrides,
    /// Resource limits (each, if set, > 0).
    pub resources: ResourceLimits,
    /// Credential references.
    pub credential_refs: BTreeMap<String, String>,
    /// Tier override.
    pub sandbox_tier: Option<SandboxTier>,
    /// Shell tools enabled (default true).
    pub shell_enabled: bool,
    /// Browser tools enabled (default false).
    pub browser_enabled: bool,
    /// `[guest_identity]`: what this user's guests run as.
    pub guest_identity: GuestIdentityChoice,
    /// IANA time zone, given to both guests as `TZ` (default `UTC`).
    pub timezone: String,
    /// Bot tokens the runtime guest needs from the runner's environment.
    pub channel_secrets: Vec<ChannelSecret>,
    /// This user's `[readiness]` checks (each replaces the global one for
    /// its guest).
    pub readiness: ReadinessChecks,
}

impl Default for UserConfig {
    /// An unregistered user: no overrides, no limits, shell tools on,
    /// browser tools off, `UTC`.
    fn default() -> Self {
        Self {
            mounts: MountOverrides::default(),
            resources: ResourceLimits::default(),
            credential_refs: BTreeMap::new(),
            sandbox_tier: None,
            shell_enabled: true,
            browser_enabled: false,
            timezone: DEFAULT_TIMEZONE.to_owned(),
            channel_secrets: Vec::new(),
            guest_identity: GuestIdentityChoice::default(),
            readiness: ReadinessChecks::default(),
        }
    }
}

/// Process-tier guest commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Runtime guest.
    pub runtime: GuestCommand,
    /// Sidecar guest; `None` means the session has no sidecar.
    pub sidecar: Option<GuestCommand>,
}

/// A guest program with its arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// Program: absolute path, or a bare name looked up on the runner's PATH
    /// at launch.
    pub program: PathBuf,
    /// Arguments before the runner's own.
    pub args: Vec<String>,
    /// Environment (everything else is cleared).
    pub env: BTreeMap<String, String>,
}

/// `[logs]`, validated (both > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes per file before rotation.
    pub max_file_bytes: u64,
    /// Rotated files kept per stream.
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        let d = runner_types::config::LogsSection::default();
        Self {
            max_file_bytes: d.max_file_bytes,
            max_files: d.max_files,
        }
    }
}

/// `[shutdown]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownTimings {
    /// SIGTERM → SIGKILL.
    pub grace: Duration,
    /// Bound on draining log pumps.
    pub log_drain: Duration,
}

impl Default for ShutdownTimings {
    fn default() -> Self {
        let d = runner_types::config::ShutdownSection::default();
        Self {
            grace: Duration::from_millis(d.grace_ms),
            log_drain: Duration::from_millis(d.log_drain_ms),
        }
    }
}

/// `[restart]`, validated (`backoff_initial <= backoff_max`, window > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// Sliding window.
    pub window: Duration,
    /// First backoff.
    pub backoff_initial: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        let d = runner_types::config::RestartSection::default();
        Self {
            policy: d.policy,
            max_restarts: d.max_restarts,
            window: Duration::from_secs(d.window_secs),
            backoff_initial: Duration::from_millis(d.backoff_initial_ms),
            backoff_max: Duration::from_millis(d.backoff_max_ms),
        }
    }
}

impl RunnerConfig {
    /// Loads `runner.toml` at `path` and the per-user files it names
    /// (see [`load_runner_config`]).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        load_runner_config(path.as_ref())
    }

    /// Built-in defaults: process tier, demo guests (`process: None`), and
    /// `<base_dir>/workspaces`.
    pub fn defaults(base_dir: &std::path::Path) -> Self {
        let images = runner_types::config::GuestImagesFile::default();
        Self {
            source: None,
            workspace_root: base_dir.join("workspaces"),
            default_tier: SandboxTier::Process,
            guest_images: GuestImages {
                oxydra_vm: images.oxydra_vm,
                shell_vm: images.shell_vm,
                firecracker_oxydra_vm_config: None,
                firecracker_shell_vm_config: None,
            },
            users: BTreeMap::new(),
            process: None,
            logs: LogLimits::default(),
            shutdown: ShutdownTimings::default(),
            restart: RestartConfig::default(),
            docker: DockerSection::default(),
            firecracker: FirecrackerSection::default(),
            guest_identity: GuestIdRange::default(),
            control: ControlSection::default(),
            readiness: ReadinessChecks::default(),
            notices: Vec::new(),
        }
    }

    /// Settings for `user`: its registered file, or defaults.
    pub fn user(&self, user: &UserId) -> UserConfig {
        self.users.get(user).cloned().unwrap_or_default()
    }

    /// The readiness checks of `user`'s guests: the user's own, else the
    /// global file's, guest by guest.
    pub fn readiness_for(&self, user: &UserId) -> ReadinessChecks {
        match self.users.get(user) {
            Some(u) => self.readiness.overridden_by(&u.readiness),
            None => self.readiness.clone(),
        }
    }

    /// The tier `user` runs at.
    pub fn tier_for(&self, user: &UserId) -> SandboxTier {
        self.users
            .get(user)
            .and_then(|u| u.sandbox_tier)
            .unwrap_or(self.default_tier)
    }
}
