//! The contract every [`SandboxBackend`] keeps, written once and run
//! against each tier (process, Docker, Firecracker) and the fake.
//!
//! A tier takes part through a [`Subject`]: how to launch a guest that
//! holds (reports its envelope on stdout, then runs until stopped) or
//! prints (writes known bytes, then exits), what it printed, and whether
//! a guest still runs, asked of the host or the engine rather than of the
//! backend. Each check is a plain async function over a subject:
//!
//! - [`stop_is_idempotent`]: a second `stop` returns the first one's exit;
//! - [`cleanup_is_idempotent`]: a second `cleanup` succeeds;
//! - [`exit_is_published_once`]: every watcher and every `stop` sees the
//!   one exit, whoever asks and when;
//! - [`dropping_the_control_ends_the_guest`]: the drop contract of
//!   [`runner_core::backend::GuestControl`];
//! - [`the_envelope_arrives`]: the guest reports exactly its envelope;
//! - [`output_is_byte_exact`]: every stream arrives byte for byte.
//!
//! Every wait is bounded by [`Subject::bound`].

use async_trait::async_trait;
use runner_core::backend::{ExitWatch, GuestControl, GuestIdentity, LaunchSpec, SandboxBackend};
use runner_core::logs::GuestReader;
use runner_types::{BootstrapEnvelope, GuestExit, LogStream};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// What a launched guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Reports its envelope on stdout, then runs until stopped.
    Hold,
    /// Writes known bytes (see [`Subject::printed`]), then exits on its own.
    Print,
}

/// A backend and the launch spec of one guest.
#[derive(Debug)]
pub struct Case {
    /// The backend under test.
    pub backend: Arc<dyn SandboxBackend>,
    /// What to launch.
    pub spec: LaunchSpec,
}

/// One tier's part in the contract suite.
#[async_trait]
pub trait Subject: Send + Sync {
    /// A backend and spec for a runtime guest that does `act`.
    async fn case(&self, act: Act) -> Case;

    /// The exact bytes each checked stream of a [`Act::Print`] guest
    /// launched from `case` carries, up to EOF. By default what
    /// `probe-guest bytes PRINT_SEED PRINT_LEN` writes.
    fn printed(&self, case: &Case) -> Vec<(LogStream, Vec<u8>)> {
        let _ = case;
        probe_output()
    }

    /// The envelope a [`Act::Hold`] guest reported in `stdout` so far, or
    /// `None` if its report is not complete yet. By default the
    /// `envelope=<JSON>` line of the demo guest.
    fn reported_envelope(&self, stdout: &[u8]) -> Option<BootstrapEnvelope> {
        demo_envelope(stdout)
    }

    /// Whether the guest named by `identity` still runs, asked of the host
    /// or the engine.
    async fn running(&self, identity: &GuestIdentity) -> bool;

    /// Bound on any single wait (a launch, a report, an exit).
    fn bound(&self) -> Duration {
        Duration::from_secs(60)
    }
}

/// Seed of the pattern a printing probe guest writes on stdout (stderr
/// uses the next one).
pub const PRINT_SEED: u64 = 77;
/// Bytes per stream a printing probe guest writes: several pipe buffers.
pub const PRINT_LEN: usize = 300_000;

/// What `probe-guest bytes PRINT_SEED PRINT_LEN` writes, per stream.
pub fn probe_output() -> Vec<(LogStream, Vec<u8>)> {
    vec![
        (
            LogStream::Stdout,
            crate::probe_pattern(PRINT_SEED, PRINT_LEN),
        ),
        (
            LogStream::Stderr,
            crate::probe_pattern(PRINT_SEED + 1, PRINT_LEN),
        ),
    ]
}

