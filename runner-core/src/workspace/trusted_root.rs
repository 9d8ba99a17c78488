//! The StrictModes check of `workspace_root`, done with directory fds.
//!
//! Whoever can rewrite a directory on the path to the workspace root can
//! swap what lies below it. So, as OpenSSH checks a home directory, every
//! directory from `/` down to the root must be owned by root or the runner,
//! and none may be writable by group or others unless it is sticky (like
//! `/tmp`). In a sticky directory others may create entries but not replace
//! ours, so the next component must then be owned by root or the runner,
//! which the ownership rule already demands for every component (and
//! provisioning demands of the user directory below the root).
//!
//! The walk opens each component relative to its parent's fd with
//! `O_NOFOLLOW`, on the canonical path, so what is checked is exactly what
//! is used; missing trailing components are created (mode 0755).

use super::dirs::{mkdir_at, open_dir_at};
use super::error::{AncestorProblem, WorkspaceError};
use super::{MountOverrides, Workspace};
use crate::user::UserId;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Mode of workspace-root directories the runner creates.
const ROOT_DIR_MODE: u32 = 0o755;

/// The workspace root, checked (StrictModes, from `/` down) and open: its
/// canonical path and its directory fd. One start opens it once and does
/// everything below it (the guest uid record, the user's directory)
/// relative to this fd, so the walk is not repeated and what was checked
/// is what is used.
#[derive(Debug)]
pub struct WorkspaceRoot {
    path: PathBuf,
    fd: OwnedFd,
}

impl WorkspaceRoot {
    /// Checks and opens `workspace_root` (absolute), creating its missing
    /// parts (mode 0755).
    pub fn open(workspace_root: &Path) -> Result<Self, WorkspaceError> {
        Self::open_checking(workspace_root, None)
    }

    /// As [`Self::open`], but first fails with
    /// [`WorkspaceError::SocketPathTooLong`], before anything is created,
    /// if a socket of `user`'s workspace would be too long to bind.
    pub fn open_for(workspace_root: &Path, user: &UserId) -> Result<Self, WorkspaceError> {
        Self::open_checking(workspace_root, Some(user))
    }

    fn open_checking(workspace_root: &Path, user: Option<&UserId>) -> Result<Self, WorkspaceError> {
        if !workspace_root.is_absolute() {
            return Err(WorkspaceError::RelativeRoot {
                path: workspace_root.to_path_buf(),
            });
        }
        let resolved = resolve(workspace_root)?;
        if let Some(user) = user {
            Workspace::layout(&resolved.path, user, &MountOverrides::default())
                .check_socket_paths()?;
        }
        let fd = open(&resolved, nix::unistd::geteuid().as_raw())?;
        Ok(Self {
            path: resolved.path,
            fd,
        })
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open directory.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// The workspace root resolved without touching the disk beyond lookups:
/// the canonical path of its deepest existing ancestor plus the names still
/// to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvedRoot {
    /// Canonical absolute path of the root (including missing parts).
    pub(super) path: PathBuf,
    existing: PathBuf,
    missing: Vec<OsString>,
}

/// Resolves `root` (absolute): symlinks in its existing part are resolved
/// (the config naming them is trusted; the check below covers the real
/// directories); its missing part must be plain names.
pub(super) fn resolve(root: &Path) -> Result<ResolvedRoot, WorkspaceError> {
    let mut missing = Vec::new();
    let mut cursor = root;
    loop {
        match std::fs::canonicalize(cursor) {
            Ok(existing) => {
                missing.reverse();
                let mut path = existing.clone();
                path.extend(&missing);
                return Ok(ResolvedRoot {
                    path,
                    existing,
                    missing,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WorkspaceError::Create {
                    path: cursor.to_path_buf(),
                    source,
                });
            }
        }
        let (Some(parent), Some(Component::Normal(name))) =
            (cursor.parent(), cursor.components().next_back())
        else {
            return Err(WorkspaceError::UnresolvableRoot {
                path: root.to_path_buf(),
            });
        };
        missing.push(name.to_os_string());
        cursor = parent;
    }
}

/// Opens the resolved root, checking every directory from `/` down and
/// creating the missing ones. Returns the root's fd.
pub(super) fn open(root: &ResolvedRoot, runner_uid: u32) -> Result<OwnedFd, WorkspaceError> {
    let mut path = PathBuf::from("/");
    let mut fd = nix::fcntl::open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| WorkspaceError::Create {
        path: path.clone(),
        source: e.into(),
    })?;
    check(&root.path, &path, &fd, runner_uid)?;
    let existing = root.existing.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_os_string()),
        _ => None,
    });
    let missing = root.missing.iter().cloned();
    for (name, create) in existing
        .map(|n| (n, false))
        .chain(missing.map(|n| (n, true)))
    {
        path.push(&name);
        if create {
            mkdir_at(&fd, &path, &name, ROOT_DIR_MODE)?;
        }
        fd = open_dir_at(&fd, &path, &name)?;
        check(&root.path, &path, &fd, runner_uid)?;
    }
    Ok(fd)
}

