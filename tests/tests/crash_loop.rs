//! Crash loop: `runner-bin --daemon` is SIGKILLed at random moments of its
//! start, its steady state and its graceful stop, on every tier. After each
//! kill the next daemon for the same user must serve, no guest of the killed
//! daemon may still be alive (checked by pid, container id or VM pid), and
//! the logs the killed daemon had written must be intact on disk. After the
//! final (graceful) stop nothing of the user's is left: no process,
//! container, VM, socket or per-launch file.
//!
//! Rounds: 30 on the process tier, 10 each on the container and micro_vm
//! tiers; `RUNNER_CRASH_LOOP_ROUNDS=N` raises every tier to at least N for
//! longer runs. Each run prints its random seed; `RUNNER_CRASH_LOOP_SEED`
//! replays one.

use runner_core::backend::docker::create::LABEL_USER;
use runner_core::lock::{LOCK_NAME, SessionLock};
use runner_tests::daemon::{self, KillOnDrop, daemon_command};
use runner_tests::docker::{connect, containers_labelled, docker_host, guest_image, unique_id};
use runner_tests::{
    firecracker_binary, jailer_binary, kvm_or_skip, pids_with_arg, process_alive, runner_binary,
    test_kernel,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on one daemon start (container images are local; VMs boot in ms).
const SERVE_WAIT: Duration = Duration::from_secs(60);
/// Bound on a graceful stop or a reap.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// A small xorshift generator: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("RUNNER_CRASH_LOOP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash loop seed {seed} (replay with RUNNER_CRASH_LOOP_SEED={seed})");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn millis(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis() as u64 + 1))
    }
}

