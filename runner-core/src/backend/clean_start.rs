//! Guests start clean: whatever the runner inherited or changed in itself
//! does not reach a guest it spawns.
//!
//! `CleanStart` is prepared in the parent and applied in the child, after
//! it has dropped to the guest's identity (supplementary groups cleared,
//! then gid, then uid) and changed directory, just before `exec`. In that
//! order it:
//!
//! 1. arms the parent-death signal and re-checks the parent (the kernel
//!    clears the signal on a credential change, so it must come after the
//!    drop; see `parent_death.rs`);
//! 2. sets the umask to 077, so nothing a guest creates is readable by other
//!    local users unless it says so;
//! 3. puts every rlimit back to the value the runner itself started with
//!    ([`StartRlimits`]; the runner raises its own open-file limit), then
//!    applies the guest's limits: `RLIMIT_NPROC` and `RLIMIT_CORE = 0`.
//!    A limit is only ever lowered to the child's current hard limit, never
//!    raised past it (an unprivileged child could not);
//! 4. sets `no_new_privs`, so no setuid or file-capability binary can give
//!    the guest more than it has;
//! 5. marks every descriptor above 2 close-on-exec (`close_range(3, ~0,
//!    CLOSE_RANGE_CLOEXEC)`, Linux 5.11; before that, `fcntl` on each
//!    possible descriptor). Marking rather than closing keeps the program
//!    descriptor and any error channel usable until the `exec` itself,
//!    which closes them all: the guest starts with exactly fds 0, 1 and 2.
//!
//! Every step is a raw syscall on plain data prepared before the child was
//! created: no allocation, no lock, async-signal-safe, as it must be in a
//! child that shares the runner's memory until `exec` (the vfork-class
//! spawn that creates process-tier guests and the micro_vm tier's VMMs).

use super::process::SpawnStep;
use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{Pid, getpid};

/// Upper bound of the descriptor loop used when `close_range` is missing.
const FALLBACK_FD_CAP: u64 = 1 << 20;

/// Every resource whose limit a guest gets back at its start value.
pub(crate) const RESOURCES: [Resource; 16] = [
    Resource::RLIMIT_AS,
    Resource::RLIMIT_CORE,
    Resource::RLIMIT_CPU,
    Resource::RLIMIT_DATA,
    Resource::RLIMIT_FSIZE,
    Resource::RLIMIT_LOCKS,
    Resource::RLIMIT_MEMLOCK,
    Resource::RLIMIT_MSGQUEUE,
    Resource::RLIMIT_NICE,
    Resource::RLIMIT_NOFILE,
    Resource::RLIMIT_NPROC,
    Resource::RLIMIT_RSS,
    Resource::RLIMIT_RTPRIO,
    Resource::RLIMIT_RTTIME,
    Resource::RLIMIT_SIGPENDING,
    Resource::RLIMIT_STACK,
];

/// The rlimits a runner started with, as plain data.
///
/// The embedding program captures them first thing, before it raises any
/// of its own limits (runner-bin raises `RLIMIT_NOFILE`), and hands them to
/// the backends that spawn processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRlimits {
    limits: Vec<(Resource, u64, u64)>,
}

impl StartRlimits {
    /// The calling process's current limits (a resource that cannot be read
    /// is left out, and stays as the runner has it).
    pub fn capture() -> Self {
        let limits = RESOURCES
            .iter()
            .filter_map(|&r| getrlimit(r).ok().map(|(soft, hard)| (r, soft, hard)))
            .collect();
        Self { limits }
    }

    /// Soft and hard limit of `resource`, if captured.
    pub fn get(&self, resource: Resource) -> Option<(u64, u64)> {
        self.limits
            .iter()
            .find(|(r, _, _)| *r == resource)
            .map(|&(_, soft, hard)| (soft, hard))
    }

    /// These limits, with `resource` set to `(soft, hard)`.
    pub fn with(mut self, resource: Resource, soft: u64, hard: u64) -> Self {
        self.limits.retain(|(r, _, _)| *r != resource);
        self.limits.push((resource, soft, hard));
        self
    }
}

/// The clean-start steps of one child, as plain data prepared in the parent
/// (see the module docs).
#[derive(Debug)]
pub(crate) struct CleanStart {
    runner: Pid,
    fd_bound: i32,
    limits: Vec<(Resource, u64, u64)>,
}

impl CleanStart {
    /// Prepares the steps for a child that gets `rlimits`.
    pub(crate) fn prepare(rlimits: StartRlimits) -> Self {
        // Descriptors are numbered below the open-file limit in force when
        // they were opened; the runner's current one bounds the fallback
        // loop, itself capped at Linux's default `fs.nr_open` (the most a
        // process may open unless the operator raised that sysctl).
        let fd_bound = getrlimit(Resource::RLIMIT_NOFILE)
            .map_or(FALLBACK_FD_CAP, |(soft, _)| soft.min(FALLBACK_FD_CAP));
        Self {
            runner: getpid(),
            fd_bound: fd_bound as i32,
            limits: rlimits.limits,
        }
    }

    /// In the child (async-signal-safe, allocation-free): applies every
    /// step, in order; the first failure names its step.
    pub(crate) fn apply(&self) -> Result<(), (SpawnStep, Errno)> {
        super::parent_death::arm_in_child(self.runner)?;
        umask(Mode::from_bits_truncate(0o077));
        for &(resource, soft, hard) in &self.limits {
            lower_to(resource, soft, hard).map_err(|e| (SpawnStep::Rlimit(resource), e))?;
        }
        nix::sys::prctl::set_no_new_privs().map_err(|e| (SpawnStep::NoNewPrivs, e))?;
        mark_cloexec_from_3(self.fd_bound);
        Ok(())
    }
}

/// Sets `resource` to `(soft, hard)`, clamped to the current hard limit.
fn lower_to(resource: Resource, soft: u64, hard: u64) -> Result<(), Errno> {
    let (_, current_hard) = getrlimit(resource)?;
    let hard = hard.min(current_hard);
    setrlimit(resource, soft.min(hard), hard)
}

/// Marks every descriptor from 3 up close-on-exec; `fd_bound` bounds the
/// loop used when the kernel has no `close_range` with that flag.
#[allow(unsafe_code)]
fn mark_cloexec_from_3(fd_bound: i32) {
    let first: u32 = 3;
    // SAFETY: plain syscalls on integers; marking a descriptor close-on-exec
    // invalidates no memory, and a number that is not an open descriptor is
    // reported as EBADF and otherwise ignored.
    unsafe {
        let done = nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            u32::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC,
        );
        if done != 0 {
            // Kernels before 5.11: no close_range, or no CLOEXEC flag.
            for fd in first as i32..fd_bound {
                nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_reads_the_open_file_limit_and_with_replaces_one_entry() {
        let start = StartRlimits::capture();
        let now = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(start.get(Resource::RLIMIT_NOFILE), Some(now));
        let changed = start.clone().with(Resource::RLIMIT_CORE, 0, 0);
        assert_eq!(changed.get(Resource::RLIMIT_CORE), Some((0, 0)));
        assert_eq!(changed.limits.len(), start.limits.len());
    }
}
