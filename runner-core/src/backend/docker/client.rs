//! The connection to the Docker engine: which socket, and a client whose API
//! version is negotiated once, lazily.
//!
//! Lazily, because constructing a backend must not need a running engine (a
//! process-tier daemon builds every backend); the first session start or
//! launch connects. bollard 0.21 speaks API 1.53 by default, while for
//! example Debian's dockerd 20.10 accepts at most 1.41, so the version is
//! negotiated down to what the engine supports.

use super::error::{DockerLaunchError, is_transport};
use bollard::{API_DEFAULT_VERSION, Docker};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Socket used when neither `[docker] host` nor `DOCKER_HOST` names one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long an ordinary engine call may take to answer (headers; streams
/// such as attach and wait are not bounded by it). bollard counts whole
/// seconds.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The engine's socket: `[docker] host`, else the caller's `DOCKER_HOST`,
/// else [`DEFAULT_SOCKET`]. Accepts `unix:///path` or an absolute path.
pub fn resolve_socket(
    configured: Option<&str>,
    docker_host_env: Option<&str>,
) -> Result<PathBuf, DockerLaunchError> {
    let host = configured
        .or(docker_host_env)
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_SOCKET);
    let path = host.strip_prefix("unix://").unwrap_or(host);
    if !path.starts_with('/') {
        return Err(DockerLaunchError::UnsupportedHost {
            host: host.to_owned(),
        });
    }
    Ok(PathBuf::from(path))
}

/// A lazily connected engine client.
#[derive(Debug)]
pub(crate) struct Engine {
    socket: PathBuf,
    docker: OnceCell<Docker>,
}

impl Engine {
    /// An engine at `socket`; nothing is connected yet.
    pub(crate) fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            docker: OnceCell::new(),
        }
    }

    /// The engine's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The client, connecting and negotiating the API version on first use.
    /// A failed attempt is retried on the next call.
    pub(crate) async fn docker(&self) -> Result<&Docker, DockerLaunchError> {
        self.docker
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_unix(
                    &self.socket.to_string_lossy(),
                    CALL_TIMEOUT.as_secs(),
                    API_DEFAULT_VERSION,
                )
                .map_err(|e| self.unreachable(e))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| self.unreachable(e))
            })
            .await
    }

    /// Fails with [`DockerLaunchError::Unreachable`] unless the engine
    /// answers a ping.
    pub(crate) async fn ping(&self) -> Result<(), DockerLaunchError> {
        let docker = self.docker().await?;
        docker.ping().await.map_err(|e| self.unreachable(e))?;
        Ok(())
    }

    /// `Unreachable` for this engine.
    pub(crate) fn unreachable(&self, source: bollard::errors::Error) -> DockerLaunchError {
        DockerLaunchError::Unreachable {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Maps a failed call: transport trouble is `Unreachable`, anything
    /// else goes through `answered`.
    pub(crate) fn map_err(
        &self,
        e: bollard::errors::Error,
        answered: impl FnOnce(bollard::errors::Error) -> DockerLaunchError,
    ) -> DockerLaunchError {
        if is_transport(&e) {
            self.unreachable(e)
        } else {
            answered(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_host_wins_then_env_then_default() {
        let p = |c, e| resolve_socket(c, e).unwrap();
        assert_eq!(
            p(Some("unix:///a.sock"), Some("unix:///b.sock")),
            Path::new("/a.sock")
        );
        assert_eq!(p(None, Some("unix:///b.sock")), Path::new("/b.sock"));
        assert_eq!(p(None, Some("/c.sock")), Path::new("/c.sock"));
        assert_eq!(p(None, None), Path::new(DEFAULT_SOCKET));
        assert_eq!(p(Some(" "), None), Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn tcp_and_relative_hosts_are_refused() {
        for host in ["tcp://127.0.0.1:2375", "docker.sock", "unix://rel.sock"] {
            assert!(
                matches!(
                    resolve_socket(Some(host), None),
                    Err(DockerLaunchError::UnsupportedHost { .. })
                ),
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nope.sock");
        let engine = Engine::new(sock.clone());
        match engine.ping().await {
            Err(DockerLaunchError::Unreachable { socket, .. }) => assert_eq!(socket, sock),
            other => panic!("{other:?}"),
        }
    }
}
