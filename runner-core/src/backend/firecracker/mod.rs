//! The Linux micro_vm tier: each guest is a Firecracker microVM started from
//! a per-launch config generated from the role's template.
//!
//! Owns: the pre-launch host checks ([`check`]), config generation and the
//! kernel command-line budget ([`template`]), the API-socket client
//! ([`api`]), and spawning/stopping firecracker ([`launch`]).
//!
//! A launch, for role `R` with label `L` (`oxydra-vm` / `shell-vm`):
//! 1. read and parse `[guest_images] firecracker_<L>_config`;
//! 2. append `oxydra.bootstrap_b64=<base64 envelope>` to `boot_args`, apply
//!    `[resources]` to `machine-config`, set the vsock device, and check the
//!    whole command line against Firecracker's 2047-byte limit — over it is
//!    [`FirecrackerLaunchError::CmdlineTooLong`] and nothing is written or
//!    started;
//! 3. remove stale `run/L-firecracker.sock` / `run/L-vsock.sock`, write
//!    `run/L-firecracker.json` (0600) and an empty `run/L-firecracker.log`;
//! 4. run `firecracker --api-sock run/L-firecracker.sock --config-file
//!    run/L-firecracker.json --log-path run/L-firecracker.log --level Warn`.
//!    Firecracker boots straight from the config, no API call needed.
//!
//! Output: firecracker's stdout is the guest's serial console and becomes
//! the guest's stdout log; its stderr (where it prints a one-line fatal
//! error) the stderr log. Firecracker's own log goes to the `--log-path`
//! file, not stdout, because by default it interleaves its log lines with the
//! serial console; `--level` alone cannot keep it out reliably. The console
//! pipe must be drained promptly: Firecracker drops serial bytes it cannot
//! write. The pipe is enlarged to 1 MiB for slack.
//!
//! Stop: `PUT /actions {"action_type":"SendCtrlAltDel"}` (it reaches an x86
//! guest only if the guest drives the i8042 controller; the test kernel does
//! not), then the rest of the grace period, then SIGKILL. A guest that
//! resets (writes 0xfe to port 0x64) makes firecracker exit 0.
//!
//! Sidecar endpoint over vsock: every VM has a vsock device with guest CID
//! [`GUEST_CID`] whose host side is `run/L-vsock.sock`. A guest can only
//! reach the host (CID 2, [`VSOCK_HOST_CID`]), never another VM, so the
//! runtime's envelope names `2:1024` ([`SIDECAR_VSOCK_PORT`]), and a
//! host-side bridge (not part of this module yet) has to join the two VMs:
//! - the runtime's connection to host port 1024 arrives as a connection to
//!   the Unix socket `run/oxydra-vm-vsock.sock_1024`, which the bridge
//!   listens on (Firecracker's guest-initiated convention `<uds_path>_<port>`);
//! - for each such connection the bridge connects to the sidecar VM's
//!   `run/shell-vm-vsock.sock`, writes `CONNECT 1024\n`, reads the `OK
//!   <host port>\n` reply, and then copies bytes both ways;
//! - the sidecar guest listens on vsock port 1024.
//!
//! Not passed to a VM: `extra_env` (a VM has no host environment; anything
//! it needs belongs in the envelope) and `max_processes` (enforced inside
//! the guest, if at all). The jailer is not used.

pub mod api;
pub mod check;
mod error;
pub mod launch;
pub mod template;

pub use error::FirecrackerLaunchError;
pub use launch::{FirecrackerControl, LaunchPaths};
pub use template::{CMDLINE_LIMIT, GeneratedConfig, Template, VsockDevice};

use super::{LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use crate::UserId;
use crate::config::RunnerConfig;
use crate::workspace::{Workspace, check_socket_path};
use async_trait::async_trait;
use runner_types::{GuestRole, SandboxTier, SidecarEndpoint, SidecarTransport};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Binary used when `[firecracker] binary` is not set (looked up on PATH).
pub const DEFAULT_BINARY: &str = "firecracker";
/// KVM device checked before launching.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
/// Guest CID of every VM (each VM has its own vsock namespace).
pub const GUEST_CID: u32 = 3;
/// The host's CID, the only one a Firecracker guest can connect to.
pub const VSOCK_HOST_CID: u32 = 2;
/// Vsock port the sidecar serves on, and the runtime connects to.
pub const SIDECAR_VSOCK_PORT: u32 = 1024;

/// What the micro_vm tier needs, passed in explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerBackendConfig {
    /// The firecracker binary. A bare name (no `/`) means "not found on
    /// PATH" by the time it gets here: resolve it with
    /// [`check::resolve_binary`] first.
    pub binary: PathBuf,
    /// Template of the runtime VM (`firecracker_oxydra_vm_config`).
    pub runtime_template: Option<PathBuf>,
    /// Template of the sidecar VM (`firecracker_shell_vm_config`).
    pub sidecar_template: Option<PathBuf>,
    /// KVM device (default `/dev/kvm`).
    pub kvm_device: PathBuf,
}

