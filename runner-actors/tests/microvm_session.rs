//! micro_vm sessions through the whole actor tree on a real Firecracker:
//! the envelope on the console, exits driving the restart policy, and a
//! bounded stop of a VM that never exits.

mod common;

use common::{degraded, guest_of};
use runner_actors::{Backends, Runner, SessionEvent, SessionOptions};
use runner_core::backend::firecracker::{
    FIRECRACKER_WITHOUT_JAILER, FirecrackerBackend, FirecrackerBackendConfig,
};
use runner_core::config::RunnerConfig;
use runner_core::failure::FailureReason;
use runner_tests::{firecracker_binary, kvm_or_skip, process_alive, test_kernel};
use runner_types::config::RestartPolicy;
use runner_types::{ExitStatus, GuestRole, GuestState, LogStream, SandboxTier};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn template(dir: &Path, name: &str, mode: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let json = serde_json::json!({
        "boot-source": {
            "kernel_image_path": test_kernel(),
            "boot_args": format!("console=ttyS0 testkernel.mode={mode}"),
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}

fn config(dir: &Path, runtime_mode: &str, sidecar_mode: &str) -> RunnerConfig {
    let mut c = RunnerConfig::defaults(dir);
    c.default_tier = SandboxTier::MicroVm;
    c.guest_images.firecracker_oxydra_vm_config = Some(template(dir, "rt.json", runtime_mode));
    c.guest_images.firecracker_shell_vm_config = Some(template(dir, "sc.json", sidecar_mode));
    c.firecracker.binary = Some(firecracker_binary().display().to_string());
    // Sessions do not assign guest uids yet in this suite, which a jailed
    // VM needs: run unjailed, which health must report.
    c.firecracker.jailer = Some(dir.join("no-jailer").display().to_string());
    c.firecracker.allow_without_jailer = true;
    c.shutdown.grace = Duration::from_millis(300);
    c.shutdown.log_drain = Duration::from_millis(500);
    c
}

fn runner(config: RunnerConfig) -> Runner {
    let fc = FirecrackerBackend::new(FirecrackerBackendConfig::from_runner_config(&config, None));
    Runner::new(config, Backends::new().with(Arc::new(fc)))
}

fn no_socket() -> SessionOptions {
    SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    }
}

async fn console_line(path: &Path, prefix: &str) -> String {
    let start = Instant::now();
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        // Only complete lines: the console may be mid-line.
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(&[][..], |i| &bytes[..i]);
        let text = String::from_utf8_lossy(complete).into_owned();
        if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
            return l.to_owned();
        }
        assert!(start.elapsed() < WAIT, "no {prefix} on {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The envelope `role`'s VM printed on its console (from its command line).
async fn console_envelope(
    session: &runner_actors::SessionHandle,
    role: GuestRole,
) -> runner_types::BootstrapEnvelope {
    let log = session
        .workspace()
        .logs
        .join(LogStream::Stdout.file_name(role));
    let line = console_line(&log, "cmdline=").await;
    runner_types::reader::parse_cmdline(&line["cmdline=".len()..])
        .unwrap()
        .expect("an envelope on the command line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vm_gets_its_envelope_and_hanging_vms_stop_in_bounds() {
    if !kvm_or_skip("each_vm_gets_its_envelope_and_hanging_vms_stop_in_bounds") {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let cfg = config(dir.path(), "hang", "hang");
    let session = runner(cfg.clone())
        .start_session_with("vm1", no_socket())
        .await
        .unwrap();
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        let env = console_envelope(&session, role).await;
        assert_eq!(env.user_id, "vm1");
        assert_eq!(env.sandbox_tier, SandboxTier::MicroVm);
        // The user's own directory, never the global root.
        assert_eq!(
            std::path::Path::new(&env.workspace_root),
            session.workspace().user_root
        );
        assert_eq!(env.sidecar_endpoint.is_some(), role == GuestRole::Runtime);
    }
    let health = session.health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    // The runtime VM's bridge to the sidecar is up, so the shell is claimed.
    let bridge = session.workspace().run.join("oxydra-vm-vsock.sock_1024");
    assert!(bridge.exists(), "no vsock bridge socket");
    assert!(health.shell_available && health.startup_status.sidecar_available);
    // Root without a jailer (allowed in this suite) is reported.
    assert!(degraded(&health, FIRECRACKER_WITHOUT_JAILER), "{health:?}");
    let pids: Vec<u32> = health.guests.iter().filter_map(|g| g.pid).collect();
    assert_eq!(pids.len(), 2);
    assert_eq!(
        health.runtime_pid,
        guest_of(&health, GuestRole::Runtime).pid
    );

    let deadline = 2 * (cfg.shutdown.grace + Duration::from_secs(6))
        + cfg.shutdown.log_drain
        + Duration::from_secs(5);
    let report = session.shutdown(deadline).await.expect("bounded shutdown");
    assert!(report.guests.iter().all(|g| g.state == GuestState::Stopped));
    for pid in pids {
        assert!(!process_alive(pid), "firecracker {pid} survived");
    }
    assert!(
        !session
            .workspace()
            .run
            .join("oxydra-vm-firecracker.sock")
            .exists()
    );
    assert!(!bridge.exists(), "the bridge outlived the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shell_is_claimed_once_the_runtime_vm_and_its_bridge_are_gone() {
    if !kvm_or_skip("no_shell_is_claimed_once_the_runtime_vm_and_its_bridge_are_gone") {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut cfg = config(dir.path(), "exit", "hang");
    cfg.restart.policy = RestartPolicy::Never;
    let rn = runner(cfg);
    let session = rn.start_session_with("vm3", no_socket()).await.unwrap();
    let bridge = session.workspace().run.join("oxydra-vm-vsock.sock_1024");
    let mut events = session.events();
    // The runtime VM resets right after boot. Its exit event comes first,
    // the health update right after it.
    tokio::time::timeout(WAIT, async {
        loop {
            if let SessionEvent::GuestExited {
                role: GuestRole::Runtime,
                ..
            } = events.recv().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .expect("the runtime VM did not exit");
    let start = Instant::now();
    while session
        .health()
        .await
        .unwrap()
        .guests
        .iter()
        .any(|g| g.role == GuestRole::Runtime && g.state == GuestState::Running)
    {
        assert!(start.elapsed() < WAIT, "health never showed the exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = session.health().await.unwrap();
    let sidecar = health
        .guests
        .iter()
        .find(|g| g.role == GuestRole::Sidecar)
        .unwrap();
    assert_eq!(sidecar.state, GuestState::Running, "{health:?}");
    assert!(
        !health.shell_available
            && !health.startup_status.shell_available
            && !health.startup_status.sidecar_available,
        "shell claimed without a bridge: {health:?}"
    );
    assert!(!bridge.exists(), "the bridge outlived the runtime VM");
    session.shutdown(WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_resets_drive_the_restart_policy_until_the_session_fails() {
    if !kvm_or_skip("vm_resets_drive_the_restart_policy_until_the_session_fails") {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut cfg = config(dir.path(), "exit", "hang");
    cfg.restart.policy = RestartPolicy::Always;
    cfg.restart.max_restarts = 2;
    cfg.restart.backoff_initial = Duration::from_millis(10);
    cfg.restart.backoff_max = Duration::from_millis(20);
    let session = runner(cfg)
        .start_session_with("vm2", no_socket())
        .await
        .unwrap();
    let mut events = session.events();
    let mut exits = 0;
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                SessionEvent::GuestExited {
                    role: GuestRole::Runtime,
                    exit,
                } => {
                    assert_eq!(exit.status, ExitStatus::Code(0));
                    exits += 1;
                }
                SessionEvent::SessionFailed { reason } => return reason,
                _ => {}
            }
        }
    })
    .await
    .expect("the session did not fail");
    assert!(
        matches!(
            failed,
            FailureReason::RestartLimit {
                role: GuestRole::Runtime,
                ..
            }
        ),
        "{failed:?}"
    );
    // The first exit may happen before we subscribed; at least the two
    // restarted runs were seen.
    assert!(exits >= 2, "{exits} exits seen");
    let h = session.health().await.unwrap();
    let rt = guest_of(&h, GuestRole::Runtime);
    assert_eq!(rt.restarts, 2);
    assert_eq!(rt.state, GuestState::Failed);
    // Shutdown drains the pumps, so the last run's output is in the file.
    session.shutdown(Duration::from_secs(30)).await.unwrap();
    // Every run's console output is in the same file.
    let console =
        std::fs::read_to_string(session.workspace().logs.join("oxydra-vm.stdout.log")).unwrap();
    assert_eq!(console.matches("TESTKERNEL exit").count(), 3, "{console}");
}

/// The documented setup: a root runner, the pinned jailer, and guest uids
/// from the session's identity. Both VMs boot jailed under the user's own
/// non-root uid, nothing is reported degraded for the jailer, and a stop
/// leaves no VM behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jailed_session_runs_its_vms_under_the_users_uid() {
    if !kvm_or_skip("a_jailed_session_runs_its_vms_under_the_users_uid") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the jailer needs root");
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut cfg = config(dir.path(), "hang", "hang");
    cfg.firecracker.jailer = Some(runner_tests::jailer_binary().display().to_string());
    cfg.firecracker.allow_without_jailer = false;
    let session = runner(cfg.clone())
        .start_session_with("vmjail", no_socket())
        .await
        .unwrap();
    for role in [GuestRole::Runtime, GuestRole::Sidecar] {
        assert_eq!(console_envelope(&session, role).await.user_id, "vmjail");
    }
    let health = session.health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    assert!(!degraded(&health, FIRECRACKER_WITHOUT_JAILER), "{health:?}");
    let pids: Vec<u32> = health.guests.iter().filter_map(|g| g.pid).collect();
    assert_eq!(pids.len(), 2);
    let owner = std::fs::metadata(&session.workspace().shared).unwrap();
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.iter().all(|&u| u != 0),
            "firecracker {pid} has uid 0: {uids:?}"
        );
        // The VMM starts clean, as process-tier guests do.
        assert!(status.lines().any(|l| l == "Umask:\t0077"), "{status}");
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
        assert!(
            uids.iter()
                .all(|&u| u == std::os::unix::fs::MetadataExt::uid(&owner)),
            "firecracker {pid} does not run as the user's guest uid: {uids:?}"
        );
    }
    let report = session
        .shutdown(session.shutdown_bound())
        .await
        .expect("bounded shutdown");
    assert!(report.guests.iter().all(|g| g.state == GuestState::Stopped));
    for pid in pids {
        assert!(!process_alive(pid), "jailed firecracker {pid} survived");
    }
}
