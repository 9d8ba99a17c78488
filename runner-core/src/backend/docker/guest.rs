//! One launched container: its exit watcher, and bounded stop and cleanup.
//!
//! Exit: a task waits on the engine (`wait`, condition `not-running`), then
//! inspects the container for `State.OOMKilled` and publishes a
//! [`GuestExit`] with the engine's exit code as [`ExitStatus::Code`] (a
//! guest killed by a signal shows as 128 + signal, as Docker reports it).
//!
//! Stop: `docker stop` with the grace period rounded up to whole seconds
//! (the engine's unit), then, if the engine did not manage, `docker kill`;
//! then the exit is awaited and the container removed. Every step has its
//! own tokio bound, so `stop` returns within the grace period plus at most
//! [`MAX_STOP_OVERRUN`], however slow the engine is.

use super::bootstrap_file::BootstrapFile;
use super::error::{DockerStopError, EngineAction, status_of};
use super::reconcile::force_remove;
use crate::backend::exit::{ExitNotifier, ExitWatch, exit_now};
use crate::backend::{GuestControl, StopError};
use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{KillContainerOptions, StopContainerOptions, WaitContainerOptions};
use futures::StreamExt;
use runner_types::{ExitStatus, GuestExit};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Extra time the engine gets to answer `stop` beyond the grace period.
const STOP_SLACK: Duration = Duration::from_secs(3);
/// Bound on `kill`.
const KILL_BOUND: Duration = Duration::from_secs(3);
/// Bound on seeing the exit once stop or kill has returned.
const EXIT_BOUND: Duration = Duration::from_secs(5);
/// Bound on `rm -f`.
const REMOVE_BOUND: Duration = Duration::from_secs(5);
/// The most `stop` can take beyond the (rounded-up) grace period.
pub const MAX_STOP_OVERRUN: Duration = Duration::from_secs(
    STOP_SLACK.as_secs() + KILL_BOUND.as_secs() + EXIT_BOUND.as_secs() + REMOVE_BOUND.as_secs(),
);
/// Longest retry delay when the engine stream breaks while a guest runs.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Stop and cleanup of one container.
#[derive(Debug)]
pub(crate) struct DockerGuest {
    docker: Docker,
    name: String,
    id: String,
    exit: ExitWatch,
    waiter: JoinHandle<()>,
    bootstrap: BootstrapFile,
}

impl DockerGuest {
    /// Starts watching `id` for its exit and returns the control together
    /// with the exit watch.
    pub(crate) fn watch(
        docker: Docker,
        name: String,
        id: String,
        bootstrap: BootstrapFile,
    ) -> (Self, ExitWatch) {
        let (notifier, exit) = crate::backend::exit::exit_channel();
        let waiter = tokio::spawn(watch_exit(
            docker.clone(),
            id.clone(),
            name.clone(),
            notifier,
        ));
        let guest = Self {
            docker,
            name,
            id,
            exit: exit.clone(),
            waiter,
            bootstrap,
        };
        (guest, exit)
    }

    fn engine_error(&self, action: EngineAction, source: bollard::errors::Error) -> StopError {
        DockerStopError::Engine {
            name: self.name.clone(),
            action,
            source,
        }
        .into()
    }

