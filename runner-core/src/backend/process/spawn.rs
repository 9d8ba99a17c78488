//! Creating a guest process without copying the runner.
//!
//! `fork` copies the runner's page tables, so its cost grows with the
//! runner's memory: with hundreds of sessions, every launch paid for all of
//! them. Here the child is created with `clone(CLONE_VM | CLONE_VFORK)`: it
//! borrows the runner's memory, runs the setup in `child.rs` on a stack of
//! its own, and execs; the spawning thread is suspended meanwhile and
//! resumes once the child has exec'd or exited. The cost is flat in the
//! runner's size, like `posix_spawn`, which cannot switch uids or set
//! rlimits and the parent-death signal.
//!
//! Everything the child touches is prepared here first: the C strings and
//! pointer arrays of `argv` and `envp`, the paths, the pipes, the
//! clean-start data, the stack. The child reports a failed step through
//! memory the parent owns; `CLONE_PIDFD` hands the parent a pidfd for the
//! child in the same call, so the exit watcher never names it by a pid that
//! could be reused.

use super::child::{ChildContext, ChildReport, ExecTarget, Identity, child_main};
use super::error::SpawnStep;
use super::program_fd::ProgramHandle;
use crate::backend::clean_start::{CleanStart, StartRlimits};
use crate::identity::GuestUser;
use nix::libc::{self, c_char, c_int, c_void};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use rustix::process::{Gid, Uid, WaitId, WaitIdOptions};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tracing::warn;

/// The child's stack. Its steps are a few small frames of raw syscalls;
/// this leaves a wide margin, debug builds included.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What to start.
pub(super) struct SpawnRequest<'a> {
    /// The program (by descriptor or path).
    pub(super) program: &'a ProgramHandle,
    /// Arguments after `argv[0]` (which is the program's path).
    pub(super) args: &'a [OsString],
    /// The whole environment.
    pub(super) env: &'a BTreeMap<String, String>,
    /// Working directory.
    pub(super) work_dir: &'a Path,
    /// Guest identity; `None`: the runner's own.
    pub(super) run_as: Option<GuestUser>,
    /// The child's rlimits.
    pub(super) rlimits: StartRlimits,
}

/// A started guest: its program is running.
#[derive(Debug)]
pub(super) struct Spawned {
    pub(super) pid: u32,
    pub(super) pidfd: OwnedFd,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
}

/// Why a spawn failed.
#[derive(Debug)]
pub(super) enum SpawnError {
    /// `what` (`argument`, ...) holds a NUL byte.
    Nul { what: &'static str, value: String },
    /// Creating the pipes or the process failed.
    Create(io::Error),
    /// The child's `step` failed; it has been reaped.
    Child { step: SpawnStep, source: io::Error },
}

/// Owned C strings and the NULL-terminated pointer array over them.
struct CStrings {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStrings {
    fn new(
        items: impl IntoIterator<Item = Vec<u8>>,
        what: &'static str,
    ) -> Result<Self, SpawnError> {
        let owned = items
            .into_iter()
            .map(|bytes| c_string(bytes, what))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(Self {
            _owned: owned,
            ptrs,
        })
    }
}

fn c_string(bytes: Vec<u8>, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|e| SpawnError::Nul {
        what,
        value: String::from_utf8_lossy(&e.into_vec()).into_owned(),
    })
}

fn path_bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

/// Starts `req`'s program; see the module docs.
pub(super) fn spawn(req: SpawnRequest<'_>) -> Result<Spawned, SpawnError> {
    let argv0 = path_bytes(req.program.path());
    let args = req.args.iter().map(|a| OsStr::as_bytes(a).to_vec());
    let argv = CStrings::new(std::iter::once(argv0).chain(args), "argument")?;
    let env = req.env.iter().map(|(k, v)| format!("{k}={v}").into_bytes());
    let envp = CStrings::new(env, "environment variable")?;
    let work_dir = c_string(path_bytes(req.work_dir), "working directory")?;
    let exec_path = c_string(path_bytes(req.program.path()), "program path")?;
    let exec = match req.program.exec_fd() {
        Some(fd) => ExecTarget::Fd(fd),
        None => ExecTarget::Path(&exec_path),
    };
    let clean = CleanStart::prepare(req.rlimits);
    let (parent_ends, child_ends) = stdio_pipes().map_err(SpawnError::Create)?;
    let ctx = ChildContext {
        reset_signals: signals_to_reset(),
        stdio: child_ends.each_ref().map(|fd| fd.as_fd()),
        identity: req.run_as.map(identity),
        work_dir: &work_dir,
        clean: &clean,
        exec,
        argv: &argv.ptrs,
        envp: &envp.ptrs,
        report: ChildReport::default(),
    };
    // The child's pipe ends close when this returns.
    let (pid, pidfd) = clone_child(&ctx).map_err(SpawnError::Create)?;
    if let Some((step, source)) = ctx.report.failure() {
        reap_failed(&pidfd);
        return Err(SpawnError::Child { step, source });
    }
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Spawned {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
    })
}

