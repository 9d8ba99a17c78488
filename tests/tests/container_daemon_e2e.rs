//! `runner-bin` end to end on the container tier, against a real Docker
//! engine: a daemon per user with `default_tier = "container"`, the client
//! subcommands against it, and recovery after a daemon is SIGKILLed (its
//! containers are removed by the next daemon for that user, and nobody
//! else's are touched). Skips without an engine.

use runner_core::UserId;
use runner_core::backend::docker::DockerTier;
use runner_core::backend::docker::create::{
    LABEL_INSTANCE, LABEL_ROLE, LABEL_TIER, LABEL_USER, container_name,
};
use runner_tests::docker::{
    Docker, RemoveOnDrop, connect, container_facts, containers_labelled, docker_host, guest_image,
    unique_id,
};
use runner_tests::runner_binary;
use runner_types::{BootstrapEnvelope, GuestRole, GuestState, HealthStatus, SandboxTier};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on a daemon starting, a client call, a daemon exiting.
const WAIT: Duration = Duration::from_secs(90);

/// One test's engine, images and `runner.toml`.
struct Setup {
    rt: tokio::runtime::Runtime,
    host: String,
    docker: Docker,
    dir: tempfile::TempDir,
    config: PathBuf,
    workspace_root: PathBuf,
    sidecar_image: String,
}

