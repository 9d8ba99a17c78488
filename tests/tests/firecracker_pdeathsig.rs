//! micro_vm tier: a VM never outlives a runner that died without stopping
//! it (parent-death signal on the firecracker process).
//!
//! The "runner" is this test executable re-run with only the ignored helper
//! selected: it launches a hanging VM, prints firecracker's pid and waits.
//! The test then SIGKILLs that runner.

use runner_core::backend::SandboxBackend;
use runner_tests::firecracker::*;
use runner_tests::{kvm_or_skip, process_alive};
use runner_types::GuestRole;
use std::time::Duration;

const HELPER: &str = "helper_runner_that_launches_a_vm";
const HELPER_ENV: &str = "FIRECRACKER_PDEATHSIG_HELPER";

#[tokio::test]
async fn vm_dies_with_its_runner() {
    if !kvm_or_skip("vm_dies_with_its_runner") {
        return;
    }
    // Fetch the binary and build the kernel here, not in the helper.
    runner_tests::firecracker_binary();
    runner_tests::test_kernel();
    let (runner, vm_pid) = runner_tests::spawn_reporting_helper(
        HELPER,
        (HELPER_ENV, std::ffi::OsStr::new("1")),
        "vm_pid=",
        PROMPT,
    );
    let vm_pid: u32 = vm_pid.parse().unwrap();
    assert!(
        process_alive(vm_pid),
        "VM not running while its runner does"
    );
    runner_tests::sigkill_runner(runner).await;
    assert!(
        runner_tests::wait_gone(vm_pid, PROMPT).await,
        "firecracker {vm_pid} outlived its runner"
    );
}

/// The runner process of [`vm_dies_with_its_runner`]; does nothing unless
/// that test started it.
#[tokio::test]
#[ignore = "helper process for vm_dies_with_its_runner"]
async fn helper_runner_that_launches_a_vm() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let fx = Fixture::new("hang", "hang");
    let backend = fx.backend();
    let guest = backend
        .launch(fx.spec(GuestRole::Runtime, &backend))
        .await
        .unwrap();
    println!("vm_pid={}", guest.identity.pid().unwrap());
    // Wait to be killed; bounded so a broken parent cannot leave us behind.
    let mut exit = guest.exit.clone();
    let _ = tokio::time::timeout(Duration::from_secs(60), exit.wait()).await;
}
