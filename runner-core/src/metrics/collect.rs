//! The scrape-time part of the metrics: per guest and per log stream, read
//! from the registered sessions and the kernel when a scrape asks.

use super::usage::{ProcessGroups, Usage, UsageRoots, container_usage};
use super::{SessionSource, Sessions, unix_ms_now};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use runner_types::{GuestState, GuestStatus, SandboxTier};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Encodes every registered session's guests and log streams.
#[derive(Debug)]
pub(crate) struct SessionsCollector {
    sessions: Arc<Sessions>,
    roots: UsageRoots,
}

impl SessionsCollector {
    pub(crate) fn new(sessions: Arc<Sessions>, roots: UsageRoots) -> Self {
        Self { sessions, roots }
    }
}

/// One guest, as scraped.
struct GuestRow {
    user: Arc<str>,
    tier: SandboxTier,
    status: GuestStatus,
    usage: Option<Usage>,
}

impl GuestRow {
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("user", &self.user),
            ("role", self.status.role.as_str()),
            ("tier", self.tier.as_str()),
        ]
    }

    /// The guest has a process or container now.
    fn is_live(&self) -> bool {
        matches!(
            self.status.state,
            GuestState::Running | GuestState::Stopping
        )
    }
}

/// One log stream, as scraped.
struct StreamRow {
    user: Arc<str>,
    role: &'static str,
    stream: &'static str,
    written: u64,
    dropped: u64,
}

impl StreamRow {
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("user", &self.user),
            ("role", self.role),
            ("stream", self.stream),
        ]
    }
}

impl Collector for SessionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let sessions = self.sessions.snapshot();
        let guests = guest_rows(&sessions, &self.roots);
        let streams = stream_rows(&sessions);
        let count = ConstGauge::new(sessions.len() as i64);
        count.encode(encoder.encode_descriptor(
            "runner_sessions",
            "Sessions this runner serves now.",
            None,
            MetricType::Gauge,
        )?)?;
        encode_states(&mut encoder, &guests)?;
        encode_guests(&mut encoder, &guests)?;
        encode_streams(&mut encoder, &streams)
    }
}

/// Restarts, uptime, CPU time and memory per guest.
fn encode_guests(encoder: &mut DescriptorEncoder, guests: &[GuestRow]) -> fmt::Result {
    let now = unix_ms_now();
    family(
        encoder,
        (
            "runner_guest_restarts",
            "Restarts of the guest in this session.",
        ),
        None,
        guests
            .iter()
            .map(|g| (g.labels(), ConstCounter::new(u64::from(g.status.restarts)))),
    )?;
    family(
        encoder,
        (
            "runner_guest_uptime",
            "Time since the guest's current launch (0 unless running).",
        ),
        Some(&Unit::Seconds),
        guests
            .iter()
            .map(|g| (g.labels(), ConstGauge::new(uptime(g, now)))),
    )?;
    let live = || guests.iter().filter_map(|g| Some((g, g.usage?)));
    family(
        encoder,
        (
            "runner_guest_cpu",
            "CPU time of the guest's current launch (process tier and micro_vm: its process group; container: its cgroup).",
        ),
        Some(&Unit::Seconds),
        live().map(|(g, u)| (g.labels(), ConstCounter::new(u.cpu_seconds))),
    )?;
    family(
        encoder,
        (
            "runner_guest_resident_memory",
            "Resident memory of the guest (sum over its process group, or its cgroup's rss + mapped files).",
        ),
        Some(&Unit::Bytes),
        live().map(|(g, u)| (g.labels(), ConstGauge::new(u.resident_bytes as i64))),
    )
}

/// Bytes written and dropped per log stream.
fn encode_streams(encoder: &mut DescriptorEncoder, streams: &[StreamRow]) -> fmt::Result {
    family(
        encoder,
        (
            "runner_log_written",
            "Guest output bytes written to the log.",
        ),
        Some(&Unit::Bytes),
        streams
            .iter()
            .map(|s| (s.labels(), ConstCounter::new(s.written))),
    )?;
    family(
        encoder,
        (
            "runner_log_dropped",
            "Guest output bytes lost instead of logged (recorded as gaps).",
        ),
        Some(&Unit::Bytes),
        streams
            .iter()
            .map(|s| (s.labels(), ConstCounter::new(s.dropped))),
    )
}

/// `runner_guest_state`: one series per state, 1 for the current one.
fn encode_states(encoder: &mut DescriptorEncoder, guests: &[GuestRow]) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(
        "runner_guest_state",
        "Lifecycle state of the guest: 1 for the current state, 0 for the others.",
        None,
        MetricType::Gauge,
    )?;
    for g in guests {
        let [user, role, tier] = g.labels();
        for state in GuestState::ALL {
            let labels = [user, role, tier, ("state", state.as_str())];
            let value = ConstGauge::new(i64::from(g.status.state == state));
            value.encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// Encodes one metric family (its type taken from the metric kind).
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (L, M)>,
) -> fmt::Result {
    let mut samples = samples.peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(()); // no sample: no family, as for an empty registry
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn uptime(g: &GuestRow, now_ms: u64) -> f64 {
    match (g.status.state, g.status.started_at_unix_ms) {
        (GuestState::Running, Some(at)) => now_ms.saturating_sub(at) as f64 / 1000.0,
        _ => 0.0,
    }
}

/// Every registered guest, with its usage where it has a process or
/// container now (one pass over `/proc` for all of them).
fn guest_rows(sessions: &[Arc<SessionSource>], roots: &UsageRoots) -> Vec<GuestRow> {
    let mut rows = Vec::with_capacity(sessions.len() * 2);
    for s in sessions {
        let user: Arc<str> = Arc::from(s.user.as_str());
        // Cloned out: the watch's lock is never held across a file read.
        let guests = s.health.borrow().guests.clone();
        rows.extend(guests.into_iter().map(|status| GuestRow {
            user: user.clone(),
            tier: s.tier,
            status,
            usage: None,
        }));
    }
    let groups: HashSet<u32> = rows
        .iter()
        .filter(|g| g.is_live() && g.tier != SandboxTier::Container)
        .filter_map(|g| g.status.pid)
        .collect();
    let table = ProcessGroups::scan(&roots.proc, &groups);
    for g in rows.iter_mut().filter(|g| g.is_live()) {
        g.usage = match (g.tier, g.status.pid, &g.status.container_id) {
            (SandboxTier::Container, _, Some(id)) => container_usage(&roots.cgroup, id),
            (SandboxTier::Container, _, None) => None,
            (_, Some(pid), _) => table.group(pid),
            (_, None, _) => None,
        };
    }
    rows
}

fn stream_rows(sessions: &[Arc<SessionSource>]) -> Vec<StreamRow> {
    let mut rows = Vec::with_capacity(sessions.len() * 4);
    for s in sessions {
        let user: Arc<str> = Arc::from(s.user.as_str());
        rows.extend(s.logs.iter().map(|sink| {
            let stats = sink.stats();
            StreamRow {
                user: user.clone(),
                role: sink.role().as_str(),
                stream: sink.stream().as_str(),
                written: stats.bytes_written,
                dropped: stats.bytes_dropped,
            }
        }));
    }
    rows
}
