//! Session start and stop with two real demo guests through the process
//! backend.
//!
//! - start: from `Runner::start_session` until both guests have read their
//!   envelopes, i.e. until each guest's `<role>.stdout.log` contains its
//!   `envelope=` line. This covers workspace provisioning, the actor tree,
//!   four log pumps, both launches, the control socket, the bootstrap
//!   writes and the pumps copying the line into the files. A blocking
//!   thread waits on an inotify watch of the logs directory (set up before
//!   the clock) and reads a file again on each write to it, so it wakes as
//!   the line lands, as the baseline's pipe read does, and takes no CPU
//!   from the start while it waits.
//! - stop: `SessionHandle::shutdown` until it returns (listener stopped,
//!   runtime then sidecar SIGTERMed and reaped, pumps drained to EOF,
//!   actors stopped).
//!
//! Sessions are measured for a known user (its workspace and guest uid
//! exist: every session after the user's first) and, in one more row, for
//! a new user each round (provisioning creates the directories and the
//! guest uid is allocated and recorded durably, two fsyncs). The known
//! user's main row starts from removed log files (its sessions create
//! them); a second row keeps them, as a real user's logs are kept between
//! sessions, and looks for the lines past their old ends.
//!
//! Baseline: the same two guests spawned directly with `tokio::process`
//! (workspace provisioned beforehand, outside the clock), the same envelope
//! frames written to their stdin, `envelope=` read straight from their
//! stdout pipes; then SIGTERM to both and wait for both. The session stops
//! its guests in order (runtime, then sidecar, each awaited), so a second
//! stop baseline does that ordered work with the bare guests too: SIGTERM
//! the runtime, wait for it, SIGTERM the sidecar, wait for it. `ROUNDS`
//! samples each, interleaved, after one warm-up of each.
//!
//! With `--spans`, further rounds follow (a known user's session and a new
//! user's, `SPAN_ROUNDS` each, after the timed ones, so that recording
//! costs nothing in the rows above), in which a tracing layer records how
//! long each of the session's debug spans took (provisioning, lock, log files, actors,
//! launches, control socket, and each shutdown step) and prints their
//! medians, for known users' sessions and new users' first sessions apart
//! (a new user's provisioning allocates and durably records a uid, which
//! takes far longer): where the time goes, and when each span starts
//! (median offset from the start or stop call), which shows what overlaps.
//! `session.root`, `session.identity`, `session.workspace` and
//! `session.lock` are the parts of `session.provision`;
//! `session.log_sinks` and `session.control_bind` those of
//! `session.files`, which runs on the blocking pool while the guests launch
//! (`session.launch`, with `guest.backend_launch` and its parts
//! `process.checks`, `process.spawn`, `process.supervise`);
//! `session.files_wait` is how long the start then still waits for it.
//!
//! Run: `cargo run --release -p runner-bench --bin session_start [-- --spans]`.

use futures::future::join;
use runner_actors::Runner;
use runner_bench::{
    BareGuest, LogWatch, demo_guest_runner, median, ms, own_cpu, percentile,
    session_like_envelope_frame, short_tempdir, wait_for_logs_past,
};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{GuestRole, LogStream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const ROUNDS: usize = 60;
/// Rounds of each kind with spans recorded (`--spans`).
const SPAN_ROUNDS: usize = 20;
const BOUND: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    let want_spans = std::env::args().any(|a| a == "--spans");
    let guest = runner_tests::guest_binary("demo-guest");
    let dir = short_tempdir();
    let runner = demo_guest_runner(dir.path(), &guest);
    let bare_root = dir.path().join("bare");

    // The warm-up also makes "known" a user whose workspace and guest uid
    // already exist, as for every session after a user's first.
    ours(&runner, "known", OldLogs::Removed, None).await;
    bare(&guest, &bare_root, "warm", StopOrder::AtOnce).await;
    bare(&guest, &bare_root, "warm-o", StopOrder::Ordered).await;
    let (mut known, mut new, mut base, mut ordered, mut kept) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for i in 0..ROUNDS {
        known.push(ours(&runner, "known", OldLogs::Removed, None).await);
        base.push(bare(&guest, &bare_root, &format!("b{i}"), StopOrder::AtOnce).await);
        new.push(ours(&runner, &format!("s{i}"), OldLogs::Removed, None).await);
        kept.push(ours(&runner, "known", OldLogs::Kept, None).await);
        ordered.push(bare(&guest, &bare_root, &format!("o{i}"), StopOrder::Ordered).await);
    }

    println!(
        "session_start: two demo guests, {ROUNDS} rounds each, interleaved (medians, p90; ratio of medians)"
    );
    println!();
    println!("| benchmark | ours median | ours p90 | baseline median | baseline p90 | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    row(
        "start call returned (baseline: both spawned, frames written)",
        &mut known.returned,
        &mut base.returned,
    );
    row(
        "session start -> both envelopes read",
        &mut known.ready,
        &mut base.ready,
    );
    row(
        "session stop (shutdown until done; baseline: SIGTERM both at once, wait for both)",
        &mut known.stopped,
        &mut base.stopped,
    );
    row(
        "session stop (shutdown until done; baseline: SIGTERM runtime, wait, then sidecar, wait)",
        &mut known.stopped,
        &mut ordered.stopped,
    );
    row(
        "known user, logs kept from its last session: start -> both envelopes read",
        &mut kept.ready,
        &mut base.ready,
    );
    row(
        "first session of a new user: start -> both envelopes read",
        &mut new.ready,
        &mut base.ready,
    );
    println!();
    println!(
        "| CPU of this process per session, start call to stop done (guests excluded) | median | p90 |"
    );
    println!("| --- | --- | --- |");
    for (name, samples) in [
        ("known user (logs recreated)", &mut known.cpu),
        ("known user (logs kept)", &mut kept.cpu),
        ("new user's first session", &mut new.cpu),
        ("baseline: bare guests, stopped at once", &mut base.cpu),
        ("baseline: bare guests, stopped in order", &mut ordered.cpu),
    ] {
        println!(
            "| {name} | {} | {} |",
            ms(median(samples)),
            ms(percentile(samples, 90.0))
        );
    }
    if want_spans {
        // Rounds of their own, after the timed ones: recording spans costs
        // the runner time the baseline does not pay.
        let spans = SpanTimes::install();
        for i in 0..SPAN_ROUNDS {
            spans.set_kind(SessionKind::Known);
            ours(&runner, "known", OldLogs::Removed, Some(&spans)).await;
            spans.set_kind(SessionKind::New);
            ours(&runner, &format!("t{i}"), OldLogs::Removed, Some(&spans)).await;
        }
        spans.print();
    }
}

