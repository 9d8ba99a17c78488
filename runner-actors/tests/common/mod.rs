//! Shared setup for actor-level tests with the fake backend.
#![allow(dead_code)]

use runner_actors::{Backends, Runner, SessionEvent};
use runner_core::config::RunnerConfig;
use runner_core::fake::{FakeBackend, FakeLaunches};
use runner_types::SandboxTier;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: RunnerConfig,
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RunnerConfig::defaults(dir.path());
    config.restart.backoff_initial = Duration::from_millis(20);
    config.restart.backoff_max = Duration::from_millis(80);
    config.restart.max_restarts = 3;
    config.shutdown.grace = Duration::from_millis(300);
    config.shutdown.log_drain = Duration::from_millis(300);
    Setup { dir, config }
}

pub fn runner(config: RunnerConfig, fake: &FakeBackend) -> Runner {
    Runner::new(config, Backends::new().with(Arc::new(fake.clone())))
}

pub fn fake() -> (FakeBackend, FakeLaunches) {
    FakeBackend::new(SandboxTier::Process)
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<SessionEvent>,
    mut pred: impl FnMut(&SessionEvent) -> bool,
) -> SessionEvent {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event stream closed"),
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("event did not arrive in time")
}

/// Polls `f` until it returns true (bounded).
pub async fn eventually(mut f: impl FnMut() -> bool) {
    let fut = async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("condition not met in time");
}
