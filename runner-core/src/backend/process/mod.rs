//! Process tier: each guest is a plain host process.
//!
//! A launch checks everything it can before spawning (the role has a
//! command, the envelope frames, the program resolves to an executable file,
//! the workspace exists), then starts
//! `<program> <args...> --user-id <id> --workspace-root <root> --bootstrap-stdin`
//! in its own process group with a cleared environment, as
//! [`LaunchSpec::run_as`] when it is set (the runner is root), and with a
//! clean start: umask 077, fds 0-2 only, `no_new_privs`, the runner's start
//! rlimits plus `RLIMIT_NPROC` and `RLIMIT_CORE = 0` (see `command.rs` and
//! `clean_start.rs` for every process attribute and why). The process is
//! created without copying the runner (`spawn.rs`, `child.rs`), and once
//! the runner holds many descriptors on a thread whose descriptor table
//! does not grow with the runner's (`spawn_thread.rs`), so a launch costs
//! the same with one session or a thousand. The launch then writes the bootstrap frame to the guest's
//! stdin — at once as far as the pipe takes it (a whole envelope fits an
//! empty pipe), the rest from a background task bounded by
//! [`BOOTSTRAP_WRITE_TIMEOUT`] — and closes it, and hands back stdout and
//! stderr as the guest's log streams.
//!
//! A waiter task per guest reaps it and publishes its exit; stopping sends
//! SIGTERM to the group, waits out the grace period, then SIGKILLs the group
//! (see `control.rs`, which also explains why no signal can hit a recycled
//! pid). When the leader exits, however it exits, the rest of its process
//! group is killed with it, so no grandchild keeps the log pipes open.
//!
//! Needs Linux 5.4 or later (pidfds from `clone`, `waitid` on a pidfd).
//!
//! The embedding program must ignore SIGPIPE (Rust binaries do by default):
//! a guest that exits before reading its envelope turns the bootstrap write
//! into `EPIPE`, which is logged and otherwise harmless.

mod child;
pub(crate) mod clean_child;
mod command;
mod control;
mod error;
mod program_fd;
mod resolve;
mod spawn;
mod spawn_thread;

pub use control::STOP_KILL_WAIT;
pub use error::{NotExecutableReason, ProcessLaunchError, SpawnStep};
pub use spawn_thread::SpawnThreadSlot;

use super::clean_start::StartRlimits;
use super::{GuestIdentity, GuestOutput, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use crate::config::GuestCommand;
use crate::workspace::Workspace;
use async_trait::async_trait;
use control::{ProcessControl, ProcessGroup};
use runner_types::{GuestRole, SandboxTier, SidecarEndpoint, SidecarTransport};
use spawn::{SpawnError, SpawnRequest, Spawned};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tracing::{Instrument, debug, info, warn};

/// How long the runner keeps trying to hand a guest its bootstrap frame. A
/// guest that has not read it by then gets its stdin closed (it will see a
/// truncated frame). Launch itself never waits for the write.
pub const BOOTSTRAP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the process backend runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessBackendConfig {
    /// The runtime guest's command.
    pub runtime: GuestCommand,
    /// The sidecar guest's command; `None`: sessions have no sidecar.
    pub sidecar: Option<GuestCommand>,
    /// The runner's `PATH`, used to resolve bare program names. The embedding
    /// program passes it in (this crate reads no environment); `None` means
    /// only programs given as paths can be found.
    pub search_path: Option<OsString>,
}

/// The process-tier [`SandboxBackend`].
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    config: ProcessBackendConfig,
    start_rlimits: StartRlimits,
    /// Where guests are created once the runner holds many descriptors.
    spawn_thread: SpawnThreadSlot,
}

impl ProcessBackend {
    /// A backend running `config`'s commands. Guests get back the rlimits
    /// in force now; an embedding program that raises its own limits passes
    /// the earlier values with [`Self::with_start_rlimits`].
    pub fn new(config: ProcessBackendConfig) -> Self {
        Self {
            config,
            start_rlimits: StartRlimits::capture(),
            spawn_thread: SpawnThreadSlot::default(),
        }
    }

    /// Guests start with `rlimits` (the runner's own at its start), plus
    /// their own limits.
    pub fn with_start_rlimits(mut self, rlimits: StartRlimits) -> Self {
        self.start_rlimits = rlimits;
        self
    }

    /// The command configured for `role`, if any.
    pub fn command(&self, role: GuestRole) -> Option<&GuestCommand> {
        match role {
            GuestRole::Runtime => Some(&self.config.runtime),
            GuestRole::Sidecar => self.config.sidecar.as_ref(),
        }
    }
}

