//! One launch, step by step: where its files go (run/ or a fresh jail),
//! staging drives and kernel and writing the generated config
//! ([`Plan::prepare`], blocking), then starting the vsock bridge (runtime
//! VM with a sidecar) and Firecracker, directly or through the jailer
//! ([`Prepared::start`], on a runtime thread).

use super::disks::{self, Staging};
use super::error::FirecrackerLaunchError;
use super::jail::{self, Confinement, JailLayout};
use super::launch::{self, LaunchPaths, LaunchResources};
use super::vsock_bridge::{BridgeConfig, BridgeLimits, VsockBridge};
use super::{FirecrackerBackendConfig, GeneratedConfig, SIDECAR_VSOCK_PORT, reaper};
use crate::backend::clean_start::StartRlimits;
use crate::backend::process::SpawnThreadSlot;
use crate::backend::{LaunchSpec, LaunchedGuest};
use crate::identity::GuestUser;
use crate::workspace::check_socket_path;
use runner_types::GuestRole;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// Firecracker's default guest memory, for the cgroup limit when a config
/// has no `machine-config`.
const DEFAULT_MEM_MIB: u64 = 128;

/// Where one role's VM lives under a given confinement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its per-launch files.
    pub paths: LaunchPaths,
    /// Its jail, when jailed.
    pub jail: Option<(JailLayout, GuestUser, PathBuf)>,
}

impl Target {
    /// The target of `role` for the user whose `run/` is `run`. A jailed
    /// target needs `run_as` with non-zero uid and gid.
    pub fn new(
        config: &FirecrackerBackendConfig,
        confinement: &Confinement,
        run: &Path,
        role: GuestRole,
        run_as: Option<GuestUser>,
    ) -> Result<Self, FirecrackerLaunchError> {
        let Confinement::Jailed { jailer } = confinement else {
            return Ok(Self {
                paths: LaunchPaths::new(run, role),
                jail: None,
            });
        };
        let user = run_as
            .filter(|u| u.uid != 0 && u.gid != 0)
            .ok_or(FirecrackerLaunchError::NoGuestUser { role, run_as })?;
        let layout = layout_of(config, run, role);
        Ok(Self {
            paths: LaunchPaths::jailed(&layout.root),
            jail: Some((layout, user, jailer.clone())),
        })
    }

    /// Where this target's VM listens for vsock (as Firecracker sees it).
    pub fn vsock_uds_visible(&self) -> PathBuf {
        self.paths.visible(&self.paths.vsock_socket)
    }
}

/// The jail of `role` for the user whose `run/` is `run` (whether or not the
/// current confinement uses it: a reap must find jails of earlier runs).
pub fn layout_of(config: &FirecrackerBackendConfig, run: &Path, role: GuestRole) -> JailLayout {
    let base = config.jailer.chroot_base_for(run);
    JailLayout::new(&base, run, role, &config.binary)
}

/// Everything a launch needs besides the spec.
pub struct Plan {
    /// Backend settings.
    pub config: FirecrackerBackendConfig,
    /// This launch's target.
    pub target: Target,
    /// The sidecar's vsock socket (host path), when the runtime VM needs a
    /// bridge to it.
    pub bridge_to: Option<PathBuf>,
    /// The session's "bridge up" watch.
    pub link: Option<watch::Sender<bool>>,
    /// The rlimits the VMM (or the jailer) starts with.
    pub start_rlimits: StartRlimits,
    /// Where the VMM's process is created (the backend's spawn thread).
    pub spawner: SpawnThreadSlot,
}

/// A launch whose files are all in place, ready to start.
pub struct Prepared {
    plan: Plan,
    role: GuestRole,
    generated: GeneratedConfig,
    resources: LaunchResources,
    /// Files the staging created, removed if the start fails.
    private_files: Vec<PathBuf>,
}

impl Plan {
    /// Stages files and writes the generated config: the slow, blocking
    /// half of a launch (private drive copies can be large), for the
    /// blocking pool. On failure, everything created is removed again.
    pub fn prepare(
        self,
        spec: &LaunchSpec,
        mut generated: GeneratedConfig,
    ) -> Result<Prepared, FirecrackerLaunchError> {
        let paths = &self.target.paths;
        check_socket_path(&paths.api_socket)?;
        check_socket_path(&paths.vsock_socket)?;
        if self.bridge_to.is_some() {
            check_socket_path(&paths.vsock_port_socket(SIDECAR_VSOCK_PORT))?;
        }
        let run = &spec.workspace.run;
        let jail = self.target.jail.clone();
        let staging = match &jail {
            Some((layout, user, _)) => {
                fresh_jail(layout, *user)?;
                Staging::Jailed {
                    root: layout.root.clone(),
                    user: *user,
                }
            }
            None => Staging::Direct {
                run: run.clone(),
                label: spec.role.label(),
            },
        };
        let private_files = disks::stage(&mut generated.config, &staging)?;
        let resources = self.resources(spec, &private_files);
        let prepared = Prepared {
            plan: self,
            role: spec.role,
            generated,
            resources,
            private_files,
        };
        let written = prepared
            .plan
            .target
            .paths
            .prepare(&prepared.generated.to_json());
        let handed = written.and_then(|()| match &jail {
            Some((_, user, _)) => prepared.plan.target.paths.hand_to(*user),
            None => Ok(()),
        });
        match handed {
            Ok(()) => Ok(prepared),
            Err(e) => Err(prepared.undo(e)),
        }
    }
}

