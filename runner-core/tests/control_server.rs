//! The control server of `runner_core::control::server` on a real socket,
//! without actors: the session is plain data and a recording
//! `SessionControl`.

use futures::StreamExt;
use runner_core::UserId;
use runner_core::config::LogLimits;
use runner_core::control::ControlClient;
use runner_core::control::server::{
    CancellationToken, ControlLimits, FRAME_EVENTS, ServerContext, SessionControl, serve,
};
use runner_core::events::EventHistory;
use runner_core::health::{HealthInputs, SessionPhase, health_report};
use runner_core::logs::{LogPump, LogSink};
use runner_core::metrics::RunnerMetrics;
use runner_types::control::{LogsRequest, LogsResponse, StreamSelector};
use runner_types::events::{EventGap, EventKind, EventsRequest};
use runner_types::{ControlRequest, ControlResponse, SandboxTier, StartupStatus};
use runner_types::{GuestRole, LogStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

/// Records the shutdown requests it gets.
#[derive(Default)]
struct Recorder(Mutex<Vec<Duration>>);

impl SessionControl for Recorder {
    fn request_shutdown(&self, deadline: Duration) -> bool {
        self.0.lock().unwrap().push(deadline);
        true
    }
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: EventHistory,
    recorder: Arc<Recorder>,
    metrics: RunnerMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn health(user: &str) -> runner_types::HealthStatus {
    let startup = StartupStatus {
        sandbox_tier: SandboxTier::Process,
        sidecar_available: false,
        shell_available: false,
        browser_available: false,
        degraded_reasons: Vec::new(),
    };
    health_report(&HealthInputs {
        user_id: user,
        tier: SandboxTier::Process,
        startup: &startup,
        phase: &SessionPhase::Running,
        log_dir: "/nowhere",
        guests: &[],
        sidecar_linked: true,
        log_bytes_dropped: &[],
        degraded: &[],
    })
}

fn start(events: EventHistory) -> Server {
    start_with(events, Vec::new(), tempfile::tempdir().unwrap())
}

fn start_with(events: EventHistory, logs: Vec<LogSink>, dir: tempfile::TempDir) -> Server {
    let limits = ControlLimits {
        read_timeout: T * 3,
        ..ControlLimits::default()
    };
    start_limited(events, logs, dir, limits)
}

fn start_limited(
    events: EventHistory,
    logs: Vec<LogSink>,
    dir: tempfile::TempDir,
    limits: ControlLimits,
) -> Server {
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let recorder = Arc::new(Recorder::default());
    let metrics = RunnerMetrics::default();
    let ctx = ServerContext {
        user: UserId::new("alice").unwrap(),
        health: watch::channel(health("alice")).1,
        logs,
        events: events.clone(),
        session: recorder.clone(),
        shutdown_deadline: Duration::from_secs(7),
        metrics: metrics.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, ctx, limits, stop.clone()));
    Server {
        _dir: dir,
        path,
        events,
        recorder,
        metrics,
        stop,
        task,
    }
}

#[tokio::test]
async fn history_overflow_is_reported_as_a_gap_then_the_rest_follows() {
    let events = EventHistory::starting_at(4, 1);
    for _ in 0..10 {
        events.record(None, EventKind::Stopping);
    }
    let s = start(events);
    let client = ControlClient::connect(&s.path, T).await.unwrap();
    let mut frames = Box::pin(client.follow_events(EventsRequest {
        follow: true,
        after: Some(2),
    }));
    let first = tokio::time::timeout(T, frames.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.gap,
        Some(EventGap {
            after: 2,
            resumed_at: 7,
            missed: Some(4)
        })
    );
    let seqs: Vec<u64> = first.events.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, first.cursor), (vec![7, 8, 9, 10], 10));
    // New events follow, without a gap.
    s.events.record(None, EventKind::Stopped);
    let next = tokio::time::timeout(T, frames.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((next.gap, next.events[0].seq), (None, 11));
    // Stopping the server sends what is left, then ends the stream.
    s.events.record(None, EventKind::SessionStarted);
    s.stop.cancel();
    let mut rest = Vec::new();
    while let Some(frame) = tokio::time::timeout(T, frames.next()).await.unwrap() {
        rest.extend(frame.unwrap().events.into_iter().map(|e| e.seq));
    }
    assert_eq!(
        rest,
        [12],
        "recorded before the stop, so sent before the close"
    );
    tokio::time::timeout(T, s.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn one_shot_events_come_in_frames_with_a_cursor_to_continue() {
    let events = EventHistory::starting_at(1000, 1);
    let total = FRAME_EVENTS as u64 + 5;
    for _ in 0..total {
        events.record(None, EventKind::Stopping);
    }
    let s = start(events);
    let ask = |after| {
        ControlRequest::Events(EventsRequest {
            follow: false,
            after,
        })
    };
    let ControlResponse::Events(a) = ControlClient::request_once(&s.path, &ask(None), T)
        .await
        .unwrap()
    else {
        panic!("not events")
    };
    assert!(a.truncated && a.gap.is_none());
    assert_eq!(a.events.len(), FRAME_EVENTS);
    let ControlResponse::Events(b) = ControlClient::request_once(&s.path, &ask(Some(a.cursor)), T)
        .await
        .unwrap()
    else {
        panic!("not events")
    };
    assert!(!b.truncated);
    assert_eq!(b.events.first().unwrap().seq, a.cursor + 1);
    assert_eq!(b.cursor, total);
}

#[tokio::test]
async fn shutdown_user_reaches_the_session_and_stop_closes_idle_clients() {
    let s = start(EventHistory::new(8));
    let req = ControlRequest::ShutdownUser {
        user_id: "alice".into(),
    };
    let answer = ControlClient::request_once(&s.path, &req, T).await.unwrap();
    assert!(
        matches!(answer, ControlResponse::ShutdownStatus(ref st) if st.shutdown),
        "{answer:?}"
    );
    assert_eq!(*s.recorder.0.lock().unwrap(), [Duration::from_secs(7)]);

    let mut idle = UnixStream::connect(&s.path).await.unwrap();
    // Make sure it was accepted before stopping.
    let mut probe = ControlClient::connect(&s.path, T).await.unwrap();
    probe
        .request(&ControlRequest::HealthCheck, T)
        .await
        .unwrap();
    s.stop.cancel();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(T, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "a clean end of stream");
    tokio::time::timeout(T, s.task).await.unwrap().unwrap();
    assert!(
        UnixStream::connect(&s.path).await.is_err(),
        "still accepting"
    );
}

/// A runtime stdout sink in `dir/logs` with tiny files, and a server on it.
fn logs_server(max_files: u32) -> (Server, LogSink) {
    let dir = tempfile::tempdir().unwrap();
    let limits = LogLimits {
        max_file_bytes: 64,
        max_files,
    };
    let sink = LogSink::open(
        &dir.path().join("logs"),
        GuestRole::Runtime,
        LogStream::Stdout,
        limits,
    )
    .unwrap();
    (
        start_with(EventHistory::new(8), vec![sink.clone()], dir),
        sink,
    )
}

/// Writes `lines` lines `<tag>-<n>` through a pump and waits until written.
async fn write_lines(sink: &LogSink, tag: &str, lines: usize) -> Vec<String> {
    let text: Vec<String> = (0..lines).map(|n| format!("{tag}-{n:03}")).collect();
    let mut data = text.join("\n").into_bytes();
    data.push(b'\n');
    let reader: runner_core::logs::GuestReader = Box::pin(std::io::Cursor::new(data));
    let report = LogPump::spawn(reader, sink).finish(T).await;
    assert_eq!(report.bytes_dropped, 0);
    text
}

async fn logs(path: &std::path::Path, tail: u32, after: Option<String>) -> LogsResponse {
    let req = ControlRequest::Logs(LogsRequest {
        stream: StreamSelector::Stdout,
        tail: Some(tail),
        after,
        ..LogsRequest::default()
    });
    match ControlClient::request_once(path, &req, T).await.unwrap() {
        ControlResponse::Logs(r) => r,
        other => panic!("{other:?}"),
    }
}

fn messages(r: &LogsResponse) -> Vec<String> {
    r.entries.iter().map(|e| e.message.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logs_cursor_resumes_exactly_across_rotations() {
    let (s, sink) = logs_server(100);
    write_lines(&sink, "one", 20).await;
    let first = logs(&s.path, 5, None).await;
    assert_eq!(messages(&first).last().unwrap(), "one-019");
    let c0 = first.cursor.clone().expect("every answer has a cursor");
    let two = write_lines(&sink, "two", 20).await;
    assert!(sink.stats().rotations > 2, "rotated in between");

    // Paging with `after`: every new line exactly once, in order.
    let mut cursor = c0.clone();
    let mut seen = Vec::new();
    loop {
        let page = logs(&s.path, 7, Some(cursor.clone())).await;
        assert_eq!((page.lost_bytes, page.warnings.len()), (None, 0));
        seen.extend(messages(&page));
        cursor = page.cursor.unwrap();
        if !page.truncated {
            break;
        }
    }
    assert_eq!(seen, two);
    let none = logs(&s.path, 7, Some(cursor.clone())).await;
    assert!(none.entries.is_empty() && none.cursor.as_ref() == Some(&cursor));

    // A follower from c0: the backlog, then live lines, no gap, no repeat.
    let client = ControlClient::connect(&s.path, T).await.unwrap();
    let mut frames = Box::pin(client.follow_logs(LogsRequest {
        stream: StreamSelector::Stdout,
        after: Some(c0),
        tail: Some(1000),
        ..LogsRequest::default()
    }));
    let mut followed = Vec::new();
    let mut last_cursor = None;
    let mut three = Vec::new();
    while followed.len() < two.len() + three.len() {
        let frame = tokio::time::timeout(T, frames.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        followed.extend(messages(&frame));
        last_cursor = frame.cursor.or(last_cursor);
        if followed.len() == two.len() && three.is_empty() {
            // The backlog is through: what comes next arrives live.
            three = write_lines(&sink, "three", 5).await;
        }
    }
    assert_eq!(followed, [two, three.clone()].concat());
    // The follower's cursor is where a one-shot read finds nothing new.
    let after = logs(&s.path, 7, last_cursor).await;
    assert!(after.entries.is_empty(), "{:?}", messages(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_away_cursor_reports_the_bytes_lost() {
    let (s, sink) = logs_server(2);
    let one = write_lines(&sink, "one", 3).await;
    let c0 = logs(&s.path, 5, None).await.cursor.unwrap();
    let written_before = one.iter().map(|l| l.len() + 1).sum::<usize>() as u64;
    let two = write_lines(&sink, "two", 40).await;
    let written = written_before + two.iter().map(|l| l.len() + 1).sum::<usize>() as u64;
    // What is still on disk: the current file and two rotations.
    let kept: u64 = (0..=2)
        .map(|n| runner_core::logs::rotated_path(sink.path(), n))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let answer = logs(&s.path, 1000, Some(c0)).await;
    assert_eq!(answer.lost_bytes, Some(written - kept - written_before));
    assert!(
        answer.warnings[0].contains("rotated away"),
        "{:?}",
        answer.warnings
    );
    // The rest is what is kept: the newest lines, ending with the last one.
    assert_eq!(messages(&answer).last().unwrap(), "two-039");
    assert!(answer.entries.len() < two.len());
}

/// Every request is counted by op and result, answered or refused; the
/// `metrics` op answers with the same text.
#[tokio::test]
async fn requests_are_counted_by_op_and_result() {
    let s = start(EventHistory::new(8));
    let mut client = ControlClient::connect(&s.path, T).await.unwrap();
    for _ in 0..2 {
        client
            .request(&ControlRequest::HealthCheck, T)
            .await
            .unwrap();
    }
    let wrong_user = ControlRequest::ShutdownUser {
        user_id: "bob".into(),
    };
    let answer = client.request(&wrong_user, T).await.unwrap();
    assert!(matches!(answer, ControlResponse::Error(_)), "{answer:?}");
    let metrics = ControlRequest::Metrics(Default::default());
    let ControlResponse::Metrics(m) = client.request(&metrics, T).await.unwrap() else {
        panic!("no metrics answer");
    };
    assert!(
        m.text
            .contains(r#"runner_control_requests_total{op="health_check",result="ok"} 2"#),
        "{}",
        m.text
    );
    assert!(
        m.text.contains(
            r#"runner_control_requests_total{op="shutdown_user",result="unknown_user"} 1"#
        ),
        "{}",
        m.text
    );
    // The metrics request itself is counted once it is answered.
    let text = s.metrics.render();
    assert!(
        text.contains(r#"runner_control_requests_total{op="metrics",result="ok"} 1"#),
        "{text}"
    );
    // Back to an op counted before, after others on the same connection.
    client
        .request(&ControlRequest::HealthCheck, T)
        .await
        .unwrap();
    let text = s.metrics.render();
    assert!(
        text.contains(r#"runner_control_requests_total{op="health_check",result="ok"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_dropped_after_the_write_timeout() {
    let limits = ControlLimits {
        read_timeout: T * 3,
        write_timeout: Duration::from_millis(200),
        ..ControlLimits::default()
    };
    let s = start_limited(
        EventHistory::new(8),
        Vec::new(),
        tempfile::tempdir().unwrap(),
        limits,
    );
    let request = serde_json::to_vec(&ControlRequest::HealthCheck).unwrap();
    let frame =
        runner_types::frame::encode(&request, runner_types::frame::MAX_CONTROL_FRAME).unwrap();
    // Ask again and again, never read: the answers fill the socket, the
    // server's next answer cannot be written, and once the write timeout
    // has passed the server drops the connection, which fails our writes.
    let (_unread, mut write) = UnixStream::connect(&s.path).await.unwrap().into_split();
    let failed = tokio::time::timeout(T, async {
        loop {
            if let Err(e) = write.write_all(&frame).await {
                return e;
            }
        }
    })
    .await
    .expect("a client that never reads is dropped");
    assert!(
        matches!(
            failed.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{failed}"
    );
}
