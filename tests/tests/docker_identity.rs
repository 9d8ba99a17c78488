//! The container tier on a real engine, as root: a guest runs under its
//! user's own non-root uid, every container has a pids and a memory limit
//! without `[resources]`, and a setuid file a guest plants in `shared/`
//! gives other local users nothing.

use runner_core::backend::docker::DockerTier;
use runner_core::backend::{GuestIdentity, LaunchedGuest, SandboxBackend};
use runner_core::config::RunnerConfig;
use runner_core::identity::{GuestUser, resolve_guest_user};
use runner_core::workspace::{MountOverrides, Workspace};
use runner_core::{UserId, limits};
use runner_tests::docker::harness::{Capture, Harness, key_values, spec};
use runner_tests::docker::unique_id;
use runner_types::{GuestRole, ResourceLimits, SandboxTier};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio::time::timeout;

const GRACE: Duration = Duration::from_secs(1);

/// A uid no account or guest has, for the "other local user".
const NEIGHBOUR: u32 = 54_321;

/// A user with its mapped identity and its workspace provisioned for it,
/// under a root other uids may traverse (as a real workspace root is).
fn mapped_user(h: &Harness, prefix: &str) -> (UserId, Workspace, GuestUser) {
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = RunnerConfig::defaults(h.dir.path());
    let user = UserId::new(unique_id(prefix)).unwrap();
    let decision = resolve_guest_user(&config, &user, SandboxTier::Container, 0).unwrap();
    let guest = decision.run_as.expect("a root runner maps guests");
    let ws = Workspace::provision_for(
        &config.workspace_root,
        &user,
        &MountOverrides::default(),
        Some(guest),
    )
    .unwrap();
    (user, ws, guest)
}

/// Launches the probe guest running `command` as `user`'s runtime, under
/// `run_as`.
async fn launch_probe(
    h: &Harness,
    command: Vec<String>,
    user: &UserId,
    ws: &Workspace,
    run_as: GuestUser,
) -> LaunchedGuest {
    let mut config = h.config(DockerTier::Container, &h.probe_image().await);
    config.docker.command = Some(command);
    let backend = h.backend(config);
    let mut s = spec(
        &backend,
        GuestRole::Runtime,
        user,
        ws,
        ResourceLimits::default(),
    );
    s.run_as = Some(run_as);
    backend.launch(s).await.expect("launch")
}

fn container_id(g: &LaunchedGuest) -> String {
    match &g.identity {
        GuestIdentity::Container { id, .. } => id.clone(),
        other => panic!("not a container: {other:?}"),
    }
}

#[tokio::test]
async fn a_container_guest_runs_as_its_users_uid_with_default_limits() {
    if !runner_tests::root_or_skip("a_container_guest_runs_as_its_users_uid_with_default_limits") {
        return;
    }
    let Some(h) = Harness::new().await else {
        return;
    };
    let (user, ws, guest_user) = mapped_user(&h, "uid");
    assert_ne!(guest_user.uid, 0);
    let mut guest = launch_probe(&h, vec!["hardening".into()], &user, &ws, guest_user).await;
    let id = container_id(&guest);
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    // The guest could read its 0400 envelope file: it owns it.
    out[0].line("envelope=").await;

    let info = h.docker.inspect_container(&id, None).await.unwrap();
    let want = format!("{}:{}", guest_user.uid, guest_user.gid);
    assert_eq!(info.config.unwrap().user.as_deref(), Some(want.as_str()));
    let hc = info.host_config.unwrap();
    assert_eq!(
        hc.pids_limit,
        Some(i64::from(limits::DEFAULT_MAX_PROCESSES))
    );
    let mib = i64::try_from(limits::DEFAULT_MAX_MEMORY_MIB).unwrap();
    assert_eq!(hc.memory, Some(mib * 1024 * 1024));
    timeout(Duration::from_secs(60), guest.control.stop(GRACE))
        .await
        .expect("stop is bounded")
        .expect("stop");
    guest.control.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_setuid_file_from_a_container_guest_gives_other_uids_nothing() {
    if !runner_tests::root_or_skip("a_setuid_file_from_a_container_guest_gives_other_uids_nothing")
    {
        return;
    }
    let Some(h) = Harness::new().await else {
        return;
    };
    let (user, ws, guest_user) = mapped_user(&h, "suid");
    let shared = ws.shared.to_string_lossy().into_owned();
    let command = vec!["setuid-copy".into(), shared];
    let mut guest = launch_probe(&h, command, &user, &ws, guest_user).await;
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    let stdout = out[0].until_eof().await;
    let report = key_values(&stdout);
    let stderr = String::from_utf8_lossy(&out[1].until_eof().await).into_owned();
    let inside = report
        .get("uids")
        .unwrap_or_else(|| panic!("no uids line: {report:?} {stderr}"));
    let want = vec![guest_user.uid.to_string(); 4].join(" ");
    assert_eq!(inside, &want, "the container process's uids");
    let planted = Path::new(
        report
            .get("setuid_file")
            .unwrap_or_else(|| panic!("the guest planted nothing: {report:?} {stderr}")),
    );

    // It really is a setuid file, and the most it could give is the
    // guest's own unprivileged uid.
    let meta = std::fs::metadata(planted).unwrap();
    assert_ne!(meta.mode() & 0o4000, 0, "the guest set the setuid bit");
    assert_eq!(meta.uid(), guest_user.uid);

    // Another local user tries it. Through a shell: setpriv itself still
    // holds root's capabilities when it execs (they drop at the exec), so
    // it would resolve the path past directory permissions no other user
    // has. The shell runs without them, as the neighbour really would.
    let run = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NEIGHBOUR}"),
            &format!("--regid={NEIGHBOUR}"),
            "--clear-groups",
            "/bin/sh",
            "-c",
            "exec \"$0\" whoami",
        ])
        .arg(planted)
        .output()
        .expect("setpriv runs");
    let printed = key_values(&run.stdout);
    match printed.get("uids") {
        // The exec failed (it cannot even reach the file).
        None => assert!(!run.status.success(), "{run:?}"),
        Some(uids) => assert!(
            uids.split_whitespace()
                .all(|u| u != guest_user.uid.to_string()),
            "another uid ran as the guest: {uids}"
        ),
    }
    guest.control.cleanup().await.expect("cleanup");
}
