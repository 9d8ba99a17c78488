//! Container sessions through the whole actor tree on a real Docker engine:
//! both guests start and talk over the sidecar socket with the envelope the
//! runner built, a memory limit OOM-kills the runtime until the restart
//! policy fails the session, and a guest that ignores SIGTERM is still
//! stopped and removed within the shutdown deadline. Skips without an engine.

mod common;

use common::{guest_of, health_until};
use runner_actors::{Backends, Runner, SessionEvent, SessionHandle, SessionOptions};
use runner_core::UserId;
use runner_core::backend::SandboxBackend;
use runner_core::backend::docker::create::{LABEL_INSTANCE, LABEL_USER, container_name};
use runner_core::backend::docker::{DockerBackend, DockerBackendConfig, DockerTier};
use runner_core::bootstrap::{EnvelopeParams, build_envelope};
use runner_core::config::{RunnerConfig, UserConfig};
use runner_core::failure::FailureReason;
use runner_core::health::SessionPhase;
use runner_tests::docker::harness::Harness;
use runner_tests::docker::{container_facts, containers_labelled, guest_image, unique_id};
use runner_types::config::RestartPolicy;
use runner_types::{
    BootstrapEnvelope, ExitStatus, GuestRole, GuestState, LogStream, ResourceLimits, SandboxTier,
    SidecarTransport,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Bound on anything a container session does in a test.
const WAIT: Duration = Duration::from_secs(90);

/// One test's engine, runner instance id and workspace root: the shared
/// Docker harness (every container carrying the instance label is removed
/// when it is dropped), with this file's runner wiring.
struct Engine(Harness);

impl std::ops::Deref for Engine {
    type Target = Harness;

    fn deref(&self) -> &Harness {
        &self.0
    }
}

impl Engine {
    /// `None` when there is no engine and the test should skip.
    async fn new() -> Option<Self> {
        Harness::new().await.map(Self)
    }

    async fn image(&self, binary: &str, args: &[&str]) -> String {
        guest_image(&self.docker, binary, args).await
    }

    /// Container tier by default, quick shutdown timings.
    fn config(&self, runtime_image: &str, sidecar_image: &str) -> RunnerConfig {
        let mut c = RunnerConfig::defaults(self.dir.path());
        c.default_tier = SandboxTier::Container;
        c.guest_images.oxydra_vm = runtime_image.to_owned();
        c.guest_images.shell_vm = sidecar_image.to_owned();
        c.docker.host = Some(self.host.clone());
        c.shutdown.grace = Duration::from_secs(1);
        c.shutdown.log_drain = Duration::from_secs(2);
        c
    }

    /// A runner with a Docker backend for `config`, as runner-bin wires it
    /// (guests run as our own uid:gid).
    fn runner(&self, config: RunnerConfig) -> (Runner, Arc<DockerBackend>) {
        let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
        let backend = Arc::new(
            DockerBackend::new(DockerBackendConfig::from_runner_config(
                &config,
                DockerTier::Container,
                self.instance.clone(),
                None,
                user,
            ))
            .expect("valid docker backend config"),
        );
        let backends = Backends::new().with(backend.clone());
        (Runner::new(config, backends), backend)
    }

    /// The session's guest containers that still exist.
    async fn containers_of(&self, user: &UserId) -> Vec<String> {
        let mut ids = containers_labelled(&self.docker, LABEL_USER, user.as_str()).await;
        // Another test's runner may use the same user label only with
        // another instance, and user ids are unique anyway; keep ours.
        let mut ours = Vec::new();
        for id in ids.drain(..) {
            if let Some(f) = container_facts(&self.docker, &id).await
                && f.labels.get(LABEL_INSTANCE) == Some(&self.instance)
            {
                ours.push(id);
            }
        }
        ours
    }
}

fn no_socket() -> SessionOptions {
    SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    }
}

fn log_path(session: &SessionHandle, role: GuestRole) -> PathBuf {
    session
        .workspace()
        .logs
        .join(LogStream::Stdout.file_name(role))
}

/// Complete lines of a log file so far (a trailing partial line is left out).
fn complete_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The first complete line of `path` starting with `prefix`, without it.
async fn line_in(path: &Path, prefix: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(rest) = complete_lines(path)
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
        {
            return rest.to_owned();
        }
        assert!(
            start.elapsed() < WAIT,
            "no {prefix:?} line in {} within {WAIT:?}; got {:?}",
            path.display(),
            complete_lines(path)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Events received so far, without waiting.
fn drain(rx: &mut broadcast::Receiver<SessionEvent>) -> Vec<SessionEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return out,
        }
    }
}

