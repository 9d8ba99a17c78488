//! Readiness checks: how the runner tells that a launched guest is ready
//! to serve (`[readiness.<guest>]`): a file that must exist or a Unix
//! socket that must accept, below the user's directory, within a timeout.
//!
//! Everything below the user's directory is guest-writable, so a check
//! never follows a symlink there: the path is opened with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, `O_PATH | O_NOFOLLOW`)
//! relative to a descriptor of the user's directory, and the socket is
//! connected through that descriptor (`/proc/self/fd/N`), never by path,
//! so a socket swapped for a link between the check and the connect is
//! not followed either. Nothing is read from or written to the guest's
//! file or socket: a check only looks (file) or connects and closes
//! (socket).

use crate::workspace::FileKind;
use runner_types::GuestRole;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Degraded-reason code: a guest's readiness check did not pass within
/// its timeout (the check goes on; the reason is withdrawn when it passes).
pub const NOT_READY: &str = "not_ready";
/// Timeout of a check that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait between two probes; doubles up to [`POLL_MAX`].
const POLL_INITIAL: Duration = Duration::from_millis(10);
/// Longest wait between two probes before the timeout.
const POLL_MAX: Duration = Duration::from_millis(200);
/// Wait between two probes once the timeout has passed.
const POLL_LATE: Duration = Duration::from_secs(1);

/// What a check looks for, relative to the user's directory (validated:
/// relative, no `..`, not empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A regular file that must exist.
    File(PathBuf),
    /// A Unix socket that must accept a connection.
    Socket(PathBuf),
}

impl Probe {
    /// The path, relative to the user's directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::File(p) | Self::Socket(p) => p,
        }
    }
}

/// One guest's readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessCheck {
    /// What to look for.
    pub probe: Probe,
    /// After each launch, how long the check may take before the guest is
    /// reported [`NOT_READY`].
    pub timeout: Duration,
}

/// The readiness checks of a session's guests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessChecks {
    /// The runtime guest's check.
    pub runtime: Option<ReadinessCheck>,
    /// The sidecar guest's check.
    pub sidecar: Option<ReadinessCheck>,
}

impl ReadinessChecks {
    /// `role`'s check, if it has one.
    pub fn for_role(&self, role: GuestRole) -> Option<&ReadinessCheck> {
        match role {
            GuestRole::Runtime => self.runtime.as_ref(),
            GuestRole::Sidecar => self.sidecar.as_ref(),
        }
    }

    /// These checks with each guest that `user` names replaced by its.
    pub fn overridden_by(&self, user: &ReadinessChecks) -> ReadinessChecks {
        ReadinessChecks {
            runtime: user.runtime.clone().or_else(|| self.runtime.clone()),
            sidecar: user.sidecar.clone().or_else(|| self.sidecar.clone()),
        }
    }
}

