//! Shared helpers for the benchmark binaries in `src/bin/`.
//!
//! Each binary measures one thing against a baseline in the same run and
//! prints a Markdown table row that goes into `docs/BENCHMARKS.md`.
//!
//! Besides the statistics, this holds what the session-level benchmarks
//! share: a process backend running the demo guest in both roles, the
//! "bare" baseline (the same guest spawned directly with the same bootstrap
//! frame), waiting for a guest's `envelope=` line in a log file or on a
//! pipe, a raw control-socket connection that measures the server and not
//! client-side JSON decoding, and the runner's resident memory.

mod log_watch;

pub use log_watch::LogWatch;
use runner_core::backend::LaunchSpec;
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::bootstrap::{EnvelopeParams, build_envelope, insecure_process_tier};
use runner_core::config::{GuestCommand, UserConfig};
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResourceLimits, SandboxTier, SidecarEndpoint,
    SidecarTransport,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdout, Command};

/// The launch of `role` for `user` that the start benchmarks measure: in
/// session `bench`, with `envelope`, and no uid mapping, extra environment
/// or resource limits.
pub fn bench_spec(
    role: GuestRole,
    user: &UserId,
    workspace: &Workspace,
    envelope: BootstrapEnvelope,
) -> LaunchSpec {
    LaunchSpec {
        run_as: None,
        role,
        user_id: user.clone(),
        session_id: "bench".into(),
        workspace: workspace.clone(),
        envelope,
        extra_env: BTreeMap::new(),
        resources: ResourceLimits::default(),
    }
}

/// A runner on the built-in defaults for `dir` whose only backend is
/// [`demo_guest_backend`] for `program`.
pub fn demo_guest_runner(dir: &Path, program: &Path) -> runner_actors::Runner {
    runner_actors::Runner::new(
        runner_core::config::RunnerConfig::defaults(dir),
        runner_actors::Backends::new().with(std::sync::Arc::new(demo_guest_backend(program))),
    )
}

/// A runner with `config` whose only backend runs this benchmark binary
/// itself, re-executed with `flag`, as the runtime guest (no sidecar).
pub fn self_exec_runner(
    config: runner_core::config::RunnerConfig,
    flag: &str,
) -> runner_actors::Runner {
    let exe = std::env::current_exe().expect("own path");
    let backend = runner_core::backend::process::ProcessBackend::new(
        runner_core::backend::process::ProcessBackendConfig {
            runtime: runner_core::config::GuestCommand {
                program: exe,
                args: vec![flag.into()],
                env: std::collections::BTreeMap::new(),
            },
            sidecar: None,
            search_path: None,
        },
    );
    runner_actors::Runner::new(
        config,
        runner_actors::Backends::new().with(std::sync::Arc::new(backend)),
    )
}

/// Percentile (0..=100) of a sorted sample.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median of an unsorted sample.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    percentile(samples, 50.0)
}

/// `d` in milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// A temporary directory directly under `/tmp`, so that Unix socket paths
/// inside workspaces below it stay far from the 107-byte limit.
pub fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rb")
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp")
}

/// This process's resident set size (`VmRSS` in `/proc/self/status`), in KiB.
pub fn vm_rss_kib() -> u64 {
    proc_status("VmRSS").expect("VmRSS line in /proc/self/status")
}

/// A numeric field of `/proc/self/status` (`VmRSS`, `VmPTE`, `Threads`,
/// ...), without its unit; `None` if absent.
pub fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Arguments every benchmarked demo guest gets before its `--role`: a
/// heartbeat so rare that an idle guest prints nothing after start-up.
pub const QUIET_GUEST_ARGS: [&str; 2] = ["--heartbeat-ms", "600000"];

