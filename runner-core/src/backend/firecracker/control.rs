//! Owning one running VM: the waiter task that publishes its exit and
//! [`FirecrackerControl`], its stop and clean-up handle.
//!
//! The waiter task owns the `Child`; a forced stop asks it to kill, so a
//! signal can never hit a reused pid. Dropping the control closes the kill
//! channel, which the waiter takes as a kill request: a VM never outlives
//! its owner. The child is also `kill_on_drop`, so if the tokio runtime
//! that owns the waiter goes away, the VM goes with it.
//!
//! The waiter also owns the launch's vsock bridge (runtime VM only) and its
//! ownership record: when the VM exits, the bridge is torn down and the
//! record removed *before* the exit is published, so whoever reacts to the
//! exit (health, a relaunch) already sees them gone.

use super::launch::{LaunchPaths, LaunchResources};
use super::vsock_bridge::VsockBridge;
use super::{api, disks, reaper};
use crate::backend::exit::{ExitNotifier, exit_channel, exit_now};
use crate::backend::{ExitWatch, GuestControl, StopError};
use async_trait::async_trait;
use runner_types::{ExitStatus, GuestExit, GuestRole};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::mpsc;

/// Longest the shutdown API request may take (less if the grace is shorter).
const API_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the exit after SIGKILL before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the waiter ends when the VM exits, before publishing the exit.
struct ExitOwned {
    bridge: Option<VsockBridge>,
    record: Option<PathBuf>,
}

/// Owns the child until it exits, killing it when asked; publishes the exit.
async fn wait_for_exit(
    mut child: Child,
    role: GuestRole,
    pid: u32,
    notifier: ExitNotifier,
    mut kill_rx: mpsc::Receiver<()>,
    owned: ExitOwned,
) {
    let waited = tokio::select! {
        status = child.wait() => status,
        // A kill request, or every control handle dropped: nobody can stop
        // this VM any more, and it must not outlive its owner.
        _ = kill_rx.recv() => {
            if let Err(e) = child.start_kill() {
                tracing::warn!(%role, pid, error = %e, "cannot kill firecracker");
            }
            child.wait().await
        }
    };
    let status = match waited {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Signal(9),
        },
        Err(e) => {
            tracing::warn!(%role, pid, error = %e, "cannot wait for firecracker; reporting it killed");
            ExitStatus::Signal(9)
        }
    };
    tracing::debug!(%role, pid, %status, "firecracker exited");
    drop(owned.bridge);
    if let Some(record) = &owned.record {
        reaper::remove_record(record);
    }
    notifier.notify(exit_now(status, false));
}

/// Stop and clean-up of one VM.
#[derive(Debug)]
pub struct FirecrackerControl {
    role: GuestRole,
    pid: u32,
    paths: LaunchPaths,
    resources: LaunchResources,
    exit: ExitWatch,
    kill: mpsc::Sender<()>,
}

impl FirecrackerControl {
    /// Hands the spawned `child` to a new waiter task and returns the VM's
    /// control and its exit watch.
    pub(super) fn start(
        child: Child,
        role: GuestRole,
        pid: u32,
        paths: LaunchPaths,
        mut resources: LaunchResources,
    ) -> (Self, ExitWatch) {
        let (notifier, exit) = exit_channel();
        // Capacity 1: one pending kill request is all a waiter ever needs.
        let (kill_tx, kill_rx) = mpsc::channel(1);
        let owned = ExitOwned {
            bridge: resources.bridge.take(),
            record: resources.record.take(),
        };
        tokio::spawn(wait_for_exit(child, role, pid, notifier, kill_rx, owned));
        tracing::debug!(%role, pid, config = %paths.config.display(), "firecracker started");
        let control = Self {
            role,
            pid,
            paths,
            resources,
            exit: exit.clone(),
            kill: kill_tx,
        };
        (control, exit)
    }
}

#[async_trait]
impl GuestControl for FirecrackerControl {
    /// Sends Ctrl-Alt-Del through the API (bounded by the grace and
    /// one second), waits out the rest of the grace, then SIGKILLs.
    /// Firecracker has no SIGTERM handler, so it is never sent: it would end
    /// the VM just as abruptly as SIGKILL, without the guest's chance to act
    /// on Ctrl-Alt-Del.
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        if let Some(exit) = self.exit.get() {
            return Ok(exit);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let api_limit = grace.min(API_TIMEOUT);
        if !api_limit.is_zero() {
            match api::send_ctrl_alt_del(&self.paths.api_socket, api_limit).await {
                Ok(()) => tracing::debug!(role = %self.role, pid = self.pid, "sent Ctrl-Alt-Del"),
                Err(e) => {
                    tracing::warn!(role = %self.role, pid = self.pid, error = %e, "cannot ask the guest to shut down")
                }
            }
        }
        let mut watch = self.exit.clone();
        if let Ok(exit) = tokio::time::timeout_at(deadline, watch.wait()).await {
            return Ok(exit);
        }
        tracing::info!(role = %self.role, pid = self.pid, ?grace, "guest did not stop within grace; killing firecracker");
        if let Err(e) = self.kill.try_send(()) {
            // Full: a kill is already pending. Closed: the waiter has
            // finished, so the exit is (about to be) published. Either way
            // the wait below sees it.
            tracing::debug!(role = %self.role, pid = self.pid, error = %e, "kill not queued");
        }
        tokio::time::timeout(KILL_WAIT, watch.wait())
            .await
            .map_err(|_| StopError::StillRunning { waited: KILL_WAIT })
    }

    async fn cleanup(&self) -> Result<(), StopError> {
        let removed = self.paths.remove();
        disks::remove_files(&self.resources.private_files);
        if let Some(keep) = &self.resources.keep_log_at {
            keep_log(&self.paths.vmm_log, keep);
        }
        if let Some(jail) = &self.resources.jail {
            reaper::remove_jail(jail);
        }
        removed
    }
}

/// Moves the VM's log to `logs/` (out of `run/`, or out of its chroot before
/// the jail is removed), if it is still a plain file: a chroot belongs to
/// the guest's uid, which could have replaced it with a link.
fn keep_log(log: &Path, keep: &Path) {
    let plain = std::fs::symlink_metadata(log)
        .is_ok_and(|m| m.file_type().is_file() && std::os::unix::fs::MetadataExt::nlink(&m) == 1);
    if !plain {
        tracing::debug!(path = %log.display(), "VMM log not kept: missing or not a plain file");
        return;
    }
    if let Err(e) = std::fs::rename(log, keep) {
        tracing::debug!(path = %log.display(), error = %e, "VMM log not kept");
    }
}