impl FirecrackerBackendConfig {
    /// Settings from a runner config: `[firecracker] binary` (default
    /// `firecracker`, a bare name resolved on `path_var`, the caller's
    /// `PATH`), the two templates, and `/dev/kvm`.
    pub fn from_runner_config(config: &RunnerConfig, path_var: Option<&OsStr>) -> Self {
        let configured = PathBuf::from(
            config
                .firecracker
                .binary
                .as_deref()
                .unwrap_or(DEFAULT_BINARY),
        );
        let binary = check::resolve_binary(&configured, path_var).unwrap_or(configured);
        Self {
            binary,
            runtime_template: config.guest_images.firecracker_oxydra_vm_config.clone(),
            sidecar_template: config.guest_images.firecracker_shell_vm_config.clone(),
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
        }
    }

    /// The template of `role`, or the error naming the missing key.
    pub fn template_for(&self, role: GuestRole) -> Result<&Path, FirecrackerLaunchError> {
        let (template, field) = match role {
            GuestRole::Runtime => (&self.runtime_template, "firecracker_oxydra_vm_config"),
            GuestRole::Sidecar => (&self.sidecar_template, "firecracker_shell_vm_config"),
        };
        template
            .as_deref()
            .ok_or(FirecrackerLaunchError::MissingTemplate { field })
    }
}

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct FirecrackerBackend {
    config: FirecrackerBackendConfig,
}

impl FirecrackerBackend {
    /// A backend with these settings; nothing is checked until [`Self::check`]
    /// (called by `prepare_session`) or a launch.
    pub fn new(config: FirecrackerBackendConfig) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &FirecrackerBackendConfig {
        &self.config
    }

    /// Everything that can be known wrong before a launch: both templates
    /// configured, readable and well-formed; the binary executable; the KVM
    /// device openable read-write. Returns the first problem.
    pub fn check(&self) -> Result<(), FirecrackerLaunchError> {
        const ROLES: [GuestRole; 2] = [GuestRole::Runtime, GuestRole::Sidecar];
        for role in ROLES {
            self.config.template_for(role)?;
        }
        for role in ROLES {
            load_template(self.config.template_for(role)?)?;
        }
        check::check_binary(&self.config.binary)?;
        check::check_kvm(&self.config.kvm_device)
    }

    /// Generates the per-launch config for `spec` (pure apart from reading
    /// the template): what [`SandboxBackend::launch`] would write.
    pub fn generate(&self, spec: &LaunchSpec) -> Result<GeneratedConfig, FirecrackerLaunchError> {
        let template = load_template(self.config.template_for(spec.role)?)?;
        let token = runner_types::reader::cmdline_token(&spec.envelope).map_err(|source| {
            FirecrackerLaunchError::Envelope {
                role: spec.role,
                source,
            }
        })?;
        let paths = LaunchPaths::new(&spec.workspace.run, spec.role);
        let vsock = VsockDevice {
            guest_cid: GUEST_CID,
            uds_path: paths.vsock_socket,
        };
        template.render(&token, &spec.resources, &vsock)
    }

    fn launch_now(&self, spec: &LaunchSpec) -> Result<LaunchedGuest, FirecrackerLaunchError> {
        let generated = self.generate(spec)?;
        let paths = LaunchPaths::new(&spec.workspace.run, spec.role);
        check_socket_path(&paths.api_socket)?;
        check_socket_path(&paths.vsock_socket)?;
        // Small local files: plain std IO is cheaper than hopping to the
        // blocking pool, and keeps the launch path short.
        paths.prepare(&generated.to_json())?;
        launch::spawn(&self.config.binary, spec.role, paths.clone()).inspect_err(|_| {
            if let Err(e) = paths.discard() {
                tracing::warn!(role = %spec.role, error = %e, "cannot remove files of a failed launch");
            }
        })
    }
}

#[async_trait]
impl SandboxBackend for FirecrackerBackend {
    fn tier(&self) -> SandboxTier {
        SandboxTier::MicroVm
    }

    fn stop_overrun(&self) -> std::time::Duration {
        // The Ctrl-Alt-Del request is bounded within the grace; after the
        // SIGKILL the reap is bounded by the launch module's kill wait.
        std::time::Duration::from_secs(6)
    }

    fn has_sidecar(&self) -> bool {
        self.config.sidecar_template.is_some()
    }

    /// `vsock` `2:1024`: the host as the runtime VM sees it, where a bridge
    /// forwards to the sidecar VM (see the module docs).
    fn sidecar_endpoint(&self, _workspace: &Workspace) -> SidecarEndpoint {
        SidecarEndpoint {
            transport: SidecarTransport::Vsock,
            address: format!("{VSOCK_HOST_CID}:{SIDECAR_VSOCK_PORT}"),
        }
    }

    async fn prepare_session(
        &self,
        _user: &UserId,
        _workspace: &Workspace,
    ) -> Result<(), LaunchError> {
        Ok(self.check()?)
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        Ok(self.launch_now(&spec)?)
    }
}

/// Reads and parses a template file.
pub fn load_template(path: &Path) -> Result<Template, FirecrackerLaunchError> {
    let bytes = std::fs::read(path).map_err(|source| FirecrackerLaunchError::ReadTemplate {
        path: path.to_path_buf(),
        source,
    })?;
    Template::parse(path, &bytes)
}