/// Which sessions the spans being recorded belong to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum SessionKind {
    /// A known user's session (its workspace and guest uid exist).
    #[default]
    Known,
    /// A new user's first session.
    New,
}

/// Span durations, and their start's offset from the start (or stop) call
/// they belong to, by kind of session and span key.
type SpanSamples = BTreeMap<(SessionKind, String), (Vec<Duration>, Vec<Duration>)>;

/// Wall time of every closed span of the runner's crates, by the kind of
/// session and by name (and role, where the span has one).
#[derive(Clone, Default)]
struct SpanTimes {
    times: Arc<Mutex<SpanSamples>>,
    kind: Arc<Mutex<SessionKind>>,
    /// When the current start (or stop) call began.
    phase: Arc<Mutex<Option<Instant>>>,
}

/// When a span was created, its offset from its phase's start, and its key.
struct Opened(Instant, Duration, String);

impl SpanTimes {
    fn install() -> Self {
        let times = Self::default();
        let subscriber = tracing_subscriber::registry().with(times.clone());
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        times
    }

    /// Spans closing from now on count for `kind`.
    fn set_kind(&self, kind: SessionKind) {
        *self.kind.lock().expect("span kind") = kind;
    }

    /// A start or stop call begins now: later spans' offsets count from here.
    fn mark_phase(&self) {
        *self.phase.lock().expect("span phase") = Some(Instant::now());
    }

    fn print(&self) {
        let mut times = self.times.lock().expect("span times");
        for (kind, title) in [
            (SessionKind::Known, "known user's session"),
            (SessionKind::New, "new user's first session"),
        ] {
            println!();
            println!(
                "| span ({title}) | count | median | p90 | median start (from the start or stop call) |"
            );
            println!("| --- | --- | --- | --- | --- |");
            for ((_, name), (samples, offsets)) in times.iter_mut().filter(|((k, _), _)| *k == kind)
            {
                let count = samples.len();
                println!(
                    "| `{name}` | {count} | {} | {} | {} |",
                    ms(median(samples)),
                    ms(percentile(samples, 90.0)),
                    ms(median(offsets))
                );
            }
        }
    }
}

/// Appends the `role` field to a span's key.
struct RoleField<'a>(&'a mut String);

impl tracing::field::Visit for RoleField<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "role" {
            self.0.push_str(&format!(" {value:?}"));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanTimes
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        meta.is_span() && meta.target().starts_with("runner_")
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut key = attrs.metadata().name().to_owned();
        attrs.record(&mut RoleField(&mut key));
        let now = Instant::now();
        let phase = *self.phase.lock().expect("span phase");
        let offset = phase.map_or(Duration::ZERO, |p| now.saturating_duration_since(p));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened(now, offset, key));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(Opened(at, offset, key)) = span.extensions().get::<Opened>() {
            let kind = *self.kind.lock().expect("span kind");
            let mut times = self.times.lock().expect("span times");
            let (took, offsets) = times.entry((kind, key.clone())).or_default();
            took.push(at.elapsed());
            offsets.push(*offset);
        }
    }
}

