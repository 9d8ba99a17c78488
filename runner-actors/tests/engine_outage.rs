//! A container session survives its Docker engine restarting (a package
//! upgrade, `systemctl restart docker`): the guests' exits are recognised as
//! the engine's doing, the session reports `engine_unreachable` without
//! burning its restart budget, and relaunches both guests once the engine
//! answers again. A `docker kill` from outside, by contrast, is a guest
//! failure under the restart policy.
//!
//! The test restarts an engine, so it runs its own private one (through
//! `.ci/dockerd.sh` with its own directory), never the shared test engine.
//! It needs root and Debian's docker.io, as the shared engine does; it skips
//! (or, under CI, fails) when the shared engine is not there either.

mod common;

use common::{degraded, health_until};
use runner_actors::{Backends, Runner, SessionEvent, SessionOptions};
use runner_core::backend::docker::create::LABEL_INSTANCE;
use runner_core::backend::docker::{DockerBackend, DockerBackendConfig, DockerTier};
use runner_core::config::RunnerConfig;
use runner_tests::docker::{Docker, connect, docker_host, guest_image, repo_root, unique_id};
use runner_types::{GuestRole, GuestState, HealthStatus, SandboxTier};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Bound on each step; the issue asks for guests back within 60 s.
const WAIT: Duration = Duration::from_secs(60);

/// A private engine under its own directory; stopped when dropped.
struct PrivateEngine {
    dir: PathBuf,
    host: String,
}

impl PrivateEngine {
    fn script(&self, verb: &str) -> std::process::Output {
        Command::new("bash")
            .arg(repo_root().join(".ci/dockerd.sh"))
            .arg(verb)
            .env("RUNNER_DOCKER_DIR", &self.dir)
            .output()
            .expect("run .ci/dockerd.sh")
    }

    fn start(dir: PathBuf) -> Self {
        let mut e = Self {
            dir,
            host: String::new(),
        };
        let out = e.script("start");
        assert!(
            out.status.success(),
            "private engine did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        e.host = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .expect("DOCKER_HOST= line")
            .to_owned();
        e
    }

    fn restart(&self) {
        let out = self.script("stop");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.script("start");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        let out = self.script("stop");
        if !out.status.success() {
            eprintln!(
                "stopping the private engine failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

fn running_ids(h: &HealthStatus) -> Option<Vec<String>> {
    let ids: Vec<String> = h
        .guests
        .iter()
        .filter(|g| g.state == GuestState::Running)
        .filter_map(|g| g.container_id.clone())
        .collect();
    (h.healthy && ids.len() == 2).then_some(ids)
}

fn restarts(h: &HealthStatus, role: GuestRole) -> u32 {
    h.guests
        .iter()
        .find(|g| g.role == role)
        .map_or(0, |g| g.restarts)
}

fn runner(host: &str, dir: &std::path::Path, runtime: &str, sidecar: &str) -> Runner {
    let mut c = RunnerConfig::defaults(dir);
    c.default_tier = SandboxTier::Container;
    c.guest_images.oxydra_vm = runtime.to_owned();
    c.guest_images.shell_vm = sidecar.to_owned();
    c.docker.host = Some(host.to_owned());
    c.shutdown.grace = Duration::from_secs(1);
    // A small budget: two engine-caused exits would exhaust it if counted.
    c.restart.max_restarts = 1;
    c.restart.window = Duration::from_secs(600);
    let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
    let backend = DockerBackend::new(DockerBackendConfig::from_runner_config(
        &c,
        DockerTier::Container,
        unique_id("eng"),
        None,
        user,
    ))
    .expect("docker backend");
    Runner::new(c, Backends::new().with(Arc::new(backend)))
}

async fn kill(docker: &Docker, id: &str) {
    docker
        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .expect("docker kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_relaunches_guests_without_burning_restarts() {
    if docker_host().is_none() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("eo")
        .tempdir_in("/tmp")
        .unwrap();
    let engine = PrivateEngine::start(PathBuf::from(format!("/tmp/{}", unique_id("rde"))));
    let docker = connect(&engine.host).await;
    let runtime = guest_image(
        &docker,
        "demo-guest",
        &["--role", "runtime", "--heartbeat-ms", "200"],
    )
    .await;
    let sidecar = guest_image(&docker, "demo-guest", &["--role", "sidecar"]).await;
    let runner = runner(&engine.host, dir.path(), &runtime, &sidecar);
    let user = unique_id("eo");
    let session = runner
        .start_session_with(
            &user,
            SessionOptions {
                serve_control: false,
                ..SessionOptions::default()
            },
        )
        .await
        .expect("session starts");
    let mut events = session.events();
    let before = health_until(&session, WAIT, "both guests running", |h| {
        running_ids(h).is_some()
    })
    .await;
    let old_ids = running_ids(&before).unwrap();

    engine.restart();
    let after = health_until(
        &session,
        WAIT,
        "both guests relaunched on the restarted engine",
        |h| running_ids(h).is_some_and(|ids| ids.iter().all(|id| !old_ids.contains(id))),
    )
    .await;
    assert!(after.healthy, "{after:?}");
    assert!(
        !degraded(&after, "engine_unreachable"),
        "still degraded after recovery: {after:?}"
    );
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        assert_eq!(
            restarts(&after, role),
            0,
            "the engine's restart counted as a guest failure"
        );
    }
    let mut seen_degraded = false;
    let mut seen_recovered = false;
    while let Ok(e) = events.try_recv() {
        match e {
            SessionEvent::Degraded { reason, .. } if reason.code == "engine_unreachable" => {
                seen_degraded = true
            }
            SessionEvent::Recovered { code, .. } if code == "engine_unreachable" => {
                seen_recovered = true
            }
            _ => {}
        }
    }
    assert!(
        seen_degraded && seen_recovered,
        "no degraded/recovered events"
    );

    // A kill from outside is the guest's failure: counted, and restarted.
    let runtime_id = after
        .guests
        .iter()
        .find(|g| g.role == GuestRole::Runtime)
        .and_then(|g| g.container_id.clone())
        .unwrap();
    kill(&docker, &runtime_id).await;
    let killed = health_until(&session, WAIT, "the killed runtime restarted", |h| {
        restarts(h, GuestRole::Runtime) == 1 && running_ids(h).is_some()
    })
    .await;
    assert!(killed.healthy, "{killed:?}");

    let report = session
        .shutdown(session.shutdown_bound())
        .await
        .expect("shutdown");
    assert!(
        report.guests.iter().all(|g| g.state == GuestState::Stopped),
        "{report:?}"
    );
    let left = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(std::collections::HashMap::from([(
                "label".to_owned(),
                vec![format!("{LABEL_INSTANCE}")],
            )])),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(left.is_empty(), "containers left: {left:?}");
}
