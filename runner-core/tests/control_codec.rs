//! The control codec and client against a small in-test server on a temp
//! Unix socket: round trips, log following, oversize prefixes, invalid
//! JSON in both directions, and the client's errors when no runner serves.

use futures::{SinkExt, StreamExt};
use runner_core::control::{
    ClientCodec, ControlClient, ControlClientError, ControlCodecError, ServerCodec,
};
use runner_types::control::{
    ControlError, LogEntry, LogSource, LogsRequest, LogsResponse, ShutdownStatus,
};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{
    ControlErrorCode, ControlRequest, ControlResponse, GuestRole, HealthStatus, LogStream,
    SandboxTier, StartupStatus,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedRead};

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn health() -> HealthStatus {
    HealthStatus {
        user_id: "alice".into(),
        healthy: true,
        sandbox_tier: SandboxTier::Process,
        startup_status: StartupStatus {
            sandbox_tier: SandboxTier::Process,
            sidecar_available: true,
            shell_available: true,
            browser_available: false,
            degraded_reasons: vec![],
        },
        shell_available: true,
        browser_available: false,
        shutdown: false,
        message: None,
        log_dir: Some("/ws/alice/logs".into()),
        runtime_pid: Some(7),
        runtime_container_name: None,
        guests: vec![],
    }
}

fn chunk(n: usize) -> LogsResponse {
    LogsResponse {
        entries: vec![LogEntry {
            timestamp: None,
            source: LogSource::ProcessFile,
            role: GuestRole::Runtime,
            stream: LogStream::Stdout,
            message: format!("line {n}"),
            data_base64: None,
        }],
        truncated: false,
        warnings: vec![],
        cursor: None,
        lost_bytes: None,
    }
}

/// How the test server reacts to requests.
#[derive(Clone, Copy)]
enum Mode {
    /// Answer like a runner serving `alice`.
    Answer,
    /// Answer every request with a frame that is not JSON.
    Garbage,
    /// Read one request and close without answering.
    Hangup,
    /// Read requests and never answer (until the client goes away).
    Silent,
}

/// A server on a temp socket; decode errors it sees are sent on `errors`.
struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    errors: mpsc::UnboundedReceiver<ControlCodecError>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve(mode: Mode) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner-control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, errors) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(stream, mode, tx.clone()));
        }
    });
    Server {
        _dir: dir,
        path,
        errors,
        task,
    }
}

