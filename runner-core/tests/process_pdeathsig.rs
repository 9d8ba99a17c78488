//! Process backend: a guest never outlives a runner that died without
//! stopping it (parent-death signal).
//!
//! The "runner" here is this test executable re-run as a child process with
//! only the ignored helper test selected: it launches a demo guest, prints
//! the guest's pid, and waits. The test then SIGKILLs that runner.

mod process_support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use process_support::*;
use runner_types::GuestRole;
use std::time::Duration;

const HELPER: &str = "helper_runner_that_launches_a_guest";
const HELPER_ENV: &str = "PROCESS_PDEATHSIG_HELPER";

#[tokio::test]
async fn guest_dies_with_its_runner() {
    // Build the guest here: the helper must not race the build.
    let guest_program = runner_tests::guest_binary("demo-guest");
    let (mut runner, guest_pid) = runner_tests::spawn_reporting_helper(
        HELPER,
        (HELPER_ENV, guest_program.as_os_str()),
        "guest_pid=",
        PROMPT,
    );
    let guest_pid: u32 = guest_pid.parse().unwrap();
    assert!(!pid_dead(guest_pid), "guest runs while its runner does");
    kill(Pid::from_raw(runner.id() as i32), Signal::SIGKILL).unwrap();
    let status = tokio::task::spawn_blocking(move || runner.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
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
