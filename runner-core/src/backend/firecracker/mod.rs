//! The Linux micro_vm tier: each guest is a Firecracker microVM started from
//! a per-launch config generated from the role's template.
//!
//! Owns: the pre-launch host checks ([`check`]), config generation and the
//! kernel command-line budget ([`template`]), the API-socket client
//! ([`api`]), confinement under the jailer ([`jail`]), per-launch drive
//! copies ([`disks`]), the launch steps ([`plan`]), spawning/stopping
//! firecracker ([`launch`]), reaping VMs of a crashed runner ([`reaper`])
//! and the runtime-to-sidecar vsock bridge ([`vsock_bridge`]).
//!
//! A launch, for role `R` with label `L` (`oxydra-vm` / `shell-vm`):
//! 1. decide the confinement: the runner not root → Firecracker runs as the
//!    runner; root → under the jailer as `LaunchSpec::run_as` (never uid 0),
//!    or, with no usable jailer and `[firecracker] allow_without_jailer`,
//!    as root (degraded); root without either is refused;
//! 2. read `[guest_images] firecracker_<L>_config`, append
//!    `oxydra.bootstrap_b64=<base64 envelope>` to `boot_args`, cap
//!    `machine-config` by `[resources]`, set the vsock device, and check the
//!    whole command line against Firecracker's 2047-byte limit — over it is
//!    [`FirecrackerLaunchError::CmdlineTooLong`] and nothing is written or
//!    started;
//! 3. stage files: every writable drive gets a private copy (reflink or
//!    sparse copy); a jailed VM also gets its kernel, initrd and read-only
//!    drives inside a fresh chroot `<chroot_base>/firecracker/<jail id>/root`
//!    (default base: `run/jail`);
//! 4. write the generated config (0600) and an empty VMM log, in `run/` as
//!    `L-firecracker.json` / `.log` or in the chroot, then start
//!    `firecracker --api-sock ... --config-file ... --log-path ... --level
//!    Warn` directly or as `jailer ... -- <those arguments>`, with cgroup v1
//!    memory and pids limits where the host has them. Firecracker boots
//!    straight from the config, no API call needed.
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
//! resets (writes 0xfe to port 0x64) makes firecracker exit 0. Cleanup
//! removes the per-launch files, drive copies and the jail. A session start
//! first reaps VMs and jails a crashed runner left ([`reaper`]): a jailed VM
//! loses its parent-death signal when the jailer changes uid.
//!
//! Sidecar endpoint over vsock: every VM has a vsock device with guest CID
//! [`GUEST_CID`]. A guest can only reach the host (CID 2,
//! [`VSOCK_HOST_CID`]), never another VM, so the runtime's envelope names
//! `2:1024` ([`SIDECAR_VSOCK_PORT`]) and the runtime VM's launch starts a
//! [`vsock_bridge::VsockBridge`] that listens on `<runtime vsock uds>_1024`
//! and forwards each connection to the sidecar VM's vsock socket with
//! `CONNECT 1024`. The bridge lives exactly as long as the runtime VM (its
//! waiter owns it), and [`SandboxBackend::sidecar_link`] tells the session
//! whether it is up, so health never claims a shell it cannot reach.
//!
//! Not passed to a VM: `extra_env` (a VM has no host environment; the
//! kernel command line, the only channel, is 2048 bytes and mostly the
//! envelope, and values there would sit in the generated config and the
//! guest's `/proc/cmdline`). `max_processes` reaches the guest in the
//! envelope's `runtime_policy.resources`; enforcing it is the guest's job,
//! since host rlimits cannot reach processes inside a VM.

pub mod api;
pub mod check;
mod control;
pub mod disks;
mod error;
pub mod jail;
pub mod launch;
pub mod plan;
pub mod reaper;
pub mod template;
pub mod vsock_bridge;

pub use control::FirecrackerControl;
pub use error::FirecrackerLaunchError;
pub use jail::{Confinement, JailerSettings};
pub use launch::LaunchPaths;
pub use template::{CMDLINE_LIMIT, GeneratedConfig, Template, VsockDevice};

use super::{LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use crate::UserId;
use crate::backend::clean_start::StartRlimits;
use crate::backend::process::SpawnThreadSlot;
use crate::config::RunnerConfig;
use crate::workspace::Workspace;
use async_trait::async_trait;
use plan::{Plan, Prepared, Target};
use runner_types::{DegradedReason, GuestRole, SandboxTier, SidecarEndpoint, SidecarTransport};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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
/// Degraded-reason code: the runner is root and Firecracker runs without
/// the jailer (`[firecracker] allow_without_jailer`).
pub const FIRECRACKER_WITHOUT_JAILER: &str = "firecracker_without_jailer";

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
    /// The jailer and when it is used.
    pub jailer: JailerSettings,
}

