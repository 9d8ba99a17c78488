//! The pump's linger batches a busy stream's writes, never a quiet
//! stream's first bytes: with a linger far longer than the test's bound,
//! the first line after a quiet spell still reaches the (unfollowed) log
//! file, on the copy path and on the splice path. Later bytes of the same
//! burst are batched, and the end of the stream hands them over.

use runner_core::logs::{LogPump, LogSink, PumpEnd, PumpTuning};
use runner_tests::logs::*;
use runner_types::LogStream;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn hour_linger() -> PumpTuning {
    PumpTuning {
        linger: Duration::from_secs(3600),
        ..PumpTuning::default()
    }
}

/// Waits (bounded) until the sink's file holds exactly `want`.
async fn wait_for_file(sink: &LogSink, want: &[u8]) {
    let start = Instant::now();
    loop {
        let now = std::fs::read(sink.path()).unwrap_or_default();
        if now == want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "log holds {:?}",
            String::from_utf8_lossy(&now)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_streams_first_bytes_are_not_held_back() {
    // Copy path.
    let dir = tempfile::tempdir().unwrap();
    let out = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let (mut guest, reader) = tokio::io::duplex(1024);
    let pump = LogPump::spawn_tuned(boxed(reader), &out, hour_linger());
    guest.write_all(b"envelope=1\n").await.unwrap();
    wait_for_file(&out, b"envelope=1\n").await;
    guest.write_all(b"more\n").await.unwrap();
    drop(guest);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));
    assert_eq!(std::fs::read(out.path()).unwrap(), b"envelope=1\nmore\n");

    // Splice path: a real pipe.
    let err = sink(dir.path(), LogStream::Stderr, limits(1 << 20, 2));
    let (rx, tx) = std::io::pipe().unwrap();
    let pump = LogPump::spawn_tuned(piped(Ok(rx.into())), &err, hour_linger());
    let mut tx = std::fs::File::from(std::os::fd::OwnedFd::from(tx));
    tx.write_all(b"envelope=2\n").unwrap();
    wait_for_file(&err, b"envelope=2\n").await;
    tx.write_all(b"more\n").unwrap();
    drop(tx);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));
    assert_eq!(std::fs::read(err.path()).unwrap(), b"envelope=2\nmore\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_pipes_first_few_writes_all_reach_the_file_at_once() {
    // A guest's start-up lines are often separate writes microseconds
    // apart (the demo guest's `ack` then `envelope=`): with an hour-long
    // linger, each of the first few still reaches the file at once.
    let dir = tempfile::tempdir().unwrap();
    let out = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let (rx, tx) = std::io::pipe().unwrap();
    let pump = LogPump::spawn_tuned(piped(Ok(rx.into())), &out, hour_linger());
    let mut tx = std::fs::File::from(std::os::fd::OwnedFd::from(tx));
    let mut want = Vec::new();
    for line in ["ack\n", "envelope=3\n", "third\n", "fourth\n"] {
        tx.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
        wait_for_file(&out, &want).await;
    }
    // From here on the stream counts as busy: its bytes are batched, and
    // the end of the stream hands them over.
    tx.write_all(b"fifth\n").unwrap();
    drop(tx);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));
    want.extend_from_slice(b"fifth\n");
    assert_eq!(std::fs::read(out.path()).unwrap(), want);
}