impl Setup {
    /// `None` when there is no engine and the test should skip.
    fn new() -> Option<Self> {
        let host = docker_host()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let docker = rt.block_on(connect(&host));
        let (runtime_image, sidecar_image) = rt.block_on(async {
            (
                guest_image(
                    &docker,
                    "demo-guest",
                    &["--role", "runtime", "--heartbeat-ms", "100"],
                )
                .await,
                guest_image(&docker, "demo-guest", &["--role", "sidecar"]).await,
            )
        });
        // Short, so the socket paths stay far below the OS limit.
        let dir = tempfile::Builder::new()
            .prefix("cd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let config = dir.path().join("runner.toml");
        let toml = format!(
            r#"config_version = "1"
workspace_root = "ws"
default_tier = "container"

[guest_images]
oxydra_vm = "{runtime_image}"
shell_vm = "{sidecar_image}"

[docker]
host = "{host}"

[shutdown]
grace_ms = 1000
log_drain_ms = 2000
"#
        );
        std::fs::write(&config, toml).expect("write runner.toml");
        Some(Self {
            workspace_root: dir.path().join("ws"),
            rt,
            host,
            docker,
            dir,
            config,
            sidecar_image,
        })
    }

    /// Starts `runner-bin --daemon` for `user` and waits for its
    /// `control_socket=` line. `DOCKER_HOST` is removed from its
    /// environment: the engine must come from `[docker] host`.
    fn start_daemon(&self, user: &str) -> Daemon {
        let stderr_path = self
            .dir
            .path()
            .join(format!("{user}.{}.stderr", unique_id("d")));
        let stderr = std::fs::File::create(&stderr_path).expect("daemon stderr file");
        let mut child = Command::new(runner_binary())
            .args(["--daemon", "--user", user, "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn runner-bin --daemon");
        let stdout = child.stdout.take().expect("daemon stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout for the daemon's whole life.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            socket: PathBuf::new(),
            stderr: stderr_path,
        };
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|e| {
            panic!(
                "daemon for {user} printed no control_socket line ({e}); stderr:\n{}",
                daemon.stderr_text()
            )
        });
        daemon.socket = PathBuf::from(
            line.strip_prefix("control_socket=")
                .unwrap_or_else(|| panic!("not a control_socket= line: {line}")),
        );
        daemon
    }

    /// Runs a client subcommand for `user` (with `--config`), bounded.
    fn client(&self, args: &[&str], user: &str) -> Output {
        let mut child = Command::new(runner_binary())
            .args(args)
            .args(["--user", user, "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runner-bin client");
        if wait_bounded(&mut child).is_none() {
            kill_and_reap(&mut child);
            panic!("runner-bin {args:?} did not exit within {WAIT:?}");
        }
        child.wait_with_output().expect("client output")
    }

    /// `status --json`, which must succeed.
    fn status(&self, user: &str) -> HealthStatus {
        let out = self.client(&["status", "--json"], user);
        assert!(out.status.success(), "status: {}", stderr_of(&out));
        serde_json::from_slice(&out.stdout).expect("status --json prints health JSON")
    }

    /// Polls `status --json` until the session is healthy (bounded).
    fn healthy(&self, user: &str) -> HealthStatus {
        let start = Instant::now();
        loop {
            let h = self.status(user);
            if h.healthy {
                return h;
            }
            assert!(start.elapsed() < WAIT, "{user} not healthy: {h:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The runtime's stdout via `logs --tail`, polled until it holds a
    /// `sidecar_connected=` line (so `envelope=` came before it).
    fn runtime_log_until_connected(&self, user: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self.client(
                &[
                    "logs", "--role", "runtime", "--stream", "stdout", "--tail", "1000",
                ],
                user,
            );
            assert!(out.status.success(), "logs: {}", stderr_of(&out));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.lines().any(|l| l.starts_with("sidecar_connected=")) {
                return text;
            }
            assert!(start.elapsed() < WAIT, "runtime never connected: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `stop`, then the daemon must exit 0 with its socket removed.
    fn stop(&self, user: &str, mut daemon: Daemon) {
        let out = self.client(&["stop"], user);
        assert!(
            out.status.success(),
            "stop: {}\ndaemon stderr:\n{}",
            stderr_of(&out),
            daemon.stderr_text()
        );
        let status = wait_bounded(&mut daemon.child)
            .unwrap_or_else(|| panic!("daemon for {user} did not exit after stop"));
        assert!(
            status.success(),
            "daemon exit {status}; stderr:\n{}",
            daemon.stderr_text()
        );
        assert!(!daemon.socket.exists(), "socket removed");
    }

    /// Creates (without starting) a container labelled like this runner
    /// instance's guests of `user`, under a name of its own.
    fn hand_made(&self, user: &str) -> String {
        let body = bollard::models::ContainerCreateBody {
            image: Some(self.sidecar_image.clone()),
            labels: Some(HashMap::from([
                (
                    LABEL_INSTANCE.to_owned(),
                    self.workspace_root.display().to_string(),
                ),
                (LABEL_USER.to_owned(), user.to_owned()),
                (LABEL_ROLE.to_owned(), "runtime".to_owned()),
                (LABEL_TIER.to_owned(), "container".to_owned()),
            ])),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptions {
            name: Some(unique_id("cd-hand")),
            ..Default::default()
        };
        self.rt
            .block_on(self.docker.create_container(Some(opts), body))
            .expect("create a hand-made container")
            .id
    }

    fn facts(&self, id: &str) -> Option<runner_tests::docker::ContainerFacts> {
        self.rt.block_on(container_facts(&self.docker, id))
    }

    fn labelled_user(&self, user: &str) -> Vec<String> {
        self.rt
            .block_on(containers_labelled(&self.docker, LABEL_USER, user))
    }

    /// The container ids health reports, runtime first; each one running,
    /// named and labelled for `user` and this runner instance.
    fn running_guests(&self, h: &HealthStatus, user: &str) -> Vec<String> {
        let user_id = UserId::new(user).unwrap();
        let instance = self.workspace_root.display().to_string();
        let mut ids = Vec::new();
        for role in [GuestRole::Runtime, GuestRole::Sidecar] {
            let g = h
                .guests
                .iter()
                .find(|g| g.role == role)
                .unwrap_or_else(|| panic!("no {role} in {h:?}"));
            assert_eq!(g.state, GuestState::Running, "{g:?}");
            let name = container_name(DockerTier::Container, &user_id, role);
            assert_eq!(g.container_name.as_deref(), Some(name.as_str()));
            let id = g.container_id.clone().expect("container id");
            let facts = self
                .facts(&id)
                .unwrap_or_else(|| panic!("{role} container {id} exists"));
            assert!(facts.running, "{role} container running");
            assert_eq!(facts.name, name);
            let label = |k: &str| facts.labels.get(k).map(String::as_str);
            assert_eq!(label(LABEL_USER), Some(user));
            assert_eq!(label(LABEL_INSTANCE), Some(instance.as_str()));
            assert_eq!(label(LABEL_ROLE), Some(role.as_str()));
            ids.push(id);
        }
        ids
    }
}

/// A daemon child process; killed and reaped if a test fails with it alive.
struct Daemon {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            kill_and_reap(&mut self.child);
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    if let Err(e) = child.kill() {
        eprintln!("cannot kill {}: {e}", child.id());
    }
    if let Err(e) = child.wait() {
        eprintln!("cannot reap {}: {e}", child.id());
    }
}

/// Waits for `child` to exit; `None` after [`WAIT`].
fn wait_bounded(child: &mut Child) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > WAIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn daemon_runs_container_guests_and_stop_removes_them() {
    let Some(s) = Setup::new() else {
        return;
    };
    let user = unique_id("cd-a");
    let _guard = RemoveOnDrop::new(&s.host, LABEL_USER, &user);
    let d = s.start_daemon(&user);
    assert_eq!(
        d.socket,
        s.workspace_root.join(&user).join("run/runner-control.sock")
    );

    let h = s.healthy(&user);
    assert_eq!(h.user_id, user);
    assert_eq!(h.sandbox_tier, SandboxTier::Container);
    assert_eq!(
        h.runtime_container_name,
        Some(format!("oxydra-container-{user}-oxydra-vm"))
    );
    let ids = s.running_guests(&h, &user);
    let tier_label = s
        .facts(&ids[0])
        .and_then(|f| f.labels.get(LABEL_TIER).cloned());
    assert_eq!(tier_label.as_deref(), Some("container"));

    // `logs --tail` shows the envelope the runtime container received.
    let log = s.runtime_log_until_connected(&user);
    let json = log
        .lines()
        .find_map(|l| l.strip_prefix("envelope="))
        .unwrap_or_else(|| panic!("no envelope= line in {log}"));
    let envelope = BootstrapEnvelope::from_json(json.as_bytes()).expect("valid envelope");
    assert_eq!(envelope.user_id, user);
    assert_eq!(envelope.sandbox_tier, SandboxTier::Container);
    // The container's --workspace-root and its envelope name the user's
    // own directory, never the global root.
    let user_dir = s.workspace_root.join(&user);
    assert_eq!(PathBuf::from(&envelope.workspace_root), user_dir);
    assert!(
        log.lines()
            .any(|l| l == format!("workspace_root_arg={}", user_dir.display())),
        "{log}"
    );
    let sidecar_socket = s.workspace_root.join(&user).join("ipc/shell-daemon.sock");
    assert_eq!(
        envelope.sidecar_endpoint.map(|e| PathBuf::from(e.address)),
        Some(sidecar_socket.clone())
    );
    assert!(
        log.lines()
            .any(|l| l == format!("sidecar_connected={}", sidecar_socket.display())),
        "{log}"
    );

    s.stop(&user, d);
    for id in &ids {
        assert_eq!(s.facts(id), None, "container {id} removed");
    }
    assert!(s.labelled_user(&user).is_empty());
}

#[test]
fn a_sigkilled_daemons_containers_are_replaced_by_the_next_daemon_only() {
    let Some(s) = Setup::new() else {
        return;
    };
    let alice = unique_id("cd-k");
    let bob = unique_id("cd-o");
    let _guards = [
        RemoveOnDrop::new(&s.host, LABEL_USER, &alice),
        RemoveOnDrop::new(&s.host, LABEL_USER, &bob),
    ];

    let mut first = s.start_daemon(&alice);
    let bob_daemon = s.start_daemon(&bob);
    let old = s.running_guests(&s.healthy(&alice), &alice);
    let bobs = s.running_guests(&s.healthy(&bob), &bob);
    // Containers with this runner instance's labels, made by hand (created,
    // never started) under names the daemons never use: alice's can only go
    // through the leftover sweep of her next daemon start, bob's must stay.
    let stray = s.hand_made(&alice);
    let direct = s.hand_made(&bob);

    // SIGKILL: no shutdown runs, so alice's containers keep running.
    kill_and_reap(&mut first.child);
    for id in &old {
        let facts = s.facts(id).expect("container outlives the killed daemon");
        assert!(facts.running, "{id} still running");
    }

    // The next daemon for alice removes them and starts fresh ones.
    let second = s.start_daemon(&alice);
    let fresh = s.running_guests(&s.healthy(&alice), &alice);
    for id in old.iter().chain([&stray]) {
        assert_eq!(s.facts(id), None, "old container {id} removed");
        assert!(!fresh.contains(id));
    }
    let mut labelled = s.labelled_user(&alice);
    labelled.sort();
    let mut want = fresh.clone();
    want.sort();
    assert_eq!(labelled, want, "only the fresh containers are alice's");
    s.runtime_log_until_connected(&alice);

    // Bob's containers, the daemon's and the hand-made one, are untouched,
    // and his session is still healthy.
    assert_eq!(s.running_guests(&s.healthy(&bob), &bob), bobs);
    assert!(
        s.facts(&direct).is_some(),
        "bob's extra container untouched"
    );

    s.stop(&alice, second);
    s.stop(&bob, bob_daemon);
    assert!(s.labelled_user(&alice).is_empty());
    assert_eq!(s.labelled_user(&bob), vec![direct.clone()]);
    for id in bobs.iter().chain(&fresh) {
        assert_eq!(s.facts(id), None, "container {id} removed");
    }
}
