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
use super::spawn_thread::{SpawnThread, SpawnThreadSlot, THREAD_FROM_FD_SLOTS};
use crate::backend::clean_start::{CleanStart, StartRlimits};
use crate::identity::GuestUser;
use nix::libc::{self, c_char, c_int, c_void};
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
use rustix::process::{Gid, Uid, WaitId, WaitIdOptions};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

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
    /// Working directory; `None`: the runner's own, inherited.
    pub(super) work_dir: Option<&'a Path>,
    /// Guest identity; `None`: the runner's own.
    pub(super) run_as: Option<GuestUser>,
    /// The child's rlimits.
    pub(super) rlimits: StartRlimits,
    /// Its stdin reads `/dev/null` instead of a pipe from the runner.
    pub(super) null_stdin: bool,
}

/// A started guest: its program is running.
#[derive(Debug)]
pub(super) struct Spawned {
    pub(super) pid: u32,
    pub(super) pidfd: OwnedFd,
    pub(super) stdin: OwnedFd,
    pub(super) stdout: OwnedFd,
    pub(super) stderr: OwnedFd,
    /// The spawn thread that created it, if one did.
    pub(super) spawned_by: Option<Arc<SpawnThread>>,
}

/// Why a spawn failed.
#[derive(Debug)]
pub(super) enum SpawnError {
    /// `what` (`argument`, ...) holds a NUL byte.
    Nul { what: &'static str, value: String },
    /// Creating the pipes or the process failed.
    Create(io::Error),
    /// The child's `step` failed. It has been reaped, unless `unreaped`
    /// says why that failed (already logged by [`spawn_with`]).
    Child {
        step: SpawnStep,
        source: io::Error,
        unreaped: Option<io::Error>,
    },
}

/// Everything the child needs, owned, so that it can be handed to the spawn
/// thread (`spawn_thread.rs`); the pointer arrays over the strings are built
/// where the child is created.
#[derive(Debug)]
pub(super) struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    work_dir: Option<CString>,
    exec_path: CString,
    clean: CleanStart,
    identity: Option<Identity>,
    reset_signals: Option<u64>,
}

fn c_strings(
    items: impl IntoIterator<Item = Vec<u8>>,
    what: &'static str,
) -> Result<Vec<CString>, SpawnError> {
    items
        .into_iter()
        .map(|bytes| c_string(bytes, what))
        .collect()
}

/// The NULL-terminated pointer array over `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
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

impl Prepared {
    /// Checks and converts `req`'s strings and gathers the clean-start data.
    fn new(req: &SpawnRequest<'_>, reset_signals: Option<u64>) -> Result<Self, SpawnError> {
        let argv0 = path_bytes(req.program.path());
        let args = req.args.iter().map(|a| OsStr::as_bytes(a).to_vec());
        let env = req.env.iter().map(|(k, v)| format!("{k}={v}").into_bytes());
        Ok(Self {
            argv: c_strings(std::iter::once(argv0).chain(args), "argument")?,
            envp: c_strings(env, "environment variable")?,
            work_dir: req
                .work_dir
                .map(|dir| c_string(path_bytes(dir), "working directory"))
                .transpose()?,
            exec_path: c_string(path_bytes(req.program.path()), "program path")?,
            clean: CleanStart::prepare(req.rlimits.clone()),
            identity: req.run_as.map(identity),
            reset_signals,
        })
    }

