//! The Docker backend harness: a unique runner instance id (every
//! container it makes is removed when it is dropped), backends, workspaces
//! and launch specs, and output capture.

use super::{RemoveOnDrop, connect, docker_host, guest_image, unique_id};
use crate::envelope::{envelope_for, launch_spec, user_config};
use bollard::Docker;
use runner_core::UserId;
use runner_core::backend::docker::create::LABEL_INSTANCE;
use runner_core::backend::docker::{DockerBackend, DockerBackendConfig, DockerTier};
use runner_core::backend::{GuestOutput, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::workspace::{MountOverrides, Workspace};
use runner_types::config::DockerSection;
use runner_types::{GuestRole, LogStream, ResourceLimits};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::timeout;

/// Bound on anything a container does in a test (start, print, exit).
pub const BOUND: Duration = Duration::from_secs(60);

/// One test's view of the engine.
pub struct Harness {
    /// `unix://...`
    pub host: String,
    /// A client of our own, for inspecting.
    pub docker: Docker,
    /// This test's runner instance id.
    pub instance: String,
    /// Holds workspaces.
    pub dir: tempfile::TempDir,
    _guard: RemoveOnDrop,
}

impl Harness {
    /// `None` when there is no engine and the test should skip.
    pub async fn new() -> Option<Self> {
        let host = docker_host()?;
        let docker = connect(&host).await;
        let instance = unique_id("inst");
        Some(Self {
            _guard: RemoveOnDrop::new(&host, LABEL_INSTANCE, &instance),
            host,
            docker,
            instance,
            // Short, so socket paths below it stay far under the OS limit.
            dir: tempfile::Builder::new()
                .prefix("h")
                .tempdir_in("/tmp")
                .expect("tempdir"),
        })
    }

    /// The demo guest image (`/demo-guest <args>`).
    pub async fn demo_image(&self, args: &[&str]) -> String {
        guest_image(&self.docker, "demo-guest", args).await
    }

    /// The probe guest image.
    pub async fn probe_image(&self) -> String {
        guest_image(&self.docker, "probe-guest", &[]).await
    }

    /// A backend config for this harness's instance and engine.
    pub fn config(&self, tier: DockerTier, runtime_image: &str) -> DockerBackendConfig {
        DockerBackendConfig {
            tier,
            instance_id: self.instance.clone(),
            docker: DockerSection::default(),
            docker_host_env: Some(self.host.clone()),
            runtime_image: runtime_image.to_owned(),
            sidecar_image: None,
            runner_user: runner_user(),
            env: BTreeMap::new(),
        }
    }

    /// A backend from `config`.
    pub fn backend(&self, config: DockerBackendConfig) -> DockerBackend {
        DockerBackend::new(config).expect("valid backend config")
    }

    /// A fresh user and its provisioned workspace under this harness.
    pub fn user(&self, prefix: &str) -> (UserId, Workspace) {
        let user = UserId::new(unique_id(prefix)).expect("valid user id");
        let ws = Workspace::provision(
            &self.dir.path().join("ws"),
            &user,
            &MountOverrides::default(),
        )
        .expect("workspace");
        (user, ws)
    }
}

/// The runner's own `uid:gid`.
pub fn runner_user() -> String {
    format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid())
}

/// A launch spec for `role`, with the envelope the runner would build.
pub fn spec(
    backend: &DockerBackend,
    role: GuestRole,
    user: &UserId,
    ws: &Workspace,
    resources: ResourceLimits,
) -> LaunchSpec {
    let config = user_config(resources.clone(), &[]);
    let envelope = envelope_for(backend, user, ws, role, &config);
    LaunchSpec {
        session_id: unique_id("sess"),
        extra_env: BTreeMap::from([("EXTRA_FROM_TEST".to_owned(), "1".to_owned())]),
        ..launch_spec(role, user, ws, envelope, resources)
    }
}

/// Launches `role` from [`spec`] with default resource limits.
pub async fn launch(
    backend: &DockerBackend,
    role: GuestRole,
    user: &UserId,
    ws: &Workspace,
) -> Result<LaunchedGuest, LaunchError> {
    backend
        .launch(spec(backend, role, user, ws, ResourceLimits::default()))
        .await
}

/// Everything one output stream delivered so far, and whether it ended.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Bytes in order.
    pub bytes: Vec<u8>,
    /// EOF reached.
    pub eof: bool,
}

/// A stream being drained in the background (so the guest never blocks on
/// it), observable while it fills.
pub struct Capture {
    /// Which stream.
    pub stream: LogStream,
    rx: watch::Receiver<Seen>,
}

impl Capture {
    /// Drains `output` from now on.
    pub fn start(output: GuestOutput) -> Self {
        let (tx, rx) = watch::channel(Seen::default());
        let stream = output.stream;
        let mut reader = output.reader;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => tx.send_modify(|s| s.bytes.extend_from_slice(&buf[..n])),
                }
            }
            tx.send_modify(|s| s.eof = true);
        });
        Self { stream, rx }
    }

    /// Captures of all outputs, in order.
    pub fn all(outputs: Vec<GuestOutput>) -> Vec<Self> {
        outputs.into_iter().map(Self::start).collect()
    }

    /// The first complete line starting with `prefix` (without the prefix).
    ///
    /// # Panics
    ///
    /// If no such line arrives within [`BOUND`] or before EOF.
    pub async fn line(&mut self, prefix: &str) -> String {
        let find = |s: &Seen| {
            // Until EOF, the part after the last newline may be incomplete.
            let end = if s.eof {
                s.bytes.len()
            } else {
                s.bytes
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
            };
            s.bytes[..end]
                .split(|&b| b == b'\n')
                .find_map(|l| l.strip_prefix(prefix.as_bytes()))
                .map(|rest| String::from_utf8_lossy(rest).into_owned())
        };
        let seen = timeout(BOUND, self.rx.wait_for(|s| find(s).is_some() || s.eof))
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} line on {} within {BOUND:?}", self.stream))
            .expect("capture task alive")
            .clone();
        find(&seen).unwrap_or_else(|| {
            panic!(
                "{} ended without a {prefix:?} line; got {:?}",
                self.stream,
                String::from_utf8_lossy(&seen.bytes)
            )
        })
    }

    /// All bytes, once the stream has ended.
    ///
    /// # Panics
    ///
    /// If it does not end within [`BOUND`].
    pub async fn until_eof(&mut self) -> Vec<u8> {
        timeout(BOUND, self.rx.wait_for(|s| s.eof))
            .await
            .unwrap_or_else(|_| panic!("{} did not end within {BOUND:?}", self.stream))
            .expect("capture task alive")
            .bytes
            .clone()
    }
}

/// `key=value` lines of a probe's output, as a map.
pub fn key_values(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
