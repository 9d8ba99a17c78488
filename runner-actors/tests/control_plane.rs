//! The control socket under good and bad clients (fake backend, real socket).

mod common;

use common::*;
use futures::StreamExt;
use runner_actors::control::ControlLimits;
use runner_actors::{SessionHandle, SessionOptions};
use runner_core::control::ControlClient;
use runner_core::fake::FakeGuest;
use runner_types::control::{LogFormat, LogSource, LogsRequest, RoleSelector, StreamSelector};
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse, GuestRole, LogStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(10);

struct Running {
    _setup: Setup,
    session: SessionHandle,
    sidecar: FakeGuest,
    runtime: FakeGuest,
}

async fn start(user: &str) -> Running {
    start_with(
        user,
        ControlLimits {
            read_timeout: Duration::from_millis(500),
            ..ControlLimits::default()
        },
    )
    .await
}

async fn start_with(user: &str, control_limits: ControlLimits) -> Running {
    let setup = setup();
    let (fake, mut launches) = fake();
    let runner = runner(setup.config.clone(), &fake);
    let options = SessionOptions {
        control_limits,
        ..SessionOptions::default()
    };
    let session = runner.start_session_with(user, options).await.unwrap();
    let (sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    // The runner (and its config) may go; the session lives on.
    Running {
        _setup: setup,
        session,
        sidecar,
        runtime,
    }
}

fn socket(r: &Running) -> std::path::PathBuf {
    r.session.control_socket().unwrap()
}

async fn health(path: &Path) -> runner_types::HealthStatus {
    match ControlClient::request_once(path, &ControlRequest::HealthCheck, T)
        .await
        .unwrap()
    {
        ControlResponse::HealthStatus(h) => h,
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends raw bytes, then reads whatever comes back until EOF (bounded).
async fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("server kept the connection")
        {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn frame(json: &[u8]) -> Vec<u8> {
    runner_types::frame::encode(json, usize::MAX).unwrap()
}

fn error_code(reply: &[u8]) -> ControlErrorCode {
    let payload =
        runner_types::frame::decode(reply, runner_types::frame::MAX_CONTROL_FRAME).unwrap();
    match serde_json::from_slice::<ControlResponse>(payload).unwrap() {
        ControlResponse::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn socket_is_private_and_health_has_oxydra_fields() {
    let r = start("ctl-a").await;
    let path = socket(&r);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(path.starts_with(&r.session.workspace().run));
    let h = health(&path).await;
    assert_eq!(h.user_id, "ctl-a");
    assert!(h.healthy);
    assert_eq!(h.runtime_pid, Some(r.runtime.pid));
    assert_eq!(
        h.log_dir.as_deref(),
        Some(r.session.workspace().logs.to_str().unwrap())
    );
    assert_eq!(h.guests[0].pid, Some(r.sidecar.pid));
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn malformed_requests_get_errors_and_never_harm_the_session() {
    let r = start("ctl-b").await;
    let path = socket(&r);
    // Invalid JSON, unknown op, wrong payload type: answered invalid_request.
    for bad in [
        &b"{not json"[..],
        br#"{"op":"reboot_universe"}"#,
        br#"{"op":"shutdown_user","payload":{"user_id":5}}"#,
    ] {
        let reply = raw_exchange(&path, &frame(bad)).await;
        assert_eq!(
            error_code(&reply),
            ControlErrorCode::InvalidRequest,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Length prefix over the cap: an error or a drop, and nothing is read.
    let reply = raw_exchange(&path, &u32::MAX.to_be_bytes()).await;
    if !reply.is_empty() {
        assert_eq!(error_code(&reply), ControlErrorCode::InvalidRequest);
    }
    // A short frame then EOF: dropped.
    assert!(raw_exchange(&path, &[0, 0]).await.is_empty());
    // Tail over the limit.
    let req = ControlRequest::Logs(LogsRequest {
        tail: Some(5000),
        ..LogsRequest::default()
    });
    match ControlClient::request_once(&path, &req, T).await.unwrap() {
        ControlResponse::Error(e) => assert_eq!(e.code, ControlErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    assert!(health(&path).await.healthy);
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn a_silent_client_is_dropped_and_blocks_nobody() {
    let r = start("ctl-c").await;
    let path = socket(&r);
    let mut silent = UnixStream::connect(&path).await.unwrap();
    // Others are served while it sits there.
    assert!(health(&path).await.healthy);
    // It is dropped after the read timeout (500 ms here).
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(T, silent.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn five_hundred_concurrent_clients_are_all_answered() {
    let r = start("ctl-d").await;
    let path = socket(&r);
    let tasks = (0..500).map(|_| {
        let p = path.clone();
        tokio::spawn(async move { health(&p).await.healthy })
    });
    let results = futures::future::join_all(tasks).await;
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(true))).count(),
        500
    );
    assert!(health(&path).await.healthy);
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn a_peer_with_another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to run a client as nobody");
        return;
    }
    let r = start("ctl-e").await;
    let path = socket(&r);
    // Let nobody reach the socket at all, so that the peer-uid check (not the
    // file mode) is what refuses it.
    for dir in [&r.session.workspace().user_root, &r.session.workspace().run] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
body = b'{"op":"health_check"}'
data = b""
try:
    # The runner may drop us before or after the request is written.
    s.sendall(struct.pack(">I", len(body)) + body)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except (ConnectionResetError, BrokenPipeError):
    pass
print(len(data))
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .uid(65534)
        .gid(65534)
        .output();
    let out = tokio::time::timeout(T, out).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "nobody got an answer"
    );
    // Root (our uid) still gets answers.
    assert!(health(&path).await.healthy);
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn shutdown_user_checks_the_user_then_stops_the_session_and_removes_the_socket() {
    let r = start("ctl-f").await;
    let path = socket(&r);
    let wrong = ControlRequest::ShutdownUser {
        user_id: "mallory".into(),
    };
    match ControlClient::request_once(&path, &wrong, T).await.unwrap() {
        ControlResponse::Error(e) => assert_eq!(e.code, ControlErrorCode::UnknownUser),
        other => panic!("{other:?}"),
    }
    assert!(health(&path).await.healthy);
    // oxydra's clients find the socket through a relative link in ipc/.
    let link = r.session.workspace().ipc.join("runner-control.sock");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../run/runner-control.sock")
    );
    assert!(health(&link).await.healthy);
    let right = ControlRequest::ShutdownUser {
        user_id: "ctl-f".into(),
    };
    match ControlClient::request_once(&path, &right, T).await.unwrap() {
        ControlResponse::ShutdownStatus(s) => assert!(s.shutdown && !s.already_stopped),
        other => panic!("{other:?}"),
    }
    assert!(r.session.wait_stopped(T).await);
    assert!(!path.exists(), "socket left behind");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "ipc link left behind"
    );
    assert_eq!(r.runtime.stop_calls(), 1);
    assert_eq!(r.sidecar.stop_calls(), 1);
}

#[tokio::test]
async fn logs_tail_and_follow() {
    let mut r = start("ctl-g").await;
    let path = socket(&r);
    r.runtime
        .write(LogStream::Stdout, b"one\ntwo\nthree\n")
        .await
        .unwrap();
    r.sidecar
        .write(LogStream::Stderr, b"side \xff\n")
        .await
        .unwrap();
    let log = r
        .session
        .workspace()
        .logs
        .join(LogStream::Stdout.file_name(GuestRole::Runtime));
    eventually(|| std::fs::read(&log).map(|b| b.len() == 14).unwrap_or(false)).await;
    let side = r
        .session
        .workspace()
        .logs
        .join(LogStream::Stderr.file_name(GuestRole::Sidecar));
    eventually(|| std::fs::read(&side).map(|b| b.len() == 7).unwrap_or(false)).await;

    let req = ControlRequest::Logs(LogsRequest {
        role: RoleSelector::Runtime,
        stream: StreamSelector::Stdout,
        tail: Some(2),
        ..LogsRequest::default()
    });
    let ControlResponse::Logs(chunk) = ControlClient::request_once(&path, &req, T).await.unwrap()
    else {
        panic!("not logs")
    };
    let data: Vec<_> = chunk.entries.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(data, ["two", "three"]);
    assert!(
        chunk
            .entries
            .iter()
            .all(|e| e.source == LogSource::ProcessFile
                && e.role == GuestRole::Runtime
                && e.data_base64.is_none())
    );

    // `since` as oxydra sends it: a duration or a timestamp; junk is refused.
    for (since, lines) in [
        ("1h", 3),
        ("2999-01-01T00:00:00Z", 0),
        ("2000-01-01T00:00:00+02:00", 3),
    ] {
        let req = ControlRequest::Logs(LogsRequest {
            stream: StreamSelector::Stdout,
            since: Some(since.into()),
            format: LogFormat::Json,
            ..LogsRequest::default()
        });
        match ControlClient::request_once(&path, &req, T).await.unwrap() {
            ControlResponse::Logs(c) => assert_eq!(c.entries.len(), lines, "since {since}"),
            other => panic!("since {since}: {other:?}"),
        }
    }
    let req = ControlRequest::Logs(LogsRequest {
        since: Some("yesterday".into()),
        ..LogsRequest::default()
    });
    match ControlClient::request_once(&path, &req, T).await.unwrap() {
        ControlResponse::Error(e) => assert_eq!(e.code, ControlErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }

    let req = ControlRequest::Logs(LogsRequest {
        role: RoleSelector::Sidecar,
        format: LogFormat::Base64,
        ..LogsRequest::default()
    });
    let ControlResponse::Logs(chunk) = ControlClient::request_once(&path, &req, T).await.unwrap()
    else {
        panic!("not logs")
    };
    assert_eq!(chunk.entries.len(), 1);
    let e = &chunk.entries[0];
    assert_eq!(e.data_base64.as_deref(), Some("c2lkZSD/"));
    assert_eq!(
        (e.role, e.stream, e.message.as_str()),
        (GuestRole::Sidecar, LogStream::Stderr, "side \u{fffd}")
    );

    let client = ControlClient::connect(&path, T).await.unwrap();
    let mut follow = Box::pin(client.follow_logs(LogsRequest {
        role: RoleSelector::Runtime,
        stream: StreamSelector::Stdout,
        tail: Some(1),
        ..LogsRequest::default()
    }));
    let first = tokio::time::timeout(T, follow.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first
            .entries
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>(),
        ["three"]
    );
    r.runtime
        .write(LogStream::Stdout, b"four\nfi")
        .await
        .unwrap();
    r.runtime.write(LogStream::Stdout, b"ve\n").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let chunk = tokio::time::timeout(T, follow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(chunk.entries.iter().all(|e| e.timestamp.is_some()));
        seen.extend(chunk.entries.into_iter().map(|l| l.message));
    }
    assert_eq!(seen, ["four", "five"]);
    drop(follow);
    assert!(health(&path).await.healthy);
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn a_full_house_answers_busy_and_frees_the_slot_after() {
    let r = start_with(
        "ctl-busy",
        ControlLimits {
            max_connections: 1,
            ..ControlLimits::default()
        },
    )
    .await;
    let path = socket(&r);
    // One client holds the only slot (answered, so surely accepted).
    let mut holder = ControlClient::connect(&path, T).await.unwrap();
    let answer = holder
        .request(&ControlRequest::HealthCheck, T)
        .await
        .unwrap();
    assert!(matches!(answer, ControlResponse::HealthStatus(_)));
    // The next is told it is busy (not `internal`), then closed.
    let reply = raw_exchange(&path, &frame(br#"{"op":"health_check"}"#)).await;
    assert_eq!(error_code(&reply), ControlErrorCode::Busy);
    // Once the holder leaves, its slot serves the next client.
    drop(holder);
    let mut served = false;
    for _ in 0..200 {
        match ControlClient::request_once(&path, &ControlRequest::HealthCheck, T).await {
            Ok(ControlResponse::HealthStatus(_)) => {
                served = true;
                break;
            }
            Ok(ControlResponse::Error(e)) => assert_eq!(e.code, ControlErrorCode::Busy),
            other => panic!("{other:?}"),
        }
        tokio::task::yield_now().await;
    }
    assert!(served, "the freed slot never served another client");
    r.session.shutdown(T).await.unwrap();
}

#[tokio::test]
async fn stopping_sends_a_follower_what_was_queued_then_closes_cleanly() {
    let mut r = start_with(
        "ctl-close",
        ControlLimits {
            read_timeout: T * 6,
            ..ControlLimits::default()
        },
    )
    .await;
    let path = socket(&r);
    let mut idle = UnixStream::connect(&path).await.unwrap();
    let client = ControlClient::connect(&path, T).await.unwrap();
    let mut follow = Box::pin(client.follow_logs(LogsRequest {
        stream: StreamSelector::Stdout,
        tail: Some(0),
        ..LogsRequest::default()
    }));
    let first = tokio::time::timeout(T, follow.next()).await.unwrap();
    assert!(first.unwrap().unwrap().entries.is_empty());
    r.runtime
        .write(LogStream::Stdout, b"last words\n")
        .await
        .unwrap();
    let next = tokio::time::timeout(T, follow.next()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().entries[0].message, "last words");
    r.session.shutdown(T).await.unwrap();
    // The follower's stream ends (no error), and so does the idle client's,
    // long before the read timeout.
    let end = tokio::time::timeout(T, follow.next()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(T, idle.read(&mut buf)).await.unwrap();
    assert_eq!(n.unwrap(), 0);
}
