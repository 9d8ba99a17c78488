//! Guests never outlive a runner that died: each guest's first process is
//! started with `PR_SET_PDEATHSIG` = SIGKILL.
//!
//! Linux sends the signal when the *thread* that forked the child exits, not
//! the process. Guests are spawned from tokio worker threads, which live as
//! long as the runtime; a runtime shut down while guests run kills them,
//! which is the intent. The child re-checks its parent after arming the
//! signal, closing the race with a runner that died during the fork.

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpid, getppid};
use std::os::unix::process::CommandExt;

/// Arms the parent-death signal in the child `cmd` will spawn.
pub(crate) fn arm(cmd: &mut std::process::Command) {
    let runner = getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes two raw syscalls
    // (prctl, getppid), compares integers and builds io::Errors from raw
    // errno values, which does not allocate. It touches no lock and no
    // state shared with other threads of the runner.
    unsafe {
        cmd.pre_exec(move || arm_in_child(runner));
    }
}

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
