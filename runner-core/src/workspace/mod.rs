//! A user's workspace on disk, and the rules for every host file the
//! runner touches in it.
//!
//! ```text
//! <workspace_root>/<user_id>/      runner-owned; 0700, or 0710 group guest
//!   shared/ tmp/ ipc/              guest-visible; owned by the guest user
//!   vault/                         credentials; owned by the guest user, 0500
//!   logs/  (0700)                  guest logs, runner-only, never mounted
//!   run/   (0700)                  lock, control socket, bootstrap files,
//!                                  VM configs; runner-only, never mounted
//! ```
//!
//! Nothing on disk below `workspace_root` is trusted. Provisioning checks
//! the root with the StrictModes rule (module `trusted_root`), then opens the
//! user's directory and everything in it relative to directory fds,
//! never following a symlink (module `dirs`); files under `run/` and `logs/`
//! are opened with [`file::open_regular`]. The user directory gives other
//! local users nothing.
//!
//! Ownership per directory, when the runner is root and guests run as
//! their own [`GuestUser`] (`provision_for(.., Some(guest))`):
//!
//! | directory | owner | mode when created |
//! | --- | --- | --- |
//! | user root | runner, group `guest.gid` | 0710 (the guest may enter, not list) |
//! | `shared/ tmp/ ipc/` | `guest.uid:guest.gid` | 0700 |
//! | `vault/` | `guest.uid:guest.gid` | 0500 (the runtime reads it; the operator, root, fills it) |
//! | `run/ logs/` | runner | 0700 |
//!
//! Otherwise (no guest identity, or the runner is not root) every directory
//! is the runner's own, mode 0700.

pub mod control_socket;
mod dirs;
mod error;
pub mod file;
mod mounts;
mod trusted_root;

pub use control_socket::{ControlSocket, ControlSocketError};
pub use error::{AncestorProblem, ModeRequirement, MountConflict, MountKey, Owner, WorkspaceError};
pub use file::{FileKind, HostFileError, OpenHow};
pub use trusted_root::WorkspaceRoot;

