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
//! `clean_start.rs` for every process attribute and why), writes the bootstrap frame to its
//! stdin from a background task bounded by [`BOOTSTRAP_WRITE_TIMEOUT`] and
//! closes it, and hands back stdout and stderr as the guest's log streams.
//!
//! A waiter task per guest reaps it and publishes its exit; stopping sends
//! SIGTERM to the group, waits out the grace period, then SIGKILLs the group
//! (see `group.rs`, which also explains why no signal can hit a recycled
//! pid). When the leader exits, however it exits, the rest of its process
//! group is killed with it, so no grandchild keeps the log pipes open.
//!
//! The embedding program must ignore SIGPIPE (Rust binaries do by default):
//! a guest that exits before reading its envelope turns the bootstrap write
//! into `EPIPE`, which is logged and otherwise harmless.

mod command;
mod error;
mod group;
mod program_fd;
mod resolve;

pub use error::{NotExecutableReason, ProcessLaunchError};
pub use group::STOP_KILL_WAIT;

use super::clean_start::StartRlimits;
use super::exit::exit_channel;
use super::{GuestIdentity, GuestOutput, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use crate::config::GuestCommand;
use crate::workspace::Workspace;
use async_trait::async_trait;
use group::{ProcessControl, ProcessGroup};
use runner_types::{GuestRole, SandboxTier, SidecarEndpoint, SidecarTransport};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

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
}

impl ProcessBackend {
    /// A backend running `config`'s commands. Guests get back the rlimits
    /// in force now; an embedding program that raises its own limits passes
    /// the earlier values with [`Self::with_start_rlimits`].
    pub fn new(config: ProcessBackendConfig) -> Self {
        Self {
            config,
            start_rlimits: StartRlimits::capture(),
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
        let args = command::guest_args(cmd, &spec.user_id, &spec.workspace.user_root);
        let env = command::guest_env(cmd, &spec.extra_env);
        // Subscribe before spawning so no SIGCHLD can be missed.
        let sigchld = signal(SignalKind::child())
            .map_err(|source| ProcessLaunchError::ExitWatch { role, source })?;
        let setup = command::ChildSetup {
            work_dir,
            run_as: spec.run_as,
            rlimits: command::guest_rlimits(&self.start_rlimits, &spec.resources, spec.run_as),
        };
        let spawn_err = |source| ProcessLaunchError::Spawn {
            role,
            program: program.clone(),
            source,
        };
        // As another uid, the program is opened here and executed by fd.
        let handle =
            program_fd::ProgramHandle::open(&program, spec.run_as.is_some()).map_err(spawn_err)?;
        let mut child = command::build_command(&handle, &args, &env, setup)
            .spawn()
            .map_err(spawn_err)?;
        drop(handle);
        let pid = child.id();
        let stdio = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let group = Arc::new(ProcessGroup::new(role, pid));
        let (notifier, exit) = exit_channel();
        tokio::spawn(group::watch_exit(child, group.clone(), sigchld, notifier));
        let (stdin, stdout, stderr) = match attach(role, stdio) {
            Ok(pipes) => pipes,
            Err(e) => {
                group.kill_quietly();
                return Err(e.into());
            }
        };
        tokio::spawn(write_bootstrap(role, pid, stdin, frame));
        let uid = spec.run_as.map(|g| g.uid);
        info!(%role, pid, program = %program.display(), user = %spec.user_id, ?uid, "guest launched");
        Ok(LaunchedGuest {
            identity: GuestIdentity::Process { pid },
            outputs: GuestOutput::pipes(stdout, stderr),
            control: Box::new(ProcessControl {
                group,
                exit: exit.clone(),
            }),
            exit,
        })
    }
}

type StdPipes = (
    Option<std::process::ChildStdin>,
    Option<std::process::ChildStdout>,
    Option<std::process::ChildStderr>,
);

/// Turns the child's blocking std pipes into Tokio pipes.
fn attach(
    role: GuestRole,
    (stdin, stdout, stderr): StdPipes,
) -> Result<(pipe::Sender, pipe::Receiver, pipe::Receiver), ProcessLaunchError> {
    let err = |pipe: &'static str| move |source| ProcessLaunchError::Pipe { role, pipe, source };
    let fd = |o: Option<OwnedFd>, pipe: &'static str| {
        o.ok_or_else(|| err(pipe)(std::io::Error::from(ErrorKind::NotFound)))
    };
    let stdin = pipe::Sender::from_owned_fd(fd(stdin.map(OwnedFd::from), "stdin")?)
        .map_err(err("stdin"))?;
    let stdout = pipe::Receiver::from_owned_fd(fd(stdout.map(OwnedFd::from), "stdout")?)
        .map_err(err("stdout"))?;
    let stderr = pipe::Receiver::from_owned_fd(fd(stderr.map(OwnedFd::from), "stderr")?)
        .map_err(err("stderr"))?;
    Ok((stdin, stdout, stderr))
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