/// The envelope a demo guest reported (its `envelope=<JSON>` line), once
/// that line is complete.
pub fn demo_envelope(stdout: &[u8]) -> Option<BootstrapEnvelope> {
    stdout
        .split(|&b| b == b'\n')
        .rev()
        .skip(1) // the part after the last newline is not a whole line yet
        .find_map(|l| l.strip_prefix(b"envelope="))
        .map(|json| BootstrapEnvelope::from_json(json).expect("envelope JSON"))
}

/// Grace period the checks stop guests with.
const GRACE: Duration = Duration::from_secs(5);

/// One launched guest, its streams drained in the background.
struct Running {
    identity: GuestIdentity,
    exit: ExitWatch,
    control: Box<dyn GuestControl>,
    spec: LaunchSpec,
    drains: Drains,
}

/// A guest's streams, each read to EOF by its own task.
struct Drains {
    /// What stdout carried so far, and whether it ended.
    stdout: watch::Receiver<(Vec<u8>, bool)>,
    tasks: Vec<(LogStream, JoinHandle<Vec<u8>>)>,
}

async fn launch(subject: &dyn Subject, act: Act) -> (Case, Running) {
    let case = subject.case(act).await;
    let guest = timeout(subject.bound(), case.backend.launch(case.spec.clone()))
        .await
        .expect("launch is bounded")
        .expect("launch succeeds");
    let (tx, stdout) = watch::channel((Vec::new(), false));
    let mut tx = Some(tx);
    let tasks = guest
        .outputs
        .into_iter()
        .map(|output| {
            let feed = (output.stream == LogStream::Stdout)
                .then(|| tx.take())
                .flatten();
            (
                output.stream,
                tokio::spawn(drain(output.reader.into_reader(), feed)),
            )
        })
        .collect();
    let running = Running {
        identity: guest.identity,
        exit: guest.exit,
        control: guest.control,
        spec: case.spec.clone(),
        drains: Drains { stdout, tasks },
    };
    (case, running)
}

/// Reads `reader` to EOF (or a read error), publishing progress to `feed`.
async fn drain(mut reader: GuestReader, feed: Option<watch::Sender<(Vec<u8>, bool)>>) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if let Some(feed) = &feed {
                    feed.send_modify(|(seen, _)| seen.extend_from_slice(&buf[..n]));
                }
            }
        }
    }
    if let Some(feed) = &feed {
        feed.send_modify(|(_, eof)| *eof = true);
    }
    all
}

impl Drains {
    /// Waits for the guest's envelope report (so it is up and has read it).
    async fn reported(&mut self, subject: &dyn Subject) -> BootstrapEnvelope {
        let seen = timeout(
            subject.bound(),
            self.stdout
                .wait_for(|(bytes, eof)| *eof || subject.reported_envelope(bytes).is_some()),
        )
        .await
        .expect("the guest reports its envelope in time")
        .expect("stdout drain alive")
        .0
        .clone();
        subject.reported_envelope(&seen).unwrap_or_else(|| {
            panic!(
                "stdout ended without an envelope report: {:?}",
                String::from_utf8_lossy(&seen)
            )
        })
    }

    /// Every stream, once all have reached EOF.
    async fn all(self, bound: Duration) -> Vec<(LogStream, Vec<u8>)> {
        let mut all = Vec::new();
        for (stream, task) in self.tasks {
            let bytes = timeout(bound, task)
                .await
                .unwrap_or_else(|_| panic!("{stream} did not reach EOF in time"))
                .expect("drain task");
            all.push((stream, bytes));
        }
        all
    }
}

/// `stop`, bounded by the subject's bound.
async fn stop(subject: &dyn Subject, control: &dyn GuestControl) -> GuestExit {
    timeout(subject.bound(), control.stop(GRACE))
        .await
        .expect("stop is bounded")
        .unwrap_or_else(|e| panic!("stop: {e}"))
}

/// `cleanup`, bounded by the subject's bound.
async fn cleanup(subject: &dyn Subject, control: &dyn GuestControl) {
    timeout(subject.bound(), control.cleanup())
        .await
        .expect("cleanup is bounded")
        .unwrap_or_else(|e| panic!("cleanup: {e}"));
}

