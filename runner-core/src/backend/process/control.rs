//! A launched guest's stop handle, [`ProcessControl`], and the waiter that
//! reaps its process group's leader and publishes the exit.
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
//! The waiter learns of the exit from the leader's pidfd (created with the
//! process, see `spawn.rs`), which becomes readable when the leader exits;
//! it is watched by Tokio's reactor, and `waitid` on it observes and reaps
//! exactly that child.

use super::spawn_thread::SpawnThread;
use crate::backend::exit::{exit_channel, exit_now};
use crate::backend::{ExitNotifier, ExitWatch, GuestControl, StopError};
use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use runner_types::{ExitStatus, GuestExit, GuestRole};
use rustix::process::{WaitId, WaitIdOptions, WaitIdStatus};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdRegisterError};
use tracing::{debug, info, warn};

/// How long [`GuestControl::stop`] waits after SIGKILL before reporting
/// [`StopError::StillRunning`].
pub const STOP_KILL_WAIT: Duration = Duration::from_secs(2);

/// One guest's process group.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    role: GuestRole,
    pgid: Pid,
    /// True once the leader has been reaped; signals are sent only while it
    /// is false, with the lock held (see the module docs).
    reaped: Mutex<bool>,
    /// The thread that created the leader, kept alive while the guest is
    /// supervised: its end fires the guest's parent-death signal.
    _spawned_by: Option<Arc<SpawnThread>>,
}

impl ProcessGroup {
    /// The group led by `pid` (the guest was spawned with `setpgid(0, 0)`).
    pub(super) fn new(role: GuestRole, pid: u32, spawned_by: Option<Arc<SpawnThread>>) -> Self {
        Self {
            role,
            pgid: Pid::from_raw(pid as i32),
            reaped: Mutex::new(false),
            _spawned_by: spawned_by,
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

    /// `f`, run while the leader is unreaped, so that its pid names it and
    /// no other process meanwhile; `None` once it has been reaped.
    pub(crate) fn while_unreaped<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let reaped = self.lock();
        (!*reaped).then(f)
    }

    /// SIGKILLs the group, logging (not returning) a failure: for paths that
    /// are already failing or being torn down.
    pub(crate) fn kill_quietly(&self) {
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

/// Watches `pidfd` (the leader of `group`) and starts the waiter task; the
/// returned watch sees its exit. If the pidfd cannot be watched, the group
/// is killed and its leader reaped here.
pub(super) fn watch(group: Arc<ProcessGroup>, pidfd: OwnedFd) -> Result<ExitWatch, std::io::Error> {
    let pidfd = match register(pidfd) {
        Ok(fd) => fd,
        Err(e) => {
            let (pidfd, error) = e.into_parts();
            let mut reaper = Reaper { pidfd: None, group };
            reaper.reap(pidfd.as_fd(), WaitIdOptions::EXITED);
            return Err(error);
        }
    };
    let (notifier, exit) = exit_channel();
    let reaper = Reaper {
        pidfd: Some(pidfd),
        group,
    };
    tokio::spawn(watch_exit(reaper, notifier));
    Ok(exit)
}

/// `pidfd` on Tokio's reactor, waking its waiter when the leader exits.
#[allow(unsafe_code)]
fn register(pidfd: OwnedFd) -> Result<AsyncFd<OwnedFd>, AsyncFdRegisterError<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that stays open, and names
    // the same pidfd, until the `AsyncFd` owning it is dropped.
    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
}

/// Owns the leader's pidfd until the leader is reaped; dropped unreaped (the
/// runtime shut down under the waiter), it kills the group rather than leave
/// an unsupervised guest running.
struct Reaper {
    pidfd: Option<AsyncFd<OwnedFd>>,
    group: Arc<ProcessGroup>,
}

impl Reaper {
    /// Kills what is left of the group and reaps the exited leader (`wait`
    /// without `NOHANG` blocks until it has exited).
    fn reap(
        &mut self,
        pidfd: std::os::fd::BorrowedFd<'_>,
        wait: WaitIdOptions,
    ) -> Option<ExitStatus> {
        let mut reaped = self.group.lock();
        if let Err(e) = send(self.group.pgid, Signal::SIGKILL) {
            warn!(role = %self.group.role, error = %e, "cannot kill the rest of the guest's process group");
        }
        let status = loop {
            match rustix::process::waitid(WaitId::PidFd(pidfd), wait) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other,
            }
        };
        match status {
            Ok(Some(s)) => {
                *reaped = true;
                Some(exit_status(&s))
            }
            // Still dying (only with NOHANG): not reaped, so its pid stays
            // reserved and signalling the group stays safe.
            Ok(None) => None,
            Err(e) => {
                warn!(role = %self.group.role, error = %e, "cannot reap guest");
                *reaped = true;
                None
            }
        }
    }

    /// Reaps the leader, which has exited (seen with `NOWAIT`).
    fn reap_exited(&mut self) -> Option<ExitStatus> {
        let pidfd = self.pidfd.take()?;
        self.reap(
            pidfd.get_ref().as_fd(),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        )
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if *self.group.lock() {
            return;
        }
        // Best effort: the leader may take a moment to die; if so it stays
        // a zombie until the runner exits.
        let status = self.reap(
            pidfd.get_ref().as_fd(),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
        debug!(role = %self.group.role, ?status, "killed an abandoned guest");
    }
}

/// What `waitid(NOWAIT)` says about the leader.
enum Peek {
    Running,
    Exited,
    /// Someone else reaped it (or SIGCHLD is ignored process-wide).
    Lost(rustix::io::Errno),
}

fn peek(pidfd: &AsyncFd<OwnedFd>) -> Peek {
    let flags = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        return match rustix::process::waitid(WaitId::PidFd(pidfd.get_ref().as_fd()), flags) {
            Ok(None) => Peek::Running,
            Ok(Some(_)) => Peek::Exited,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => Peek::Lost(e),
        };
    }
}

/// Waits for the leader to exit, reaps it and publishes its exit. If the
/// exit cannot be known, the notifier is dropped, which watchers read as
/// SIGKILL.
async fn watch_exit(mut reaper: Reaper, notifier: ExitNotifier) {
    let role = reaper.group.role;
    let pid = reaper.group.pgid;
    while let Some(pidfd) = reaper.pidfd.as_ref() {
        match peek(pidfd) {
            Peek::Running => {}
            Peek::Exited => break,
            Peek::Lost(e) => {
                warn!(%role, %pid, error = %e, "guest exit cannot be observed");
                // Nothing left to reap or signal safely.
                *reaper.group.lock() = true;
                reaper.pidfd = None;
                return;
            }
        }
        match pidfd.readable().await {
            Ok(mut ready) => ready.clear_ready(),
            Err(e) => {
                // The reactor is gone (runtime shutdown): the reaper's drop
                // kills the group.
                warn!(%role, %pid, error = %e, "cannot wait for the guest's exit");
                return;
            }
        }
    }
    if let Some(status) = reaper.reap_exited() {
        info!(%role, %pid, %status, "guest exited");
        notifier.notify(exit_now(status, false));
    }
}

/// The wire form of a `waitid` status: the exit code, or the signal that
/// killed it.
fn exit_status(status: &WaitIdStatus) -> ExitStatus {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(status.raw_code()),
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