async fn connection(
    stream: UnixStream,
    mode: Mode,
    errors: mpsc::UnboundedSender<ControlCodecError>,
) {
    let mut framed = Framed::new(stream, ServerCodec::new());
    while let Some(item) = framed.next().await {
        let request = match item {
            Ok(request) => request,
            Err(e) => {
                let answer = e.is_message_error();
                errors.send(e).unwrap();
                if answer {
                    // A bad message: answer, then close (the framed stream
                    // ends after any decode error).
                    let refusal = ControlResponse::Error(ControlError {
                        code: ControlErrorCode::InvalidRequest,
                        message: "not a request".into(),
                    });
                    framed.send(refusal).await.unwrap();
                }
                return;
            }
        };
        match mode {
            Mode::Answer => {}
            Mode::Garbage => {
                let raw = framed.get_mut();
                raw.write_all(&[0, 0, 0, 5]).await.unwrap();
                raw.write_all(b"{oops").await.unwrap();
                continue;
            }
            Mode::Hangup => return,
            Mode::Silent => continue,
        }
        match request {
            ControlRequest::HealthCheck => {
                framed
                    .send(ControlResponse::HealthStatus(health()))
                    .await
                    .unwrap();
            }
            ControlRequest::ShutdownUser { user_id } if user_id == "alice" => {
                let status = ShutdownStatus {
                    user_id,
                    shutdown: true,
                    already_stopped: false,
                    message: None,
                };
                framed
                    .send(ControlResponse::ShutdownStatus(status))
                    .await
                    .unwrap();
            }
            ControlRequest::ShutdownUser { user_id } => {
                let refusal = ControlError {
                    code: ControlErrorCode::UnknownUser,
                    message: format!("not serving {user_id}"),
                };
                framed.send(ControlResponse::Error(refusal)).await.unwrap();
            }
            ControlRequest::Logs(req) if req.tail == Some(0) => {
                let refusal = ControlError {
                    code: ControlErrorCode::InvalidRequest,
                    message: "tail must be positive".into(),
                };
                framed.send(ControlResponse::Error(refusal)).await.unwrap();
            }
            ControlRequest::Logs(req) if req.follow => {
                for n in 0..3 {
                    framed.send(ControlResponse::Logs(chunk(n))).await.unwrap();
                }
                return;
            }
            ControlRequest::Logs(_) => {
                framed.send(ControlResponse::Logs(chunk(0))).await.unwrap();
            }
            ControlRequest::Events(_) => return,
            ControlRequest::Metrics(_) => {
                let text = "# EOF\n".to_owned();
                let answer = runner_types::control::MetricsResponse { text };
                framed.send(ControlResponse::Metrics(answer)).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn requests_round_trip_on_one_connection() {
    let server = serve(Mode::Answer);
    let mut client = bounded(ControlClient::connect(&server.path, WAIT))
        .await
        .unwrap();
    assert_eq!(client.path(), server.path);

    let got = client
        .request(&ControlRequest::HealthCheck, WAIT)
        .await
        .unwrap();
    assert_eq!(got, ControlResponse::HealthStatus(health()));

    let stop = ControlRequest::ShutdownUser {
        user_id: "alice".into(),
    };
    match client.request(&stop, WAIT).await.unwrap() {
        ControlResponse::ShutdownStatus(s) => assert!(s.shutdown && s.user_id == "alice"),
        other => panic!("{other:?}"),
    }

    // An error response is an answer, not a client error.
    let wrong = ControlRequest::ShutdownUser {
        user_id: "bob".into(),
    };
    match client.request(&wrong, WAIT).await.unwrap() {
        ControlResponse::Error(e) => assert_eq!(e.code, ControlErrorCode::UnknownUser),
        other => panic!("{other:?}"),
    }

    let logs = ControlRequest::Logs(LogsRequest::default());
    assert_eq!(
        client.request(&logs, WAIT).await.unwrap(),
        ControlResponse::Logs(chunk(0))
    );
}

#[tokio::test]
async fn request_once_connects_and_asks() {
    let server = serve(Mode::Answer);
    let got = ControlClient::request_once(&server.path, &ControlRequest::HealthCheck, WAIT)
        .await
        .unwrap();
    assert_eq!(got, ControlResponse::HealthStatus(health()));
}

#[tokio::test]
async fn follow_logs_streams_until_the_server_closes() {
    let server = serve(Mode::Answer);
    let client = bounded(ControlClient::connect(&server.path, WAIT))
        .await
        .unwrap();
    // `follow` is forced on even if the request leaves it off.
    let stream = client.follow_logs(LogsRequest::default());
    let chunks: Vec<_> = bounded(stream.collect::<Vec<_>>()).await;
    let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
    assert_eq!(chunks, vec![chunk(0), chunk(1), chunk(2)]);
}

#[tokio::test]
async fn follow_logs_error_response_ends_the_stream() {
    let server = serve(Mode::Answer);
    let client = bounded(ControlClient::connect(&server.path, WAIT))
        .await
        .unwrap();
    let request = LogsRequest {
        tail: Some(0),
        ..LogsRequest::default()
    };
    let items: Vec<_> = bounded(client.follow_logs(request).collect::<Vec<_>>()).await;
    assert_eq!(items.len(), 1);
    assert!(
        matches!(
            &items[0],
            Err(ControlClientError::Refused {
                code: ControlErrorCode::InvalidRequest,
                ..
            })
        ),
        "{items:?}"
    );
}

#[tokio::test]
async fn oversize_prefix_is_rejected_and_the_connection_dropped() {
    let mut server = serve(Mode::Answer);
    let mut raw = bounded(UnixStream::connect(&server.path)).await.unwrap();
    let len = MAX_CONTROL_FRAME as u32 + 1;
    raw.write_all(&len.to_be_bytes()).await.unwrap();

    let err = bounded(server.errors.recv()).await.unwrap();
    assert!(
        matches!(
            err,
            ControlCodecError::FrameTooLarge { len: l, max } if l == len as usize && max == MAX_CONTROL_FRAME
        ),
        "{err:?}"
    );
    // Dropped without an answer: the client reads EOF.
    let mut rest = Vec::new();
    let n = bounded(raw.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(n, 0, "server answered an oversize frame: {rest:?}");
}

#[tokio::test]
async fn invalid_json_request_gets_invalid_request() {
    let mut server = serve(Mode::Answer);
    let mut raw = bounded(UnixStream::connect(&server.path)).await.unwrap();
    for payload in [&b"{\"op\": \"reboot\"}"[..], &b"\xff\xfe not json"[..]] {
        raw.write_all(&(payload.len() as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(payload).await.unwrap();
        let err = bounded(server.errors.recv()).await.unwrap();
        assert!(matches!(err, ControlCodecError::Json(_)), "{err:?}");
        let mut answers = FramedRead::new(&mut raw, ClientCodec::new());
        match bounded(answers.next()).await {
            Some(Ok(ControlResponse::Error(e))) => {
                assert_eq!(e.code, ControlErrorCode::InvalidRequest)
            }
            other => panic!("{other:?}"),
        }
        drop(answers);
        raw = bounded(UnixStream::connect(&server.path)).await.unwrap();
    }
}

/// A health check against a server in `mode`, answered within `timeout`:
/// it must fail, and this is why.
async fn health_check_error(mode: Mode, timeout: Duration) -> ControlClientError {
    let server = serve(mode);
    let mut client = bounded(ControlClient::connect(&server.path, WAIT))
        .await
        .unwrap();
    bounded(client.request(&ControlRequest::HealthCheck, timeout))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn invalid_json_answer_is_a_receive_json_error() {
    let err = health_check_error(Mode::Garbage, WAIT).await;
    assert!(
        matches!(
            err,
            ControlClientError::Receive {
                source: ControlCodecError::Json(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn hangup_without_answer_is_closed() {
    let err = health_check_error(Mode::Hangup, WAIT).await;
    assert!(matches!(err, ControlClientError::Closed { .. }), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let timeout = Duration::from_millis(100);
    let err = health_check_error(Mode::Silent, timeout).await;
    assert!(
        matches!(err, ControlClientError::Timeout { timeout: t, .. } if t == timeout),
        "{err:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_not_running() {
    let dir = tempfile::tempdir().unwrap();

    // No socket file at all.
    let missing = dir.path().join("runner-control.sock");
    let err = ControlClient::connect(&missing, WAIT).await.unwrap_err();
    match err {
        ControlClientError::NotRunning { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }

    // A stale socket file left by a runner that is gone.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let err = ControlClient::connect(&stale, WAIT).await.unwrap_err();
    match err {
        ControlClientError::NotRunning { path, source } => {
            assert_eq!(path, stale);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }

    // One-shot requests report the same.
    let err = ControlClient::request_once(&missing, &ControlRequest::HealthCheck, WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ControlClientError::NotRunning { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn other_connect_failures_are_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    // A path under a regular file: ENOTDIR, which is not "no runner".
    let under = file.join("runner-control.sock");
    let err = ControlClient::connect(&under, WAIT).await.unwrap_err();
    match err {
        ControlClientError::Connect { path, .. } => assert_eq!(path, under),
        other => panic!("{other:?}"),
    }
}
