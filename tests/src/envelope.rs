//! Envelopes as the runner builds them: through `runner_core::bootstrap`,
//! with the facts a session would pass (the backend's tier, sidecar and
//! degraded reasons), so a test never hand-builds one that the runner
//! could not send; and launch specs around them.

use runner_core::backend::{LaunchSpec, SandboxBackend};
use runner_core::bootstrap::{EnvelopeParams, build_envelope, insecure_process_tier};
use runner_core::config::UserConfig;
use runner_core::{UserId, Workspace};
use runner_types::{BootstrapEnvelope, GuestRole, ResourceLimits, SandboxTier};
use std::collections::BTreeMap;

/// A user config with these limits and credentials, shell tools on.
pub fn user_config(resources: ResourceLimits, credentials: &[(&str, &str)]) -> UserConfig {
    UserConfig {
        resources,
        shell_enabled: true,
        credential_refs: credentials
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..UserConfig::default()
    }
}

/// The envelope a session of `user` on `backend` sends the guest of
/// `role`: the sidecar's endpoint for the runtime, the backend's degraded
/// reasons (plus `insecure_process_tier` on the process tier).
pub fn envelope_for(
    backend: &dyn SandboxBackend,
    user: &UserId,
    workspace: &Workspace,
    role: GuestRole,
    user_config: &UserConfig,
) -> BootstrapEnvelope {
    let mut degraded = backend.degraded_reasons();
    if backend.tier() == SandboxTier::Process {
        degraded.push(insecure_process_tier(false));
    }
    build_envelope(EnvelopeParams {
        user,
        tier: backend.tier(),
        role,
        workspace,
        user_config,
        sidecar_endpoint: backend
            .has_sidecar()
            .then(|| backend.sidecar_endpoint(workspace)),
        sidecar_running: backend.has_sidecar(),
        degraded_reasons: degraded,
    })
}

/// A launch spec for `role` of `user` carrying `envelope`: session `s1`,
/// no extra environment, run as the runner's own user.
pub fn launch_spec(
    role: GuestRole,
    user: &UserId,
    workspace: &Workspace,
    envelope: BootstrapEnvelope,
    resources: ResourceLimits,
) -> LaunchSpec {
    LaunchSpec {
        run_as: None,
        role,
        user_id: user.clone(),
        session_id: "s1".into(),
        workspace: workspace.clone(),
        envelope,
        extra_env: BTreeMap::new(),
        resources,
    }
}
