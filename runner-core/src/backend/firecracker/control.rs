//! Owning one running VM: the task that publishes its exit and
//! [`FirecrackerControl`], its stop and clean-up handle.
//!
//! The VM's process is supervised like a process-tier guest's (see
//! `backend::process::clean_child`): a waiter reaps it through its pidfd,
//! and every signal goes to its process group only while it is unreaped,
//! so a signal can never hit a reused pid. Dropping the control kills the
//! VM if it still runs: a VM never outlives its owner. If the Tokio
//! runtime that owns the waiter goes away, the VM goes with it.
//!
//! A task per VM also owns the launch's vsock bridge (runtime VM only) and
//! its ownership record: it writes the record while the VM runs (so the
//! launch does not wait for it), and when the VM has exited (and the
//! record is written, or [`RECORD_WAIT`] has passed), the bridge is torn
//! down and the record removed *before* the exit is published, so whoever
//! reacts to the exit (health, a relaunch) already sees them gone.

use super::launch::{LaunchPaths, LaunchResources};
use super::vsock_bridge::VsockBridge;
use super::{api, disks, reaper};
use crate::backend::exit::{ExitNotifier, exit_channel};
use crate::backend::process::clean_child::ProcessGroup;
use crate::backend::{ExitWatch, GuestControl, StopError};
use async_trait::async_trait;
use runner_types::{GuestExit, GuestRole};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest the shutdown API request may take (less if the grace is shorter).
const API_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the exit after SIGKILL before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Longest a VM's exit waits for its ownership record to be written (a
/// hung disk): the record is removed only after that.
const RECORD_WAIT: Duration = Duration::from_secs(1);

/// What the task ends when the VM exits, before publishing the exit.
struct ExitOwned {
    bridge: Option<VsockBridge>,
    record: Option<PathBuf>,
}

/// Writes the ownership record while waiting for the VM to be reaped, ends
/// what it owns, then publishes the exit.
async fn publish_exit(
    mut reaped: ExitWatch,
    group: Arc<ProcessGroup>,
    role: GuestRole,
    pid: u32,
    notifier: ExitNotifier,
    owned: ExitOwned,
) {
    // The record is written while the VM runs; the exit waits for it (so
    // that its removal comes after it) at most RECORD_WAIT.
    let record = owned.record.clone();
    let write = async move {
        if let Some(record) = record
            && tokio::time::timeout(RECORD_WAIT, write_record(record, group, role, pid))
                .await
                .is_err()
        {
            tracing::warn!(%role, pid, "VM ownership record not written in time");
        }
    };
    let (exit, ()) = tokio::join!(reaped.wait(), write);
    tracing::debug!(%role, pid, status = %exit.status, "firecracker exited");
    drop(owned.bridge);
    if let Some(record) = &owned.record {
        reaper::remove_record(record);
    }
    notifier.notify(exit);
}

/// Writes the VM's ownership record, on the blocking pool (file-system
/// work). Its start time is read while the VM is unreaped, so the record
/// can never name a process that reused its pid.
async fn write_record(record: PathBuf, group: Arc<ProcessGroup>, role: GuestRole, pid: u32) {
    let path = record.clone();
    let written = tokio::task::spawn_blocking(move || {
        match group.while_unreaped(|| reaper::start_time(pid)).flatten() {
            Some(start) => reaper::write_record(&path, pid, start).map(|()| true),
            // Already exited and reaped: nothing left to record.
            None => Ok(false),
        }
    })
    .await;
    match written.map_err(std::io::Error::other).and_then(|w| w) {
        Ok(true) => {}
        Ok(false) => tracing::debug!(%role, pid, "VM gone before its ownership record"),
        Err(e) => {
            // The jail's cgroup still names the VM for a later reap.
            tracing::warn!(%role, pid, path = %record.display(), error = %e, "cannot write VM ownership record");
        }
    }
}

/// Stop and clean-up of one VM.
#[derive(Debug)]
pub struct FirecrackerControl {
    role: GuestRole,
    pid: u32,
    paths: LaunchPaths,
    resources: LaunchResources,
    exit: ExitWatch,
    group: Arc<ProcessGroup>,
}

impl FirecrackerControl {
    /// Takes over the VM's process `group`, whose leader's exit `reaped`
    /// sees, and starts the task that publishes the VM's exit; returns the
    /// control and the watch on that published exit.
    pub(super) fn start(
        group: Arc<ProcessGroup>,
        reaped: ExitWatch,
        role: GuestRole,
        pid: u32,
        paths: LaunchPaths,
        mut resources: LaunchResources,
    ) -> (Self, ExitWatch) {
        let (notifier, exit) = exit_channel();
        let owned = ExitOwned {
            bridge: resources.bridge.take(),
            record: resources.record.take(),
        };
        tokio::spawn(publish_exit(
            reaped,
            group.clone(),
            role,
            pid,
            notifier,
            owned,
        ));
        tracing::debug!(%role, pid, config = %paths.config.display(), "firecracker started");
        let control = Self {
            role,
            pid,
            paths,
            resources,
            exit: exit.clone(),
            group,
        };
        (control, exit)
    }
}

/// Dropping the control of a VM that still runs kills it (its process
/// group; nothing once it has been reaped).
impl Drop for FirecrackerControl {
    fn drop(&mut self) {
        if self.exit.get().is_none() {
            self.group.kill_quietly();
        }
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
        // Nothing once the VM has been reaped: its exit is (about to be)
        // published, and the wait below sees it.
        self.group.kill_quietly();
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
