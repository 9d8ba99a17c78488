//! The `events` op over a real control socket, with real demo-guest
//! processes: a runtime that crashes is restarted, and a follower sees it
//! all in order; a reconnect with `after` resumes without a gap.

use futures::{Stream, StreamExt};
use runner_actors::SessionHandle;
use runner_core::config::RunnerConfig;
use runner_core::control::{ControlClient, ControlClientError};
mod common;

use common::process_runner;
use runner_tests::process::demo;
use runner_types::events::{EventKind, EventRecord, EventsRequest, EventsResponse};
use runner_types::{ControlRequest, ControlResponse, ExitStatus, GuestRole};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A session whose runtime exits with code 3 every 300 ms (and is
/// restarted), with no sidecar.
async fn crashing_session(dir: &std::path::Path, user: &str) -> SessionHandle {
    let mut config = RunnerConfig::defaults(dir);
    config.restart.backoff_initial = Duration::from_millis(50);
    config.restart.backoff_max = Duration::from_millis(100);
    config.restart.max_restarts = 50;
    config.shutdown.grace = Duration::from_millis(300);
    config.shutdown.log_drain = Duration::from_millis(300);
    let runner = process_runner(
        config,
        demo(&[
            "--role",
            "runtime",
            "--exit-after-ms",
            "300",
            "--exit-code",
            "3",
        ]),
        None,
    );
    runner.start_session(user).await.unwrap()
}

type Frames =
    std::pin::Pin<Box<dyn Stream<Item = Result<EventsResponse, ControlClientError>> + Send>>;

async fn follow(session: &SessionHandle, after: Option<u64>) -> Frames {
    let path = session.control_socket().unwrap();
    let client = ControlClient::connect(&path, T).await.unwrap();
    Box::pin(client.follow_events(EventsRequest {
        follow: true,
        after,
    }))
}

/// Reads frames until an event matches `until`; returns every event seen
/// and every frame's gap.
async fn read_until(
    frames: &mut Frames,
    seen: &mut Vec<EventRecord>,
    mut until: impl FnMut(&EventRecord) -> bool,
) {
    loop {
        let frame = tokio::time::timeout(T, frames.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
            .unwrap();
        assert_eq!(frame.gap, None, "unexpected gap");
        let done = frame.events.iter().any(&mut until);
        seen.extend(frame.events);
        if done {
            return;
        }
    }
}

fn is_started(e: &EventRecord, restarts: u32) -> bool {
    matches!(e.kind, EventKind::GuestStarted { restarts: r, .. } if r == restarts)
}

fn assert_increasing(events: &[EventRecord]) {
    for pair in events.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "{pair:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_start_crash_restart_and_stop_in_order() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let session = crashing_session(dir.path(), "events-a").await;
    let mut frames = follow(&session, None).await;
    let mut seen = Vec::new();
    read_until(&mut frames, &mut seen, |e| is_started(e, 1)).await;
    session.shutdown(T).await.unwrap();
    // After the stop the stream ends cleanly, with `stopping` last.
    while let Some(frame) = tokio::time::timeout(T, frames.next()).await.unwrap() {
        seen.extend(frame.unwrap().events);
    }
    assert_increasing(&seen);
    let kinds: Vec<&EventKind> = seen.iter().map(|e| &e.kind).collect();
    assert!(
        matches!(kinds[0], EventKind::GuestStarted { restarts: 0, .. }),
        "{kinds:?}"
    );
    assert_eq!(kinds[1], &EventKind::SessionStarted);
    let EventKind::GuestExited { exit } = kinds[2] else {
        panic!("{kinds:?}")
    };
    assert_eq!(exit.status, ExitStatus::Code(3));
    assert!(
        matches!(kinds[3], EventKind::GuestRestarting { attempt: 1, .. }),
        "{kinds:?}"
    );
    assert!(matches!(
        kinds[4],
        EventKind::GuestStarted {
            restarts: 1,
            pid: Some(_),
            ..
        }
    ));
    assert_eq!(
        kinds.last().copied(),
        Some(&EventKind::Stopping),
        "{kinds:?}"
    );
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|e| e.role == Some(GuestRole::Runtime) || e.kind == EventKind::SessionStarted)
    );
    assert!(seen.iter().all(|e| e.timestamp.ends_with('Z')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_after_resumes_without_a_gap_or_a_repeat() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let session = crashing_session(dir.path(), "events-b").await;
    let mut frames = follow(&session, None).await;
    let mut first = Vec::new();
    read_until(&mut frames, &mut first, |e| {
        matches!(e.kind, EventKind::GuestExited { .. })
    })
    .await;
    drop(frames);
    let cursor = first.last().unwrap().seq;

    // Events happen while nobody follows; the next follower picks up
    // exactly after the cursor.
    let mut frames = follow(&session, Some(cursor)).await;
    let mut rest = Vec::new();
    read_until(&mut frames, &mut rest, |e| is_started(e, 2)).await;
    assert_eq!(rest[0].seq, cursor + 1);
    let mut all = first.clone();
    all.extend(rest);
    assert_increasing(&all);

    // A one-shot read with the same cursor gives the same events.
    let path = session.control_socket().unwrap();
    let req = ControlRequest::Events(EventsRequest {
        follow: false,
        after: Some(cursor),
    });
    let ControlResponse::Events(one) = ControlClient::request_once(&path, &req, T).await.unwrap()
    else {
        panic!("not events")
    };
    assert_eq!(one.gap, None);
    // The guest keeps crashing: compare what both have seen.
    let n = one.events.len().min(all.len() - first.len());
    assert!(n > 0);
    assert_eq!(one.events[..n], all[first.len()..first.len() + n]);
    session.shutdown(T).await.unwrap();
}
