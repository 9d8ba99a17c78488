//! Process-tier launch latency: from the `launch` call until the guest has
//! read its bootstrap envelope (the demo guest prints `ack` right after).
//!
//! Baseline: a bare `tokio::process::Command` spawn of the same binary with
//! the same arguments, writing the same frame to its stdin, until `ack`.
//! Both run `ROUNDS` times, interleaved, in one process; the guest is stopped
//! after each sample, outside the measurement.
//!
//! Run: `cargo run --release -p runner-bench --bin process_launch`.

use runner_bench::{median, percentile};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::config::GuestCommand;
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SandboxTier,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

const ROUNDS: usize = 50;
const BOUND: Duration = Duration::from_secs(10);
const GUEST_ARGS: [&str; 2] = ["--heartbeat-ms", "600000"];

#[tokio::main]
async fn main() {
    let guest = runner_tests::guest_binary("demo-guest");
    let dir = tempfile::tempdir().expect("temp dir");
    let user = UserId::new("bench").expect("user id");
    let workspace =
        Workspace::provision(dir.path(), &user, &MountOverrides::default()).expect("workspace");
    let envelope = envelope(&workspace, &user);
    let frame = envelope.to_frame().expect("frame");
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: GuestCommand {
            program: guest.clone(),
            args: GUEST_ARGS.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
        },
        sidecar: None,
        search_path: None,
    });
    let spec = LaunchSpec {
        run_as: None,
        role: GuestRole::Runtime,
        user_id: user.clone(),
        session_id: "bench".into(),
        workspace: workspace.clone(),
        envelope,
        extra_env: BTreeMap::new(),
        resources: ResourceLimits::default(),
    };
    let bare_args: Vec<String> = GUEST_ARGS
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--user-id".into(),
            user.to_string(),
            "--workspace-root".into(),
            workspace.workspace_root.to_string_lossy().into_owned(),
            "--bootstrap-stdin".into(),
        ])
        .collect();

    // Warm up both paths (page cache, lazy runtime setup).
    ours(&backend, &spec).await;
    bare(&guest, &bare_args, &frame).await;

    let mut backend_samples = Vec::with_capacity(ROUNDS);
    let mut bare_samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        backend_samples.push(ours(&backend, &spec).await);
        bare_samples.push(bare(&guest, &bare_args, &frame).await);
    }
    let ours_med = median(&mut backend_samples);
    let ours_p90 = percentile(&backend_samples, 90.0);
    let bare_med = median(&mut bare_samples);
    let bare_p90 = percentile(&bare_samples, 90.0);
    let ratio = ours_med.as_secs_f64() / bare_med.as_secs_f64();
    println!("process_launch: launch -> envelope read (`ack`), {ROUNDS} rounds each, interleaved");
    println!("  ProcessBackend::launch   median {ours_med:?}  p90 {ours_p90:?}");
    println!("  bare tokio Command       median {bare_med:?}  p90 {bare_p90:?}");
    println!("  ratio (median)           {ratio:.2}x (goal <= 1.20x)");
    println!();
    println!("| benchmark | ours median | ours p90 | baseline median | baseline p90 | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| process_launch (launch -> envelope read) | {} | {} | {} | {} | {ratio:.2}x |",
        ms(ours_med),
        ms(ours_p90),
        ms(bare_med),
        ms(bare_p90)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// One launch through the backend, timed until `ack`; then stopped.
async fn ours(backend: &ProcessBackend, spec: &LaunchSpec) -> Duration {
    let start = Instant::now();
    let mut guest: LaunchedGuest = backend.launch(spec.clone()).await.expect("launch");
    let i = guest
        .outputs
        .iter()
        .position(|o| o.stream == LogStream::Stdout)
        .expect("stdout captured");
    let mut stdout = BufReader::new(guest.outputs.remove(i).reader);
    wait_for_ack(&mut stdout).await;
    let took = start.elapsed();
    guest.control.stop(BOUND).await.expect("stop");
    took
}

/// The baseline: spawn, write the frame, close stdin, read until `ack`.
async fn bare(program: &Path, args: &[String], frame: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(frame).await.expect("write frame");
    drop(stdin);
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_ack(&mut stdout).await;
    let took = start.elapsed();
    child.kill().await.expect("kill");
    took
}

async fn wait_for_ack(reader: &mut BufReader<impl AsyncRead + Unpin>) {
    let mut line = String::new();
    tokio::time::timeout(BOUND, reader.read_line(&mut line))
        .await
        .expect("ack in time")
        .expect("read stdout");
    assert_eq!(line, "ack\n", "demo guest prints ack first");
}

/// An envelope of realistic size and shape.
fn envelope(ws: &Workspace, user: &UserId) -> BootstrapEnvelope {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    BootstrapEnvelope {
        user_id: user.to_string(),
        sandbox_tier: SandboxTier::Process,
        workspace_root: s(&ws.workspace_root),
        sidecar_endpoint: None,
        runtime_policy: Some(RuntimePolicy {
            mounts: ResolvedMounts {
                shared: s(&ws.shared),
                tmp: s(&ws.tmp),
                vault: s(&ws.vault),
            },
            resources: ResourceLimits::default(),
            credential_refs: BTreeMap::from([("github".into(), "vault:gh".into())]),
        }),
        startup_status: None,
    }
}