fn rounds(default: usize) -> usize {
    std::env::var("RUNNER_CRASH_LOOP_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, |n: usize| n.max(default))
}

/// Where the kill lands.
#[derive(Debug, Clone, Copy)]
enum Moment {
    Start,
    Steady,
    Stop,
}

/// What is particular to a tier.
enum Tier {
    Process,
    Container {
        docker: runner_tests::docker::Docker,
    },
    MicroVm,
}

/// One tier's crash loop: a config, a user, a workspace.
struct Loop {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    user: String,
    tier: Tier,
    /// How long a start may take: kills during start land within it.
    start_window: Duration,
}

struct Daemon {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    /// Everything the daemon wrote on stderr, for failure messages.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Loop {
    fn new(tier: Tier, tier_toml: &str, start_window: Duration) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cl")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        let config = root.join("runner.toml");
        let text = format!(
            "workspace_root = \"ws\"\n{tier_toml}\n[logs]\nmax_file_bytes = 1073741824\n[shutdown]\ngrace_ms = 1000\nlog_drain_ms = 500\n"
        );
        std::fs::write(&config, text).unwrap();
        Self {
            _dir: dir,
            root,
            config,
            user: unique_id("cl"),
            tier,
            start_window,
        }
    }

    fn user_dir(&self) -> PathBuf {
        self.root.join("ws").join(&self.user)
    }

    fn spawn(&self) -> Daemon {
        let (mut child, lines) = daemon::spawn(
            daemon_command(&runner_binary(), &self.user, &self.root)
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "warn"),
        );
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err_pipe = child.0.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            lines,
            stderr,
        }
    }

    /// Waits until `d` prints its control socket (it serves).
    fn wait_serving(&self, d: &mut Daemon) {
        match d.lines.recv_timeout(SERVE_WAIT) {
            Ok(line) => assert!(line.starts_with("control_socket="), "{line}"),
            Err(e) => {
                let status = d.child.0.try_wait().unwrap();
                let stderr = d.stderr.lock().unwrap().join("\n");
                panic!(
                    "daemon for {} did not serve ({e}); exit: {status:?}; stderr:\n{stderr}",
                    self.user
                )
            }
        }
    }

    fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
        d.child.signal(sig);
    }

    fn wait_exit(d: &mut Daemon) -> std::process::ExitStatus {
        d.child.wait_bounded(EXIT_WAIT)
    }

    /// Every guest of this user that exists right now.
    async fn guests(&self, daemon_pid: Option<u32>) -> Vec<String> {
        match &self.tier {
            Tier::Process => pids_with_arg(&self.user)
                .into_iter()
                .filter(|p| Some(*p) != daemon_pid)
                .map(|p| format!("pid {p}"))
                .collect(),
            Tier::Container { docker } => containers_labelled(docker, LABEL_USER, &self.user)
                .await
                .into_iter()
                .map(|id| format!("container {id}"))
                .collect(),
            Tier::MicroVm => vm_pids(&self.user_dir())
                .into_iter()
                .map(|p| format!("vm {p}"))
                .collect(),
        }
    }

    /// Whether one guest named by [`Self::guests`] still exists.
    async fn exists(&self, guest: &str) -> bool {
        let (kind, id) = guest.split_once(' ').unwrap();
        match (kind, &self.tier) {
            ("container", Tier::Container { docker }) => {
                docker.inspect_container(id, None).await.is_ok()
            }
            _ => process_alive(id.parse().unwrap()),
        }
    }

    /// The current log files and their bytes.
    fn logs(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let dir = self.user_dir().join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return BTreeMap::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    /// Kills a daemon at `moment`; returns what it left: its guests and logs.
    async fn kill_at(
        &self,
        rng: &mut Rng,
        moment: Moment,
        current: Option<Daemon>,
    ) -> (Vec<String>, BTreeMap<PathBuf, Vec<u8>>) {
        let mut d = match (moment, current) {
            (Moment::Start, Some(mut serving)) => {
                Self::signal(&serving, nix::sys::signal::Signal::SIGTERM);
                assert!(Self::wait_exit(&mut serving).success());
                self.spawn()
            }
            (Moment::Start, None) => self.spawn(),
            (_, Some(serving)) => serving,
            (_, None) => {
                let mut d = self.spawn();
                self.wait_serving(&mut d);
                d
            }
        };
        match moment {
            Moment::Start => std::thread::sleep(rng.millis(self.start_window)),
            Moment::Steady => std::thread::sleep(rng.millis(Duration::from_millis(300))),
            Moment::Stop => {
                Self::signal(&d, nix::sys::signal::Signal::SIGTERM);
                std::thread::sleep(rng.millis(Duration::from_millis(400)));
            }
        }
        let pid = d.child.0.id();
        Self::signal(&d, nix::sys::signal::Signal::SIGKILL);
        Self::wait_exit(&mut d);
        (self.guests(Some(pid)).await, self.logs())
    }

    async fn run(self, rounds: usize) {
        let mut rng = Rng::new();
        let mut current: Option<Daemon> = None;
        for round in 0..rounds {
            let moment = [Moment::Start, Moment::Steady, Moment::Stop][rng.below(3) as usize];
            let (left, logs) = self.kill_at(&mut rng, moment, current.take()).await;
            // The next start serves ...
            let mut next = self.spawn();
            self.wait_serving(&mut next);
            // ... with no guest of the killed daemon alive ...
            for guest in &left {
                assert!(
                    !self.exists(guest).await,
                    "round {round} ({moment:?}): {guest} of the killed daemon survived the next start"
                );
            }
            // ... and the killed daemon's logs intact.
            let now = self.logs();
            for (path, before) in &logs {
                let after = now.get(path).map_or(&[][..], Vec::as_slice);
                assert!(
                    after.starts_with(before),
                    "round {round} ({moment:?}): {} lost bytes ({} before, {} now)",
                    path.display(),
                    before.len(),
                    after.len()
                );
            }
            current = Some(next);
        }
        let mut last = current.expect("a serving daemon");
        let last_pid = last.child.0.id();
        Self::signal(&last, nix::sys::signal::Signal::SIGTERM);
        assert!(Self::wait_exit(&mut last).success(), "final stop failed");
        self.nothing_left(last_pid).await;
    }

    /// Nothing of the daemon `last_pid`'s session is left but its unheld
    /// lock file, which names it.
    async fn nothing_left(&self, last_pid: u32) {
        let guests = self.guests(None).await;
        assert!(guests.is_empty(), "left after the final stop: {guests:?}");
        let user_dir = self.user_dir();
        for gone in [
            "run/runner-control.sock",
            "ipc/runner-control.sock",
            "ipc/shell-daemon.sock",
        ] {
            assert!(
                std::fs::symlink_metadata(user_dir.join(gone)).is_err(),
                "{gone} left after the final stop"
            );
        }
        // The lock file stays for the next session, unheld, naming its
        // last holder.
        assert!(!SessionLock::is_held(&user_dir.join("run")));
        assert_eq!(
            std::fs::read_to_string(user_dir.join("run").join(LOCK_NAME)).unwrap(),
            last_pid.to_string()
        );
        let run: Vec<String> = std::fs::read_dir(user_dir.join("run"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != LOCK_NAME && !is_empty_dir(&user_dir.join("run").join(name)))
            .collect();
        assert!(run.is_empty(), "per-launch files left in run/: {run:?}");
    }
}

/// A directory holding nothing but (recursively) empty directories: the
/// jailer's directory tree is left, its contents are not.
fn is_empty_dir(path: &Path) -> bool {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    is_dir
        && std::fs::read_dir(path)
            .is_ok_and(|d| d.filter_map(Result::ok).all(|e| is_empty_dir(&e.path())))
}

/// Firecracker processes (jailed or not) working for the user whose
/// directory is `user_dir`: their root (jailed: a chroot below `run/`) or
/// their command line names the directory.
fn vm_pids(user_dir: &Path) -> Vec<u32> {
    let dir = user_dir.to_string_lossy().into_owned();
    runner_tests::pids_where(|pid| {
        let firecracker = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "firecracker");
        let root = std::fs::read_link(format!("/proc/{pid}/root"))
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        firecracker
            && (root.starts_with(&dir) || String::from_utf8_lossy(&cmdline).contains(&dir))
            && process_alive(pid)
    })
}

