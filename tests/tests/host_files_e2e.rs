//! `runner-bin --daemon` against a workspace a neighbour tampered with: it
//! refuses promptly with a clear error and leaves every target alone.
//!
//! Runs as root (as CI does); plants things as uid 61001 with `setpriv`.

use runner_core::{UserId, Workspace};
use runner_tests::daemon::{self, daemon_command};
use runner_tests::process::provision_like_daemon;
use runner_tests::runner_binary;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

const NEIGHBOUR: u32 = 61001;
const WAIT: Duration = Duration::from_secs(20);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests plant files as other uids and must run as root"
    );
}

fn as_neighbour(script: &str) {
    let ok = runner_tests::sh_as_uid(NEIGHBOUR, script);
    assert!(ok, "planting as the neighbour failed: {script}");
}

/// Starts the daemon for `alice` on built-in defaults in `dir` and waits
/// (bounded) for it to exit; it must not start.
fn daemon_refuses(dir: &Path) -> String {
    let mut child = daemon_command(&runner_binary(), "alice", dir)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > WAIT {
            child.kill().unwrap();
            panic!("daemon did not refuse in time (blocked?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the daemon started");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Victim {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Victim {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let bytes = format!("victim {name}\n").into_bytes();
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Self { path, bytes }
    }

    fn assert_untouched(&self) {
        assert_eq!(fs::read(&self.path).unwrap(), self.bytes);
        assert_eq!(fs::metadata(&self.path).unwrap().mode() & 0o7777, 0o644);
    }
}

/// `<tmp>/workspaces` mode 1777 and a root-owned `<tmp>/victim`.
fn shared_host() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let ws = tmp.path().join("workspaces");
    fs::create_dir(&ws).unwrap();
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    (tmp, ws, victim)
}

#[test]
fn a_symlinked_user_dir_is_refused() {
    require_root();
    let (tmp, ws, victim) = shared_host();
    let file = Victim::new(&victim, "data");
    as_neighbour(&format!(
        "ln -s {} {}/alice",
        victim.display(),
        ws.display()
    ));
    let err = daemon_refuses(tmp.path());
    assert!(err.contains("symbolic link"), "{err}");
    file.assert_untouched();
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1);
}

#[test]
fn a_premade_user_dir_with_symlinked_lock_and_logs_is_refused() {
    require_root();
    let (tmp, ws, victim) = shared_host();
    let lock = Victim::new(&victim, "lock");
    let log = Victim::new(&victim, "log");
    let idx = Victim::new(&victim, "idx");
    as_neighbour(&format!(
        "set -e; umask 077; a={a}; mkdir -p $a/run $a/logs; \
         ln -s {lock} $a/run/session.lock; \
         ln -s {log} $a/logs/oxydra-vm.stdout.log; \
         ln -s {idx} $a/logs/oxydra-vm.stdout.log.idx",
        a = ws.join("alice").display(),
        lock = lock.path.display(),
        log = log.path.display(),
        idx = idx.path.display()
    ));
    let err = daemon_refuses(tmp.path());
    assert!(err.contains(&format!("owned by {NEIGHBOUR}:")), "{err}");
    for v in [&lock, &log, &idx] {
        v.assert_untouched();
    }
}

/// How a daemon started over a planted FIFO ended.
enum FifoOutcome {
    /// It refused to start; its stderr.
    Refused(String),
    /// It started, and SIGTERM then ended it (exit status).
    StoppedBySigterm(std::process::ExitStatus),
}

/// Starts the daemon for `alice` in `dir`: either it refuses promptly, or
/// it serves and then SIGTERM must end it within the bound. Either way it
/// is gone when this returns.
fn daemon_over_fifo(dir: &Path) -> FifoOutcome {
    let mut child = daemon_command(&runner_binary(), "alice", dir)
        .spawn()
        .unwrap();
    let rx = daemon::lines_of(child.stdout.take().unwrap());
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success(), "exited 0 without serving");
            return FifoOutcome::Refused(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if rx
            .recv_timeout(Duration::from_millis(20))
            .is_ok_and(|l| l.starts_with("control_socket="))
        {
            break;
        }
        if start.elapsed() > WAIT {
            child.kill().unwrap();
            panic!("daemon neither refused nor served in time (blocked?)");
        }
    }
    daemon::signal(&child, nix::sys::signal::Signal::SIGTERM);
    let stopping = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return FifoOutcome::StoppedBySigterm(status);
        }
        if stopping.elapsed() > WAIT {
            child.kill().unwrap();
            panic!("SIGTERM did not end the daemon in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn workspace_with_fifo(root: &Path, name: &str) -> (Workspace, PathBuf) {
    let user = UserId::new("alice").unwrap();
    let ws = provision_like_daemon(root, &user);
    let fifo = ws.logs.join(name);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    (ws, fifo)
}

#[test]
fn a_fifo_where_a_log_belongs_is_a_prompt_error() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (ws, fifo) = workspace_with_fifo(tmp.path(), "oxydra-vm.stdout.log");
    match daemon_over_fifo(tmp.path()) {
        FifoOutcome::Refused(err) => {
            assert!(err.contains("FIFO"), "{err}");
            assert!(err.contains(&fifo.display().to_string()), "{err}");
        }
        FifoOutcome::StoppedBySigterm(status) => {
            panic!("started over a FIFO log (then stopped: {status})")
        }
    }
    // The session lock was released again.
    assert!(!runner_core::lock::SessionLock::is_held(&ws.run));
}

#[test]
fn a_fifo_where_a_rotated_log_goes_does_not_keep_sigterm_from_ending_the_daemon() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    // Only rotation touches `.1`, and it renames over it (never opens it):
    // the daemon starts, and SIGTERM ends it as usual.
    let (ws, _fifo) = workspace_with_fifo(tmp.path(), "oxydra-vm.stdout.log.1");
    match daemon_over_fifo(tmp.path()) {
        FifoOutcome::StoppedBySigterm(status) => assert!(status.success(), "{status}"),
        FifoOutcome::Refused(err) => panic!("refused: {err}"),
    }
    assert!(!runner_core::lock::SessionLock::is_held(&ws.run));
    assert!(!ws.run.join("runner-control.sock").exists());
}
