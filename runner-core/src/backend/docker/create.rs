//! Container options as plain data.
//!
//! [`ContainerPlan::new`] turns a [`LaunchSpec`] and the backend's settings
//! into everything the engine is told about one guest — name, labels, image,
//! command, environment, mounts, user, network, limits — and
//! [`ContainerPlan::create_body`] renders it, with the fixed hardening, as
//! bollard's create request. Nothing here talks to the engine, so the whole
//! mapping is unit-tested.
//!
//! User: the launch's [`LaunchSpec::run_as`] as `uid:gid` when the runner
//! set one (as root it always does: the user's own uid, see
//! [`crate::identity`]); otherwise [`PlanSettings::user`] (`[docker] user`,
//! else the runner's own uid:gid).
//!
//! Limits: `[resources]`, and where a key is missing the defaults of
//! [`crate::limits`], so every container has a pids and a memory limit.
//!
//! Fixed hardening (not configurable): every capability dropped,
//! `no-new-privileges`, read-only root filesystem, `--init` (so signals are
//! forwarded and zombies reaped), restart policy `no` (restarts are the
//! runner's own policy), and the `local` log driver capped at
//! [`LOG_MAX_SIZE`] × [`LOG_MAX_FILE`]: the runner reads output from the
//! attach stream, so the engine's copy is only a small, bounded debugging
//! aid. (`local` rather than `json-file`: json-file replaces invalid UTF-8
//! with U+FFFD, `local` keeps bytes as written.)

use super::select::DockerTier;
use crate::UserId;
use crate::backend::LaunchSpec;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::CreateContainerOptions;
use runner_types::reader::{CONTAINER_FILE_PATH, FILE_ENV, FILE_FLAG};
use runner_types::{GuestRole, ResourceLimits};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Label: the runner instance that created the container.
pub const LABEL_INSTANCE: &str = "oxydra.runner.instance";
/// Label: the session's user id.
pub const LABEL_USER: &str = "oxydra.runner.user";
/// Label: `runtime` or `sidecar`.
pub const LABEL_ROLE: &str = "oxydra.runner.role";
/// Label: `container` or `micro_vm`.
pub const LABEL_TIER: &str = "oxydra.runner.tier";
/// Label: the session id of the launch.
pub const LABEL_SESSION: &str = "oxydra.runner.session";
/// Label naming one launch (unique within a backend): what a dropped
/// launch's clean-up matches, so it never removes a later launch's
/// container of the same name.
pub const LABEL_LAUNCH: &str = "oxydra.runner.launch";

/// Network mode when `[docker] network` is unset.
pub const DEFAULT_NETWORK: &str = "none";
/// Log driver of every guest container.
pub const LOG_DRIVER: &str = "local";
/// `max-size` of the engine's own log copy.
pub const LOG_MAX_SIZE: &str = "1m";
/// `max-file` of the engine's own log copy.
pub const LOG_MAX_FILE: &str = "1";

/// Where the sidecar container sees `shared/`.
pub const SIDECAR_SHARED: &str = "/shared";
/// Where the sidecar container sees `tmp/`.
pub const SIDECAR_TMP: &str = "/tmp";
/// Where the sidecar container sees `ipc/`.
pub const SIDECAR_IPC: &str = "/ipc";

/// `oxydra-<tier>-<user>-<oxydra-vm|shell-vm>`: fixed per user, role and
/// tier, so a second launch of the same guest must first remove the first.
pub fn container_name(tier: DockerTier, user: &UserId, role: GuestRole) -> String {
    format!("oxydra-{}-{}-{}", tier.as_str(), user, role.label())
}

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl BindMount {
    fn new(source: &Path, target: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            source: source.to_path_buf(),
            target: target.into(),
            read_only,
        }
    }
}

/// Backend-wide inputs of a plan (the per-launch ones come from the
/// [`LaunchSpec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    /// Tier used in the name and labels.
    pub tier: DockerTier,
    /// Runner instance id (label).
    pub instance_id: String,
    /// `uid[:gid]` the guest runs as when the launch names no
    /// [`LaunchSpec::run_as`].
    pub user: String,
    /// Network mode.
    pub network: String,
    /// Replaces the runner's arguments to the image entrypoint, if set.
    pub command: Option<Vec<String>>,
    /// Environment for every guest, below the launch's extra environment.
    pub env: BTreeMap<String, String>,
}

