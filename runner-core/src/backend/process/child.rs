//! What runs in a new guest process between its creation and the exec of
//! its program.
//!
//! The child shares the runner's memory until it execs (the spawn is
//! `clone(CLONE_VM | CLONE_VFORK)`, see `spawn.rs`), while the runner's
//! spawning thread is suspended. So it does only what is safe there: raw
//! syscalls on data the parent prepared ([`ChildContext`]), no allocation,
//! no lock, no panic, and no libc call that coordinates threads (glibc's
//! `setuid` and `setgroups` signal every thread of the process so that they
//! all change; here that would be the runner's threads, so the identity
//! switch uses the raw per-thread syscalls, which in a single-threaded child
//! change the whole process).
//!
//! Signals are blocked from before the child's creation until its handlers
//! are back to their defaults, so no handler of the runner ever runs in it;
//! SIGPIPE, which the runner ignores, is back to its default too, and the
//! program starts with an empty signal mask (as `std::process` children do).
//!
//! The steps, in order: signal handlers, stdio, identity (supplementary
//! groups dropped, gid, uid), working directory (as the guest), own process
//! group, the clean start (`clean_start.rs`: parent-death signal and parent
//! re-check, umask, rlimits, `no_new_privs`, descriptors above 2), signal
//! mask, exec. A failed step is written to the context's [`ChildReport`]
//! and the child exits with [`SETUP_FAILED`]; the parent reads the report
//! when it resumes.

