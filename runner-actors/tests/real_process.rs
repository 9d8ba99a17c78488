//! A whole session with real demo-guest processes: a stubborn runtime that
//! ignores SIGTERM and leaves a grandchild holding its stdout.

use runner_actors::SessionOptions;
use runner_core::config::RunnerConfig;
mod common;

use common::process_runner;
use runner_tests::process::demo;
use runner_tests::process_alive;
use runner_types::{GuestRole, GuestState, LogStream};
use std::time::{Duration, Instant};

async fn wait_for_line(path: &std::path::Path, prefix: &str) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return line.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {prefix} in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stubborn_guest_tree_is_gone_after_a_bounded_shutdown() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut config = RunnerConfig::defaults(dir.path());
    config.shutdown.grace = Duration::from_millis(300);
    config.shutdown.log_drain = Duration::from_millis(300);
    let runner = process_runner(
        config.clone(),
        demo(&[
            "--role",
            "runtime",
            "--ignore-sigterm",
            "--spawn-grandchild",
            "--heartbeat-ms",
            "50",
        ]),
        Some(demo(&["--role", "sidecar", "--heartbeat-ms", "50"])),
    );
    let options = SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    };
    let session = runner
        .start_session_with("stubborn", options)
        .await
        .unwrap();
    let logs = session.workspace().logs.clone();
    let runtime_log = logs.join(LogStream::Stdout.file_name(GuestRole::Runtime));
    let grandchild: u32 = wait_for_line(&runtime_log, "grandchild_pid=").await
        ["grandchild_pid=".len()..]
        .parse()
        .unwrap();
    wait_for_line(&runtime_log, "sidecar_connected=").await;
    let health = session.health().await.unwrap();
    let pids: Vec<u32> = health.guests.iter().filter_map(|g| g.pid).collect();
    assert_eq!(pids.len(), 2);
    assert!(process_alive(grandchild));

    let deadline = 2 * (config.shutdown.grace + Duration::from_secs(3))
        + config.shutdown.log_drain
        + Duration::from_secs(5);
    let report = session.shutdown(deadline).await.expect("bounded shutdown");
    assert!(
        report.guests.iter().all(|g| g.state == GuestState::Stopped),
        "{:?}",
        report.guests
    );
    let runtime = report
        .guests
        .iter()
        .find(|g| g.role == GuestRole::Runtime)
        .unwrap();
    assert_eq!(
        runtime.last_exit.unwrap().status,
        runner_types::ExitStatus::Signal(9)
    );
    for pid in pids.into_iter().chain([grandchild]) {
        assert!(!process_alive(pid), "process {pid} of the session survived");
    }
    let text = String::from_utf8_lossy(&std::fs::read(&runtime_log).unwrap()).into_owned();
    assert!(text.contains("sigterm ignored"), "{text}");
}

/// Pids of the processes whose command line mentions `dir` (a session's
/// guests are started with `--workspace-root <user dir>`).
fn processes_mentioning(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_socket_that_cannot_be_bound_fails_the_start_and_leaves_no_guest() {
    // The socket is bound while the guests launch: its failure comes after
    // both are running, and the failed start must stop them.
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut config = RunnerConfig::defaults(dir.path());
    config.shutdown.grace = Duration::from_millis(500);
    let runner = process_runner(
        config,
        demo(&["--role", "runtime"]),
        Some(demo(&["--role", "sidecar"])),
    );
    let first = runner.start_session("blocked").await.unwrap();
    let workspace = first.workspace().clone();
    first.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(processes_mentioning(&workspace.user_root).is_empty());

    // A regular file where the socket goes: refused, never replaced.
    std::fs::write(workspace.control_socket(), b"not a socket").unwrap();
    let err = runner.start_session("blocked").await.unwrap_err();
    assert!(
        matches!(err, runner_actors::SessionError::ControlSocketPath { .. }),
        "{err:?}"
    );
    let left = processes_mentioning(&workspace.user_root);
    assert!(
        left.is_empty(),
        "guests of the failed start still run: {left:?}"
    );
    assert_eq!(
        std::fs::read(workspace.control_socket()).unwrap(),
        b"not a socket"
    );
    let link = workspace
        .ipc
        .join(runner_core::workspace::CONTROL_SOCKET_NAME);
    assert!(std::fs::symlink_metadata(&link).is_err(), "ipc link left");

    // Nothing of the failed start holds the user: the next one starts.
    std::fs::remove_file(workspace.control_socket()).unwrap();
    let again = runner.start_session("blocked").await.unwrap();
    assert!(again.workspace().control_socket().exists());
    again.shutdown(Duration::from_secs(20)).await.unwrap();
}
