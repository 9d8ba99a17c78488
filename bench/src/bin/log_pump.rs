//! Log pump throughput: a producer pushes 2 GiB into a pipe as fast as it
//! can; we measure how fast our pump moves it into the rotating log file
//! on tmpfs, against `cat` copying the same producer's pipe into a file on
//! the same tmpfs, in the same run. Also the runner's CPU seconds per GiB
//! while pumping (getrusage of this process: all its threads).
//!
//! Workloads: zeros (`head -c 2G /dev/zero`) and 100-byte text lines
//! (`yes <99 characters> | head -c 2G`). Each is run quiet and with a
//! second CPU-bound process spinning for the whole series. Pairs are
//! interleaved (cat, pump / pump, cat alternately), each run after a
//! `sync`; the reported ratio is the median of the per-pair ratios. The
//! pump uses the default rotation (10 MiB × 5) and the process backend's
//! way of handing over a stream (a pipe, spliced; a stream this busy is
//! drained by the sink's writer thread itself). The runtime is
//! multi-threaded with two workers, like the daemon's on this two-core
//! machine. Each pair is followed by a bare splice loop doing the same job
//! (`run_floor`): the CPU the kernel itself charges for it.
//!
//! `log_pump [GiB] [pairs] [rows]` (defaults 2, 5 and every row). `rows`
//! picks rows by comma-separated tags, all of which must match: `zeros`,
//! `lines`, `quiet`, `hog` (for example `zeros,quiet`, for profiling one
//! row).

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use runner_bench::{median, own_cpu};
use runner_core::config::LogLimits;
use runner_core::logs::{LogPump, LogSink, PumpEnd, rotated_path};
use runner_types::{GuestRole, LogStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Zeros,
    Lines,
}

impl Workload {
    fn producer(self, bytes: u64) -> String {
        match self {
            Self::Zeros => format!("head -c {bytes} /dev/zero"),
            Self::Lines => format!("yes {} | head -c {bytes}", "x".repeat(99)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Zeros => "zeros",
            Self::Lines => "100-byte lines",
        }
    }
}

/// `producer | cat > file`: wall time.
fn run_cat(dir: &Path, work: Workload, bytes: u64) -> Duration {
    let out = dir.join("cat.out");
    let script = format!("{} | cat > '{}'", work.producer(bytes), out.display());
    let start = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run sh");
    let wall = start.elapsed();
    assert!(status.success(), "cat pipeline failed: {status}");
    assert_eq!(std::fs::metadata(&out).expect("cat output").len(), bytes);
    std::fs::remove_file(&out).expect("remove cat output");
    wall
}

/// `producer` into our pump: wall time and this process's CPU time.
async fn run_pump(dir: &Path, work: Workload, bytes: u64) -> (Duration, Duration) {
    let logs = dir.join("logs");
    let sink = LogSink::open(
        &logs,
        GuestRole::Runtime,
        LogStream::Stdout,
        LogLimits::default(),
    )
    .expect("sink");
    let cpu_before = own_cpu();
    let start = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &work.producer(bytes)])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn producer");
    let stdout = child.stdout.take().expect("stdout");
    let stdout = stdout.into_owned_fd().expect("stdout fd");
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).expect("pipe");
    let report = LogPump::spawn(stdout, &sink)
        .finish(Duration::from_secs(300))
        .await;
    let wall = start.elapsed();
    let used = own_cpu() - cpu_before;
    let status = child.wait().await.expect("wait producer");
    assert!(status.success(), "producer failed: {status}");
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!(report.bytes_written + report.bytes_dropped, bytes);
    if report.bytes_dropped > 0 {
        eprintln!(
            "  ({} bytes dropped: the writer fell behind)",
            report.bytes_dropped
        );
    }
    let stats = sink.stats();
    assert!(
        report.bytes_written > 0,
        "nothing reached the log: {report:?}"
    );
    assert_eq!(
        stats.bytes_spliced, report.bytes_written,
        "every byte spliced"
    );
    if stats.drains == 0 {
        eprintln!("  (the stream never went into drain mode)");
    }
    drop(sink);
    std::fs::remove_dir_all(&logs).expect("remove logs");
    (wall, used)
}

