//! `runner-bin` end to end, as a user runs it: the daemon on built-in
//! defaults (process tier, demo guests, ./workspaces) and the client
//! subcommands against it.

use runner_core::lock::SessionLock;
use runner_tests::daemon::{self, KillOnDrop, daemon_command};
use runner_tests::{process_alive, runner_binary};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

struct Daemon {
    child: KillOnDrop,
    socket: PathBuf,
    dir: PathBuf,
}

fn start_daemon(dir: &Path, user: &str) -> Daemon {
    let (child, lines) =
        daemon::spawn(daemon_command(&runner_binary(), user, dir).env("RUST_LOG", "info"));
    let socket = daemon::wait_serving(&lines, WAIT);
    Daemon {
        child,
        socket,
        dir: dir.to_path_buf(),
    }
}

fn client(dir: &Path, args: &[&str]) -> Output {
    daemon::output_bounded(
        Command::new(runner_binary()).args(args).current_dir(dir),
        WAIT,
    )
}

fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    daemon::wait_bounded(child, WAIT)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn guest_pids(d: &Daemon, user: &str) -> Vec<u32> {
    let out = client(&d.dir, &["status", "--user", user, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health: runner_types::HealthStatus = serde_json::from_slice(&out.stdout).unwrap();
    health.guests.iter().filter_map(|g| g.pid).collect()
}

#[test]
fn defaults_status_logs_follow_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(tmp.path(), "alice");
    assert_eq!(
        d.socket,
        tmp.path().join("workspaces/alice/run/runner-control.sock")
    );

    let out = client(&d.dir, &["status", "--user", "alice"]);
    assert!(out.status.success());
    assert!(text(&out).contains("healthy"), "{}", text(&out));
    let pids = guest_pids(&d, "alice");
    assert_eq!(pids.len(), 2);

    // Wait for at least one heartbeat, then tail it.
    let start = Instant::now();
    loop {
        let out = client(
            &d.dir,
            &[
                "logs", "--user", "alice", "--role", "runtime", "--stream", "stdout", "--tail",
                "50",
            ],
        );
        assert!(out.status.success());
        let t = text(&out);
        if t.contains("heartbeat n=") {
            assert!(t.contains("envelope={\"user_id\":\"alice\""), "{t}");
            break;
        }
        assert!(start.elapsed() < WAIT, "no heartbeat in logs: {t}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // logs -f shows heartbeats that arrive after it started.
    let mut follow = Command::new(runner_binary())
        .args([
            "logs", "--user", "alice", "--role", "sidecar", "--stream", "stdout", "--tail", "1",
            "-f",
        ])
        .current_dir(&d.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let first_n = heartbeat_number(&first);
    let mut newer = None;
    for line in lines.by_ref().take(10) {
        let line = line.unwrap();
        if let Some(n) = heartbeat_number(&line)
            && first_n.is_none_or(|f| n > f)
        {
            newer = Some(n);
            break;
        }
    }
    assert!(newer.is_some(), "logs -f showed no new heartbeat");
    follow.kill().unwrap();
    follow.wait().unwrap();

    let out = client(&d.dir, &["stop", "--user", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = d;
    let status = wait_bounded(&mut d.child.0);
    assert!(status.success(), "daemon exit: {status}");
    assert!(!d.socket.exists());
    for pid in pids {
        assert!(!process_alive(pid), "guest {pid} survived");
    }
    // No daemon: one clear line, non-zero exit.
    let out = client(&d.dir, &["status", "--user", "alice"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No runner daemon is running for user alice"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

fn heartbeat_number(line: &str) -> Option<u64> {
    line.strip_prefix("heartbeat n=")?.trim().parse().ok()
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = start_daemon(tmp.path(), "bob");
    let pids = guest_pids(&d, "bob");
    d.child.signal(nix::sys::signal::Signal::SIGTERM);
    let status = wait_bounded(&mut d.child.0);
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
    for pid in pids {
        assert!(!process_alive(pid), "guest {pid} survived");
    }
}

#[test]
fn a_second_daemon_for_the_same_user_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(tmp.path(), "carol");
    let out = client(&d.dir, &["--daemon", "--user", "carol"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving user carol"), "{err}");
    // The first one is unharmed.
    let out = client(&d.dir, &["status", "--user", "carol"]);
    assert!(out.status.success());
    let out = client(&d.dir, &["stop", "--user", "carol"]);
    assert!(out.status.success());
    let mut d = d;
    assert!(wait_bounded(&mut d.child.0).success());
}

#[test]
fn a_daemon_started_over_a_stale_socket_works() {
    let tmp = tempfile::tempdir().unwrap();
    // A workspace as a daemon leaves it (with the owners it gives its
    // directories), then what a SIGKILLed one leaves: a socket file nobody
    // listens on.
    let mut first = start_daemon(tmp.path(), "dave");
    assert!(
        client(tmp.path(), &["stop", "--user", "dave"])
            .status
            .success()
    );
    assert!(wait_bounded(&mut first.child.0).success());
    let stale = tmp.path().join("workspaces/dave/run/runner-control.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let out = client(tmp.path(), &["status", "--user", "dave"]);
    assert!(
        !out.status.success(),
        "status against a stale socket must fail"
    );

    let mut d = start_daemon(tmp.path(), "dave");
    let out = client(&d.dir, &["status", "--user", "dave"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client(&d.dir, &["stop", "--user", "dave"]);
    assert!(out.status.success());
    assert!(wait_bounded(&mut d.child.0).success());
}

#[test]
fn bad_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("runner.toml");
    std::fs::write(&cfg, "workspace_root = \"ws\"\n[logs]\nmax_filez = 3\n").unwrap();
    let mut cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--daemon"], "--user"),
        (vec!["--daemon", "--user", "../etc"], "Invalid --user"),
        // `-e NAME` takes the value from the runner's environment: unset
        // there, it is an error that says so.
        (
            vec!["--daemon", "--user", "x", "-e", "RUNNER_E2E_UNSET_VAR"],
            "RUNNER_E2E_UNSET_VAR is not set",
        ),
        (
            vec!["--daemon", "--user", "x", "-e", "1BAD=x"],
            "invalid variable name",
        ),
    ];
    let cfg_s = cfg.to_str().unwrap();
    cases.push((
        vec!["--daemon", "--user", "x", "--config", cfg_s],
        "max_filez",
    ));
    cases.push((
        vec![
            "--daemon",
            "--user",
            "x",
            "--config",
            "/nonexistent/runner.toml",
        ],
        "/nonexistent/runner.toml",
    ));
    for (args, needle) in cases {
        let out = client(tmp.path(), &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{args:?}: {err}"
        );
    }
}

fn signal(d: &Daemon, sig: nix::sys::signal::Signal) {
    d.child.signal(sig);
}

#[test]
fn sighup_is_a_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = start_daemon(tmp.path(), "hana");
    let pids = guest_pids(&d, "hana");
    signal(&d, nix::sys::signal::Signal::SIGHUP);
    let status = wait_bounded(&mut d.child.0);
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket left behind");
    let ipc = tmp.path().join("workspaces/hana/ipc");
    assert!(std::fs::symlink_metadata(ipc.join("runner-control.sock")).is_err());
    assert!(
        !ipc.join("shell-daemon.sock").exists(),
        "sidecar socket left"
    );
    for pid in pids {
        assert!(!process_alive(pid), "guest {pid} survived");
    }
    // The lock is free: a new daemon starts at once.
    let mut again = start_daemon(tmp.path(), "hana");
    signal(&again, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_bounded(&mut again.child.0).success());
}

#[test]
fn a_second_signal_forces_a_long_graceful_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = runner_binary();
    let cfg = tmp.path().join("runner.toml");
    // A runtime that ignores SIGTERM, and 30 s of grace.
    std::fs::write(
        &cfg,
        format!(
            "[shutdown]\ngrace_ms = 30000\n[process]\nruntime = {{ program = \"{}\", args = [\"demo-guest\", \"--ignore-sigterm\"] }}\nsidecar = {{ program = \"{}\", args = [\"demo-guest\", \"--role\", \"sidecar\"] }}\n",
            bin.display(),
            bin.display()
        ),
    )
    .unwrap();
    let (child, lines) = daemon::spawn(
        daemon_command(&bin, "ivan", tmp.path())
            .arg("--config")
            .arg(&cfg),
    );
    let socket = daemon::wait_serving(&lines, WAIT);
    let mut d = Daemon {
        child,
        socket,
        dir: tmp.path().to_path_buf(),
    };
    let args = [
        "status",
        "--user",
        "ivan",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let out = client(&d.dir, &args);
    let health: runner_types::HealthStatus = serde_json::from_slice(&out.stdout).unwrap();
    let pids: Vec<u32> = health.guests.iter().filter_map(|g| g.pid).collect();
    assert_eq!(pids.len(), 2);

    signal(&d, nix::sys::signal::Signal::SIGTERM);
    // The graceful stop is under way (the socket goes first) and waits out
    // the runtime's grace; a second signal forces it.
    let start = Instant::now();
    while d.socket.exists() {
        assert!(start.elapsed() < WAIT, "graceful stop did not begin");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.child.0.try_wait().unwrap().is_none(),
        "daemon ended before the grace"
    );
    signal(&d, nix::sys::signal::Signal::SIGTERM);
    // Still running 5 s after the second signal fails the test.
    let status = daemon::wait_bounded(&mut d.child.0, Duration::from_secs(5));
    assert!(!status.success(), "a forced stop must exit non-zero");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut d.child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("forced"), "{err}");
    for pid in pids {
        assert!(!process_alive(pid), "guest {pid} survived the forced stop");
    }
    let ws = tmp.path().join("workspaces/ivan");
    assert!(!d.socket.exists());
    assert!(std::fs::symlink_metadata(ws.join("ipc/runner-control.sock")).is_err());
    assert!(!ws.join("ipc/shell-daemon.sock").exists());
    assert!(
        !SessionLock::is_held(&ws.join("run")),
        "session lock still held"
    );
    // The lock file stays for the next session, naming its last holder.
    assert_eq!(
        std::fs::read_to_string(ws.join("run/session.lock")).unwrap(),
        d.child.0.id().to_string()
    );
}

#[test]
fn events_lists_the_start_and_a_follower_sees_the_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(tmp.path(), "erin");
    let out = client(&d.dir, &["events", "--user", "erin"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = text(&out);
    assert!(t.contains("sidecar started (pid "), "{t}");
    assert!(t.contains("runtime started (pid "), "{t}");
    assert!(t.contains("session started"), "{t}");
    let last: u64 = t
        .lines()
        .last()
        .and_then(|l| l.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("a sequence number first");

    // Follow from the last seen event, as JSON frames: the stop arrives,
    // then the daemon closes the stream and the client exits by itself.
    let mut follow = Command::new(runner_binary())
        .args(["events", "--user", "erin", "-f", "--json", "--after"])
        .arg(last.to_string())
        .current_dir(&d.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first: runner_types::events::EventsResponse =
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!((first.gap, first.cursor), (None, last));
    let out = client(&d.dir, &["stop", "--user", "erin"]);
    assert!(out.status.success());
    let rest: Vec<runner_types::events::EventsResponse> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let events: Vec<_> = rest.iter().flat_map(|f| &f.events).collect();
    assert_eq!(
        events.last().map(|e| &e.kind),
        Some(&runner_types::events::EventKind::Stopping),
        "{events:?}"
    );
    assert_eq!(events[0].seq, last + 1);
    assert!(wait_bounded(&mut follow).success());
    let mut d = d;
    assert!(wait_bounded(&mut d.child.0).success());
}

#[test]
fn logs_after_a_cursor_resumes_where_the_last_answer_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(tmp.path(), "finn");
    let base = [
        "logs", "--user", "finn", "--role", "runtime", "--stream", "stdout",
    ];
    // The first answer (newest lines) and its cursor, from `--json`.
    let out = client(&d.dir, &[&base[..], &["--tail", "1", "--json"]].concat());
    let first: serde_json::Value =
        serde_json::from_str(text(&out).lines().next().expect("a frame")).unwrap();
    let cursor = first["cursor"]
        .as_str()
        .expect("every answer has a cursor")
        .to_owned();
    let last_seen = first["lines"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find_map(|l| heartbeat_number(l["data"].as_str().unwrap()));
    // Wait until more heartbeats were written, then resume after the cursor.
    let start = Instant::now();
    loop {
        let out = client(
            &d.dir,
            &[&base[..], &["--tail", "1000", "--after", &cursor]].concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let beats: Vec<u64> = text(&out).lines().filter_map(heartbeat_number).collect();
        if let Some(first_new) = beats.first() {
            // Nothing before the cursor comes again, and nothing is skipped.
            if let Some(last) = last_seen {
                assert_eq!(*first_new, last + 1, "{beats:?}");
            }
            assert!(beats.windows(2).all(|w| w[1] == w[0] + 1), "{beats:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("cursor=oxydra-vm.stdout:"), "{err}");
            break;
        }
        assert!(start.elapsed() < WAIT, "no new heartbeat after the cursor");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = client(&d.dir, &["stop", "--user", "finn"]);
    assert!(out.status.success());
    let mut d = d;
    assert!(wait_bounded(&mut d.child.0).success());
}
