//! Process backend, refusals: every problem that can be seen before spawning
//! is a typed error, and nothing is spawned.

use runner_core::backend::process::{
    NotExecutableReason, ProcessBackend, ProcessBackendConfig, ProcessLaunchError,
};
use runner_core::backend::{LaunchError, LaunchedGuest, SandboxBackend};
use runner_core::config::GuestCommand;
use runner_tests::process::*;
use runner_types::{GuestRole, SandboxTier};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A shell script that would leave `marker` behind if it ever ran.
fn marker_script(dir: &Path, marker: &Path, mode: u32) -> PathBuf {
    let script = dir.join("guest.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(mode)).unwrap();
    script
}

fn command(program: impl Into<PathBuf>) -> GuestCommand {
    GuestCommand {
        program: program.into(),
        args: vec![],
        env: BTreeMap::new(),
    }
}

async fn launch_err(fx: &Fixture, backend: &ProcessBackend, role: GuestRole) -> LaunchError {
    let spec = fx.spec(role, fx.envelope(role, backend));
    let result: Result<LaunchedGuest, _> = backend.launch(spec).await;
    result.expect_err("launch must be refused")
}

#[tokio::test]
async fn bare_name_not_on_the_search_path() {
    let fx = Fixture::new();
    let empty = tempfile::tempdir().unwrap();
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: command("no-such-guest-program"),
        sidecar: None,
        search_path: Some(empty.path().as_os_str().to_owned()),
    });
    match launch_err(&fx, &backend, GuestRole::Runtime).await {
        LaunchError::Process(ProcessLaunchError::NotOnSearchPath {
            role,
            program,
            searched,
        }) => {
            assert_eq!(role, GuestRole::Runtime);
            assert_eq!(program, Path::new("no-such-guest-program"));
            assert_eq!(searched, vec![empty.path().to_path_buf()]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_path() {
    let fx = Fixture::new();
    let missing = fx.dir.path().join("bin/guest");
    let backend = runtime_only(command(&missing));
    match launch_err(&fx, &backend, GuestRole::Runtime).await {
        LaunchError::Process(ProcessLaunchError::ProgramMissing { path, .. }) => {
            assert_eq!(path, missing)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn not_executable_file_and_directory_spawn_nothing() {
    let fx = Fixture::new();
    let marker = fx.dir.path().join("ran");
    let script = marker_script(fx.dir.path(), &marker, 0o644);
    let backend = runtime_only(command(&script));
    match launch_err(&fx, &backend, GuestRole::Runtime).await {
        LaunchError::Process(ProcessLaunchError::NotExecutable { path, reason, .. }) => {
            assert_eq!(path, script);
            assert_eq!(reason, NotExecutableReason::NoExecutePermission);
        }
        other => panic!("{other:?}"),
    }
    let backend = runtime_only(command(fx.dir.path()));
    assert!(matches!(
        launch_err(&fx, &backend, GuestRole::Runtime).await,
        LaunchError::Process(ProcessLaunchError::NotExecutable {
            reason: NotExecutableReason::NotARegularFile,
            ..
        })
    ));
    assert!(!marker.exists(), "the guest must not have run");
    // Control: the same script, made executable, does run (so the marker
    // check above can fail).
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = runtime_only(command(&script));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    guest.exit.wait().await;
    assert!(marker.exists());
}

#[tokio::test]
async fn sidecar_without_a_command_is_not_configured() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&[]));
    assert!(!backend.has_sidecar());
    assert!(matches!(
        launch_err(&fx, &backend, GuestRole::Sidecar).await,
        LaunchError::NotConfigured {
            role: GuestRole::Sidecar,
            tier: SandboxTier::Process
        }
    ));
}

#[tokio::test]
async fn invalid_envelope_and_missing_workspace_are_refused() {
    let fx = Fixture::new();
    let marker = fx.dir.path().join("ran");
    let script = marker_script(fx.dir.path(), &marker, 0o755);
    let backend = runtime_only(command(&script));
    let mut envelope = fx.envelope(GuestRole::Runtime, &backend);
    envelope.user_id = " ".into();
    let result = backend.launch(fx.spec(GuestRole::Runtime, envelope)).await;
    assert!(matches!(
        result,
        Err(LaunchError::Process(ProcessLaunchError::Envelope {
            role: GuestRole::Runtime,
            ..
        }))
    ));
    std::fs::remove_dir_all(&fx.workspace.user_root).unwrap();
    assert!(matches!(
        launch_err(&fx, &backend, GuestRole::Runtime).await,
        LaunchError::Process(ProcessLaunchError::WorkDir { .. })
    ));
    assert!(!marker.exists(), "the guest must not have run");
}
