//! What the micro_vm tier refuses before anything starts: a missing
//! template key, a missing binary, an unusable KVM device, an envelope over
//! the command-line budget, a root runner without a jailer. None of these
//! boots a VM.

use runner_core::backend::SandboxBackend;
use runner_core::backend::firecracker::{
    FIRECRACKER_WITHOUT_JAILER, FirecrackerBackend, FirecrackerBackendConfig,
    FirecrackerLaunchError, JailerSettings, LaunchPaths,
};
use runner_core::config::RunnerConfig;
use runner_tests::firecracker::*;
use runner_types::GuestRole;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[tokio::test]
async fn missing_template_keys_are_named() {
    let fx = Fixture::new("exit", "exit");
    let dir = tempfile::tempdir().unwrap();
    let mut runner = RunnerConfig::defaults(dir.path());
    let bin_dir = runner_tests::firecracker_binary()
        .parent()
        .unwrap()
        .to_path_buf();
    let config = FirecrackerBackendConfig::from_runner_config(&runner, Some(bin_dir.as_os_str()));
    assert_eq!(
        config.binary,
        runner_tests::firecracker_binary(),
        "resolved on the given PATH"
    );

    let backend = FirecrackerBackend::new(config.clone());
    let err = fx.preflight_error(&backend).await;
    assert!(
        matches!(
            err,
            FirecrackerLaunchError::MissingTemplate {
                field: "firecracker_oxydra_vm_config"
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "linux micro_vm requires firecracker_oxydra_vm_config in [guest_images]"
    );

    runner.guest_images.firecracker_oxydra_vm_config = Some(fx.runtime_template.clone());
    let backend = FirecrackerBackend::new(FirecrackerBackendConfig::from_runner_config(
        &runner,
        Some(bin_dir.as_os_str()),
    ));
    assert!(!backend.has_sidecar());
    let err = fx.preflight_error(&backend).await;
    assert!(
        matches!(
            err,
            FirecrackerLaunchError::MissingTemplate {
                field: "firecracker_shell_vm_config"
            }
        ),
        "{err:?}"
    );
    // Launching the role without a template fails the same way, and
    // leaves nothing in run/.
    let err = fx.launch_error(&backend, GuestRole::Sidecar).await;
    assert!(
        matches!(err, FirecrackerLaunchError::MissingTemplate { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(&fx.workspace.run).unwrap().count(), 0);
}

#[tokio::test]
async fn bad_templates_fail_the_preflight_naming_the_file() {
    let fx = Fixture::new("exit", "exit");
    std::fs::write(&fx.sidecar_template, b"{\"drives\": []}").unwrap();
    let err = fx.preflight_error(&fx.backend()).await;
    assert!(
        matches!(&err, FirecrackerLaunchError::NoBootSource { path } if *path == fx.sidecar_template),
        "{err:?}"
    );
    std::fs::remove_file(&fx.sidecar_template).unwrap();
    let err = fx.preflight_error(&fx.backend()).await;
    assert!(
        matches!(&err, FirecrackerLaunchError::ReadTemplate { path, .. } if *path == fx.sidecar_template),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_binary_and_unusable_kvm_are_reported_before_launch() {
    let fx = Fixture::new("exit", "exit");
    let good = fx.backend().config().clone();

    let missing = FirecrackerBackend::new(FirecrackerBackendConfig {
        binary: fx.dir.path().join("no-such-firecracker"),
        ..good.clone()
    });
    let err = fx.preflight_error(&missing).await;
    assert!(
        matches!(err, FirecrackerLaunchError::BinaryMissing { .. }),
        "{err:?}"
    );
    // Launched anyway, the spawn fails and no generated file stays behind.
    let err = fx.launch_error(&missing, GuestRole::Runtime).await;
    assert!(
        matches!(err, FirecrackerLaunchError::Spawn { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(&fx.workspace.run).unwrap().count(), 0);

    let unresolved = FirecrackerBackend::new(FirecrackerBackendConfig {
        binary: PathBuf::from("firecracker"),
        ..good.clone()
    });
    let err = fx.preflight_error(&unresolved).await;
    assert!(
        matches!(err, FirecrackerLaunchError::BinaryNotOnPath { .. }),
        "{err:?}"
    );

    let no_kvm = FirecrackerBackend::new(FirecrackerBackendConfig {
        kvm_device: PathBuf::from("/nonexistent/kvm"),
        ..good
    });
    let err = fx.preflight_error(&no_kvm).await;
    assert!(
        matches!(&err, FirecrackerLaunchError::KvmUnusable { path, .. } if path == std::path::Path::new("/nonexistent/kvm")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_envelope_over_the_budget_launches_nothing() {
    let fx = Fixture::new("hang", "hang");
    let backend = fx.backend();
    let mut spec = fx.spec(GuestRole::Runtime, &backend);
    if let Some(policy) = spec.envelope.runtime_policy.as_mut() {
        policy.credential_refs = BTreeMap::from([("big".to_owned(), "x".repeat(1600))]);
    }
    let paths = LaunchPaths::new(&fx.workspace.run, GuestRole::Runtime);
    let err = firecracker_error(backend.launch(spec).await.unwrap_err());
    let FirecrackerLaunchError::CmdlineTooLong {
        needed,
        limit,
        envelope_bytes,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(limit, 2047);
    assert!(needed > limit && envelope_bytes > 1600 && envelope_bytes < needed);
    assert!(!paths.config.exists(), "generated config left behind");
    assert!(!paths.api_socket.exists());
    assert!(
        runner_tests::pids_with_arg(paths.api_socket.to_str().unwrap()).is_empty(),
        "a firecracker process was started"
    );
    assert_eq!(std::fs::read_dir(&fx.workspace.run).unwrap().count(), 0);
}

#[tokio::test]
async fn root_without_a_jailer_is_refused_unless_explicitly_allowed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the jailer preflight is about a root runner"
    );
    let fx = Fixture::new("exit", "exit");
    let mut config = fx.backend().config().clone();
    config.jailer = JailerSettings {
        binary: fx.dir.path().join("no-jailer"),
        chroot_base: None,
        allow_without_jailer: false,
        runner_is_root: true,
    };
    let refused = FirecrackerBackend::new(config.clone());
    let err = fx.preflight_error(&refused).await;
    let FirecrackerLaunchError::JailerRequired { jailer, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*jailer, fx.dir.path().join("no-jailer"));
    assert!(
        matches!(**source, FirecrackerLaunchError::BinaryMissing { .. }),
        "{source:?}"
    );
    assert!(err.to_string().contains("allow_without_jailer"), "{err}");
    // A launch is refused the same way, before anything is written.
    let err = fx.launch_error(&refused, GuestRole::Runtime).await;
    assert!(
        matches!(err, FirecrackerLaunchError::JailerRequired { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(&fx.workspace.run).unwrap().count(), 0);
    assert!(refused.degraded_reasons().is_empty());

    // Allowed: the preflight passes and the backend reports itself degraded.
    config.jailer.allow_without_jailer = true;
    let allowed = FirecrackerBackend::new(config.clone());
    allowed
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    let reasons = allowed.degraded_reasons();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0].code, FIRECRACKER_WITHOUT_JAILER);

    // With a usable jailer nothing is degraded, and as a non-root runner
    // the jailer is not needed at all.
    config.jailer.binary = jailer_binary();
    config.jailer.allow_without_jailer = false;
    let jailed = FirecrackerBackend::new(config.clone());
    jailed
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    assert!(jailed.degraded_reasons().is_empty());
    config.jailer.binary = fx.dir.path().join("no-jailer");
    config.jailer.runner_is_root = false;
    let unprivileged = FirecrackerBackend::new(config);
    unprivileged
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    assert!(unprivileged.degraded_reasons().is_empty());
}
