//! Log pump and reader over rotated files, with real processes: rotation
//! keeps at most `max_files`, tail and since read across rotations, a
//! restarted guest appends to the same files, and the drain timeout cuts a
//! stream that never ends.

use runner_core::logs::{LogPump, LogQuery, PumpEnd, PumpTuning, read_log_files, rotated_path};
use runner_tests::logs::*;
use runner_types::{GuestRole, LogStream};
use std::time::Duration;

/// `line0\n` … `line{n-1}\n` followed by `tail` without a newline, as the
/// shell script in [`numbered_lines_script`] prints them.
fn numbered_lines(from: u32, n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in from..from + n {
        out.extend_from_slice(format!("line{i}\n").as_bytes());
    }
    out
}

fn numbered_lines_script(from: u32, n: u32, tail: &str) -> String {
    format!(
        "i={from}; while [ $i -lt {} ]; do echo line$i; i=$((i+1)); done; printf '{tail}'",
        from + n
    )
}

#[tokio::test]
async fn rotation_keeps_max_files_and_tail_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(200, 3));
    let mut child = spawn_sh(&numbered_lines_script(0, 500, "tail"));
    let pump = LogPump::spawn(boxed(child.stdout.take().unwrap()), &sink);
    let report = pump.finish(WAIT).await;
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");

    let mut stream = numbered_lines(0, 500);
    stream.extend_from_slice(b"tail");
    assert_eq!(report.bytes_written, stream.len() as u64);

    // Three full rotated files plus the current one; the oldest are gone.
    let base = sink.path();
    for n in 1..=3 {
        assert_eq!(std::fs::metadata(rotated_path(base, n)).unwrap().len(), 200);
    }
    assert!(!rotated_path(base, 4).exists());
    let kept = concatenated(base);
    assert!(kept.len() > 600 && kept.len() <= 800);
    assert!(stream.ends_with(&kept));

    let got = sink.read(LogQuery::tail(5)).await.unwrap();
    assert_eq!(
        got.lines,
        lines_of(b"line496\nline497\nline498\nline499\ntail")
    );
    assert!(!got.truncated);

    // 60 lines need all four files.
    let got = sink.read(LogQuery::tail(60)).await.unwrap();
    let all = lines_of(&stream);
    assert_eq!(got.lines, all[all.len() - 60..]);
    assert!(kept.len() - std::fs::metadata(base).unwrap().len() as usize > 400);

    // The offline reader sees the same.
    let offline = read_log_files(
        dir.path(),
        GuestRole::Runtime,
        LogStream::Stdout,
        LogQuery::tail(60),
    )
    .await
    .unwrap();
    assert_eq!(offline, got);
}

#[tokio::test]
async fn since_returns_only_what_a_later_launch_wrote() {
    let dir = tempfile::tempdir().unwrap();
    // Small files: the second batch spans several rotations, cut mid-line.
    let sink = sink(dir.path(), LogStream::Stderr, limits(64, 50));
    let mut first = spawn_sh(&numbered_lines_script(0, 30, ""));
    let report = LogPump::spawn(boxed(first.stdout.take().unwrap()), &sink)
        .finish(WAIT)
        .await;
    assert!(matches!(report.end, PumpEnd::Eof));

    // Not synchronisation: the clock must move past the index's 50 ms
    // precision so the two launches' writes are told apart.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let since = now_ms();
    let mut second = spawn_sh(&numbered_lines_script(100, 40, "partial"));
    let report = LogPump::spawn(boxed(second.stdout.take().unwrap()), &sink)
        .finish(WAIT)
        .await;
    assert!(matches!(report.end, PumpEnd::Eof));

    let mut expected = numbered_lines(100, 40);
    expected.extend_from_slice(b"partial");
    let got = sink.read(LogQuery::tail(1000).since(since)).await.unwrap();
    assert_eq!(got.lines, lines_of(&expected));
    assert!(rotated_path(sink.path(), 5).exists());

    // Everything since before the first launch, and nothing in the future.
    let got = sink
        .read(LogQuery::tail(1000).since(since - 60_000))
        .await
        .unwrap();
    assert_eq!(got.lines.len(), 30 + 41);
    let got = sink
        .read(LogQuery::tail(1000).since(now_ms() + 60_000))
        .await
        .unwrap();
    assert!(got.lines.is_empty());
}

#[tokio::test]
async fn second_pump_appends_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let mut first = spawn_sh("printf 'first\\n'");
    let r1 = LogPump::spawn(boxed(first.stdout.take().unwrap()), &sink)
        .finish(WAIT)
        .await;
    let mut second = spawn_sh("printf 'second\\npartial'");
    let r2 = LogPump::spawn(boxed(second.stdout.take().unwrap()), &sink)
        .finish(WAIT)
        .await;
    assert!(matches!((&r1.end, &r2.end), (PumpEnd::Eof, PumpEnd::Eof)));
    assert_eq!(
        std::fs::read(sink.path()).unwrap(),
        b"first\nsecond\npartial"
    );

    // A sink reopened later (a restarted runner) appends as well.
    drop(sink);
    let reopened = runner_tests::logs::sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
    let mut third = spawn_sh("printf '!\\n'");
    let r3 = LogPump::spawn(boxed(third.stdout.take().unwrap()), &reopened)
        .finish(WAIT)
        .await;
    assert!(matches!(r3.end, PumpEnd::Eof));
    let got = reopened.read(LogQuery::tail(10)).await.unwrap();
    assert_eq!(got.lines, lines_of(b"first\nsecond\npartial!\n"));
}

#[tokio::test]
async fn tail_of_an_empty_or_missing_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(100, 2));
    let got = sink.read(LogQuery::tail(100)).await.unwrap();
    assert!(got.lines.is_empty() && !got.truncated);
    let missing = dir.path().join("no-such-dir");
    let got = read_log_files(
        &missing,
        GuestRole::Sidecar,
        LogStream::Stderr,
        LogQuery::tail(100),
    )
    .await
    .unwrap();
    assert!(got.lines.is_empty() && !got.truncated);
}

#[tokio::test]
async fn drain_timeout_cuts_a_stream_that_never_ends() {
    let small = PumpTuning {
        buffer: 2,
        ..PumpTuning::default()
    };
    for tuning in [PumpTuning::default(), small] {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), LogStream::Stdout, limits(1 << 20, 2));
        let mut live = sink.subscribe();
        // `sleep` inherits the pipe and keeps it open long after the timeout.
        let mut child = spawn_sh("printf abc; sleep 0.5; printf def; exec sleep 300");
        let pump = LogPump::spawn_tuned(boxed(child.stdout.take().unwrap()), &sink, tuning);
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let chunk = tokio::time::timeout(WAIT, live.recv())
                .await
                .unwrap()
                .unwrap();
            seen.extend_from_slice(&chunk);
        }
        assert_eq!(seen, b"abcdef");
        assert!(!pump.is_finished());
        assert_eq!(pump.bytes_read(), 6);

        let report = pump.finish(Duration::from_millis(200)).await;
        assert!(matches!(report.end, PumpEnd::Cut), "{report:?}");
        assert!(report.was_cut());
        assert_eq!(report.bytes_written, 6);
        assert_eq!(std::fs::read(sink.path()).unwrap(), b"abcdef");
        child.kill().await.unwrap();
    }
}
