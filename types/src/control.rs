//! Control protocol over `run/runner-control.sock` (DESIGN §7).
//!
//! Frames are [`crate::frame`]'s 4-byte big-endian length + JSON, at most
//! [`crate::frame::MAX_CONTROL_FRAME`] bytes. Requests and responses are
//! adjacently tagged: `{"op": "...", "payload": ...}`.

use crate::health::HealthStatus;
use crate::tier::{GuestRole, LogStream};
use serde::{Deserialize, Serialize};

/// Most lines a single `logs` request may ask for.
pub const MAX_LOG_TAIL: u32 = 1000;

/// Default `tail` when a `logs` request names none.
pub const DEFAULT_LOG_TAIL: u32 = 100;

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "payload", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Report health.
    HealthCheck,
    /// Shut the session down (the daemon then exits).
    ShutdownUser {
        /// Must name the session's user.
        user_id: String,
    },
    /// Read guest logs.
    Logs(LogsRequest),
}

/// Parameters of a `logs` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// Which guest (default: both).
    #[serde(default)]
    pub role: RoleSelector,
    /// Which stream (default: both).
    #[serde(default)]
    pub stream: StreamSelector,
    /// Last N lines per selected file (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Only lines written at or after this time (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// How line bytes are carried (default `text`).
    #[serde(default)]
    pub format: LogFormat,
    /// Keep the connection open and send new lines as further `logs` frames.
    #[serde(default)]
    pub follow: bool,
}

/// Guest selector for `logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSelector {
    /// Runtime guest only.
    Runtime,
    /// Sidecar guest only.
    Sidecar,
    /// Both guests.
    #[default]
    All,
}

impl RoleSelector {
    /// Roles this selector names.
    pub fn roles(self) -> &'static [GuestRole] {
        match self {
            Self::Runtime => &[GuestRole::Runtime],
            Self::Sidecar => &[GuestRole::Sidecar],
            Self::All => &[GuestRole::Runtime, GuestRole::Sidecar],
        }
    }
}

/// Stream selector for `logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamSelector {
    /// Standard output only.
    Stdout,
    /// Standard error only.
    Stderr,
    /// Both streams.
    #[default]
    Both,
}

impl StreamSelector {
    /// Streams this selector names.
    pub fn streams(self) -> &'static [LogStream] {
        match self {
            Self::Stdout => &[LogStream::Stdout],
            Self::Stderr => &[LogStream::Stderr],
            Self::Both => &[LogStream::Stdout, LogStream::Stderr],
        }
    }
}

/// Encoding of log line bytes on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// UTF-8 text; invalid bytes become U+FFFD.
    #[default]
    Text,
    /// Standard base64 of the exact bytes.
    Base64,
}

/// What the runner answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "payload", rename_all = "snake_case")]
pub enum ControlResponse {
    /// Answer to `health_check`.
    HealthStatus(HealthStatus),
    /// Answer to `shutdown_user`.
    ShutdownStatus(ShutdownStatus),
    /// Answer to `logs` (one frame, or a stream of them with `follow`).
    Logs(LogsChunk),
    /// The request failed.
    Error(ControlError),
}

/// Answer to `shutdown_user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownStatus {
    /// The session's user.
    pub user_id: String,
    /// Shutdown was accepted and is under way.
    pub shutdown: bool,
    /// Detail, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A batch of log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsChunk {
    /// Lines, oldest first within each (role, stream).
    pub lines: Vec<LogLine>,
    /// Some lines were left out to keep the frame under the cap.
    #[serde(default)]
    pub truncated: bool,
}

/// One log line (without its trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Which guest.
    pub role: GuestRole,
    /// Which stream.
    pub stream: LogStream,
    /// The line, encoded as the request's `format` says.
    pub data: String,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    /// Machine-readable class.
    pub code: ControlErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Error classes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorCode {
    /// Malformed, oversized or unknown request.
    InvalidRequest,
    /// The request named a user this runner does not serve.
    UnknownUser,
    /// The runner failed while answering.
    Internal,
}
