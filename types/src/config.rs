//! Config files as read from disk.
//!
//! These are the raw shapes: every table rejects unknown keys, defaults are
//! filled in, nothing is validated. `runner_core::config` turns them into the
//! validated config the runner runs on, with errors naming file and key.

use crate::envelope::ResourceLimits;
use crate::tier::SandboxTier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `runner.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfigFile {
    /// Config format version, oxydra's `"1.x.y"`; major version 1 loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    /// Root of all user workspaces, relative to this file. Default `./workspaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_root: Option<String>,
    /// Tier for users whose own file names none. Default `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<SandboxTier>,
    /// Guest images and Firecracker templates.
    #[serde(default)]
    pub guest_images: GuestImagesFile,
    /// Registered users and their per-user files.
    #[serde(default)]
    pub users: BTreeMap<String, UserRegistration>,
    /// Process-tier guest commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSection>,
    /// Log capture limits.
    #[serde(default)]
    pub logs: LogsSection,
    /// Shutdown timings.
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartSection,
    /// Container tier settings.
    #[serde(default)]
    pub docker: DockerSection,
    /// micro_vm tier settings.
    #[serde(default)]
    pub firecracker: FirecrackerSection,
    /// The range guest uids are allocated from (when the runner is root).
    #[serde(default)]
    pub guest_identity: GuestIdentitySection,
    /// Control socket settings.
    #[serde(default)]
    pub control: ControlSection,
    /// Per-guest readiness checks (a per-user file's own replace these,
    /// guest by guest).
    #[serde(default)]
    pub readiness: ReadinessSection,
    /// oxydra's web UI settings: accepted for compatibility, not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebSection>,
}

/// `[control]`: the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Keep the relative symlink `ipc/runner-control.sock ->
    /// ../run/runner-control.sock` while serving, where oxydra's clients
    /// look for the socket. Default true.
    #[serde(default = "default_true")]
    pub ipc_socket_link: bool,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            ipc_socket_link: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// oxydra's `[web]` table (this runner has no web UI; checked for shape only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// Whether oxydra would serve its web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Authentication mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_mode: Option<String>,
    /// Environment variable holding the auth token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_env: Option<String>,
    /// The auth token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
}

/// `[guest_images]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestImagesFile {
    /// OCI reference of the runtime guest image.
    #[serde(default = "default_oxydra_vm_image")]
    pub oxydra_vm: String,
    /// OCI reference of the sidecar guest image.
    #[serde(default = "default_shell_vm_image")]
    pub shell_vm: String,
    /// Firecracker JSON template for the runtime guest (Linux micro_vm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker_oxydra_vm_config: Option<String>,
    /// Firecracker JSON template for the sidecar guest (Linux micro_vm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firecracker_shell_vm_config: Option<String>,
}

impl Default for GuestImagesFile {
    fn default() -> Self {
        Self {
            oxydra_vm: default_oxydra_vm_image(),
            shell_vm: default_shell_vm_image(),
            firecracker_oxydra_vm_config: None,
            firecracker_shell_vm_config: None,
        }
    }
}

/// Default runtime image reference.
pub const DEFAULT_OXYDRA_VM_IMAGE: &str = "oxydra-vm:latest";
/// Default sidecar image reference.
pub const DEFAULT_SHELL_VM_IMAGE: &str = "shell-vm:latest";

fn default_oxydra_vm_image() -> String {
    DEFAULT_OXYDRA_VM_IMAGE.to_owned()
}
fn default_shell_vm_image() -> String {
    DEFAULT_SHELL_VM_IMAGE.to_owned()
}

/// `[users.<id>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistration {
    /// Per-user config file, relative to `runner.toml`.
    pub config_path: String,
}

/// `[process]`: the commands process-tier guests run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSection {
    /// Runtime guest command (required when the table is present).
    pub runtime: GuestCommandFile,
    /// Sidecar guest command; absent means no sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<GuestCommandFile>,
}

/// A guest command: `program args... --user-id <id> --workspace-root <p> --bootstrap-stdin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestCommandFile {
    /// Program path (relative paths resolve against the config file's directory).
    pub program: String,
    /// Arguments before the runner's own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment (the rest is cleared).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `[logs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// Bytes per log file before it rotates.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept per stream.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

impl Default for LogsSection {
    fn default() -> Self {
        Self {
            max_file_bytes: default_max_file_bytes(),
            max_files: default_max_files(),
        }
    }
}
fn default_max_file_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_files() -> u32 {
    5
}

/// `[shutdown]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// SIGTERM → SIGKILL (or docker stop timeout), in ms.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// Bound on draining log pumps, in ms.
    #[serde(default = "default_log_drain_ms")]
    pub log_drain_ms: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            grace_ms: default_grace_ms(),
            log_drain_ms: default_log_drain_ms(),
        }
    }
}
fn default_grace_ms() -> u64 {
    5000
}
fn default_log_drain_ms() -> u64 {
    2000
}

/// `[restart]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSection {
    /// When an exited guest is started again.
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Restarts allowed within `window_secs` before the session is failed.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Sliding window for `max_restarts`, in seconds.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// First backoff delay, in ms; doubles per consecutive restart.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Backoff ceiling, in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

