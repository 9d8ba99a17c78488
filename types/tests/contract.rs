//! Pins the JSON shapes of the control protocol and the bootstrap envelope,
//! so that a renamed field or variant cannot slip through:
//! oxydra's guests and control clients depend on these exact spellings.
//!
//! Each test compares against a literal `serde_json::json!` value in both
//! directions: serialising gives exactly the literal, and the literal parses
//! back to the same Rust value.

use runner_types::control::{
    ControlError, LogEntry, LogFormat, LogSource, LogsRequest, LogsResponse, MetricsRequest,
    MetricsResponse, RoleSelector, ShutdownStatus, StreamSelector,
};
use runner_types::{
    BootstrapEnvelope, ControlErrorCode, ControlRequest, ControlResponse, DegradedReason,
    ExitStatus, GuestExit, GuestRole, GuestState, GuestStatus, HealthStatus, LogStream,
    ResolvedMounts, ResourceLimits, RuntimePolicy, SandboxTier, SidecarEndpoint, SidecarTransport,
    StartupStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// `value` serialises to exactly `expected`, and `expected` parses to `value`.
fn pinned<T>(value: &T, expected: Value)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    assert_eq!(serde_json::to_value(value).unwrap(), expected);
    let back: T = serde_json::from_value(expected).unwrap();
    assert_eq!(&back, value);
}

fn startup_status() -> StartupStatus {
    StartupStatus {
        sandbox_tier: SandboxTier::Process,
        sidecar_available: false,
        shell_available: false,
        browser_available: false,
        degraded_reasons: vec![
            DegradedReason {
                code: "insecure_process_tier".into(),
                detail: "forced with --insecure".into(),
            },
            DegradedReason {
                code: "sidecar_unavailable".into(),
                detail: "no sidecar configured".into(),
            },
        ],
    }
}

fn startup_status_json() -> Value {
    json!({
        "sandbox_tier": "process",
        "sidecar_available": false,
        "shell_available": false,
        "browser_available": false,
        "degraded_reasons": [
            {"code": "insecure_process_tier", "detail": "forced with --insecure"},
            {"code": "sidecar_unavailable", "detail": "no sidecar configured"}
        ]
    })
}

