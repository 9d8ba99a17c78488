//! `[mounts]` overrides: host directories that replace `shared/`, `tmp/`
//! or `vault/`.
//!
//! Validated at every provisioning (the disk may have changed since the
//! config was loaded): the path is resolved (`canonicalize`), must be
//! absolute, and must not be the workspace root or one of its parents, a
//! user's directory, or anything inside a user's `run/` or `logs/`, since
//! guests would then see runner-private files. The override is the
//! operator's choice, so an existing directory keeps its owner and mode
//! (`/tmp` stays 1777); only a missing one is created, with the mode the
//! default directory would get.

use super::dirs::{DirSpec, mkdir_at, open_dir_at, set_owner_and_mode};
use super::error::{MountConflict, MountKey, WorkspaceError};
use super::file::FileKind;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::path::{Component, Path, PathBuf};

/// Checks and, if missing, creates the override `configured` for `key`;
/// returns its resolved path. `root` is the canonical workspace root.
pub(super) fn provision_override(
    key: MountKey,
    configured: &Path,
    root: &Path,
    spec: DirSpec,
    runner_uid: u32,
) -> Result<PathBuf, WorkspaceError> {
    if !configured.is_absolute() {
        return Err(WorkspaceError::MountRelative {
            key,
            path: configured.to_path_buf(),
        });
    }
    let resolve_err = |source| WorkspaceError::MountResolve {
        key,
        path: configured.to_path_buf(),
        source,
    };
    match std::fs::canonicalize(configured) {
        Ok(path) => {
            check_placement(key, &path, root)?;
            let meta = std::fs::symlink_metadata(&path).map_err(resolve_err)?;
            if !meta.is_dir() {
                return Err(WorkspaceError::MountNotADirectory {
                    key,
                    path,
                    found: FileKind::of(&meta),
                });
            }
            Ok(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_missing(key, configured, root, spec, runner_uid)
        }
        Err(e) => Err(resolve_err(e)),
    }
}

/// Creates a missing override in its (existing) parent directory.
fn create_missing(
    key: MountKey,
    configured: &Path,
    root: &Path,
    spec: DirSpec,
    runner_uid: u32,
) -> Result<PathBuf, WorkspaceError> {
    let resolve_err = |source| WorkspaceError::MountResolve {
        key,
        path: configured.to_path_buf(),
        source,
    };
    let (Some(parent), Some(Component::Normal(name))) =
        (configured.parent(), configured.components().next_back())
    else {
        return Err(resolve_err(std::io::ErrorKind::InvalidInput.into()));
    };
    let parent = std::fs::canonicalize(parent).map_err(resolve_err)?;
    let path = parent.join(name);
    check_placement(key, &path, root)?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let parent_fd =
        nix::fcntl::open(&parent, flags, Mode::empty()).map_err(|e| resolve_err(e.into()))?;
    let created = mkdir_at(&parent_fd, &path, name, spec.mode)?;
    let fd = open_dir_at(&parent_fd, &path, name)?;
    if created {
        set_owner_and_mode(&fd, &path, spec, runner_uid)?;
    }
    Ok(path)
}

/// Refuses an override that would expose the workspace root or a user's
/// runner-private directories.
fn check_placement(key: MountKey, path: &Path, root: &Path) -> Result<(), WorkspaceError> {
    let conflict = if root.starts_with(path) {
        Some(MountConflict::ContainsWorkspaceRoot)
    } else if let Ok(rest) = path.strip_prefix(root) {
        let mut parts = rest.components().skip(1);
        match parts.next() {
            None => Some(MountConflict::IsUserDirectory),
            Some(Component::Normal(n)) if n == "run" || n == "logs" => {
                Some(MountConflict::InsidePrivateDirectory)
            }
            Some(_) => None,
        }
    } else {
        None
    };
    match conflict {
        None => Ok(()),
        Some(conflict) => Err(WorkspaceError::MountForbidden {
            key,
            path: path.to_path_buf(),
            conflict,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_rules() {
        let root = Path::new("/srv/ws");
        let check = |p: &str| check_placement(MountKey::Tmp, Path::new(p), root);
        for (p, want) in [
            ("/srv/ws", Some(MountConflict::ContainsWorkspaceRoot)),
            ("/srv", Some(MountConflict::ContainsWorkspaceRoot)),
            ("/", Some(MountConflict::ContainsWorkspaceRoot)),
            ("/srv/ws/bob", Some(MountConflict::IsUserDirectory)),
            (
                "/srv/ws/bob/run",
                Some(MountConflict::InsidePrivateDirectory),
            ),
            (
                "/srv/ws/bob/logs/x",
                Some(MountConflict::InsidePrivateDirectory),
            ),
            ("/srv/ws/bob/shared", None),
            ("/srv/wsx", None),
            ("/data/tmp", None),
        ] {
            let got = match check(p) {
                Ok(()) => None,
                Err(WorkspaceError::MountForbidden { conflict, key, .. }) => {
                    assert_eq!(key, MountKey::Tmp);
                    Some(conflict)
                }
                Err(e) => panic!("{e:?}"),
            };
            assert_eq!(got, want, "{p}");
        }
    }
}
