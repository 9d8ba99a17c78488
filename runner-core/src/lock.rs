//! One live session per user and workspace: an exclusive `flock` on
//! `run/session.lock`.
//!
//! `flock` locks belong to an open file description, so the lock excludes a
//! second session in the same process as well as in another one, and it
//! dies with the process: a crashed runner never blocks the next.
//!
//! The lock file is opened with [`open_regular`]: never through a symlink,
//! never a FIFO or device. Only [`SessionLock::acquire`] creates or writes
//! it; the probe [`SessionLock::is_held`] opens it read-only and takes a
//! shared lock, so `stop` and `status` never change it.
//!
//! The holder removes the file when it lets go (a stopped session leaves no
//! lock behind), while it still holds the lock, and only if the name still
//! names its own file. A starter that locked a file just unlinked by the
//! previous holder notices (the name no longer names the file it locked)
//! and tries again, so two sessions never hold two different files.

use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the lock inside `run/`.
pub const LOCK_NAME: &str = "session.lock";

/// Held for as long as the session lives; dropping it removes the file and
/// releases the lock.
#[derive(Debug)]
pub struct SessionLock {
    lock: Option<Flock<File>>,
    path: PathBuf,
}

/// How often [`SessionLock::acquire`] retries after locking a file that a
/// releasing holder unlinked at the same moment.
const ACQUIRE_ATTEMPTS: usize = 5;

/// Why the lock could not be taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another live session holds it.
    #[error("Lock {path} is held by pid {holder}")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as it wrote it (may be empty).
        holder: String,
    },
    /// The lock file is not a regular file or could not be opened.
    #[error("Cannot open the session lock")]
    Open {
        /// Cause (names the path).
        #[source]
        source: HostFileError,
    },
    /// The lock file could not be locked or written.
    #[error("Cannot use lock file {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl SessionLock {
    /// Takes the lock in `run_dir` without waiting, writing our pid into it.
    pub fn acquire(run_dir: &Path) -> Result<Self, LockError> {
        let path = run_dir.join(LOCK_NAME);
        for _ in 1..ACQUIRE_ATTEMPTS {
            if let Some(lock) = Self::try_acquire(&path)? {
                return Ok(lock);
            }
        }
        Self::try_acquire(&path)?.ok_or_else(|| LockError::Io {
            path: path.clone(),
            source: std::io::Error::other("the lock file kept being replaced"),
        })
    }

    /// One attempt; `None` when the file locked was unlinked meanwhile.
    fn try_acquire(path: &Path) -> Result<Option<Self>, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = open_regular(path, OpenHow::ReadWrite { mode: 0o600 })
            .map_err(|source| LockError::Open { source })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                if !names_file(path, &lock) {
                    return Ok(None);
                }
                // The pid, then cut whatever a crashed holder left after
                // it. Never a truncation to zero: on ext4 that marks the
                // file for a forced write-back when it is closed (the
                // "replace via truncate" heuristic), which made every
                // session's stop wait for the disk.
                let pid = std::process::id().to_string();
                let left = lock.metadata().map_err(io)?.len();
                lock.rewind().map_err(io)?;
                lock.write_all(pid.as_bytes()).map_err(io)?;
                if left > pid.len() as u64 {
                    lock.set_len(pid.len() as u64).map_err(io)?;
                }
                Ok(Some(Self {
                    lock: Some(lock),
                    path: path.to_path_buf(),
                }))
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                if let Err(e) = file.read_to_string(&mut holder) {
                    tracing::debug!(error = %e, "cannot read the lock holder's pid");
                }
                Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: holder.trim().to_owned(),
                })
            }
            Err((_, errno)) => Err(io(errno.into())),
        }
    }

    /// Whether some live session holds the lock in `run_dir`. A read-only
    /// probe: it never creates, truncates or writes the file. A lock file
    /// that is missing, a symlink or not a regular file is "not held".
    pub fn is_held(run_dir: &Path) -> bool {
        let path = run_dir.join(LOCK_NAME);
        let file = match open_regular(&path, OpenHow::Read) {
            Ok(file) => file,
            Err(e) if e.is_not_found() => return false,
            Err(e) => {
                tracing::warn!(error = %e, "session lock probe: not a usable lock file");
                return false;
            }
        };
        // A live session holds it exclusively, so a shared lock fails.
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_probe) => false,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
            Err((_, errno)) => {
                tracing::warn!(path = %path.display(), %errno, "session lock probe failed");
                false
            }
        }
    }
}

/// Whether `path` (not followed) is the file open as `file`.
fn names_file(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
        _ => false,
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        // Still holding the lock: nobody else can have taken this file, and
        // a starter that opened it before the unlink retries (see above).
        if names_file(&self.path, &lock)
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the session lock");
        }
        drop(lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_a_second_holder_in_the_same_process_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = SessionLock::acquire(dir.path()).unwrap();
        let err = SessionLock::acquire(dir.path()).unwrap_err();
        assert!(
            matches!(&err, LockError::Held { holder, .. } if *holder == std::process::id().to_string())
        );
        assert!(SessionLock::is_held(dir.path()));
        drop(first);
        assert!(!SessionLock::is_held(dir.path()));
        assert!(
            !dir.path().join(LOCK_NAME).exists(),
            "lock file left behind"
        );
        SessionLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_file_unlinked_under_a_starter_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_NAME);
        let stale = open_regular(&path, OpenHow::ReadWrite { mode: 0o600 }).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!names_file(&path, &stale));
        // A fresh file at the name is taken instead.
        let lock = SessionLock::acquire(dir.path()).unwrap();
        assert!(names_file(&path, lock.lock.as_ref().unwrap()));
    }

    #[test]
    fn probe_never_creates_the_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!SessionLock::is_held(dir.path()));
        assert!(!dir.path().join(LOCK_NAME).exists());
    }

    #[test]
    fn a_crashed_holders_longer_pid_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_NAME);
        std::fs::write(&path, b"99999999999 left by a crashed runner").unwrap();
        let lock = SessionLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string()
        );
        drop(lock);
        assert!(!path.exists(), "lock file left behind");
    }
}
