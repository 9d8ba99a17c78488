//! micro_vm start: launch → first serial-console byte of both VMs (sidecar
//! then runtime, as a session starts them), through the Firecracker backend
//! versus the same two firecracker commands spawned directly with
//! `tokio::process` on the same generated configs.
//!
//! Ours includes everything a launch does: read and parse the template,
//! encode the envelope, generate and budget-check the config, remove stale
//! sockets, write the config and VMM log, spawn (the process tier's
//! vfork-class spawn with its clean start, process group, pipes, pipe
//! resize) and start the waiter. The baseline gets its files prepared
//! outside the timer and only spawns. Guests boot the test kernel in
//! `mode=exit`; 60 rounds, interleaved (alternating which goes first);
//! the medians of both, their ratio, and the median of each round's own
//! ratio reported.

use runner_bench::{bench_spec, median, percentile};
use runner_core::backend::firecracker::{
    FirecrackerBackend, FirecrackerBackendConfig, JailerSettings, LaunchPaths,
};
use runner_core::backend::{LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SandboxTier,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

const ROUNDS: usize = 60;
/// Bound on any single wait (a VM in mode=exit is done in ~50 ms).
const BOUND: Duration = Duration::from_secs(20);
/// Start order of a session.
const ROLES: [GuestRole; 2] = GuestRole::START_ORDER;

struct Setup {
    binary: PathBuf,
    workspace: Workspace,
    backend: FirecrackerBackend,
    specs: Vec<LaunchSpec>,
}

fn setup(dir: &Path) -> Setup {
    let binary = runner_tests::firecracker_binary();
    let kernel = runner_tests::test_kernel();
    let user = UserId::new("bench").expect("user id");
    let workspace =
        Workspace::provision(dir, &user, &MountOverrides::default()).expect("workspace");
    let template = dir.join("template.json");
    let doc = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 testkernel.mode=exit"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    std::fs::write(&template, doc.to_string()).expect("template");
    let backend = FirecrackerBackend::new(FirecrackerBackendConfig {
        binary: binary.clone(),
        runtime_template: Some(template.clone()),
        sidecar_template: Some(template),
        kvm_device: PathBuf::from("/dev/kvm"),
        // Measures Firecracker's own start, unjailed, as a non-root runner
        // would run it.
        jailer: JailerSettings {
            binary: binary.with_file_name("jailer"),
            chroot_base: None,
            allow_without_jailer: true,
            runner_is_root: false,
        },
    });
    backend
        .check()
        .expect("micro_vm preflight (is /dev/kvm usable?)");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let specs = ROLES
        .iter()
        .map(|&role| {
            let envelope = BootstrapEnvelope {
                user_id: user.to_string(),
                sandbox_tier: SandboxTier::MicroVm,
                workspace_root: s(&workspace.workspace_root),
                sidecar_endpoint: (role == GuestRole::Runtime)
                    .then(|| backend.sidecar_endpoint(&workspace)),
                runtime_policy: Some(RuntimePolicy {
                    mounts: ResolvedMounts {
                        shared: s(&workspace.shared),
                        tmp: s(&workspace.tmp),
                        vault: s(&workspace.vault),
                    },
                    resources: ResourceLimits::default(),
                    credential_refs: BTreeMap::new(),
                }),
                startup_status: None,
            };
            bench_spec(role, &user, &workspace, envelope)
        })
        .collect();
    Setup {
        binary,
        workspace,
        backend,
        specs,
    }
}

/// Waits for the first byte on `reader`, then drains it to EOF in the
/// background (firecracker drops serial output nobody reads).
async fn first_byte(
    mut reader: std::pin::Pin<Box<dyn AsyncRead + Send>>,
) -> tokio::task::JoinHandle<()> {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(BOUND, reader.read(&mut buf))
        .await
        .expect("first console byte in time")
        .expect("read console");
    assert!(n > 0, "console closed before any output");
    tokio::spawn(async move {
        let mut sink = Vec::new();
        if let Err(e) = reader.read_to_end(&mut sink).await {
            eprintln!("draining console: {e}");
        }
    })
}

fn take(guest: &mut LaunchedGuest, which: LogStream) -> std::pin::Pin<Box<dyn AsyncRead + Send>> {
    let i = guest
        .outputs
        .iter()
        .position(|o| o.stream == which)
        .expect("stream");
    guest.outputs.remove(i).reader.into_reader()
}

async fn run_backend(s: &Setup) -> Duration {
    let start = Instant::now();
    let mut guests = Vec::new();
    for spec in &s.specs {
        guests.push(s.backend.launch(spec.clone()).await.expect("launch"));
    }
    let mut drains = Vec::new();
    for g in &mut guests {
        drains.push(first_byte(take(g, LogStream::Stdout)));
    }
    let drains = futures::future::join_all(drains).await;
    let elapsed = start.elapsed();
    for g in &mut guests {
        drop(take(g, LogStream::Stderr)); // firecracker writes nothing there on success
        let exit = tokio::time::timeout(BOUND, g.exit.wait())
            .await
            .expect("exit");
        assert!(exit.status.success(), "VM exit {}", exit.status);
        g.control.cleanup().await.expect("cleanup");
    }
    for d in drains {
        d.await.expect("drain");
    }
    elapsed
}

async fn run_direct(s: &Setup) -> Duration {
    // Same generated configs, files prepared outside the timer.
    let mut paths = Vec::new();
    for spec in &s.specs {
        let generated = s.backend.generate(spec).expect("generate");
        let p = LaunchPaths::new(&s.workspace.run, spec.role);
        p.prepare(&generated.to_json()).expect("prepare");
        paths.push(p);
    }
    let start = Instant::now();
    let mut children = Vec::new();
    for p in &paths {
        children.push(
            tokio::process::Command::new(&s.binary)
                .args(p.firecracker_args())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn firecracker"),
        );
    }
    let mut drains = Vec::new();
    for c in &mut children {
        let stdout: std::pin::Pin<Box<dyn AsyncRead + Send>> =
            Box::pin(c.stdout.take().expect("stdout"));
        drains.push(first_byte(stdout));
    }
    let drains = futures::future::join_all(drains).await;
    let elapsed = start.elapsed();
    for c in &mut children {
        let status = tokio::time::timeout(BOUND, c.wait())
            .await
            .expect("exit")
            .expect("wait");
        assert!(status.success(), "VM exit {status}");
    }
    for d in drains {
        d.await.expect("drain");
    }
    for p in &paths {
        p.remove().expect("remove");
    }
    elapsed
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = setup(dir.path());
    // One unmeasured round each: page cache, binary and kernel warm.
    run_backend(&s).await;
    run_direct(&s).await;

    let mut ours = Vec::with_capacity(ROUNDS);
    let mut direct = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            ours.push(run_backend(&s).await);
            direct.push(run_direct(&s).await);
        } else {
            direct.push(run_direct(&s).await);
            ours.push(run_backend(&s).await);
        }
    }
    // Each round's two runs are adjacent in time: the ratio within a round
    // is spared the drift of the machine's speed across the run.
    let mut paired: Vec<f64> = ours
        .iter()
        .zip(&direct)
        .map(|(o, d)| o.as_secs_f64() / d.as_secs_f64())
        .collect();
    paired.sort_by(f64::total_cmp);
    let paired_median = paired[paired.len() / 2];
    let (o, d) = (median(&mut ours), median(&mut direct));
    let (o90, d90) = (percentile(&ours, 90.0), percentile(&direct, 90.0));
    let ratio = o.as_secs_f64() / d.as_secs_f64();
    println!(
        "microvm_start: launch -> first console byte of both VMs (sidecar, then runtime), {ROUNDS} interleaved rounds"
    );
    println!(
        "  direct tokio::process (baseline): {:7.2} ms  (p90 {:.2} ms)",
        ms(d),
        ms(d90)
    );
    println!(
        "  FirecrackerBackend::launch:       {:7.2} ms  (p90 {:.2} ms)",
        ms(o),
        ms(o90)
    );
    println!("  ratio of medians:                 {ratio:7.2}x  (goal <= 1.10x)");
    println!("  median of the rounds' ratios:     {paired_median:7.2}x");
    println!();
    println!(
        "| bench | workload | baseline (direct spawn) median | ours median | ratio of medians | median of the rounds' ratios |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| microvm_start | 2 VMs, launch -> first console byte, {ROUNDS} rounds | {:.2} ms | {:.2} ms | {ratio:.2}x | {paired_median:.2}x |",
        ms(d),
        ms(o)
    );
}
