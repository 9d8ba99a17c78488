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
//! The file outlives the session: letting go only closes it, which releases
//! the lock, and the next session locks the same file. (Removing it on
//! every stop cost an unlink and the inode's eviction, a tenth of a stop's
//! CPU.) Whether a session runs is the lock, never the file's presence;
//! the pid in it is its last holder's. A probe's shared lock on an unheld
//! file lasts microseconds, and a starter waits such a lock out (see
//! [`SessionLock::acquire`]). Should something else remove or replace the
//! file while a starter opens it, the starter notices that the name no
//! longer names the file it locked and tries again, so two sessions never
//! hold two different files.

use crate::workspace::file::{HostFileError, OpenHow, open_regular};
use rustix::fs::{FlockOperation, flock};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// File name of the lock inside `run/`.
pub const LOCK_NAME: &str = "session.lock";

/// Held for as long as the session lives; dropping it closes the file,
/// which releases the lock.
#[derive(Debug)]
pub struct SessionLock {
    /// The locked file (never duplicated, so closing it unlocks). Held
    /// for its lock; only tests look at it.
    #[cfg_attr(not(test), allow(dead_code))]
    file: File,
}

/// How long [`SessionLock::acquire`] keeps trying a lock it finds held: a
/// status probe holds a shared lock for microseconds, and a starter that
/// has just locked the file writes its pid within them too, so what it
/// reports as the holder is the live one.
const HELD_WAIT: Duration = Duration::from_millis(5);

/// How often [`SessionLock::acquire`] retries after locking a file that was
/// removed or replaced at the same moment.
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
    /// Takes the lock in `run_dir`, writing our pid into it. A lock held
    /// for a moment (a status probe's shared lock, a holder letting go) is
    /// waited out for up to 5 ms; one still held then (a live session's)
    /// is reported with its holder's pid.
    pub fn acquire(run_dir: &Path) -> Result<Self, LockError> {
        Self::acquire_within(run_dir, HELD_WAIT)
    }

    fn acquire_within(run_dir: &Path, wait: Duration) -> Result<Self, LockError> {
        let path = run_dir.join(LOCK_NAME);
        for _ in 1..ACQUIRE_ATTEMPTS {
            if let Some(lock) = Self::try_acquire(&path, wait)? {
                return Ok(lock);
            }
        }
        Self::try_acquire(&path, wait)?.ok_or_else(|| LockError::Io {
            path: path.clone(),
            source: std::io::Error::other("the lock file kept being replaced"),
        })
    }

    /// One attempt, waiting up to `wait` for a lock held only briefly;
    /// `None` when the file locked was unlinked meanwhile.
    fn try_acquire(path: &Path, wait: Duration) -> Result<Option<Self>, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = open_regular(path, OpenHow::ReadWrite { mode: 0o600 })
            .map_err(|source| LockError::Open { source })?;
        if !lock_exclusive(&file, wait).map_err(io)? {
            // Read only now: a holder that has just taken the lock has
            // written its pid by the end of the wait.
            let mut holder = String::new();
            if let Err(e) = file.read_to_string(&mut holder) {
                tracing::debug!(error = %e, "cannot read the lock holder's pid");
            }
            return Err(LockError::Held {
                path: path.to_path_buf(),
                holder: holder.trim().to_owned(),
            });
        }
        if !names_file(path, &file) {
            return Ok(None);
        }
        write_pid(&file).map_err(io)?;
        Ok(Some(Self { file }))
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
        // Closing the probe's file releases its shared lock.
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => false,
            Err(rustix::io::Errno::WOULDBLOCK) => true,
            Err(errno) => {
                tracing::warn!(path = %path.display(), %errno, "session lock probe failed");
                false
            }
        }
    }
}

/// Takes the exclusive lock without blocking, trying again every
/// millisecond for up to `wait` while it is held; `false` if it still is.
fn lock_exclusive(file: &File, wait: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Writes our pid into the lock file, unless it holds it already (the
/// last session in this process), and cuts whatever a longer one left
/// after it. Never a truncation to zero: on ext4 that marks the file for a
/// forced write-back when it is closed (the "replace via truncate"
/// heuristic), which made every session's stop wait for the disk.
fn write_pid(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let pid = std::process::id().to_string();
    let mut held = [0u8; 32];
    let n = file.read_at(&mut held, 0)?;
    if held[..n] == *pid.as_bytes() {
        return Ok(());
    }
    file.write_all_at(pid.as_bytes(), 0)?;
    if n > pid.len() {
        file.set_len(pid.len() as u64)?;
    }
    Ok(())
}

/// Whether `path` (not followed) is the file open as `file`.
fn names_file(path: &Path, file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
        // The file stays for the next session, which locks it again.
        let path = dir.path().join(LOCK_NAME);
        let ino = std::fs::metadata(&path).unwrap().ino();
        let second = SessionLock::acquire(dir.path()).unwrap();
        assert!(SessionLock::is_held(dir.path()));
        assert_eq!(second.file.metadata().unwrap().ino(), ino);
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
        assert!(names_file(&path, &lock.file));
    }

    #[test]
    fn a_probes_brief_shared_lock_does_not_fail_a_start() {
        let dir = tempfile::tempdir().unwrap();
        drop(SessionLock::acquire(dir.path()).unwrap());
        // A probe holds a shared lock on the (now unheld) file...
        let probe = open_regular(&dir.path().join(LOCK_NAME), OpenHow::Read).unwrap();
        flock(&probe, FlockOperation::NonBlockingLockShared).unwrap();
        let starter = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || SessionLock::acquire_within(&dir, Duration::from_secs(5)))
        };
        // ...and lets go while the starter is trying.
        std::thread::sleep(Duration::from_millis(50));
        drop(probe);
        let lock = starter.join().unwrap().unwrap();
        assert!(SessionLock::is_held(dir.path()));
        drop(lock);
        // A live holder's lock is still refused once the wait is over.
        let _held = SessionLock::acquire(dir.path()).unwrap();
        let err = SessionLock::acquire_within(dir.path(), Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }), "{err}");
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
        assert!(!SessionLock::is_held(dir.path()));
        // Our own pid is already there: the file is not written again.
        let before = std::fs::metadata(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let lock = SessionLock::acquire(dir.path()).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.mtime(), after.mtime_nsec()),
            (before.mtime(), before.mtime_nsec())
        );
        drop(lock);
    }
}