/// Why a probe did not pass (yet).
#[derive(Debug, Error)]
pub enum NotReady {
    /// Nothing is at the path (or a directory on the way is missing).
    #[error("{path} does not exist")]
    Missing {
        /// The path, relative to the user's directory.
        path: PathBuf,
    },
    /// Something of the wrong kind is there (a symlink is never followed).
    #[error("{path} is a {found}, not a {expected}")]
    WrongKind {
        /// The path, relative to the user's directory.
        path: PathBuf,
        /// What is there.
        found: FileKind,
        /// What the check wants.
        expected: FileKind,
    },
    /// The socket exists but refused the connection (nobody listens, or
    /// its backlog is full).
    #[error("{path} does not accept connections")]
    NotAccepting {
        /// The path, relative to the user's directory.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The check itself failed (the user's directory cannot be opened, a
    /// path escapes it, ...).
    #[error("Cannot check {path}")]
    Io {
        /// The path, relative to the user's directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Probes once, blocking (file-system calls: run it on the blocking pool).
pub fn probe(user_root: &Path, probe: &Probe) -> Result<(), NotReady> {
    let rel = probe.path();
    let io = |e: Errno| NotReady::Io {
        path: rel.to_path_buf(),
        source: e.into(),
    };
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open(user_root, dir_flags, Mode::empty()).map_err(io)?;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat2(&root, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
            return Err(NotReady::Missing {
                path: rel.to_path_buf(),
            });
        }
        // A symlink on the way (RESOLVE_NO_SYMLINKS refuses it).
        Err(Errno::LOOP) => {
            return Err(NotReady::WrongKind {
                path: rel.to_path_buf(),
                found: FileKind::Symlink,
                expected: expected_kind(probe),
            });
        }
        Err(e) => return Err(io(e)),
    };
    let found = FileKind::from_mode(rustix::fs::fstat(&fd).map_err(io)?.st_mode);
    let expected = expected_kind(probe);
    if found != expected {
        return Err(NotReady::WrongKind {
            path: rel.to_path_buf(),
            found,
            expected,
        });
    }
    match probe {
        Probe::File(_) => Ok(()),
        Probe::Socket(_) => connect_through(&fd, rel),
    }
}

fn expected_kind(probe: &Probe) -> FileKind {
    match probe {
        Probe::File(_) => FileKind::Regular,
        Probe::Socket(_) => FileKind::Socket,
    }
}

/// Connects (without blocking) to the socket `fd` refers to, and closes
/// the connection again.
fn connect_through(fd: &OwnedFd, rel: &Path) -> Result<(), NotReady> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let io = |e: nix::Error| NotReady::Io {
        path: rel.to_path_buf(),
        source: e.into(),
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io)?;
    // The magic link names the inode `fd` holds: no path below the user's
    // directory is resolved again.
    let addr = UnixAddr::new(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str()).map_err(io)?;
    match connect(sock.as_raw_fd(), &addr) {
        Ok(()) => Ok(()),
        Err(e @ (nix::Error::ECONNREFUSED | nix::Error::EAGAIN)) => Err(NotReady::NotAccepting {
            path: rel.to_path_buf(),
            source: e.into(),
        }),
        Err(e) => Err(io(e)),
    }
}

/// What [`run_check`] reports.
#[derive(Debug)]
pub enum Readiness {
    /// The check passed.
    Ready,
    /// The timeout passed first; the check goes on.
    TimedOut(NotReady),
}

/// Probes `check` until it passes: reports [`Readiness::TimedOut`] once
/// when its timeout passes first, then [`Readiness::Ready`] when it passes,
/// and returns. Cancel it by dropping the future.
pub async fn run_check(
    user_root: PathBuf,
    check: ReadinessCheck,
    mut report: impl FnMut(Readiness),
) {
    let started = Instant::now();
    let mut delay = POLL_INITIAL;
    let mut timed_out = false;
    loop {
        let (root, probe_of) = (user_root.clone(), check.probe.clone());
        let result = tokio::task::spawn_blocking(move || probe(&root, &probe_of))
            .await
            .unwrap_or_else(|e| {
                Err(NotReady::Io {
                    path: check.probe.path().to_path_buf(),
                    source: std::io::Error::other(e),
                })
            });
        let not_ready = match result {
            Ok(()) => {
                report(Readiness::Ready);
                return;
            }
            Err(e) => e,
        };
        let left = check.timeout.saturating_sub(started.elapsed());
        if !timed_out && left.is_zero() {
            timed_out = true;
            report(Readiness::TimedOut(not_ready));
        }
        let wait = if timed_out {
            POLL_LATE
        } else {
            delay.min(left)
        };
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}

/// The [`NOT_READY`] degraded reason for `role`.
pub fn not_ready(
    role: GuestRole,
    check: &ReadinessCheck,
    why: &NotReady,
) -> runner_types::DegradedReason {
    let mut detail = format!(
        "the {role} guest is not ready {:?} after its launch: {why}",
        check.timeout
    );
    if let Some(cause) = std::error::Error::source(why) {
        detail.push_str(&format!(": {cause}"));
    }
    runner_types::DegradedReason {
        code: NOT_READY.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_file_passes_once_it_exists_and_a_symlink_never_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ipc")).unwrap();
        let flag = Probe::File("ipc/gateway-endpoint".into());
        assert!(matches!(
            probe(dir.path(), &flag),
            Err(NotReady::Missing { .. })
        ));
        // A link to a file that exists, outside or inside, is refused.
        std::fs::write(dir.path().join("elsewhere"), "x").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("elsewhere"),
            dir.path().join("ipc/gateway-endpoint"),
        )
        .unwrap();
        assert!(matches!(
            probe(dir.path(), &flag),
            Err(NotReady::WrongKind {
                found: FileKind::Symlink,
                ..
            })
        ));
        std::fs::remove_file(dir.path().join("ipc/gateway-endpoint")).unwrap();
        std::fs::write(dir.path().join("ipc/gateway-endpoint"), "x").unwrap();
        probe(dir.path(), &flag).unwrap();
        // A symlinked directory on the way is refused too.
        std::os::unix::fs::symlink(dir.path().join("ipc"), dir.path().join("link")).unwrap();
        let through = Probe::File("link/gateway-endpoint".into());
        assert!(matches!(
            probe(dir.path(), &through),
            Err(NotReady::WrongKind {
                found: FileKind::Symlink,
                ..
            })
        ));
    }

    #[test]
    fn a_socket_passes_only_while_something_listens() {
        let dir = tempfile::tempdir().unwrap();
        let check = Probe::Socket("s.sock".into());
        let listener = UnixListener::bind(dir.path().join("s.sock")).unwrap();
        probe(dir.path(), &check).unwrap();
        drop(listener);
        assert!(matches!(
            probe(dir.path(), &check),
            Err(NotReady::NotAccepting { .. })
        ));
        std::fs::remove_file(dir.path().join("s.sock")).unwrap();
        std::fs::write(dir.path().join("s.sock"), "").unwrap();
        assert!(matches!(
            probe(dir.path(), &check),
            Err(NotReady::WrongKind {
                found: FileKind::Regular,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn run_check_reports_the_timeout_then_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let check = ReadinessCheck {
            probe: Probe::File("ready".into()),
            timeout: Duration::from_millis(20),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(run_check(dir.path().to_path_buf(), check, move |r| {
            tx.send(r).unwrap()
        }));
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(
            matches!(
                first,
                Ok(Some(Readiness::TimedOut(NotReady::Missing { .. })))
            ),
            "{first:?}"
        );
        std::fs::write(dir.path().join("ready"), "").unwrap();
        let second = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(second, Ok(Some(Readiness::Ready))), "{second:?}");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
