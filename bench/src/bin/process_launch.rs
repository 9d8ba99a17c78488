//! Process-tier launch latency: from the `launch` call until the guest has
//! read its bootstrap envelope (the demo guest prints `ack` right after).
//!
//! Two modes:
//! - **one session** (no argument): each guest is stopped after its sample,
//!   outside the measurement. Baseline: a bare `tokio::process::Command`
//!   spawn of the same binary with the same arguments (std uses
//!   `posix_spawn` for it), writing the same frame to its stdin, until
//!   `ack`. `ROUNDS` of each, interleaved, in one process.
//! - **`--live N`**: every guest launched through the backend stays alive
//!   (one per session, N in the end), and with each round the process also
//!   holds `--ballast-kib K` (default 110, the runner's measured memory per
//!   session) more touched memory and `--ballast-fds F` (default 5) more
//!   open descriptors, so the process grows the way a runner hosting N
//!   sessions does (each round's guest holds 3 more: its stdout and stderr
//!   pipes and its pidfd; the runner measures about 8 per session). Each round launches one guest three ways,
//!   interleaved: through the backend, the bare `posix_spawn` baseline, and
//!   a bare spawn with an empty `pre_exec` hook (which makes std `fork` the
//!   whole process: how the backend launched before); the two bare guests
//!   are killed after their sample. It reports the median of the first and
//!   of the last 50 launches of each. `--no-fork` leaves the fork series out
//!   (a fork write-protects the whole process's memory, and whatever runs
//!   next pays for the faults).
//!
//! Run: `cargo run --release -p runner-bench --bin process_launch [-- --live 1000]`.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use runner_bench::{bench_spec, median, ms, percentile};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::config::GuestCommand;
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SandboxTier,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Child;

const ROUNDS: usize = 50;
/// First and last launches compared in `--live` mode.
const WINDOW: usize = 50;
const BOUND: Duration = Duration::from_secs(10);
const GUEST_ARGS: [&str; 2] = ["--heartbeat-ms", "600000"];

/// Everything both modes launch with.
struct Setup {
    guest: PathBuf,
    _dir: tempfile::TempDir,
    frame: Vec<u8>,
    backend: ProcessBackend,
    spec: LaunchSpec,
    bare_args: Vec<String>,
}

/// How a bare baseline guest is spawned.
#[derive(Clone, Copy)]
enum Bare {
    /// std's `posix_spawn` path.
    PosixSpawn,
    /// std's `fork` path (forced by a `pre_exec` hook).
    Fork,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let setup = Setup::new();
    match flag(&args, "--live") {
        None => one_session(&setup).await,
        Some(n) => {
            let ballast = Ballast {
                kib: flag(&args, "--ballast-kib").unwrap_or(110),
                fds: flag(&args, "--ballast-fds").unwrap_or(5),
            };
            let with_fork = !args.iter().any(|a| a == "--no-fork");
            live(&setup, n, ballast, with_fork).await
        }
    }
}

/// The number after `name`, if given.
fn flag(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    let value = args
        .get(i + 1)
        .unwrap_or_else(|| panic!("{name} needs a number"));
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} {value}: not a number")),
    )
}

impl Setup {
    fn new() -> Self {
        let guest = runner_tests::guest_binary("demo-guest");
        let dir = tempfile::tempdir().expect("temp dir");
        let user = UserId::new("bench").expect("user id");
        let workspace =
            Workspace::provision(dir.path(), &user, &MountOverrides::default()).expect("workspace");
        let envelope = envelope(&workspace, &user);
        let frame = envelope.to_frame().expect("frame");
        // Captures the rlimits now, before `--live` raises the open-file limit.
        let backend = ProcessBackend::new(ProcessBackendConfig {
            runtime: GuestCommand {
                program: guest.clone(),
                args: GUEST_ARGS.iter().map(|s| s.to_string()).collect(),
                env: BTreeMap::new(),
            },
            sidecar: None,
            search_path: None,
        });
        let bare_args = GUEST_ARGS
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--user-id".into(),
                user.to_string(),
                "--workspace-root".into(),
                workspace.workspace_root.to_string_lossy().into_owned(),
                "--bootstrap-stdin".into(),
            ])
            .collect();
        let spec = bench_spec(GuestRole::Runtime, &user, &workspace, envelope);
        Self {
            guest,
            _dir: dir,
            frame,
            backend,
            spec,
            bare_args,
        }
    }

    async fn ours(&self) -> (Duration, LaunchedGuest) {
        ours(&self.backend, &self.spec).await
    }

    async fn bare(&self, how: Bare) -> (Duration, Child) {
        bare(&self.guest, &self.bare_args, &self.frame, how).await
    }
}

