//! `runner-bin --daemon` with its `logs/` on a file system that stops
//! answering: an ext4 image mounted over `logs/` and frozen with
//! `fsfreeze` while the guests write, so every log write blocks for good.
//! SIGTERM must still end the session within grace + drain + the fixed
//! bounds, and the daemon must say which log writes did not finish and
//! exit non-zero. Runs as root (it mounts).
//!
//! A thread blocked on a frozen file system sleeps uninterruptibly, so the
//! kernel only lets the process go once the file system thaws: the test
//! checks that the daemon has finished its shutdown and printed its last
//! line within the bound, then thaws and checks the exit code.

use runner_core::UserId;
use runner_tests::daemon::{self, daemon_command};
use runner_tests::mount::{FreezableMount, MountPoint};
use runner_tests::process::provision_like_daemon;
use runner_tests::runner_binary;
use std::process::Child;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const GRACE_MS: u64 = 500;
const DRAIN_MS: u64 = 500;
/// The daemon's fixed bounds after grace and drain: the writers' stop
/// grace (0.5 s), the runtime's shutdown bound (2 s), plus slack for a
/// loaded machine.
const FIXED_BOUND: Duration = Duration::from_secs(6);

/// Kills the daemon if the test fails before it exits.
/// Killed (not reaped: a reap would block while the disk is frozen) if a
/// failed test leaves it running.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
    }
}

#[test]
fn sigterm_ends_the_daemon_even_when_log_writes_hang() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts");
    let tmp = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let root = tmp.path().join("workspaces");
    let user = UserId::new("frozen").unwrap();
    let config = runner_core::config::RunnerConfig::defaults(tmp.path());
    assert_eq!(config.workspace_root, root);
    let ws = provision_like_daemon(tmp.path(), &user);
    let mount = FreezableMount::mount(
        &tmp.path().join("logs.img"),
        &ws.logs,
        32,
        MountPoint::Existing,
    );

    let bin = runner_binary();
    let cfg = tmp.path().join("runner.toml");
    let guest = |role: &str| {
        format!(
            "{{ program = \"{}\", args = [\"demo-guest\", \"--role\", \"{role}\", \"--heartbeat-ms\", \"5\"] }}",
            bin.display()
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "workspace_root = \"{}\"\n[shutdown]\ngrace_ms = {GRACE_MS}\nlog_drain_ms = {DRAIN_MS}\n[process]\nruntime = {}\nsidecar = {}\n",
            root.display(),
            guest("runtime"),
            guest("sidecar")
        ),
    )
    .unwrap();
    let mut child = daemon_command(&bin, "frozen", tmp.path())
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let stdout = daemon::lines_of(child.stdout.take().unwrap());
    let stderr = daemon::lines_of(child.stderr.take().unwrap());
    let mut daemon = Daemon(child);
    daemon::wait_serving(&stdout, WAIT);

    // Output reaches the log; then the disk stops answering.
    let log = ws.logs.join("oxydra-vm.stdout.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("heartbeat")) {
        assert!(start.elapsed() < WAIT, "no heartbeat in {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    mount.freeze();

    daemon::signal(&daemon.0, nix::sys::signal::Signal::SIGTERM);
    let stopping = Instant::now();
    let bound = Duration::from_millis(GRACE_MS + DRAIN_MS) + FIXED_BOUND;
    let last = loop {
        let left = bound.saturating_sub(stopping.elapsed());
        match stderr.recv_timeout(left) {
            Ok(line) if line.starts_with("error:") => break line,
            Ok(_) => {}
            Err(e) => panic!("no final error line within {bound:?} of SIGTERM: {e}"),
        }
    };
    assert!(last.contains("log writes to"), "{last}");
    assert!(last.contains("did not finish"), "{last}");
    assert!(last.contains(&ws.logs.display().to_string()), "{last}");

    // Once the disk thaws, the blocked writer threads return and the
    // process is gone, non-zero.
    mount.thaw();
    let status = daemon::wait_bounded(&mut daemon.0, WAIT);
    assert_eq!(status.code(), Some(1), "{status}");
    drop(mount);
}