use crate::identity::GuestUser;
use crate::user::UserId;
use dirs::{DirSpec, ModeRule, ensure_dir};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// File name of the control socket inside `run/`.
pub const CONTROL_SOCKET_NAME: &str = "runner-control.sock";
/// File name of the sidecar's Unix socket inside `ipc/`.
pub const SIDECAR_SOCKET_NAME: &str = "shell-daemon.sock";
/// Longest Unix socket path Linux accepts, in bytes, without the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Paths of one user's workspace. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// `<workspace_root>`, absolute (canonical when provisioned).
    pub workspace_root: PathBuf,
    /// `<workspace_root>/<user_id>`.
    pub user_root: PathBuf,
    /// Persistent user data (an override is resolved when provisioned).
    pub shared: PathBuf,
    /// Scratch (an override is resolved when provisioned).
    pub tmp: PathBuf,
    /// Credentials (runtime guest only, read-only; an override is resolved
    /// when provisioned).
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
    /// (`None`: the runner's own user; ignored unless the runner is root).
    /// Idempotent. Checks `workspace_root` (StrictModes) and socket-path
    /// lengths before anything is created. The returned paths use the
    /// canonical workspace root and the resolved mount overrides.
    pub fn provision_for(
        workspace_root: &Path,
        user: &UserId,
        mounts: &MountOverrides,
        guest: Option<GuestUser>,
    ) -> Result<Self, WorkspaceError> {
        let root = WorkspaceRoot::open_for(workspace_root, user)?;
        Self::provision_in(&root, user, mounts, guest)
    }

    /// As [`Self::provision_for`], below a root already checked and opened
    /// (see [`WorkspaceRoot::open_for`]): the user's directory is opened
    /// relative to the root's fd.
    pub fn provision_in(
        root: &WorkspaceRoot,
        user: &UserId,
        mounts: &MountOverrides,
        guest: Option<GuestUser>,
    ) -> Result<Self, WorkspaceError> {
        let mut ws = Self::layout(root.path(), user, &MountOverrides::default());
        ws.check_socket_paths()?;
        let runner_uid = nix::unistd::geteuid().as_raw();
        let policy = Policy::new(runner_uid, guest);
        let user_fd = ensure_dir(
            root.fd(),
            &ws.user_root,
            OsStr::new(user.as_str()),
            policy.user_root(),
            runner_uid,
        )?;
        let user_dir = UserDir {
            fd: user_fd,
            path: ws.user_root.clone(),
            workspace_root: ws.workspace_root.clone(),
            runner_uid,
        };
        user_dir.default_dir("run", policy.private())?;
        user_dir.default_dir("logs", policy.private())?;
        user_dir.default_dir("ipc", policy.guest_rw())?;
        ws.shared = user_dir.mountable(MountKey::Shared, &mounts.shared, policy.guest_rw())?;
        ws.tmp = user_dir.mountable(MountKey::Tmp, &mounts.tmp, policy.guest_rw())?;
        ws.vault = user_dir.mountable(MountKey::Vault, &mounts.vault, policy.vault())?;
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

/// The opened user directory, in which the workspace directories are made.
struct UserDir {
    fd: OwnedFd,
    path: PathBuf,
    workspace_root: PathBuf,
    runner_uid: u32,
}

impl UserDir {
    /// Creates or checks `<user dir>/<name>`; returns its path.
    fn default_dir(&self, name: &str, spec: DirSpec) -> Result<PathBuf, WorkspaceError> {
        let path = self.path.join(name);
        ensure_dir(&self.fd, &path, OsStr::new(name), spec, self.runner_uid)?;
        Ok(path)
    }

    /// The directory for `key`: its override if configured (checked, and
    /// created if missing), else the default one in the user directory.
    fn mountable(
        &self,
        key: MountKey,
        configured: &Option<PathBuf>,
        spec: DirSpec,
    ) -> Result<PathBuf, WorkspaceError> {
        match configured {
            Some(path) => {
                mounts::provision_override(key, path, &self.workspace_root, spec, self.runner_uid)
            }
            None => self.default_dir(key.dir_name(), spec),
        }
    }
}

/// Owner and mode of each kind of workspace directory (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Policy {
    runner_uid: u32,
    guest: Option<GuestUser>,
}

impl Policy {
    fn new(runner_uid: u32, guest: Option<GuestUser>) -> Self {
        // Only root can give directories to another uid.
        let guest = guest.filter(|_| runner_uid == 0);
        Self { runner_uid, guest }
    }

    fn user_root(self) -> DirSpec {
        DirSpec {
            uid: self.runner_uid,
            gid: self.guest.map(|g| g.gid),
            mode: if self.guest.is_some() { 0o710 } else { 0o700 },
            existing: ModeRule::Private,
        }
    }

    fn private(self) -> DirSpec {
        DirSpec {
            uid: self.runner_uid,
            gid: None,
            mode: 0o700,
            existing: ModeRule::Exact,
        }
    }

    fn guest_rw(self) -> DirSpec {
        self.guest_owned(0o700)
    }

    fn vault(self) -> DirSpec {
        self.guest_owned(if self.guest.is_some() { 0o500 } else { 0o700 })
    }