async fn one_session(setup: &Setup) {
    // Warm up both paths (page cache, lazy runtime setup).
    stop(setup.ours().await.1).await;
    setup
        .bare(Bare::PosixSpawn)
        .await
        .1
        .kill()
        .await
        .expect("kill");

    let mut backend_samples = Vec::with_capacity(ROUNDS);
    let mut bare_samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let (took, guest) = setup.ours().await;
        backend_samples.push(took);
        stop(guest).await;
        let (took, mut child) = setup.bare(Bare::PosixSpawn).await;
        bare_samples.push(took);
        child.kill().await.expect("kill");
    }
    let ours_med = median(&mut backend_samples);
    let ours_p90 = percentile(&backend_samples, 90.0);
    let bare_med = median(&mut bare_samples);
    let bare_p90 = percentile(&bare_samples, 90.0);
    let ratio = ours_med.as_secs_f64() / bare_med.as_secs_f64();
    println!("process_launch: launch -> envelope read (`ack`), {ROUNDS} rounds each, interleaved");
    println!("  ProcessBackend::launch   median {ours_med:?}  p90 {ours_p90:?}");
    println!("  bare tokio Command       median {bare_med:?}  p90 {bare_p90:?}");
    println!("  ratio (median)           {ratio:.2}x (goal <= 1.05x)");
    println!();
    println!("| benchmark | ours median | ours p90 | baseline median | baseline p90 | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| process_launch (launch -> envelope read) | {} | {} | {} | {} | {ratio:.2}x |",
        ms(ours_med),
        ms(ours_p90),
        ms(bare_med),
        ms(bare_p90)
    );
}

/// Launch times of one series in `--live` mode.
struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str, n: usize) -> Self {
        Self {
            name,
            samples: Vec::with_capacity(n),
        }
    }

    /// Medians of the first and last [`WINDOW`] launches, and their ratio.
    fn row(&self) -> String {
        let n = self.samples.len();
        let w = WINDOW.min(n);
        let first = median(&mut self.samples[..w].to_vec());
        let last = median(&mut self.samples[n - w..].to_vec());
        let ratio = last.as_secs_f64() / first.as_secs_f64();
        format!(
            "| {} | {} | {} | {ratio:.2}x |",
            self.name,
            ms(first),
            ms(last)
        )
    }
}

/// What each `--live` round adds to the process besides its guest.
#[derive(Clone, Copy)]
struct Ballast {
    kib: usize,
    fds: usize,
}

