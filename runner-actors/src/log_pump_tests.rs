//! The pump handle against real pipes and real log files.

use super::LogPumpHandle;
use runner_core::config::LogLimits;
use runner_core::logs::LogSink;
use runner_types::{GuestRole, LogStream};
use std::io::ErrorKind;
use std::time::Duration;
use tokio::net::unix::pipe;

const BOUND: Duration = Duration::from_secs(10);

/// The runtime's stdout log in `dir`.
fn sink(dir: &tempfile::TempDir) -> LogSink {
    LogSink::open(
        dir.path(),
        GuestRole::Runtime,
        LogStream::Stdout,
        LogLimits::default(),
    )
    .expect("sink")
}

fn handle(dir: &tempfile::TempDir) -> LogPumpHandle {
    LogPumpHandle::new(GuestRole::Runtime, LogStream::Stdout, sink(dir))
}

fn logs_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    dir
}

/// Attaches a new pipe's read end; returns its write end.
fn attach_pipe(pumps: &LogPumpHandle) -> pipe::Sender {
    let (tx, rx) = pipe::pipe().expect("pipe");
    pumps.attach(rx.into());
    tx
}

/// Writes until the pipe's read end is closed (its copy task ended):
/// bounded, and fails the test if the reader stays open.
async fn wait_reader_closed(tx: &pipe::Sender) {
    let closed = async {
        loop {
            tx.writable().await.expect("writable");
            match tx.try_write(b"x") {
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("unexpected write error: {e}"),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(BOUND, closed)
        .await
        .expect("the copy task ended and closed the pipe");
}

#[tokio::test]
async fn drain_waits_for_eof_and_keeps_every_byte() {
    let dir = logs_dir();
    let pumps = handle(&dir);
    let tx = attach_pipe(&pumps);
    tx.writable().await.expect("writable");
    tx.try_write(b"last words\n").expect("write");
    drop(tx);
    let drained = pumps.drain(BOUND).await;
    assert!(!drained.cut && !drained.writes_stuck, "{drained:?}");
    let logged = std::fs::read_to_string(pumps.sink().expect("open").path()).expect("log file");
    assert!(logged.contains("last words"), "{logged:?}");
    assert_eq!(pumps.running(), 0);
}

#[tokio::test]
async fn drain_cuts_a_stream_still_open_at_its_timeout() {
    let dir = logs_dir();
    let pumps = handle(&dir);
    let tx = attach_pipe(&pumps);
    let drained = pumps.drain(Duration::from_millis(50)).await;
    assert!(drained.cut, "{drained:?}");
    wait_reader_closed(&tx).await;
}

#[tokio::test]
async fn stop_ends_copy_tasks_and_drops_later_streams() {
    let dir = logs_dir();
    let pumps = handle(&dir);
    let first = attach_pipe(&pumps);
    assert_eq!(pumps.running(), 1);
    pumps.stop();
    wait_reader_closed(&first).await;
    let late = attach_pipe(&pumps);
    assert_eq!(pumps.running(), 0);
    wait_reader_closed(&late).await;
}

#[tokio::test]
async fn dropping_every_clone_ends_copy_tasks() {
    // What happens when a supervisor dies without a shutdown: its state,
    // and with it every handle, is dropped.
    let dir = logs_dir();
    let pumps = handle(&dir);
    let copy = pumps.clone();
    let tx = attach_pipe(&pumps);
    drop(pumps);
    drop(copy);
    wait_reader_closed(&tx).await;
}

#[tokio::test]
async fn output_written_before_the_sink_opened_is_logged_byte_exact_and_in_order() {
    let dir = logs_dir();
    let pumps = LogPumpHandle::unopened(GuestRole::Runtime, LogStream::Stdout);
    // Two launches' streams, both attached and written to before the sink
    // exists: invalid UTF-8, no final newline.
    let mut want = Vec::new();
    for bytes in [&b"first \xff\xfe launch\n"[..], b"second \x80 no newline"] {
        let tx = attach_pipe(&pumps);
        tx.writable().await.expect("writable");
        assert_eq!(tx.try_write(bytes).expect("write"), bytes.len());
        want.extend_from_slice(bytes);
    }
    assert_eq!(pumps.running(), 0, "no copy before the sink opens");
    assert!(pumps.sink().is_none());

    pumps.open_with(sink(&dir));
    let drained = pumps.drain(BOUND).await;
    assert!(!drained.cut && !drained.writes_stuck, "{drained:?}");
    let logged = std::fs::read(pumps.sink().expect("open").path()).expect("log file");
    assert_eq!(logged, want);
}

#[tokio::test]
async fn a_stream_waiting_for_a_sink_that_never_opens_is_closed_by_the_drain() {
    // A failed start: the guest launched, its log could not be opened.
    let pumps = LogPumpHandle::unopened(GuestRole::Sidecar, LogStream::Stderr);
    let tx = attach_pipe(&pumps);
    let drained = pumps.drain(BOUND).await;
    assert_eq!(drained, super::Drained::default());
    wait_reader_closed(&tx).await;
}