/// The StrictModes rule for one directory.
fn check(root: &Path, path: &Path, fd: &OwnedFd, runner_uid: u32) -> Result<(), WorkspaceError> {
    let stat = fstat(fd).map_err(|e| WorkspaceError::Create {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let problem = if stat.st_uid != 0 && stat.st_uid != runner_uid {
        Some(AncestorProblem::Owner { uid: stat.st_uid })
    } else if stat.st_mode & 0o022 != 0 && stat.st_mode & 0o1000 == 0 {
        Some(AncestorProblem::Writable {
            mode: stat.st_mode & 0o7777,
        })
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(WorkspaceError::UnsafeAncestor {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            problem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_splits_existing_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let r = resolve(&dir.path().join("a/b")).unwrap();
        assert_eq!(r.path, real.join("a/b"));
        assert_eq!(r.existing, real);
        assert_eq!(r.missing, vec![OsString::from("a"), OsString::from("b")]);
        let err = resolve(&dir.path().join("a/../b")).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::UnresolvableRoot { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn group_or_other_writable_without_sticky_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let root = dir.path().join("ws");
        open(&resolve(&root).unwrap(), uid).unwrap();
        assert!(root.is_dir());
        for (mode, ok) in [
            (0o777, false),
            (0o775, false),
            (0o1777, true),
            (0o755, true),
        ] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let got = open(&resolve(&root).unwrap(), uid);
            match got {
                Ok(_) => assert!(ok, "mode {mode:o} accepted"),
                Err(WorkspaceError::UnsafeAncestor {
                    path,
                    problem: AncestorProblem::Writable { .. },
                    ..
                }) => {
                    assert!(!ok, "mode {mode:o} refused");
                    assert_eq!(path, dir.path().canonicalize().unwrap());
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    #[test]
    fn an_open_root_is_used_through_its_fd_not_its_path() {
        // The root is checked and opened once; what is provisioned below it
        // lands in the directory that was checked, even if its path is made
        // to name another directory afterwards.
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new("alice").unwrap();
        let root = WorkspaceRoot::open_for(&dir.path().join("ws"), &user).unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::rename(dir.path().join("ws"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&other, dir.path().join("ws")).unwrap();
        Workspace::provision_in(&root, &user, &MountOverrides::default(), None).unwrap();
        assert!(dir.path().join("moved/alice/run").is_dir());
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    }

    #[test]
    fn a_planted_user_directory_link_is_refused_below_an_open_root() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new("alice").unwrap();
        let root = WorkspaceRoot::open(dir.path()).unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), dir.path().join("alice")).unwrap();
        let err = Workspace::provision_in(&root, &user, &MountOverrides::default(), None);
        assert!(
            matches!(
                err,
                Err(WorkspaceError::NotADirectory {
                    found: crate::workspace::FileKind::Symlink,
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    }

    #[test]
    fn open_for_checks_socket_paths_before_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(100));
        let user = UserId::new("alice").unwrap();
        let err = WorkspaceRoot::open_for(&deep, &user).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::SocketPathTooLong { max: 107, .. }),
            "{err:?}"
        );
        assert!(!deep.exists());
        let err = WorkspaceRoot::open(Path::new("relative")).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::RelativeRoot { .. }),
            "{err:?}"
        );
    }
}
