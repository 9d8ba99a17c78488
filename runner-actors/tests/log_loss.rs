//! A full log disk with real guests: `logs/` on a small tmpfs that the test
//! fills up. The guests keep running and writing, the loss is counted in
//! health and events, the gap is recorded beside the log, and writing
//! resumes by itself once space is freed. Runs as root (it mounts).

use runner_actors::{SessionEvent, SessionOptions};
use runner_core::config::RunnerConfig;
use runner_core::health::LOG_BYTES_DROPPED;
use runner_core::logs::read_gaps;
mod common;

use common::process_runner;
use runner_tests::process::demo;
use runner_tests::process_alive;
use runner_types::{GuestRole, GuestState, LogStream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted for the test; unmounted when dropped, also when the test
/// fails.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(path)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root: {status}");
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a guest of a failed test may still hold a file open.
        match Command::new("umount").arg("-l").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("cannot unmount {}: {other:?}", self.path.display()),
        }
    }
}

/// Fills the file system of `path`'s directory: writes until ENOSPC.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// Waits (bounded) for the next loss report of the runtime's stdout with a
/// total above `above`.
async fn runtime_stdout_loss(events: &mut broadcast::Receiver<SessionEvent>, above: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no log loss reported in time")
            .expect("event stream");
        if let SessionEvent::LogBytesDropped {
            role: GuestRole::Runtime,
            stream: LogStream::Stdout,
            total,
        } = event
            && total > above
        {
            return total;
        }
    }
}

/// Heartbeat numbers of the lines in `text` (`heartbeat n=<k>`).
fn heartbeats(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("heartbeat n="))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Polls the log file (bounded) until `done` holds for its text.
async fn wait_for_log(path: &Path, mut done: impl FnMut(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if done(&text) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "log {} never got there",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_loses_output_visibly_and_recovers() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts a tmpfs");
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mount = Tmpfs::mount(dir.path(), "1m");
    let mut config = RunnerConfig::defaults(&mount.path);
    config.shutdown.grace = Duration::from_millis(500);
    config.shutdown.log_drain = Duration::from_millis(500);
    let runner = process_runner(
        config,
        demo(&["--role", "runtime", "--heartbeat-ms", "2"]),
        Some(demo(&["--role", "sidecar", "--heartbeat-ms", "2"])),
    );
    let options = SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    };
    let session = runner.start_session_with("filler", options).await.unwrap();
    let mut events = session.events();
    let log = session
        .workspace()
        .logs
        .join(LogStream::Stdout.file_name(GuestRole::Runtime));
    wait_for_log(&log, |t| !heartbeats(t).is_empty()).await;

    // Fill the disk: the guests write on, their output is lost.
    let filler = mount.path.join("filler");
    fill(&filler);
    let first = runtime_stdout_loss(&mut events, 0).await;
    // The guest is not held back: the loss keeps growing.
    let later = runtime_stdout_loss(&mut events, first).await;
    assert!(later > first);
    let health = session.health().await.unwrap();
    let runtime = health
        .guests
        .iter()
        .find(|g| g.role == GuestRole::Runtime)
        .unwrap();
    assert_eq!(runtime.state, GuestState::Running);
    assert!(process_alive(runtime.pid.unwrap()));
    let counted = runtime.log_bytes_dropped[&LogStream::Stdout];
    assert!(counted >= later, "{health:?}");
    let reason = health
        .startup_status
        .degraded_reasons
        .iter()
        .find(|r| r.code == LOG_BYTES_DROPPED && r.detail.contains("runtime guest's stdout"))
        .unwrap_or_else(|| panic!("no log_bytes_dropped reason: {health:?}"));
    assert!(
        reason.detail.contains(&format!("{counted} bytes")),
        "{reason:?}"
    );
    let before = std::fs::read(&log).unwrap().len();

    // Free the space: writing resumes by itself, after a gap record.
    std::fs::remove_file(&filler).unwrap();
    let text = wait_for_log(&log, |t| {
        t.len() > before + 64 && read_gaps(&log).is_ok_and(|g| !g.is_empty())
    })
    .await;
    let gaps = read_gaps(&log).unwrap();
    let gap = gaps[0];
    assert!(gap.bytes > 0 && gap.unix_ms > 0, "{gaps:?}");
    assert!(gap.offset as usize <= before + 1, "{gap:?} past {before}");
    // No two lines glued: every line is one whole heartbeat or a piece of
    // one cut by the gap.
    for line in text.lines() {
        assert!(line.matches("heartbeat").count() <= 1, "glued: {line:?}");
    }
    // The heartbeats after the gap skip those that were lost.
    let (head, tail) = text.as_bytes().split_at(gap.offset as usize);
    let last_before = *heartbeats(&String::from_utf8_lossy(head)).last().unwrap();
    let first_after = heartbeats(&String::from_utf8_lossy(tail))[0];
    assert!(
        first_after > last_before + 1,
        "{last_before} -> {first_after}"
    );
    assert!(process_alive(runtime.pid.unwrap()));

    session.shutdown(WAIT).await.unwrap();
    drop(mount);
}
