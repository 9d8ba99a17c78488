//! Process backend: a guest never outlives a runner that died without
//! stopping it (parent-death signal).
//!
//! The "runner" here is this test executable re-run as a child process with
//! only the ignored helper test selected: it launches a demo guest, prints
//! the guest's pid, and waits. The test then SIGKILLs that runner.

use runner_tests::process::*;
use runner_types::GuestRole;
use std::time::Duration;

const HELPER: &str = "helper_runner_that_launches_a_guest";
const HELPER_ENV: &str = "PROCESS_PDEATHSIG_HELPER";

#[tokio::test]
async fn guest_dies_with_its_runner() {
    // Build the guest here: the helper must not race the build.
    let guest_program = runner_tests::guest_binary("demo-guest");
    let (runner, guest_pid) = runner_tests::spawn_reporting_helper(
        HELPER,
        (HELPER_ENV, guest_program.as_os_str()),
        "guest_pid=",
        PROMPT,
    );
    let guest_pid: u32 = guest_pid.parse().unwrap();
    assert!(!pid_dead(guest_pid), "guest runs while its runner does");
    runner_tests::sigkill_runner(runner).await;
    assert!(
        wait_dead(guest_pid, PROMPT).await,
        "guest {guest_pid} outlived its runner"
    );
}

/// The runner process of [`guest_dies_with_its_runner`]; does nothing unless
/// that test started it.
#[tokio::test]
#[ignore = "helper process for guest_dies_with_its_runner"]
async fn helper_runner_that_launches_a_guest() {
    let Some(program) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let fx = Fixture::new();
    let mut cmd = demo_at(program.into(), &["--heartbeat-ms", "60000"]);
    cmd.env.clear();
    let backend = runtime_only(cmd);
    let guest = launch(&fx, &backend, GuestRole::Runtime).await;
    println!("guest_pid={}", guest.identity.pid().unwrap());
    // Wait to be killed; bounded so a broken parent cannot leave us behind.
    let mut exit = guest.exit.clone();
    let _ = tokio::time::timeout(Duration::from_secs(60), exit.wait()).await;
}

const HELPER_AS_GUEST: &str = "helper_runner_that_launches_a_guest_as_another_uid";

/// The kernel clears the parent-death signal when a process changes its
/// credentials: it must be armed after the child drops to the guest's uid.
#[tokio::test]
async fn guest_running_as_another_uid_dies_with_its_runner() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
        eprintln!("skipping: needs root");
        return;
    }
    let guest_program = runner_tests::guest_binary("demo-guest");
    let (runner, guest_pid) = runner_tests::spawn_reporting_helper(
        HELPER_AS_GUEST,
        (HELPER_ENV, guest_program.as_os_str()),
        "guest_pid=",
        PROMPT,
    );
    let guest_pid: u32 = guest_pid.parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{guest_pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains(&GUEST_UID.to_string()), "{uid_line}");
    runner_tests::sigkill_runner(runner).await;
    assert!(
        wait_dead(guest_pid, PROMPT).await,
        "guest {guest_pid} (uid {GUEST_UID}) outlived its runner"
    );
}

/// An unprivileged uid for the guest of the helper below.
const GUEST_UID: u32 = 1_900_061_234;

/// The runner process of [`guest_running_as_another_uid_dies_with_its_runner`].
#[tokio::test]
#[ignore = "helper process for guest_running_as_another_uid_dies_with_its_runner"]
async fn helper_runner_that_launches_a_guest_as_another_uid() {
    use runner_core::backend::SandboxBackend;
    use runner_core::identity::GuestUser;
    let Some(program) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let guest = GuestUser {
        uid: GUEST_UID,
        gid: GUEST_UID,
    };
    let mut fx = Fixture::new();
    let root = fx.dir.path().join("as-guest");
    fx.workspace = runner_core::Workspace::provision_for(
        &root,
        &fx.user,
        &runner_core::workspace::MountOverrides::default(),
        Some(guest),
    )
    .unwrap();
    let mut cmd = demo_at(program.into(), &["--heartbeat-ms", "60000"]);
    cmd.env.clear();
    let backend = runtime_only(cmd);
    let mut spec = fx.spec(
        GuestRole::Runtime,
        fx.envelope(GuestRole::Runtime, &backend),
    );
    spec.run_as = Some(guest);
    let launched = backend.launch(spec).await.unwrap();
    println!("guest_pid={}", launched.identity.pid().unwrap());
    let mut exit = launched.exit.clone();
    let _ = tokio::time::timeout(Duration::from_secs(60), exit.wait()).await;
}
