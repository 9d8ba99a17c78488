//! One launch, step by step: where its files go (run/ or a fresh jail),
//! staging drives and kernel, writing the generated config, starting the
//! vsock bridge (runtime VM with a sidecar), and the command that starts
//! Firecracker directly or through the jailer. Blocking: runs on the
//! blocking pool, since private drive copies can be large.

use super::disks::{self, Staging};
use super::error::FirecrackerLaunchError;
use super::jail::{self, Confinement, JailLayout};
use super::launch::{self, LaunchPaths, LaunchResources};
use super::vsock_bridge::{BridgeConfig, BridgeLimits, VsockBridge};
use super::{FirecrackerBackendConfig, GeneratedConfig, SIDECAR_VSOCK_PORT, reaper};
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
pub struct Plan<'a> {
    /// Backend settings.
    pub config: &'a FirecrackerBackendConfig,
    /// This launch's target.
    pub target: Target,
    /// The sidecar's vsock socket (host path), when the runtime VM needs a
    /// bridge to it.
    pub bridge_to: Option<PathBuf>,
    /// The session's "bridge up" watch.
    pub link: Option<watch::Sender<bool>>,
}

impl Plan<'_> {
    /// Stages, writes, bridges and spawns. On failure, everything created
    /// is removed again.
    pub fn launch(
        self,
        spec: &LaunchSpec,
        mut generated: GeneratedConfig,
    ) -> Result<LaunchedGuest, FirecrackerLaunchError> {
        let paths = self.target.paths.clone();
        check_socket_path(&paths.api_socket)?;
        check_socket_path(&paths.vsock_socket)?;
        if self.bridge_to.is_some() {
            check_socket_path(&paths.vsock_port_socket(SIDECAR_VSOCK_PORT))?;
        }
        let run = &spec.workspace.run;
        let jail = self.target.jail.as_ref();
        if let Some((layout, user, _)) = jail {
            fresh_jail(layout, *user)?;
        }
        let staging = match jail {
            Some((layout, user, _)) => Staging::Jailed {
                root: layout.root.clone(),
                user: *user,
            },
            None => Staging::Direct {
                run: run.clone(),
                label: spec.role.label(),
            },
        };
        let private_files = disks::stage(&mut generated.config, &staging)?;
        let resources = LaunchResources {
            private_files: if jail.is_some() {
                Vec::new()
            } else {
                private_files.clone()
            },
            jail: jail.map(|(l, _, _)| l.clone()),
            keep_log_at: jail.map(|_| LaunchPaths::new(run, spec.role).vmm_log),
            record: Some(reaper::record_path(run, spec.role)),
            bridge: None,
        };
        let undo = |e: FirecrackerLaunchError| {
            disks::remove_files(&private_files);
            if let Err(d) = paths.discard() {
                tracing::warn!(role = %spec.role, error = %d, "cannot remove files of a failed launch");
            }
            if let Some((layout, _, _)) = jail {
                reaper::remove_jail(layout);
            }
            e
        };
        self.start(spec, &generated, resources).map_err(undo)
    }

    fn start(
        &self,
        spec: &LaunchSpec,
        generated: &GeneratedConfig,
        mut resources: LaunchResources,
    ) -> Result<LaunchedGuest, FirecrackerLaunchError> {
        let paths = &self.target.paths;
        // Small local files: plain std IO, on the blocking pool already.
        paths.prepare(&generated.to_json())?;
        let jail = self.target.jail.as_ref();
        if let Some((_, user, _)) = jail {
            paths.hand_to(*user)?;
        }
        if let (Some(target), Some(up)) = (&self.bridge_to, &self.link) {
            let bridge = VsockBridge::start(
                BridgeConfig {
                    listen: paths.vsock_port_socket(SIDECAR_VSOCK_PORT),
                    target: target.clone(),
                    port: SIDECAR_VSOCK_PORT,
                    owner: jail.map(|(_, u, _)| *u),
                    limits: BridgeLimits::default(),
                },
                up.clone(),
            )?;
            resources.bridge = Some(bridge);
        }
        let (program, args) = self.command(generated);
        launch::spawn(&program, args, spec.role, paths.clone(), resources)
    }

    /// Firecracker directly, or the jailer with cgroup limits sized from the
    /// generated `machine-config`.
    fn command(&self, generated: &GeneratedConfig) -> (PathBuf, Vec<OsString>) {
        let fc_args = self.target.paths.firecracker_args();
        match &self.target.jail {
            None => (self.config.binary.clone(), fc_args),
            Some((layout, user, jailer)) => {
                let mem = generated
                    .config
                    .get("machine-config")
                    .and_then(|m| m.get("mem_size_mib"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(DEFAULT_MEM_MIB);
                let limits = jail::cgroup_limits(mem);
                let args = layout.jailer_args(&self.config.binary, *user, &limits, fc_args);
                (jailer.clone(), args)
            }
        }
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