    /// Creates the child on the calling thread, with `stdio` as its 0, 1
    /// and 2, executing `exec_fd` (or the program's path without one). A
    /// child that reports a failed step is reaped before this returns.
    /// Logs nothing: the spawn thread must not (see `spawn_thread.rs`).
    pub(super) fn create(
        &self,
        stdio: [BorrowedFd<'_>; 3],
        exec_fd: Option<BorrowedFd<'_>>,
    ) -> Result<(u32, OwnedFd), SpawnError> {
        let (argv, envp) = (pointers(&self.argv), pointers(&self.envp));
        let ctx = ChildContext {
            reset_signals: self.reset_signals,
            stdio,
            identity: self.identity,
            work_dir: self.work_dir.as_deref(),
            clean: &self.clean,
            exec: exec_fd.map_or(ExecTarget::Path(&self.exec_path), ExecTarget::Fd),
            argv: &argv,
            envp: &envp,
            report: ChildReport::default(),
        };
        let (pid, pidfd) = clone_child(&ctx).map_err(SpawnError::Create)?;
        if let Some((step, source)) = ctx.report.failure() {
            return Err(SpawnError::Child {
                step,
                source,
                unreaped: reap_failed(&pidfd).err(),
            });
        }
        Ok((pid, pidfd))
    }
}

/// Starts `req`'s program; see the module docs. Once the runner's
/// descriptor table has [`THREAD_FROM_FD_SLOTS`] slots, the child is
/// created on the spawn thread in `slot`, whose table is small; before, on
/// the calling thread, which is cheaper while the table is small too.
pub(super) fn spawn(req: SpawnRequest<'_>, slot: &SpawnThreadSlot) -> Result<Spawned, SpawnError> {
    let status = SelfStatus::read();
    let big_table = status.fd_slots.is_some_and(|n| n >= THREAD_FROM_FD_SLOTS);
    let thread = if big_table { slot.get() } else { None };
    spawn_with(req, status.reset_signals, thread.as_ref())
}

/// [`spawn`] on `thread`, or on the calling thread without one.
pub(super) fn spawn_with(
    req: SpawnRequest<'_>,
    reset_signals: Option<u64>,
    thread: Option<&Arc<SpawnThread>>,
) -> Result<Spawned, SpawnError> {
    let prepared = Prepared::new(&req, reset_signals)?;
    let (parent_ends, child_ends) = stdio_pipes(req.null_stdin).map_err(SpawnError::Create)?;
    let exec_fd = req.program.exec_fd();
    // The child's pipe ends close when this returns.
    let created = match thread {
        Some(thread) => thread.create(prepared, &child_ends, exec_fd),
        None => prepared.create(child_ends.each_ref().map(|fd| fd.as_fd()), exec_fd),
    };
    if let Err(SpawnError::Child {
        unreaped: Some(error),
        ..
    }) = &created
    {
        // Logged here, not where it happened: the spawn thread logs nothing.
        tracing::warn!(program = %req.program.path().display(), %error, "cannot reap a process that failed to start");
    }
    let (pid, pidfd) = created?;
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Spawned {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
        spawned_by: thread.cloned(),
    })
}

/// What a spawn reads from `/proc/self/status`, in one read.
struct SelfStatus {
    /// See [`signals_to_reset`].
    reset_signals: Option<u64>,
    /// Slots in the runner's descriptor table (`FDSize`): what bounds the
    /// cost of copying it into a child.
    fd_slots: Option<u64>,
}

impl SelfStatus {
    fn read() -> Self {
        match std::fs::read_to_string("/proc/self/status") {
            Ok(status) => Self {
                reset_signals: signals_to_reset(&status),
                fd_slots: field(&status, "FDSize:").and_then(|v| v.parse().ok()),
            },
            Err(_) => Self {
                reset_signals: None,
                fd_slots: None,
            },
        }
    }
}

fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

/// The signals the child must put back to their default action: every
/// caught one, and SIGPIPE if the runner ignores it (Rust programs do), as
/// bit `n - 1` for signal `n`. Read from `/proc/self/status` in one go,
/// which is far cheaper than one `sigaction` per signal in the child;
/// `None` when it cannot be read. A handler another thread installs between
/// this read and the spawn could run in the child only if that very signal
/// were sent to the child before its `exec`, while nothing knows its pid.
fn signals_to_reset(status: &str) -> Option<u64> {
    let mask = |key: &str| u64::from_str_radix(field(status, key)?, 16).ok();
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
/// read ends of stdout and stderr) and the child's; with `null_stdin`,
/// `/dev/null` instead of the stdin pipe (both ends). Every descriptor is
/// above 2, so the child's `dup2` onto 0, 1 and 2 never clobbers one of
/// them and always clears close-on-exec on the copy.
fn stdio_pipes(null_stdin: bool) -> io::Result<([OwnedFd; 3], [OwnedFd; 3])> {
    let pipe = || -> io::Result<(OwnedFd, OwnedFd)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((above_stdio(read)?, above_stdio(write)?))
    };
    let (in_read, in_write) = if null_stdin {
        // The runner's end is a second descriptor of the same file.
        let null = above_stdio(std::fs::File::open("/dev/null")?.into())?;
        (null.try_clone()?, null)
    } else {
        pipe()?
    };
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
        // Cannot fail: the mask and `how` are valid. Nothing is logged
        // here, because this runs on the spawn thread too.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Reaps a child that has exited or is about to (it reported a failed
/// step, or was killed).
pub(super) fn reap_failed(pidfd: &OwnedFd) -> io::Result<()> {
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_sigpipe_is_among_the_signals_to_reset() {
        // Rust programs (this test harness too) ignore SIGPIPE; nothing
        // here touches SIGWINCH.
        let mask = SelfStatus::read()
            .reset_signals
            .expect("/proc/self/status is readable");
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0);
        assert_eq!(mask & (1 << (libc::SIGWINCH - 1)), 0);
    }
}
