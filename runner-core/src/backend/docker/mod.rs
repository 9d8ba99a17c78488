//! Container tier, and the macOS `micro_vm` tier: each guest is a Docker
//! container on a real engine, driven through bollard.
//!
//! A launch writes the guest's envelope to `run/<role label>.bootstrap.json`
//! (mode 0400), creates the container from a [`create::ContainerPlan`]
//! (hardened, limited, labelled with runner instance, user, role, tier and
//! session, named `oxydra-<tier>-<user>-<role label>`), attaches to its
//! output *before* starting it (`logs.rs`), starts it and watches for its exit
//! (`guest.rs`). Restarts are the runner's own policy: a restart is a new
//! launch, and since the name is fixed, cleanup of the previous launch
//! removes its container; a same-name container this instance owns is
//! removed before create, one it does not own is a
//! [`DockerLaunchError::NameConflict`] and left alone.
//!
//! [`SandboxBackend::prepare_session`] pings the engine (so an unreachable
//! engine fails before anything is created, naming the socket) and removes
//! this instance's leftover containers for that user (`reconcile.rs`).
//!
//! Sidecar endpoint: the Unix socket [`Workspace::sidecar_socket`]
//! (`ipc/shell-daemon.sock`). The runtime container sees `ipc/` at its host
//! path, so the endpoint handed to it is the host path; the sidecar
//! container sees the same directory as `/ipc` and must listen on
//! `/ipc/shell-daemon.sock`.

mod attach;
mod bootstrap_file;
mod client;
mod control;
pub mod create;
mod error;
mod image;
mod launch_guard;
mod reconcile;
mod select;

pub use client::{DEFAULT_SOCKET, resolve_socket};
pub use control::MAX_STOP_OVERRUN;
pub use error::{DockerLaunchError, DockerStopError, EngineAction};
pub use select::{BackendKind, DockerTier, HostOs, select_backend_for};

use self::bootstrap_file::BootstrapFile;
use self::client::Engine;
use self::control::{DockerControl, ENGINE_PING_BOUND};
use self::create::{ContainerPlan, DEFAULT_NETWORK, PlanSettings};
use self::error::status_of;
use self::launch_guard::LaunchGuard;
use self::reconcile::{NameHolder, force_remove, name_holder, remove_orphans};
use crate::UserId;
use crate::backend::{
    GuestIdentity, GuestOutput, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend,
};
use crate::config::RunnerConfig;
use crate::workspace::Workspace;
use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::AttachContainerOptions;
use runner_types::config::DockerSection;
use runner_types::{GuestRole, SandboxTier, SidecarEndpoint, SidecarTransport};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything a [`DockerBackend`] is built from. No field is read from the
/// process environment: the embedding program passes `DOCKER_HOST` and its
/// own uid:gid in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerBackendConfig {
    /// The tier served (names and labels containers with it).
    pub tier: DockerTier,
    /// This runner instance's id, put on every container as a label;
    /// leftover removal only ever touches containers carrying it.
    pub instance_id: String,
    /// `[docker]` from `runner.toml`.
    pub docker: DockerSection,
    /// `DOCKER_HOST` as the embedding program read it; used when
    /// `[docker] host` is unset.
    pub docker_host_env: Option<String>,
    /// Runtime guest image (`[guest_images] oxydra_vm`).
    pub runtime_image: String,
    /// Sidecar guest image (`[guest_images] shell_vm`); `None`: no sidecar.
    pub sidecar_image: Option<String>,
    /// The runner's own `uid:gid`: guests run as it unless `[docker] user`
    /// says otherwise.
    pub runner_user: String,
    /// Environment for every guest, below each launch's extra environment.
    pub env: BTreeMap<String, String>,
}

impl DockerBackendConfig {
    /// A config from the runner's validated config: `[docker]` and both
    /// `[guest_images]` references.
    pub fn from_runner_config(
        config: &RunnerConfig,
        tier: DockerTier,
        instance_id: impl Into<String>,
        docker_host_env: Option<String>,
        runner_user: impl Into<String>,
    ) -> Self {
        Self {
            tier,
            instance_id: instance_id.into(),
            docker: config.docker.clone(),
            docker_host_env,
            runtime_image: config.guest_images.oxydra_vm.clone(),
            sidecar_image: Some(config.guest_images.shell_vm.clone()),
            runner_user: runner_user.into(),
            env: BTreeMap::new(),
        }
    }
}

