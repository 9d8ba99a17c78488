//! The exposition parses with a Prometheus text parser and carries what
//! the sessions registered.

use super::*;
use crate::config::LogLimits;
use runner_types::{GuestRole, GuestState, GuestStatus, LogStream, StartupStatus};

/// Parses `text` with a Prometheus text-format parser.
pub(crate) fn parse(text: &str) -> prometheus_parse::Scrape {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the exposition parses")
}

/// The value of the sample `name` whose labels include all of `labels`.
pub(crate) fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected value {other:?}"),
    }
}

fn health(user: &str, guests: Vec<GuestStatus>) -> HealthStatus {
    let startup = StartupStatus {
        sandbox_tier: SandboxTier::Process,
        sidecar_available: false,
        shell_available: false,
        browser_available: false,
        degraded_reasons: vec![],
    };
    crate::health::health_report(&crate::health::HealthInputs {
        user_id: user,
        tier: SandboxTier::Process,
        startup: &startup,
        phase: &crate::health::SessionPhase::Running,
        log_dir: "/nowhere",
        guests: &guests,
        sidecar_linked: true,
        log_bytes_dropped: &[],
        degraded: &[],
    })
}

#[test]
fn empty_runner_parses() {
    let metrics = RunnerMetrics::default();
    let scrape = parse(&metrics.render());
    assert_eq!(value(&scrape, "runner_sessions", &[]), 0.0);
}

#[tokio::test]
async fn a_registered_session_is_scraped_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let sink = LogSink::open(
        &logs,
        GuestRole::Runtime,
        LogStream::Stdout,
        LogLimits::default(),
    )
    .unwrap();
    // The "guest" is this test's own process group: it is running and
    // has used CPU and memory.
    let mut runtime = GuestStatus::starting(GuestRole::Runtime);
    runtime.state = GuestState::Running;
    runtime.pid = Some(nix::unistd::getpgrp().as_raw() as u32);
    runtime.restarts = 2;
    runtime.started_at_unix_ms = Some(crate::clock::unix_ms_now() - 5_000);
    let sidecar = GuestStatus::starting(GuestRole::Sidecar);
    let (_tx, rx) = watch::channel(health("alice", vec![sidecar, runtime]));
    let metrics = RunnerMetrics::default();
    let registration = metrics.register(SessionSource {
        user: "alice".into(),
        tier: SandboxTier::Process,
        health: rx,
        logs: vec![sink],
    });
    metrics.control_request("health_check", RequestResult::Ok);
    metrics.control_request("health_check", RequestResult::Ok);
    metrics.control_request(
        OP_UNPARSED,
        RequestResult::Error(ControlErrorCode::InvalidRequest),
    );
    metrics.session_started(SandboxTier::Process, Duration::from_millis(30));

    let scrape = parse(&metrics.render());
    let rt = [("user", "alice"), ("role", "runtime"), ("tier", "process")];
    assert_eq!(value(&scrape, "runner_sessions", &[]), 1.0);
    assert_eq!(value(&scrape, "runner_guest_restarts_total", &rt), 2.0);
    assert!(value(&scrape, "runner_guest_uptime_seconds", &rt) >= 5.0);
    assert!(value(&scrape, "runner_guest_cpu_seconds_total", &rt) > 0.0);
    assert!(value(&scrape, "runner_guest_resident_memory_bytes", &rt) > 0.0);
    let running = [rt[0], rt[1], ("state", "running")];
    assert_eq!(value(&scrape, "runner_guest_state", &running), 1.0);
    let stopped = [rt[0], rt[1], ("state", "stopped")];
    assert_eq!(value(&scrape, "runner_guest_state", &stopped), 0.0);
    let starting = [("role", "sidecar"), ("state", "starting")];
    assert_eq!(value(&scrape, "runner_guest_state", &starting), 1.0);
    // A guest without a process now has no usage samples.
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "runner_guest_cpu_seconds_total"
                && s.labels.get("role") == Some("sidecar"))
    );
    let out = [("user", "alice"), ("role", "runtime"), ("stream", "stdout")];
    assert_eq!(value(&scrape, "runner_log_written_bytes_total", &out), 0.0);
    assert_eq!(value(&scrape, "runner_log_dropped_bytes_total", &out), 0.0);
    let ok = [("op", "health_check"), ("result", "ok")];
    assert_eq!(value(&scrape, "runner_control_requests_total", &ok), 2.0);
    let bad = [("op", "unparsed"), ("result", "invalid_request")];
    assert_eq!(value(&scrape, "runner_control_requests_total", &bad), 1.0);
    let count = [("tier", "process")];
    assert_eq!(
        value(
            &scrape,
            "runner_session_start_duration_seconds_count",
            &count
        ),
        1.0
    );

    drop(registration);
    let scrape = parse(&metrics.render());
    assert_eq!(value(&scrape, "runner_sessions", &[]), 0.0);
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("runner_guest"))
    );
}
