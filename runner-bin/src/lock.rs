//! One daemon per user: an exclusive `flock` on `run/daemon.lock`.
//!
//! The lock dies with the process, so a crashed daemon never blocks the next
//! one; its stale socket is then safe to remove.

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Held for the daemon's lifetime.
pub struct DaemonLock {
    _lock: Flock<File>,
}

/// Takes the lock or explains who holds it.
pub fn acquire(run_dir: &Path, user: &str) -> anyhow::Result<DaemonLock> {
    let path = run_dir.join("daemon.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("Cannot open lock file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).context("Cannot truncate lock file")?;
            lock.rewind().context("Cannot rewind lock file")?;
            write!(lock, "{}", std::process::id()).context("Cannot write lock file")?;
            Ok(DaemonLock { _lock: lock })
        }
        Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let mut pid = String::new();
            if let Err(e) = file.read_to_string(&mut pid) {
                tracing::debug!(error = %e, "cannot read lock holder pid");
            }
            bail!(
                "A runner daemon is already serving user {user} (pid {}); stop it with `runner-bin stop --user {user}`",
                pid.trim()
            )
        }
        Err((_, errno)) => Err(errno).with_context(|| format!("Cannot lock {}", path.display())),
    }
}
