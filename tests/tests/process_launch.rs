//! Process backend, launch: the guest receives exactly the envelope the
//! runner built, a cleared environment, and can reach its sidecar; a guest
//! that dies or never reads does not break launch.

use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{GuestIdentity, SandboxBackend};
use runner_tests::process::*;
use runner_types::{BootstrapEnvelope, ExitStatus, GuestRole};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn guest_reads_the_exact_envelope_the_runner_built() {
    let fx = Fixture::new();
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: demo(&["--heartbeat-ms", "60000"]),
        sidecar: Some(demo(&["--role", "sidecar"])),
        search_path: None,
    });
    let sent = fx.envelope(GuestRole::Runtime, &backend);
    assert!(sent.sidecar_endpoint.is_some() && sent.runtime_policy.is_some());
    let mut guest = backend
        .launch(fx.spec(GuestRole::Runtime, sent.clone()))
        .await
        .unwrap();
    let GuestIdentity::Process { pid } = guest.identity else {
        panic!("{:?}", guest.identity)
    };
    assert!(pid > 0);
    let (mut out, _err) = take_outputs(&mut guest);
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("ack"));
    let json = out.until("envelope=", PROMPT).await;
    let got = BootstrapEnvelope::from_json(json.as_bytes()).unwrap();
    assert_eq!(got.user_id, sent.user_id);
    assert_eq!(got.sandbox_tier, sent.sandbox_tier);
    assert_eq!(got.workspace_root, sent.workspace_root);
    assert_eq!(got.sidecar_endpoint, sent.sidecar_endpoint);
    assert_eq!(got.runtime_policy, sent.runtime_policy);
    assert_eq!(got.startup_status, sent.startup_status);
    assert_eq!(got, sent);
    let exit = guest.control.stop(PROMPT).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert_eq!(
        out.rest_until_eof(PROMPT).await.last().map(String::as_str),
        Some("shutdown")
    );
}

#[tokio::test]
async fn environment_is_cleared_to_configured_plus_extra() {
    let fx = Fixture::new();
    let mut cmd = demo(&["--print-env", "--heartbeat-ms", "60000"]);
    cmd.env = BTreeMap::from([
        ("CONFIGURED".into(), "yes".into()),
        ("CLASH".into(), "config".into()),
    ]);
    let backend = runtime_only(cmd);
    let mut spec = fx.spec(
        GuestRole::Runtime,
        fx.envelope(GuestRole::Runtime, &backend),
    );
    spec.extra_env = BTreeMap::from([
        ("EXTRA".into(), "1".into()),
        ("CLASH".into(), "extra".into()),
    ]);
    let mut guest = backend.launch(spec).await.unwrap();
    let (mut out, _err) = take_outputs(&mut guest);
    let env: BTreeMap<String, String> =
        serde_json::from_str(&out.until("env=", PROMPT).await).unwrap();
    let want: BTreeMap<String, String> =
        [("CONFIGURED", "yes"), ("CLASH", "extra"), ("EXTRA", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(env, want);
    guest.control.stop(PROMPT).await.unwrap();
}

#[tokio::test]
async fn runtime_reaches_the_sidecar_at_the_backend_endpoint() {
    let fx = Fixture::new();
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: demo(&["--heartbeat-ms", "60000"]),
        sidecar: Some(demo(&["--role", "sidecar", "--heartbeat-ms", "60000"])),
        search_path: None,
    });
    let endpoint = backend.sidecar_endpoint(&fx.workspace);
    assert_eq!(
        endpoint.address,
        fx.workspace.sidecar_socket().to_str().unwrap()
    );
    let mut sidecar = launch(&fx, &backend, GuestRole::Sidecar).await;
    let (mut side_out, _) = take_outputs(&mut sidecar);
    let mut runtime = launch(&fx, &backend, GuestRole::Runtime).await;
    let (mut run_out, _) = take_outputs(&mut runtime);
    assert_eq!(
        side_out.until("sidecar_listening=", PROMPT).await,
        endpoint.address
    );
    assert_eq!(
        run_out.until("sidecar_connected=", PROMPT).await,
        endpoint.address
    );
    runtime.control.stop(PROMPT).await.unwrap();
    let exit = sidecar.control.stop(PROMPT).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert!(
        !fx.workspace.sidecar_socket().exists(),
        "sidecar removed its socket"
    );
}

