//! Log pump, drain mode: a busy guest pipe is drained by the sink's writer
//! thread itself. With real processes: byte-exact across rotations and EOF
//! while draining, the pipe given back when idle and taken again, a cut
//! while draining, a follower while draining, and a frozen file system
//! (the pump takes the pipe back from the stuck writer, drops and counts,
//! and the guest is never blocked).

use runner_core::config::LogLimits;
use runner_core::logs::{LogPump, LogQuery, LogSink, PumpEnd, PumpHandle, PumpTuning, read_gaps};
use runner_tests::logs::*;
use runner_tests::mount::{FreezableMount, MountPoint};
use runner_types::LogStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;

/// Tuning that makes drain mode certain once a guest writes more than a
/// small chunk: every chunk after the first bytes fills before its
/// (hour-long) linger.
fn eager_drain() -> PumpTuning {
    PumpTuning {
        pipe_chunk: 64 * 1024,
        linger: Duration::from_secs(3600),
        ..PumpTuning::default()
    }
}

/// Waits (bounded) until `done` holds for the sink's stats.
async fn wait_stats(
    sink: &LogSink,
    what: &str,
    done: impl Fn(&runner_core::logs::SinkStats) -> bool,
) {
    let start = Instant::now();
    while !done(&sink.stats()) {
        assert!(start.elapsed() < WAIT, "{what}: {:?}", sink.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_stream_is_byte_exact_across_rotations_to_eof() {
    let dir = tempfile::tempdir().unwrap();
    let (_, sink) = pump_noise_exactly(dir.path(), 5, eager_drain()).await;
    let stats = sink.stats();
    assert!(stats.drains >= 1, "drain mode never ran: {stats:?}");
    assert_eq!(stats.drains, stats.drain_returns, "{stats:?}");
}

/// Writes `bytes` pseudo-random bytes to a file named `name` in `dir`.
fn random_file(dir: &Path, name: &str, bytes: usize, seed: u32) -> PathBuf {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_given_back_and_drained_again_when_busy() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| {
            random_file(
                dir.path(),
                &format!("part{i}"),
                3 * MIB as usize + i,
                i as u32 + 1,
            )
        })
        .collect();
    let sink = sink(
        &dir.path().join("logs"),
        LogStream::Stdout,
        limits(2 * MIB, 10),
    );
    // The guest writes a part, then waits for a line on stdin (its pipe to
    // the log is idle meanwhile), and so on; the last part ends at EOF.
    let script = format!(
        "cat '{}'; read a; cat '{}'; read b; cat '{}'",
        parts[0].display(),
        parts[1].display(),
        parts[2].display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = piped(child.stdout.take().unwrap().into_owned_fd());
    let pump = LogPump::spawn_tuned(stdout, &sink, eager_drain());

    let mut before = 0;
    for _ in 0..2 {
        // Drained (again), then given back once the guest waits on stdin.
        wait_stats(&sink, "drained and given back", |s| {
            s.drains > before && s.drain_returns == s.drains
        })
        .await;
        before = sink.stats().drains;
        stdin.write_all(b"go\n").await.unwrap();
    }
    drop(stdin);
    let report = pump.finish(WAIT).await;
    assert!(child.wait().await.unwrap().success());
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    let stats = sink.stats();
    assert!(stats.drains > before, "{stats:?}");
    assert_eq!(stats.drain_returns, stats.drains, "{stats:?}");
    let mut expected = Vec::new();
    for p in &parts {
        expected.extend(std::fs::read(p).unwrap());
    }
    assert_eq!(report.bytes_written, expected.len() as u64);
    assert!(
        concatenated(sink.path()) == expected,
        "logs differ from the stream"
    );
}

/// A sink for stdout in `logs` with `limits`, fed by `yes` through a pump
/// tuned for drain mode; returns once the sink's writer drains the pipe and
/// has written more than a MiB.
async fn yes_in_drain_mode(
    logs: &Path,
    limits: LogLimits,
) -> (LogSink, tokio::process::Child, PumpHandle) {
    let sink = sink(logs, LogStream::Stdout, limits);
    let mut child = spawn_sh("exec yes");
    let stdout = piped(child.stdout.take().unwrap().into_owned_fd());
    let pump = LogPump::spawn_tuned(stdout, &sink, eager_drain());
    wait_stats(&sink, "drain mode", |s| {
        s.drains >= 1 && s.bytes_written > MIB
    })
    .await;
    (sink, child, pump)
}

/// `y\n` repeated: whatever prefix of it reached the log.
fn assert_yes_prefix(bytes: &[u8]) {
    let bad = bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b != if i % 2 == 0 { b'y' } else { b'\n' });
    assert_eq!(bad, None, "not `yes` output at {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_while_draining_keeps_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut child, pump) =
        yes_in_drain_mode(&dir.path().join("logs"), limits(4 * MIB, 100)).await;

    // The drain timeout runs out at once: the pump is stopped mid-drain.
    let report = pump.finish(Duration::ZERO).await;
    assert!(matches!(report.end, PumpEnd::Cut), "{report:?}");
    // The guest may already have died of SIGPIPE: its pipe's reader is gone.
    child.start_kill().ok();
    child.wait().await.unwrap();

    assert_eq!(report.bytes_dropped, 0, "{report:?}");
    assert_eq!(report.bytes_read, report.bytes_written, "{report:?}");
    let stats = sink.stats();
    assert_eq!(stats.drains, stats.drain_returns, "{stats:?}");
    let logged = concatenated(sink.path());
    assert_eq!(logged.len() as u64, report.bytes_written);
    assert_yes_prefix(&logged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_a_drained_stream_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut child, pump) =
        yes_in_drain_mode(&dir.path().join("logs"), limits(4 * MIB, 100)).await;

    let (lines, mut live) = sink.follow(LogQuery::tail(1)).await.unwrap();
    assert_eq!(lines.lines, vec![b"y".to_vec()]);
    // The feed continues the stream from the end of the last full line
    // (or in its middle, if the file ended mid-line).
    let mut seen = Vec::new();
    while seen.len() < 2 * MIB as usize {
        let chunk = tokio::time::timeout(WAIT, live.recv())
            .await
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
    child.kill().await.unwrap();
    let report = pump.finish(WAIT).await;
    assert!(
        matches!(report.end, PumpEnd::Eof | PumpEnd::Cut),
        "{report:?}"
    );
    let from = usize::from(seen.first() == Some(&b'\n'));
    assert_yes_prefix(&seen[from..]);
}

/// The disk hangs while a busy stream is drained by the writer: the writer
/// is stuck in a file write, the pump takes the guest's pipe back, queues
/// what fits and drops (and counts) the rest, so the guest goes on
/// writing. After the thaw everything is accounted for and the loss is a
/// gap record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_disk_never_stalls_a_drained_guest() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts");
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mount = FreezableMount::mount(
        &dir.path().join("img"),
        &dir.path().join("logs"),
        64,
        MountPoint::Create,
    );
    let (sink, mut child, pump) = yes_in_drain_mode(mount.path(), limits(8 * MIB, 2)).await;

    mount.freeze();
    // The guest keeps going: far more than the write queue holds is read
    // while the disk is frozen, the surplus dropped and counted.
    let frozen_at = pump.bytes_read();
    let start = Instant::now();
    while pump.bytes_read() < frozen_at + 256 * MIB {
        assert!(
            start.elapsed() < WAIT,
            "guest stalled by the frozen disk: {:?}",
            sink.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sink.stats();
    assert!(stats.drain_takeovers >= 1, "{stats:?}");
    assert!(stats.bytes_dropped > 0, "{stats:?}");

    child.kill().await.unwrap();
    mount.thaw();
    let report = pump.finish(WAIT).await;
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!(
        report.bytes_written + report.bytes_dropped,
        report.bytes_read,
        "{report:?}"
    );
    let gaps: u64 = read_gaps(sink.path())
        .unwrap()
        .iter()
        .map(|g| g.bytes)
        .sum::<u64>()
        + (1..=2)
            .map(|n| runner_core::logs::rotated_path(sink.path(), n))
            .filter(|p| p.exists())
            .map(|p| read_gaps(&p).unwrap().iter().map(|g| g.bytes).sum::<u64>())
            .sum::<u64>();
    // Gaps in files rotation has deleted are gone with them.
    assert!(
        gaps > 0 && gaps <= report.bytes_dropped,
        "{gaps} of {report:?}"
    );
    drop(sink);
    drop(mount);
}