#[test]
fn health_check_request_is_bare_op() {
    // Exactly this text: oxydra clients send it byte for byte.
    assert_eq!(
        serde_json::to_string(&ControlRequest::HealthCheck).unwrap(),
        r#"{"op":"health_check"}"#
    );
    let parsed: ControlRequest = serde_json::from_str(r#"{"op":"health_check"}"#).unwrap();
    assert_eq!(parsed, ControlRequest::HealthCheck);
}

#[test]
fn shutdown_user_request() {
    pinned(
        &ControlRequest::ShutdownUser {
            user_id: "alice".into(),
        },
        json!({"op": "shutdown_user", "payload": {"user_id": "alice"}}),
    );
}

#[test]
fn logs_request_with_all_fields() {
    pinned(
        &ControlRequest::Logs(LogsRequest {
            role: RoleSelector::Sidecar,
            stream: StreamSelector::Stderr,
            tail: Some(50),
            since: Some("15m".into()),
            format: LogFormat::Base64,
            follow: true,
            after: None,
        }),
        json!({"op": "logs", "payload": {
            "role": "sidecar",
            "stream": "stderr",
            "tail": 50,
            "since": "15m",
            "format": "base64",
            "follow": true
        }}),
    );
}

/// Requests exactly as oxydra's `runner logs` sends them decode in ours.
#[test]
fn oxydra_logs_requests_decode() {
    for (since, format) in [
        ("15m", "text"),
        ("1h", "json"),
        ("30s", "text"),
        ("2026-11-30T07:40:00Z", "json"),
        ("2026-11-30T08:40:00.5+01:00", "text"),
    ] {
        let wire = json!({"op": "logs", "payload": {
            "role": "all", "stream": "both", "tail": 200, "since": since, "format": format
        }});
        let ControlRequest::Logs(req) = serde_json::from_value(wire).unwrap() else {
            panic!("not a logs request");
        };
        assert_eq!(req.since.as_deref(), Some(since));
        assert_eq!(
            (req.role, req.stream, req.tail),
            (RoleSelector::All, StreamSelector::Both, Some(200))
        );
        assert!(!req.follow);
        let want = if format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        assert_eq!(req.format, want);
    }
    // oxydra may send absent options as null.
    let wire = json!({"op": "logs", "payload": {"role": "runtime", "tail": null, "since": null}});
    let parsed: ControlRequest = serde_json::from_value(wire).unwrap();
    assert_eq!(parsed, ControlRequest::Logs(LogsRequest::default()));
}

#[test]
fn logs_request_defaults_and_selector_spellings() {
    let parsed: ControlRequest =
        serde_json::from_value(json!({"op": "logs", "payload": {}})).unwrap();
    assert_eq!(parsed, ControlRequest::Logs(LogsRequest::default()));
    let d = LogsRequest::default();
    assert_eq!(
        (
            d.role,
            d.stream,
            d.tail,
            d.since.clone(),
            d.format,
            d.follow
        ),
        (
            RoleSelector::Runtime,
            StreamSelector::Both,
            None,
            None,
            LogFormat::Text,
            false
        )
    );
    // Optional fields are omitted when unset, `follow` when false.
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!({"role": "runtime", "stream": "both", "format": "text"})
    );
    for (sel, s) in [
        (RoleSelector::Runtime, "runtime"),
        (RoleSelector::Sidecar, "sidecar"),
        (RoleSelector::All, "all"),
    ] {
        assert_eq!(serde_json::to_value(sel).unwrap(), json!(s));
    }
    for (sel, s) in [
        (StreamSelector::Stdout, "stdout"),
        (StreamSelector::Stderr, "stderr"),
        (StreamSelector::Both, "both"),
    ] {
        assert_eq!(serde_json::to_value(sel).unwrap(), json!(s));
    }
    for (f, s) in [
        (LogFormat::Text, "text"),
        (LogFormat::Json, "json"),
        (LogFormat::Base64, "base64"),
    ] {
        assert_eq!(serde_json::to_value(f).unwrap(), json!(s));
    }
    // Unknown fields, and `since` as a number, are refused.
    for bad in [
        json!({"op": "logs", "payload": {"rolle": "runtime"}}),
        json!({"op": "logs", "payload": {"since": 1_700_000_000_000u64}}),
    ] {
        assert!(serde_json::from_value::<ControlRequest>(bad).is_err());
    }
}

#[test]
fn metrics_request_and_response() {
    assert_eq!(
        serde_json::to_string(&ControlRequest::Metrics(MetricsRequest {})).unwrap(),
        r#"{"op":"metrics","payload":{}}"#
    );
    pinned(
        &ControlRequest::Metrics(MetricsRequest {}),
        json!({"op": "metrics", "payload": {}}),
    );
    assert!(
        serde_json::from_value::<ControlRequest>(json!({"op": "metrics", "payload": {"x": 1}}))
            .is_err()
    );
    pinned(
        &ControlResponse::Metrics(MetricsResponse {
            text: "# EOF\n".into(),
        }),
        json!({"op": "metrics", "payload": {"text": "# EOF\n"}}),
    );
}

#[test]
fn unknown_op_is_refused() {
    assert!(serde_json::from_value::<ControlRequest>(json!({"op": "reboot"})).is_err());
    assert!(serde_json::from_value::<ControlRequest>(json!({"payload": {}})).is_err());
}

