//! A control-socket client: connect, ask, read the answer, and follow logs.
//!
//! Every call is bounded by a timeout the caller passes, except
//! [`ControlClient::follow_logs`], which streams until the server closes or
//! the caller drops the stream.

use super::codec::{ClientCodec, ControlCodecError};
use futures::{SinkExt, Stream, StreamExt};
use runner_types::control::{LogsRequest, LogsResponse};
use runner_types::events::{EventsRequest, EventsResponse};
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Why a control request failed on the client side.
#[derive(Debug, Error)]
pub enum ControlClientError {
    /// No socket at `path`, or nothing listening on it: no runner is serving.
    #[error("No runner is listening on {path}")]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// The connect error (not found, or connection refused).
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed for another reason (for example permission denied).
    #[error("Cannot connect to the control socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than the timeout.
    #[error("Connecting to {path} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// The request could not be written.
    #[error("Cannot send the request to {path}")]
    Send {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ControlCodecError,
    },
    /// The answer could not be read (I/O, oversize frame, invalid JSON).
    #[error("Cannot read the answer from {path}")]
    Receive {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ControlCodecError,
    },
    /// The runner closed the connection without answering.
    #[error("The runner at {path} closed the connection without answering")]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// No answer within the timeout.
    #[error("No answer from {path} within {timeout:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// The runner answered a log stream with an `error` response.
    #[error("The runner at {path} refused the request ({code:?}): {message}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// The wire error code.
        code: ControlErrorCode,
        /// The runner's message.
        message: String,
    },
    /// The runner sent a response of the wrong kind.
    #[error("The runner at {path} sent an unexpected `{op}` response")]
    Unexpected {
        /// The socket path.
        path: PathBuf,
        /// The response's `op`.
        op: &'static str,
    },
}

/// One connection to a runner's control socket.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    framed: Framed<UnixStream, ClientCodec>,
}

impl ControlClient {
    /// Connects to the socket at `path`, giving up after `timeout`.
    ///
    /// A missing socket or one nobody listens on is
    /// [`ControlClientError::NotRunning`].
    pub async fn connect(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, ControlClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
            Err(_) => return Err(ControlClientError::ConnectTimeout { path, timeout }),
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(match source.kind() {
                    ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                        ControlClientError::NotRunning { path, source }
                    }
                    _ => ControlClientError::Connect { path, source },
                });
            }
        };
        Ok(Self {
            path,
            framed: Framed::new(stream, ClientCodec::new()),
        })
    }

    /// Connects, sends one request and returns its answer, all within
    /// `timeout`.
    pub async fn request_once(
        path: impl AsRef<Path>,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlClientError> {
        let path = path.as_ref();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut client = Self::connect(path, timeout).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        client.request(request, left).await.map_err(|e| match e {
            // Report the whole budget, not what was left of it.
            ControlClientError::Timeout { path, .. } => {
                ControlClientError::Timeout { path, timeout }
            }
            other => other,
        })
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    ///
    /// An `error` response is returned as a response, not as an `Err`: it is
    /// a valid answer. A `logs` request with `follow` set gets only its first
    /// chunk here; use [`Self::follow_logs`] to stream.
    pub async fn request(
        &mut self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlClientError> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(ControlClientError::Timeout {
                path: self.path.clone(),
                timeout,
            }),
        }
    }

    async fn exchange(
        &mut self,
        request: &ControlRequest,
    ) -> Result<ControlResponse, ControlClientError> {
        self.framed
            .send(request)
            .await
            .map_err(|source| ControlClientError::Send {
                path: self.path.clone(),
                source,
            })?;
        match self.framed.next().await {
            Some(Ok(response)) => Ok(response),
            Some(Err(source)) => Err(ControlClientError::Receive {
                path: self.path.clone(),
                source,
            }),
            None => Err(ControlClientError::Closed {
                path: self.path.clone(),
            }),
        }
    }

    /// Sends a `logs` request with `follow` set (whatever `request` says) and
    /// yields each chunk as it arrives. The stream ends when the runner
    /// closes the connection; an `error` response becomes
    /// [`ControlClientError::Refused`] and ends it, as does any read error.
    pub fn follow_logs(
        self,
        mut request: LogsRequest,
    ) -> impl Stream<Item = Result<LogsResponse, ControlClientError>> + Send + 'static {
        request.follow = true;
        self.follow(ControlRequest::Logs(request), |r| match r {
            ControlResponse::Logs(chunk) => Ok(chunk),
            other => Err(Box::new(other)),
        })
    }

    /// Sends an `events` request with `follow` set and yields each frame as
    /// it arrives; ends as [`Self::follow_logs`] does.
    pub fn follow_events(
        self,
        mut request: EventsRequest,
    ) -> impl Stream<Item = Result<EventsResponse, ControlClientError>> + Send + 'static {
        request.follow = true;
        self.follow(ControlRequest::Events(request), |r| match r {
            ControlResponse::Events(frame) => Ok(frame),
            other => Err(Box::new(other)),
        })
    }

    /// Sends `request`, then yields every frame `pick` accepts until the
    /// connection ends or a frame is refused by `pick`.
    fn follow<T: Send + 'static>(
        self,
        request: ControlRequest,
        pick: fn(ControlResponse) -> Result<T, Box<ControlResponse>>,
    ) -> impl Stream<Item = Result<T, ControlClientError>> + Send + 'static {
        futures::stream::unfold(Follow::Send(self, request), move |state| async move {
            let mut client = match state {
                Follow::Done => return None,
                Follow::Read(client) => client,
                Follow::Send(mut client, request) => {
                    if let Err(source) = client.framed.send(request).await {
                        let path = client.path;
                        let err = ControlClientError::Send { path, source };
                        return Some((Err(err), Follow::Done));
                    }
                    client
                }
            };
            let path = client.path.clone();
            let item = match client.framed.next().await?.map(pick) {
                Ok(Ok(frame)) => return Some((Ok(frame), Follow::Read(client))),
                Ok(Err(other)) => match *other {
                    ControlResponse::Error(e) => ControlClientError::Refused {
                        path,
                        code: e.code,
                        message: e.message,
                    },
                    other => ControlClientError::Unexpected {
                        path,
                        op: op_name(&other),
                    },
                },
                Err(source) => ControlClientError::Receive { path, source },
            };
            Some((Err(item), Follow::Done))
        })
    }
}

/// State of a follow stream.
enum Follow {
    Send(ControlClient, ControlRequest),
    Read(ControlClient),
    Done,
}

fn op_name(response: &ControlResponse) -> &'static str {
    match response {
        ControlResponse::HealthStatus(_) => "health_status",
        ControlResponse::ShutdownStatus(_) => "shutdown_status",
        ControlResponse::Logs(_) => "logs",
        ControlResponse::Events(_) => "events",
        ControlResponse::Metrics(_) => "metrics",
        ControlResponse::Error(_) => "error",
    }
}
