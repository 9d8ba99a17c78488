//! Process tier, as root: guests run under their user's own uid, start
//! clean (umask 077, fds 0-2 only, `no_new_privs`, the runner's original
//! rlimits) and get default limits without `[resources]`.
//!
//! The guests are `/bin/sh` scripts; the test reads their `/proc/<pid>`
//! files once the script has said `ready`.

use nix::sys::resource::{Resource, getrlimit};
use nix::sys::stat::{Mode, umask};
use runner_core::backend::clean_start::StartRlimits;
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{GuestIdentity, LaunchedGuest, SandboxBackend};
use runner_core::config::{GuestCommand, RunnerConfig};
use runner_core::identity::{GuestUser, resolve_guest_user};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_tests::process::*;
use runner_tests::procfs::{limit, status_field};
use runner_types::{GuestRole, ResourceLimits, SandboxTier};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn sh(script: &str) -> ProcessBackend {
    ProcessBackend::new(ProcessBackendConfig {
        runtime: GuestCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
        },
        sidecar: None,
        search_path: None,
    })
}

/// A workspace root other uids may traverse, as a real one is (a temp dir
/// is 0700).
fn open_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

struct Session {
    workspace: Workspace,
    guest: GuestUser,
}

/// Resolves `user`'s guest identity under `root` and provisions for it.
fn session(config: &RunnerConfig, user: &str) -> Session {
    let user = UserId::new(user).unwrap();
    let decision = resolve_guest_user(config, &user, SandboxTier::Process, 0).unwrap();
    let guest = decision.run_as.expect("a root runner maps guests");
    let workspace = Workspace::provision_for(
        &config.workspace_root,
        &user,
        &MountOverrides::default(),
        Some(guest),
    )
    .unwrap();
    Session { workspace, guest }
}

async fn launch_as(backend: &ProcessBackend, s: &Session, user: &str) -> LaunchedGuest {
    let fx_user = UserId::new(user).unwrap();
    let spec = runner_core::backend::LaunchSpec {
        run_as: Some(s.guest),
        role: GuestRole::Runtime,
        user_id: fx_user.clone(),
        session_id: "s1".into(),
        workspace: s.workspace.clone(),
        envelope: runner_tests::envelope::envelope_for(
            backend,
            &fx_user,
            &s.workspace,
            GuestRole::Runtime,
            &Default::default(),
        ),
        extra_env: BTreeMap::new(),
        resources: ResourceLimits::default(),
    };
    tokio::time::timeout(PROMPT, backend.launch(spec))
        .await
        .expect("launch is bounded")
        .expect("launch succeeds")
}

