//! The metrics a runner exposes for a running session of each tier parse
//! with a Prometheus text parser and carry non-zero CPU time and resident
//! memory per guest: real processes (process tier), a real Docker engine
//! (container tier; skips without one unless `CI` is set) and real
//! Firecracker on /dev/kvm (micro_vm; likewise).

use runner_actors::{Backends, Runner, SessionHandle, SessionOptions};
use runner_core::backend::SandboxBackend;
use runner_core::backend::docker::create::LABEL_INSTANCE;
use runner_core::backend::docker::{DockerBackend, DockerBackendConfig, DockerTier};
use runner_core::backend::firecracker::{FirecrackerBackend, FirecrackerBackendConfig};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::config::{GuestCommand, RunnerConfig};
use runner_tests::docker::{RemoveOnDrop, connect, docker_host, guest_image, unique_id};
use runner_tests::{firecracker_binary, guest_binary, kvm_or_skip, test_kernel};
use runner_types::SandboxTier;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn parse(text: &str) -> prometheus_parse::Scrape {
    assert!(text.ends_with("# EOF\n"), "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses")
}

/// The sample `name` of `role`'s guest, if there is one.
fn guest_value(scrape: &prometheus_parse::Scrape, name: &str, role: &str) -> Option<f64> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("role") == Some(role))?;
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Scrapes until both guests of `tier` show CPU time and memory (a guest
/// that just started may not have used a whole clock tick yet), then checks
/// the rest of what a running session exposes.
async fn scrape_until_used(runner: &Runner, tier: SandboxTier) -> prometheus_parse::Scrape {
    let start = Instant::now();
    loop {
        let scrape = parse(&runner.metrics().scrape().await);
        let used = ["runtime", "sidecar"].iter().all(|role| {
            guest_value(&scrape, "runner_guest_cpu_seconds_total", role).is_some_and(|v| v > 0.0)
                && guest_value(&scrape, "runner_guest_resident_memory_bytes", role)
                    .is_some_and(|v| v > 0.0)
        });
        if used {
            check_running_session(&scrape, tier);
            return scrape;
        }
        assert!(
            start.elapsed() < WAIT,
            "no CPU time or memory for both guests within {WAIT:?}:\n{}",
            runner.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_running_session(scrape: &prometheus_parse::Scrape, tier: SandboxTier) {
    let tier_label = scrape
        .samples
        .iter()
        .find(|s| s.metric == "runner_guest_cpu_seconds_total")
        .and_then(|s| s.labels.get("tier").map(str::to_owned));
    assert_eq!(tier_label.as_deref(), Some(tier.as_str()));
    for role in ["runtime", "sidecar"] {
        assert_eq!(
            guest_value(scrape, "runner_guest_restarts_total", role),
            Some(0.0)
        );
        assert!(guest_value(scrape, "runner_guest_uptime_seconds", role).is_some());
    }
    let running = scrape.samples.iter().filter(|s| {
        s.metric == "runner_guest_state"
            && s.labels.get("state") == Some("running")
            && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0)
    });
    assert_eq!(running.count(), 2);
    let count = scrape.samples.iter().find(|s| {
        s.metric == "runner_session_start_duration_seconds_count"
            && s.labels.get("tier") == Some(tier.as_str())
    });
    assert!(count.is_some(), "no start duration for {tier}");
}

fn no_socket() -> SessionOptions {
    SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    }
}

async fn stop(runner: &Runner, session: SessionHandle) {
    session.shutdown(session.shutdown_bound()).await.unwrap();
    // The stopped session is gone from the scrape.
    let scrape = parse(&runner.metrics().render());
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("runner_guest"))
    );
}

fn quick(config: &mut RunnerConfig) {
    config.shutdown.grace = Duration::from_millis(500);
    config.shutdown.log_drain = Duration::from_millis(500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tier_guests_have_cpu_and_memory() {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut config = RunnerConfig::defaults(dir.path());
    quick(&mut config);
    let command = |role: &str| GuestCommand {
        program: guest_binary("demo-guest"),
        args: ["--role", role, "--heartbeat-ms", "1"]
            .map(str::to_owned)
            .to_vec(),
        env: BTreeMap::new(),
    };
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: command("runtime"),
        sidecar: Some(command("sidecar")),
        search_path: None,
    });
    let runner = Runner::new(config, Backends::new().with(Arc::new(backend)));
    let session = runner.start_session_with("pm", no_socket()).await.unwrap();
    let scrape = scrape_until_used(&runner, SandboxTier::Process).await;
    // The heartbeats reached the log.
    let written = scrape.samples.iter().find(|s| {
        s.metric == "runner_log_written_bytes_total"
            && s.labels.get("role") == Some("runtime")
            && s.labels.get("stream") == Some("stdout")
    });
    let bytes = written.and_then(|s| match s.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    });
    assert!(bytes.is_some_and(|b| b > 0.0), "{written:?}");
    stop(&runner, session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_tier_guests_have_cpu_and_memory() {
    let Some(host) = docker_host() else {
        return;
    };
    let docker = connect(&host).await;
    let instance = unique_id("metrics");
    let _guard = RemoveOnDrop::new(&host, LABEL_INSTANCE, &instance);
    let dir = tempfile::Builder::new()
        .prefix("mt")
        .tempdir_in("/tmp")
        .unwrap();
    let image = guest_image(&docker, "demo-guest", &["--heartbeat-ms", "1"]).await;
    let mut config = RunnerConfig::defaults(dir.path());
    quick(&mut config);
    config.default_tier = SandboxTier::Container;
    config.guest_images.oxydra_vm = image.clone();
    config.guest_images.shell_vm = image;
    config.docker.host = Some(host.clone());
    let user = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
    let backend: Arc<dyn SandboxBackend> = Arc::new(
        DockerBackend::new(DockerBackendConfig::from_runner_config(
            &config,
            DockerTier::Container,
            instance.clone(),
            None,
            user,
        ))
        .expect("valid docker backend config"),
    );
    let runner = Runner::new(config, Backends::new().with(backend));
    let session = runner.start_session_with("cm", no_socket()).await.unwrap();
    scrape_until_used(&runner, SandboxTier::Container).await;
    stop(&runner, session).await;
}

fn vm_template(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let json = serde_json::json!({
        "boot-source": {
            "kernel_image_path": test_kernel(),
            "boot_args": "console=ttyS0 testkernel.mode=hang",
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_vm_guests_have_cpu_and_memory() {
    if !kvm_or_skip("micro_vm_guests_have_cpu_and_memory") {
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let mut config = RunnerConfig::defaults(dir.path());
    quick(&mut config);
    config.default_tier = SandboxTier::MicroVm;
    config.guest_images.firecracker_oxydra_vm_config = Some(vm_template(dir.path(), "rt.json"));
    config.guest_images.firecracker_shell_vm_config = Some(vm_template(dir.path(), "sc.json"));
    config.firecracker.binary = Some(firecracker_binary().display().to_string());
    // As in the other micro_vm suites: unjailed (allowed, reported degraded).
    config.firecracker.jailer = Some(dir.path().join("no-jailer").display().to_string());
    config.firecracker.allow_without_jailer = true;
    let fc = FirecrackerBackend::new(FirecrackerBackendConfig::from_runner_config(&config, None));
    let runner = Runner::new(config, Backends::new().with(Arc::new(fc)));
    let session = runner.start_session_with("vmm", no_socket()).await.unwrap();
    scrape_until_used(&runner, SandboxTier::MicroVm).await;
    stop(&runner, session).await;
}
