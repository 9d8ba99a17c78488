//! Building each guest's bootstrap envelope from the session's
//! facts: user, tier, workspace, role, the user's config, the sidecar's
//! endpoint and what the runner could not set up.
//!
//! What goes where:
//! - `workspace_root` is the user's own directory `<workspace_root>/<user_id>`
//!   (never the global root): an oxydra runtime writes
//!   `<workspace_root>/ipc/gateway-endpoint` and works below it.
//! - `runtime_policy.mounts` are the user's `shared/`, `tmp/`, `vault/` as
//!   the guest sees them ([`GuestPaths`]); `resources` are the user's limits;
//!   `credential_refs` go to the runtime guest only (the vault and
//!   credentials are runtime-only).
//! - `sidecar_endpoint` goes to the runtime guest only.
//! - `startup_status` is [`startup_status`], the same value health reports.

use crate::UserId;
use crate::config::UserConfig;
use crate::workspace::Workspace;
use runner_types::{
    BootstrapEnvelope, DegradedReason, GuestRole, ResolvedMounts, RuntimePolicy, SandboxTier,
    SidecarEndpoint, StartupStatus,
};
use std::collections::BTreeMap;
use std::path::Path;

/// Degraded-reason code: the process tier is in effect (no isolation).
pub const INSECURE_PROCESS_TIER: &str = "insecure_process_tier";
/// Degraded-reason code: no sidecar guest runs, so no shell tools.
pub const SIDECAR_UNAVAILABLE: &str = "sidecar_unavailable";

/// Inputs of [`build_envelope`].
#[derive(Debug, Clone)]
pub struct EnvelopeParams<'a> {
    /// The session's user.
    pub user: &'a UserId,
    /// Tier in effect.
    pub tier: SandboxTier,
    /// Which guest the envelope is for.
    pub role: GuestRole,
    /// The user's workspace (host paths).
    pub workspace: &'a Workspace,
    /// The user's settings (limits, credentials, tool switches).
    pub user_config: &'a UserConfig,
    /// Where the sidecar listens, for the runtime guest; ignored for the
    /// sidecar itself (pass `None`).
    pub sidecar_endpoint: Option<SidecarEndpoint>,
    /// Whether the session runs a sidecar guest.
    pub sidecar_running: bool,
    /// Why the session runs degraded (for example [`INSECURE_PROCESS_TIER`]).
    /// [`SIDECAR_UNAVAILABLE`] is added when no sidecar runs and it is missing.
    pub degraded_reasons: Vec<DegradedReason>,
}

/// How a guest sees the workspace directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestPaths {
    /// At their host paths: process tier, the runtime container (identity
    /// binds), micro_vm guests.
    Host,
    /// At `/shared`, `/tmp` and `/vault`: a container-tier sidecar (which
    /// gets no vault mount; the path is there because the envelope format
    /// requires one).
    Sidecar,
}

impl GuestPaths {
    /// The mapping a guest of `role` at `tier` gets.
    pub fn for_guest(tier: SandboxTier, role: GuestRole) -> Self {
        match (tier, role) {
            (SandboxTier::Container, GuestRole::Sidecar) => Self::Sidecar,
            _ => Self::Host,
        }
    }

    /// `shared/`, `tmp/` and `vault/` of `workspace` under this mapping.
    pub fn mounts(self, workspace: &Workspace) -> ResolvedMounts {
        match self {
            Self::Host => ResolvedMounts {
                shared: path_string(&workspace.shared),
                tmp: path_string(&workspace.tmp),
                vault: path_string(&workspace.vault),
            },
            Self::Sidecar => ResolvedMounts {
                shared: "/shared".into(),
                tmp: "/tmp".into(),
                vault: "/vault".into(),
            },
        }
    }
}

/// The envelope for one guest, with the mount mapping of
/// [`GuestPaths::for_guest`].
pub fn build_envelope(params: EnvelopeParams<'_>) -> BootstrapEnvelope {
    let paths = GuestPaths::for_guest(params.tier, params.role);
    build_envelope_with(params, paths)
}

