//! Process backend, exits: codes and signals are reported as they happened.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runner_tests::process::*;
use runner_types::{ExitStatus, GuestRole};

#[tokio::test]
async fn exit_code_is_reported() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&["--exit-after-ms", "0", "--exit-code", "3"]));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
        .await
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Code(3));
    assert!(!exit.oom_killed);
    assert!(exit.at_unix_ms > 0);
    // stop() on an exited guest returns that exit without signalling.
    assert_eq!(guest.control.stop(PROMPT).await.unwrap(), exit);
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&["--heartbeat-ms", "60000"]));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let (mut out, _err) = take_outputs(&mut guest);
    out.until("ack", PROMPT).await;
    let pid = guest.identity.pid().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
        .await
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(9));
    assert!(wait_dead(pid, PROMPT).await);
}

#[tokio::test]
async fn every_watch_sees_the_exit() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&["--exit-after-ms", "50", "--exit-code", "0"]));
    let guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let mut a = guest.exit.clone();
    let mut b = guest.exit.clone();
    let (ea, eb) = tokio::time::timeout(PROMPT, async { tokio::join!(a.wait(), b.wait()) })
        .await
        .unwrap();
    assert_eq!(ea, eb);
    assert_eq!(ea.status, ExitStatus::Code(0));
}
