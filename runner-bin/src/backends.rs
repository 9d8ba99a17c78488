//! Wiring real backends from the config and the process environment.

use anyhow::Context;
use runner_actors::Backends;
use runner_core::backend::clean_start::StartRlimits;
use runner_core::backend::docker::{
    BackendKind, DockerBackend, DockerBackendConfig, HostOs, select_backend_for,
};
use runner_core::backend::firecracker::{FirecrackerBackend, FirecrackerBackendConfig};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::config::{GuestCommand, ProcessConfig, RunnerConfig};
use runner_types::SandboxTier;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The backend for `tier`, built from `config` and this process's
/// environment; process-tier guests start with `start_rlimits`.
pub fn for_tier(
    config: &RunnerConfig,
    tier: SandboxTier,
    start_rlimits: StartRlimits,
) -> anyhow::Result<Backends> {
    let path = std::env::var_os("PATH");
    let backends = Backends::new();
    Ok(match tier {
        SandboxTier::Process => {
            let process = match &config.process {
                Some(p) => p.clone(),
                None => demo_guests()?,
            };
            let backend = ProcessBackend::new(ProcessBackendConfig {
                runtime: process.runtime,
                sidecar: process.sidecar,
                search_path: path,
            })
            .with_start_rlimits(start_rlimits);
            backends.with(Arc::new(backend))
        }
        SandboxTier::MicroVm | SandboxTier::Container => {
            match select_backend_for(tier, host_os()) {
                BackendKind::Firecracker => {
                    let fc = FirecrackerBackend::new(FirecrackerBackendConfig::from_runner_config(
                        config,
                        path.as_deref(),
                    ))
                    .with_start_rlimits(start_rlimits);
                    fc.check().context("The micro_vm tier is not usable")?;
                    backends.with(Arc::new(fc))
                }
                BackendKind::Docker(docker_tier) => {
                    let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
                    let docker = DockerBackend::new(DockerBackendConfig::from_runner_config(
                        config,
                        docker_tier,
                        instance_id(config),
                        std::env::var("DOCKER_HOST").ok(),
                        user,
                    ))
                    .context("The container tier is not usable")?;
                    backends.with(Arc::new(docker))
                }
                BackendKind::Process => unreachable!("the process tier is handled above"),
            }
        }
    })
}

fn host_os() -> HostOs {
    if cfg!(target_os = "macos") {
        HostOs::MacOs
    } else {
        HostOs::Linux
    }
}

/// Names this runner in container labels, so orphan reconciliation only
/// touches containers of the same installation: the workspace root, which a
/// daemon always shares with a crashed predecessor for the same user.
/// Canonical, so a root reached through a symlink or `..` names the same
/// installation.
fn instance_id(config: &RunnerConfig) -> String {
    std::fs::canonicalize(&config.workspace_root)
        .unwrap_or_else(|_| config.workspace_root.clone())
        .display()
        .to_string()
}

/// The built-in guests: this binary's hidden `demo-guest` mode, as runtime
/// and sidecar. Used when the config has no `[process]` table.
fn demo_guests() -> anyhow::Result<ProcessConfig> {
    let exe =
        std::env::current_exe().context("Cannot locate the runner binary for the demo guests")?;
    let command = |role: &str| GuestCommand {
        program: exe.clone(),
        args: vec!["demo-guest".into(), "--role".into(), role.into()],
        env: BTreeMap::new(),
    };
    Ok(ProcessConfig {
        runtime: command("runtime"),
        sidecar: Some(command("sidecar")),
    })
}
