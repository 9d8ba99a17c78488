//! Metrics of a runner and its sessions, in the OpenMetrics text format
//! (which Prometheus scrapes).
//!
//! [`RunnerMetrics`] is one per runner, shared by its sessions. Counters
//! that happen (control requests, session starts) are recorded as they
//! happen; everything else is read at scrape time from what each session
//! registered ([`SessionSource`]): its health snapshot (guest state,
//! restarts, uptime), its log sinks (bytes written and dropped), and the
//! kernel's accounting of each guest ([`usage`]). A registration ends when
//! its [`SessionRegistration`] is dropped.
//!
//! Metric families (labels in braces):
//! - `runner_sessions`: sessions registered now;
//! - `runner_guest_state{user,role,tier,state}`: 1 for the current state, 0
//!   for the others;
//! - `runner_guest_restarts_total{user,role,tier}`;
//! - `runner_guest_uptime_seconds{user,role,tier}`: since the current
//!   launch, 0 unless running;
//! - `runner_guest_cpu_seconds_total{user,role,tier}` and
//!   `runner_guest_resident_memory_bytes{user,role,tier}`: only for a guest
//!   that has a process or container now;
//! - `runner_log_written_bytes_total{user,role,stream}`,
//!   `runner_log_dropped_bytes_total{user,role,stream}`;
//! - `runner_control_requests_total{op,result}`;
//! - `runner_session_start_duration_seconds{tier}`: a histogram.

mod collect;
pub mod usage;

use crate::logs::LogSink;
use bytes::Bytes;
use collect::SessionsCollector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use runner_types::control::{ControlError, MetricsResponse};
use runner_types::frame::MAX_CONTROL_FRAME;
use runner_types::{ControlErrorCode, ControlRequest, ControlResponse, HealthStatus, SandboxTier};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
pub use usage::{Usage, UsageRoots};

type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// What a session exposes to the scrape.
#[derive(Debug, Clone)]
pub struct SessionSource {
    /// The session's user.
    pub user: String,
    /// Tier in effect.
    pub tier: SandboxTier,
    /// Its health, as republished on every change.
    pub health: watch::Receiver<HealthStatus>,
    /// Its log sinks, one per guest stream.
    pub logs: Vec<LogSink>,
}

/// The registered sessions, by registration number.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    // std Mutex: held only to insert, remove or clone the list, never
    // across a read of the kernel's files.
    by_id: Mutex<(u64, BTreeMap<u64, Arc<SessionSource>>)>,
}

impl Sessions {
    pub(crate) fn snapshot(&self) -> Vec<Arc<SessionSource>> {
        let guard = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        guard.1.values().cloned().collect()
    }
}

/// A runner's metrics. Cheap to clone; clones share the counters.
#[derive(Debug, Clone)]
pub struct RunnerMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    control: Family<Labels<2>, Counter>,
    start: HistogramFamily,
    sessions: Arc<Sessions>,
}

impl Default for RunnerMetrics {
    fn default() -> Self {
        Self::new(UsageRoots::default())
    }
}

