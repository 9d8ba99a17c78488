//! micro_vm tier as root: a jailed VM outlives a SIGKILLed runner (the
//! jailer's uid change clears the parent-death signal), and the next session
//! start for that user ends it and removes its jail.
//!
//! The "runner" is this test executable re-run with only the ignored helper
//! selected: it launches a jailed, hanging VM in a workspace under the
//! directory the test passes, prints firecracker's pid and the workspace
//! directory, and waits. The test SIGKILLs it, then runs the next start.

use runner_core::backend::SandboxBackend;
use runner_core::backend::firecracker::{FirecrackerBackend, plan, reaper};
use runner_core::identity::GuestUser;
use runner_core::workspace::MountOverrides;
use runner_tests::firecracker::*;
use runner_tests::{kvm_or_skip, process_alive};
use runner_types::GuestRole;
use std::path::PathBuf;
use std::time::Duration;

const HELPER: &str = "helper_runner_with_a_jailed_vm";
const HELPER_ENV: &str = "FIRECRACKER_JAIL_REAP_HELPER_DIR";
const GUEST: GuestUser = GuestUser {
    uid: 61201,
    gid: 61201,
};

#[tokio::test]
async fn the_next_start_ends_a_jailed_vm_left_by_a_killed_runner() {
    if !kvm_or_skip("the_next_start_ends_a_jailed_vm_left_by_a_killed_runner") {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the jailer tests run as root"
    );
    runner_tests::firecracker_binary();
    runner_tests::test_kernel();
    let parent = tempfile::tempdir().unwrap();
    let (runner, report) = runner_tests::spawn_reporting_helper(
        HELPER,
        (HELPER_ENV, parent.path().as_os_str()),
        "jailed_vm=",
        PROMPT,
    );
    let (pid, dir) = report.split_once(' ').unwrap();
    let vm_pid: u32 = pid.parse().unwrap();
    let dir = PathBuf::from(dir);
    assert!(
        process_alive(vm_pid),
        "VM not running while its runner does"
    );

    runner_tests::sigkill_runner(runner).await;
    // The point of the reaper: the jailed VM did not die with its runner.
    assert!(
        process_alive(vm_pid),
        "expected the jailed VM to survive its runner"
    );

    // The next start for the same user, with a fresh backend on the same
    // templates (the helper wrote them into its directory).
    let scratch = Fixture::new("hang", "hang");
    let mut config = scratch.jailed_backend().config().clone();
    config.runtime_template = Some(dir.join("runtime.json"));
    config.sidecar_template = Some(dir.join("sidecar.json"));
    let backend = FirecrackerBackend::new(config);
    let user = runner_core::UserId::new("alice").unwrap();
    let workspace =
        runner_core::Workspace::provision(&dir, &user, &MountOverrides::default()).unwrap();
    let layout = plan::layout_of(backend.config(), &workspace.run, GuestRole::Runtime);
    assert!(layout.instance_dir.exists());
    backend.prepare_session(&user, &workspace).await.unwrap();
    assert!(
        !process_alive(vm_pid),
        "firecracker {vm_pid} survived the next start"
    );
    assert!(
        !layout.instance_dir.exists(),
        "the old jail was not removed"
    );
    for cgroup in layout.cgroup_dirs() {
        let left = reaper::cgroup_procs(&cgroup);
        assert!(
            left.iter().all(|p| !process_alive(*p)),
            "{} still holds {left:?}",
            cgroup.display()
        );
    }
    assert!(!reaper::record_path(&workspace.run, GuestRole::Runtime).exists());
}

/// The runner of the test above; does nothing unless that test started it.
#[tokio::test]
#[ignore = "helper process for the_next_start_ends_a_jailed_vm_left_by_a_killed_runner"]
async fn helper_runner_with_a_jailed_vm() {
    let Some(parent) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let dir = tempfile::TempDir::new_in(parent).unwrap();
    let fx = Fixture::for_user("alice", dir, "hang", "hang");
    let backend = fx.jailed_backend();
    backend
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    let mut spec = fx.spec(GuestRole::Runtime, &backend);
    spec.run_as = Some(GUEST);
    let mut guest = backend.launch(spec).await.unwrap();
    let _drain = await_hang(&mut guest).await;
    println!(
        "jailed_vm={} {}",
        guest.identity.pid().unwrap(),
        fx.dir.path().display()
    );
    // Wait to be killed; bounded so a broken parent cannot leave us behind.
    let mut exit = guest.exit.clone();
    let _ = tokio::time::timeout(Duration::from_secs(60), exit.wait()).await;
}
