//! Why a workspace could not be provisioned.

use super::file::FileKind;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// What is wrong with a directory on the way down to `workspace_root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AncestorProblem {
    /// Owned by someone other than root or the runner.
    Owner {
        /// Its owner.
        uid: u32,
    },
    /// Writable by group or others without the sticky bit.
    Writable {
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for AncestorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Owner { uid } => write!(f, "it is owned by uid {uid}, not root or the runner"),
            Self::Writable { mode } => write!(
                f,
                "it is writable by group or others (mode {mode:04o}) and not sticky"
            ),
        }
    }
}

/// An owner uid, and a gid where it matters; shown as `uid` or `uid:gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The uid.
    pub uid: u32,
    /// The gid, if it matters.
    pub gid: Option<u32>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.gid {
            Some(gid) => write!(f, "{}:{gid}", self.uid),
            None => write!(f, "{}", self.uid),
        }
    }
}

/// What an existing directory's mode must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequirement {
    /// Exactly this mode (`run/`, `logs/`).
    Exactly(u32),
    /// No group write and no access at all for others (the user root).
    NoOtherAccess,
}

impl fmt::Display for ModeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exactly(mode) => write!(f, "mode {mode:04o} exactly"),
            Self::NoOtherAccess => f.write_str("no group write and no access for others"),
        }
    }
}

/// Which `[mounts]` key an override came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKey {
    /// `mounts.shared`.
    Shared,
    /// `mounts.tmp`.
    Tmp,
    /// `mounts.vault`.
    Vault,
}

impl MountKey {
    /// Name of the default directory the key replaces.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Tmp => "tmp",
            Self::Vault => "vault",
        }
    }
}

impl fmt::Display for MountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mounts.{}", self.dir_name())
    }
}

/// Why a mount override points somewhere it must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountConflict {
    /// It is the workspace root or contains it.
    ContainsWorkspaceRoot,
    /// It is a user's directory (which holds `run/` and `logs/`).
    IsUserDirectory,
    /// It is inside a user's `run/` or `logs/`.
    InsidePrivateDirectory,
}

impl fmt::Display for MountConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ContainsWorkspaceRoot => "it is the workspace root or one of its parents",
            Self::IsUserDirectory => "it is a user's directory, which holds run/ and logs/",
            Self::InsidePrivateDirectory => "it is inside a user's run/ or logs/",
        })
    }
}

/// Why a workspace could not be provisioned.
#[derive(Debug, Error)]
pub enum WorkspaceError {
    /// The root is relative.
    #[error("Workspace root {path} must be an absolute path")]
    RelativeRoot {
        /// The root as given.
        path: PathBuf,
    },
    /// The root's missing part contains `..` or similar.
    #[error("Workspace root {path} cannot be resolved: its missing part must be plain names")]
    UnresolvableRoot {
        /// The root as given.
        path: PathBuf,
    },
    /// A directory on the way to the root could be rewritten by another user
    /// (the StrictModes rule).
    #[error(
        "Workspace root {root} is not safe: {path}: {problem}. Fix the ownership or mode, or choose another workspace_root"
    )]
    UnsafeAncestor {
        /// The workspace root.
        root: PathBuf,
        /// The offending directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: AncestorProblem,
    },
    /// A directory could not be created, opened, inspected or have its
    /// owner or mode set.
    #[error("Cannot create workspace directory {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a directory is something else.
    #[error(
        "Workspace path {path} is a {found}, not a directory; the runner refuses to follow or reuse it. Remove it"
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What is there.
        found: FileKind,
    },
    /// An existing directory belongs to the wrong user or group.
    #[error(
        "Workspace directory {path} is owned by {found}, but must be owned by {expected}. Remove it, or fix it with `chown {expected} {path}`"
    )]
    WrongOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner and group.
        found: Owner,
        /// The owner (and, where it matters, the group) it must have.
        expected: Owner,
    },
    /// An existing directory has a mode that leaks or is not what the
    /// runner requires (`run/`, `logs/`: exactly 0700; the user root: no
    /// access for others, no group write).
    #[error(
        "Workspace directory {path} has mode {found:04o}; it must have {required}. Fix it with `chmod {suggested:04o} {path}`"
    )]
    WrongMode {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        found: u32,
        /// The requirement.
        required: ModeRequirement,
        /// A mode that satisfies it.
        suggested: u32,
    },
    /// A `[mounts]` path is relative after resolving.
    #[error("{key} = {path} must be an absolute path")]
    MountRelative {
        /// The key.
        key: MountKey,
        /// The path as configured.
        path: PathBuf,
    },
    /// A `[mounts]` path (or, if missing, its parent) cannot be resolved.
    #[error("{key} = {path} cannot be resolved (its parent directory must exist)")]
    MountResolve {
        /// The key.
        key: MountKey,
        /// The path as configured.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A `[mounts]` path would expose runner-private directories.
    #[error("{key} = {path} is refused: {conflict}")]
    MountForbidden {
        /// The key.
        key: MountKey,
        /// The resolved path.
        path: PathBuf,
        /// Why.
        conflict: MountConflict,
    },
    /// A `[mounts]` path exists but is not a directory.
    #[error("{key} = {path} is a {found}, not a directory")]
    MountNotADirectory {
        /// The key.
        key: MountKey,
        /// The resolved path.
        path: PathBuf,
        /// What is there.
        found: FileKind,
    },
    /// A socket path is over the OS limit.
    #[error(
        "Socket path {path} is {len} bytes; Unix sockets allow at most {max}. Use a shorter workspace_root"
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}