impl Default for RestartSection {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::default(),
            max_restarts: default_max_restarts(),
            window_secs: default_window_secs(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }
}
fn default_max_restarts() -> u32 {
    5
}
fn default_window_secs() -> u64 {
    60
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    10_000
}

/// Restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    Never,
    /// Restart after a non-zero exit or a signal.
    #[default]
    OnFailure,
    /// Restart after any exit.
    Always,
}

/// `[docker]`: container tier settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    /// Engine address (`unix:///path`); default: `$DOCKER_HOST`, then the
    /// platform's default socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Container network mode; default `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `uid:gid` the guest runs as; default the runner's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Pull a missing image instead of failing. Default false.
    #[serde(default)]
    pub pull: bool,
    /// Replace the image entrypoint's arguments (the runner still appends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

/// `[firecracker]`: micro_vm tier settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerSection {
    /// Path of the `firecracker` binary; default `firecracker` on PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Path of the `jailer` binary, used when the runner is root; default
    /// `jailer` on PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer: Option<String>,
    /// Directory the jailer builds its chroots in; default the user's
    /// `run/jail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chroot_base: Option<String>,
    /// Run Firecracker as root without the jailer when no usable jailer is
    /// found (unsafe; health reports it as degraded). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_without_jailer: bool,
}

/// The per-user file named by `[users.<id>] config_path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfigFile {
    /// Config format version, oxydra's `"1.x.y"`; major version 1 loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
    /// Mount overrides.
    #[serde(default)]
    pub mounts: MountsFile,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourcesFile,
    /// Credential name → reference.
    #[serde(default)]
    pub credential_refs: BTreeMap<String, String>,
    /// Behaviour overrides.
    #[serde(default)]
    pub behavior: BehaviorFile,
    /// This user's guest uid/gid, instead of an allocated one.
    #[serde(default)]
    pub guest_identity: UserGuestIdentityFile,
    /// oxydra's messaging channels (`[channels.telegram]`, ...). The runner
    /// only forwards each `bot_token_env` to the runtime guest.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelFile>,
    /// This user's readiness checks; a guest named here replaces the
    /// global file's check for that guest.
    #[serde(default)]
    pub readiness: ReadinessSection,
}

/// `[readiness]`: how the runner tells that a guest is ready, per guest
/// (`[readiness.runtime]`, `[readiness.sidecar]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessSection {
    /// The runtime guest's check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<ReadinessCheckFile>,
    /// The sidecar guest's check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<ReadinessCheckFile>,
}

/// One guest's readiness check: exactly one of `file` and `socket`, a path
/// relative to the user's directory (for example oxydra's
/// `ipc/gateway-endpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessCheckFile {
    /// A regular file that must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A Unix socket that must accept a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// How long after each launch the check may take before the guest is
    /// reported `not_ready`, in ms; default 30000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `[channels.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    /// Whether the channel is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Name of the environment variable holding the bot token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token_env: Option<String>,
    /// Long-polling timeout, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_timeout_secs: Option<u64>,
    /// Longest message sent in one piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_length: Option<u64>,
    /// Who may talk to the agent (`[[channels.<name>.senders]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<ChannelSender>,
}

/// `[[channels.<name>.senders]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSender {
    /// The sender's ids on the platform (numbers or strings).
    #[serde(default)]
    pub platform_ids: Vec<PlatformId>,
    /// How the sender is shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A platform user id: Telegram's are numbers, other platforms use strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PlatformId {
    /// A numeric id.
    Number(i64),
    /// A textual id.
    Text(String),
}

/// `[mounts]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountsFile {
    /// Host directory used as `shared/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    /// Host directory used as `tmp/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp: Option<String>,
    /// Host directory used as `vault/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
}

/// `[resources]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u16>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Process count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
}

impl From<ResourcesFile> for ResourceLimits {
    fn from(r: ResourcesFile) -> Self {
        Self {
            max_vcpus: r.max_vcpus,
            max_memory_mib: r.max_memory_mib,
            max_processes: r.max_processes,
        }
    }
}

/// `[behavior]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviorFile {
    /// Tier for this user (overrides `default_tier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_tier: Option<SandboxTier>,
    /// Whether shell tools are offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_enabled: Option<bool>,
    /// Whether browser tools are offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_enabled: Option<bool>,
    /// IANA time zone of the guests (`TZ`); default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `[guest_identity]` in `runner.toml`: where guest uids come from when the
/// runner is root. Each user gets one uid from `uid_base .. uid_base +
/// uid_count` (gid = uid, a private group), recorded under the workspace
/// root so it never changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestIdentitySection {
    /// First uid of the range; default `runner_core`'s documented base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_base: Option<u32>,
    /// Number of uids in the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_count: Option<u32>,
}

/// `[guest_identity]` in a per-user file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserGuestIdentityFile {
    /// Host uid this user's guests run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Host gid (default: the uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// UNSAFE: this user's guests run as root when the runner is root.
    #[serde(default)]
    pub allow_root: bool,
}
