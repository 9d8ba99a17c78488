//! The supervisor's drop guard, with the fake backend: a supervisor killed
//! without a shutdown (ractor then skips `post_stop`) still ends the tasks
//! it owns.

use crate::{Backends, Runner};
use runner_core::config::RunnerConfig;
use runner_core::fake::FakeBackend;
use runner_types::{LogStream, SandboxTier};
use std::sync::Arc;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_killed_supervisor_still_ends_its_pumps_and_removes_its_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RunnerConfig::defaults(dir.path());
    let (fake, mut launches) = FakeBackend::new(SandboxTier::Process);
    let runner = Runner::new(config, Backends::new().with(Arc::new(fake)));
    let session = runner.start_session("kim").await.expect("start");
    let mut sidecar = launches.next(BOUND).await.expect("sidecar launched");
    sidecar
        .write(LogStream::Stdout, b"alive\n")
        .await
        .expect("the pump reads while the session runs");
    let socket = session.control_socket().expect("serves control");
    assert!(socket.exists(), "{}", socket.display());

    session.actor.kill();
    let join = session.join.lock().await.take().expect("supervisor task");
    tokio::time::timeout(BOUND, join)
        .await
        .expect("the supervisor ends once killed")
        .expect("supervisor task joined");

    assert!(!socket.exists(), "socket left behind: {}", socket.display());
    // The pump's end of the stream is closed once its task has ended.
    let pump_gone = async { while sidecar.write(LogStream::Stdout, b"x\n").await.is_ok() {} };
    tokio::time::timeout(BOUND, pump_gone)
        .await
        .expect("the log copy task ended with its supervisor");
}