/// A second `stop` returns the first one's exit, without error.
pub async fn stop_is_idempotent(subject: &dyn Subject) {
    let (_, mut run) = launch(subject, Act::Hold).await;
    run.drains.reported(subject).await;
    let first = stop(subject, &*run.control).await;
    let second = stop(subject, &*run.control).await;
    assert_eq!(first, second);
    finish(subject, run).await;
}

/// `cleanup` after a stop succeeds, and so does a second one.
pub async fn cleanup_is_idempotent(subject: &dyn Subject) {
    let (_, mut run) = launch(subject, Act::Hold).await;
    run.drains.reported(subject).await;
    stop(subject, &*run.control).await;
    cleanup(subject, &*run.control).await;
    finish(subject, run).await;
}

/// A guest that exits on its own publishes one exit: every watch (taken
/// before or after it) and every later `stop` sees the same value.
pub async fn exit_is_published_once(subject: &dyn Subject) {
    let (_, mut run) = launch(subject, Act::Print).await;
    let mut early = run.exit.clone();
    let first = timeout(subject.bound(), run.exit.wait())
        .await
        .expect("the guest exits on its own in time");
    assert_eq!(early.wait().await, first);
    assert_eq!(run.exit.clone().wait().await, first);
    let stopped = stop(subject, &*run.control).await;
    assert_eq!(stopped, first, "stop after the exit returns that exit");
    assert_eq!(run.exit.get(), Some(first), "no second exit");
    finish(subject, run).await;
}

/// Dropping the control of a running guest kills it: its streams end and
/// the host or engine no longer runs it.
pub async fn dropping_the_control_ends_the_guest(subject: &dyn Subject) {
    let (_, mut run) = launch(subject, Act::Hold).await;
    run.drains.reported(subject).await;
    let Running {
        identity,
        control,
        drains,
        ..
    } = run;
    assert!(subject.running(&identity).await, "running before the drop");
    drop(control);
    // The streams end once the guest is gone: EOF on its own pipes is the
    // event (nothing announces that a container is gone or a non-child
    // died), then the host or engine is asked, briefly, until it agrees.
    drains.all(subject.bound()).await;
    let deadline = tokio::time::Instant::now() + subject.bound();
    while subject.running(&identity).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{identity:?} still runs after its control was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The guest reports exactly the envelope of its launch spec.
pub async fn the_envelope_arrives(subject: &dyn Subject) {
    let (_, mut run) = launch(subject, Act::Hold).await;
    let got = run.drains.reported(subject).await;
    assert_eq!(got, run.spec.envelope);
    stop(subject, &*run.control).await;
    finish(subject, run).await;
}

/// Every checked stream of a printing guest arrives byte for byte.
pub async fn output_is_byte_exact(subject: &dyn Subject) {
    let (case, mut run) = launch(subject, Act::Print).await;
    timeout(subject.bound(), run.exit.wait())
        .await
        .expect("the guest exits on its own in time");
    let Running {
        control, drains, ..
    } = run;
    let got = drains.all(subject.bound()).await;
    for (stream, want) in subject.printed(&case) {
        let (_, bytes) = got
            .iter()
            .find(|(s, _)| *s == stream)
            .unwrap_or_else(|| panic!("no {stream} output"));
        assert!(
            *bytes == want,
            "{stream}: {} bytes arrived, {} expected; first difference at {:?}",
            bytes.len(),
            want.len(),
            bytes.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
    cleanup(subject, &*control).await;
}

/// Cleans up after a stopped or exited guest, drains its streams and
/// checks it no longer runs.
async fn finish(subject: &dyn Subject, run: Running) {
    cleanup(subject, &*run.control).await;
    run.drains.all(subject.bound()).await;
    assert!(
        !subject.running(&run.identity).await,
        "{:?} still runs",
        run.identity
    );
}