/// Everything the engine is told about one guest container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Arguments appended to the image entrypoint.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, sorted by key.
    pub env: Vec<String>,
    /// Labels naming instance, user, role, tier and session.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts, bootstrap file first.
    pub mounts: Vec<BindMount>,
    /// `uid[:gid]`.
    pub user: String,
    /// Network mode.
    pub network: String,
    /// Resource limits.
    pub resources: ResourceLimits,
}

impl ContainerPlan {
    /// The plan for `spec`, running `image`, with the envelope at
    /// `bootstrap_file` on the host.
    ///
    /// Mounts: the runtime sees `shared/`, `tmp/`, `ipc/` (rw)
    /// and `vault/` (ro) at their host paths; the sidecar sees `shared/`,
    /// `tmp/`, `ipc/` at `/shared`, `/tmp`, `/ipc` and never the vault. Each
    /// guest gets only its own envelope, as the single read-only file
    /// `/run/oxydra/bootstrap`; `run/` and `logs/` are never mounted.
    pub fn new(
        settings: &PlanSettings,
        spec: &LaunchSpec,
        image: &str,
        bootstrap_file: &Path,
    ) -> Self {
        let ws = &spec.workspace;
        let mut mounts = vec![BindMount::new(bootstrap_file, CONTAINER_FILE_PATH, true)];
        match spec.role {
            GuestRole::Runtime => mounts.extend([
                BindMount::new(&ws.shared, &ws.shared, false),
                BindMount::new(&ws.tmp, &ws.tmp, false),
                BindMount::new(&ws.ipc, &ws.ipc, false),
                BindMount::new(&ws.vault, &ws.vault, true),
            ]),
            GuestRole::Sidecar => mounts.extend([
                BindMount::new(&ws.shared, SIDECAR_SHARED, false),
                BindMount::new(&ws.tmp, SIDECAR_TMP, false),
                BindMount::new(&ws.ipc, SIDECAR_IPC, false),
            ]),
        }

        let cmd = settings.command.clone().unwrap_or_else(|| {
            vec![
                "--user-id".to_owned(),
                spec.user_id.to_string(),
                "--workspace-root".to_owned(),
                spec.envelope.workspace_root.clone(),
                FILE_FLAG.to_owned(),
                CONTAINER_FILE_PATH.to_owned(),
            ]
        });

        let mut env = settings.env.clone();
        env.extend(spec.extra_env.clone());
        env.insert(FILE_ENV.to_owned(), CONTAINER_FILE_PATH.to_owned());

        let labels = BTreeMap::from([
            (LABEL_INSTANCE.to_owned(), settings.instance_id.clone()),
            (LABEL_USER.to_owned(), spec.user_id.to_string()),
            (LABEL_ROLE.to_owned(), spec.role.as_str().to_owned()),
            (LABEL_TIER.to_owned(), settings.tier.as_str().to_owned()),
            (LABEL_SESSION.to_owned(), spec.session_id.clone()),
        ]);

        Self {
            name: container_name(settings.tier, &spec.user_id, spec.role),
            image: image.to_owned(),
            cmd,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels,
            mounts,
            user: spec
                .run_as
                .map(|g| g.docker_user())
                .unwrap_or_else(|| settings.user.clone()),
            network: settings.network.clone(),
            resources: spec.resources.clone(),
        }
    }

    /// Query options of the create call (the name).
    pub fn create_options(&self) -> CreateContainerOptions {
        CreateContainerOptions {
            name: Some(self.name.clone()),
            ..Default::default()
        }
    }

