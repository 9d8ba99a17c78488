//! Guests never outlive a runner that died: each guest's first process is
//! started with `PR_SET_PDEATHSIG` = SIGKILL (armed by the clean start of
//! every spawned guest, after any credential change).
//!
//! Linux sends the signal when the *thread* that forked the child exits, not
//! the process. Guests are spawned from tokio worker threads, which live as
//! long as the runtime; a runtime shut down while guests run kills them,
//! which is the intent. The child re-checks its parent after arming the
//! signal, closing the race with a runner that died during the fork.

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

/// In a forked child (async-signal-safe): arms the death signal, then fails
/// with `ESRCH` if `runner` is no longer the parent. Call it after any
/// credential change, which clears the signal.
pub(crate) fn arm_in_child(runner: Pid) -> std::io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid() != runner {
        // The runner died before the death signal was armed.
        return Err(nix::errno::Errno::ESRCH.into());
    }
    Ok(())
}
