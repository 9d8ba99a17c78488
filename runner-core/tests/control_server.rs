//! The control server of `runner_core::control::server` on a real socket,
//! without actors: the session is plain data and a recording
//! `SessionControl`.

use futures::StreamExt;
use runner_core::UserId;
use runner_core::control::ControlClient;
use runner_core::control::server::{
    CancellationToken, ControlLimits, FRAME_EVENTS, ServerContext, SessionControl, serve,
};
use runner_core::events::EventHistory;
use runner_core::health::{HealthInputs, SessionPhase, health_report};
use runner_types::events::{EventGap, EventKind, EventsRequest};
use runner_types::{ControlRequest, ControlResponse, SandboxTier, StartupStatus};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let recorder = Arc::new(Recorder::default());
    let ctx = ServerContext {
        user: UserId::new("alice").unwrap(),
        health: watch::channel(health("alice")).1,
        logs: Vec::new(),
        events: events.clone(),
        session: recorder.clone(),
        shutdown_deadline: Duration::from_secs(7),
    };
    let stop = CancellationToken::new();
    let limits = ControlLimits {
        read_timeout: T * 3,
        ..ControlLimits::default()
    };
    let task = tokio::spawn(serve(listener, ctx, limits, stop.clone()));
    Server {
        _dir: dir,
        path,
        events,
        recorder,
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
