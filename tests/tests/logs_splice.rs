//! Log pump, zero-copy path: a guest's pipe is spliced into the log file
//! (through a pipe of the pump's own). Byte-exact across partial splices
//! and rotations that fall inside a chunk, a guest that closes its end
//! while it keeps running, and a log file the kernel refuses to splice
//! into (which must take the copy path and lose nothing).

use runner_core::logs::{LogPump, PumpEnd, PumpTuning};
use runner_tests::logs::*;
use runner_types::LogStream;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_splices_and_rotation_inside_a_chunk_stay_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = PumpTuning {
        pipe_chunk: 12 * 1024,
        linger: Duration::from_micros(200),
        ..PumpTuning::default()
    };
    let (_, sink) = pump_noise_exactly(dir.path(), 11, tuning).await;
    let files = rotated_files(sink.path());
    for f in &files[..files.len() - 1] {
        assert_eq!(
            std::fs::metadata(f).unwrap().len(),
            EXACT_NOISE_CAP,
            "{}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_closes_its_end_early_ends_the_pump_with_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(dir.path(), LogStream::Stdout, limits(MIB, 2));
    // The guest writes, closes its stdout and lives on: EOF comes from the
    // pipe, not from the process's exit.
    let mut child = spawn_sh("printf 'no newline at the end'; exec >&-; sleep 60");
    let stdout = piped(child.stdout.take().unwrap().into_owned_fd());
    let report = LogPump::spawn(stdout, &sink).finish(WAIT).await;
    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guest is still running"
    );
    assert_eq!(
        std::fs::read(sink.path()).unwrap(),
        b"no newline at the end"
    );
    assert_eq!(sink.stats().bytes_spliced, 21);
    child.kill().await.unwrap();
}

/// Sets or clears the append-only attribute of `path` with `chattr`.
fn chattr(flag: &str, path: &std::path::Path) {
    let status = Command::new("chattr").arg(flag).arg(path).status().unwrap();
    assert!(
        status.success(),
        "chattr {flag} {}: {status}",
        path.display()
    );
}

/// A log file with the append-only attribute cannot leave append mode, and
/// the kernel refuses to splice into an append-mode file (EINVAL): the
/// writer must notice and copy instead, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_refuses_splice_takes_the_copy_path() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
        eprintln!("skipping: setting the append-only attribute needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = logs.join(LogStream::Stdout.file_name(runner_types::GuestRole::Runtime));
    std::fs::write(&path, b"kept\n").unwrap();
    chattr("+a", &path);
    struct Clear(std::path::PathBuf);
    impl Drop for Clear {
        fn drop(&mut self) {
            chattr("-a", &self.0);
        }
    }
    let _clear = Clear(path.clone());

    let sink = sink(&logs, LogStream::Stdout, limits(64 * MIB, 2));
    let total = 3 * MIB + 5;
    let total_arg = total.to_string();
    let args = ["--stdout-bytes", total_arg.as_str(), "--seed", "3"];
    let (reference, _) = reference_output(&args, dir.path());
    let mut child = spawn_noise(&args);
    let stdout = piped(child.stdout.take().unwrap().into_owned_fd());
    let report = LogPump::spawn(stdout, &sink).finish(WAIT).await;
    assert!(child.wait().await.unwrap().success());

    assert!(matches!(report.end, PumpEnd::Eof), "{report:?}");
    assert_eq!((report.bytes_written, report.bytes_dropped), (total, 0));
    assert_eq!(sink.stats().bytes_spliced, 0, "nothing could be spliced");
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[..5], b"kept\n");
    assert_eq!(on_disk[5..], std::fs::read(&reference).unwrap()[..]);
}
