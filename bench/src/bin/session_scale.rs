//! Many sessions in one process: N sessions (the first argument; default
//! 500), each with two real demo
//! guests (runtime and sidecar, heartbeat every 10 minutes, so idle) through
//! the process backend, each serving its control socket.
//!
//! Measured, in this order, in one run:
//! 1. Baseline: the same 2N guest processes spawned directly with
//!    `tokio::process` (same bootstrap frames on stdin, workspaces made
//!    beforehand), sequentially: until all were spawned, until all printed
//!    `envelope=` on their stdout pipes; then SIGTERM to all and wait for all.
//!    Then the same again, stopped the way the runner must stop a session
//!    (SIGTERM the runtime, wait, then the sidecar), all sessions at once:
//!    the like-for-like baseline for the shutdown in step 5.
//! 2. Baseline: `health_check` latency on one session alone (the same
//!    number of sequential requests as step 4 sends in total).
//! 3. N sessions started one after another: total time until the last
//!    start call returned and until every guest's `envelope=` line is in
//!    its log file; per-call latency; the runner's resident memory (`VmRSS`
//!    of this process before and after, divided by the sessions: it counts
//!    the runner's own memory — actors, Tokio tasks, log buffers — not the
//!    guests') and open file descriptors per session.
//! 4. `health_check` over each session's own socket (one persistent
//!    connection per session, one request per session per round, sessions
//!    in turn, several rounds) while all N run: p50 and p99.
//! 5. All N sessions shut down at once: until every shutdown returned, and
//!    the CPU time this process used meanwhile (`getrusage`: every runner
//!    thread, log writers included; not the guests), beside the CPU the
//!    bare baseline's process used to stop and reap its guests. Wall time
//!    on a loaded machine mostly measures the load; the CPU per session is
//!    the runner's own cost. Also the rest of the machine's busy CPU time
//!    meanwhile (`/proc/stat`): the guests' own stopping, which on two
//!    CPUs leaves the runner only what the bare shutdown left idle.
//! 6. Again N sessions, started 16 at a time, and shut down at once.
//!
//! A session that fails to start is counted and reported, and the rest of
//! the run uses the sessions that did start.
//!
//! Run: `cargo run --release -p runner-bench --bin session_scale [N]
//! [--heap]`; `--heap` also counts the live heap (every allocation updates
//! one shared counter, which slows the run down a little).

use futures::StreamExt;
use futures::future::join_all;
use runner_actors::{Runner, SessionHandle};
use runner_bench::{
    BareGuest, RawControlConn, demo_guest_runner, health_request_frame, machine_busy, machine_cpus,
    median, ms, open_fds, own_cpu, percentile, proc_status, session_like_envelope_frame,
    short_tempdir, stdout_log, vm_rss_kib, wait_for_logs,
};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{ControlResponse, GuestRole};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicIsize};
use std::time::{Duration, Instant};

/// Every allocation goes through [`CountingAlloc`]; with `--heap` it counts
/// them, so the footprint can tell the live heap (what the runner's data
/// structures hold) from the resident memory malloc keeps for it (arenas,
/// fragmentation). Off by default: a counter every thread updates costs
/// time of its own.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes currently allocated through the global allocator (since counting
/// began: frees of older allocations may take it below zero).
static LIVE_HEAP: AtomicIsize = AtomicIsize::new(0);
/// Whether [`CountingAlloc`] counts (`--heap`).
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Adds `bytes` (negative: frees) to [`LIVE_HEAP`] while counting.
fn count(bytes: isize) {
    if COUNTING.load(Relaxed) {
        LIVE_HEAP.fetch_add(bytes, Relaxed);
    }
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

/// The system allocator, counting the bytes it hands out.
struct CountingAlloc;

// SAFETY: every call forwards its arguments unchanged to the system
// allocator, which upholds `GlobalAlloc`'s contract; the counter is
// only bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `System`)
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        p
    }
}

/// Sessions when no count is given on the command line.
const DEFAULT_SESSIONS: usize = 500;
const PARALLEL_STARTS: usize = 16;
const HEALTH_ROUNDS: usize = 5;
const BOUND: Duration = Duration::from_secs(60);

