//! Log pump throughput: a writer pushes 1 GiB into a pipe as fast as it can
//! (`head -c 1073741824 /dev/zero`); we measure how fast our pump moves it
//! into the rotating log file, against `cat` copying the same kind of pipe
//! to a file, in the same run. Also the runner's CPU seconds per GiB while
//! pumping (getrusage of this process: all its threads).
//!
//! Variants: default rotation (10 MiB files, 5 kept: ~100 rotations per
//! GiB, what a real chatty guest gets) and one file large enough to never
//! rotate. Five rounds, interleaved, each run after a `sync`; medians
//! reported. The runtime is multi-threaded with two workers, like the
//! daemon's on this two-core machine.

use nix::sys::resource::{UsageWho, getrusage};
use runner_bench::median;
use runner_core::config::LogLimits;
use runner_core::logs::{LogPump, LogSink, PumpEnd};
use runner_types::{GuestRole, LogStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BYTES: u64 = 1 << 30;
const ROUNDS: usize = 5;

/// User + system CPU time of `who` so far.
fn cpu(who: UsageWho) -> Duration {
    let usage = getrusage(who).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    secs(usage.user_time()) + secs(usage.system_time())
}

/// `head … | cat > file`: wall time and the pipeline's CPU time.
fn run_cat(dir: &Path) -> (Duration, Duration) {
    let out = dir.join("cat.out");
    let script = format!("head -c {BYTES} /dev/zero | cat > '{}'", out.display());
    let cpu_before = cpu(UsageWho::RUSAGE_CHILDREN);
    let start = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run sh");
    let wall = start.elapsed();
    assert!(status.success(), "cat pipeline failed: {status}");
    assert_eq!(std::fs::metadata(&out).expect("cat output").len(), BYTES);
    std::fs::remove_file(&out).expect("remove cat output");
    (wall, cpu(UsageWho::RUSAGE_CHILDREN) - cpu_before)
}

/// `head …` into our pump: wall time and this process's CPU time.
async fn run_pump(dir: &Path, limits: LogLimits) -> (Duration, Duration) {
    let logs = dir.join("logs");
    let sink = LogSink::open(&logs, GuestRole::Runtime, LogStream::Stdout, limits).expect("sink");
    let cpu_before = cpu(UsageWho::RUSAGE_SELF);
    let start = Instant::now();
    let mut child = tokio::process::Command::new("head")
        .args(["-c", &BYTES.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn head");
    let pump = LogPump::spawn(Box::pin(child.stdout.take().expect("stdout")), &sink);
    let report = pump.finish(Duration::from_secs(100)).await;
    let wall = start.elapsed();
    let used = cpu(UsageWho::RUSAGE_SELF) - cpu_before;
    let status = child.wait().await.expect("wait head");
    assert!(status.success(), "head failed: {status}");
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!(report.bytes_written, BYTES);
    std::fs::remove_dir_all(&logs).expect("remove logs");
    (wall, used)
}

fn mib_per_s(wall: Duration) -> f64 {
    (BYTES as f64 / (1 << 20) as f64) / wall.as_secs_f64()
}

fn cpu_per_gib(cpu: Duration) -> f64 {
    cpu.as_secs_f64() / (BYTES as f64 / (1u64 << 30) as f64)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let default = LogLimits::default();
    let unrotated = LogLimits {
        max_file_bytes: 2 * BYTES,
        max_files: 1,
    };
    let (mut cat_wall, mut cat_cpu) = (Vec::new(), Vec::new());
    let (mut rot_wall, mut rot_cpu) = (Vec::new(), Vec::new());
    let (mut big_wall, mut big_cpu) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Each run starts with no dirty pages left by the previous one.
        nix::unistd::sync();
        let (w, c) = run_cat(dir.path());
        cat_wall.push(w);
        cat_cpu.push(c);
        nix::unistd::sync();
        let (w, c) = runtime.block_on(run_pump(dir.path(), default));
        rot_wall.push(w);
        rot_cpu.push(c);
        nix::unistd::sync();
        let (w, c) = runtime.block_on(run_pump(dir.path(), unrotated));
        big_wall.push(w);
        big_cpu.push(c);
        eprintln!(
            "round {}: cat {:.0} MiB/s, pump (rotating) {:.0} MiB/s, pump (one file) {:.0} MiB/s",
            round + 1,
            mib_per_s(cat_wall[round]),
            mib_per_s(rot_wall[round]),
            mib_per_s(big_wall[round])
        );
    }
    let cat = mib_per_s(median(&mut cat_wall));
    let rot = mib_per_s(median(&mut rot_wall));
    let big = mib_per_s(median(&mut big_wall));
    let rot_cpu = cpu_per_gib(median(&mut rot_cpu));
    let big_cpu = cpu_per_gib(median(&mut big_cpu));
    let cat_cpu = cpu_per_gib(median(&mut cat_cpu));
    println!(
        "log_pump: 1 GiB from `head -c 1G /dev/zero` through a pipe into a file (median of {ROUNDS})"
    );
    println!(
        "  cat > file (baseline):            {cat:8.0} MiB/s   (head+cat CPU {cat_cpu:.2} s/GiB)"
    );
    println!(
        "  pump, rotating 10 MiB x 5:        {rot:8.0} MiB/s   ratio {:.2}x   runner CPU {rot_cpu:.2} s/GiB",
        rot / cat
    );
    println!(
        "  pump, one file (no rotation):     {big:8.0} MiB/s   ratio {:.2}x   runner CPU {big_cpu:.2} s/GiB",
        big / cat
    );
    println!();
    println!("| bench | workload | baseline (cat) | ours | ratio | runner CPU |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| log_pump | 1 GiB pipe → log, rotating 10 MiB × 5 | {cat:.0} MiB/s | {rot:.0} MiB/s | {:.2}× | {rot_cpu:.2} s/GiB |",
        rot / cat
    );
    println!(
        "| log_pump | 1 GiB pipe → log, one file | {cat:.0} MiB/s | {big:.0} MiB/s | {:.2}× | {big_cpu:.2} s/GiB |",
        big / cat
    );
}