use super::error::SpawnStep;
use crate::backend::clean_start::{CleanStart, RESOURCES};
use nix::libc::{self, c_char, c_int, c_void};
use nix::sys::signal::SigSet;
use rustix::process::{Gid, Uid};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Exit status of a child whose setup or exec failed (what shells use for
/// "command not found or not executable").
pub(super) const SETUP_FAILED: c_int = 127;

/// Everything the child needs, prepared and owned by the parent, which
/// keeps it alive (and itself suspended) until the child execs or exits.
pub(super) struct ChildContext<'a> {
    /// The signals to put back to their default action (bit `n - 1` for
    /// signal `n`); `None`: ask the kernel about each one.
    pub(super) reset_signals: Option<u64>,
    /// Become the child's stdin, stdout and stderr.
    pub(super) stdio: [BorrowedFd<'a>; 3],
    /// The guest's identity; `None`: the runner's own.
    pub(super) identity: Option<Identity>,
    /// The working directory; `None`: the runner's, inherited.
    pub(super) work_dir: Option<&'a CStr>,
    /// The clean-start steps.
    pub(super) clean: &'a CleanStart,
    /// What to exec.
    pub(super) exec: ExecTarget<'a>,
    /// `argv`, NULL-terminated.
    pub(super) argv: &'a [*const c_char],
    /// `envp`, NULL-terminated.
    pub(super) envp: &'a [*const c_char],
    /// Where a failure is written.
    pub(super) report: ChildReport,
}

/// A guest identity, ready for the raw syscalls.
#[derive(Debug, Clone, Copy)]
pub(super) struct Identity {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    /// Whether to drop supplementary groups (only root can, and only root
    /// has any worth dropping for a guest).
    pub(super) drop_groups: bool,
}

/// How the program is executed.
#[derive(Debug, Clone, Copy)]
pub(super) enum ExecTarget<'a> {
    /// An open ELF executable (`execveat(fd, "", AT_EMPTY_PATH)`).
    Fd(BorrowedFd<'a>),
    /// A path (`execve`).
    Path(&'a CStr),
}

/// A failed step, written by the child and read by the parent once the
/// child has exited. `step` 0 means no failure.
#[derive(Debug, Default)]
pub(super) struct ChildReport {
    step: AtomicU32,
    errno: AtomicI32,
}

impl ChildReport {
    fn record(&self, step: SpawnStep, errno: i32) {
        self.errno.store(errno, Ordering::SeqCst);
        self.step.store(encode(step), Ordering::SeqCst);
    }

    /// The failed step and the kernel's answer, if the child reported one.
    pub(super) fn failure(&self) -> Option<(SpawnStep, std::io::Error)> {
        let step = decode(self.step.load(Ordering::SeqCst))?;
        let errno = self.errno.load(Ordering::SeqCst);
        Some((step, std::io::Error::from_raw_os_error(errno)))
    }
}

/// Offset of the rlimit codes: `RLIMIT_BASE + index in RESOURCES`.
const RLIMIT_BASE: u32 = 100;

const PLAIN_STEPS: [SpawnStep; 11] = [
    SpawnStep::Stdio,
    SpawnStep::Groups,
    SpawnStep::Gid,
    SpawnStep::Uid,
    SpawnStep::WorkDir,
    SpawnStep::ProcessGroup,
    SpawnStep::ParentDeathSignal,
    SpawnStep::ParentGone,
    SpawnStep::NoNewPrivs,
    SpawnStep::SignalMask,
    SpawnStep::Exec,
];

/// A non-zero code for `step` (allocation-free: runs in the child).
fn encode(step: SpawnStep) -> u32 {
    if let SpawnStep::Rlimit(resource) = step {
        let index = RESOURCES.iter().position(|r| *r == resource).unwrap_or(0);
        return RLIMIT_BASE + index as u32;
    }
    let index = PLAIN_STEPS.iter().position(|s| *s == step).unwrap_or(0);
    1 + index as u32
}

fn decode(code: u32) -> Option<SpawnStep> {
    match code {
        0 => None,
        c if c >= RLIMIT_BASE => RESOURCES
            .get((c - RLIMIT_BASE) as usize)
            .map(|r| SpawnStep::Rlimit(*r)),
        c => PLAIN_STEPS.get(c as usize - 1).copied(),
    }
}

/// The child's entry point, passed to `clone`. Returns (and so exits) only
/// when a step or the exec failed.
#[allow(unsafe_code)]
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildContext` the parent passed to `clone`; the
    // parent is suspended (CLONE_VFORK) and keeps the context alive until
    // this child has exec'd or exited, and only reads it afterwards.
    let ctx = unsafe { &*arg.cast::<ChildContext<'_>>() };
    let (step, errno) = match ctx.setup() {
        Ok(()) => (SpawnStep::Exec, exec(ctx)),
        Err(failed) => failed,
    };
    ctx.report.record(step, errno);
    SETUP_FAILED
}

/// Maps a rustix failure to a step failure.
fn at(step: SpawnStep) -> impl Fn(rustix::io::Errno) -> (SpawnStep, i32) {
    move |e| (step, e.raw_os_error())
}

impl ChildContext<'_> {
    /// Every step before the exec, in the module docs' order.
    fn setup(&self) -> Result<(), (SpawnStep, i32)> {
        reset_signal_handlers(self.reset_signals);
        let [stdin, stdout, stderr] = self.stdio;
        rustix::stdio::dup2_stdin(stdin).map_err(at(SpawnStep::Stdio))?;
        rustix::stdio::dup2_stdout(stdout).map_err(at(SpawnStep::Stdio))?;
        rustix::stdio::dup2_stderr(stderr).map_err(at(SpawnStep::Stdio))?;
        if let Some(identity) = self.identity {
            identity.assume()?;
        }
        if let Some(dir) = self.work_dir {
            rustix::process::chdir(dir).map_err(at(SpawnStep::WorkDir))?;
        }
        rustix::process::setpgid(None, None).map_err(at(SpawnStep::ProcessGroup))?;
        self.clean.apply().map_err(|(step, e)| (step, e as i32))?;
        SigSet::empty()
            .thread_set_mask()
            .map_err(|e| (SpawnStep::SignalMask, e as i32))
    }
}

impl Identity {
    /// Groups, then gid, then uid: each later step needs the privilege the
    /// next one drops.
    fn assume(self) -> Result<(), (SpawnStep, i32)> {
        if self.drop_groups {
            rustix::thread::set_thread_groups(&[]).map_err(at(SpawnStep::Groups))?;
        }
        let gid = self.gid;
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(at(SpawnStep::Gid))?;
        let uid = self.uid;
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(at(SpawnStep::Uid))
    }
}

/// Execs the program; returns only on failure, with the errno.
#[allow(unsafe_code)]
fn exec(ctx: &ChildContext<'_>) -> i32 {
    let argv = ctx.argv.as_ptr();
    let envp = ctx.envp.as_ptr();
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of pointers to
    // NUL-terminated strings, and the path is a `CStr`, all owned by the
    // parent and alive until this child execs or exits; the descriptor is
    // open for the same span. On success the call does not return.
    unsafe {
        match ctx.exec {
            ExecTarget::Fd(fd) => {
                let empty: &CStr = c"";
                libc::syscall(
                    libc::SYS_execveat,
                    fd.as_raw_fd(),
                    empty.as_ptr(),
                    argv,
                    envp,
                    libc::AT_EMPTY_PATH,
                );
            }
            ExecTarget::Path(path) => {
                libc::execve(path.as_ptr(), argv, envp);
            }
        }
    }
    nix::errno::Errno::last_raw()
}

/// Puts every caught signal back to its default action, and SIGPIPE too:
/// those in `known` (bit `n - 1` for signal `n`), or, without it, those
/// found by asking the kernel about each signal. Signals are blocked
/// meanwhile, so none is delivered to a handler.
fn reset_signal_handlers(known: Option<u64>) {
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let reset = match known {
            Some(mask) => mask & (1 << (signal - 1)) != 0,
            None => has_handler_or_is_sigpipe(signal),
        };
        if reset {
            set_default(signal);
        }
    }
}

/// Whether `signal` is caught, or is SIGPIPE and not at its default.
#[allow(unsafe_code)]
fn has_handler_or_is_sigpipe(signal: c_int) -> bool {
    // SAFETY: `sigaction` only writes the local struct, which is plain
    // integers and pointers (zero is a valid value for each).
    let handler = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
            // A signal number the C library reserves for itself.
            return false;
        }
        current.sa_sigaction
    };
    let ignored_by_choice = handler == libc::SIG_IGN && signal != libc::SIGPIPE;
    handler != libc::SIG_DFL && !ignored_by_choice
}

/// Sets `signal`'s action to its default (refused, and so left alone, for a
/// signal number the C library reserves for itself).
#[allow(unsafe_code)]
fn set_default(signal: c_int) {
    // SAFETY: `sigaction` only reads the local struct, which is plain
    // integers and pointers (zero is a valid value for each); installing
    // SIG_DFL runs no code.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &default, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::resource::Resource;

    #[test]
    fn an_ignored_sigpipe_is_reset_and_a_default_signal_left_alone() {
        // Rust programs (this test harness too) ignore SIGPIPE.
        assert!(has_handler_or_is_sigpipe(libc::SIGPIPE));
        assert!(!has_handler_or_is_sigpipe(libc::SIGWINCH));
    }

    #[test]
    fn every_step_survives_the_report() {
        let mut steps = PLAIN_STEPS.to_vec();
        steps.push(SpawnStep::Rlimit(Resource::RLIMIT_NOFILE));
        steps.push(SpawnStep::Rlimit(Resource::RLIMIT_STACK));
        for step in steps {
            let report = ChildReport::default();
            assert!(report.failure().is_none());
            report.record(step, libc::EACCES);
            let (got, err) = report.failure().unwrap();
            assert_eq!(got, step);
            assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        }
    }
}
