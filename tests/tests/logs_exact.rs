//! Log pump, byte-exactness: whatever a real guest process writes at full
//! speed (random bytes, invalid UTF-8, no final newline) lands in the
//! rotated log files unchanged and in order, whether the pump copies the
//! stream or splices a pipe.

use runner_core::logs::{LogPump, PumpEnd, PumpTuning};
use runner_tests::logs::*;
use runner_types::LogStream;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_concatenate_to_exactly_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let total = 64 * MIB + 12_345;
    let total_arg = total.to_string();
    let args = ["--stdout-bytes", total_arg.as_str(), "--seed", "7"];
    let (reference, _) = reference_output(&args, dir.path());
    let expected_head = std::fs::read(&reference)
        .map(|b| b[..4096].to_vec())
        .unwrap();
    assert!(
        std::str::from_utf8(&expected_head).is_err(),
        "stream must not be UTF-8"
    );

    let logs = dir.path().join("logs");
    let sink = sink(&logs, LogStream::Stdout, limits(4 * MIB, 20));
    let mut child = spawn_noise(&args);
    let pump = LogPump::spawn(boxed(child.stdout.take().unwrap()), &sink);
    let report = pump.finish(WAIT).await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!((report.bytes_read, report.bytes_written), (total, total));
    assert_eq!(report.bytes_dropped, 0);
    assert_eq!(sink.stats().bytes_written, total);
    assert_eq!(sink.stats().rotations, 16);

    let files = rotated_files(sink.path());
    assert_eq!(files.len(), 17);
    for f in &files[..16] {
        assert_eq!(
            std::fs::metadata(f).unwrap().len(),
            4 * MIB,
            "{}",
            f.display()
        );
    }
    assert_same_stream(&reference, &files);
    let last = std::fs::read(sink.path()).unwrap();
    assert_ne!(last.last(), Some(&b'\n'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_interleaved_each_land_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--stdout-bytes",
        "16777216",
        "--stderr-bytes",
        "12000001",
        "--seed",
        "99",
        "--chunk",
        "4096",
    ];
    let (ref_out, ref_err) = reference_output(&args, dir.path());

    let logs = dir.path().join("logs");
    let out_sink = sink(&logs, LogStream::Stdout, limits(MIB, 40));
    let err_sink = sink(&logs, LogStream::Stderr, limits(MIB, 40));
    let mut child = spawn_noise(&args);
    // Stdout with a small buffer for many hand-offs to the writer thread;
    // stderr with the default buffer.
    let small = PumpTuning {
        buffer: 16 * 1024,
        ..PumpTuning::default()
    };
    let out = LogPump::spawn_tuned(boxed(child.stdout.take().unwrap()), &out_sink, small);
    // Stderr as the process backend hands it over: a pipe, spliced.
    let err = LogPump::spawn(
        piped(child.stderr.take().unwrap().into_owned_fd()),
        &err_sink,
    );
    let (out, err) = tokio::join!(out.finish(WAIT), err.finish(WAIT));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    assert!(matches!(out.end, PumpEnd::Eof) && matches!(err.end, PumpEnd::Eof));
    assert_eq!(out.bytes_written, 16_777_216);
    assert_eq!(err.bytes_written, 12_000_001);
    assert_ne!(out_sink.path(), err_sink.path());
    assert_same_stream(&ref_out, &rotated_files(out_sink.path()));
    assert_same_stream(&ref_err, &rotated_files(err_sink.path()));
    assert_eq!(
        (
            out_sink.stats().bytes_spliced,
            err_sink.stats().bytes_spliced
        ),
        (0, 12_000_001)
    );
}
