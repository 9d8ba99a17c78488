//! The host-side bridge that joins the runtime VM to the sidecar VM over
//! vsock.
//!
//! A Firecracker guest can only reach the host (CID 2). When the runtime
//! guest connects to host port `P`, Firecracker turns that into a connection
//! to the Unix socket `<runtime vsock uds>_P`, which this bridge listens on.
//! For each such connection the bridge connects to the sidecar VM's vsock
//! Unix socket, writes `CONNECT P\n` (Firecracker's host-initiated
//! protocol), reads the `OK <host port>\n` reply, and then copies bytes both
//! ways until either side closes.
//!
//! Bounds: at most [`BridgeLimits::max_connections`] bridged connections at
//! once (more are closed on accept), and the connect plus handshake to the
//! sidecar side must finish within [`BridgeLimits::handshake_timeout`]. A
//! refused or failed handshake ends that one connection only.
//!
//! Lifetime: [`VsockBridge`] owns the accept task, which owns every
//! connection task; dropping the bridge (or [`VsockBridge::stop`]) aborts
//! them all, closes every bridged connection, removes the listening socket
//! and publishes `false` on the "up" watch. The watch is `true` from a
//! successful bind until then.

use super::launch::remove_if_present;
use crate::identity::GuestUser;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest accepted handshake reply line (`OK <u32>\n` is at most 14 bytes).
const MAX_REPLY: usize = 64;

/// Bounds of one bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeLimits {
    /// Most bridged connections at once.
    pub max_connections: usize,
    /// Bound on connecting to the sidecar side and its `OK` reply.
    pub handshake_timeout: Duration,
}

impl Default for BridgeLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// What to bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Where the runtime side arrives (`<runtime vsock uds>_<port>`).
    pub listen: PathBuf,
    /// The sidecar VM's vsock Unix socket.
    pub target: PathBuf,
    /// The vsock port to ask the sidecar side for.
    pub port: u32,
    /// Owner of the listening socket: the uid a jailed firecracker runs as
    /// must be able to connect to it. `None`: the runner's own user.
    pub owner: Option<GuestUser>,
    /// Bounds.
    pub limits: BridgeLimits,
}

/// Why a bridge could not start.
#[derive(Debug, Error)]
pub enum BridgeError {
    /// The listening socket cannot be created (or given to its owner).
    #[error("Cannot listen for the vsock bridge on {path}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why one bridged connection ended before copying began.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The sidecar side's socket refused or does not exist.
    #[error("Cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing `CONNECT` or reading the reply failed.
    #[error("vsock handshake on {path} failed")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The reply was not `OK <port>` (the guest has no listener there).
    #[error("vsock handshake on {path} refused: {reply:?}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// What came back (lossy, bounded).
        reply: String,
    },
    /// Connect plus reply took longer than allowed.
    #[error("vsock handshake on {path} did not finish within {limit:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The bound.
        limit: Duration,
    },
}

/// A running bridge. Dropping it tears everything down.
#[derive(Debug)]
pub struct VsockBridge {
    listen: PathBuf,
    task: JoinHandle<()>,
    up: watch::Sender<bool>,
}

impl VsockBridge {
    /// Binds `config.listen` (replacing a stale socket), hands it to its
    /// owner with mode 0600, and starts accepting. Call it before the VM
    /// whose directory holds the socket starts. `up` is set to `true`
    /// once listening and back to `false` at teardown. Must be called
    /// within a tokio runtime.
    pub fn start(config: BridgeConfig, up: watch::Sender<bool>) -> Result<Self, BridgeError> {
        let listen_err = |source| BridgeError::Listen {
            path: config.listen.clone(),
            source,
        };
        remove_if_present(&config.listen).map_err(listen_err)?;
        let listener = UnixListener::bind(&config.listen).map_err(listen_err)?;
        // Called before the VM starts, so nothing else writes the directory
        // yet (for a jailed VM it is the guest-owned chroot).
        let secure = || -> std::io::Result<()> {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                &config.listen,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )?;
            match config.owner {
                Some(o) => std::os::unix::fs::lchown(&config.listen, Some(o.uid), Some(o.gid)),
                None => Ok(()),
            }
        };
        if let Err(source) = secure() {
            remove_if_present(&config.listen).unwrap_or_else(|e| {
                tracing::warn!(path = %config.listen.display(), error = %e, "cannot remove bridge socket");
            });
            return Err(listen_err(source));
        }
        let listen = config.listen.clone();
        let task = tokio::spawn(accept_loop(listener, config));
        up.send_replace(true);
        Ok(Self { listen, task, up })
    }

    /// The listening socket.
    pub fn listen_path(&self) -> &Path {
        &self.listen
    }

    /// Tears the bridge down (the same as dropping it).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for VsockBridge {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task and closes both ends of each connection.
        self.task.abort();
        if let Err(e) = remove_if_present(&self.listen) {
            tracing::warn!(path = %self.listen.display(), error = %e, "cannot remove bridge socket");
        }
        self.up.send_replace(false);
    }
}

