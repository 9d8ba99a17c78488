//! Creating and checking workspace directories relative to directory fds.
//!
//! A directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its
//! parent's fd, so a planted symlink is an error, never followed. Owner and
//! mode are set (with `fchown`/`fchmod` on the open fd, never on a path)
//! only on a directory this call created; an existing one must already
//! have the expected owner (and, for runner-private ones, mode) or it is an
//! error, never silently reused.

use super::error::{ModeRequirement, Owner, WorkspaceError};
use super::file::FileKind;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

/// What an existing directory must look like beyond its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModeRule {
    /// Any mode (guest-owned directories: the guest may change it).
    Any,
    /// Exactly the spec's mode (`run/`, `logs/`).
    Exact,
    /// No access for others and no group write (the user root).
    Private,
}

/// Owner, group and mode of one workspace directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirSpec {
    /// Owner it must have (set with `fchown` when created by someone else's
    /// uid than the runner's).
    pub(crate) uid: u32,
    /// Group it must have, if it matters (set when created).
    pub(crate) gid: Option<u32>,
    /// Mode when created.
    pub(crate) mode: u32,
    /// What an existing directory's mode must satisfy.
    pub(crate) existing: ModeRule,
}

/// `mkdirat`; an existing entry is fine (it is checked when opened).
/// Returns whether the directory was created.
pub(crate) fn mkdir_at(
    parent: &OwnedFd,
    path: &Path,
    name: &OsStr,
    mode: u32,
) -> Result<bool, WorkspaceError> {
    match mkdirat(parent, name, Mode::from_bits_truncate(mode)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(WorkspaceError::Create {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Opens directory `name` of `parent`, refusing a symlink or non-directory.
pub(crate) fn open_dir_at(
    parent: &OwnedFd,
    path: &Path,
    name: &OsStr,
) -> Result<OwnedFd, WorkspaceError> {
    open_existing_dir_at(parent, path, name)?.ok_or_else(|| WorkspaceError::Create {
        path: path.to_path_buf(),
        source: Errno::ENOENT.into(),
    })
}

/// As [`open_dir_at`], with `None` when there is nothing at `name`.
fn open_existing_dir_at(
    parent: &OwnedFd,
    path: &Path,
    name: &OsStr,
) -> Result<Option<OwnedFd>, WorkspaceError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(WorkspaceError::NotADirectory {
            path: path.to_path_buf(),
            found: FileKind::Symlink,
        }),
        Err(Errno::ENOTDIR) => {
            let found =
                nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_or(FileKind::Regular, |s| FileKind::from_mode(s.st_mode));
            Err(WorkspaceError::NotADirectory {
                path: path.to_path_buf(),
                found,
            })
        }
        Err(e) => Err(WorkspaceError::Create {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Creates (if missing) and opens directory `name` of `parent` per `spec`;
/// `runner_uid` is the runner's effective uid.
pub(crate) fn ensure_dir(
    parent: &OwnedFd,
    path: &Path,
    name: &OsStr,
    spec: DirSpec,
    runner_uid: u32,
) -> Result<OwnedFd, WorkspaceError> {
    // Opened first: an existing workspace (every start after a user's
    // first) costs no `mkdirat`.
    let (fd, created) = match open_existing_dir_at(parent, path, name)? {
        Some(fd) => (fd, false),
        None => {
            let created = mkdir_at(parent, path, name, spec.mode)?;
            (open_dir_at(parent, path, name)?, created)
        }
    };
    let stat = stat_of(&fd, path)?;
    if created {
        // Ours a moment ago; anything else means it was swapped.
        expect_owner(path, &stat, runner_uid, None)?;
        set_owner_and_mode(&fd, path, spec, runner_uid)?;
    } else {
        expect_owner(path, &stat, spec.uid, spec.gid)?;
        expect_mode(path, &stat, spec)?;
    }
    Ok(fd)
}

/// `fstat` of an open directory.
pub(crate) fn stat_of(fd: &OwnedFd, path: &Path) -> Result<FileStat, WorkspaceError> {
    fstat(fd).map_err(|e| WorkspaceError::Create {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Gives a directory the runner just created its owner, group and mode.
pub(crate) fn set_owner_and_mode(
    fd: &OwnedFd,
    path: &Path,
    spec: DirSpec,
    runner_uid: u32,
) -> Result<(), WorkspaceError> {
    let err = |e: Errno| WorkspaceError::Create {
        path: path.to_path_buf(),
        source: e.into(),
    };
    if spec.uid != runner_uid || spec.gid.is_some() {
        fchown(
            fd,
            Some(Uid::from_raw(spec.uid)),
            spec.gid.map(Gid::from_raw),
        )
        .map_err(err)?;
    }
    // After the chown (which may clear set-id bits), and because the umask
    // may have narrowed the mode given to mkdirat.
    fchmod(fd, Mode::from_bits_truncate(spec.mode)).map_err(err)
}

fn expect_owner(
    path: &Path,
    stat: &FileStat,
    uid: u32,
    gid: Option<u32>,
) -> Result<(), WorkspaceError> {
    if stat.st_uid == uid && gid.is_none_or(|g| g == stat.st_gid) {
        return Ok(());
    }
    Err(WorkspaceError::WrongOwner {
        path: path.to_path_buf(),
        found: Owner {
            uid: stat.st_uid,
            gid: Some(stat.st_gid),
        },
        expected: Owner { uid, gid },
    })
}

fn expect_mode(path: &Path, stat: &FileStat, spec: DirSpec) -> Result<(), WorkspaceError> {
    let found = stat.st_mode & 0o7777;
    let required = match spec.existing {
        ModeRule::Any => return Ok(()),
        ModeRule::Exact if found == spec.mode => return Ok(()),
        ModeRule::Private if found & 0o027 == 0 => return Ok(()),
        ModeRule::Exact => ModeRequirement::Exactly(spec.mode),
        ModeRule::Private => ModeRequirement::NoOtherAccess,
    };
    Err(WorkspaceError::WrongMode {
        path: path.to_path_buf(),
        found,
        required,
        suggested: spec.mode,
    })
}
