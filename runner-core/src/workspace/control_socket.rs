//! The control socket's file: bound in `run/` with mode 0600, linked from
//! `ipc/` for oxydra's clients while it serves, and removed again after.
//!
//! Only a socket is removed as stale before the bind; `bind` never follows
//! or replaces anything else (it fails), and the chmod does not follow a
//! symlink. Whether another live daemon owns the socket is the caller's
//! concern (runner-bin holds a lock file): here a leftover socket is stale.

use super::Workspace;
use super::file::{HostFileError, remove_stale_socket};
use crate::control::ipc_link::IpcLink;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum ControlSocketError {
    /// Something other than a stale socket is where the socket goes.
    #[error("Refusing the control socket path")]
    Path {
        /// What is there (names the path).
        #[source]
        source: HostFileError,
    },
    /// `bind` or the chmod after it failed.
    #[error("Cannot bind the control socket {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound control socket's file (and its `ipc/` link); [`Self::remove`]
/// takes both away.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    link: Option<IpcLink>,
}

impl ControlSocket {
    /// Binds `run/runner-control.sock` (mode 0600), removing a stale socket
    /// first, and with `link` makes `ipc/runner-control.sock` point at it
    /// (a link that cannot be made is logged, not fatal).
    ///
    /// Blocking, and needs no runtime: the listener is a non-blocking std
    /// one, for [`tokio::net::UnixListener::from_std`] where it is served.
    pub fn bind(
        workspace: &Workspace,
        link: bool,
    ) -> Result<(Self, std::os::unix::net::UnixListener), ControlSocketError> {
        let path = workspace.control_socket();
        if remove_stale_socket(&path).map_err(|source| ControlSocketError::Path { source })? {
            tracing::info!(path = %path.display(), "removed stale control socket");
        }
        let bind_err = |path: &Path, source| ControlSocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = listen_at(&path).map_err(|e| bind_err(&path, e))?;
        let socket = Self { path, link: None };
        let private = fchmodat(
            AT_FDCWD,
            &socket.path,
            Mode::from_bits_truncate(0o600),
            FchmodatFlags::NoFollowSymlink,
        );
        if let Err(e) = private {
            let err = bind_err(&socket.path, e.into());
            socket.remove();
            return Err(err);
        }
        let link = link.then(|| IpcLink::create(workspace)).and_then(|r| {
            r.map_err(|e| {
                tracing::warn!(error = %e, "cannot link ipc/runner-control.sock for oxydra's clients");
            })
            .ok()
        });
        Ok((Self { link, ..socket }, listener))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the link (if still ours) and the socket file; failures are
    /// logged (a missing file is fine).
    pub fn remove(mut self) {
        if let Some(link) = self.link.take() {
            link.remove();
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove control socket");
        }
    }
}

/// A non-blocking (close-on-exec, as std makes every socket) Unix stream
/// socket listening at `path`.
fn listen_at(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserId;
    use crate::workspace::MountOverrides;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[tokio::test]
    async fn bound_private_linked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new("alice").unwrap();
        let ws = Workspace::provision(dir.path(), &user, &MountOverrides::default()).unwrap();
        // A stale socket is replaced.
        drop(std::os::unix::net::UnixListener::bind(ws.control_socket()).unwrap());
        let (socket, _listener) = ControlSocket::bind(&ws, true).unwrap();
        let meta = std::fs::symlink_metadata(socket.path()).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let link = ws.ipc.join(crate::workspace::CONTROL_SOCKET_NAME);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        socket.remove();
        assert!(std::fs::symlink_metadata(ws.control_socket()).is_err());
        assert!(std::fs::symlink_metadata(&link).is_err());
    }

    #[tokio::test]
    async fn a_regular_file_in_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new("bob").unwrap();
        let ws = Workspace::provision(dir.path(), &user, &MountOverrides::default()).unwrap();
        std::fs::write(ws.control_socket(), b"not a socket").unwrap();
        let err = ControlSocket::bind(&ws, false).unwrap_err();
        assert!(matches!(err, ControlSocketError::Path { .. }), "{err:?}");
        assert_eq!(std::fs::read(ws.control_socket()).unwrap(), b"not a socket");
    }
}