async fn live(setup: &Setup, n: usize, per_round: Ballast, with_fork: bool) {
    raise_open_file_limit();
    let mut ours = Series::new("ProcessBackend::launch", n);
    let mut posix = Series::new("bare spawn (posix_spawn)", n);
    let mut fork = Series::new("bare spawn with pre_exec (fork)", n);
    let mut guests = Vec::with_capacity(n);
    let mut ballast: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut held: Vec<std::fs::File> = Vec::with_capacity(n * per_round.fds);
    let rss_start = runner_bench::vm_rss_kib();
    for _ in 0..n {
        // Touched, so that it is really resident (and fork must copy its
        // page tables).
        ballast.push(vec![1u8; per_round.kib * 1024]);
        for _ in 0..per_round.fds {
            held.push(std::fs::File::open("/dev/null").expect("open /dev/null"));
        }
        let (took, guest) = setup.ours().await;
        ours.samples.push(took);
        guests.push(guest);
        let bare = [(&mut posix, Bare::PosixSpawn), (&mut fork, Bare::Fork)];
        for (series, how) in bare.into_iter().take(if with_fork { 2 } else { 1 }) {
            let (took, mut child) = setup.bare(how).await;
            series.samples.push(took);
            child.kill().await.expect("kill");
        }
    }
    let rss_end = runner_bench::vm_rss_kib();
    let fds_end = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    println!(
        "process_launch --live {n}: launch -> envelope read (`ack`), backend guests kept alive, \
         +{} KiB touched and +{} descriptors held per round; RSS {rss_start} -> {rss_end} KiB, \
         {fds_end} descriptors open at the end",
        per_round.kib, per_round.fds
    );
    println!();
    println!("| series | median of first {WINDOW} | median of last {WINDOW} | last / first |");
    println!("| --- | --- | --- | --- |");
    for series in [&ours, &posix, &fork] {
        if !series.samples.is_empty() {
            println!("{}", series.row());
        }
    }
    let stops = guests.into_iter().map(stop);
    futures::future::join_all(stops).await;
    drop(ballast);
    drop(held);
}

/// Room for every live guest's pipes (the backend's guests get the limit
/// captured before this).
fn raise_open_file_limit() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise RLIMIT_NOFILE");
}

async fn stop(guest: LaunchedGuest) {
    guest.control.stop(BOUND).await.expect("stop");
}

/// One launch through the backend, timed until `ack`.
async fn ours(backend: &ProcessBackend, spec: &LaunchSpec) -> (Duration, LaunchedGuest) {
    let start = Instant::now();
    let mut guest: LaunchedGuest = backend.launch(spec.clone()).await.expect("launch");
    let i = guest
        .outputs
        .iter()
        .position(|o| o.stream == LogStream::Stdout)
        .expect("stdout captured");
    let mut stdout = BufReader::new(guest.outputs.remove(i).reader);
    wait_for_ack(&mut stdout).await;
    (start.elapsed(), guest)
}

/// The baseline: spawn, write the frame, close stdin, read until `ack`.
async fn bare(program: &Path, args: &[String], frame: &[u8], how: Bare) -> (Duration, Child) {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Bare::Fork = how {
        force_fork(&mut cmd);
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(frame).await.expect("write frame");
    drop(stdin);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_ack(&mut stdout).await;
    (start.elapsed(), child)
}

/// An empty `pre_exec` hook: std can then no longer use `posix_spawn`.
#[allow(unsafe_code)]
fn force_fork(cmd: &mut tokio::process::Command) {
    // SAFETY: the hook does nothing, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
}

async fn wait_for_ack(reader: &mut BufReader<impl AsyncRead + Unpin>) {
    let mut line = String::new();
    tokio::time::timeout(BOUND, reader.read_line(&mut line))
        .await
        .expect("ack in time")
        .expect("read stdout");
    assert_eq!(line, "ack\n", "demo guest prints ack first");
}

/// An envelope of realistic size and shape.
fn envelope(ws: &Workspace, user: &UserId) -> BootstrapEnvelope {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    BootstrapEnvelope {
        user_id: user.to_string(),
        sandbox_tier: SandboxTier::Process,
        workspace_root: s(&ws.workspace_root),
        sidecar_endpoint: None,
        runtime_policy: Some(RuntimePolicy {
            mounts: ResolvedMounts {
                shared: s(&ws.shared),
                tmp: s(&ws.tmp),
                vault: s(&ws.vault),
            },
            resources: ResourceLimits::default(),
            credential_refs: BTreeMap::from([("github".into(), "vault:gh".into())]),
        }),
        startup_status: None,
    }
}