/// The signals the child must put back to their default action: every
/// caught one, and SIGPIPE if the runner ignores it (Rust programs do), as
/// bit `n - 1` for signal `n`. Read from `/proc/self/status` in one go,
/// which is far cheaper than one `sigaction` per signal in the child;
/// `None` when it cannot be read. A handler another thread installs between
/// this read and the spawn could run in the child only if that very signal
/// were sent to the child before its `exec`, while nothing knows its pid.
fn signals_to_reset() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mask = |key: &str| {
        let value = status.lines().find_map(|l| l.strip_prefix(key))?;
        u64::from_str_radix(value.trim(), 16).ok()
    };
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    Some(mask("SigCgt:")? | (mask("SigIgn:")? & sigpipe))
}

fn identity(guest: GuestUser) -> Identity {
    Identity {
        uid: Uid::from_raw(guest.uid),
        gid: Gid::from_raw(guest.gid),
        drop_groups: rustix::process::getuid().is_root(),
    }
}

/// Three close-on-exec pipes: the runner's ends (stdin's write end, the
/// read ends of stdout and stderr) and the child's. Every descriptor is
/// above 2, so the child's `dup2` onto 0, 1 and 2 never clobbers one of
/// them and always clears close-on-exec on the copy.
fn stdio_pipes() -> io::Result<([OwnedFd; 3], [OwnedFd; 3])> {
    let pipe = || -> io::Result<(OwnedFd, OwnedFd)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((above_stdio(read)?, above_stdio(write)?))
    };
    let (in_read, in_write) = pipe()?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    Ok((
        [in_write, out_read, err_read],
        [in_read, out_write, err_write],
    ))
}

/// `fd`, moved above the standard descriptors if it is one of them (the
/// runner was started with some of 0-2 closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Creates the child (see the module docs): its pid and pidfd.
#[allow(unsafe_code)]
fn clone_child(ctx: &ChildContext<'_>) -> io::Result<(u32, OwnedFd)> {
    let mut stack: Vec<u128> = Vec::with_capacity(CHILD_STACK_BYTES / 16);
    let top = stack.spare_capacity_mut().as_mut_ptr_range().end;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    let mut pidfd: c_int = -1;
    let blocked = SignalsBlocked::new()?;
    // SAFETY: `child_main` runs on `stack` (16-byte aligned, growing down
    // from `top`), which outlives the child's use of it because this thread
    // is suspended until the child execs or exits (CLONE_VFORK), and it
    // touches only `ctx`, borrowed for as long. It follows the rules in
    // `child.rs`: no allocation, no lock, no unwinding, raw syscalls only.
    // Every signal is blocked, so no handler of the runner runs in the
    // child before it resets them. With CLONE_PIDFD the kernel writes the
    // new pidfd into `pidfd`.
    let pid = unsafe {
        libc::clone(
            child_main,
            top.cast::<c_void>(),
            flags,
            std::ptr::from_ref(ctx).cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        )
    };
    let error = io::Error::last_os_error();
    drop(blocked);
    drop(stack);
    if pid < 0 {
        return Err(error);
    }
    // SAFETY: `clone` succeeded, so `pidfd` is a new descriptor that nothing
    // else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as u32, pidfd))
}

/// Every signal blocked on this thread until dropped.
struct SignalsBlocked(SigSet);

impl SignalsBlocked {
    fn new() -> io::Result<Self> {
        let mut old = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        )?;
        Ok(Self(old))
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None) {
            warn!(error = %e, "cannot restore the spawning thread's signal mask");
        }
    }
}

/// Reaps a child that reported a failed step (it has exited or is about
/// to: it returned from its entry point).
fn reap_failed(pidfd: &OwnedFd) {
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => warn!(error = %e, "cannot reap a guest process that failed to start"),
            Ok(_) => {}
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_sigpipe_is_among_the_signals_to_reset() {
        // Rust programs (this test harness too) ignore SIGPIPE; nothing
        // here touches SIGWINCH.
        let mask = signals_to_reset().expect("/proc/self/status is readable");
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0);
        assert_eq!(mask & (1 << (libc::SIGWINCH - 1)), 0);
    }
}