/// The kernel's own share of the job: `producer` spliced straight into
/// the log file by a bare loop on this thread (splices of at most 1 MiB
/// from a 1 MiB pipe, the same rotation by unlink and rename; no queue,
/// no index, no threads): this process's CPU time. The pump's CPU is read
/// against it: what the pump costs beyond it is the pump's own.
fn run_floor(dir: &Path, work: Workload, bytes: u64) -> Duration {
    let logs = dir.join("floor");
    std::fs::create_dir(&logs).expect("floor dir");
    let base = logs.join("floor.log");
    let limits = LogLimits::default();
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .expect("open floor log")
    };
    let cpu_before = own_cpu();
    let mut child = Command::new("sh")
        .args(["-c", &work.producer(bytes)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn producer");
    let pipe = child.stdout.take().expect("stdout");
    fcntl(&pipe, FcntlArg::F_SETPIPE_SZ(1 << 20)).expect("pipe size");
    let (mut file, mut len, mut total) = (open(&base), 0u64, 0u64);
    loop {
        if len == limits.max_file_bytes {
            let oldest = rotated_path(&base, limits.max_files);
            std::fs::remove_file(&oldest)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .expect("remove oldest");
            for n in (1..=limits.max_files).rev() {
                let from = rotated_path(&base, n - 1);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&base, n)).expect("rotate");
                }
            }
            (file, len) = (open(&base), 0);
        }
        let want = (limits.max_file_bytes - len).min(1 << 20) as usize;
        match splice(&pipe, None, &file, None, want, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(0) => break,
            Ok(n) => (len, total) = (len + n as u64, total + n as u64),
            Err(Errno::EINTR) => {}
            Err(e) => panic!("floor splice: {e}"),
        }
    }
    let used = own_cpu() - cpu_before;
    assert!(child.wait().expect("wait producer").success());
    assert_eq!(total, bytes);
    std::fs::remove_dir_all(&logs).expect("remove floor logs");
    used
}

/// A process spinning on one core until dropped.
struct Hog(std::process::Child);

impl Hog {
    fn start() -> Self {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn hog");
        Self(child)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill() {
            eprintln!("cannot kill the CPU hog: {e}");
        }
        if let Err(e) = self.0.wait() {
            eprintln!("cannot reap the CPU hog: {e}");
        }
    }
}

/// One configuration's results.
struct Series {
    cat: Vec<Duration>,
    pump: Vec<Duration>,
    cpu: Vec<Duration>,
    floor: Vec<Duration>,
    ratios: Vec<f64>,
}

fn series(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    work: Workload,
    bytes: u64,
    pairs: usize,
) -> Series {
    let mut s = Series {
        cat: Vec::new(),
        pump: Vec::new(),
        cpu: Vec::new(),
        floor: Vec::new(),
        ratios: Vec::new(),
    };
    for pair in 0..pairs {
        let cat = || {
            nix::unistd::sync();
            run_cat(dir, work, bytes)
        };
        let pump = || {
            nix::unistd::sync();
            rt.block_on(run_pump(dir, work, bytes))
        };
        let (c, (p, used)) = if pair % 2 == 0 {
            let c = cat();
            (c, pump())
        } else {
            let p = pump();
            (cat(), p)
        };
        // Throughput ratio = inverse time ratio.
        s.ratios.push(c.as_secs_f64() / p.as_secs_f64());
        s.cat.push(c);
        s.pump.push(p);
        s.cpu.push(used);
        nix::unistd::sync();
        s.floor.push(run_floor(dir, work, bytes));
    }
    s
}

fn mib_per_s(bytes: u64, wall: Duration) -> f64 {
    (bytes as f64 / (1 << 20) as f64) / wall.as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().map_or(2, |a| a.parse().expect("GiB"));
    let pairs: usize = args.next().map_or(5, |a| a.parse().expect("pairs"));
    let rows = args.next().unwrap_or_default();
    let bytes = gib << 30;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir on tmpfs");
    println!(
        "log_pump: {gib} GiB through a pipe into a log on tmpfs, {pairs} interleaved pairs per row"
    );
    println!(
        "| workload | other load | cat median | pump median | ratio (median of pairs) | ratio range | runner CPU median | bare splice loop CPU median |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for hog in [false, true] {
        for work in [Workload::Zeros, Workload::Lines] {
            let tags = [
                if work == Workload::Zeros {
                    "zeros"
                } else {
                    "lines"
                },
                if hog { "hog" } else { "quiet" },
            ];
            if !rows.split(',').all(|t| t.is_empty() || tags.contains(&t)) {
                continue;
            }
            let _hog = hog.then(Hog::start);
            let mut s = series(&runtime, dir.path(), work, bytes, pairs);
            let mut ratios = s.ratios.clone();
            ratios.sort_by(f64::total_cmp);
            let ratio = ratios[ratios.len() / 2];
            let cpu_per_gib = median(&mut s.cpu).as_secs_f64() / gib as f64;
            let floor_per_gib = median(&mut s.floor).as_secs_f64() / gib as f64;
            println!(
                "| {} | {} | {:.0} MiB/s | {:.0} MiB/s | {ratio:.2}× | {:.2}–{:.2}× | {cpu_per_gib:.2} s/GiB | {floor_per_gib:.2} s/GiB |",
                work.name(),
                if hog { "1 CPU-bound process" } else { "none" },
                mib_per_s(bytes, median(&mut s.cat)),
                mib_per_s(bytes, median(&mut s.pump)),
                ratios[0],
                ratios[ratios.len() - 1],
            );
        }
    }
}