/// The Docker backend (see the module docs).
#[derive(Debug)]
pub struct DockerBackend {
    engine: Engine,
    plan: PlanSettings,
    runtime_image: String,
    sidecar_image: Option<String>,
    pull: bool,
    /// Owner given to envelope files when guests run as another user and
    /// the launch names no identity.
    file_owner: Option<(u32, u32)>,
    /// The runner's own uid and gid, when `runner_user` is numeric.
    runner_ids: Option<(u32, u32)>,
    /// Launches so far: numbers each launch's [`create::LABEL_LAUNCH`].
    launches: std::sync::atomic::AtomicU64,
}

impl DockerBackend {
    /// A backend for `config`. Does not contact the engine: the first
    /// [`SandboxBackend::prepare_session`] or launch does.
    pub fn new(config: DockerBackendConfig) -> Result<Self, DockerLaunchError> {
        if config.instance_id.trim().is_empty() {
            return Err(DockerLaunchError::EmptyInstanceId);
        }
        let socket = resolve_socket(
            config.docker.host.as_deref(),
            config.docker_host_env.as_deref(),
        )?;
        let user = config
            .docker
            .user
            .clone()
            .unwrap_or_else(|| config.runner_user.clone());
        let runner_ids = parse_ids(&config.runner_user);
        let file_owner = match (parse_ids(&user), runner_ids) {
            (Some(guest), Some(runner)) if guest != runner => Some(guest),
            _ => None,
        };
        Ok(Self {
            engine: Engine::new(socket),
            plan: PlanSettings {
                tier: config.tier,
                instance_id: config.instance_id,
                user,
                network: config
                    .docker
                    .network
                    .unwrap_or_else(|| DEFAULT_NETWORK.to_owned()),
                command: config.docker.command,
                env: config.env,
            },
            runtime_image: config.runtime_image,
            sidecar_image: config.sidecar_image,
            pull: config.docker.pull,
            file_owner,
            runner_ids,
            launches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        self.engine.socket()
    }

    /// The tier served.
    pub fn docker_tier(&self) -> DockerTier {
        self.plan.tier
    }

    /// This runner instance's id.
    pub fn instance_id(&self) -> &str {
        &self.plan.instance_id
    }

    /// The plan a launch of `spec` would use, with the envelope file at
    /// `bootstrap_file` (for inspection and benchmarks; [`Self::launch`]
    /// builds the same).
    pub fn plan_for(
        &self,
        spec: &LaunchSpec,
        bootstrap_file: &Path,
    ) -> Result<ContainerPlan, LaunchError> {
        let image = self.image_for(spec.role)?;
        Ok(ContainerPlan::new(&self.plan, spec, image, bootstrap_file))
    }

    /// Who owns a launch's envelope file: the guest's user, when it is not
    /// the runner (the file is 0400 and the guest must read it).
    fn envelope_owner(&self, spec: &LaunchSpec) -> Option<(u32, u32)> {
        match spec.run_as {
            Some(g) if Some((g.uid, g.gid)) != self.runner_ids => Some((g.uid, g.gid)),
            Some(_) => None,
            None => self.file_owner,
        }
    }

    fn image_for(&self, role: GuestRole) -> Result<&str, LaunchError> {
        match role {
            GuestRole::Runtime => Ok(&self.runtime_image),
            GuestRole::Sidecar => self
                .sidecar_image
                .as_deref()
                .ok_or(LaunchError::NotConfigured {
                    role,
                    tier: self.tier(),
                }),
        }
    }

    /// Creates the container, clearing a stale same-name container of ours
    /// and pulling a missing image when allowed. Returns the container id.
    async fn create(
        &self,
        docker: &Docker,
        plan: &ContainerPlan,
        spec: &LaunchSpec,
    ) -> Result<String, DockerLaunchError> {
        let mut name_cleared = false;
        let mut pulled = false;
        loop {
            let err = match docker
                .create_container(Some(plan.create_options()), plan.create_body())
                .await
            {
                Ok(created) => return Ok(created.id),
                Err(e) => e,
            };
            let rejected = |source| DockerLaunchError::Rejected {
                name: plan.name.clone(),
                action: EngineAction::Create,
                source,
            };
            match status_of(&err) {
                Some(409) if !name_cleared => {
                    self.clear_name(docker, plan, spec).await?;
                    name_cleared = true;
                }
                // 404 from create: the image, or something else it names
                // (a network, say). Only a missing image is ImageMissing.
                Some(404) if !pulled && !image::exists(&self.engine, &plan.image).await? => {
                    if !self.pull {
                        return Err(DockerLaunchError::ImageMissing {
                            image: plan.image.clone(),
                            role: spec.role,
                        });
                    }
                    image::pull(&self.engine, &plan.image).await?;
                    pulled = true;
                }
                _ => return Err(self.engine.map_err(err, rejected)),
            }
        }
    }

    /// Frees `plan.name` after a create conflict: nothing to do if the
    /// holder vanished, removes a stale container of this instance and
    /// user, refuses a container that is not ours.
    async fn clear_name(
        &self,
        docker: &Docker,
        plan: &ContainerPlan,
        spec: &LaunchSpec,
    ) -> Result<(), DockerLaunchError> {
        let holder = name_holder(
            &self.engine,
            &plan.name,
            &self.plan.instance_id,
            &spec.user_id,
        )
        .await?;
        match holder {
            NameHolder::Vanished => Ok(()),
            NameHolder::Stale { id } => {
                tracing::info!(container = %plan.name, "Removing stale container");
                force_remove(docker, &id).await.map_err(|source| {
                    DockerLaunchError::RemoveLeftover {
                        name: plan.name.clone(),
                        source,
                    }
                })
            }
            NameHolder::Foreign { owner } => Err(DockerLaunchError::NameConflict {
                name: plan.name.clone(),
                owner,
            }),
        }
    }

    /// Creates, attaches to and starts the container; a container created
    /// but not started is removed again. Returns its id and its streams.
    async fn create_and_start(
        &self,
        docker: &Docker,
        plan: &ContainerPlan,
        spec: &LaunchSpec,
    ) -> Result<(String, Vec<GuestOutput>), DockerLaunchError> {
        let id = self.create(docker, plan, spec).await?;
        match self.attach_and_start(docker, plan, &id).await {
            Ok(outputs) => Ok((id, outputs)),
            Err(e) => {
                if let Err(rm) = force_remove(docker, &id).await {
                    tracing::warn!(container = %plan.name, error = %rm, "Cannot remove container that failed to start");
                }
                Err(e)
            }
        }
    }

    /// Writes `spec`'s envelope to the bootstrap file the container mounts.
    fn write_bootstrap(&self, spec: &LaunchSpec) -> Result<BootstrapFile, DockerLaunchError> {
        let json = spec
            .envelope
            .to_json()
            .map_err(|source| DockerLaunchError::Envelope {
                role: spec.role,
                source,
            })?;
        let path = spec
            .workspace
            .run
            .join(format!("{}.bootstrap.json", spec.role.label()));
        BootstrapFile::write(path.clone(), &json, self.envelope_owner(spec))
            .map_err(|source| DockerLaunchError::BootstrapFile { path, source })
    }

    /// Attaches to the created container `id` and starts it.
    async fn attach_and_start(
        &self,
        docker: &Docker,
        plan: &ContainerPlan,
        id: &str,
    ) -> Result<Vec<GuestOutput>, DockerLaunchError> {
        let rejected = |action| {
            move |source| DockerLaunchError::Rejected {
                name: plan.name.clone(),
                action,
                source,
            }
        };
        let opts = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| self.engine.map_err(e, rejected(EngineAction::Attach)))?;
        // No stdin is attached; the write half is not needed.
        drop(attached.input);
        let (outputs, _pump) = attach::demux(attached.output, plan.name.clone());
        docker
            .start_container(id, None)
            .await
            .map_err(|e| self.engine.map_err(e, rejected(EngineAction::Start)))?;
        Ok(outputs)
    }

    async fn launch_docker(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        let image = self.image_for(spec.role)?.to_owned();
        // Connect first: nothing is written for an engine that is not there.
        let docker = self.engine.docker().await?.clone();
        let file = self.write_bootstrap(&spec)?;
        let mut plan = ContainerPlan::new(&self.plan, &spec, &image, file.path());
        let n = self
            .launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let launch_id = format!("{}-{n}", spec.session_id);
        plan.labels
            .insert(create::LABEL_LAUNCH.to_owned(), launch_id.clone());

        // Armed before the create request: a launch dropped from here on
        // (timed out, cancelled) still removes its container.
        let guard = LaunchGuard::new(docker.clone(), plan.name.clone(), launch_id);
        let started = self.create_and_start(&docker, &plan, &spec).await;
        let (id, outputs) = match started {
            Ok(s) => s,
            Err(e) => {
                // A failed create or start cleaned up after itself.
                guard.disarm();
                if let Err(rm) = file.remove() {
                    tracing::warn!(path = %file.path().display(), error = %rm, "Cannot remove bootstrap file");
                }
                return Err(e.into());
            }
        };
        tracing::debug!(container = %plan.name, id, "Container started");
        let (control, exit) = DockerControl::watch(docker, plan.name.clone(), id.clone(), file);
        // The watcher's own drop guard covers the container from here on.
        guard.disarm();
        Ok(LaunchedGuest {
            identity: GuestIdentity::Container {
                name: plan.name,
                id,
            },
            outputs,
            exit,
            control: Box::new(control),
        })
    }
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn tier(&self) -> SandboxTier {
        self.plan.tier.sandbox_tier()
    }

    fn stop_overrun(&self) -> std::time::Duration {
        // docker stop rounds the grace up to whole seconds, then the kill,
        // the wait and the removal each have their own bound.
        MAX_STOP_OVERRUN + std::time::Duration::from_secs(1)
    }

    fn has_sidecar(&self) -> bool {
        self.sidecar_image.is_some()
    }

    /// The host path of `ipc/shell-daemon.sock`: the runtime container sees
    /// `ipc/` at its host path (the sidecar sees it as `/ipc`).
    fn sidecar_endpoint(&self, workspace: &Workspace) -> SidecarEndpoint {
        SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: workspace.sidecar_socket().to_string_lossy().into_owned(),
        }
    }