#[test]
fn full_health_status_response() {
    let health = HealthStatus {
        user_id: "alice".into(),
        healthy: false,
        sandbox_tier: SandboxTier::Process,
        startup_status: startup_status(),
        shell_available: false,
        browser_available: false,
        shutdown: true,
        message: Some("runtime exited".into()),
        log_dir: Some("/ws/alice/logs".into()),
        runtime_pid: Some(4242),
        runtime_container_name: Some("oxydra-alice-runtime".into()),
        guests: vec![
            GuestStatus {
                role: GuestRole::Sidecar,
                state: GuestState::Running,
                pid: Some(4241),
                container_name: Some("oxydra-alice-sidecar".into()),
                container_id: Some("abc123".into()),
                last_exit: None,
                restarts: 0,
                ready: Some(true),
                started_at_unix_ms: Some(1_700_000_000_000),
                log_bytes_dropped: Default::default(),
            },
            GuestStatus {
                role: GuestRole::Runtime,
                state: GuestState::BackingOff,
                pid: None,
                container_name: None,
                container_id: None,
                last_exit: Some(GuestExit {
                    status: ExitStatus::Signal(9),
                    at_unix_ms: 1_700_000_000_123,
                    oom_killed: true,
                    engine_lost: false,
                }),
                restarts: 2,
                ready: None,
                started_at_unix_ms: None,
                log_bytes_dropped: BTreeMap::from([(LogStream::Stdout, 2_700_000)]),
            },
        ],
    };
    pinned(
        &ControlResponse::HealthStatus(health),
        json!({"op": "health_status", "payload": {
            "user_id": "alice",
            "healthy": false,
            "sandbox_tier": "process",
            "startup_status": startup_status_json(),
            "shell_available": false,
            "browser_available": false,
            "shutdown": true,
            "message": "runtime exited",
            "log_dir": "/ws/alice/logs",
            "runtime_pid": 4242,
            "runtime_container_name": "oxydra-alice-runtime",
            "guests": [
                {
                    "role": "sidecar",
                    "state": "running",
                    "pid": 4241,
                    "container_name": "oxydra-alice-sidecar",
                    "container_id": "abc123",
                    "restarts": 0,
                    "ready": true,
                    "started_at_unix_ms": 1_700_000_000_000u64
                },
                {
                    "role": "runtime",
                    "state": "backing_off",
                    "last_exit": {
                        "status": {"signal": 9},
                        "at_unix_ms": 1_700_000_000_123u64,
                        "oom_killed": true
                    },
                    "restarts": 2,
                    "log_bytes_dropped": {"stdout": 2_700_000}
                }
            ]
        }}),
    );
}

#[test]
fn minimal_health_status_omits_optional_fields() {
    let health = HealthStatus {
        user_id: "bob".into(),
        healthy: true,
        sandbox_tier: SandboxTier::MicroVm,
        startup_status: StartupStatus {
            sandbox_tier: SandboxTier::MicroVm,
            sidecar_available: true,
            shell_available: true,
            browser_available: false,
            degraded_reasons: vec![],
        },
        shell_available: true,
        browser_available: false,
        shutdown: false,
        message: None,
        log_dir: None,
        runtime_pid: None,
        runtime_container_name: None,
        guests: vec![],
    };
    pinned(
        &ControlResponse::HealthStatus(health),
        json!({"op": "health_status", "payload": {
            "user_id": "bob",
            "healthy": true,
            "sandbox_tier": "micro_vm",
            "startup_status": {
                "sandbox_tier": "micro_vm",
                "sidecar_available": true,
                "shell_available": true,
                "browser_available": false
            },
            "shell_available": true,
            "browser_available": false,
            "shutdown": false,
            "guests": []
        }}),
    );
    // An oxydra health payload without `guests` still parses.
    let oxydra = json!({
        "user_id": "bob", "healthy": true, "sandbox_tier": "container",
        "startup_status": {"sandbox_tier": "container", "sidecar_available": false,
            "shell_available": false, "browser_available": false},
        "shell_available": false, "browser_available": false, "shutdown": false
    });
    let parsed: HealthStatus = serde_json::from_value(oxydra).unwrap();
    assert!(parsed.guests.is_empty());
}