fn demo_guests_toml() -> String {
    let bin = runner_binary();
    let bin = bin.display();
    format!(
        "[process]\nruntime = {{ program = \"{bin}\", args = [\"demo-guest\", \"--heartbeat-ms\", \"50\"] }}\nsidecar = {{ program = \"{bin}\", args = [\"demo-guest\", \"--role\", \"sidecar\", \"--heartbeat-ms\", \"50\"] }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tier_survives_sigkill_at_any_moment() {
    let l = Loop::new(
        Tier::Process,
        &demo_guests_toml(),
        Duration::from_millis(150),
    );
    l.run(rounds(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_tier_survives_sigkill_at_any_moment() {
    let Some(host) = docker_host() else {
        return;
    };
    let docker = connect(&host).await;
    let runtime = guest_image(&docker, "demo-guest", &["--heartbeat-ms", "50"]).await;
    let sidecar = guest_image(&docker, "demo-guest", &["--role", "sidecar"]).await;
    let toml = format!(
        "default_tier = \"container\"\n[guest_images]\noxydra_vm = \"{runtime}\"\nshell_vm = \"{sidecar}\"\n[docker]\nhost = \"{host}\"\n"
    );
    let l = Loop::new(
        Tier::Container { docker },
        &toml,
        Duration::from_millis(1500),
    );
    l.run(rounds(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_vm_tier_survives_sigkill_at_any_moment() {
    if !kvm_or_skip("micro_vm_tier_survives_sigkill_at_any_moment") {
        return;
    }
    let templates = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["rt", "sc"] {
        let path = templates.path().join(format!("{name}.json"));
        let json = serde_json::json!({
            "boot-source": {
                "kernel_image_path": test_kernel(),
                "boot_args": "console=ttyS0 testkernel.mode=hang",
            },
            "drives": [],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 32 },
        });
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        paths.push(path);
    }
    // As root the documented setup: jailed VMs under the user's uid.
    let jailer = if nix::unistd::geteuid().is_root() {
        format!("jailer = \"{}\"\n", jailer_binary().display())
    } else {
        String::new()
    };
    let toml = format!(
        "default_tier = \"micro_vm\"\n[guest_images]\nfirecracker_oxydra_vm_config = \"{}\"\nfirecracker_shell_vm_config = \"{}\"\n[firecracker]\nbinary = \"{}\"\n{jailer}",
        paths[0].display(),
        paths[1].display(),
        firecracker_binary().display()
    );
    let l = Loop::new(Tier::MicroVm, &toml, Duration::from_millis(400));
    l.run(rounds(10)).await;
}
