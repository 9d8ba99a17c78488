//! Guests never outlive a runner that died: each guest's first process is
//! started with `PR_SET_PDEATHSIG` = SIGKILL (armed by the clean start of
//! every spawned guest, after any credential change).
//!
//! Linux sends the signal when the *thread* that forked the child exits, not
//! the process. In a runner holding many descriptors, process-tier guests
//! are created on the backend's spawn thread (`process/spawn_thread.rs`),
//! which lives as long as the backend or any guest it created; other
//! children are spawned from tokio worker threads, which live as long as
//! the runtime, and a runtime shut down while they run kills them, which is
//! the intent. The child re-checks its parent after arming the signal, closing
//! the race with a runner that died while the child was being created.

use super::process::SpawnStep;
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

/// In a new child (async-signal-safe, allocation-free): arms the death
/// signal, then fails with `ESRCH` if `runner` is no longer the parent. Call
/// it after any credential change, which clears the signal.
pub(crate) fn arm_in_child(runner: Pid) -> Result<(), (SpawnStep, Errno)> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| (SpawnStep::ParentDeathSignal, e))?;
    if getppid() != runner {
        // The runner died before the death signal was armed.
        return Err((SpawnStep::ParentGone, Errno::ESRCH));
    }
    Ok(())
}
