//! One launched container: its exit watcher, and bounded stop and cleanup.
//!
//! Exit: a task waits on the engine (`wait`, condition `not-running`), then
//! inspects the container for `State.OOMKilled` and publishes a
//! [`GuestExit`] with the engine's exit code as [`ExitStatus::Code`] (a
//! guest killed by a signal shows as 128 + signal, as Docker reports it).
//! The engine learns of an OOM kill and of the exit from two separate
//! containerd events, in either order, so `OOMKilled` can still be false
//! right after the wait: for a SIGKILLed (137) container with a memory
//! limit that the runner was not stopping, the engine's event log is asked
//! for the container's `oom` event, waiting at most [`OOM_EVENT_WAIT`].
//! (An OOM kill within milliseconds of the start can escape the engine
//! altogether — it watches for them only once the container runs — and is
//! then reported as a plain 137.)
//!
//! Engine outages: an exit the runner did not cause is checked against the
//! engine. When the wait stream broke on the way (the engine went away), or
//! the engine stops answering within [`ENGINE_SETTLE`] of the exit (a
//! stopping engine stops its containers first, so they exit 0 just before
//! it goes), the exit is published with [`GuestExit::engine_lost`] set: the
//! guest did not fail, its engine did.
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
use bollard::query_parameters::{
    EventsOptions, KillContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use runner_types::{ExitStatus, GuestExit};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Extra time the engine gets to answer `stop` beyond the grace period.
const STOP_SLACK: Duration = Duration::from_secs(3);
/// Bound on `kill`.
const KILL_BOUND: Duration = Duration::from_secs(3);
/// Bound on seeing the exit once stop or kill has returned.
const EXIT_BOUND: Duration = Duration::from_secs(5);
/// Bound on `rm -f`.
pub(crate) const REMOVE_BOUND: Duration = Duration::from_secs(5);
/// The most `stop` can take beyond the (rounded-up) grace period.
pub const MAX_STOP_OVERRUN: Duration = Duration::from_secs(
    STOP_SLACK.as_secs() + KILL_BOUND.as_secs() + EXIT_BOUND.as_secs() + REMOVE_BOUND.as_secs(),
);
/// Longest retry delay when the engine stream breaks while a guest runs.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a SIGKILLed, memory-limited container's `oom` event may lag
/// behind its exit.
const OOM_EVENT_WAIT: Duration = Duration::from_secs(1);
/// `since` of the `oom` event query: this much before the watch began (the
/// container was started just before it).
const OOM_EVENT_LOOKBACK: Duration = Duration::from_secs(10);
/// After an exit the runner did not cause, how long the engine must keep
/// answering for the exit to count as the guest's own.
pub(crate) const ENGINE_SETTLE: Duration = Duration::from_secs(2);
/// Interval between the pings of [`ENGINE_SETTLE`].
const ENGINE_SETTLE_PING_EVERY: Duration = Duration::from_millis(250);
/// Bound on one engine ping.
pub(crate) const ENGINE_PING_BOUND: Duration = Duration::from_secs(2);
/// Exit code of a container whose init was SIGKILLed (the OOM killer's signal).
const SIGKILL_EXIT: i64 = 128 + 9;

/// Stop and cleanup of one container.
#[derive(Debug)]
pub(crate) struct DockerControl {
    docker: Docker,
    name: String,
    id: String,
    exit: ExitWatch,
    waiter: JoinHandle<()>,
    bootstrap: BootstrapFile,
    /// Set once `stop` began: a kill is then ours, not the OOM killer's.
    stopping: Arc<AtomicBool>,
}

impl DockerControl {
    /// Starts watching `id` for its exit and returns the control together
    /// with the exit watch.
    pub(crate) fn watch(
        docker: Docker,
        name: String,
        id: String,
        bootstrap: BootstrapFile,
    ) -> (Self, ExitWatch) {
        let (notifier, exit) = crate::backend::exit::exit_channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn(watch_exit(
            docker.clone(),
            id.clone(),
            name.clone(),
            notifier,
            OomCheck {
                watching_since: SystemTime::now(),
                stopping: stopping.clone(),
            },
        ));
        let guest = Self {
            docker,
            name,
            id,
            exit: exit.clone(),
            waiter,
            bootstrap,
            stopping,
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

impl Drop for DockerControl {
    fn drop(&mut self) {
        self.waiter.abort();
        if self.exit.get().is_some() {
            return;
        }
        // Abandoned while running (its owner was killed without cleanup):
        // force-remove it in the background, best effort. A container this
        // misses is reconciled by the next session for the same user.
        tracing::warn!(container = %self.name, "container abandoned while running; removing it");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (docker, id, name) = (self.docker.clone(), self.id.clone(), self.name.clone());
        rt.spawn(async move {
            match timeout(REMOVE_BOUND, force_remove(&docker, &id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(container = %name, error = %e, "cannot remove abandoned container"),
                Err(_) => tracing::warn!(container = %name, "removing abandoned container timed out"),
            }
        });
    }
}

#[async_trait]
impl GuestControl for DockerControl {
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        if let Some(exit) = self.exit.get() {
            return Ok(exit);
        }
        self.stopping.store(true, Ordering::SeqCst);
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

/// What deciding an OOM kill from the engine's events needs.
struct OomCheck {
    /// When the watch began (just after the start).
    watching_since: SystemTime,
    /// Whether the runner is stopping the container.
    stopping: Arc<AtomicBool>,
}

/// Waits for the container to exit and publishes the exit, however long it
/// takes; retries with backoff when the engine connection breaks.
async fn watch_exit(
    docker: Docker,
    id: String,
    name: String,
    notifier: ExitNotifier,
    oom: OomCheck,
) {
    let mut delay = Duration::from_millis(100);
    let mut broke = false;
    loop {
        let code = match wait_once(&docker, &id).await {
            Waited::Exited(code) => Some(code),
            Waited::Gone => None,
            Waited::Broken(e) => {
                broke = true;
                tracing::warn!(container = %name, error = ?e, "Lost the container's wait stream");
                match docker.inspect_container(&id, None).await {
                    Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(false) => {
                        c.state.and_then(|s| s.exit_code)
                    }
                    Err(e) if status_of(&e) == Some(404) => None,
                    // Still running (a live-restored engine came back):
                    // the break is over, a later exit is the guest's own.
                    Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
                        broke = false;
                        continue;
                    }
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_RETRY_DELAY);
                        continue;
                    }
                }
            }
        };
        let mut exit = finish(&docker, &id, &name, code, &oom).await;
        if !oom.stopping.load(Ordering::SeqCst) && (broke || !engine_stays_up(&docker).await) {
            tracing::warn!(container = %name, "The engine went away under the container");
            exit.engine_lost = true;
        }
        notifier.notify(exit);
        return;
    }
}

/// Whether the engine keeps answering for [`ENGINE_SETTLE`].
async fn engine_stays_up(docker: &Docker) -> bool {
    let until = tokio::time::Instant::now() + ENGINE_SETTLE;
    loop {
        if !matches!(timeout(ENGINE_PING_BOUND, docker.ping()).await, Ok(Ok(_))) {
            return false;
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        tokio::time::sleep(ENGINE_SETTLE_PING_EVERY).await;
    }
}

/// The exit of a container that is no longer running: `code` from the wait
/// (or, if unknown, the container is gone and counts as killed), and the
/// OOM flag from an inspect or, for a SIGKILLed container with a memory
/// limit whose flag is not set (yet), and that the runner was not
/// stopping, from its `oom` event.
async fn finish(
    docker: &Docker,
    id: &str,
    name: &str,
    code: Option<i64>,
    oom: &OomCheck,
) -> GuestExit {
    let Some(code) = code else {
        tracing::warn!(container = %name, "Container vanished; reporting it as killed");
        return exit_now(ExitStatus::Signal(9), false);
    };
    let (flagged, memory_limited) = match docker.inspect_container(id, None).await {
        Ok(c) => (
            c.state.and_then(|s| s.oom_killed).unwrap_or(false),
            c.host_config.and_then(|h| h.memory).is_some_and(|m| m > 0),
        ),
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "Cannot inspect exited container");
            (false, false)
        }
    };
    let oom_killed = flagged
        || (code == SIGKILL_EXIT
            && memory_limited
            && !oom.stopping.load(Ordering::SeqCst)
            && oom_event_seen(docker, id, name, oom.watching_since).await);
    let code = i32::try_from(code).unwrap_or(i32::MAX);
    exit_now(ExitStatus::Code(code), oom_killed)
}

/// Whether the engine logged an `oom` event for container `id` since
/// `watching_since` (less [`OOM_EVENT_LOOKBACK`]), waiting at most
/// [`OOM_EVENT_WAIT`] for one to arrive.
async fn oom_event_seen(docker: &Docker, id: &str, name: &str, watching_since: SystemTime) -> bool {
    // The engine's timestamp format: `<seconds>.<nanoseconds>`.
    let unix = |t: SystemTime| {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };
    let since = watching_since
        .checked_sub(OOM_EVENT_LOOKBACK)
        .unwrap_or(UNIX_EPOCH);
    let opts = EventsOptions {
        since: Some(unix(since)),
        until: Some(unix(SystemTime::now() + OOM_EVENT_WAIT)),
        filters: Some(HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("container".to_owned(), vec![id.to_owned()]),
            ("event".to_owned(), vec!["oom".to_owned()]),
        ])),
    };
    let mut events = docker.events(Some(opts));
    // The engine ends the stream at `until`; our own bound covers a slow engine.
    match timeout(2 * OOM_EVENT_WAIT, events.next()).await {
        Ok(Some(Ok(_))) => true,
        Ok(None) => false,
        Ok(Some(Err(e))) => {
            tracing::warn!(container = %name, error = %e, "Cannot read the engine's oom events");
            false
        }
        Err(_) => {
            tracing::warn!(container = %name, "The engine's oom events did not end in time");
            false
        }
    }
}
