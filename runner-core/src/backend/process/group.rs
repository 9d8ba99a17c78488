//! A launched guest's process group: the waiter that reaps its leader and
//! publishes the exit, and [`ProcessControl`], its stop handle.
//!
//! Signalling a process group by id is only safe while that id cannot have
//! been handed to someone else. A group id is the leader's pid, and the
//! kernel does not reuse a pid while its process is an unreaped zombie. So
//! the waiter first *observes* the exit without reaping (`waitid` with
//! `WNOWAIT`), then, holding the group's lock, SIGKILLs whatever is left of
//! the group (grandchildren that ignored SIGTERM, daemonised helpers still
//! holding the log pipes), reaps the leader and marks the group gone. Every
//! other signal is sent under the same lock and only while the leader is
//! unreaped, so no signal can reach a recycled pid.
//!
//! A guest's tree therefore never outlives its leader, whether it was stopped
//! or exited on its own — except a process that moved itself to another
//! group or session (`setsid`), which only a cgroup could track.
//!
//! Exit notifications come from SIGCHLD (Tokio's signal stream), re-checked
//! every [`RECHECK`] in case another signal handler in the process swallowed
//! one.

use crate::backend::exit::exit_now;
use crate::backend::{ExitNotifier, ExitWatch, GuestControl, StopError};
use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use runner_types::{ExitStatus, GuestExit, GuestRole};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::signal::unix::Signal as SignalStream;
use tracing::{debug, info, warn};

/// How long [`GuestControl::stop`] waits after SIGKILL before reporting
/// [`StopError::StillRunning`].
pub const STOP_KILL_WAIT: Duration = Duration::from_secs(2);

/// Safety-net re-check of the leader's state between SIGCHLDs.
const RECHECK: Duration = Duration::from_secs(1);

/// One guest's process group.
#[derive(Debug)]
pub(super) struct ProcessGroup {
    role: GuestRole,
    pgid: Pid,
    /// True once the leader has been reaped; signals are sent only while it
    /// is false, with the lock held (see the module docs).
    reaped: Mutex<bool>,
}