/// Sessions started in one go, and how long that took.
struct Fleet {
    sessions: Vec<SessionHandle>,
    failed: usize,
    first_error: Option<String>,
    calls: Vec<Duration>,
    returned: Duration,
    ready: Duration,
}

/// The runner's own resource use at one moment.
struct Footprint {
    rss_kib: u64,
    heap_kib: i64,
    pte_kib: u64,
    fds: u64,
    fd_kinds: std::collections::BTreeMap<String, usize>,
    threads: u64,
}

impl Footprint {
    fn now() -> Self {
        Self {
            rss_kib: vm_rss_kib(),
            heap_kib: (LIVE_HEAP.load(Relaxed) / 1024) as i64,
            pte_kib: proc_status("VmPTE").unwrap_or(0),
            fds: open_fds() as u64,
            fd_kinds: runner_bench::open_fd_kinds(),
            threads: proc_status("Threads").unwrap_or(0),
        }
    }
}

/// The bare baseline's timings.
struct Bare {
    provisioned: Duration,
    spawned: Duration,
    ready: Duration,
    /// Stopping the guests.
    stop: StopCost,
}

#[tokio::main]
async fn main() {
    let mut sessions = DEFAULT_SESSIONS;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--heap" => COUNTING.store(true, Relaxed),
            n => sessions = n.parse().expect("session count"),
        }
    }
    raise_fd_limit(sessions);
    let guest = runner_tests::guest_binary("demo-guest");
    let dir = short_tempdir();
    let runner = demo_guest_runner(dir.path(), &guest);

    let (logs_kib, logs_heap_kib) =
        logs_layer_alone(&dir.path().join("logs-alone"), sessions).await;
    let clock = Instant::now();
    eprintln!(
        "{:>6.1}s [1/6] bare baseline: {} guest processes",
        clock.elapsed().as_secs_f64(),
        2 * sessions
    );
    let bare = bare_fleet(
        &guest,
        &dir.path().join("bare"),
        sessions,
        StopOrder::AllAtOnce,
    )
    .await;
    let ordered = bare_fleet(
        &guest,
        &dir.path().join("ordered"),
        sessions,
        StopOrder::Ordered,
    )
    .await;

    eprintln!(
        "{:>6.1}s [2/6] health baseline: one session",
        clock.elapsed().as_secs_f64()
    );
    let one = runner
        .start_session("one")
        .await
        .expect("start one session");
    // Let both guests finish starting up (the runtime last connects to the
    // sidecar), so the baseline is taken on a quiet session.
    let logs = [GuestRole::Runtime, GuestRole::Sidecar].map(|r| stdout_log(one.workspace(), r));
    wait_for_logs(vec![logs[1].clone()], "sidecar_listening=", BOUND).await;
    wait_for_logs(vec![logs[0].clone()], "sidecar_connected=", BOUND).await;
    let socket = one.control_socket().expect("socket");
    let mut one_latency = health(&[socket], sessions * HEALTH_ROUNDS).await;
    one.shutdown(BOUND).await.expect("shutdown one session");

    eprintln!(
        "{:>6.1}s [3/6] {sessions} sessions, sequential starts",
        clock.elapsed().as_secs_f64()
    );
    let before = Footprint::now();
    let mut seq = start_fleet(&runner, "q", 1, sessions).await;
    let after = Footprint::now();
    let started = seq.sessions.len();

    eprintln!(
        "{:>6.1}s [4/6] health across {started} sessions",
        clock.elapsed().as_secs_f64()
    );
    let sockets: Vec<PathBuf> = seq
        .sessions
        .iter()
        .map(|s| s.control_socket().expect("socket"))
        .collect();
    let mut all_latency = health(&sockets, HEALTH_ROUNDS).await;

    eprintln!(
        "{:>6.1}s [5/6] shutting {started} sessions down at once",
        clock.elapsed().as_secs_f64()
    );
    let seq_stop = stop_fleet(&seq.sessions).await;

    eprintln!(
        "{:>6.1}s [6/6] {sessions} sessions, {PARALLEL_STARTS} starts at a time",
        clock.elapsed().as_secs_f64()
    );
    let par = start_fleet(&runner, "c", PARALLEL_STARTS, sessions).await;
    let par_stop = stop_fleet(&par.sessions).await;

    // Removing 1500 workspaces takes a while on some file systems; say so.
    let t = Instant::now();
    if let Err(e) = dir.close() {
        eprintln!("cannot remove the benchmark's temp dir: {e}");
    }
    eprintln!(
        "{:>6.1}s done (temp dir removed in {:.1}s)",
        clock.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "session_scale: {sessions} sessions x (runtime + sidecar demo guest, control socket) in one process"
    );
    for (name, fleet) in [("sequential", &seq), ("16 at a time", &par)] {
        if fleet.failed > 0 {
            println!(
                "  {name}: {} of {sessions} starts FAILED; first error: {}",
                fleet.failed,
                fleet.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    if seq_stop.failed + par_stop.failed > 0 {
        println!(
            "  shutdowns FAILED: {} + {}",
            seq_stop.failed, par_stop.failed
        );
    }
    println!();
    println!(
        "| start | ours | baseline: {} bare guest spawns | ratio |",
        2 * sessions
    );
    println!("| --- | --- | --- | --- |");
    for (name, fleet) in [
        (format!("{started} sessions, sequential"), &seq),
        (
            format!(
                "{} sessions, {PARALLEL_STARTS} at a time",
                par.sessions.len()
            ),
            &par,
        ),
    ] {
        ratio_row(
            &format!("{name}: start calls returned"),
            fleet.returned,
            bare.spawned,
        );
        ratio_row(
            &format!("{name}: all envelopes read"),
            fleet.ready,
            bare.ready,
        );
    }
    println!(
        "| for reference: provisioning {sessions} workspaces (7 mkdirs each; inside our start, outside the baseline) | {} | | |",
        ms(bare.provisioned)
    );
    println!();
    let calls = &mut seq.calls;
    let early = median(&mut calls[..calls.len().min(50)].to_vec());
    let late = median(&mut calls[calls.len().saturating_sub(50)..].to_vec());
    let call_med = median(calls);
    println!(
        "| per start call (sequential) | p50 | p99 | median of first 50 | median of last 50 |"
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| `start_session` | {} | {} | {} | {} |",
        ms(call_med),
        ms(percentile(calls, 99.0)),
        ms(early),
        ms(late)
    );
    println!();
    println!("| runner footprint ({started} sessions running) | before | after | per session |");
    println!("| --- | --- | --- | --- |");
    let per = |b: u64, a: u64| a.saturating_sub(b) as f64 / started as f64;
    println!(
        "| VmRSS (runner only; excludes guests) | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0,
        per(before.rss_kib, after.rss_kib)
    );
    if COUNTING.load(Relaxed) {
        println!(
            "| live heap (bytes allocated and not freed; `--heap`) | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            before.heap_kib as f64 / 1024.0,
            after.heap_kib as f64 / 1024.0,
            (after.heap_kib - before.heap_kib) as f64 / started as f64
        );
    }
    println!(
        "| page tables (VmPTE; copied by every fork) | {} KiB | {} KiB | {:.2} KiB |",
        before.pte_kib,
        after.pte_kib,
        per(before.pte_kib, after.pte_kib)
    );
    println!(
        "| open file descriptors | {} | {} | {:.1} |",
        before.fds,
        after.fds,
        per(before.fds, after.fds)
    );
    for (kind, after_n) in &after.fd_kinds {
        let before_n = before.fd_kinds.get(kind).copied().unwrap_or(0);
        println!(
            "| … of which {kind} | {before_n} | {after_n} | {:.2} |",
            per(before_n as u64, *after_n as u64)
        );
    }
    println!(
        "| threads | {} | {} | {:.2} |",
        before.threads,
        after.threads,
        per(before.threads, after.threads)
    );
    let logs_heap = if COUNTING.load(Relaxed) {
        format!(" (live heap {logs_heap_kib:.1} KiB)")
    } else {
        String::new()
    };
    println!(
        "| of which the logs layer alone (4 sinks + 4 idle pumps on pipes per session, measured apart) | | | {logs_kib:.1} KiB{logs_heap} |"
    );
    println!();
    println!("| health_check (sequential, persistent connections) | samples | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    for (name, lat) in [
        (
            format!("{started} sessions, one request each per round"),
            &mut all_latency,
        ),
        ("baseline: 1 session alone".to_string(), &mut one_latency),
    ] {
        lat.sort_unstable();
        println!(
            "| {name} | {} | {} | {} |",
            lat.len(),
            us(percentile(lat, 50.0)),
            us(percentile(lat, 99.0))
        );
    }
    println!();
    println!(
        "| shutdown, all at once | ours | baseline: SIGTERM {} bare guests + wait | ratio |",
        2 * sessions
    );
    println!("| --- | --- | --- | --- |");
    ratio_row(
        &format!("{started} sessions (sequentially started)"),
        seq_stop.cost.took,
        bare.stop.took,
    );
    ratio_row(
        &format!("{} sessions (started 16 at a time)", par.sessions.len()),
        par_stop.cost.took,
        bare.stop.took,
    );
    println!();
    println!(
        "| shutdown, all at once | ours | baseline: the same {} bare guests, each session in the runner's order (SIGTERM runtime, wait, then sidecar, wait), all sessions at once | ratio |",
        2 * sessions
    );
    println!("| --- | --- | --- | --- |");
    ratio_row(
        &format!("{started} sessions (sequentially started)"),
        seq_stop.cost.took,
        ordered.stop.took,
    );
    ratio_row(
        &format!("{} sessions (started 16 at a time)", par.sessions.len()),
        par_stop.cost.took,
        ordered.stop.took,
    );
    println!();
    println!(
        "| CPU of this process during the shutdown (runner threads and log writers; guests excluded) | total | per session | baseline: reaping {} bare guests (tokio::process), per session |",
        2 * sessions
    );
    println!("| --- | --- | --- | --- |");
    let per = |cpu: Duration, n: usize| us(cpu / u32::try_from(n.max(1)).unwrap_or(u32::MAX));
    for (name, stop, n) in [
        ("sequentially started", &seq_stop, started),
        ("started 16 at a time", &par_stop, par.sessions.len()),
    ] {
        println!(
            "| {n} sessions ({name}) | {} | {} | {} |",
            ms(stop.cost.own),
            per(stop.cost.own, n),
            per(bare.stop.own, sessions)
        );
    }
    println!();
    let shutdowns = [
        (
            format!("baseline: SIGTERM {} bare guests + wait", 2 * sessions),
            bare.stop,
        ),
        (
            "baseline: bare guests in the runner's order".to_string(),
            ordered.stop,
        ),
        (
            format!("ours: {started} sessions (sequentially started)"),
            seq_stop.cost,
        ),
        (
            format!(
                "ours: {} sessions (started 16 at a time)",
                par.sessions.len()
            ),
            par_stop.cost,
        ),
    ];
    cpu_budget(&shutdowns, sessions);
}

/// Where the CPU of each shutdown went (this process, the rest of the
/// machine: the guests stopping), how busy that kept the machine's CPUs,
/// and what a shutdown within 1.2x of the bare one leaves for the runner
/// on this machine.
fn cpu_budget(shutdowns: &[(String, StopCost)], sessions: usize) {
    // The busy time covers every CPU of the machine; so does the share.
    let cpus = machine_cpus();
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    if usable != cpus {
        println!(
            "(this process may use {usable} of the machine's {cpus} CPUs: the CPU columns below count all {cpus}, other tenants' load included)"
        );
    }
    println!(
        "| shutdown, all at once: CPU | wall | the rest of the machine's CPU: the guests stopping (their exits, the kernel's teardown) | this process's CPU | both, as a share of {cpus} CPUs x wall |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, cost) in shutdowns {
        let share = (cost.own + cost.rest).as_secs_f64() / (cost.took.as_secs_f64() * cpus as f64);
        println!(
            "| {name} | {} | {} | {} | {:.0}% |",
            ms(cost.took),
            ms(cost.rest),
            ms(cost.own),
            100.0 * share
        );
    }
    let Some((
        _,
        StopCost {
            took: wall,
            rest: guests,
            ..
        },
    )) = shutdowns.first()
    else {
        return;
    };
    let budget = (wall.as_secs_f64() * 1.2 * cpus as f64 - guests.as_secs_f64()).max(0.0);
    println!();
    println!(
        "CPU left at 1.2x of the bare shutdown ({cpus} CPUs x {} x 1.2, minus the rest of the machine's {} then): {:.1} ms, {:.1} µs per session, for everything the runner does",
        ms(*wall),
        ms(*guests),
        budget * 1e3,
        budget * 1e6 / sessions.max(1) as f64
    );
}

/// The logs layer's share of a session's memory, measured on its own: 4
/// sinks per session, each fed by an idle pump on a pipe (what a session
/// with two quiet guests holds), resident memory after minus before, per
/// session, and the live heap's growth likewise.
async fn logs_layer_alone(dir: &Path, sessions: usize) -> (f64, f64) {
    use runner_core::config::LogLimits;
    use runner_core::logs::{LogPump, LogSink};
    use runner_types::LogStream;
    let before = vm_rss_kib();
    let heap_before = LIVE_HEAP.load(Relaxed);
    let mut held = Vec::new();
    for i in 0..sessions {
        let logs = dir.join(i.to_string());
        for role in [GuestRole::Runtime, GuestRole::Sidecar] {
            for stream in [LogStream::Stdout, LogStream::Stderr] {
                let sink = LogSink::open(&logs, role, stream, LogLimits::default()).expect("sink");
                let (r, w) = nix::unistd::pipe().expect("pipe");
                let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r).expect("pipe");
                held.push((LogPump::spawn(r, &sink), sink, w));
            }
        }
    }
    // Let every pump reach its first wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per = (vm_rss_kib().saturating_sub(before)) as f64 / sessions as f64;
    let heap = (LIVE_HEAP.load(Relaxed) - heap_before) as f64 / 1024.0 / sessions as f64;
    for (pump, _sink, w) in held {
        drop(w);
        pump.finish(BOUND).await;
    }
    (per, heap)
}

/// Raises the soft open-file limit to the hard one: each session holds a
/// few descriptors and each guest pipe another, beyond the usual 1024.
fn raise_fd_limit(sessions: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        eprintln!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
    let need = 30 * sessions as u64;
    if hard < need {
        eprintln!("warning: open-file limit {hard} may be too low for {sessions} sessions");
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio_row(name: &str, ours: Duration, base: Duration) {
    println!(
        "| {name} | {} | {} | {:.2}x |",
        ms(ours),
        ms(base),
        ours.as_secs_f64() / base.as_secs_f64()
    );
}

/// Starts `count` sessions named `<prefix><n>`, `parallel` at a time,
/// then waits until every guest has read its envelope.
async fn start_fleet(runner: &Runner, prefix: &str, parallel: usize, count: usize) -> Fleet {
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..count)
        .map(|i| {
            let user = format!("{prefix}{i}");
            async move {
                let t = Instant::now();
                let result = runner.start_session(&user).await;
                (t.elapsed(), result)
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    let returned = t.elapsed();
    let mut fleet = Fleet {
        sessions: Vec::with_capacity(count),
        failed: 0,
        first_error: None,
        calls: Vec::with_capacity(count),
        returned,
        ready: Duration::ZERO,
    };
    for (took, result) in results {
        fleet.calls.push(took);
        match result {
            Ok(s) => fleet.sessions.push(s),
            Err(e) => {
                fleet.failed += 1;
                fleet.first_error.get_or_insert_with(|| error_chain(&e));
            }
        }
    }
    let logs = fleet
        .sessions
        .iter()
        .flat_map(|s| {
            [GuestRole::Runtime, GuestRole::Sidecar].map(|r| stdout_log(s.workspace(), r))
        })
        .collect();
    wait_for_logs(logs, "envelope=", BOUND).await;
    fleet.ready = t.elapsed();
    fleet
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What shutting a fleet down took.
struct Stopped {
    cost: StopCost,
    failed: usize,
}

/// What a stop of this process's children cost (see [`StopMeter`]).
#[derive(Clone, Copy)]
struct StopCost {
    /// Until every stop returned.
    took: Duration,
    /// CPU time this process (every thread of the runner, log writers
    /// included) used meanwhile.
    own: Duration,
    /// The rest of the machine's busy CPU time meanwhile: the guests
    /// stopping.
    rest: Duration,
}

/// Measures a stop of this process's children: the wall time, this
/// process's CPU, and the rest of the machine's busy CPU time meanwhile:
/// the guests stopping (their exits and the kernel's teardown of each; on
/// a quiet machine nothing else runs).
struct StopMeter {
    start: Instant,
    own: Duration,
    busy: Duration,
}

impl StopMeter {
    fn start() -> Self {
        Self {
            own: own_cpu(),
            busy: machine_busy(),
            start: Instant::now(),
        }
    }

    fn finish(&self) -> StopCost {
        let took = self.start.elapsed();
        let own = own_cpu().saturating_sub(self.own);
        let rest = machine_busy().saturating_sub(self.busy).saturating_sub(own);
        StopCost { took, own, rest }
    }
}

/// Shuts every session down at once.
async fn stop_fleet(sessions: &[SessionHandle]) -> Stopped {
    let meter = StopMeter::start();
    let results = join_all(sessions.iter().map(|s| s.shutdown(BOUND))).await;
    Stopped {
        cost: meter.finish(),
        failed: results.iter().filter(|r| r.is_err()).count(),
    }
}

/// One persistent connection per socket; one untimed round that checks
/// every answer is a healthy `health_status` (and warms the connections),
/// then `rounds` timed rounds of one request per socket, in turn.
async fn health(sockets: &[PathBuf], rounds: usize) -> Vec<Duration> {
    let request = health_request_frame();
    let mut conns = Vec::with_capacity(sockets.len());
    for s in sockets {
        let mut conn = RawControlConn::connect(s).await.expect("connect");
        let answer = conn.round_trip(&request).await.expect("round trip");
        match serde_json::from_slice(answer).expect("health JSON") {
            ControlResponse::HealthStatus(h) => assert!(h.healthy, "{h:?}"),
            other => panic!("unexpected answer {other:?}"),
        }
        conns.push(conn);
    }
    let mut latencies = Vec::with_capacity(rounds * conns.len());
    for _ in 0..rounds {
        for conn in &mut conns {
            let t = Instant::now();
            tokio::time::timeout(BOUND, conn.round_trip(&request))
                .await
                .expect("answer in time")
                .expect("round trip");
            latencies.push(t.elapsed());
        }
    }
    latencies
}

/// How the bare baseline stops its guests.
#[derive(Clone, Copy, PartialEq)]
enum StopOrder {
    /// SIGTERM to every guest, then wait for all.
    AllAtOnce,
    /// Per session as the runner must: SIGTERM the runtime, wait for it,
    /// then the sidecar; all sessions at once.
    Ordered,
}

/// The baseline: 2 x `count` guests spawned directly, in session order
/// (sidecar, then runtime, for each session).
async fn bare_fleet(program: &Path, root: &Path, count: usize, order: StopOrder) -> Bare {
    let t = Instant::now();
    let mut plans = Vec::with_capacity(count);
    for i in 0..count {
        let user = UserId::new(format!("b{i}")).expect("user id");
        let ws = Workspace::provision(root, &user, &MountOverrides::default()).expect("workspace");
        let frames = [GuestRole::Sidecar, GuestRole::Runtime]
            .map(|r| (r, session_like_envelope_frame(&user, &ws, r)));
        plans.push((user, ws, frames));
    }
    let provisioned = t.elapsed();
    let t = Instant::now();
    let mut guests = Vec::with_capacity(2 * count);
    for (user, ws, frames) in &plans {
        for (role, frame) in frames {
            guests.push(BareGuest::spawn(program, *role, ws, user, frame).await);
        }
    }
    let spawned = t.elapsed();
    join_all(guests.iter_mut().map(|g| g.wait_envelope(BOUND))).await;
    let ready = t.elapsed();

    let meter = StopMeter::start();
    match order {
        StopOrder::AllAtOnce => {
            for g in &guests {
                g.terminate();
            }
            join_all(guests.iter_mut().map(|g| g.wait(BOUND))).await;
        }
        StopOrder::Ordered => {
            join_all(guests.chunks_mut(2).map(|pair| async move {
                let [sidecar, runtime] = pair else {
                    unreachable!("guests come in pairs")
                };
                runtime.terminate();
                runtime.wait(BOUND).await;
                sidecar.terminate();
                sidecar.wait(BOUND).await;
            }))
            .await;
        }
    }
    Bare {
        provisioned,
        spawned,
        ready,
        stop: meter.finish(),
    }
}
