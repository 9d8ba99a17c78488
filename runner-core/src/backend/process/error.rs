//! Why a process-tier guest could not be launched. Every check that can fail
//! before the guest is spawned has its own variant, so nothing half-starts.

use nix::sys::resource::Resource;
use runner_types::GuestRole;
use runner_types::envelope::EnvelopeError;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Why a process guest could not be launched.
#[derive(Debug, Error)]
pub enum ProcessLaunchError {
    /// The configured program is a path that does not exist.
    #[error("The {role} guest program {path} does not exist")]
    ProgramMissing {
        /// The role.
        role: GuestRole,
        /// The path, made absolute.
        path: PathBuf,
    },
    /// A bare program name was not found on the search path.
    #[error("The {role} guest program {program:?} is not on the search path ({})", SearchPath(.searched))]
    NotOnSearchPath {
        /// The role.
        role: GuestRole,
        /// The name as configured.
        program: PathBuf,
        /// The absolute directories that were searched, in order (empty when
        /// the runner was given no search path).
        searched: Vec<PathBuf>,
    },
    /// The program exists but cannot be executed.
    #[error("The {role} guest program {path} is not executable: {reason}")]
    NotExecutable {
        /// The role.
        role: GuestRole,
        /// The resolved path.
        path: PathBuf,
        /// What is wrong with it.
        reason: NotExecutableReason,
    },
    /// The program's metadata could not be read.
    #[error("Cannot inspect the {role} guest program {path}")]
    Inspect {
        /// The role.
        role: GuestRole,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The guest's working directory (the user's workspace directory) is
    /// missing: the workspace was not provisioned.
    #[error("The {role} guest's working directory {path} is not a directory")]
    WorkDir {
        /// The role.
        role: GuestRole,
        /// The directory.
        path: PathBuf,
    },
    /// The envelope could not be framed (it failed validation or is too large).
    #[error("Invalid bootstrap envelope for the {role} guest")]
    Envelope {
        /// The role.
        role: GuestRole,
        /// Cause.
        #[source]
        source: EnvelopeError,
    },
    /// The runner could not watch the spawned guest's pidfd for its exit
    /// (the guest is killed again).
    #[error("Cannot watch for the {role} guest's exit")]
    ExitWatch {
        /// The role.
        role: GuestRole,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The runner could not create the guest process: opening the
    /// program, creating its pipes or the process itself failed.
    #[error("Cannot spawn the {role} guest program {program}")]
    Spawn {
        /// The role.
        role: GuestRole,
        /// The resolved program.
        program: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The guest process was created, but a step of its setup, or the exec
    /// of its program, failed; nothing of the program ran and the process
    /// has been reaped.
    #[error("The {role} guest program {program} could not be started: {step} failed")]
    Start {
        /// The role.
        role: GuestRole,
        /// The resolved program.
        program: PathBuf,
        /// The step that failed.
        step: SpawnStep,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// An argument, environment entry or path of the guest's command holds
    /// a NUL byte, which no exec can pass on.
    #[error("The {role} guest's {what} {value:?} contains a NUL byte")]
    NulByte {
        /// The role.
        role: GuestRole,
        /// `argument`, `environment variable`, `program path` or
        /// `working directory`.
        what: &'static str,
        /// The offending value (lossy UTF-8).
        value: String,
    },
    /// A stdio pipe of the spawned guest could not be attached to the async
    /// runtime (the guest is killed again).
    #[error("Cannot attach to the {role} guest's {pipe} pipe")]
    Pipe {
        /// The role.
        role: GuestRole,
        /// `stdin`, `stdout` or `stderr`.
        pipe: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A step of a new guest process's setup, between its creation and the
/// start of its program (see the process tier's module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStep {
    /// Connecting stdin, stdout and stderr to the runner's pipes.
    Stdio,
    /// Dropping the supplementary groups.
    Groups,
    /// Switching to the guest's gid.
    Gid,
    /// Switching to the guest's uid.
    Uid,
    /// Entering the working directory, as the guest's user.
    WorkDir,
    /// Starting the guest's own process group.
    ProcessGroup,
    /// Arming the parent-death signal.
    ParentDeathSignal,
    /// The runner died while the guest was being started.
    ParentGone,
    /// Setting one rlimit.
    Rlimit(Resource),
    /// Setting `no_new_privs`.
    NoNewPrivs,
    /// Clearing the signal mask the program starts with.
    SignalMask,
    /// Executing the program itself.
    Exec,
}

impl fmt::Display for SpawnStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdio => f.write_str("connecting stdio"),
            Self::Groups => f.write_str("dropping supplementary groups"),
            Self::Gid => f.write_str("setting the gid"),
            Self::Uid => f.write_str("setting the uid"),
            Self::WorkDir => f.write_str("entering the working directory"),
            Self::ProcessGroup => f.write_str("starting a process group"),
            Self::ParentDeathSignal => f.write_str("arming the parent-death signal"),
            Self::ParentGone => f.write_str("checking that the runner still runs"),
            Self::Rlimit(r) => write!(f, "setting {r:?}"),
            Self::NoNewPrivs => f.write_str("setting no_new_privs"),
            Self::SignalMask => f.write_str("clearing the signal mask"),
            Self::Exec => f.write_str("exec"),
        }
    }
}

/// Why an existing program cannot be executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotExecutableReason {
    /// A directory, device, socket, ...
    NotARegularFile,
    /// No execute permission for the runner's user.
    NoExecutePermission,
}

impl fmt::Display for NotExecutableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotARegularFile => "not a regular file",
            Self::NoExecutePermission => "no execute permission",
        })
    }
}

/// Displays searched directories as `a:b:c`, or says there were none.
struct SearchPath<'a>(&'a [PathBuf]);

impl fmt::Display for SearchPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no search path was given");
        }
        f.write_str("searched ")?;
        for (i, dir) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{}", dir.display())?;
        }
        Ok(())
    }
}