/// The demo guest at `program` as `role`, with [`QUIET_GUEST_ARGS`].
pub fn demo_guest_command(program: &Path, role: GuestRole) -> GuestCommand {
    let mut args: Vec<String> = QUIET_GUEST_ARGS.iter().map(|s| s.to_string()).collect();
    args.extend(["--role".into(), role.to_string()]);
    GuestCommand {
        program: program.to_path_buf(),
        args,
        env: BTreeMap::new(),
    }
}

/// A process backend running the demo guest at `program` as both runtime
/// and sidecar.
pub fn demo_guest_backend(program: &Path) -> ProcessBackend {
    ProcessBackend::new(ProcessBackendConfig {
        runtime: demo_guest_command(program, GuestRole::Runtime),
        sidecar: Some(demo_guest_command(program, GuestRole::Sidecar)),
        search_path: None,
    })
}

/// The `<role>.stdout.log` file of a session's workspace.
pub fn stdout_log(workspace: &Workspace, role: GuestRole) -> PathBuf {
    workspace.logs.join(LogStream::Stdout.file_name(role))
}

/// Waits (on a blocking thread) until every file in `paths` contains
/// `needle`, woken by writes to them (see [`LogWatch`]); panics on timeout.
pub async fn wait_for_logs(paths: Vec<PathBuf>, needle: &'static str, timeout: Duration) {
    let watch = LogWatch::on(paths.iter().filter_map(|p| p.parent()));
    let files = paths.into_iter().map(|p| (p, 0)).collect();
    wait_for_logs_past(watch, files, needle, timeout).await;
}

/// Waits (on a blocking thread) until each file holds `needle` past its
/// offset, woken through `watch` (set up before any clock starts), then
/// closes the watch off the caller's path; panics on timeout.
pub async fn wait_for_logs_past(
    mut watch: LogWatch,
    files: Vec<(PathBuf, u64)>,
    needle: &'static str,
    timeout: Duration,
) {
    let waited = tokio::task::spawn_blocking(move || {
        let waited = watch.wait(&files, needle, timeout);
        watch.close_in_background();
        waited
    })
    .await
    .expect("log waiter thread");
    if let Err(path) = waited {
        panic!("{} has no {needle:?} after {timeout:?}", path.display());
    }
}

/// User plus system CPU time of this process so far (all its threads,
/// ended ones included; not its children).
pub fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    micros(usage.user_time()) + micros(usage.system_time())
}

/// CPU time all of the machine's CPUs have spent busy so far (user,
/// nice, system, irq and softirq time from the first line of
/// `/proc/stat`, in clock ticks of 10 ms; idle, I/O wait and the time the
/// hypervisor gave to others left out). Read from one file: nothing per
/// process is looked up, so reading it changes nothing about how
/// processes exit (looking up `/proc/<pid>` for every guest would leave
/// cached entries that the kernel then has to drop as each one is reaped).
pub fn machine_busy() -> Duration {
    let stat = proc_stat();
    let cpu = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user, nice, system, (idle, iowait), irq, softirq
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Duration::from_nanos(busy.saturating_mul(1_000_000_000 / per_second))
}

/// How many CPUs the first line of `/proc/stat` adds up (its `cpuN`
/// lines): what [`machine_busy`] covers, which may be more than this
/// process may use (an affinity mask or a container's CPU limit).
pub fn machine_cpus() -> usize {
    proc_stat()
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
        .max(1)
}

/// The kernel's CPU counters.
fn proc_stat() -> String {
    std::fs::read_to_string("/proc/stat").expect("/proc/stat")
}

/// The envelope a session would hand `role` of `user` (process tier, the
/// sidecar endpoint in the runtime's), for the bare baseline.
pub fn session_like_envelope_frame(
    user: &UserId,
    workspace: &Workspace,
    role: GuestRole,
) -> Vec<u8> {
    let endpoint = SidecarEndpoint {
        transport: SidecarTransport::Unix,
        address: workspace.sidecar_socket().to_string_lossy().into_owned(),
    };
    let user_config = UserConfig {
        shell_enabled: true,
        ..UserConfig::default()
    };
    build_envelope(EnvelopeParams {
        user,
        tier: SandboxTier::Process,
        role,
        workspace,
        user_config: &user_config,
        sidecar_endpoint: (role == GuestRole::Runtime).then_some(endpoint),
        sidecar_running: true,
        degraded_reasons: vec![insecure_process_tier(false)],
    })
    .to_frame()
    .expect("envelope frame")
}

