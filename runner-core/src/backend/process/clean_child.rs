//! Starting a program that is not a process-tier guest — the micro_vm
//! tier's `firecracker`, or the jailer that becomes it — the way this tier
//! starts guests: created without copying the runner (`spawn.rs`), in a
//! process group of its own, with an empty environment and the clean start
//! (`clean_start.rs`), its exit watched through its pidfd and its group
//! killed when it exits or when its owner lets go (`control.rs`). It
//! keeps what `std::process` would have given it: the runner's working
//! directory (relative paths in a VM template resolve as before) and
//! `/dev/null` as stdin (a Firecracker older than 0.22 spins on a closed
//! stdin pipe).
//!
//! `std::process` has to `fork` the whole runner for the clean start's
//! `pre_exec` step, and that costs more the bigger the runner is.

use super::control;
pub(crate) use super::control::ProcessGroup;
use super::program_fd::ProgramHandle;
use super::spawn::{self, SpawnError, SpawnRequest};
use super::spawn_thread::SpawnThreadSlot;
use crate::backend::ExitWatch;
use crate::backend::clean_start::StartRlimits;
use runner_types::GuestRole;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// A started program (see the module docs).
#[derive(Debug)]
pub(crate) struct CleanChild {
    /// Its pid, which is also its process group's id.
    pub(crate) pid: u32,
    /// Its process group, for signals that can never reach a recycled pid.
    pub(crate) group: Arc<ProcessGroup>,
    /// Its exit, once it has been reaped.
    pub(crate) exit: ExitWatch,
    /// Read end of its stdout.
    pub(crate) stdout: OwnedFd,
    /// Read end of its stderr.
    pub(crate) stderr: OwnedFd,
}

/// Starts `program args` for `role` with `rlimits`, in the runner's
/// working directory (inherited), stdin from `/dev/null`. An error names
/// the failed step.
pub(crate) fn start(
    role: GuestRole,
    program: &Path,
    args: &[OsString],
    rlimits: StartRlimits,
    spawner: &SpawnThreadSlot,
) -> io::Result<CleanChild> {
    let handle = ProgramHandle::open(program, false)?;
    let request = SpawnRequest {
        program: &handle,
        args,
        env: &BTreeMap::new(),
        work_dir: None,
        run_as: None,
        rlimits,
        null_stdin: true,
    };
    let spawned = spawn::spawn(request, spawner).map_err(io_error)?;
    drop(spawned.stdin);
    let group = Arc::new(ProcessGroup::new(role, spawned.pid, spawned.spawned_by));
    let exit = control::watch(group.clone(), spawned.pidfd)?;
    Ok(CleanChild {
        pid: spawned.pid,
        group,
        exit,
        stdout: spawned.stdout,
        stderr: spawned.stderr,
    })
}

/// A spawn failure as one I/O error that says which step failed.
fn io_error(error: SpawnError) -> io::Error {
    match error {
        SpawnError::Nul { what, value } => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte: {value:?}"),
        ),
        SpawnError::Create(source) => source,
        SpawnError::Child { step, source, .. } => {
            io::Error::new(source.kind(), format!("{step} failed: {source}"))
        }
    }
}
