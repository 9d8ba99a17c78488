//! `events` fan-out: 100 followers of one session whose runtime guest
//! crash-loops (exits 3 after ~10 ms; restart policy `always`, 5 ms backoff),
//! plus one follower that asks to follow and then never reads.
//!
//! Measured per round, over the same window:
//! - the session's restart rate, seen in-process through
//!   `SessionHandle::events()` — the baseline round has no follower at all,
//!   the fan-out round has the 101, interleaved; "no follower slows the
//!   session" is the ratio of the two rates;
//! - each follower's lag: the time from the in-process subscriber seeing a
//!   `guest_started` event to the follower receiving the frame with that
//!   event (matched by restart count), across all followers;
//! - events each follower received, and gaps reported to any of them.
//!
//! Run: `cargo run --release -p runner-bench --bin events_fanout`.

use futures::StreamExt;
use runner_actors::{Runner, SessionEvent};
use runner_bench::{ms, percentile, self_exec_runner, short_tempdir};
use runner_core::config::RunnerConfig;
use runner_core::control::ControlClient;
use runner_types::config::RestartPolicy;
use runner_types::events::{EventKind, EventsRequest};
use runner_types::{ControlRequest, GuestRole};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const FOLLOWERS: usize = 100;
const WINDOW: Duration = Duration::from_secs(5);
const ROUNDS: usize = 2;
const BOUND: Duration = Duration::from_secs(10);

/// When the in-process subscriber saw each launch (by restart count).
type Seen = Arc<Mutex<HashMap<u32, Instant>>>;

#[derive(Default)]
struct Round {
    restarts: u32,
    lags: Vec<Duration>,
    per_follower: Vec<usize>,
    gaps: usize,
}

fn crash_guest() -> ! {
    std::thread::sleep(Duration::from_millis(10));
    std::process::exit(3);
}

fn runner(dir: &std::path::Path) -> Runner {
    let mut config = RunnerConfig::defaults(dir);
    config.restart.policy = RestartPolicy::Always;
    config.restart.max_restarts = u32::MAX;
    config.restart.backoff_initial = Duration::from_millis(5);
    config.restart.backoff_max = Duration::from_millis(5);
    self_exec_runner(config, "--crash-guest")
}

/// Counts launches in-process and stamps when each was seen, until `end`.
async fn watch_session(
    mut events: tokio::sync::broadcast::Receiver<SessionEvent>,
    seen: Seen,
    end: Instant,
) -> u32 {
    let mut restarts = 0;
    while let Ok(Ok(event)) = tokio::time::timeout_at(end.into(), events.recv()).await {
        if let SessionEvent::GuestStarted {
            role: GuestRole::Runtime,
            restarts: n,
            ..
        } = event
        {
            seen.lock().expect("seen map").insert(n, Instant::now());
            restarts = n;
        }
    }
    restarts
}

/// One follower: records its lag per launch event until `end`.
async fn follow(
    socket: std::path::PathBuf,
    seen: Seen,
    end: Instant,
) -> (Vec<Duration>, usize, usize) {
    let client = ControlClient::connect(&socket, BOUND)
        .await
        .expect("connect");
    let mut frames = Box::pin(client.follow_events(EventsRequest::default()));
    let (mut lags, mut received, mut gaps) = (Vec::new(), 0, 0);
    while let Ok(Some(frame)) = tokio::time::timeout_at(end.into(), frames.next()).await {
        let frame = frame.expect("events frame");
        let now = Instant::now();
        gaps += usize::from(frame.gap.is_some());
        for event in &frame.events {
            received += 1;
            if let EventKind::GuestStarted { restarts, .. } = event.kind {
                // The in-process subscriber may see it a moment later than
                // the follower; only count launches it saw first.
                if let Some(t) = seen.lock().expect("seen map").get(&restarts) {
                    lags.push(now.saturating_duration_since(*t));
                }
            }
        }
    }
    (lags, received, gaps)
}

async fn round(n: usize, followers: usize) -> Round {
    let dir = short_tempdir();
    let runner = runner(dir.path());
    let session = runner
        .start_session(&format!("fan{n}f{followers}"))
        .await
        .expect("start session");
    let socket = session.control_socket().expect("socket");
    let seen: Seen = Arc::default();
    let end = Instant::now() + WINDOW;
    // A follower that asks for events and then never reads a byte.
    let mut stalled = None;
    if followers > 0 {
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        let req = ControlRequest::Events(EventsRequest {
            follow: true,
            after: None,
        });
        let json = serde_json::to_vec(&req).expect("encode");
        let frame = runner_types::frame::encode(&json, runner_types::frame::MAX_CONTROL_FRAME)
            .expect("frame");
        stream.write_all(&frame).await.expect("send");
        stalled = Some(stream);
    }
    let tasks: Vec<_> = (0..followers)
        .map(|_| tokio::spawn(follow(socket.clone(), seen.clone(), end)))
        .collect();
    let restarts = watch_session(session.events(), seen, end).await;
    let mut r = Round {
        restarts,
        ..Round::default()
    };
    for t in tasks {
        let (lags, received, gaps) = t.await.expect("follower task");
        r.lags.extend(lags);
        r.per_follower.push(received);
        r.gaps += gaps;
    }
    drop(stalled);
    session.shutdown(BOUND).await.expect("shutdown");
    r
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--crash-guest") {
        crash_guest();
    }
    let (mut base, mut fan) = (Vec::new(), Vec::new());
    for n in 0..ROUNDS {
        base.push(round(n, 0).await);
        fan.push(round(n, FOLLOWERS).await);
    }
    let rate = |rs: &[Round]| {
        let total: u32 = rs.iter().map(|r| r.restarts).sum();
        f64::from(total) / (WINDOW.as_secs_f64() * rs.len() as f64)
    };
    let (base_rate, fan_rate) = (rate(&base), rate(&fan));
    let mut lags: Vec<Duration> = fan.iter().flat_map(|r| r.lags.clone()).collect();
    lags.sort_unstable();
    let min_received = fan
        .iter()
        .flat_map(|r| r.per_follower.iter().copied())
        .min()
        .unwrap_or(0);
    let gaps: usize = fan.iter().map(|r| r.gaps).sum();
    println!(
        "events_fanout: runtime guest crash-looping (exit 3 after 10 ms, 5 ms backoff), {ROUNDS} x {WINDOW:?} rounds, interleaved"
    );
    println!();
    println!(
        "| workload | restarts/s | follower lag p50 | p99 | max | fewest events one follower got | gaps reported |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!("| no follower (baseline) | {base_rate:.1} | - | - | - | - | - |");
    println!(
        "| {FOLLOWERS} followers + 1 that never reads | {fan_rate:.1} | {} | {} | {} | {min_received} | {gaps} |",
        ms(percentile(&lags, 50.0)),
        ms(percentile(&lags, 99.0)),
        ms(lags.last().copied().unwrap_or_default()),
    );
    println!();
    println!(
        "session restart rate with followers / without: {:.2}x (goal: about 1.0x, no follower slows the session)",
        fan_rate / base_rate.max(f64::MIN_POSITIVE)
    );
}
