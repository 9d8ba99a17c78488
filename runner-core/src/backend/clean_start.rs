//! Guests start clean: whatever the runner inherited or changed in itself
//! does not reach a guest it spawns.
//!
//! `arm` adds one `pre_exec` step to a command. std runs it in the forked
//! child after it has dropped to the guest's identity (`Command::uid` /
//! `gid`: supplementary groups cleared, then gid, then uid) and changed
//! directory, just before `exec`. In that order it:
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
//!    possible descriptor). Marking rather than closing keeps std's own
//!    exec-error pipe working until the `exec` itself, which closes them all:
//!    the guest starts with exactly fds 0, 1 and 2.
//!
//! Everything in the step is a raw syscall on plain integers prepared
//! before the fork: no allocation, no lock, async-signal-safe.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::{Mode, umask};
use nix::unistd::getpid;
use std::os::unix::process::CommandExt;

/// Upper bound of the descriptor loop used when `close_range` is missing.
const FALLBACK_FD_CAP: u64 = 1 << 20;

/// Every resource whose limit a guest gets back at its start value.
const RESOURCES: [Resource; 16] = [
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

/// Adds the clean-start step (see the module docs) to `cmd`; the child
/// gets `rlimits`.
pub(crate) fn arm(cmd: &mut std::process::Command, rlimits: StartRlimits) {
    let runner = getpid();
    // Descriptors are numbered below the open-file limit in force when they
    // were opened; the runner's current one bounds the fallback loop, itself
    // capped at Linux's default `fs.nr_open` (the most a process may open
    // unless the operator raised that sysctl).
    let fd_bound = getrlimit(Resource::RLIMIT_NOFILE)
        .map_or(FALLBACK_FD_CAP, |(soft, _)| soft.min(FALLBACK_FD_CAP));
    let limits = rlimits.limits;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes raw syscalls (prctl,
    // getppid, umask, getrlimit, setrlimit, close_range or fcntl) on
    // integers prepared before the fork, iterates a Vec it owns without
    // allocating, and builds io::Errors from raw errno values, which does
    // not allocate. It touches no lock and no state shared with other
    // threads of the runner.
    unsafe {
        cmd.pre_exec(move || {
            super::parent_death::arm_in_child(runner)?;
            umask(Mode::from_bits_truncate(0o077));
            for &(resource, soft, hard) in &limits {
                lower_to(resource, soft, hard)?;
            }
            nix::sys::prctl::set_no_new_privs()?;
            let first = 3;
            let done = nix::libc::syscall(
                nix::libc::SYS_close_range,
                first,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
            if done != 0 {
                // Kernels before 5.11: no close_range, or no CLOEXEC flag.
                for fd in first..fd_bound as i32 {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Sets `resource` to `(soft, hard)`, clamped to the current hard limit.
fn lower_to(resource: Resource, soft: u64, hard: u64) -> std::io::Result<()> {
    let (_, current_hard) = getrlimit(resource)?;
    let hard = hard.min(current_hard);
    setrlimit(resource, soft.min(hard), hard)?;
    Ok(())
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
