//! Log pump throughput: a writer pushes 1 GiB into a pipe as fast as it can
//! (`head -c 1073741824 /dev/zero`); we measure how fast our pump moves it
//! into the rotating log file, against `cat` copying the same kind of pipe
//! to a file, in the same run. Also the runner's CPU seconds per GiB while
//! pumping (getrusage of this process: all its threads).
//!
//! The pump only reads and queues; each log's writer thread writes (so
//! the CPU figure includes that thread). Variants: default rotation (10 MiB files, 5 kept: ~100 rotations per
//! GiB, what a real chatty guest gets) and one file large enough to never
//! rotate. Five rounds, the order rotating between rounds, each run after
//! a `sync`; median and best reported (the machine is shared and noisy, so
//! the best run shows what the code can do, the median what it did). The runtime is multi-threaded with two workers, like the
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
    let stdout = child
        .stdout
        .take()
        .expect("stdout")
        .into_owned_fd()
        .expect("fd");
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).expect("pipe");
    let pump = LogPump::spawn(stdout, &sink);
    let report = pump.finish(Duration::from_secs(100)).await;
    let wall = start.elapsed();
    let used = cpu(UsageWho::RUSAGE_SELF) - cpu_before;
    let status = child.wait().await.expect("wait head");
    assert!(status.success(), "head failed: {status}");
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    // The write queue drops what it cannot hold rather than stall the
    // pipe; a run that lost bytes says so (and is slower than it looks).
    assert_eq!(report.bytes_written + report.bytes_dropped, BYTES);
    if report.bytes_dropped > 0 {
        eprintln!(
            "  ({} bytes dropped: the writer fell behind)",
            report.bytes_dropped
        );
    }
    std::fs::remove_dir_all(&logs).expect("remove logs");
    (wall, used)
}

fn mib_per_s(wall: Duration) -> f64 {
    (BYTES as f64 / (1 << 20) as f64) / wall.as_secs_f64()
}

fn cpu_per_gib(cpu: Duration) -> f64 {
    cpu.as_secs_f64() / (BYTES as f64 / (1u64 << 30) as f64)
}

/// One contender's runs.
#[derive(Default)]
struct Series {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Series {
    fn push(&mut self, (wall, cpu): (Duration, Duration)) {
        self.wall.push(wall);
        self.cpu.push(cpu);
    }

    /// Median and best throughput (MiB/s), median CPU (s/GiB).
    fn summary(&mut self) -> (f64, f64, f64) {
        let best = self.wall.iter().min().copied().unwrap_or_default();
        (
            mib_per_s(median(&mut self.wall)),
            mib_per_s(best),
            cpu_per_gib(median(&mut self.cpu)),
        )
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let rotating = LogLimits::default();
    let one_file = LogLimits {
        max_file_bytes: 2 * BYTES,
        max_files: 1,
    };
    let (mut cat, mut rot, mut big) = (Series::default(), Series::default(), Series::default());
    for round in 0..ROUNDS {
        // Rotate the order so no contender always runs first; each run
        // starts with no dirty pages left by the previous one.
        for slot in 0..3 {
            nix::unistd::sync();
            match (round + slot) % 3 {
                0 => cat.push(run_cat(dir.path())),
                1 => rot.push(runtime.block_on(run_pump(dir.path(), rotating))),
                _ => big.push(runtime.block_on(run_pump(dir.path(), one_file))),
            }
        }
        eprintln!(
            "round {}: cat {:.0} MiB/s, pump (rotating) {:.0} MiB/s, pump (one file) {:.0} MiB/s",
            round + 1,
            mib_per_s(cat.wall[round]),
            mib_per_s(rot.wall[round]),
            mib_per_s(big.wall[round])
        );
    }
    let (cat_med, cat_best, cat_cpu) = cat.summary();
    let (rot_med, rot_best, rot_cpu) = rot.summary();
    let (big_med, big_best, big_cpu) = big.summary();
    println!(
        "log_pump: 1 GiB from `head -c 1G /dev/zero` through a pipe into a file, {ROUNDS} rounds"
    );
    println!("  (median / best MiB/s; ratio to cat of medians / of bests; CPU median s/GiB)");
    println!(
        "  cat > file (baseline):        {cat_med:6.0} / {cat_best:6.0}                      head+cat CPU {cat_cpu:.2}"
    );
    for (name, med, best, cpu) in [
        ("pump, rotating 10 MiB x 5:", rot_med, rot_best, rot_cpu),
        ("pump, one file:           ", big_med, big_best, big_cpu),
    ] {
        println!(
            "  {name}    {med:6.0} / {best:6.0}   ratio {:.2} / {:.2}   runner CPU {cpu:.2}",
            med / cat_med,
            best / cat_best
        );
    }
    println!();
    println!(
        "| bench | workload | baseline (cat) median / best | ours median / best | ratio (medians / bests) | runner CPU |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, med, best, cpu) in [
        ("rotating 10 MiB × 5", rot_med, rot_best, rot_cpu),
        ("one file", big_med, big_best, big_cpu),
    ] {
        println!(
            "| log_pump | 1 GiB pipe → log, {name} | {cat_med:.0} / {cat_best:.0} MiB/s | {med:.0} / {best:.0} MiB/s | {:.2}× / {:.2}× | {cpu:.2} s/GiB |",
            med / cat_med,
            best / cat_best
        );
    }
}