    /// The create request: the plan plus the fixed hardening.
    pub fn create_body(&self) -> ContainerCreateBody {
        let mounts = self
            .mounts
            .iter()
            .map(|m| Mount {
                source: Some(m.source.to_string_lossy().into_owned()),
                target: Some(m.target.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let r = &self.resources;
        let mib = crate::limits::max_memory_mib(r);
        let memory = Some(i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX));
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(self.network.clone()),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(true),
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some(LOG_DRIVER.to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
                    // Nothing to rotate into with one file; the engine
                    // refuses compression then.
                    ("compress".to_owned(), "false".to_owned()),
                ])),
            }),
            nano_cpus: r.max_vcpus.map(|n| i64::from(n) * 1_000_000_000),
            memory,
            // Swap equal to memory: no swap on top, so the limit is the limit.
            memory_swap: memory,
            pids_limit: Some(i64::from(crate::limits::max_processes(r))),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.cmd.clone()),
            env: Some(self.env.clone()),
            labels: Some(self.labels.clone().into_iter().collect()),
            user: Some(self.user.clone()),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{MountOverrides, Workspace};
    use runner_types::{BootstrapEnvelope, SandboxTier};

    fn settings() -> PlanSettings {
        PlanSettings {
            tier: DockerTier::Container,
            instance_id: "inst-1".to_owned(),
            user: "1000:1000".to_owned(),
            network: DEFAULT_NETWORK.to_owned(),
            command: None,
            env: BTreeMap::from([
                ("A".to_owned(), "config".to_owned()),
                ("B".to_owned(), "config".to_owned()),
            ]),
        }
    }

    fn spec(role: GuestRole) -> LaunchSpec {
        let user = UserId::new("alice").unwrap();
        let ws = Workspace::layout(Path::new("/ws"), &user, &MountOverrides::default());
        LaunchSpec {
            run_as: None,
            role,
            user_id: user.clone(),
            session_id: "s-1".to_owned(),
            envelope: BootstrapEnvelope {
                user_id: "alice".to_owned(),
                sandbox_tier: SandboxTier::Container,
                workspace_root: "/ws/alice".to_owned(),
                sidecar_endpoint: None,
                runtime_policy: None,
                startup_status: None,
            },
            workspace: ws,
            extra_env: BTreeMap::from([
                ("B".to_owned(), "extra".to_owned()),
                (FILE_ENV.to_owned(), "/elsewhere".to_owned()),
            ]),
            resources: ResourceLimits {
                max_vcpus: Some(2),
                max_memory_mib: Some(64),
                max_processes: Some(50),
            },
        }
    }

    fn mount(plan: &ContainerPlan, target: &str) -> Option<BindMount> {
        plan.mounts
            .iter()
            .find(|m| m.target == Path::new(target))
            .cloned()
    }

    #[test]
    fn runtime_sees_workspace_at_host_paths_and_its_envelope_read_only() {
        let s = spec(GuestRole::Runtime);
        let boot = s.workspace.run.join("oxydra-vm.bootstrap.json");
        let plan = ContainerPlan::new(&settings(), &s, "img:1", &boot);
        assert_eq!(plan.name, "oxydra-container-alice-oxydra-vm");
        assert_eq!(
            mount(&plan, "/run/oxydra/bootstrap"),
            Some(BindMount::new(&boot, "/run/oxydra/bootstrap", true))
        );
        for (dir, ro) in [
            ("/ws/alice/shared", false),
            ("/ws/alice/tmp", false),
            ("/ws/alice/ipc", false),
            ("/ws/alice/vault", true),
        ] {
            assert_eq!(
                mount(&plan, dir),
                Some(BindMount::new(Path::new(dir), dir, ro))
            );
        }
        assert_eq!(plan.mounts.len(), 5);
        assert_eq!(
            plan.cmd,
            [
                "--user-id",
                "alice",
                "--workspace-root",
                "/ws/alice",
                "--bootstrap-file",
                "/run/oxydra/bootstrap"
            ]
        );
    }

    #[test]
    fn sidecar_sees_fixed_paths_and_never_the_vault() {
        let s = spec(GuestRole::Sidecar);
        let boot = s.workspace.run.join("shell-vm.bootstrap.json");
        let plan = ContainerPlan::new(&settings(), &s, "img:1", &boot);
        assert_eq!(plan.name, "oxydra-container-alice-shell-vm");
        assert_eq!(
            mount(&plan, "/shared").unwrap().source,
            Path::new("/ws/alice/shared")
        );
        assert_eq!(
            mount(&plan, "/tmp").unwrap().source,
            Path::new("/ws/alice/tmp")
        );
        assert_eq!(
            mount(&plan, "/ipc").unwrap().source,
            Path::new("/ws/alice/ipc")
        );
        assert_eq!(mount(&plan, "/run/oxydra/bootstrap").unwrap().source, boot);
        assert_eq!(plan.mounts.len(), 4);
    }

    #[test]
    fn run_and_logs_are_never_mounted_except_the_envelope_file() {
        for role in [GuestRole::Runtime, GuestRole::Sidecar] {
            let s = spec(role);
            let boot = s
                .workspace
                .run
                .join(format!("{}.bootstrap.json", role.label()));
            let plan = ContainerPlan::new(&settings(), &s, "img", &boot);
            for m in &plan.mounts {
                let private = m.source.starts_with(&s.workspace.run)
                    || m.source.starts_with(&s.workspace.logs);
                assert!(!private || m.source == boot, "{m:?} mounted for {role}");
            }
        }
    }

    #[test]
    fn env_layers_config_then_extra_and_the_bootstrap_variable_wins() {
        let plan = ContainerPlan::new(
            &settings(),
            &spec(GuestRole::Runtime),
            "img",
            Path::new("/b"),
        );
        assert_eq!(
            plan.env,
            [
                "A=config",
                "B=extra",
                "OXYDRA_BOOTSTRAP_FILE=/run/oxydra/bootstrap"
            ]
        );
    }

    #[test]
    fn labels_name_instance_user_role_tier_and_session() {
        let mut st = settings();
        st.tier = DockerTier::MicroVm;
        let plan = ContainerPlan::new(&st, &spec(GuestRole::Sidecar), "img", Path::new("/b"));
        assert_eq!(plan.name, "oxydra-micro_vm-alice-shell-vm");
        let want = [
            (LABEL_INSTANCE, "inst-1"),
            (LABEL_USER, "alice"),
            (LABEL_ROLE, "sidecar"),
            (LABEL_TIER, "micro_vm"),
            (LABEL_SESSION, "s-1"),
        ];
        for (k, v) in want {
            assert_eq!(plan.labels.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn configured_command_replaces_the_runner_arguments() {
        let mut st = settings();
        st.command = Some(vec!["--probe".to_owned(), "x".to_owned()]);
        let plan = ContainerPlan::new(&st, &spec(GuestRole::Runtime), "img", Path::new("/b"));
        assert_eq!(plan.cmd, ["--probe", "x"]);
    }

    #[test]
    fn body_carries_hardening_and_limits() {
        let plan = ContainerPlan::new(
            &settings(),
            &spec(GuestRole::Runtime),
            "img:1",
            Path::new("/b"),
        );
        let body = plan.create_body();
        assert_eq!(body.image.as_deref(), Some("img:1"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.tty, Some(false));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.init, Some(true));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        let log = hc.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("local"));
        assert_eq!(
            log.config.unwrap().get("max-size").map(String::as_str),
            Some(LOG_MAX_SIZE)
        );
        assert_eq!(hc.nano_cpus, Some(2_000_000_000));
        assert_eq!(hc.memory, Some(64 * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory);
        assert_eq!(hc.pids_limit, Some(50));
        let mounts = hc.mounts.unwrap();
        assert!(mounts.iter().all(|m| m.typ == Some(MountType::BIND)));
        assert_eq!(
            plan.create_options().name.as_deref(),
            Some(plan.name.as_str())
        );
    }

    #[test]
    fn unset_limits_get_the_defaults_except_cpus() {
        let mut s = spec(GuestRole::Runtime);
        s.resources = ResourceLimits::default();
        let hc = ContainerPlan::new(&settings(), &s, "img", Path::new("/b"))
            .create_body()
            .host_config
            .unwrap();
        let mib = i64::try_from(crate::limits::DEFAULT_MAX_MEMORY_MIB).unwrap();
        assert_eq!(hc.nano_cpus, None);
        assert_eq!(hc.memory, Some(mib * 1024 * 1024));
        assert_eq!(hc.memory_swap, hc.memory);
        assert_eq!(
            hc.pids_limit,
            Some(i64::from(crate::limits::DEFAULT_MAX_PROCESSES))
        );
    }

    #[test]
    fn the_launch_identity_wins_over_the_configured_user() {
        let mut s = spec(GuestRole::Sidecar);
        let plan = ContainerPlan::new(&settings(), &s, "img", Path::new("/b"));
        assert_eq!(plan.user, "1000:1000");
        s.run_as = Some(crate::identity::GuestUser {
            uid: 1_900_000_003,
            gid: 1_900_000_004,
        });
        let plan = ContainerPlan::new(&settings(), &s, "img", Path::new("/b"));
        assert_eq!(
            plan.create_body().user.as_deref(),
            Some("1900000003:1900000004")
        );
    }
}
