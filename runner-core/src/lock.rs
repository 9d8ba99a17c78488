//! One live session per user and workspace: an exclusive `flock` on
//! `run/session.lock`.
//!
//! `flock` locks belong to an open file description, so the lock excludes a
//! second session in the same process as well as in another one, and it
//! dies with the process: a crashed runner never blocks the next.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the lock inside `run/`.
pub const LOCK_NAME: &str = "session.lock";

/// Held for as long as the session lives; dropping it releases the lock.
#[derive(Debug)]
pub struct SessionLock {
    _lock: Flock<File>,
}

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
    /// The lock file could not be opened or written.
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
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                write!(lock, "{}", std::process::id()).map_err(io)?;
                Ok(Self { _lock: lock })
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                if let Err(e) = file.read_to_string(&mut holder) {
                    tracing::debug!(error = %e, "cannot read the lock holder's pid");
                }
                Err(LockError::Held {
                    path,
                    holder: holder.trim().to_owned(),
                })
            }
            Err((_, errno)) => Err(io(errno.into())),
        }
    }

    /// Whether some live session holds the lock in `run_dir` (a probe that
    /// takes and drops the lock when it is free).
    pub fn is_held(run_dir: &Path) -> bool {
        matches!(Self::acquire(run_dir), Err(LockError::Held { .. }))
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
        SessionLock::acquire(dir.path()).unwrap();
    }
}
