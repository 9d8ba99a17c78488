//! Snapshot of the table for a fixed health report.

use super::*;
use runner_types::{
    DegradedReason, ExitStatus, GuestExit, GuestRole, GuestState, SandboxTier, StartupStatus,
};

const NOW: u64 = 1_700_000_000_000;

fn guest(role: GuestRole, state: GuestState) -> GuestStatus {
    let mut g = GuestStatus::starting(role);
    g.state = state;
    g
}

fn health() -> HealthStatus {
    let mut sidecar = guest(GuestRole::Sidecar, GuestState::Running);
    sidecar.pid = Some(4241);
    sidecar.started_at_unix_ms = Some(NOW - 3_725_000);
    sidecar.ready = Some(true);
    let mut runtime = guest(GuestRole::Runtime, GuestState::BackingOff);
    runtime.container_name = Some("oxydra-alice-runtime".into());
    runtime.restarts = 2;
    runtime.ready = Some(false);
    runtime.last_exit = Some(GuestExit {
        status: ExitStatus::Signal(9),
        at_unix_ms: NOW - 1_000,
        oom_killed: true,
        engine_lost: false,
    });
    HealthStatus {
        user_id: "alice".into(),
        healthy: false,
        sandbox_tier: SandboxTier::Container,
        startup_status: StartupStatus {
            sandbox_tier: SandboxTier::Container,
            sidecar_available: true,
            shell_available: true,
            browser_available: false,
            degraded_reasons: vec![DegradedReason {
                code: "log_bytes_dropped".into(),
                detail: "512 bytes of the runtime guest's stdout were not logged".into(),
            }],
        },
        shell_available: true,
        browser_available: false,
        shutdown: false,
        message: Some("runtime is waiting to restart".into()),
        log_dir: Some("/ws/alice/logs".into()),
        runtime_pid: None,
        runtime_container_name: Some("oxydra-alice-runtime".into()),
        guests: vec![sidecar, runtime],
    }
}

#[test]
fn table_snapshot() {
    let logs = [
        LogSize {
            name: "oxydra-vm.stdout.log".into(),
            bytes: 12_897_484,
            files: 2,
        },
        LogSize {
            name: "shell-vm.stderr.log".into(),
            bytes: 812,
            files: 1,
        },
    ];
    let expected = "\
user alice: UNHEALTHY (container tier)
  runtime is waiting to restart
ROLE     STATE        PID/CONTAINER         UPTIME  RESTARTS  LAST EXIT       READY
sidecar  running      pid 4241              1h02m   0         -               yes
runtime  backing_off  oxydra-alice-runtime  -       2         signal 9 (oom)  no
degraded:
  log_bytes_dropped: 512 bytes of the runtime guest's stdout were not logged
logs in /ws/alice/logs:
  oxydra-vm.stdout.log  12.3 MiB in 2 files
  shell-vm.stderr.log   812 B
";
    assert_eq!(render(&health(), &logs, NOW), expected);
}

#[test]
fn healthy_session_without_extras() {
    let mut h = health();
    h.healthy = true;
    h.message = None;
    h.log_dir = None;
    h.startup_status.degraded_reasons.clear();
    h.guests.truncate(1);
    h.guests[0].ready = None;
    let expected = "\
user alice: healthy (container tier)
ROLE     STATE    PID/CONTAINER  UPTIME  RESTARTS  LAST EXIT  READY
sidecar  running  pid 4241       1h02m   0         -          -
";
    assert_eq!(render(&h, &[], NOW), expected);
}

#[test]
fn durations_and_sizes() {
    assert_eq!(duration(45), "45s");
    assert_eq!(duration(725), "12m05s");
    assert_eq!(duration(3 * 3600 + 240), "3h04m");
    assert_eq!(duration(2 * 86_400 + 3 * 3600), "2d03h");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(4096), "4.0 KiB");
    assert_eq!(bytes(3 * 1024 * 1024 * 1024 + 512 * 1024 * 1024), "3.5 GiB");
}

#[test]
fn log_sizes_group_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, len: usize| std::fs::write(dir.path().join(name), vec![b'x'; len]);
    write("oxydra-vm.stdout.log", 10).unwrap();
    write("oxydra-vm.stdout.log.1", 100).unwrap();
    write("oxydra-vm.stdout.log.2", 1000).unwrap();
    write("shell-vm.stderr.log", 5).unwrap();
    write("oxydra-vm.stdout.log.idx", 7).unwrap();
    write("oxydra-vm.stdout.log.gaps", 7).unwrap();
    assert_eq!(
        log_sizes(dir.path()),
        vec![
            LogSize {
                name: "oxydra-vm.stdout.log".into(),
                bytes: 1110,
                files: 3
            },
            LogSize {
                name: "shell-vm.stderr.log".into(),
                bytes: 5,
                files: 1
            },
        ]
    );
}