impl FirecrackerBackendConfig {
    /// Settings from a runner config: `[firecracker] binary` (default
    /// `firecracker`, a bare name resolved on `path_var`, the caller's
    /// `PATH`), the two templates, `/dev/kvm`, and the jailer settings
    /// (`jailer` resolved the same way; used when the runner is root).
    pub fn from_runner_config(config: &RunnerConfig, path_var: Option<&OsStr>) -> Self {
        let configured = PathBuf::from(
            config
                .firecracker
                .binary
                .as_deref()
                .unwrap_or(DEFAULT_BINARY),
        );
        let binary = check::resolve_binary(&configured, path_var).unwrap_or(configured);
        let fc = &config.firecracker;
        let jailer = PathBuf::from(fc.jailer.as_deref().unwrap_or(jail::DEFAULT_JAILER));
        Self {
            binary,
            runtime_template: config.guest_images.firecracker_oxydra_vm_config.clone(),
            sidecar_template: config.guest_images.firecracker_shell_vm_config.clone(),
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            jailer: JailerSettings {
                binary: check::resolve_binary(&jailer, path_var).unwrap_or(jailer),
                chroot_base: fc.chroot_base.as_ref().map(PathBuf::from),
                allow_without_jailer: fc.allow_without_jailer,
                runner_is_root: nix::unistd::geteuid().is_root(),
            },
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
    /// Per user (keyed by `run/`): whether the runtime VM's vsock bridge is
    /// up. Clones share it (a launch runs on a clone), so the session sees
    /// what the launch set.
    links: Arc<Mutex<HashMap<PathBuf, watch::Sender<bool>>>>,
    /// The rlimits VMMs start with (the runner's own at its start).
    start_rlimits: StartRlimits,
    /// Creates the VMMs' processes once the runner holds many descriptors
    /// (see [`SpawnThreadSlot`]).
    spawner: SpawnThreadSlot,
}

impl FirecrackerBackend {
    /// A backend with these settings; nothing is checked until [`Self::check`]
    /// (called by `prepare_session`) or a launch. VMMs get back the rlimits
    /// in force now; an embedding program that raises its own limits passes
    /// the earlier values with [`Self::with_start_rlimits`].
    pub fn new(config: FirecrackerBackendConfig) -> Self {
        Self {
            config,
            links: Arc::default(),
            start_rlimits: StartRlimits::capture(),
            spawner: SpawnThreadSlot::default(),
        }
    }

    /// VMMs start with `rlimits` (the runner's own at its start).
    pub fn with_start_rlimits(mut self, rlimits: StartRlimits) -> Self {
        self.start_rlimits = rlimits;
        self
    }

    /// The settings.
    pub fn config(&self) -> &FirecrackerBackendConfig {
        &self.config
    }

    /// Everything that can be known wrong before a launch: both templates
    /// configured, readable and well-formed; the binary executable; the KVM
    /// device openable read-write; a jailer when the runner is root (unless
    /// allowed without). Returns the first problem.
    pub fn check(&self) -> Result<(), FirecrackerLaunchError> {
        const ROLES: [GuestRole; 2] = [GuestRole::Runtime, GuestRole::Sidecar];
        for role in ROLES {
            self.config.template_for(role)?;
        }
        for role in ROLES {
            load_template(self.config.template_for(role)?)?;
        }
        check::check_binary(&self.config.binary)?;
        check::check_kvm(&self.config.kvm_device)?;
        self.config.jailer.confinement().map(drop)
    }

    /// Generates the per-launch config for `spec` (pure apart from reading
    /// the template and checking for the jailer): what
    /// [`SandboxBackend::launch`] would write, before drive paths are
    /// rewritten to their per-launch copies.
    pub fn generate(&self, spec: &LaunchSpec) -> Result<GeneratedConfig, FirecrackerLaunchError> {
        self.config.template_for(spec.role)?;
        let confinement = self.config.jailer.confinement()?;
        let target = Target::new(
            &self.config,
            &confinement,
            &spec.workspace.run,
            spec.role,
            spec.run_as,
        )?;
        self.render(spec, &target)
    }

    fn render(
        &self,
        spec: &LaunchSpec,
        target: &Target,
    ) -> Result<GeneratedConfig, FirecrackerLaunchError> {
        let template = load_template(self.config.template_for(spec.role)?)?;
        let token = runner_types::reader::cmdline_token(&spec.envelope).map_err(|source| {
            FirecrackerLaunchError::Envelope {
                role: spec.role,
                source,
            }
        })?;
        let vsock = VsockDevice {
            guest_cid: GUEST_CID,
            uds_path: target.vsock_uds_visible(),
        };
        template.render(&token, &spec.resources, &vsock)
    }

    /// The "bridge up" watch of the user whose `run/` is `run`.
    fn link(&self, run: &Path) -> watch::Sender<bool> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .entry(run.to_path_buf())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }

    /// The blocking half of a launch: see [`Plan::prepare`].
    fn prepare_launch(&self, spec: &LaunchSpec) -> Result<Prepared, FirecrackerLaunchError> {
        self.config.template_for(spec.role)?;
        let confinement = self.config.jailer.confinement()?;
        let run = &spec.workspace.run;
        let target = Target::new(&self.config, &confinement, run, spec.role, spec.run_as)?;
        let generated = self.render(spec, &target)?;
        let bridge_to = (spec.role == GuestRole::Runtime && self.has_sidecar())
            .then(|| {
                let sidecar = Target::new(
                    &self.config,
                    &confinement,
                    run,
                    GuestRole::Sidecar,
                    spec.run_as,
                )?;
                Ok::<_, FirecrackerLaunchError>(sidecar.paths.vsock_socket)
            })
            .transpose()?;
        let plan = Plan {
            config: self.config.clone(),
            link: bridge_to.as_ref().map(|_| self.link(run)),
            target,
            bridge_to,
            start_rlimits: self.start_rlimits.clone(),
            spawner: self.spawner.clone(),
        };
        plan.prepare(spec, generated)
    }

    /// Ends VMs an earlier runner left for this user and removes their
    /// jails, records and drive copies. Blocking.
    fn reap_leftovers(&self, run: &Path) {
        for role in GuestRole::START_ORDER {
            let layout = plan::layout_of(&self.config, run, role);
            let reaped = reaper::reap(&reaper::record_path(run, role), Some(&layout));
            if !reaped.survivors.is_empty() {
                tracing::error!(%role, pids = ?reaped.survivors, "VMs of an earlier runner survive SIGKILL");
            }
            let prefix = format!("{}-drive-", role.label());
            let stale: Vec<PathBuf> = std::fs::read_dir(run)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect();
            disks::remove_files(&stale);
        }
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

    /// Checks the host, marks the bridge down, and reaps what a crashed
    /// runner left for this user (see [`reaper`]).
    async fn prepare_session(
        &self,
        _user: &UserId,
        workspace: &Workspace,
    ) -> Result<(), LaunchError> {
        self.check()?;
        self.link(&workspace.run).send_replace(false);
        let this = self.clone();
        let run = workspace.run.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || this.reap_leftovers(&run)).await {
            tracing::error!(error = %e, "reaping leftover VMs failed");
        }
        Ok(())
    }

    /// Staging drive copies can take a while, so that half runs on the
    /// blocking pool; the spawn itself happens here, on a runtime thread
    /// (see [`plan::Prepared::start`]).
    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        let this = self.clone();
        let role = spec.role;
        let span = tracing::debug_span!("firecracker.prepare");
        match tokio::task::spawn_blocking(move || span.in_scope(|| this.prepare_launch(&spec)))
            .await
        {
            Ok(prepared) => {
                let prepared = prepared?;
                Ok(tracing::debug_span!("firecracker.spawn").in_scope(|| prepared.start())?)
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(FirecrackerLaunchError::Spawn {
                role,
                binary: self.config.binary.clone(),
                source: std::io::Error::other(e),
            }
            .into()),
        }
    }

    fn sidecar_link(&self, workspace: &Workspace) -> Option<watch::Receiver<bool>> {
        self.has_sidecar()
            .then(|| self.link(&workspace.run).subscribe())
    }

    fn degraded_reasons(&self) -> Vec<DegradedReason> {
        match self.config.jailer.confinement() {
            Ok(Confinement::UnjailedRoot) => vec![DegradedReason {
                code: FIRECRACKER_WITHOUT_JAILER.into(),
                detail: "no usable jailer: Firecracker runs as root without a chroot \
                         (allow_without_jailer)"
                    .into(),
            }],
            _ => Vec::new(),
        }
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