#[test]
fn guest_state_and_exit_spellings() {
    for (state, s) in [
        (GuestState::Starting, "starting"),
        (GuestState::Running, "running"),
        (GuestState::BackingOff, "backing_off"),
        (GuestState::Exited, "exited"),
        (GuestState::Failed, "failed"),
        (GuestState::Stopping, "stopping"),
        (GuestState::Stopped, "stopped"),
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), json!(s));
    }
    pinned(&ExitStatus::Code(3), json!({"code": 3}));
    pinned(&ExitStatus::Signal(15), json!({"signal": 15}));
}

#[test]
fn shutdown_status_response() {
    pinned(
        &ControlResponse::ShutdownStatus(ShutdownStatus {
            user_id: "alice".into(),
            shutdown: true,
            already_stopped: true,
            message: Some("stopping".into()),
        }),
        json!({"op": "shutdown_status", "payload": {
            "user_id": "alice", "shutdown": true, "already_stopped": true, "message": "stopping"
        }}),
    );
    pinned(
        &ControlResponse::ShutdownStatus(ShutdownStatus {
            user_id: "alice".into(),
            shutdown: true,
            already_stopped: false,
            message: None,
        }),
        json!({"op": "shutdown_status", "payload": {
            "user_id": "alice", "shutdown": true, "already_stopped": false
        }}),
    );
}

fn entry(role: GuestRole, stream: LogStream, message: &str) -> LogEntry {
    LogEntry {
        timestamp: None,
        source: LogSource::ProcessFile,
        role,
        stream,
        message: message.into(),
        data_base64: None,
    }
}

#[test]
fn logs_response() {
    pinned(
        &ControlResponse::Logs(LogsResponse {
            entries: vec![
                LogEntry {
                    timestamp: Some("2026-11-30T07:40:00.25Z".into()),
                    ..entry(GuestRole::Runtime, LogStream::Stdout, "hello")
                },
                LogEntry {
                    source: LogSource::DockerApi,
                    data_base64: Some("/w==".into()),
                    ..entry(GuestRole::Sidecar, LogStream::Stderr, "\u{fffd}")
                },
            ],
            truncated: true,
            warnings: vec!["Cannot read shell-vm.stdout.log".into()],
            cursor: None,
            lost_bytes: None,
        }),
        json!({"op": "logs", "payload": {
            "entries": [
                {"timestamp": "2026-11-30T07:40:00.25Z", "source": "process_file",
                 "role": "oxydra-vm", "stream": "stdout", "message": "hello"},
                {"source": "docker_api", "role": "shell-vm", "stream": "stderr",
                 "message": "\u{fffd}", "data_base64": "/w=="}
            ],
            "truncated": true,
            "warnings": ["Cannot read shell-vm.stdout.log"]
        }}),
    );
    // No warnings: the field is omitted.
    pinned(
        &ControlResponse::Logs(LogsResponse::default()),
        json!({"op": "logs", "payload": {"entries": [], "truncated": false}}),
    );
    // Only the two labels are roles on this wire.
    let bad =
        json!({"source": "process_file", "role": "runtime", "stream": "stdout", "message": ""});
    assert!(serde_json::from_value::<LogEntry>(bad).is_err());
}

