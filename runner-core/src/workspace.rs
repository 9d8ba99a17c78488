//! A user's workspace on disk (DESIGN §4).
//!
//! ```text
//! <workspace_root>/<user_id>/
//!   shared/ tmp/ vault/ ipc/   guest-visible
//!   logs/                      guest logs, never mounted
//!   run/  (0700)               control socket, bootstrap files, VM configs
//! ```

use crate::user::UserId;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the control socket inside `run/`.
pub const CONTROL_SOCKET_NAME: &str = "runner-control.sock";
/// File name of the sidecar's Unix socket inside `ipc/`.
pub const SIDECAR_SOCKET_NAME: &str = "shell-daemon.sock";
/// Longest Unix socket path Linux accepts, in bytes, without the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Paths of one user's workspace. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// `<workspace_root>`, absolute.
    pub workspace_root: PathBuf,
    /// `<workspace_root>/<user_id>`.
    pub user_root: PathBuf,
    /// Persistent user data.
    pub shared: PathBuf,
    /// Scratch.
    pub tmp: PathBuf,
    /// Credentials (runtime guest only, read-only).
    pub vault: PathBuf,
    /// Guest-to-guest sockets.
    pub ipc: PathBuf,
    /// Guest logs.
    pub logs: PathBuf,
    /// Runner-private files.
    pub run: PathBuf,
}

/// Host directories that replace the default `shared/`, `tmp/`, `vault/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOverrides {
    /// Replaces `shared/`.
    pub shared: Option<PathBuf>,
    /// Replaces `tmp/`.
    pub tmp: Option<PathBuf>,
    /// Replaces `vault/`.
    pub vault: Option<PathBuf>,
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
    /// A directory could not be created or its mode set.
    #[error("Cannot create workspace directory {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a directory is something else.
    #[error("Workspace path {path} exists but is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
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

impl Workspace {
    /// Paths for `user` under `workspace_root`, without touching the disk.
    pub fn layout(workspace_root: &Path, user: &UserId, mounts: &MountOverrides) -> Self {
        let user_root = workspace_root.join(user.as_str());
        let pick =
            |o: &Option<PathBuf>, name: &str| o.clone().unwrap_or_else(|| user_root.join(name));
        Self {
            workspace_root: workspace_root.to_path_buf(),
            shared: pick(&mounts.shared, "shared"),
            tmp: pick(&mounts.tmp, "tmp"),
            vault: pick(&mounts.vault, "vault"),
            ipc: user_root.join("ipc"),
            logs: user_root.join("logs"),
            run: user_root.join("run"),
            user_root,
        }
    }

    /// [`Self::provision_for`] with guests running as the runner's own user.
    pub fn provision(
        workspace_root: &Path,
        user: &UserId,
        mounts: &MountOverrides,
    ) -> Result<Self, WorkspaceError> {
        Self::provision_for(workspace_root, user, mounts, None)
    }

    /// Creates (or re-uses) the workspace for guests running as `guest`
    /// (`None`: the runner's own user). Idempotent; checks socket-path
    /// lengths before anything is created so a too-deep root fails cleanly.
    pub fn provision_for(
        workspace_root: &Path,
        user: &UserId,
        mounts: &MountOverrides,
        guest: Option<crate::identity::GuestUser>,
    ) -> Result<Self, WorkspaceError> {
        // Guest ownership of the guest-writable directories is not applied yet.
        let _ = guest;
        if !workspace_root.is_absolute() {
            return Err(WorkspaceError::RelativeRoot {
                path: workspace_root.to_path_buf(),
            });
        }
        let ws = Self::layout(workspace_root, user, mounts);
        ws.check_socket_paths()?;
        make_dir(&ws.user_root, 0o755)?;
        for dir in [&ws.shared, &ws.tmp, &ws.ipc] {
            make_dir(dir, 0o755)?;
        }
        make_dir(&ws.vault, 0o700)?;
        make_dir(&ws.logs, 0o700)?;
        make_dir(&ws.run, 0o700)?;
        Ok(ws)
    }

    /// `run/runner-control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.run.join(CONTROL_SOCKET_NAME)
    }

    /// `ipc/shell-daemon.sock`, where a process- or container-tier sidecar listens.
    pub fn sidecar_socket(&self) -> PathBuf {
        self.ipc.join(SIDECAR_SOCKET_NAME)
    }

    /// Fails if any socket this workspace will hold is over the OS limit.
    pub fn check_socket_paths(&self) -> Result<(), WorkspaceError> {
        for path in [self.control_socket(), self.sidecar_socket()] {
            check_socket_path(&path)?;
        }
        Ok(())
    }
}

/// Fails if `path` is too long to bind as a Unix socket.
pub fn check_socket_path(path: &Path) -> Result<(), WorkspaceError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(WorkspaceError::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), WorkspaceError> {
    let create = |source| WorkspaceError::Create {
        path: path.to_path_buf(),
        source,
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(WorkspaceError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(create(e)),
    }
    if !path.is_dir() {
        return Err(WorkspaceError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    // The umask may have narrowed the mode, and an existing directory keeps
    // whatever it had: set it explicitly so `run/` is always 0700.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(create)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::new("alice").unwrap()
    }

    #[test]
    fn provision_is_idempotent_and_sets_modes() {
        let root = tempfile::tempdir().unwrap();
        let a = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        fs::set_permissions(&a.run, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(a.shared.join("keep"), b"x").unwrap();
        let b = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(b.shared.join("keep")).unwrap(), b"x");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.run), 0o700);
        assert_eq!(mode(&b.logs), 0o700);
        for d in [&b.shared, &b.tmp, &b.vault, &b.ipc] {
            assert!(d.is_dir());
        }
        assert_eq!(
            b.control_socket(),
            root.path().join("alice/run/runner-control.sock")
        );
    }

    #[test]
    fn relative_root_is_refused() {
        let err = Workspace::provision(Path::new("ws"), &user(), &MountOverrides::default());
        assert!(matches!(err, Err(WorkspaceError::RelativeRoot { .. })));
    }

    #[test]
    fn long_socket_path_fails_before_creating_anything() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("d".repeat(100));
        let err = Workspace::provision(&deep, &user(), &MountOverrides::default());
        assert!(matches!(
            err,
            Err(WorkspaceError::SocketPathTooLong { max: 107, .. })
        ));
        assert!(!deep.exists());
    }

    #[test]
    fn unwritable_root_is_a_create_error() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = Workspace::provision(&file, &user(), &MountOverrides::default());
        assert!(matches!(err, Err(WorkspaceError::Create { .. })), "{err:?}");
    }
}