#[async_trait]
impl SandboxBackend for ProcessBackend {
    fn tier(&self) -> SandboxTier {
        SandboxTier::Process
    }

    fn has_sidecar(&self) -> bool {
        self.config.sidecar.is_some()
    }

    /// A process launch returns as soon as the process is created, before
    /// it has run any of its own code, so waiting for the sidecar's launch
    /// would give it no real head start: the two guests' start-up races
    /// either way, and the runtime must look for the sidecar's socket
    /// until it is there. Overlapping the two launches saves the wait.
    fn overlaps_launches(&self) -> bool {
        true
    }

    /// `ipc/shell-daemon.sock` in the user's workspace. A path that is not
    /// UTF-8 is passed on lossily: the envelope's address is a JSON string.
    fn sidecar_endpoint(&self, workspace: &Workspace) -> SidecarEndpoint {
        SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: workspace.sidecar_socket().to_string_lossy().into_owned(),
        }
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        let role = spec.role;
        let cmd = self.command(role).ok_or(LaunchError::NotConfigured {
            role,
            tier: SandboxTier::Process,
        })?;
        let frame = spec
            .envelope
            .to_frame()
            .map_err(|source| ProcessLaunchError::Envelope { role, source })?;
        let checks = tracing::debug_span!("process.checks").entered();
        let program =
            resolve::resolve_program(role, &cmd.program, self.config.search_path.as_deref())?;
        let work_dir = &spec.workspace.user_root;
        if !work_dir.is_dir() {
            return Err(ProcessLaunchError::WorkDir {
                role,
                path: work_dir.clone(),
            }
            .into());
        }
        drop(checks);
        let spawned = self
            .spawn_retrying(cmd, &program, &spec)
            .instrument(tracing::debug_span!("process.spawn"))
            .await?;
        let pid = spawned.pid;
        let supervised =
            tracing::debug_span!("process.supervise").in_scope(|| supervise(role, spawned));
        let (control, exit, stdin, stdout, stderr) = supervised?;
        if let Some((stdin, rest)) = write_bootstrap_now(role, pid, stdin, frame) {
            tokio::spawn(write_bootstrap(role, pid, stdin, rest));
        }
        let uid = spec.run_as.map(|g| g.uid);
        info!(%role, pid, program = %program.display(), user = %spec.user_id, ?uid, "guest launched");
        Ok(LaunchedGuest {
            identity: GuestIdentity::Process { pid },
            outputs: GuestOutput::pipes(stdout, stderr),
            control: Box::new(control),
            exit,
        })
    }
}

/// Attempts at a spawn whose exec failed with `ETXTBSY`.
const TEXT_BUSY_ATTEMPTS: u32 = 5;