#[tokio::test]
async fn guest_runs_in_the_user_workspace_with_the_runner_flags() {
    let fx = Fixture::new();
    // `sh -c` gets the runner's flags as $1..; it prints them and its cwd.
    let backend = runtime_only(runner_core::config::GuestCommand {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            r#"pwd; printf '%s\n' "$@""#.into(),
            "guest".into(),
        ],
        env: BTreeMap::new(),
    });
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let (mut out, _) = take_outputs(&mut guest);
    let lines = out.rest_until_eof(PROMPT).await;
    // `--workspace-root` is the user's own directory, never the global root.
    let user_dir = fx.workspace.user_root.to_str().unwrap();
    let want = [
        user_dir,
        "--user-id",
        "alice",
        "--workspace-root",
        user_dir,
        "--bootstrap-stdin",
    ];
    assert_eq!(lines, want);
    assert_eq!(guest.exit.wait().await.status, ExitStatus::Code(0));
}

/// An envelope big enough (~300 KiB) that writing it must wait for the
/// guest to read: the pipe buffer holds only 64 KiB.
fn big_envelope(fx: &Fixture, backend: &ProcessBackend) -> BootstrapEnvelope {
    let mut env = fx.envelope(GuestRole::Runtime, backend);
    let refs = &mut env.runtime_policy.as_mut().unwrap().credential_refs;
    for i in 0..3000 {
        refs.insert(format!("credential-{i:05}"), "x".repeat(90));
    }
    env
}

#[tokio::test]
async fn guest_exiting_before_reading_stdin_does_not_break_launch() {
    let fx = Fixture::new();
    let backend = runtime_only(runner_core::config::GuestCommand {
        program: "sh".into(),
        args: vec!["-c".into(), "exit 7".into()],
        env: BTreeMap::new(),
    });
    let spec = fx.spec(GuestRole::Runtime, big_envelope(&fx, &backend));
    let mut guest = tokio::time::timeout(PROMPT, backend.launch(spec))
        .await
        .expect("launch is bounded")
        .unwrap();
    let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
        .await
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Code(7));
    // The backend is still usable afterwards.
    let mut again = launch(&fx, &backend, GuestRole::Runtime).await;
    assert_eq!(again.exit.wait().await.status, ExitStatus::Code(7));
}

#[tokio::test]
async fn guest_that_never_reads_stdin_does_not_block_launch() {
    let fx = Fixture::new();
    let backend = runtime_only(runner_core::config::GuestCommand {
        program: "sh".into(),
        args: vec!["-c".into(), "echo up; exec sleep 60".into()],
        env: BTreeMap::new(),
    });
    let spec = fx.spec(GuestRole::Runtime, big_envelope(&fx, &backend));
    let mut guest = tokio::time::timeout(PROMPT, backend.launch(spec))
        .await
        .expect("launch does not wait for the guest to read")
        .unwrap();
    let (mut out, _) = take_outputs(&mut guest);
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("up"));
    let exit = guest.control.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(15));
}

#[tokio::test]
async fn an_envelope_larger_than_the_pipe_arrives_whole() {
    // The launch writes what the pipe takes at once and the rest from a
    // task, as the guest reads.
    let fx = Fixture::new();
    let backend = runtime_only(demo(&["--heartbeat-ms", "60000"]));
    let sent = big_envelope(&fx, &backend);
    let mut guest = tokio::time::timeout(
        PROMPT,
        backend.launch(fx.spec(GuestRole::Runtime, sent.clone())),
    )
    .await
    .expect("launch does not wait for the guest to read")
    .unwrap();
    let (mut out, _err) = take_outputs(&mut guest);
    let json = out.until("envelope=", PROMPT).await;
    let got = BootstrapEnvelope::from_json(json.as_bytes()).unwrap();
    assert_eq!(got, sent);
    let exit = guest.control.stop(PROMPT).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0));
}