impl ProcessGroup {
    /// The group led by `pid` (the guest was spawned with `setpgid(0, 0)`).
    pub(super) fn new(role: GuestRole, pid: u32) -> Self {
        Self {
            role,
            pgid: Pid::from_raw(pid as i32),
            reaped: Mutex::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.reaped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `signal` to every process of the group, unless the leader has
    /// been reaped. A group with no processes left is not an error.
    fn signal(&self, signal: Signal) -> Result<(), StopError> {
        let reaped = self.lock();
        if *reaped {
            return Ok(());
        }
        send(self.pgid, signal).map_err(|source| StopError::Signal {
            pgid: self.pgid.as_raw() as u32,
            source,
        })
    }

    /// SIGKILLs the group, logging (not returning) a failure: for paths that
    /// are already failing or being torn down.
    pub(super) fn kill_quietly(&self) {
        if let Err(e) = self.signal(Signal::SIGKILL) {
            warn!(role = %self.role, error = %e, "cannot kill guest process group");
        }
    }
}

fn send(pgid: Pid, signal: Signal) -> Result<(), Errno> {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Owns the leader until it is reaped; dropped unreaped (the runtime shut
/// down under the waiter), it kills the group rather than leave an
/// unsupervised guest running.
struct Reaper {
    child: Option<Child>,
    group: Arc<ProcessGroup>,
}

impl Reaper {
    /// Kills what is left of the group and reaps the exited leader.
    fn reap(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let mut reaped = self.group.lock();
        if let Err(e) = send(self.group.pgid, Signal::SIGKILL) {
            warn!(role = %self.group.role, error = %e, "cannot kill the rest of the guest's process group");
        }
        // The leader has exited (seen with WNOWAIT): this does not block.
        let status = child.wait();
        *reaped = true;
        match status {
            Ok(s) => Some(exit_status(s)),
            Err(e) => {
                warn!(role = %self.group.role, error = %e, "cannot reap guest");
                None
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let reaped = self.group.lock();
        if *reaped {
            return;
        }
        if let Err(e) = send(self.group.pgid, Signal::SIGKILL) {
            warn!(role = %self.group.role, error = %e, "cannot kill abandoned guest");
        }
        // Best effort: the leader may take a moment to die; if so it stays
        // a zombie until the runner exits.
        if let Err(e) = child.try_wait() {
            debug!(role = %self.group.role, error = %e, "cannot reap abandoned guest");
        }
    }
}

/// What `waitid(WNOWAIT)` says about the leader.
enum Peek {
    Running,
    Exited,
    /// Someone else reaped it (or SIGCHLD is ignored process-wide).
    Lost(Errno),
}

fn peek(pid: Pid) -> Peek {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        return match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => Peek::Running,
            Ok(_) => Peek::Exited,
            Err(Errno::EINTR) => continue,
            // nix cannot name the signal (a real-time one); the kernel still
            // reported an exit, which std decodes when reaping.
            Err(Errno::EINVAL) => Peek::Exited,
            Err(e) => Peek::Lost(e),
        };
    }
}

/// Waits for the leader to exit, reaps it and publishes its exit. If the
/// exit cannot be known, the notifier is dropped, which watchers read as
/// SIGKILL.
pub(super) async fn watch_exit(
    child: Child,
    group: Arc<ProcessGroup>,
    sigchld: SignalStream,
    notifier: ExitNotifier,
) {
    let pid = group.pgid;
    let mut reaper = Reaper {
        child: Some(child),
        group,
    };
    let mut sigchld = Some(sigchld);
    loop {
        match peek(pid) {
            Peek::Running => {}
            Peek::Exited => break,
            Peek::Lost(e) => {
                warn!(role = %reaper.group.role, %pid, error = %e, "guest exit cannot be observed");
                // Nothing left to reap or signal safely.
                *reaper.group.lock() = true;
                reaper.child = None;
                return;
            }
        }
        match sigchld.as_mut() {
            Some(s) => {
                if let Ok(None) = tokio::time::timeout(RECHECK, s.recv()).await {
                    // The signal driver is gone; fall back to re-checks.
                    sigchld = None;
                }
            }
            None => tokio::time::sleep(RECHECK).await,
        }
    }
    if let Some(status) = reaper.reap() {
        info!(role = %reaper.group.role, %pid, %status, "guest exited");
        notifier.notify(exit_now(status, false));
    }
}

/// The wire form of a std exit status: its code, or the signal that killed it.
fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(status.into_raw()),
    }
}

/// Stop handle of a process guest.
#[derive(Debug)]
pub(super) struct ProcessControl {
    pub(super) group: Arc<ProcessGroup>,
    pub(super) exit: ExitWatch,
}

/// Dropping the control of a guest that still runs kills its group: whoever
/// owned it (a guest actor killed without its `post_stop`, say) can no
/// longer stop it, and a guest must not outlive its owner.
impl Drop for ProcessControl {
    fn drop(&mut self) {
        if self.exit.get().is_some() {
            return;
        }
        warn!(role = %self.group.role, "guest abandoned while running; killing its process group");
        if let Err(e) = self.group.signal(Signal::SIGKILL) {
            debug!(role = %self.group.role, error = %e, "cannot kill abandoned guest");
        }
    }
}

#[async_trait]
impl GuestControl for ProcessControl {
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        if let Some(exit) = self.exit.get() {
            return Ok(exit);
        }
        let role = self.group.role;
        let mut exit = self.exit.clone();
        self.group.signal(Signal::SIGTERM)?;
        if let Ok(done) = tokio::time::timeout(grace, exit.wait()).await {
            return Ok(done);
        }
        warn!(%role, ?grace, "guest ignored SIGTERM; killing its process group");
        self.group.signal(Signal::SIGKILL)?;
        tokio::time::timeout(STOP_KILL_WAIT, exit.wait())
            .await
            .map_err(|_| StopError::StillRunning {
                waited: STOP_KILL_WAIT,
            })
    }

    async fn cleanup(&self) -> Result<(), StopError> {
        // Once the leader is reaped the waiter has already killed the rest of
        // the group; before that, this makes sure nothing is left running.
        if self.exit.get().is_none() {
            self.group.signal(Signal::SIGKILL)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_maps_codes_and_signals() {
        let code = std::process::ExitStatus::from_raw(3 << 8);
        assert_eq!(exit_status(code), ExitStatus::Code(3));
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(exit_status(killed), ExitStatus::Signal(9));
        let rt = std::process::ExitStatus::from_raw(35);
        assert_eq!(exit_status(rt), ExitStatus::Signal(35));
    }
}
