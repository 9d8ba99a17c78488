//! Metrics scrape cost: `Runner::metrics().render()` (what the `metrics`
//! control op and `/metrics` answer) with 1 session, then with 500
//! sessions in the same process, each with two real demo guests (runtime
//! and sidecar, idle) through the process backend.
//!
//! Both scrapes wait until every guest runs (past its readiness check).
//! Each scrape reads every guest's CPU time and memory from `/proc` (one
//! pass over all processes), every log sink's counters and every health
//! snapshot, and encodes the OpenMetrics text. Scrapes run one after
//! another on a blocking thread, as the control op runs them.
//!
//! Run: `cargo run --release -p runner-bench --bin metrics_scrape`.

use runner_actors::{Runner, SessionHandle, SessionOptions};
use runner_bench::{demo_guest_runner, median, ms, percentile, short_tempdir};
use runner_core::metrics::usage::ProcessGroups;
use runner_types::GuestState;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

const SESSIONS: usize = 500;
const SCRAPES: usize = 50;
const BOUND: Duration = Duration::from_secs(60);

/// Timings of `SCRAPES` scrapes, the size of the last one and its sample
/// count.
struct Scrapes {
    times: Vec<Duration>,
    bytes: usize,
    samples: usize,
}

async fn scrape(runner: &Runner) -> Scrapes {
    let metrics = runner.metrics().clone();
    tokio::task::spawn_blocking(move || {
        let mut times = Vec::with_capacity(SCRAPES);
        let mut text = String::new();
        for _ in 0..SCRAPES {
            let start = Instant::now();
            text = metrics.render();
            times.push(start.elapsed());
        }
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        times.sort();
        Scrapes {
            times,
            bytes: text.len(),
            samples,
        }
    })
    .await
    .expect("scrape thread")
}

/// Waits until every guest of `sessions` runs (a guest is `starting`
/// until its readiness check passes, and a scrape reads the processes of
/// running guests only).
async fn wait_running(sessions: &[SessionHandle]) {
    for s in sessions {
        let mut health = s.watch_health();
        let waited = tokio::time::timeout(
            BOUND,
            health.wait_for(|h| h.guests.iter().all(|g| g.state == GuestState::Running)),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "a session's guests did not all run within {BOUND:?}"
        );
    }
}

/// The `/proc` pass alone, for every guest's process group.
async fn proc_scans(sessions: &[SessionHandle]) -> Vec<Duration> {
    let mut groups = HashSet::new();
    for s in sessions {
        let health = s.health().await.expect("health");
        groups.extend(health.guests.iter().filter_map(|g| g.pid));
    }
    tokio::task::spawn_blocking(move || {
        let mut times: Vec<Duration> = (0..SCRAPES)
            .map(|_| {
                let start = Instant::now();
                let table = ProcessGroups::scan(Path::new("/proc"), &groups);
                std::hint::black_box(table);
                start.elapsed()
            })
            .collect();
        times.sort();
        times
    })
    .await
    .expect("scan thread")
}

fn processes_on_host() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

fn row(label: &str, s: &mut Scrapes, processes: usize) {
    println!(
        "| {label} | {} | {} | {} | {} KiB | {} | {processes} |",
        ms(median(&mut s.times)),
        ms(percentile(&s.times, 99.0)),
        ms(*s.times.last().unwrap_or(&Duration::ZERO)),
        s.bytes / 1024,
        s.samples,
    );
}

#[tokio::main]
async fn main() {
    let guest = runner_tests::guest_binary("demo-guest");
    let dir = short_tempdir();
    let runner = demo_guest_runner(dir.path(), &guest);
    let options = SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    };
    let mut sessions: Vec<SessionHandle> = Vec::with_capacity(SESSIONS);
    sessions.push(
        runner
            .start_session_with("s0", options.clone())
            .await
            .expect("start the first session"),
    );
    wait_running(&sessions).await;
    let mut one = scrape(&runner).await;
    let one_procs = processes_on_host();
    eprintln!("1 session scraped; starting {} more", SESSIONS - 1);
    for i in 1..SESSIONS {
        let s = runner
            .start_session_with(&format!("s{i}"), options.clone())
            .await
            .unwrap_or_else(|e| panic!("start session {i}: {e}"));
        sessions.push(s);
    }
    wait_running(&sessions).await;
    let mut many = scrape(&runner).await;
    let many_procs = processes_on_host();
    let mut scans = proc_scans(&sessions).await;

    println!("| sessions | median | p99 | max | text | samples | processes on the host |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    row("1 (baseline)", &mut one, one_procs);
    row(&format!("{SESSIONS}"), &mut many, many_procs);
    let ratio = median(&mut many.times).as_secs_f64() / median(&mut one.times).as_secs_f64();
    println!("\nratio of medians: {ratio:.1}×; goal: {SESSIONS} sessions under 50 ms");
    println!(
        "of which the pass over /proc for {} guests: median {}, p99 {}",
        2 * SESSIONS,
        ms(median(&mut scans)),
        ms(percentile(&scans, 99.0))
    );

    let stops = sessions.iter().map(|s| s.shutdown(BOUND));
    for r in futures::future::join_all(stops).await {
        r.expect("shutdown");
    }
}