fn pid_of(guest: &LaunchedGuest) -> u32 {
    match guest.identity {
        GuestIdentity::Process { pid } => pid,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn guest_starts_clean_under_its_own_uid() {
    if !runner_tests::root_or_skip("guest_starts_clean_under_its_own_uid") {
        return;
    }
    // What a careless runner would pass on: a descriptor without
    // close-on-exec and a permissive umask.
    let leaked = nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDONLY, Mode::empty()).unwrap();
    let old_umask = umask(Mode::empty());
    let dir = open_root();
    let config = RunnerConfig::defaults(dir.path());
    let s = session(&config, "alice");
    // The runner's open-file limit as it started, before it raised it.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let started = StartRlimits::capture().with(Resource::RLIMIT_NOFILE, 200, hard);
    // The shell stays the inspected process: an `exec` right after `ready`
    // could be caught with the dynamic loader's transient fd 3 open.
    let backend = sh("echo ready; while :; do sleep 1000; done").with_start_rlimits(started);
    let mut guest = launch_as(&backend, &s, "alice").await;
    umask(old_umask);
    let (mut out, _err) = take_outputs(&mut guest);
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("ready"));
    let pid = pid_of(&guest);

    let uid = s.guest.uid.to_string();
    assert_ne!(s.guest.uid, 0);
    let uids: Vec<String> = status_field(pid, "Uid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, [uid.as_str(); 4]);
    assert!(
        status_field(pid, "Gid")
            .split_whitespace()
            .all(|g| g == uid)
    );
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Umask"), "0077");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2], "the test holds fd {leaked:?} open");
    let (soft, _) = limit(pid, "Max open files");
    assert_eq!(soft, "200");
    // Limits the runner did not change are as the test process has them.
    let ours = std::process::id();
    assert_eq!(limit(pid, "Max stack size"), limit(ours, "Max stack size"));
    guest.control.stop(PROMPT).await.unwrap();
    drop(leaked);
}

#[tokio::test]
async fn guests_without_resources_get_default_limits() {
    if !runner_tests::root_or_skip("guests_without_resources_get_default_limits") {
        return;
    }
    let dir = open_root();
    let config = RunnerConfig::defaults(dir.path());
    let s = session(&config, "carol");
    let backend = sh("echo ready; exec sleep 1000");
    let mut guest = launch_as(&backend, &s, "carol").await;
    let (mut out, _err) = take_outputs(&mut guest);
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("ready"));
    let pid = pid_of(&guest);
    let want = runner_core::limits::DEFAULT_MAX_PROCESSES.to_string();
    assert_eq!(limit(pid, "Max processes"), (want.clone(), want));
    assert_eq!(
        limit(pid, "Max core file size"),
        ("0".to_owned(), "0".to_owned())
    );
    guest.control.stop(PROMPT).await.unwrap();
}

/// The script of a guest that writes `<name>` into its own `shared/` and
/// tries to read `other`: prints `wrote=<ok|failed>`, `read=<ok|denied>`.
fn writer(shared: &Path, name: &str, other: &Path) -> String {
    format!(
        "if echo secret > '{mine}'; then echo wrote=ok; else echo wrote=failed; fi; \
         if cat '{other}' >/dev/null 2>&1; then echo read=ok; else echo read=denied; fi; \
         exec sleep 1000",
        mine = shared.join(name).display(),
        other = other.display(),
    )
}

#[tokio::test]
async fn two_users_run_under_two_uids_and_keep_their_files_apart() {
    if !runner_tests::root_or_skip("two_users_run_under_two_uids_and_keep_their_files_apart") {
        return;
    }
    let dir = open_root();
    let config = RunnerConfig::defaults(dir.path());
    let alice = session(&config, "alice");
    let bob = session(&config, "bob");
    assert_ne!(alice.guest.uid, bob.guest.uid);
    assert!(alice.guest.uid != 0 && bob.guest.uid != 0);
    let alice_file = alice.workspace.shared.join("alice.txt");
    let bob_file = bob.workspace.shared.join("bob.txt");

    let a_backend = sh(&writer(&alice.workspace.shared, "alice.txt", &bob_file));
    let mut a = launch_as(&a_backend, &alice, "alice").await;
    let (mut a_out, _a_err) = take_outputs(&mut a);
    assert_eq!(a_out.next(PROMPT).await.as_deref(), Some("wrote=ok"));
    assert_eq!(a_out.next(PROMPT).await.as_deref(), Some("read=denied"));

    let b_backend = sh(&writer(&bob.workspace.shared, "bob.txt", &alice_file));
    let mut b = launch_as(&b_backend, &bob, "bob").await;
    let (mut b_out, _b_err) = take_outputs(&mut b);
    assert_eq!(b_out.next(PROMPT).await.as_deref(), Some("wrote=ok"));
    // Alice's file exists, and Bob's guest still cannot read it.
    assert!(alice_file.is_file());
    assert_eq!(b_out.next(PROMPT).await.as_deref(), Some("read=denied"));

    let uid_of = |g: &LaunchedGuest| {
        status_field(pid_of(g), "Uid")
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(uid_of(&a), alice.guest.uid);
    assert_eq!(uid_of(&b), bob.guest.uid);
    a.control.stop(PROMPT).await.unwrap();
    b.control.stop(PROMPT).await.unwrap();
}