/// Shuts down within the session's own bound (plus a margin for the call
/// itself) and returns the report.
async fn shutdown(session: &SessionHandle) -> runner_actors::ShutdownReport {
    let deadline = session.shutdown_bound();
    tokio::time::timeout(
        deadline + Duration::from_secs(5),
        session.shutdown(deadline),
    )
    .await
    .expect("shutdown returned within its deadline")
    .expect("shutdown")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_guests_start_talk_and_are_removed_on_shutdown() {
    let Some(e) = Engine::new().await else {
        return;
    };
    let runtime_image = e
        .image(
            "demo-guest",
            &["--role", "runtime", "--heartbeat-ms", "100"],
        )
        .await;
    let sidecar_image = e.image("demo-guest", &["--role", "sidecar"]).await;
    let config = e.config(&runtime_image, &sidecar_image);
    let (runner, backend) = e.runner(config.clone());
    let user = UserId::new(unique_id("cs-up")).unwrap();
    let session = runner
        .start_session_with(user.as_str(), no_socket())
        .await
        .expect("session starts");
    let ws = session.workspace().clone();

    // The runtime received exactly the envelope the runner builds, and
    // reached the sidecar at the host path of ipc/ (the sidecar listens on
    // /ipc/shell-daemon.sock inside its own container).
    let runtime_log = log_path(&session, GuestRole::Runtime);
    let received =
        BootstrapEnvelope::from_json(line_in(&runtime_log, "envelope=").await.as_bytes())
            .expect("valid envelope JSON");
    let expected = build_envelope(EnvelopeParams {
        user: &user,
        tier: SandboxTier::Container,
        role: GuestRole::Runtime,
        workspace: &ws,
        user_config: &config.user(&user),
        sidecar_endpoint: Some(backend.sidecar_endpoint(&ws)),
        sidecar_running: true,
        degraded_reasons: Vec::new(),
    });
    assert_eq!(received, expected);
    assert_eq!(received.user_id, user.as_str());
    assert_eq!(received.sandbox_tier, SandboxTier::Container);
    let endpoint = received.sidecar_endpoint.clone().expect("sidecar endpoint");
    assert_eq!(endpoint.transport, SidecarTransport::Unix);
    assert_eq!(Path::new(&endpoint.address), ws.sidecar_socket());
    assert_eq!(
        line_in(&runtime_log, "sidecar_connected=").await,
        endpoint.address
    );
    let sidecar_log = log_path(&session, GuestRole::Sidecar);
    assert_eq!(
        line_in(&sidecar_log, "sidecar_listening=").await,
        "/ipc/shell-daemon.sock"
    );
    let sidecar_env =
        BootstrapEnvelope::from_json(line_in(&sidecar_log, "envelope=").await.as_bytes())
            .expect("valid sidecar envelope");
    assert_eq!(sidecar_env.sidecar_endpoint, None);
    assert_eq!(sidecar_env.sandbox_tier, SandboxTier::Container);

    // Health names both containers, and the engine agrees they run.
    let h = health_until(&session, WAIT, "both guests running", |h| h.healthy).await;
    assert_eq!(h.sandbox_tier, SandboxTier::Container);
    assert_eq!(
        h.runtime_container_name.as_deref(),
        Some(format!("oxydra-container-{user}-oxydra-vm").as_str())
    );
    let mut ids = Vec::new();
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        let g = guest_of(&h, role);
        assert_eq!(g.state, GuestState::Running);
        assert_eq!(g.pid, None);
        let name = container_name(DockerTier::Container, &user, role);
        assert_eq!(g.container_name.as_deref(), Some(name.as_str()));
        let id = g.container_id.clone().expect("container id");
        let facts = container_facts(&e.docker, &id)
            .await
            .unwrap_or_else(|| panic!("{role} container {id} exists"));
        assert!(facts.running, "{role} container is running");
        assert_eq!(facts.name, name);
        assert_eq!(
            facts.labels.get(LABEL_USER).map(String::as_str),
            Some(user.as_str())
        );
        ids.push(id);
    }
    assert_eq!(e.containers_of(&user).await.len(), 2);

    // Ordered, bounded shutdown: SIGTERM reaches both guests (they exit 0
    // and say so in the drained logs), and both containers are removed.
    let report = shutdown(&session).await;
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        let g = report
            .guests
            .iter()
            .find(|g| g.role == role)
            .expect("guest in report");
        assert_eq!(g.state, GuestState::Stopped, "{g:?}");
        assert_eq!(
            g.last_exit.map(|x| x.status),
            Some(ExitStatus::Code(0)),
            "{g:?}"
        );
    }
    assert_eq!(session.phase(), SessionPhase::Stopped);
    for id in &ids {
        assert_eq!(
            container_facts(&e.docker, id).await,
            None,
            "container {id} removed"
        );
    }
    assert!(e.containers_of(&user).await.is_empty());
    assert!(complete_lines(&runtime_log).iter().any(|l| l == "shutdown"));
    assert!(complete_lines(&sidecar_log).iter().any(|l| l == "shutdown"));
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        let boot = ws.run.join(format!("{}.bootstrap.json", role.label()));
        assert!(!boot.exists(), "{} removed", boot.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_oom_kills_the_runtime_until_the_session_fails() {
    let Some(e) = Engine::new().await else {
        return;
    };
    // `probe-guest oom 500` allocates 1 MiB at a time, printing
    // allocated_mib=<n>, after half a second: the engine notices an OOM
    // kill only once it watches the running container.
    let runtime_image = e.image("probe-guest", &["oom", "500"]).await;
    let sidecar_image = e.image("demo-guest", &["--role", "sidecar"]).await;
    let mut config = e.config(&runtime_image, &sidecar_image);
    let user = UserId::new(unique_id("cs-oom")).unwrap();
    config.users.insert(
        user.clone(),
        UserConfig {
            resources: ResourceLimits {
                max_memory_mib: Some(32),
                ..ResourceLimits::default()
            },
            shell_enabled: true,
            ..UserConfig::default()
        },
    );
    config.restart.policy = RestartPolicy::OnFailure;
    config.restart.max_restarts = 2;
    config.restart.window = Duration::from_secs(600);
    config.restart.backoff_initial = Duration::from_millis(50);
    config.restart.backoff_max = Duration::from_millis(100);
    let (runner, _backend) = e.runner(config);
    let session = runner
        .start_session_with(user.as_str(), no_socket())
        .await
        .expect("session starts");
    let mut events = session.events();

    let h = health_until(&session, WAIT, "the session failed", |h| {
        matches!(session.phase(), SessionPhase::Failed { .. })
            && guest_of(h, GuestRole::Runtime).state == GuestState::Failed
    })
    .await;
    assert!(!h.healthy);
    let rt = guest_of(&h, GuestRole::Runtime);
    assert_eq!(rt.restarts, 2, "{rt:?}");
    let last = rt.last_exit.expect("last exit");
    assert!(last.oom_killed, "{last:?}");
    assert_eq!(last.status, ExitStatus::Code(137), "{last:?}");
    // The sidecar, under the same limit but small, is unaffected.
    assert_eq!(guest_of(&h, GuestRole::Sidecar).state, GuestState::Running);

    // The first exit may have come before we subscribed; every exit seen
    // was an OOM kill, and the failure was announced.
    let seen = drain(&mut events);
    let exits: Vec<_> = seen
        .iter()
        .filter_map(|ev| match ev {
            SessionEvent::GuestExited {
                role: GuestRole::Runtime,
                exit,
            } => Some(*exit),
            _ => None,
        })
        .collect();
    assert!(exits.len() >= 2, "{seen:?}");
    assert!(exits.iter().all(|x| x.oom_killed), "{exits:?}");
    assert!(
        seen.iter().any(|ev| matches!(
            ev,
            SessionEvent::SessionFailed {
                reason: FailureReason::RestartLimit {
                    role: GuestRole::Runtime,
                    ..
                }
            }
        )),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|ev| matches!(
            ev,
            SessionEvent::GuestRestarting {
                role: GuestRole::Runtime,
                attempt: 2,
                ..
            }
        )),
        "{seen:?}"
    );

    let runtime_log = log_path(&session, GuestRole::Runtime);
    shutdown(&session).await;
    // Every run appended to the same file (drained by the shutdown): three
    // runs, each stopped by the limit well before twice the limit.
    let lines = complete_lines(&runtime_log);
    let runs = lines.iter().filter(|l| *l == "allocated_mib=1").count();
    assert_eq!(runs, 3, "{lines:?}");
    let most = lines
        .iter()
        .filter_map(|l| l.strip_prefix("allocated_mib="))
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .expect("allocations printed");
    assert!(most < 64, "allocated {most} MiB under a 32 MiB limit");
    assert!(e.containers_of(&user).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_ignoring_sigterm_is_killed_within_the_deadline_and_removed() {
    let Some(e) = Engine::new().await else {
        return;
    };
    let runtime_image = e
        .image(
            "demo-guest",
            &[
                "--role",
                "runtime",
                "--ignore-sigterm",
                "--heartbeat-ms",
                "100",
            ],
        )
        .await;
    let sidecar_image = e.image("demo-guest", &["--role", "sidecar"]).await;
    let (runner, _backend) = e.runner(e.config(&runtime_image, &sidecar_image));
    let user = UserId::new(unique_id("cs-term")).unwrap();
    let session = runner
        .start_session_with(user.as_str(), no_socket())
        .await
        .expect("session starts");
    let runtime_log = log_path(&session, GuestRole::Runtime);
    // Its SIGTERM handler is installed before the envelope is printed.
    line_in(&runtime_log, "envelope=").await;
    let h = session.health().await.unwrap();
    let runtime_id = guest_of(&h, GuestRole::Runtime)
        .container_id
        .clone()
        .expect("runtime container id");

    let report = shutdown(&session).await;
    let rt = report
        .guests
        .iter()
        .find(|g| g.role == GuestRole::Runtime)
        .expect("runtime in report");
    assert_eq!(rt.state, GuestState::Stopped, "{rt:?}");
    // SIGTERM was ignored, so only the kill after the grace period ended it.
    assert_eq!(
        rt.last_exit.map(|x| x.status),
        Some(ExitStatus::Code(137)),
        "{rt:?}"
    );
    assert!(
        complete_lines(&runtime_log)
            .iter()
            .any(|l| l == "sigterm ignored"),
        "the guest saw SIGTERM"
    );
    assert_eq!(container_facts(&e.docker, &runtime_id).await, None);
    assert!(e.containers_of(&user).await.is_empty());
}
