//! The container tier on a real Docker engine: what a launched guest gets
//! (its envelope, byte-exact output, hardening, limits) and the macOS
//! micro_vm path. Skips without an engine (see `runner_tests::docker`).

use runner_core::backend::docker::create::{LABEL_INSTANCE, LABEL_ROLE, LABEL_TIER, LABEL_USER};
use runner_core::backend::docker::{BackendKind, DockerTier, HostOs, select_backend_for};
use runner_core::backend::{GuestIdentity, LaunchedGuest, SandboxBackend};
use runner_tests::docker::harness::{
    BOUND, Capture, Harness, key_values, launch, runner_user, spec,
};
use runner_tests::probe_pattern;
use runner_types::{BootstrapEnvelope, ExitStatus, GuestRole, ResourceLimits, SandboxTier};
use std::path::Path;
use std::time::Duration;
use tokio::time::timeout;

const GRACE: Duration = Duration::from_secs(1);

fn container_id(g: &LaunchedGuest) -> (String, String) {
    match &g.identity {
        GuestIdentity::Container { name, id } => (name.clone(), id.clone()),
        other => panic!("not a container: {other:?}"),
    }
}

async fn stop_and_clean(g: &LaunchedGuest) {
    timeout(BOUND, g.control.stop(GRACE))
        .await
        .expect("stop is bounded")
        .expect("stop");
    g.control.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn runtime_and_sidecar_read_the_exact_envelope_through_the_mounted_file() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let runtime_image = h.demo_image(&[]).await;
    let sidecar_image = h.demo_image(&["--role", "sidecar"]).await;
    let mut config = h.config(DockerTier::Container, &runtime_image);
    config.sidecar_image = Some(sidecar_image);
    let backend = h.backend(config);
    let (user, ws) = h.user("env");
    backend.prepare_session(&user, &ws).await.expect("prepare");

    let mut launched = Vec::new();
    for role in GuestRole::START_ORDER {
        let s = spec(&backend, role, &user, &ws, ResourceLimits::default());
        let want = s.envelope.clone();
        let mut guest = backend.launch(s).await.expect("launch");
        let (name, id) = container_id(&guest);
        assert_eq!(name, format!("oxydra-container-{user}-{}", role.label()));
        let mut out = Capture::all(guest.outputs.drain(..).collect());
        let got = BootstrapEnvelope::from_json(out[0].line("envelope=").await.as_bytes())
            .expect("guest printed a valid envelope");
        assert_eq!(got, want, "{role} envelope");

        // Only its own envelope file is mounted, read-only, at the fixed path.
        let info = h.docker.inspect_container(&id, None).await.unwrap();
        let own_file = ws.run.join(format!("{}.bootstrap.json", role.label()));
        let mounts = info.mounts.unwrap_or_default();
        let boot: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination.as_deref() == Some("/run/oxydra/bootstrap"))
            .collect();
        assert_eq!(boot.len(), 1);
        assert_eq!(boot[0].source.as_deref(), own_file.to_str());
        assert_eq!(boot[0].rw, Some(false));
        for m in &mounts {
            let src = Path::new(m.source.as_deref().unwrap_or(""));
            assert!(
                src == own_file || !(src.starts_with(&ws.run) || src.starts_with(&ws.logs)),
                "{role} mounts {src:?}"
            );
        }
        let env = info.config.and_then(|c| c.env).unwrap_or_default();
        assert!(env.contains(&"OXYDRA_BOOTSTRAP_FILE=/run/oxydra/bootstrap".to_owned()));
        assert!(env.contains(&"EXTRA_FROM_TEST=1".to_owned()));
        launched.push((guest, out));
    }
    for (g, _) in &launched {
        stop_and_clean(g).await;
    }
    for role in GuestRole::START_ORDER {
        assert!(
            !ws.run
                .join(format!("{}.bootstrap.json", role.label()))
                .exists()
        );
    }
}

#[tokio::test]
async fn output_is_byte_exact_with_invalid_utf8_and_no_final_newline() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let mut config = h.config(DockerTier::Container, &h.probe_image().await);
    let len = 300_000;
    config.docker.command = Some(vec!["bytes".into(), "41".into(), len.to_string()]);
    let backend = h.backend(config);
    let (user, ws) = h.user("bytes");
    let mut guest = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .expect("launch");
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    // Both streams drain in the background, so reading one after the
    // other cannot stall the guest.
    let stdout = out[0].until_eof().await;
    let stderr = out[1].until_eof().await;
    // Compare without printing 300 kB on failure.
    let want_out = probe_pattern(41, len);
    let want_err = probe_pattern(42, len);
    assert_eq!(stdout.len(), len, "stdout length");
    assert!(stdout == want_out, "stdout differs from the pattern");
    assert_eq!(stderr.len(), len, "stderr length");
    assert!(stderr == want_err, "stderr differs from the pattern");
    let exit = timeout(BOUND, guest.exit.wait()).await.expect("exit seen");
    assert_eq!(exit.status, ExitStatus::Code(3));
    assert!(!exit.oom_killed);
    stop_and_clean(&guest).await;
}

