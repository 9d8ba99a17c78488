//! Control protocol over `run/runner-control.sock`.
//!
//! Frames are [`crate::frame`]'s 4-byte big-endian length + JSON, at most
//! [`crate::frame::MAX_CONTROL_FRAME`] bytes. Requests and responses are
//! adjacently tagged: `{"op": "...", "payload": ...}`.

use crate::events::{EventsRequest, EventsResponse};
use crate::health::HealthStatus;
use crate::tier::{GuestRole, LogStream, SandboxTier};
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
    /// Read (or follow) the session's lifecycle events (this runner's
    /// addition).
    Events(EventsRequest),
    /// Report metrics in the OpenMetrics text format (this runner's
    /// addition; the payload is `{}`).
    Metrics(MetricsRequest),
}

/// Parameters of a `metrics` request: none yet (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsRequest {}

/// Parameters of a `logs` request. oxydra's client sends `role`, `stream`,
/// `tail`, `since` and `format`; `follow` is this runner's addition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// Which guest (default: the runtime guest, as in oxydra).
    #[serde(default)]
    pub role: RoleSelector,
    /// Which stream (default: both).
    #[serde(default)]
    pub stream: StreamSelector,
    /// Last N lines per selected file (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Only lines written at or after this time: an RFC 3339 timestamp
    /// (`2026-11-30T07:40:00Z`, any offset) or a look-back duration
    /// (`30s`, `15m`, `1h`, `2d`, or a sum such as `1h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How the client wants the answer shown (`text` or `json`), or
    /// `base64` to receive each line's exact bytes as well.
    #[serde(default)]
    pub format: LogFormat,
    /// Keep the connection open and send new lines as further `logs` frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// Resume exactly after this position: a previous answer's `cursor`.
    /// The answer then holds the oldest complete lines after it (at most
    /// `tail`), not the newest; `since` is ignored. This runner's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Guest selector for `logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSelector {
    /// Runtime guest only.
    #[default]
    Runtime,
    /// Sidecar guest only.
    Sidecar,
    /// Both guests.
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

/// `format` of a `logs` request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Plain text (the client prints messages). Invalid UTF-8 becomes U+FFFD
    /// in `message`.
    #[default]
    Text,
    /// The client prints entries as JSON; the answer is the same as for
    /// `text`.
    Json,
    /// Each entry also carries `data_base64`, the line's exact bytes
    /// (this runner's addition; oxydra's client never asks for it).
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
    Logs(LogsResponse),
    /// Answer to `events` (one frame, or a stream of them with `follow`).
    Events(EventsResponse),
    /// Answer to `metrics`.
    Metrics(MetricsResponse),
    /// The request failed.
    Error(ControlError),
}

/// Answer to `shutdown_user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownStatus {
    /// The session's user.
    pub user_id: String,
    /// Shutdown was accepted and is under way (or already done).
    pub shutdown: bool,
    /// The session was already stopping or stopped when asked.
    pub already_stopped: bool,
    /// Detail, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer to `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResponse {
    /// The exposition, in the OpenMetrics text format (content type
    /// [`OPENMETRICS_CONTENT_TYPE`]), ending with `# EOF`.
    pub text: String,
}

/// Content type of [`MetricsResponse::text`] (and of `/metrics` over HTTP).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answer to `logs`: one frame, or a stream of them with `follow`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsResponse {
    /// Lines, oldest first within each (role, stream).
    pub entries: Vec<LogEntry>,
    /// Some lines were left out (frame cap, or a follower fell behind).
    pub truncated: bool,
    /// Problems that did not fail the request (for example one log file
    /// that could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Where these entries end in every selected stream, across rotation:
    /// pass it as `after` to continue with no gap and no repeat. Opaque.
    /// Absent on a follow frame once the follower fell behind (`truncated`).
    /// This runner's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Bytes after the request's `after` that were rotated away before
    /// they could be read (the answer resumes at the oldest byte kept);
    /// a warning names the stream, and says so too when the amount is
    /// unknown (a cursor from an earlier run). This runner's addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<u64>,
}

/// One log line (without its trailing newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the line was captured (RFC 3339, UTC), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// How the runner captured the line.
    pub source: LogSource,
    /// Which guest, as its label: `oxydra-vm` or `shell-vm`.
    #[serde(with = "role_label")]
    pub role: GuestRole,
    /// Which stream.
    pub stream: LogStream,
    /// The line as text; invalid UTF-8 becomes U+FFFD.
    pub message: String,
    /// The line's exact bytes, standard base64; only when the request's
    /// `format` was `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// How a log line reached the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The guest's process output (process tier, or a microVM's console),
    /// written to the log file by the runner.
    ProcessFile,
    /// The container's output streamed from the Docker engine's API.
    DockerApi,
}

impl LogSource {
    /// The source of every line of a guest at `tier`.
    pub fn for_tier(tier: SandboxTier) -> Self {
        match tier {
            SandboxTier::Container => Self::DockerApi,
            SandboxTier::Process | SandboxTier::MicroVm => Self::ProcessFile,
        }
    }
}

/// Serde for a [`GuestRole`] written as its label (`oxydra-vm`, `shell-vm`).
mod role_label {
    use crate::tier::GuestRole;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(role: &GuestRole, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.label())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GuestRole, D::Error> {
        let label = String::deserialize(d)?;
        GuestRole::from_label(&label)
            .ok_or_else(|| serde::de::Error::unknown_variant(&label, &["oxydra-vm", "shell-vm"]))
    }
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
    /// Every control connection slot is taken; try again shortly. Sent
    /// once, then the connection is closed (this runner's addition).
    Busy,
}