/// One sample of each phase, measured from the start of its phase.
struct Sample {
    returned: Duration,
    ready: Duration,
    stopped: Duration,
    /// CPU time of this process from the start call until the stop is
    /// done (its guests excluded).
    cpu: Duration,
}

#[derive(Default)]
struct Samples {
    returned: Vec<Duration>,
    ready: Vec<Duration>,
    stopped: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Samples {
    fn push(&mut self, s: Sample) {
        self.returned.push(s.returned);
        self.ready.push(s.ready);
        self.stopped.push(s.stopped);
        self.cpu.push(s.cpu);
    }
}

fn row(name: &str, ours: &mut [Duration], base: &mut [Duration]) {
    let (om, bm) = (median(ours), median(base));
    println!(
        "| {name} | {} | {} | {} | {} | {:.2}x |",
        ms(om),
        ms(percentile(ours, 90.0)),
        ms(bm),
        ms(percentile(base, 90.0)),
        om.as_secs_f64() / bm.as_secs_f64()
    );
}

/// What a session finds in its user's `logs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldLogs {
    /// Removed before the start (outside the clock): the session creates
    /// its log files.
    Removed,
    /// Kept, as a known user's logs are between sessions: the session
    /// appends, and only what lies past their old ends counts.
    Kept,
}

/// One session: start call, until both envelopes are in the logs, shutdown.
async fn ours(runner: &Runner, user: &str, old: OldLogs, spans: Option<&SpanTimes>) -> Sample {
    let mark = || spans.inspect(|s| s.mark_phase());
    // A known user's logs hold the last session's `envelope=` lines: only
    // this session's count.
    let dir = runner.config().workspace_root.join(user).join("logs");
    if old == OldLogs::Removed
        && let Ok(entries) = std::fs::read_dir(&dir)
    {
        for entry in entries {
            std::fs::remove_file(entry.expect("log dir entry").path()).expect("old log removed");
        }
    }
    let logs: Vec<(PathBuf, u64)> = [GuestRole::Runtime, GuestRole::Sidecar]
        .map(|r| {
            let path = dir.join(LogStream::Stdout.file_name(r));
            let end = std::fs::metadata(&path).map_or(0, |m| m.len());
            (path, end)
        })
        .to_vec();
    let watch = LogWatch::on([dir.as_path()]);
    mark();
    let cpu = own_cpu();
    let t = Instant::now();
    let session = runner.start_session(user).await.expect("start session");
    let returned = t.elapsed();
    wait_for_logs_past(watch, logs, "envelope=", BOUND).await;
    let ready = t.elapsed();

    mark();
    let t = Instant::now();
    let report = session.shutdown(BOUND).await.expect("shutdown");
    let stopped = t.elapsed();
    let cpu = own_cpu().saturating_sub(cpu);
    assert!(report.cut_streams.is_empty(), "{report:?}");
    Sample {
        returned,
        ready,
        stopped,
        cpu,
    }
}

/// How the baseline stops its two guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopOrder {
    /// SIGTERM both, then wait for both.
    AtOnce,
    /// SIGTERM the runtime and wait for it, then the same for the sidecar:
    /// the order a session stops its guests in.
    Ordered,
}

/// The baseline: spawn both (frames written), until both envelopes are
/// read, then stop both in `order` until both are reaped.
async fn bare(program: &Path, root: &Path, user: &str, order: StopOrder) -> Sample {
    let user = UserId::new(user).expect("user id");
    let ws = Workspace::provision(root, &user, &MountOverrides::default()).expect("workspace");
    let side_frame = session_like_envelope_frame(&user, &ws, GuestRole::Sidecar);
    let run_frame = session_like_envelope_frame(&user, &ws, GuestRole::Runtime);

    let cpu = own_cpu();
    let t = Instant::now();
    let mut sidecar = BareGuest::spawn(program, GuestRole::Sidecar, &ws, &user, &side_frame).await;
    let mut runtime = BareGuest::spawn(program, GuestRole::Runtime, &ws, &user, &run_frame).await;
    let returned = t.elapsed();
    join(sidecar.wait_envelope(BOUND), runtime.wait_envelope(BOUND)).await;
    let ready = t.elapsed();

    let t = Instant::now();
    match order {
        StopOrder::AtOnce => {
            runtime.terminate();
            sidecar.terminate();
            join(runtime.wait(BOUND), sidecar.wait(BOUND)).await;
        }
        StopOrder::Ordered => {
            runtime.terminate();
            runtime.wait(BOUND).await;
            sidecar.terminate();
            sidecar.wait(BOUND).await;
        }
    }
    let stopped = t.elapsed();
    Sample {
        returned,
        ready,
        stopped,
        cpu: own_cpu().saturating_sub(cpu),
    }
}
