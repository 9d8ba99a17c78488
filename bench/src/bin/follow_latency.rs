//! Follow latency: from a guest's write to a `logs` follower receiving the
//! line, under a 1 MiB/s stream (1 KiB lines, 1024 a second).
//!
//! The guest is this binary re-executed with `--writer-guest` (a real
//! process-tier guest): each line starts with the wall-clock time of its
//! write in nanoseconds, and the follower (a `ControlClient` on the
//! session's socket, `logs` with `follow`) subtracts it from the time the
//! frame is decoded. Baseline, in the same run, interleaved: the same
//! writer spawned directly with its stdout on a pipe that this process
//! reads line by line (the floor: one pipe hop, no runner).
//!
//! Run: `cargo run --release -p runner-bench --bin follow_latency`.

use futures::StreamExt;
use runner_bench::{percentile, self_exec_runner, short_tempdir};
use runner_core::config::RunnerConfig;
use runner_core::control::ControlClient;
use runner_types::control::{LogsRequest, RoleSelector, StreamSelector};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Bytes per line, newline included.
const LINE: usize = 1024;
/// Lines a second: 1 MiB/s.
const RATE: u32 = 1024;
/// Measured time per round and path.
const WINDOW: Duration = Duration::from_secs(4);
/// Rounds, interleaved between the two paths.
const ROUNDS: usize = 2;
/// Lines skipped at the start of each round (start-up).
const WARMUP: usize = 200;
const BOUND: Duration = Duration::from_secs(10);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// The guest: writes timestamped lines at [`RATE`] until killed.
fn writer_guest() -> ! {
    let mut out = std::io::stdout().lock();
    let period = Duration::from_secs(1) / RATE;
    let start = Instant::now();
    let mut line = vec![b'x'; LINE];
    line[LINE - 1] = b'\n';
    for n in 0u64.. {
        let due = start + period * u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let stamp = format!("{:020} ", now_ns());
        line[..stamp.len()].copy_from_slice(stamp.as_bytes());
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    }
    unreachable!()
}

fn latency_of(message: &str) -> Option<Duration> {
    let sent: u128 = message.split(' ').next()?.parse().ok()?;
    let ns = now_ns().checked_sub(sent)?;
    Some(Duration::from_nanos(u64::try_from(ns).ok()?))
}

/// Baseline: the writer on a pipe read directly.
async fn pipe_round() -> Vec<Duration> {
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .arg("--writer-guest")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut samples = Vec::new();
    let end = Instant::now() + WINDOW;
    while Instant::now() < end {
        let line = tokio::time::timeout(BOUND, lines.next_line()).await;
        let line = line.expect("a line in time").expect("read").expect("open");
        samples.extend(latency_of(&line));
    }
    child.kill().await.expect("kill writer");
    samples.split_off(WARMUP.min(samples.len()))
}

/// The runner: a session whose runtime is the writer, followed over the
/// control socket.
async fn runner_round(n: usize) -> Vec<Duration> {
    let dir = short_tempdir();
    let runner = self_exec_runner(RunnerConfig::defaults(dir.path()), "--writer-guest");
    let session = runner
        .start_session(&format!("follow{n}"))
        .await
        .expect("start session");
    let socket = session.control_socket().expect("socket");
    let client = ControlClient::connect(&socket, BOUND)
        .await
        .expect("connect");
    let mut frames = Box::pin(client.follow_logs(LogsRequest {
        role: RoleSelector::Runtime,
        stream: StreamSelector::Stdout,
        tail: Some(0),
        ..LogsRequest::default()
    }));
    let mut samples = Vec::new();
    let end = Instant::now() + WINDOW;
    while Instant::now() < end {
        let frame = tokio::time::timeout(BOUND, frames.next()).await;
        let frame = frame
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        samples.extend(frame.entries.iter().filter_map(|e| latency_of(&e.message)));
    }
    drop(frames);
    session.shutdown(BOUND).await.expect("shutdown");
    samples.split_off(WARMUP.min(samples.len()))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "| {name} | {} | {} | {} | {} |",
        samples.len(),
        us(percentile(&samples, 50.0)),
        us(percentile(&samples, 99.0)),
        us(samples.last().copied().unwrap_or_default()),
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--writer-guest") {
        writer_guest();
    }
    let (mut pipe, mut runner) = (Vec::new(), Vec::new());
    for n in 0..ROUNDS {
        pipe.extend(pipe_round().await);
        runner.extend(runner_round(n).await);
    }
    println!(
        "follow_latency: guest write -> line received, {LINE}-byte lines at {RATE}/s (1 MiB/s), {ROUNDS} x {WINDOW:?} per path, interleaved"
    );
    println!();
    println!("| path | lines | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    row("pipe read directly (baseline)", pipe);
    row("runner: pump -> log file -> `logs` follower frame", runner);
    println!();
    println!("goal: runner p99 <= 2 ms");
}
