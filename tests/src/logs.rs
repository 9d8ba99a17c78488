//! Shared fixtures of the `logs_*` tests: the noise guest, reference output
//! files, comparing a rotated log with a reference byte for byte, and one
//! whole byte-exact pump run ([`pump_noise_exactly`]).

use runner_core::config::LogLimits;
use runner_core::logs::{
    GuestReader, GuestStream, LogPump, LogSink, PumpEnd, PumpReport, PumpTuning, rotated_path,
};
use runner_types::{GuestRole, LogStream};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncRead;

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

const MIB: u64 = 1 << 20;

/// Bytes the noise guest writes in a [`pump_noise_exactly`] run.
pub const EXACT_NOISE_BYTES: u64 = 24 * MIB + 777;

/// Log file cap of a [`pump_noise_exactly`] run: no multiple of a page or
/// a chunk, so most rotations happen in the middle of a chunk.
pub const EXACT_NOISE_CAP: u64 = MIB + 12_345;

/// Path of the noise guest (built once per test process).
pub fn noise_guest() -> PathBuf {
    crate::guest_binary("noise-guest")
}

/// Log limits.
pub fn limits(max_file_bytes: u64, max_files: u32) -> LogLimits {
    LogLimits {
        max_file_bytes,
        max_files,
    }
}

/// A sink for the runtime guest's `stream` in `dir`.
pub fn sink(dir: &Path, stream: LogStream, limits: LogLimits) -> LogSink {
    LogSink::open(dir, GuestRole::Runtime, stream, limits).unwrap()
}

/// Boxes a stream the way backends hand them over.
pub fn boxed(reader: impl AsyncRead + Send + 'static) -> GuestReader {
    Box::pin(reader)
}

/// A child's piped stdout or stderr as the plain pipe the process backend
/// hands over (the pump splices it).
pub fn piped(fd: std::io::Result<std::os::fd::OwnedFd>) -> GuestStream {
    GuestStream::Pipe(tokio::net::unix::pipe::Receiver::from_owned_fd(fd.unwrap()).unwrap())
}

/// Runs the noise guest with `args`, stdout and stderr redirected straight
/// to files by the kernel: the expected bytes of each stream.
pub fn reference_output(args: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("reference.stdout");
    let err = dir.join("reference.stderr");
    let status = std::process::Command::new(noise_guest())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "reference run failed: {status}");
    (out, err)
}

/// Starts the noise guest with piped stdout and stderr.
pub fn spawn_noise(args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(noise_guest());
    cmd.args(args).stderr(Stdio::piped());
    spawn_piped(cmd)
}

/// Starts `sh -c script` with piped stdout (stderr discarded).
pub fn spawn_sh(script: &str) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", script]).stderr(Stdio::null());
    spawn_piped(cmd)
}

/// Spawns `cmd` with no stdin and piped stdout, killed when dropped.
fn spawn_piped(mut cmd: tokio::process::Command) -> tokio::process::Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A log file and its rotations that exist, oldest first.
pub fn rotated_files(base: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| rotated_path(base, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    if base.exists() {
        files.push(base.to_path_buf());
    }
    files
}

/// The bytes of a log file and its rotations, concatenated oldest first.
pub fn concatenated(base: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in rotated_files(base) {
        all.extend(std::fs::read(f).unwrap());
    }
    all
}

/// Fills `buf` as far as the reader allows; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

/// Asserts that `parts`, concatenated, hold exactly the bytes of
/// `reference`, streaming both (no whole-file reads).
pub fn assert_same_stream(reference: &Path, parts: &[PathBuf]) {
    let mut expected = File::open(reference).unwrap();
    let mut actual: Box<dyn Read> = Box::new(std::io::empty());
    for p in parts {
        actual = Box::new(actual.chain(File::open(p).unwrap()));
    }
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut expected, &mut a);
        let m = read_full(&mut actual, &mut b);
        if let Some(i) = a[..n.min(m)].iter().zip(&b[..m]).position(|(x, y)| x != y) {
            panic!("logs differ from the stream at byte {}", offset + i as u64);
        }
        assert_eq!(n, m, "logs and stream differ in length after byte {offset}");
        if n == 0 {
            return;
        }
        offset += n as u64;
    }
}

/// Pumps [`EXACT_NOISE_BYTES`] of the noise guest's stdout (seeded with
/// `seed`) through a pump tuned with `tuning` into a sink in `<dir>/logs`
/// capped at [`EXACT_NOISE_CAP`] (40 files), to EOF. Asserts what every
/// such run must hold: the guest succeeded, the pump ended at EOF having
/// read and written every byte, every byte was spliced, the file rotated
/// once per cap, and the log and its rotations are the guest's stream byte
/// for byte. Returns the report and the sink for the caller's own checks.
pub async fn pump_noise_exactly(
    dir: &Path,
    seed: u32,
    tuning: PumpTuning,
) -> (PumpReport, LogSink) {
    let total = EXACT_NOISE_BYTES;
    let total_arg = total.to_string();
    let seed_arg = seed.to_string();
    // Odd write sizes: guest pipe pages hold partial pages, and chunks end
    // mid-page.
    let args = [
        "--stdout-bytes",
        total_arg.as_str(),
        "--seed",
        seed_arg.as_str(),
        "--chunk",
        "4097",
    ];
    let (reference, _) = reference_output(&args, dir);
    let cap = EXACT_NOISE_CAP;
    let sink = sink(&dir.join("logs"), LogStream::Stdout, limits(cap, 40));
    let mut child = spawn_noise(&args);
    let stdout = piped(child.stdout.take().unwrap().into_owned_fd());
    let report = LogPump::spawn_tuned(stdout, &sink, tuning)
        .finish(WAIT)
        .await;
    assert!(child.wait().await.unwrap().success());

    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!((report.bytes_read, report.bytes_written), (total, total));
    let stats = sink.stats();
    assert_eq!(stats.bytes_spliced, total, "every byte spliced: {stats:?}");
    assert_eq!(stats.rotations, total / cap);
    assert_same_stream(&reference, &rotated_files(sink.path()));
    (report, sink)
}

/// Wall-clock ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Splits bytes into lines the way the reader does.
pub fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}