/// oxydra's client-side view of our answers: every field it requires, with
/// its names and types. What we send must decode into these.
mod oxydra_client {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(tag = "op", content = "payload", rename_all = "snake_case")]
    pub enum Response {
        ShutdownStatus(ShutdownStatus),
        Logs(Logs),
    }

    #[derive(Debug, Deserialize)]
    pub struct ShutdownStatus {
        pub user_id: String,
        pub shutdown: bool,
        pub already_stopped: bool,
        pub message: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Logs {
        pub entries: Vec<Entry>,
        pub truncated: bool,
        pub warnings: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Entry {
        pub timestamp: Option<String>,
        pub source: Source,
        pub role: Role,
        pub stream: Stream,
        pub message: String,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Source {
        ProcessFile,
        DockerApi,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    pub enum Role {
        #[serde(rename = "oxydra-vm")]
        OxydraVm,
        #[serde(rename = "shell-vm")]
        ShellVm,
    }

    #[derive(Debug, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Stream {
        Stdout,
        Stderr,
    }
}

#[test]
fn what_we_send_decodes_in_oxydras_client() {
    let stop = ControlResponse::ShutdownStatus(ShutdownStatus {
        user_id: "alice".into(),
        shutdown: true,
        already_stopped: false,
        message: None,
    });
    let text = serde_json::to_string(&stop).unwrap();
    let oxydra_client::Response::ShutdownStatus(s) = serde_json::from_str(&text).unwrap() else {
        panic!("{text}");
    };
    assert!(s.shutdown && !s.already_stopped && s.user_id == "alice" && s.message.is_none());

    let logs = ControlResponse::Logs(LogsResponse {
        entries: vec![
            entry(GuestRole::Runtime, LogStream::Stdout, "a"),
            LogEntry {
                source: LogSource::DockerApi,
                timestamp: Some("2026-11-30T07:40:00Z".into()),
                data_base64: Some("Yg==".into()),
                ..entry(GuestRole::Sidecar, LogStream::Stderr, "b")
            },
        ],
        truncated: false,
        warnings: vec![],
        // Every answer carries a cursor; oxydra's client ignores it.
        cursor: Some("oxydra-vm.stdout:7:90".into()),
        lost_bytes: None,
    });
    let text = serde_json::to_string(&logs).unwrap();
    let oxydra_client::Response::Logs(l) = serde_json::from_str(&text).unwrap() else {
        panic!("{text}");
    };
    assert!(!l.truncated && l.warnings.is_none());
    use oxydra_client::{Role, Source, Stream};
    let got: Vec<_> = l
        .entries
        .iter()
        .map(|e| {
            (
                &e.source,
                &e.role,
                &e.stream,
                e.message.as_str(),
                e.timestamp.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                &Source::ProcessFile,
                &Role::OxydraVm,
                &Stream::Stdout,
                "a",
                None
            ),
            (
                &Source::DockerApi,
                &Role::ShellVm,
                &Stream::Stderr,
                "b",
                Some("2026-11-30T07:40:00Z")
            ),
        ]
    );
}

#[test]
fn error_response_with_each_code() {
    for (code, s) in [
        (ControlErrorCode::InvalidRequest, "invalid_request"),
        (ControlErrorCode::UnknownUser, "unknown_user"),
        (ControlErrorCode::Internal, "internal"),
        (ControlErrorCode::Busy, "busy"),
    ] {
        pinned(
            &ControlResponse::Error(ControlError {
                code,
                message: "why".into(),
            }),
            json!({"op": "error", "payload": {"code": s, "message": "why"}}),
        );
    }
}

fn full_envelope() -> BootstrapEnvelope {
    BootstrapEnvelope {
        user_id: "alice".into(),
        sandbox_tier: SandboxTier::MicroVm,
        workspace_root: "/var/lib/runner/ws/alice".into(),
        sidecar_endpoint: Some(SidecarEndpoint {
            transport: SidecarTransport::Vsock,
            address: "3:5000".into(),
        }),
        runtime_policy: Some(RuntimePolicy {
            mounts: ResolvedMounts {
                shared: "/var/lib/runner/ws/alice/shared".into(),
                tmp: "/var/lib/runner/ws/alice/tmp".into(),
                vault: "/var/lib/runner/ws/alice/vault".into(),
            },
            resources: ResourceLimits {
                max_vcpus: Some(2),
                max_memory_mib: Some(1024),
                max_processes: Some(256),
            },
            credential_refs: BTreeMap::from([("openai".into(), "vault:openai".into())]),
        }),
        startup_status: Some(startup_status()),
    }
}

#[test]
fn full_envelope_shape() {
    let env = full_envelope();
    pinned(
        &env,
        json!({
            "user_id": "alice",
            "sandbox_tier": "micro_vm",
            "workspace_root": "/var/lib/runner/ws/alice",
            "sidecar_endpoint": {"transport": "vsock", "address": "3:5000"},
            "runtime_policy": {
                "mounts": {
                    "shared": "/var/lib/runner/ws/alice/shared",
                    "tmp": "/var/lib/runner/ws/alice/tmp",
                    "vault": "/var/lib/runner/ws/alice/vault"
                },
                "resources": {"max_vcpus": 2, "max_memory_mib": 1024, "max_processes": 256},
                "credential_refs": {"openai": "vault:openai"}
            },
            "startup_status": startup_status_json()
        }),
    );
    // The validated JSON helpers produce the same shape.
    let bytes = env.to_json().unwrap();
    assert_eq!(BootstrapEnvelope::from_json(&bytes).unwrap(), env);
}

#[test]
fn unix_sidecar_transport_spelling() {
    pinned(
        &SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: "/ws/alice/ipc/shell-daemon.sock".into(),
        },
        json!({"transport": "unix", "address": "/ws/alice/ipc/shell-daemon.sock"}),
    );
}

#[test]
fn minimal_envelope_omits_optional_fields() {
    let env = BootstrapEnvelope {
        user_id: "alice".into(),
        sandbox_tier: SandboxTier::Container,
        workspace_root: "/ws/alice".into(),
        sidecar_endpoint: None,
        runtime_policy: None,
        startup_status: None,
    };
    pinned(
        &env,
        json!({"user_id": "alice", "sandbox_tier": "container", "workspace_root": "/ws/alice"}),
    );
    // Empty limits and credential maps are omitted inside a policy too.
    let policy = RuntimePolicy {
        mounts: ResolvedMounts {
            shared: "/s".into(),
            tmp: "/t".into(),
            vault: "/v".into(),
        },
        resources: ResourceLimits::default(),
        credential_refs: BTreeMap::new(),
    };
    pinned(
        &policy,
        json!({"mounts": {"shared": "/s", "tmp": "/t", "vault": "/v"}, "resources": {}}),
    );
    // ... and an oxydra policy without `resources` parses.
    let parsed: RuntimePolicy =
        serde_json::from_value(json!({"mounts": {"shared": "/s", "tmp": "/t", "vault": "/v"}}))
            .unwrap();
    assert_eq!(parsed, policy);
}

#[test]
fn tier_spellings() {
    for (tier, s) in [
        (SandboxTier::Process, "process"),
        (SandboxTier::Container, "container"),
        (SandboxTier::MicroVm, "micro_vm"),
    ] {
        pinned(&tier, json!(s));
        assert_eq!(tier.as_str(), s);
    }
}

#[test]
fn events_request_shapes() {
    use runner_types::events::EventsRequest;
    pinned(
        &ControlRequest::Events(EventsRequest {
            follow: true,
            after: Some(41),
        }),
        json!({"op": "events", "payload": {"follow": true, "after": 41}}),
    );
    pinned(
        &ControlRequest::Events(EventsRequest::default()),
        json!({"op": "events", "payload": {}}),
    );
    let junk = json!({"op": "events", "payload": {"after": 1, "since": "1h"}});
    assert!(serde_json::from_value::<ControlRequest>(junk).is_err());
}

#[test]
fn events_response_with_gap_and_every_kind() {
    use runner_types::events::{EventGap, EventKind, EventRecord, EventsResponse};
    let at = "2026-11-30T10:00:00.000Z";
    let record = |seq, role, kind| EventRecord {
        seq,
        timestamp: at.into(),
        role,
        kind,
    };
    let exit = GuestExit {
        status: ExitStatus::Code(3),
        at_unix_ms: 5,
        oom_killed: false,
        engine_lost: false,
    };
    let rt = Some(GuestRole::Runtime);
    let events = vec![
        record(10, None, EventKind::SessionStarted),
        record(
            11,
            rt,
            EventKind::GuestStarted {
                pid: Some(42),
                container_name: None,
                restarts: 0,
            },
        ),
        record(12, rt, EventKind::GuestExited { exit }),
        record(
            13,
            rt,
            EventKind::GuestRestarting {
                attempt: 1,
                backoff_ms: 100,
            },
        ),
        record(
            14,
            Some(GuestRole::Runtime),
            EventKind::SessionFailed {
                reason: "runtime guest: too many restarts".into(),
                code: Some("restart_limit".into()),
            },
        ),
        record(
            15,
            Some(GuestRole::Sidecar),
            EventKind::Degraded {
                code: "engine_unreachable".into(),
                detail: "no answer".into(),
            },
        ),
        record(
            16,
            Some(GuestRole::Sidecar),
            EventKind::Recovered {
                code: "engine_unreachable".into(),
            },
        ),
        record(
            17,
            rt,
            EventKind::LogBytesDropped {
                stream: LogStream::Stderr,
                total: 9,
            },
        ),
        record(18, None, EventKind::Stopping),
        record(19, None, EventKind::Stopped),
    ];
    let resp = ControlResponse::Events(EventsResponse {
        gap: Some(EventGap {
            after: 3,
            resumed_at: 10,
            missed: Some(6),
        }),
        events,
        cursor: 19,
        truncated: false,
    });
    let t = at;
    pinned(
        &resp,
        json!({"op": "events", "payload": {
            "gap": {"after": 3, "resumed_at": 10, "missed": 6},
            "events": [
                {"seq": 10, "timestamp": t, "event": "session_started"},
                {"seq": 11, "timestamp": t, "role": "runtime", "event": "guest_started", "pid": 42, "restarts": 0},
                {"seq": 12, "timestamp": t, "role": "runtime", "event": "guest_exited",
                 "exit": {"status": {"code": 3}, "at_unix_ms": 5, "oom_killed": false}},
                {"seq": 13, "timestamp": t, "role": "runtime", "event": "guest_restarting", "attempt": 1, "backoff_ms": 100},
                {"seq": 14, "timestamp": t, "role": "runtime", "event": "session_failed", "reason": "runtime guest: too many restarts", "code": "restart_limit"},
                {"seq": 15, "timestamp": t, "role": "sidecar", "event": "degraded", "code": "engine_unreachable", "detail": "no answer"},
                {"seq": 16, "timestamp": t, "role": "sidecar", "event": "recovered", "code": "engine_unreachable"},
                {"seq": 17, "timestamp": t, "role": "runtime", "event": "log_bytes_dropped", "stream": "stderr", "total": 9},
                {"seq": 18, "timestamp": t, "event": "stopping"},
                {"seq": 19, "timestamp": t, "event": "stopped"}
            ],
            "cursor": 19
        }}),
    );
    // A gap whose count is unknown (a cursor from another session), and a
    // one-shot answer with more to come.
    pinned(
        &ControlResponse::Events(EventsResponse {
            gap: Some(EventGap {
                after: 99,
                resumed_at: 10,
                missed: None,
            }),
            events: Vec::new(),
            cursor: 9,
            truncated: true,
        }),
        json!({"op": "events", "payload": {
            "gap": {"after": 99, "resumed_at": 10},
            "events": [],
            "cursor": 9,
            "truncated": true
        }}),
    );
}

#[test]
fn logs_cursor_fields() {
    pinned(
        &ControlRequest::Logs(LogsRequest {
            after: Some("oxydra-vm.stdout:7:42".into()),
            ..LogsRequest::default()
        }),
        json!({"op": "logs", "payload": {
            "role": "runtime", "stream": "both", "format": "text",
            "after": "oxydra-vm.stdout:7:42"
        }}),
    );
    pinned(
        &ControlResponse::Logs(LogsResponse {
            entries: vec![],
            truncated: false,
            warnings: vec!["oxydra-vm.stdout: 9 bytes after the cursor were rotated away".into()],
            cursor: Some("oxydra-vm.stdout:7:90".into()),
            lost_bytes: Some(9),
        }),
        json!({"op": "logs", "payload": {
            "entries": [],
            "truncated": false,
            "warnings": ["oxydra-vm.stdout: 9 bytes after the cursor were rotated away"],
            "cursor": "oxydra-vm.stdout:7:90",
            "lost_bytes": 9
        }}),
    );
}
