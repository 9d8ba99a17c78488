//! Live feed: `follow` hands back the existing lines and then exactly the
//! bytes written after them; a follower that stops reading lags and never
//! slows the pump.

use runner_core::logs::{LineSplitter, LogPump, LogQuery, PumpEnd};
use runner_tests::logs::*;
use runner_types::LogStream;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Receives live chunks until `len` bytes arrived.
async fn receive(rx: &mut Receiver<bytes::Bytes>, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let chunk = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    got
}

#[tokio::test]
async fn follow_continues_exactly_where_the_lines_end() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(16, 4));
    let (mut guest, reader) = tokio::io::duplex(1024);
    let pump = LogPump::spawn(boxed(reader), &sink);
    let mut watcher = sink.subscribe();

    guest.write_all(b"one\ntwo\nthr").await.unwrap();
    receive(&mut watcher, 11).await;
    let (lines, mut live) = sink.follow(LogQuery::tail(10)).await.unwrap();
    assert_eq!(lines.lines, lines_of(b"one\ntwo\nthr"));

    guest.write_all(b"ee\nfour\n").await.unwrap();
    let more = receive(&mut live, 8).await;
    assert_eq!(more, b"ee\nfour\n");

    let mut splitter = LineSplitter::new(1024);
    assert_eq!(splitter.push(&more), lines_of(b"ee\nfour\n"));
    drop(guest);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));
    // Nothing was sent twice.
    assert!(matches!(live.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn a_stalled_follower_lags_and_the_pump_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let mut stalled = sink.subscribe();
    let mut watcher = sink.subscribe();
    let (mut guest, reader) = tokio::io::duplex(1024);
    let pump = LogPump::spawn(boxed(reader), &sink);
    // One chunk per write: wait for each to land before the next.
    for i in 0..100u8 {
        guest.write_all(&[i; 10]).await.unwrap();
        receive(&mut watcher, 10).await;
    }
    drop(guest);
    let report = pump.finish(WAIT).await;
    assert!(matches!(report.end, PumpEnd::Eof));
    assert_eq!(report.bytes_written, 1000);
    assert!(matches!(stalled.recv().await, Err(RecvError::Lagged(_))));
}

/// While someone follows, bytes are handed over as soon as they are read:
/// with a linger far longer than the test's bound, on both the copy path
/// and the splice path, a follower still gets every line (unfollowed, the
/// same pump would hold them for the whole linger).
#[tokio::test]
async fn a_followed_log_is_handed_over_without_lingering() {
    use runner_core::logs::PumpTuning;
    let tuning = PumpTuning {
        linger: std::time::Duration::from_secs(3600),
        ..PumpTuning::default()
    };
    // Copy path.
    let dir = tempfile::tempdir().unwrap();
    let out = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let mut live = out.subscribe();
    let (mut guest, reader) = tokio::io::duplex(1024);
    let pump = LogPump::spawn_tuned(boxed(reader), &out, tuning);
    for line in [&b"first\n"[..], b"second\n"] {
        guest.write_all(line).await.unwrap();
        assert_eq!(receive(&mut live, line.len()).await, line);
    }
    drop(guest);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));

    // Splice path: a real pipe.
    let err = sink(dir.path(), LogStream::Stderr, limits(1 << 20, 2));
    let mut live = err.subscribe();
    let (rx, tx) = std::io::pipe().unwrap();
    let pump = LogPump::spawn_tuned(piped(Ok(rx.into())), &err, tuning);
    let mut tx = std::fs::File::from(std::os::fd::OwnedFd::from(tx));
    for line in [&b"third\n"[..], b"fourth\n"] {
        std::io::Write::write_all(&mut tx, line).unwrap();
        assert_eq!(receive(&mut live, line.len()).await, line);
    }
    drop(tx);
    assert!(matches!(pump.finish(WAIT).await.end, PumpEnd::Eof));
}
