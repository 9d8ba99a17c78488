//! `--metrics-listen ADDR`: `GET /metrics` over plain HTTP/1.1, for a
//! Prometheus server to scrape. Deliberately tiny (no web framework): one
//! request per connection, the request head capped and read with a
//! timeout, at most [`MAX_CONNECTIONS`] served at once.

use runner_core::metrics::RunnerMetrics;
use runner_types::control::OPENMETRICS_CONTENT_TYPE;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Bound on reading the request and on writing the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: RunnerMetrics) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!(error = %e, "metrics client dropped");
            }
            drop(permit);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &RunnerMetrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let response = match route(&head) {
        Route::Metrics => response("200 OK", OPENMETRICS_CONTENT_TYPE, &metrics.scrape().await),
        Route::NotFound => response("404 Not Found", "text/plain", "Only /metrics is served\n"),
        Route::BadMethod => response("405 Method Not Allowed", "text/plain", "Use GET\n"),
    };
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.shutdown().await
}

/// Reads up to the blank line ending the request head (at most [`MAX_HEAD`]).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::BadMethod,
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(""), Route::BadMethod);
    }

    #[tokio::test]
    async fn serves_the_exposition_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, RunnerMetrics::default()));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        let read = client.read_to_string(&mut text);
        tokio::time::timeout(IO_TIMEOUT, read)
            .await
            .unwrap()
            .unwrap();
        server.abort();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains(OPENMETRICS_CONTENT_TYPE), "{head}");
        assert!(
            body.contains("runner_sessions 0") && body.ends_with("# EOF\n"),
            "{body}"
        );
    }
}
