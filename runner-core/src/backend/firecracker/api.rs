//! A minimal client for Firecracker's API socket: one HTTP/1.1 `PUT` with a
//! JSON body, the status line and headers read back, all under one deadline.
//!
//! The runner needs exactly one request (`PUT /actions` with
//! `SendCtrlAltDel`), so this speaks just enough HTTP for Firecracker's
//! server instead of pulling in an HTTP stack: a fixed request, a response
//! head capped at 8 KiB, and a body (the `fault_message` of an error) read
//! only when `Content-Length` says there is one, capped at 4 KiB.

use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Most response-head bytes read before giving up.
const MAX_HEAD: usize = 8 * 1024;
/// Most error-body bytes kept for the message.
const MAX_BODY: usize = 4 * 1024;

/// Why an API request failed.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket refused or does not exist.
    #[error("Cannot connect to Firecracker API socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the response failed.
    #[error("Firecracker API exchange on {path} failed")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The whole exchange took longer than allowed.
    #[error("Firecracker API on {path} did not answer within {limit:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The bound.
        limit: Duration,
    },
    /// The reply is not an HTTP/1.x response head.
    #[error("Firecracker API on {path} sent a malformed response")]
    Malformed {
        /// The socket.
        path: PathBuf,
    },
    /// Firecracker answered with a non-2xx status.
    #[error("Firecracker API on {path} answered {status}: {body}")]
    Status {
        /// The socket.
        path: PathBuf,
        /// HTTP status code.
        status: u16,
        /// Response body (Firecracker's `fault_message` JSON), truncated.
        body: String,
    },
}

/// Asks the guest to shut down (`PUT /actions {"action_type":"SendCtrlAltDel"}`).
/// On x86 this reaches the guest only if it drives the i8042 controller.
pub async fn send_ctrl_alt_del(socket: &Path, limit: Duration) -> Result<(), ApiError> {
    put(
        socket,
        "/actions",
        r#"{"action_type":"SendCtrlAltDel"}"#,
        limit,
    )
    .await
}

/// `PUT <resource>` with a JSON `body`; connect, write and read all bounded
/// by `limit` together. `Ok` on any 2xx status.
pub async fn put(
    socket: &Path,
    resource: &str,
    body: &str,
    limit: Duration,
) -> Result<(), ApiError> {
    match tokio::time::timeout(limit, exchange(socket, resource, body)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::Timeout {
            path: socket.to_path_buf(),
            limit,
        }),
    }
}

async fn exchange(socket: &Path, resource: &str, body: &str) -> Result<(), ApiError> {
    let io = |source| ApiError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let request = format!(
        "PUT {resource} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;

    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() >= MAX_HEAD {
            return Err(malformed(socket));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(malformed(socket));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| malformed(socket))?;
    let (status, content_length) = parse_head(head).ok_or_else(|| malformed(socket))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    // An error: keep what Firecracker says about it, bounded.
    let want = content_length.unwrap_or(0).min(MAX_BODY);
    let mut body_bytes = buf[head_end..].to_vec();
    while body_bytes.len() < want {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        body_bytes.extend_from_slice(&chunk[..n]);
    }
    body_bytes.truncate(want);
    Err(ApiError::Status {
        path: socket.to_path_buf(),
        status,
        body: String::from_utf8_lossy(&body_bytes).into_owned(),
    })
}

/// Status code and `Content-Length` of an HTTP/1.x response head.
fn parse_head(head: &str) -> Option<(u16, Option<usize>)> {
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next()?.split(' ');
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.next()?.parse().ok()?;
    let content_length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    Some((status, content_length))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn malformed(socket: &Path) -> ApiError {
    ApiError::Malformed {
        path: socket.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A one-shot server: reads the request, answers `reply` (or nothing,
    /// holding the connection open, when `reply` is `None`), and hands back
    /// the request it saw.
    fn serve_once(
        dir: &Path,
        reply: Option<&'static [u8]>,
    ) -> (PathBuf, tokio::task::JoinHandle<String>) {
        let sock = dir.join("api.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while find(&got, b"}").is_none() {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending its body");
                got.extend_from_slice(&buf[..n]);
            }
            match reply {
                Some(r) => conn.write_all(r).await.unwrap(),
                None => std::future::pending::<()>().await,
            }
            String::from_utf8(got).unwrap()
        });
        (sock, task)
    }

    #[tokio::test]
    async fn sends_ctrl_alt_del_and_accepts_204_without_a_body() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, server) = serve_once(
            dir.path(),
            Some(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"),
        );
        send_ctrl_alt_del(&sock, Duration::from_secs(5))
            .await
            .unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("PUT /actions HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Content-Length: 32\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"action_type\":\"SendCtrlAltDel\"}"));
    }

    #[tokio::test]
    async fn error_status_carries_the_fault_message() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _server) = serve_once(
            dir.path(),
            Some(
                b"HTTP/1.1 400 \r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"fault_message\":\"nope\"}",
            ),
        );
        let err = send_ctrl_alt_del(&sock, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Status { status: 400, body, .. } if body == r#"{"fault_message":"nope"}"#),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _server) = serve_once(dir.path(), None);
        let limit = Duration::from_millis(200);
        let err = tokio::time::timeout(Duration::from_secs(10), send_ctrl_alt_del(&sock, limit))
            .await
            .expect("put must return on its own")
            .unwrap_err();
        assert!(matches!(err, ApiError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn missing_socket_and_garbage_replies_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = send_ctrl_alt_del(&dir.path().join("absent.sock"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }), "{err:?}");

        let (sock, _server) = serve_once(dir.path(), Some(b"SSH-2.0-nope\r\n\r\n"));
        let err = send_ctrl_alt_del(&sock, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn head_parsing() {
        assert_eq!(parse_head("HTTP/1.1 204 \r\n\r\n"), Some((204, None)));
        assert_eq!(
            parse_head("HTTP/1.0 400 Bad\r\ncontent-length:  12 \r\n\r\n"),
            Some((400, Some(12)))
        );
        assert_eq!(parse_head("HTTP/2 200\r\n\r\n"), None);
        assert_eq!(parse_head("HTTP/1.1 abc\r\n\r\n"), None);
    }
}