/// Buckets of the start-duration histogram: 5 ms doubling to ~41 s.
fn start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl RunnerMetrics {
    /// Metrics reading guest usage below `roots`.
    pub fn new(roots: UsageRoots) -> Self {
        let mut registry = Registry::default();
        let control = Family::<Labels<2>, Counter>::default();
        registry.register(
            "runner_control_requests",
            "Control requests answered, by op and result",
            control.clone(),
        );
        let start = HistogramFamily::new_with_constructor(start_histogram);
        registry.register_with_unit(
            "runner_session_start_duration",
            "Time from a start request to a running session (both guests launched)",
            Unit::Seconds,
            start.clone(),
        );
        let sessions = Arc::new(Sessions::default());
        registry.register_collector(Box::new(SessionsCollector::new(sessions.clone(), roots)));
        Self {
            inner: Arc::new(Inner {
                registry,
                control,
                start,
                sessions,
            }),
        }
    }

    /// Registers a session until the returned guard is dropped.
    pub fn register(&self, source: SessionSource) -> SessionRegistration {
        let mut guard = self
            .inner
            .sessions
            .by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        guard.0 += 1;
        let id = guard.0;
        guard.1.insert(id, Arc::new(source));
        SessionRegistration {
            sessions: self.inner.sessions.clone(),
            id,
        }
    }

    /// Counts one control request (`op`, [`request_op`]) and how it ended.
    pub fn control_request(&self, op: &'static str, result: RequestResult) {
        self.control_counter(op, result).inc();
    }

    /// The counter [`Self::control_request`] increments for `op` and
    /// `result`, for a caller that counts the same pair again and again (a
    /// connection answering one op after another): incrementing a kept
    /// counter is one atomic add, without the family's lookup.
    pub fn control_counter(&self, op: &'static str, result: RequestResult) -> Counter {
        self.inner
            .control
            .get_or_create(&[("op", op), ("result", result.as_str())])
            .clone()
    }

    /// Records how long a successful session start took.
    pub fn session_started(&self, tier: SandboxTier, took: Duration) {
        self.inner
            .start
            .get_or_create(&[("tier", tier.as_str())])
            .observe(took.as_secs_f64());
    }

    /// The exposition, ending with `# EOF`. Reads the kernel's accounting
    /// files (`/proc`, cgroups): a few microseconds per guest, no disk.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing to a String cannot fail; a collector error would be a bug.
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// [`Self::render`] on the blocking pool, for async callers.
    pub async fn scrape(&self) -> String {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.render()).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "metrics scrape task failed");
                String::from("# EOF\n")
            }
        }
    }

    /// The answer to a `metrics` control request, serialised once: the
    /// exposition's JSON, or an `internal` error if it does not fit in
    /// one frame.
    pub async fn control_answer(&self) -> Result<Bytes, ControlResponse> {
        let answer = ControlResponse::Metrics(MetricsResponse {
            text: self.scrape().await,
        });
        let error = |message| {
            ControlResponse::Error(ControlError {
                code: ControlErrorCode::Internal,
                message,
            })
        };
        match serde_json::to_vec(&answer) {
            Ok(json) if json.len() <= MAX_CONTROL_FRAME => Ok(Bytes::from(json)),
            Ok(json) => Err(error(format!(
                "The metrics ({} bytes) exceed the {MAX_CONTROL_FRAME}-byte frame limit",
                json.len()
            ))),
            Err(e) => Err(error(format!("Cannot encode the metrics: {e}"))),
        }
    }
}

/// Keeps a session in its runner's metrics; dropping it removes the session.
#[derive(Debug)]
pub struct SessionRegistration {
    sessions: Arc<Sessions>,
    id: u64,
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        let mut guard = self
            .sessions
            .by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        guard.1.remove(&self.id);
    }
}

/// How a control request ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// Answered.
    Ok,
    /// Answered with an `error` of this code.
    Error(ControlErrorCode),
}

impl RequestResult {
    /// The result of answering with `response`.
    pub fn of(response: &ControlResponse) -> Self {
        match response {
            ControlResponse::Error(e) => Self::Error(e.code),
            _ => Self::Ok,
        }
    }

    /// `ok`, or the error code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error(ControlErrorCode::InvalidRequest) => "invalid_request",
            Self::Error(ControlErrorCode::UnknownUser) => "unknown_user",
            Self::Error(ControlErrorCode::Internal) => "internal",
            Self::Error(ControlErrorCode::Busy) => "busy",
        }
    }
}

/// The `op` label of a request that did not parse.
pub const OP_UNPARSED: &str = "unparsed";

/// The `op` label of a connection refused `busy` before any request was
/// read.
pub const OP_REFUSED: &str = "refused";

/// The `op` label of `request`: its wire name.
pub fn request_op(request: &ControlRequest) -> &'static str {
    match request {
        ControlRequest::HealthCheck => "health_check",
        ControlRequest::ShutdownUser { .. } => "shutdown_user",
        ControlRequest::Logs(_) => "logs",
        ControlRequest::Metrics(_) => "metrics",
        ControlRequest::Events(_) => "events",
    }
}

pub use crate::clock::unix_ms_now;

#[cfg(test)]
mod tests;