    fn guest_owned(self, mode: u32) -> DirSpec {
        DirSpec {
            uid: self.guest.map_or(self.runner_uid, |g| g.uid),
            gid: self.guest.map(|g| g.gid),
            mode,
            existing: ModeRule::Any,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn user() -> UserId {
        UserId::new("alice").unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn provision_is_idempotent_private_and_keeps_data() {
        let root = tempfile::tempdir().unwrap();
        let a = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        fs::write(a.shared.join("keep"), b"x").unwrap();
        let b = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(b.shared.join("keep")).unwrap(), b"x");
        for d in [
            &b.user_root,
            &b.run,
            &b.logs,
            &b.shared,
            &b.tmp,
            &b.vault,
            &b.ipc,
        ] {
            assert_eq!(mode(d), 0o700, "{d:?}");
        }
        assert_eq!(
            b.control_socket(),
            root.path().join("alice/run/runner-control.sock")
        );
    }

    #[test]
    fn run_with_a_wider_mode_is_refused_not_fixed() {
        let root = tempfile::tempdir().unwrap();
        let a = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        fs::set_permissions(&a.run, fs::Permissions::from_mode(0o755)).unwrap();
        let err = Workspace::provision(root.path(), &user(), &MountOverrides::default());
        assert!(
            matches!(
                &err,
                Err(WorkspaceError::WrongMode { path, found: 0o755, required: ModeRequirement::Exactly(0o700), .. }) if *path == a.run
            ),
            "{err:?}"
        );
        assert_eq!(mode(&a.run), 0o755);
    }

    #[test]
    fn user_root_open_to_others_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let a = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        fs::set_permissions(&a.user_root, fs::Permissions::from_mode(0o755)).unwrap();
        let err = Workspace::provision(root.path(), &user(), &MountOverrides::default());
        assert!(
            matches!(
                err,
                Err(WorkspaceError::WrongMode {
                    required: ModeRequirement::NoOtherAccess,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn symlinked_subdirectory_is_refused_and_its_target_untouched() {
        let root = tempfile::tempdir().unwrap();
        let a = Workspace::provision(root.path(), &user(), &MountOverrides::default()).unwrap();
        let target = tempfile::tempdir().unwrap();
        fs::set_permissions(target.path(), fs::Permissions::from_mode(0o751)).unwrap();
        fs::remove_dir(&a.tmp).unwrap();
        std::os::unix::fs::symlink(target.path(), &a.tmp).unwrap();
        let err = Workspace::provision(root.path(), &user(), &MountOverrides::default());
        assert!(
            matches!(&err, Err(WorkspaceError::NotADirectory { found: FileKind::Symlink, path }) if *path == a.tmp),
            "{err:?}"
        );
        assert_eq!(mode(target.path()), 0o751);
        assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0);
    }

    #[test]
    fn guest_identity_owns_the_guest_directories() {
        let root = tempfile::tempdir().unwrap();
        let guest = GuestUser {
            uid: 61000,
            gid: 61000,
        };
        let ws = Workspace::provision_for(
            root.path(),
            &user(),
            &MountOverrides::default(),
            Some(guest),
        )
        .unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let owner = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        if me != 0 {
            // Not root: the guest identity is ignored, all is ours.
            assert_eq!(owner(&ws.shared).0, me);
            return;
        }
        assert_eq!(owner(&ws.user_root), (0, 61000, 0o710));
        for d in [&ws.shared, &ws.tmp, &ws.ipc] {
            assert_eq!(owner(d), (61000, 61000, 0o700), "{d:?}");
        }
        assert_eq!(owner(&ws.vault), (61000, 61000, 0o500));
        assert_eq!(owner(&ws.run).2, 0o700);
        assert_eq!(owner(&ws.logs).2, 0o700);
        assert_eq!((owner(&ws.run).0, owner(&ws.logs).0), (0, 0));
        // Idempotent with the same guest; another guest's start is refused.
        Workspace::provision_for(
            root.path(),
            &user(),
            &MountOverrides::default(),
            Some(guest),
        )
        .unwrap();
        let other = GuestUser {
            uid: 61001,
            gid: 61001,
        };
        let err = Workspace::provision_for(
            root.path(),
            &user(),
            &MountOverrides::default(),
            Some(other),
        );
        assert!(
            matches!(err, Err(WorkspaceError::WrongOwner { .. })),
            "{err:?}"
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
    fn a_file_as_root_is_not_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = Workspace::provision(&file, &user(), &MountOverrides::default());
        assert!(
            matches!(
                err,
                Err(WorkspaceError::NotADirectory {
                    found: FileKind::Regular,
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
