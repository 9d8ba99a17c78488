//! `[readiness]` and the service-manager protocol, end to end: the daemon
//! as a real process with `NOTIFY_SOCKET` pointing at a datagram socket
//! this test binds, as systemd would.

use runner_tests::daemon::{self, KillOnDrop, daemon_command};
use runner_tests::runner_binary;
use runner_types::{GuestRole, HealthStatus};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Killed if a failed test leaves it running.
type Daemon = KillOnDrop;

/// Writes a `runner.toml` with the runtime's readiness check and starts the
/// daemon on it (demo guests), notifying `notify`; returns once it serves.
fn start(dir: &Path, user: &str, readiness: &str, notify: &Path) -> Daemon {
    std::fs::write(dir.join("runner.toml"), readiness).unwrap();
    let (child, lines) = daemon::spawn(
        daemon_command(&runner_binary(), user, dir)
            .args(["--config", "runner.toml"])
            .env("NOTIFY_SOCKET", notify)
            .stderr(Stdio::null()),
    );
    daemon::wait_serving(&lines, WAIT);
    child
}

/// Notifications until one contains `wanted` (bounded by the socket's read
/// timeout); returns all of them, that one last.
fn until(sock: &UnixDatagram, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {wanted:?} notification; got {seen:?}: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.contains(wanted);
        seen.push(msg);
        if done {
            return seen;
        }
    }
}

fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    (sock, path)
}

fn health(dir: &Path, user: &str) -> HealthStatus {
    let out = Command::new(runner_binary())
        .args([
            "status",
            "--user",
            user,
            "--config",
            "runner.toml",
            "--json",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runtime_ready(h: &HealthStatus) -> Option<bool> {
    h.guests
        .iter()
        .find(|g| g.role == GuestRole::Runtime)
        .and_then(|g| g.ready)
}

fn sigterm_and_wait(d: &mut Daemon) {
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_bounded(WAIT);
    assert!(status.success(), "{status}");
}

#[test]
fn ready_comes_only_after_the_file_check_passes_and_stopping_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (sock, notify) = notify_socket(tmp.path());
    let config = "[readiness.runtime]\nfile = \"ipc/ready-flag\"\ntimeout_ms = 600000\n";
    let mut d = start(tmp.path(), "rita", config, &notify);

    // The daemon serves and reports the runtime running but not ready:
    // nothing it sent so far says READY.
    let before = until(&sock, "runtime running, not ready");
    assert!(before.iter().all(|m| !m.contains("READY=1")), "{before:?}");
    assert_eq!(runtime_ready(&health(tmp.path(), "rita")), Some(false));

    std::fs::write(tmp.path().join("workspaces/rita/ipc/ready-flag"), "").unwrap();
    let after = until(&sock, "READY=1");
    let ready = after.last().unwrap();
    assert!(ready.contains("runtime running, ready"), "{ready:?}");
    assert_eq!(runtime_ready(&health(tmp.path(), "rita")), Some(true));

    sigterm_and_wait(&mut d);
    let stopping = until(&sock, "STOPPING=1");
    assert!(
        stopping.iter().all(|m| !m.contains("READY=1")),
        "{stopping:?}"
    );
}

#[test]
fn a_check_that_misses_its_timeout_is_degraded_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let (sock, notify) = notify_socket(tmp.path());
    let config = "[readiness.runtime]\nfile = \"ipc/never\"\ntimeout_ms = 200\n";
    let mut d = start(tmp.path(), "nora", config, &notify);

    // Settled by the timeout: READY=1 comes, saying why it is degraded.
    let seen = until(&sock, "READY=1");
    assert!(seen.last().unwrap().contains("not_ready"), "{seen:?}");
    let h = health(tmp.path(), "nora");
    assert_eq!(runtime_ready(&h), Some(false));
    let codes: Vec<_> = h
        .startup_status
        .degraded_reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect();
    assert!(codes.contains(&"not_ready"), "{codes:?}");
    assert!(!h.shutdown, "{h:?}");

    sigterm_and_wait(&mut d);
    until(&sock, "STOPPING=1");
}