    async fn prepare_session(
        &self,
        user: &UserId,
        _workspace: &Workspace,
    ) -> Result<(), LaunchError> {
        self.engine.ping().await?;
        let removed = remove_orphans(&self.engine, &self.plan.instance_id, user).await?;
        if removed > 0 {
            tracing::info!(user = %user, removed, "Removed leftover containers");
        }
        Ok(())
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        self.launch_docker(spec).await
    }

    async fn engine_ready(&self) -> bool {
        tokio::time::timeout(ENGINE_PING_BOUND, self.engine.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// `uid[:gid]` as numbers (gid defaults to the uid).
fn parse_ids(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DockerBackendConfig {
        DockerBackendConfig {
            tier: DockerTier::Container,
            instance_id: "i".to_owned(),
            docker: DockerSection::default(),
            docker_host_env: Some("unix:///run/x.sock".to_owned()),
            runtime_image: "rt".to_owned(),
            sidecar_image: None,
            runner_user: "1000:1000".to_owned(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn defaults_user_network_and_socket() {
        let b = DockerBackend::new(config()).unwrap();
        assert_eq!(b.socket(), Path::new("/run/x.sock"));
        assert_eq!(b.plan.user, "1000:1000");
        assert_eq!(b.plan.network, "none");
        assert_eq!(b.file_owner, None);
        assert!(!b.has_sidecar());
        assert_eq!(b.tier(), SandboxTier::Container);
        assert!(matches!(
            b.image_for(GuestRole::Sidecar),
            Err(LaunchError::NotConfigured {
                role: GuestRole::Sidecar,
                ..
            })
        ));
    }

    #[test]
    fn configured_user_owns_the_envelope_file() {
        let mut c = config();
        c.docker.user = Some("2000:3000".to_owned());
        c.tier = DockerTier::MicroVm;
        let b = DockerBackend::new(c).unwrap();
        assert_eq!(b.file_owner, Some((2000, 3000)));
        assert_eq!(b.tier(), SandboxTier::MicroVm);
        assert_eq!(parse_ids("7"), Some((7, 7)));
        assert_eq!(parse_ids("nobody"), None);
    }

    #[test]
    fn empty_instance_id_is_refused() {
        let mut c = config();
        c.instance_id = " ".to_owned();
        assert!(matches!(
            DockerBackend::new(c),
            Err(DockerLaunchError::EmptyInstanceId)
        ));
    }
}