impl ProcessBackend {
    /// [`Self::spawn`], again after a short pause when the exec failed with
    /// `ETXTBSY`: the kernel refuses to execute a file that anyone holds
    /// open for writing, and a program written by this process (or any
    /// other) can be held for a moment by a child that a concurrent spawn
    /// in another thread created while the file was open. A failed spawn
    /// leaves nothing behind, so waiting here is safe to cancel.
    async fn spawn_retrying(
        &self,
        cmd: &GuestCommand,
        program: &Path,
        spec: &LaunchSpec,
    ) -> Result<Spawned, ProcessLaunchError> {
        let mut pause = std::time::Duration::from_millis(2);
        for _ in 1..TEXT_BUSY_ATTEMPTS {
            match self.spawn(cmd, program, spec) {
                Err(ProcessLaunchError::Start {
                    step: SpawnStep::Exec,
                    source,
                    ..
                }) if source.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                    tracing::debug!(program = %program.display(), "program busy (open for writing); retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.spawn(cmd, program, spec)
    }

    /// Starts `program` for `spec` with every attribute from `command.rs`.
    fn spawn(
        &self,
        cmd: &GuestCommand,
        program: &Path,
        spec: &LaunchSpec,
    ) -> Result<Spawned, ProcessLaunchError> {
        let role = spec.role;
        let args = command::guest_args(cmd, &spec.user_id, &spec.workspace.user_root);
        let env = command::guest_env(cmd, &spec.extra_env);
        // As another uid, the program is opened here and executed by fd.
        let handle =
            program_fd::ProgramHandle::open(program, spec.run_as.is_some()).map_err(|source| {
                ProcessLaunchError::Spawn {
                    role,
                    program: program.to_path_buf(),
                    source,
                }
            })?;
        let request = SpawnRequest {
            program: &handle,
            args: &args,
            env: &env,
            work_dir: Some(&spec.workspace.user_root),
            run_as: spec.run_as,
            rlimits: command::guest_rlimits(&self.start_rlimits, &spec.resources, spec.run_as),
            null_stdin: false,
        };
        spawn::spawn(request, &self.spawn_thread).map_err(|e| launch_error(role, program, e))
    }
}

/// A spawn failure as the tier's error, naming the role and program.
fn launch_error(role: GuestRole, program: &Path, error: SpawnError) -> ProcessLaunchError {
    let program = program.to_path_buf();
    match error {
        SpawnError::Nul { what, value } => ProcessLaunchError::NulByte { role, what, value },
        SpawnError::Create(source) => ProcessLaunchError::Spawn {
            role,
            program,
            source,
        },
        SpawnError::Child { step, source, .. } => ProcessLaunchError::Start {
            role,
            program,
            step,
            source,
        },
    }
}

type Supervised = (
    ProcessControl,
    super::ExitWatch,
    pipe::Sender,
    pipe::Receiver,
    pipe::Receiver,
);

/// Starts the exit waiter and attaches the pipes; on failure the guest is
/// killed again.
fn supervise(role: GuestRole, spawned: Spawned) -> Result<Supervised, ProcessLaunchError> {
    let group = Arc::new(ProcessGroup::new(role, spawned.pid, spawned.spawned_by));
    let exit = control::watch(group.clone(), spawned.pidfd)
        .map_err(|source| ProcessLaunchError::ExitWatch { role, source })?;
    let control = ProcessControl {
        group,
        exit: exit.clone(),
    };
    let (stdin, stdout, stderr) = attach(role, spawned.stdin, spawned.stdout, spawned.stderr)
        .inspect_err(|_| control.group.kill_quietly())?;
    Ok((control, exit, stdin, stdout, stderr))
}

/// Turns the child's pipe ends into Tokio pipes.
fn attach(
    role: GuestRole,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<(pipe::Sender, pipe::Receiver, pipe::Receiver), ProcessLaunchError> {
    let err = |pipe: &'static str| move |source| ProcessLaunchError::Pipe { role, pipe, source };
    let stdin = pipe::Sender::from_owned_fd(stdin).map_err(err("stdin"))?;
    let stdout = pipe::Receiver::from_owned_fd(stdout).map_err(err("stdout"))?;
    let stderr = pipe::Receiver::from_owned_fd(stderr).map_err(err("stderr"))?;
    Ok((stdin, stdout, stderr))
}

/// Writes as much of the frame as the pipe takes without waiting (a whole
/// envelope fits in an empty pipe), and closes stdin once it is all
/// written. The guest then has its envelope whenever it reads, however busy
/// the runtime's workers are. Returns stdin and what is left of the frame
/// when the pipe is full.
fn write_bootstrap_now(
    role: GuestRole,
    pid: u32,
    stdin: pipe::Sender,
    mut frame: Vec<u8>,
) -> Option<(pipe::Sender, Vec<u8>)> {
    while !frame.is_empty() {
        match stdin.try_write(&frame) {
            Ok(n) => drop(frame.drain(..n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some((stdin, frame)),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                debug!(%role, pid, "guest closed stdin before reading its bootstrap frame");
                return None;
            }
            Err(e) => {
                warn!(%role, pid, error = %e, "cannot write the bootstrap frame");
                return None;
            }
        }
    }
    debug!(%role, pid, "bootstrap frame written");
    // Dropping `stdin` closes the pipe: the guest sees EOF after the frame.
    None
}

/// Writes the frame and closes stdin, bounded by [`BOOTSTRAP_WRITE_TIMEOUT`].
async fn write_bootstrap(role: GuestRole, pid: u32, mut stdin: pipe::Sender, frame: Vec<u8>) {
    match tokio::time::timeout(BOOTSTRAP_WRITE_TIMEOUT, stdin.write_all(&frame)).await {
        Ok(Ok(())) => debug!(%role, pid, bytes = frame.len(), "bootstrap frame written"),
        Ok(Err(e)) if e.kind() == ErrorKind::BrokenPipe => {
            debug!(%role, pid, "guest closed stdin before reading its bootstrap frame")
        }
        Ok(Err(e)) => warn!(%role, pid, error = %e, "cannot write the bootstrap frame"),
        Err(_) => warn!(
            %role,
            pid,
            timeout = ?BOOTSTRAP_WRITE_TIMEOUT,
            "guest did not read its bootstrap frame in time; closing its stdin"
        ),
    }
    // Dropping `stdin` closes the pipe: the guest sees EOF after the frame.
}
