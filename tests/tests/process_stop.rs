//! Process backend, stopping: SIGTERM with a grace period, then SIGKILL to
//! the whole process group; nothing of the guest's tree survives, and its
//! output pipes reach EOF.

use runner_core::backend::process::STOP_KILL_WAIT;
use runner_tests::process::*;
use runner_types::{ExitStatus, GuestRole};
use std::time::Duration;

#[tokio::test]
async fn well_behaved_guest_stops_on_sigterm() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&["--heartbeat-ms", "20"]));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let (mut out, mut err) = take_outputs(&mut guest);
    out.until("heartbeat n=1", PROMPT).await;
    err.until("heartbeat-err n=1", PROMPT).await;
    let exit = guest.control.stop(PROMPT).await.unwrap();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert_eq!(guest.exit.get(), Some(exit));
    let rest = out.rest_until_eof(PROMPT).await;
    assert_eq!(rest.last().map(String::as_str), Some("shutdown"));
    err.rest_until_eof(PROMPT).await;
    // Stopping again reports the same exit; cleanup is harmless.
    assert_eq!(guest.control.stop(PROMPT).await.unwrap(), exit);
    guest.control.cleanup().await.unwrap();
}

#[tokio::test]
async fn stubborn_guest_and_its_grandchild_are_killed() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&[
        "--ignore-sigterm",
        "--spawn-grandchild",
        "--heartbeat-ms",
        "60000",
    ]));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let pid = guest.identity.pid().unwrap();
    let (mut out, mut err) = take_outputs(&mut guest);
    let grandchild: u32 = out.until("grandchild_pid=", PROMPT).await.parse().unwrap();
    assert!(!pid_dead(pid) && !pid_dead(grandchild));

    let grace = Duration::from_millis(300);
    let exit = tokio::time::timeout(grace + STOP_KILL_WAIT + PROMPT, guest.control.stop(grace))
        .await
        .expect("stop is bounded")
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Signal(9));
    let rest = out.rest_until_eof(PROMPT).await;
    assert!(rest.iter().any(|l| l == "sigterm ignored"), "{rest:?}");
    assert!(!rest.iter().any(|l| l == "shutdown"), "{rest:?}");
    err.rest_until_eof(PROMPT).await;
    assert!(wait_dead(pid, PROMPT).await, "guest {pid} still runs");
    assert!(
        wait_dead(grandchild, PROMPT).await,
        "grandchild {grandchild} still runs"
    );
    guest.control.cleanup().await.unwrap();
}

#[tokio::test]
async fn grandchild_dies_with_a_guest_that_exits_on_its_own() {
    let fx = Fixture::new();
    let backend = runtime_only(demo(&[
        "--spawn-grandchild",
        "--exit-after-ms",
        "0",
        "--exit-code",
        "4",
    ]));
    let mut guest = launch(&fx, &backend, GuestRole::Runtime).await;
    let (mut out, _err) = take_outputs(&mut guest);
    let grandchild: u32 = out.until("grandchild_pid=", PROMPT).await.parse().unwrap();
    let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
        .await
        .unwrap();
    assert_eq!(exit.status, ExitStatus::Code(4));
    // EOF proves nothing holds the pipe any more.
    let rest = out.rest_until_eof(PROMPT).await;
    assert_eq!(rest.last().map(String::as_str), Some("exiting code=4"));
    assert!(
        wait_dead(grandchild, PROMPT).await,
        "grandchild {grandchild} still runs"
    );
}
