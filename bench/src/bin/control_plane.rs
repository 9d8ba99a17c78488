//! Control-plane throughput: `health_check` round trips per second and their
//! p50/p99 latency against a real session's control socket, with 1 and with
//! 32 concurrent clients. Each client is one persistent connection sending
//! requests back to back for [`WINDOW`].
//!
//! The session runs two real demo guests through the process backend (the
//! guests are idle; only the socket is measured). Baseline, in the same run
//! and process: a minimal server on a Unix socket with the same 4-byte
//! length framing that answers every frame with the session's own health
//! response, serialised once up front — no actor, no codec, no JSON, no
//! timeouts: the ceiling for this transport. Both are driven by the same raw
//! client (pre-encoded request, response read as bytes), so the numbers
//! compare the servers, not client-side parsing. Rounds are interleaved.
//!
//! Run: `cargo run --release -p runner-bench --bin control_plane`.

use futures::future::join_all;
use runner_bench::{
    RawControlConn, demo_guest_runner, health_request_frame, percentile, short_tempdir,
};
use runner_types::ControlResponse;
use runner_types::frame::{MAX_CONTROL_FRAME, encode};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// How long each measured run sends requests.
const WINDOW: Duration = Duration::from_millis(1500);
/// Runs per (server, concurrency), interleaved between the two servers.
const ROUNDS: usize = 2;
const CONCURRENCY: [usize; 2] = [1, 32];
const BOUND: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Load {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        percentile(&self.latencies, p)
    }
}

#[tokio::main]
async fn main() {
    let guest = runner_tests::guest_binary("demo-guest");
    let dir = short_tempdir();
    let runner = demo_guest_runner(dir.path(), &guest);
    let session = runner.start_session("bench").await.expect("start session");
    let ours = session.control_socket().expect("session serves a socket");

    // The baseline answers with the session's own health response, byte for byte.
    let request = health_request_frame();
    let mut probe = RawControlConn::connect(&ours).await.expect("connect");
    let health = probe.round_trip(&request).await.expect("health").to_vec();
    drop(probe);
    match serde_json::from_slice(&health).expect("health JSON") {
        ControlResponse::HealthStatus(_) => {}
        other => panic!("unexpected answer {other:?}"),
    }
    let answer: Arc<[u8]> = encode(&health, MAX_CONTROL_FRAME).expect("frame").into();
    let echo = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&echo).expect("bind echo socket");
    let server = tokio::spawn(echo_server(listener, answer));

    // Warm up both (connection setup, allocator, caches).
    drive(&ours, &request, 4, Duration::from_millis(300)).await;
    drive(&echo, &request, 4, Duration::from_millis(300)).await;

    let mut rows = Vec::new();
    for clients in CONCURRENCY {
        let (mut mine, mut base) = (Load::default(), Load::default());
        for _ in 0..ROUNDS {
            mine.add(drive(&ours, &request, clients, WINDOW).await);
            base.add(drive(&echo, &request, clients, WINDOW).await);
        }
        rows.push((clients, mine, base));
    }
    server.abort();
    let report = session.shutdown(BOUND).await.expect("shutdown");
    assert!(report.cut_streams.is_empty(), "{report:?}");

    println!(
        "control_plane: health_check round trips, persistent connections, {ROUNDS} x {WINDOW:?} per cell, interleaved"
    );
    println!("  response frame: {} bytes", health.len() + 4);
    println!();
    println!(
        "| clients | session socket req/s | p50 | p99 | max | framed echo server req/s | p50 | p99 | max | ratio (req/s) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (clients, mut mine, mut base) in rows {
        println!(
            "| {clients} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {:.2}x |",
            mine.rate(),
            us(mine.p(50.0)),
            us(mine.p(99.0)),
            us(mine.p(100.0)),
            base.rate(),
            us(base.p(50.0)),
            us(base.p(99.0)),
            us(base.p(100.0)),
            mine.rate() / base.rate(),
        );
    }
    println!();
    println!("goal: ratio >= 0.8x at 32 clients, max latency < 20 ms");
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// `clients` connections each sending `request` back to back for `window`.
async fn drive(path: &Path, request: &[u8], clients: usize, window: Duration) -> Load {
    let conns = join_all((0..clients).map(|_| RawControlConn::connect(path))).await;
    let start = Instant::now();
    let deadline = start + window;
    let tasks = conns.into_iter().map(|conn| {
        let request = request.to_vec();
        tokio::spawn(async move {
            let mut conn = conn.expect("connect");
            let mut latencies = Vec::with_capacity(64 * 1024);
            loop {
                let t = Instant::now();
                if t >= deadline {
                    return latencies;
                }
                tokio::time::timeout(BOUND, conn.round_trip(&request))
                    .await
                    .expect("answer in time")
                    .expect("round trip");
                latencies.push(t.elapsed());
            }
        })
    });
    let mut load = Load::default();
    for latencies in join_all(tasks).await {
        load.latencies.extend(latencies.expect("client task"));
    }
    load.elapsed = start.elapsed();
    load.requests = load.latencies.len() as u64;
    load
}

/// The baseline server: one task per connection, each frame answered with
/// `answer`.
async fn echo_server(listener: UnixListener, answer: Arc<[u8]>) {
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(echo_conn(stream, answer.clone()));
    }
}

async fn echo_conn(stream: UnixStream, answer: Arc<[u8]>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut head = [0u8; 4];
    let mut body = Vec::new();
    loop {
        // A client leaving ends the connection; that is the only way out.
        if read.read_exact(&mut head).await.is_err() {
            return;
        }
        body.resize(u32::from_be_bytes(head) as usize, 0);
        if read.read_exact(&mut body).await.is_err() || write.write_all(&answer).await.is_err() {
            return;
        }
    }
}
