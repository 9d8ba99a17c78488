//! Nothing unsupervised after a dropped launch.
//!
//! A launch future can be dropped at any await: its launch timed out, or
//! the session start was cancelled. Dropped after the create request went
//! out, it may leave a created (or even started) container that nobody
//! watches. [`LaunchGuard`] is armed before the create request and
//! disarmed once the launch hands its container to a [`super::guest`]
//! watcher (whose own drop guard takes over). Dropped while armed, it
//! removes the container in the background by *name*, since the id may
//! never have reached us, but only when the container carries this very
//! launch's [`LABEL_LAUNCH`]: a same-name container of someone else, or of
//! a later launch of the same guest, is never touched.

use super::control::REMOVE_BOUND;
use super::create::LABEL_LAUNCH;
use super::reconcile::force_remove;
use bollard::Docker;
use tokio::time::timeout;

/// Removes the named container on drop unless disarmed.
#[derive(Debug)]
pub(crate) struct LaunchGuard {
    armed: Option<Armed>,
}

#[derive(Debug)]
struct Armed {
    docker: Docker,
    name: String,
    launch_id: String,
}

impl LaunchGuard {
    /// Armed for the container `name` created by the launch `launch_id`.
    pub(crate) fn new(docker: Docker, name: String, launch_id: String) -> Self {
        Self {
            armed: Some(Armed {
                docker,
                name,
                launch_id,
            }),
        }
    }

    /// The launch finished (or failed and cleaned up itself).
    pub(crate) fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        let Some(a) = self.armed.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(container = %a.name, "launch dropped outside a runtime; the next session removes its container");
            return;
        };
        tracing::warn!(container = %a.name, "launch dropped before it finished; removing its container");
        rt.spawn(async move {
            let removed = timeout(REMOVE_BOUND, remove_if_ours(&a)).await;
            match removed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(container = %a.name, error = %e, "cannot remove the container of a dropped launch")
                }
                Err(_) => {
                    tracing::warn!(container = %a.name, "removing the container of a dropped launch timed out")
                }
            }
        });
    }
}

async fn remove_if_ours(a: &Armed) -> Result<(), bollard::errors::Error> {
    let c = match a.docker.inspect_container(&a.name, None).await {
        Ok(c) => c,
        Err(e) if super::error::status_of(&e) == Some(404) => return Ok(()),
        Err(e) => return Err(e),
    };
    let ours = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.labels.as_ref())
        .and_then(|l| l.get(LABEL_LAUNCH))
        == Some(&a.launch_id);
    match (ours, c.id) {
        (true, Some(id)) => force_remove(&a.docker, &id).await,
        _ => Ok(()),
    }
}