async fn accept_loop(listener: UnixListener, config: BridgeConfig) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the count stays exact.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(path = %config.listen.display(), error = %e, "vsock bridge accept failed");
                // Back off briefly: a persistent error (EMFILE) must not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= config.limits.max_connections {
            tracing::warn!(
                path = %config.listen.display(),
                max = config.limits.max_connections,
                "vsock bridge full; closing a new connection"
            );
            continue;
        }
        connections.spawn(bridge_one(stream, config.clone()));
    }
}

async fn bridge_one(mut inner: UnixStream, config: BridgeConfig) {
    let mut outer = match handshake(&config.target, config.port, config.limits).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "vsock bridge connection refused by the sidecar side");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut inner, &mut outer).await {
        Ok((up, down)) => tracing::debug!(up, down, "vsock bridge connection closed"),
        Err(e) => tracing::debug!(error = %e, "vsock bridge connection ended"),
    }
}

/// Connects to the socket file `target` without following a symlink there.
///
/// `target` lies in the sidecar VM's chroot, which its (untrusted) VMM's
/// uid can write: a symlink planted there would otherwise send the runner,
/// which resolves paths in the host's namespace as root, to any socket on
/// the host (another user's VM, say). The file is opened `O_PATH |
/// O_NOFOLLOW`, checked to be a socket, and connected through
/// `/proc/self/fd`, so what is checked is what is connected to.
async fn connect_no_follow(target: &Path) -> std::io::Result<UnixStream> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, SFlag, fstat};
    use std::os::fd::AsRawFd;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open(target, flags, Mode::empty())?;
    let kind = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFSOCK {
        return Err(std::io::Error::other(
            "not a socket (a symlink or another file was put in its place)",
        ));
    }
    UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).await
}

/// Connects to `target` and performs Firecracker's host-initiated vsock
/// handshake for `port`, all within `limits.handshake_timeout`. The reply
/// is read byte by byte so that no guest data after it is consumed.
pub async fn handshake(
    target: &Path,
    port: u32,
    limits: BridgeLimits,
) -> Result<UnixStream, HandshakeError> {
    let exchange = async {
        let io = |source| HandshakeError::Io {
            path: target.to_path_buf(),
            source,
        };
        let mut stream =
            connect_no_follow(target)
                .await
                .map_err(|source| HandshakeError::Connect {
                    path: target.to_path_buf(),
                    source,
                })?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut reply = Vec::with_capacity(16);
        while reply.last() != Some(&b'\n') && reply.len() < MAX_REPLY {
            match stream.read_u8().await {
                Ok(b) => reply.push(b),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io(e)),
            }
        }
        if is_ok_reply(&reply) {
            Ok(stream)
        } else {
            Err(HandshakeError::Refused {
                path: target.to_path_buf(),
                reply: String::from_utf8_lossy(&reply).into_owned(),
            })
        }
    };
    tokio::time::timeout(limits.handshake_timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(HandshakeError::Timeout {
                path: target.to_path_buf(),
                limit: limits.handshake_timeout,
            })
        })
}

/// `OK <decimal port>\n`.
fn is_ok_reply(reply: &[u8]) -> bool {
    reply
        .strip_prefix(b"OK ")
        .and_then(|r| r.strip_suffix(b"\n"))
        .and_then(|p| std::str::from_utf8(p).ok())
        .is_some_and(|p| p.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ok_with_a_port_is_accepted() {
        assert!(is_ok_reply(b"OK 1073741824\n"));
        assert!(!is_ok_reply(b"OK\n"));
        assert!(!is_ok_reply(b"OK 12"));
        assert!(!is_ok_reply(b"ERR 1\n"));
        assert!(!is_ok_reply(b""));
    }
}