    /// `docker stop`, bounded; false if the container may still be running.
    async fn ask_to_stop(&self, grace_secs: u64) -> bool {
        let bound = Duration::from_secs(grace_secs) + STOP_SLACK;
        let opts = StopContainerOptions {
            t: Some(i32::try_from(grace_secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        // bollard's own timeout (whole seconds, response headers) must not
        // fire before ours: the engine answers `stop` only once it is done.
        let docker = self
            .docker
            .clone()
            .with_timeout(bound + Duration::from_secs(1));
        match timeout(bound, docker.stop_container(&self.id, Some(opts))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) if status_of(&e) == Some(404) => true,
            Ok(Err(e)) => {
                tracing::warn!(container = %self.name, error = %e, "Docker stop failed; killing");
                false
            }
            Err(_) => {
                tracing::warn!(container = %self.name, ?bound, "Docker stop timed out; killing");
                false
            }
        }
    }

    /// `docker kill`, bounded; failures are logged (the exit wait decides).
    async fn kill(&self) {
        let opts = KillContainerOptions {
            signal: "SIGKILL".to_owned(),
        };
        match timeout(KILL_BOUND, self.docker.kill_container(&self.id, Some(opts))).await {
            Ok(Ok(())) => {}
            // 404: gone; 409: not running.
            Ok(Err(e)) if matches!(status_of(&e), Some(404 | 409)) => {}
            Ok(Err(e)) => tracing::warn!(container = %self.name, error = %e, "Docker kill failed"),
            Err(_) => tracing::warn!(container = %self.name, "Docker kill timed out"),
        }
    }

    /// `rm -f`, bounded.
    async fn remove(&self) -> Result<(), StopError> {
        match timeout(REMOVE_BOUND, force_remove(&self.docker, &self.id)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.engine_error(EngineAction::Remove, e)),
            Err(_) => Err(DockerStopError::Timeout {
                name: self.name.clone(),
                action: EngineAction::Remove,
                after: REMOVE_BOUND,
            }
            .into()),
        }
    }
}

impl Drop for DockerGuest {
    fn drop(&mut self) {
        self.waiter.abort();
    }
}

#[async_trait]
impl GuestControl for DockerGuest {
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        if let Some(exit) = self.exit.get() {
            return Ok(exit);
        }
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        if !self.ask_to_stop(grace_secs).await {
            self.kill().await;
        }
        let mut watch = self.exit.clone();
        let exit = match timeout(EXIT_BOUND, watch.wait()).await {
            Ok(exit) => exit,
            Err(_) => return Err(StopError::StillRunning { waited: EXIT_BOUND }),
        };
        if let Err(e) = self.remove().await {
            // cleanup() tries again and reports it.
            tracing::warn!(container = %self.name, error = %e, "Cannot remove stopped container");
        }
        Ok(exit)
    }

    async fn cleanup(&self) -> Result<(), StopError> {
        self.remove().await?;
        self.bootstrap
            .remove()
            .map_err(|source| StopError::RemoveFile {
                path: self.bootstrap.path().to_path_buf(),
                source,
            })
    }
}

/// What one `wait` call told us.
enum Waited {
    /// The container exited with this code.
    Exited(i64),
    /// The container no longer exists.
    Gone,
    /// The stream broke; the container may still be running.
    Broken(Option<bollard::errors::Error>),
}

async fn wait_once(docker: &Docker, id: &str) -> Waited {
    let opts = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let mut stream = docker.wait_container(id, Some(opts));
    match stream.next().await {
        Some(Ok(r)) => Waited::Exited(r.status_code),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
            Waited::Exited(code)
        }
        Some(Err(e)) if status_of(&e) == Some(404) => Waited::Gone,
        Some(Err(e)) => Waited::Broken(Some(e)),
        None => Waited::Broken(None),
    }
}

/// Waits for the container to exit and publishes the exit, however long it
/// takes; retries with backoff when the engine connection breaks.
async fn watch_exit(docker: Docker, id: String, name: String, notifier: ExitNotifier) {
    let mut delay = Duration::from_millis(100);
    loop {
        let code = match wait_once(&docker, &id).await {
            Waited::Exited(code) => Some(code),
            Waited::Gone => None,
            Waited::Broken(e) => {
                tracing::warn!(container = %name, error = ?e, "Lost the container's wait stream");
                match docker.inspect_container(&id, None).await {
                    Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(false) => {
                        c.state.and_then(|s| s.exit_code)
                    }
                    Err(e) if status_of(&e) == Some(404) => None,
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                        continue;
                    }
                }
            }
        };
        notifier.notify(finish(&docker, &id, &name, code).await);
        return;
    }
}

/// The exit of a container that is no longer running: `code` from the wait
/// (or, if unknown, the container is gone and counts as killed), and the
/// OOM flag from an inspect.
async fn finish(docker: &Docker, id: &str, name: &str, code: Option<i64>) -> GuestExit {
    let Some(code) = code else {
        tracing::warn!(container = %name, "Container vanished; reporting it as killed");
        return exit_now(ExitStatus::Signal(9), false);
    };
    let oom_killed = match docker.inspect_container(id, None).await {
        Ok(c) => c.state.and_then(|s| s.oom_killed).unwrap_or(false),
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "Cannot inspect exited container");
            false
        }
    };
    let code = i32::try_from(code).unwrap_or(i32::MAX);
    exit_now(ExitStatus::Code(code), oom_killed)
}