/// The envelope for one guest, with an explicit mount mapping.
pub fn build_envelope_with(params: EnvelopeParams<'_>, paths: GuestPaths) -> BootstrapEnvelope {
    let runtime = params.role == GuestRole::Runtime;
    let startup = startup_status(
        params.tier,
        params.user_config,
        params.sidecar_running,
        params.degraded_reasons,
    );
    BootstrapEnvelope {
        user_id: params.user.as_str().to_owned(),
        sandbox_tier: params.tier,
        workspace_root: path_string(&params.workspace.user_root),
        sidecar_endpoint: params.sidecar_endpoint.filter(|_| runtime),
        runtime_policy: Some(RuntimePolicy {
            mounts: paths.mounts(params.workspace),
            resources: params.user_config.resources.clone(),
            credential_refs: if runtime {
                params.user_config.credential_refs.clone()
            } else {
                BTreeMap::new()
            },
        }),
        startup_status: Some(startup),
    }
}

/// What the session offers: shell tools need the sidecar and the user's
/// `shell_enabled`, browser tools the sidecar and `browser_enabled`. Adds
/// [`SIDECAR_UNAVAILABLE`] when no sidecar runs and `degraded` lacks it.
pub fn startup_status(
    tier: SandboxTier,
    user_config: &UserConfig,
    sidecar_running: bool,
    mut degraded: Vec<DegradedReason>,
) -> StartupStatus {
    if !sidecar_running && !degraded.iter().any(|r| r.code == SIDECAR_UNAVAILABLE) {
        degraded.push(sidecar_unavailable());
    }
    StartupStatus {
        sandbox_tier: tier,
        sidecar_available: sidecar_running,
        shell_available: sidecar_running && user_config.shell_enabled,
        browser_available: sidecar_running && user_config.browser_enabled,
        degraded_reasons: degraded,
    }
}

/// [`INSECURE_PROCESS_TIER`], for a process tier forced with `--insecure`
/// (`forced`) or configured.
pub fn insecure_process_tier(forced: bool) -> DegradedReason {
    DegradedReason {
        code: INSECURE_PROCESS_TIER.into(),
        detail: if forced {
            "--insecure forced the process tier: guests run as host processes without isolation"
        } else {
            "process tier: guests run as host processes without isolation"
        }
        .into(),
    }
}

/// [`SIDECAR_UNAVAILABLE`].
pub fn sidecar_unavailable() -> DegradedReason {
    DegradedReason {
        code: SIDECAR_UNAVAILABLE.into(),
        detail: "no sidecar guest runs; shell tools are unavailable".into(),
    }
}