/// A demo guest spawned directly (the baseline): no process group, no log
/// pump, the inherited environment.
pub struct BareGuest {
    /// The child.
    pub child: Child,
    /// Its stdout, buffered.
    pub stdout: BufReader<ChildStdout>,
}

impl BareGuest {
    /// Spawns the demo guest at `program` as `role` for `user` with the
    /// runner's own flags, writes `frame` to its stdin and closes it.
    pub async fn spawn(
        program: &Path,
        role: GuestRole,
        workspace: &Workspace,
        user: &UserId,
        frame: &[u8],
    ) -> Self {
        let mut child = Command::new(program)
            .args(demo_guest_command(program, role).args)
            .arg("--user-id")
            .arg(user.as_str())
            .arg("--workspace-root")
            .arg(&workspace.workspace_root)
            .arg("--bootstrap-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bare guest");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(frame).await.expect("write frame");
        drop(stdin);
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, stdout }
    }

    /// Reads stdout until the `envelope=` line (bounded by `timeout`).
    pub async fn wait_envelope(&mut self, timeout: Duration) {
        let read = async {
            let mut line = String::new();
            loop {
                line.clear();
                let n = self
                    .stdout
                    .read_line(&mut line)
                    .await
                    .expect("read guest stdout");
                assert!(n > 0, "guest closed stdout before its envelope line");
                if line.starts_with("envelope=") {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .expect("envelope line in time");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("guest not reaped yet");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGTERM,
        )
        .expect("SIGTERM bare guest");
    }

    /// Waits (bounded) for the guest to exit.
    pub async fn wait(&mut self, timeout: Duration) {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("bare guest exits in time")
            .expect("wait bare guest");
    }
}

/// The `health_check` request as a complete frame.
pub fn health_request_frame() -> Vec<u8> {
    let payload = serde_json::to_vec(&runner_types::ControlRequest::HealthCheck).expect("json");
    runner_types::frame::encode(&payload, runner_types::frame::MAX_CONTROL_FRAME).expect("frame")
}

/// A control connection that writes pre-encoded request frames and reads
/// raw response frames without decoding them, so that round trips measure
/// the server rather than client-side JSON parsing.
pub struct RawControlConn {
    stream: BufReader<UnixStream>,
    body: Vec<u8>,
}

impl RawControlConn {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            stream: BufReader::new(UnixStream::connect(path).await?),
            body: Vec::new(),
        })
    }

    /// Sends `request` and reads one response frame; returns its payload.
    pub async fn round_trip(&mut self, request: &[u8]) -> std::io::Result<&[u8]> {
        self.stream.get_mut().write_all(request).await?;
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).await?;
        self.body.resize(u32::from_be_bytes(head) as usize, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(&self.body)
    }
}

/// This process's open file descriptors by kind (`pipe`, `socket`,
/// `anon_inode:[pidfd]`, ... and `file` for paths), for telling where
/// descriptors go.
pub fn open_fd_kinds() -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd") {
        let Ok(target) = std::fs::read_link(entry.expect("fd entry").path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = if target.starts_with('/') {
            "file".to_string()
        } else {
            // `pipe:[123]`, `socket:[456]`, `anon_inode:[eventfd]`
            match target.split_once(":[") {
                Some((k, rest)) if k == "anon_inode" => format!("{k}:[{rest}"),
                Some((k, _)) => k.to_string(),
                None => target.into_owned(),
            }
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// How many file descriptors this process has open (`/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}