impl Plan {
    /// What the launch's control must end and remove. A jail's staged files
    /// go with the jail; an unjailed launch's are listed.
    fn resources(&self, spec: &LaunchSpec, private_files: &[PathBuf]) -> LaunchResources {
        let run = &spec.workspace.run;
        let jail = self.target.jail.as_ref().map(|(l, _, _)| l.clone());
        LaunchResources {
            private_files: if jail.is_some() {
                Vec::new()
            } else {
                private_files.to_vec()
            },
            // Kept beside the guest's own logs once the VM is gone, so a
            // stopped session leaves nothing in run/.
            keep_log_at: Some(
                spec.workspace
                    .logs
                    .join(format!("{}-firecracker.log", spec.role.label())),
            ),
            jail,
            record: Some(reaper::record_path(run, spec.role)),
            bridge: None,
        }
    }
}

impl Prepared {
    /// Starts the bridge (runtime VM with a sidecar) and the VM. Must run
    /// on a long-lived runtime thread: the parent-death signal of an
    /// unjailed VM fires when the thread that forked it exits, and
    /// blocking-pool threads exit when idle.
    pub fn start(mut self) -> Result<LaunchedGuest, FirecrackerLaunchError> {
        match self.bridge() {
            Ok(bridge) => self.resources.bridge = bridge,
            Err(e) => return Err(self.undo(e)),
        }
        let (program, args) = self.command();
        let paths = self.plan.target.paths.clone();
        let resources = std::mem::take(&mut self.resources);
        // On error, `resources` (and the bridge in it) are dropped by spawn.
        let rlimits = self.plan.start_rlimits.clone();
        let spawner = &self.plan.spawner;
        launch::spawn(
            &program, args, self.role, paths, resources, rlimits, spawner,
        )
        .map_err(|e| self.undo(e))
    }

    fn bridge(&self) -> Result<Option<VsockBridge>, FirecrackerLaunchError> {
        let (Some(target), Some(up)) = (&self.plan.bridge_to, &self.plan.link) else {
            return Ok(None);
        };
        let bridge = VsockBridge::start(
            BridgeConfig {
                listen: self.plan.target.paths.vsock_port_socket(SIDECAR_VSOCK_PORT),
                target: target.clone(),
                port: SIDECAR_VSOCK_PORT,
                owner: self.plan.target.jail.as_ref().map(|(_, u, _)| *u),
                limits: BridgeLimits::default(),
            },
            up.clone(),
        )?;
        Ok(Some(bridge))
    }

    /// Firecracker directly, or the jailer with cgroup limits sized from the
    /// generated `machine-config`.
    fn command(&self) -> (PathBuf, Vec<OsString>) {
        let fc_args = self.plan.target.paths.firecracker_args();
        match &self.plan.target.jail {
            None => (self.plan.config.binary.clone(), fc_args),
            Some((layout, user, jailer)) => {
                let mem = self
                    .generated
                    .config
                    .get("machine-config")
                    .and_then(|m| m.get("mem_size_mib"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(DEFAULT_MEM_MIB);
                let limits = jail::cgroup_limits(mem);
                let args = layout.jailer_args(&self.plan.config.binary, *user, &limits, fc_args);
                (jailer.clone(), args)
            }
        }
    }

    /// Removes everything this launch created; returns `e`.
    fn undo(&self, e: FirecrackerLaunchError) -> FirecrackerLaunchError {
        disks::remove_files(&self.private_files);
        if let Err(d) = self.plan.target.paths.discard() {
            tracing::warn!(role = %self.role, error = %d, "cannot remove files of a failed launch");
        }
        if let Some((layout, _, _)) = &self.plan.target.jail {
            reaper::remove_jail(layout);
        }
        e
    }
}

/// Replaces whatever an earlier launch left in the jail (the jailer refuses
/// existing device nodes) with an empty chroot owned by `user`, mode 0700;
/// the directories above it stay root's, mode 0700.
fn fresh_jail(layout: &JailLayout, user: GuestUser) -> Result<(), FirecrackerLaunchError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FirecrackerLaunchError::Jail { path, source }
    };
    reaper::remove_jail(layout);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layout.instance_dir)
        .map_err(err(&layout.instance_dir))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&layout.root)
        .map_err(err(&layout.root))?;
    std::os::unix::fs::lchown(&layout.root, Some(user.uid), Some(user.gid))
        .map_err(err(&layout.root))
}
