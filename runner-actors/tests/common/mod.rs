//! Shared setup for actor-level tests: the fake backend's, and the helpers
//! for reading a session's health that every tier's tests use.
#![allow(dead_code)]

use runner_actors::{Backends, Runner, SessionEvent, SessionHandle};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::config::{GuestCommand, RunnerConfig};
use runner_core::fake::{FakeBackend, FakeGuest, FakeLaunches};
use runner_types::{GuestRole, GuestStatus, HealthStatus, SandboxTier};
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// A runner on `config` whose only backend is the process tier with these
/// guest commands (and the runner's own search path).
pub fn process_runner(
    config: RunnerConfig,
    runtime: GuestCommand,
    sidecar: Option<GuestCommand>,
) -> Runner {
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime,
        sidecar,
        search_path: None,
    });
    Runner::new(config, Backends::new().with(Arc::new(backend)))
}

pub fn fake() -> (FakeBackend, FakeLaunches) {
    FakeBackend::new(SandboxTier::Process)
}

/// The first two guests launched, as (sidecar, runtime), whichever of
/// them finished its launch first.
pub async fn sidecar_and_runtime(launches: &mut FakeLaunches) -> (FakeGuest, FakeGuest) {
    let first = launches.next(WAIT).await.unwrap();
    let second = launches.next(WAIT).await.unwrap();
    match first.spec.role {
        GuestRole::Sidecar => (first, second),
        GuestRole::Runtime => (second, first),
    }
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

/// The row of `role` in a health report; panics when it has none.
pub fn guest_of(h: &HealthStatus, role: GuestRole) -> &GuestStatus {
    h.guests
        .iter()
        .find(|g| g.role == role)
        .unwrap_or_else(|| panic!("no {role} in {h:?}"))
}

/// Whether a health report lists a degraded reason with this `code`.
pub fn degraded(h: &HealthStatus, code: &str) -> bool {
    h.startup_status
        .degraded_reasons
        .iter()
        .any(|r| r.code == code)
}

/// Asks for `session`'s health until it satisfies `pred` (`what` names the
/// wait), for at most `within`; that health.
pub async fn health_until(
    session: &SessionHandle,
    within: Duration,
    what: &str,
    pred: impl Fn(&HealthStatus) -> bool,
) -> HealthStatus {
    let start = Instant::now();
    loop {
        let h = session.health().await.expect("health");
        if pred(&h) {
            return h;
        }
        assert!(
            start.elapsed() < within,
            "{what} within {within:?}; last {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
