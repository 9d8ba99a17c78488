//! The record of allocated guest uids: `<workspace_root>/.guest-ids`.
//!
//! A small JSON file, `{"version":1,"uids":{"<user id>":<uid>}}`, owned by
//! the runner, mode 0600. Every reader and writer holds an exclusive
//! `flock` on it for the whole read-decide-write, so two runners starting
//! two users at once never hand out one uid twice. It is replaced
//! atomically (a temporary file in the same directory, then `rename`), so a
//! crash leaves either the old or the new record, never half of one. A
//! runner that waited for the lock re-checks that the path still names the
//! file it locked (another runner may have replaced it meanwhile) and
//! starts over if not.
//!
//! Nothing below `workspace_root` is trusted: the root is opened after the
//! workspace's StrictModes check ([`WorkspaceRoot`]), and the record
//! is opened, replaced and re-checked relative to the root's directory fd,
//! with `O_NOFOLLOW` (a symlink is refused) and `O_NONBLOCK` (a FIFO cannot
//! hang the open). It must be a regular file owned by the runner that
//! nobody else can write.

use super::resolve::IdentityError;
use crate::workspace::WorkspaceRoot;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Name of the record file inside the workspace root.
pub const STORE_FILE_NAME: &str = ".guest-ids";

/// How long an opener keeps retrying while it finds the file replaced
/// after its lock was granted. Every replacement is another runner's (or
/// another session start's) completed update, so retrying makes progress;
/// many concurrent first starts can each see several replacements, so the
/// bound is time, not a count.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The record's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Records {
    /// Format version (1).
    pub(super) version: u32,
    /// User id → allocated uid (gid = uid).
    pub(super) uids: BTreeMap<String, u32>,
}

/// The record, read and locked; dropping it releases the lock.
pub(super) struct LockedStore {
    _file: Flock<File>,
    root: OwnedFd,
    path: PathBuf,
    pub(super) records: Records,
}

impl LockedStore {
    /// Opens (creating it if needed) and locks the record under `root`,
    /// after checking `root` (and creating it when it does not exist yet).
    pub(super) fn open(root: &Path) -> Result<Self, IdentityError> {
        let root = WorkspaceRoot::open(root).map_err(Box::new)?;
        Self::open_in(&root)
    }

    /// As [`Self::open`], under a root already checked and opened.
    pub(super) fn open_in(root: &WorkspaceRoot) -> Result<Self, IdentityError> {
        let path = root.path().join(STORE_FILE_NAME);
        let root_fd = root
            .fd()
            .try_clone()
            .map_err(|source| IdentityError::Store {
                path: path.clone(),
                source,
            })?;
        let runner_uid = nix::unistd::geteuid().as_raw();
        let errno = |e: nix::Error| IdentityError::Store {
            path: path.clone(),
            source: e.into(),
        };
        let give_up = std::time::Instant::now() + LOCK_PATIENCE;
        while std::time::Instant::now() < give_up {
            let file = open_checked(&root_fd, &path, runner_uid)?;
            let opened = file.metadata().map_err(|source| IdentityError::Store {
                path: path.clone(),
                source,
            })?;
            let mut file = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| errno(e))?;
            match fstatat(&root_fd, STORE_FILE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(now) if now.st_dev == opened.dev() && now.st_ino == opened.ino() => {}
                // Replaced (or removed) while this runner waited: retry.
                Ok(_) | Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(errno(e)),
            }
            let records = read_records(&mut file, &path)?;
            return Ok(Self {
                _file: file,
                root: root_fd,
                path,
                records,
            });
        }
        Err(IdentityError::StoreContended { path })
    }

    /// Writes the records atomically (the lock is still held).
    pub(super) fn save(&self) -> Result<(), IdentityError> {
        let tmp_name = format!("{STORE_FILE_NAME}.{}.tmp", std::process::id());
        let tmp = self.path.with_file_name(&tmp_name);
        let errno = |e: nix::Error| IdentityError::Store {
            path: tmp.clone(),
            source: e.into(),
        };
        // A leftover of a crashed runner with this pid (unlinkat never
        // follows a symlink).
        match unlinkat(&self.root, tmp_name.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(errno(e)),
        }
        let json =
            serde_json::to_vec_pretty(&self.records).map_err(|source| IdentityError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let fd = openat(
            &self.root,
            tmp_name.as_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        let mut file = File::from(fd);
        let io = |source| IdentityError::Store {
            path: tmp.clone(),
            source,
        };
        file.write_all(&json).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)?;
        renameat(&self.root, tmp_name.as_str(), &self.root, STORE_FILE_NAME).map_err(errno)?;
        // The rename itself must reach the disk too: after a power loss a
        // lost record would hand this uid to someone else.
        nix::unistd::fsync(&self.root).map_err(errno)
    }
}

/// Opens the record without following links or blocking, and checks what
/// it is: a regular file, the runner's own, writable by nobody else.
fn open_checked(root: &OwnedFd, path: &Path, runner_uid: u32) -> Result<File, IdentityError> {
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let fd = openat(
        root,
        STORE_FILE_NAME,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => IdentityError::StoreNotRegular {
            path: path.to_path_buf(),
        },
        e => IdentityError::Store {
            path: path.to_path_buf(),
            source: e.into(),
        },
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| IdentityError::Store {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(IdentityError::StoreNotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.uid() != runner_uid || meta.mode() & 0o022 != 0 {
        return Err(IdentityError::StoreNotPrivate {
            path: path.to_path_buf(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(file)
}

fn read_records(file: &mut File, path: &Path) -> Result<Records, IdentityError> {
    let io = |source| IdentityError::Store {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    if text.trim().is_empty() {
        return Ok(Records {
            version: 1,
            uids: BTreeMap::new(),
        });
    }
    serde_json::from_str(&text).map_err(|source| IdentityError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn records_survive_a_reopen_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let mut store = LockedStore::open(&root).unwrap();
        assert!(store.records.uids.is_empty());
        store.records.uids.insert("alice".into(), 7);
        store.save().unwrap();
        drop(store);
        let again = LockedStore::open(&root).unwrap();
        assert_eq!(again.records.uids.get("alice"), Some(&7));
        let meta = fs::metadata(root.join(STORE_FILE_NAME)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&root).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_symlink_or_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(STORE_FILE_NAME)).unwrap();
        let err = LockedStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(err, IdentityError::StoreNotRegular { .. }),
            "{err:?}"
        );
        assert_eq!(fs::read(&target).unwrap(), b"keep");

        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(
            &dir.path().join(STORE_FILE_NAME),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = LockedStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(err, IdentityError::StoreNotRegular { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE_NAME);
        fs::write(&path, b"").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let err = LockedStore::open(dir.path()).err().unwrap();
        assert!(
            matches!(err, IdentityError::StoreNotPrivate { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_root_others_could_rewrite_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = LockedStore::open(&dir.path().join("ws")).err().unwrap();
        assert!(matches!(err, IdentityError::Root(_)), "{err:?}");
        assert!(!dir.path().join("ws").exists());
    }

    #[test]
    fn garbage_is_a_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE_NAME);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"not json")
            .unwrap();
        let err = LockedStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err:?}");
    }
}