#[tokio::test]
async fn hardening_holds_by_inspect_and_from_inside() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let mut config = h.config(DockerTier::Container, &h.probe_image().await);
    config.docker.command = Some(vec!["hardening".into()]);
    let backend = h.backend(config);
    let (user, ws) = h.user("hard");
    let limits = ResourceLimits {
        max_vcpus: Some(1),
        max_memory_mib: Some(64),
        max_processes: Some(32),
    };
    let s = spec(&backend, GuestRole::Runtime, &user, &ws, limits);
    let want = s.envelope.clone();
    let mut guest = backend.launch(s).await.expect("launch");
    let (_, id) = container_id(&guest);
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    let report = key_values(&out[0].until_eof().await);
    assert_eq!(report["rootfs_writable"], "false");
    assert_eq!(report["interfaces"], "lo");
    assert_eq!(report["cap_eff"], "0000000000000000");
    assert_eq!(report["no_new_privs"], "1");
    let got = BootstrapEnvelope::from_json(report["envelope"].as_bytes()).unwrap();
    assert_eq!(got, want);
    let exit = timeout(BOUND, guest.exit.wait()).await.expect("exit seen");
    assert_eq!(exit.status, ExitStatus::Code(0));

    let info = h.docker.inspect_container(&id, None).await.unwrap();
    let hc = info.host_config.unwrap();
    assert_eq!(hc.network_mode.as_deref(), Some("none"));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.init, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_owned()]));
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(hc.pids_limit, Some(32));
    assert_eq!(hc.log_config.and_then(|l| l.typ).as_deref(), Some("local"));
    let config = info.config.unwrap();
    assert_eq!(config.user.as_deref(), Some(runner_user().as_str()));
    let labels = config.labels.unwrap();
    assert_eq!(labels[LABEL_INSTANCE], h.instance);
    assert_eq!(labels[LABEL_USER], user.as_str());
    assert_eq!(labels[LABEL_ROLE], "runtime");
    assert_eq!(labels[LABEL_TIER], "container");
    stop_and_clean(&guest).await;
}

#[tokio::test]
async fn memory_limit_oom_kills_and_the_exit_says_so() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let mut config = h.config(DockerTier::Container, &h.probe_image().await);
    config.docker.command = Some(vec!["oom".into(), "500".into()]);
    let backend = h.backend(config);
    let (user, ws) = h.user("oom");
    let limits = ResourceLimits {
        max_memory_mib: Some(32),
        ..Default::default()
    };
    let mut guest = backend
        .launch(spec(&backend, GuestRole::Runtime, &user, &ws, limits))
        .await
        .expect("launch");
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    let exit = timeout(BOUND, guest.exit.wait()).await.expect("exit seen");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.status, ExitStatus::Code(137));
    let printed = key_values(&out[0].until_eof().await);
    let reached: u32 = printed["allocated_mib"].parse().unwrap();
    assert!(reached < 64, "allocated {reached} MiB under a 32 MiB limit");
    stop_and_clean(&guest).await;
}

#[tokio::test]
async fn macos_micro_vm_path_gives_the_same_bootstrap_mount_and_env() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let BackendKind::Docker(tier) = select_backend_for(SandboxTier::MicroVm, HostOs::MacOs) else {
        panic!("macOS micro_vm must be the Docker path");
    };
    assert_eq!(tier, DockerTier::MicroVm);
    let backend = h.backend(h.config(tier, &h.demo_image(&[]).await));
    assert_eq!(backend.tier(), SandboxTier::MicroVm);
    let (user, ws) = h.user("mac");
    backend.prepare_session(&user, &ws).await.expect("prepare");
    let s = spec(&backend, GuestRole::Runtime, &user, &ws, Default::default());
    let want = s.envelope.clone();
    assert_eq!(want.sandbox_tier, SandboxTier::MicroVm);
    let mut guest = backend.launch(s).await.expect("launch");
    let (name, id) = container_id(&guest);
    assert_eq!(name, format!("oxydra-micro_vm-{user}-oxydra-vm"));
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    let got = BootstrapEnvelope::from_json(out[0].line("envelope=").await.as_bytes()).unwrap();
    assert_eq!(got, want);

    let info = h.docker.inspect_container(&id, None).await.unwrap();
    let boot = info
        .mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some("/run/oxydra/bootstrap"))
        .expect("bootstrap mount");
    assert_eq!(boot.rw, Some(false));
    assert_eq!(
        boot.source.as_deref(),
        ws.run.join("oxydra-vm.bootstrap.json").to_str()
    );
    let config = info.config.unwrap();
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"OXYDRA_BOOTSTRAP_FILE=/run/oxydra/bootstrap".to_owned())
    );
    assert_eq!(config.labels.unwrap()[LABEL_TIER], "micro_vm");
    stop_and_clean(&guest).await;
}