/// Workspace paths come from UTF-8 config text joined to the config file's
/// directory; a non-UTF-8 directory is shown lossily rather than failing.
fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::MountOverrides;
    use runner_types::{ResourceLimits, SidecarTransport};
    use std::path::PathBuf;

    fn user() -> UserId {
        UserId::new("alice").unwrap()
    }

    fn workspace() -> Workspace {
        let overrides = MountOverrides {
            shared: Some(PathBuf::from("/data/alice")),
            ..MountOverrides::default()
        };
        Workspace::layout(Path::new("/ws"), &user(), &overrides)
    }

    fn user_config() -> UserConfig {
        UserConfig {
            resources: ResourceLimits {
                max_vcpus: Some(2),
                max_memory_mib: Some(512),
                max_processes: None,
            },
            credential_refs: BTreeMap::from([("openai".into(), "vault:openai".into())]),
            shell_enabled: true,
            browser_enabled: true,
            ..UserConfig::default()
        }
    }

    fn endpoint() -> SidecarEndpoint {
        SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: "/ws/alice/ipc/shell-daemon.sock".into(),
        }
    }

    fn params<'a>(
        user: &'a UserId,
        ws: &'a Workspace,
        cfg: &'a UserConfig,
        tier: SandboxTier,
        role: GuestRole,
    ) -> EnvelopeParams<'a> {
        EnvelopeParams {
            user,
            tier,
            role,
            workspace: ws,
            user_config: cfg,
            sidecar_endpoint: Some(endpoint()),
            sidecar_running: true,
            degraded_reasons: vec![],
        }
    }

    #[test]
    fn runtime_envelope_carries_everything() {
        let (u, ws, cfg) = (user(), workspace(), user_config());
        let mut p = params(&u, &ws, &cfg, SandboxTier::Process, GuestRole::Runtime);
        p.degraded_reasons = vec![insecure_process_tier(true)];
        let env = build_envelope(p);
        assert_eq!(env.user_id, "alice");
        assert_eq!(env.sandbox_tier, SandboxTier::Process);
        assert_eq!(env.workspace_root, "/ws/alice");
        assert_eq!(env.sidecar_endpoint, Some(endpoint()));
        let policy = env.runtime_policy.as_ref().unwrap();
        assert_eq!(
            policy.mounts,
            ResolvedMounts {
                shared: "/data/alice".into(),
                tmp: "/ws/alice/tmp".into(),
                vault: "/ws/alice/vault".into(),
            }
        );
        assert_eq!(policy.resources, cfg.resources);
        assert_eq!(policy.credential_refs, cfg.credential_refs);
        let status = env.startup_status.as_ref().unwrap();
        assert!(status.sidecar_available && status.shell_available && status.browser_available);
        assert_eq!(status.degraded_reasons.len(), 1);
        assert_eq!(status.degraded_reasons[0].code, INSECURE_PROCESS_TIER);
        // What a guest receives passes the guest-side validation.
        assert_eq!(
            BootstrapEnvelope::from_json(&env.to_json().unwrap()).unwrap(),
            env
        );
    }

    #[test]
    fn sidecar_envelope_has_no_endpoint_and_no_credentials() {
        let (u, ws, cfg) = (user(), workspace(), user_config());
        let env = build_envelope(params(
            &u,
            &ws,
            &cfg,
            SandboxTier::Process,
            GuestRole::Sidecar,
        ));
        assert_eq!(env.sidecar_endpoint, None);
        let policy = env.runtime_policy.unwrap();
        assert!(policy.credential_refs.is_empty());
        assert_eq!(policy.resources, cfg.resources);
        // Process tier: host paths for the sidecar too.
        assert_eq!(policy.mounts.tmp, "/ws/alice/tmp");
    }

    #[test]
    fn container_sidecar_sees_root_mounts() {
        let (u, ws, cfg) = (user(), workspace(), user_config());
        let env = build_envelope(params(
            &u,
            &ws,
            &cfg,
            SandboxTier::Container,
            GuestRole::Sidecar,
        ));
        let mounts = env.runtime_policy.unwrap().mounts;
        assert_eq!(
            (
                mounts.shared.as_str(),
                mounts.tmp.as_str(),
                mounts.vault.as_str()
            ),
            ("/shared", "/tmp", "/vault")
        );
        // The container runtime keeps identity paths.
        let env = build_envelope(params(
            &u,
            &ws,
            &cfg,
            SandboxTier::Container,
            GuestRole::Runtime,
        ));
        assert_eq!(env.runtime_policy.unwrap().mounts.shared, "/data/alice");
        // And an explicit mapping overrides the default.
        let p = params(&u, &ws, &cfg, SandboxTier::MicroVm, GuestRole::Sidecar);
        let env = build_envelope_with(p, GuestPaths::Sidecar);
        assert_eq!(env.runtime_policy.unwrap().mounts.shared, "/shared");
    }

    #[test]
    fn no_sidecar_is_degraded_once() {
        let (u, ws, cfg) = (user(), workspace(), user_config());
        let mut p = params(&u, &ws, &cfg, SandboxTier::Process, GuestRole::Runtime);
        p.sidecar_endpoint = None;
        p.sidecar_running = false;
        let env = build_envelope(p.clone());
        let status = env.startup_status.unwrap();
        assert!(!status.sidecar_available && !status.shell_available && !status.browser_available);
        let codes: Vec<_> = status
            .degraded_reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(codes, [SIDECAR_UNAVAILABLE]);
        assert_eq!(env.sidecar_endpoint, None);

        // Already reported by the caller: not added twice.
        p.degraded_reasons = vec![insecure_process_tier(false), sidecar_unavailable()];
        let status = build_envelope(p).startup_status.unwrap();
        let codes: Vec<_> = status
            .degraded_reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect();
        assert_eq!(codes, [INSECURE_PROCESS_TIER, SIDECAR_UNAVAILABLE]);
    }

    #[test]
    fn tool_switches_follow_the_user_config() {
        let (u, ws) = (user(), workspace());
        let cfg = UserConfig {
            shell_enabled: false,
            browser_enabled: false,
            ..user_config()
        };
        let env = build_envelope(params(
            &u,
            &ws,
            &cfg,
            SandboxTier::MicroVm,
            GuestRole::Runtime,
        ));
        let status = env.startup_status.unwrap();
        assert!(status.sidecar_available);
        assert!(!status.shell_available && !status.browser_available);
        assert!(status.degraded_reasons.is_empty());
        assert_eq!(status.sandbox_tier, SandboxTier::MicroVm);
    }
}
