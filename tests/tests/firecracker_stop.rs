//! Stopping a real Firecracker VM whose guest ignores Ctrl-Alt-Del: the stop
//! is bounded by grace plus the kill allowance, the exit is SIGKILL, no
//! firecracker process remains, and cleanup removes the per-launch files;
//! the VMM itself starts clean and dies with its dropped control.

use runner_core::backend::firecracker::{FirecrackerBackend, LaunchPaths};
use runner_core::backend::{GuestIdentity, LaunchedGuest, SandboxBackend};
use runner_tests::firecracker::*;
use runner_tests::procfs::status_field;
use runner_types::{ExitStatus, GuestRole, LogStream};
use std::time::Duration;

/// Launches `fx`'s sidecar VM; the guest and its firecracker pid.
async fn launch_sidecar(fx: &Fixture, backend: &FirecrackerBackend) -> (LaunchedGuest, u32) {
    let guest = backend
        .launch(fx.spec(GuestRole::Sidecar, backend))
        .await
        .unwrap();
    let GuestIdentity::MicroVm { pid } = guest.identity else {
        panic!("identity {:?}", guest.identity);
    };
    (guest, pid)
}

#[tokio::test]
async fn a_hanging_vm_is_killed_after_grace_and_leaves_nothing_behind() {
    if !runner_tests::kvm_or_skip("a_hanging_vm_is_killed_after_grace") {
        return;
    }
    let fx = Fixture::new("hang", "hang");
    let backend = fx.backend();
    let paths = LaunchPaths::new(&fx.workspace.run, GuestRole::Sidecar);
    let api_socket = paths.api_socket.to_str().unwrap().to_owned();

    let (mut guest, pid) = launch_sidecar(&fx, &backend).await;
    let drain = await_hang(&mut guest).await;
    assert!(runner_tests::process_alive(pid));
    assert_eq!(runner_tests::pids_with_arg(&api_socket), vec![pid]);
    assert_eq!(guest.exit.get(), None);

    let grace = Duration::from_millis(300);
    let exit = tokio::time::timeout(grace + PROMPT, guest.control.stop(grace))
        .await
        .expect("stop is bounded")
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(9));
    assert_eq!(guest.exit.get(), Some(exit));
    assert!(
        !runner_tests::process_alive(pid),
        "firecracker {pid} still alive"
    );
    assert!(runner_tests::pids_with_arg(&api_socket).is_empty());
    drain.await.unwrap(); // console reached EOF

    // A second stop returns the same exit without doing anything.
    assert_eq!(guest.control.stop(grace).await.unwrap(), exit);
    assert!(paths.api_socket.exists() && paths.config.exists());
    guest.control.cleanup().await.unwrap();
    for gone in [&paths.config, &paths.api_socket, &paths.vsock_socket] {
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
}

#[tokio::test]
async fn a_relaunch_after_a_crash_replaces_stale_sockets() {
    if !runner_tests::kvm_or_skip("a_relaunch_after_a_crash_replaces_stale_sockets") {
        return;
    }
    let fx = Fixture::new("hang", "exit");
    let backend = fx.backend();
    let spec = fx.spec(GuestRole::Runtime, &backend);
    let paths = LaunchPaths::new(&fx.workspace.run, GuestRole::Runtime);

    let mut first = backend.launch(spec.clone()).await.unwrap();
    let (_, console) = read_until(
        take_output(&mut first, LogStream::Stdout),
        "TESTKERNEL hang\n",
    )
    .await;
    let _drain = tokio::spawn(read_to_end(console));
    // Kill without cleanup, as a crashed runner would leave it.
    first.control.stop(Duration::ZERO).await.unwrap();
    assert!(paths.api_socket.exists() && paths.vsock_socket.exists());

    let mut second = backend.launch(spec).await.unwrap();
    let (_, console) = read_until(
        take_output(&mut second, LogStream::Stdout),
        "TESTKERNEL hang\n",
    )
    .await;
    let _drain = tokio::spawn(read_to_end(console));
    let exit = second.control.stop(Duration::ZERO).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(9));
    second.control.cleanup().await.unwrap();
}

/// The VMM is started the way process-tier guests are (created without
/// copying the runner): in a process group of its own, with an empty
/// environment, stdin from `/dev/null`, the clean start's umask and
/// `no_new_privs`; and dropping its control kills it.
#[tokio::test]
async fn the_vmm_starts_clean_in_its_own_group_and_dies_with_its_control() {
    if !runner_tests::kvm_or_skip("the_vmm_starts_clean_in_its_own_group") {
        return;
    }
    let fx = Fixture::new("hang", "hang");
    let backend = fx.backend();
    let (mut guest, pid) = launch_sidecar(&fx, &backend).await;
    let _drain = await_hang(&mut guest).await;

    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(pgid.as_raw() as u32, pid, "its own process group");
    assert_ne!(pgid, nix::unistd::getpgrp(), "not the runner's group");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&environ)
    );
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
    assert_eq!(status_field(pid, "Umask"), "0077");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    drop(guest);
    assert!(
        runner_tests::wait_gone(pid, PROMPT).await,
        "firecracker {pid} outlived its dropped control"
    );
}
