//! Session lifecycle with the fake backend: start order, restarts, failure,
//! ordered and bounded shutdown.

mod common;

use common::*;
use runner_actors::{Runner, SessionError, SessionEvent, SessionHandle, SessionOptions};
use runner_core::backend::LaunchError;
use runner_core::failure::FailureReason;
use runner_core::fake::{FakeBackend, FakeGuest, FakeLaunches, LaunchScript, StopBehavior};
use runner_core::health::SessionPhase;
use runner_core::readiness::{NOT_READY, Probe, ReadinessCheck};
use runner_types::{ExitStatus, GuestRole, GuestState, LogStream, SidecarTransport};
use std::time::Duration;
use tokio::sync::broadcast;

fn no_socket() -> SessionOptions {
    SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    }
}

/// A session for `user` on `runner` without a control socket; it must start.
async fn start_session(runner: &Runner, user: &str) -> SessionHandle {
    runner.start_session_with(user, no_socket()).await.unwrap()
}

/// Waits (bounded) for the session to fail; why it failed.
async fn session_failed(events: &mut broadcast::Receiver<SessionEvent>) -> FailureReason {
    let e = wait_event(events, |e| matches!(e, SessionEvent::SessionFailed { .. })).await;
    let SessionEvent::SessionFailed { reason } = e else {
        unreachable!()
    };
    reason
}

#[tokio::test]
async fn sidecar_starts_first_and_runtime_gets_its_endpoint() {
    let s = setup();
    let (fake, mut launches) = fake();
    // A slow sidecar launch: the runtime's still waits for it to return.
    fake.script(
        GuestRole::Sidecar,
        [LaunchScript::SucceedAfter(Duration::from_millis(300))],
    );
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "alice").await;

    let sidecar = launches.next(WAIT).await.unwrap();
    let runtime = launches.next(WAIT).await.unwrap();
    assert_eq!(sidecar.spec.role, GuestRole::Sidecar);
    assert_eq!(runtime.spec.role, GuestRole::Runtime);
    assert_eq!(sidecar.spec.envelope.sidecar_endpoint, None);
    let ep = runtime.spec.envelope.sidecar_endpoint.clone().unwrap();
    assert_eq!(ep.transport, SidecarTransport::Unix);
    assert_eq!(
        ep.address,
        session.workspace().sidecar_socket().display().to_string()
    );
    assert_eq!(fake.prepared().len(), 1);

    let health = session.health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.guests.len(), 2);
    assert_eq!(health.guests[0].role, GuestRole::Sidecar);
    assert_eq!(health.runtime_pid, Some(runtime.pid));
    session.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sidecar.stop_calls(), 1);
    assert_eq!(runtime.stop_calls(), 1);
}

#[tokio::test]
async fn overlapping_launches_start_the_runtime_while_the_sidecars_launch_goes_on() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_overlapping_launches(true);
    fake.script(
        GuestRole::Sidecar,
        [LaunchScript::SucceedAfter(Duration::from_millis(600))],
    );
    fake.script(
        GuestRole::Runtime,
        [LaunchScript::SucceedAfter(Duration::from_millis(300))],
    );
    let runner = runner(s.config.clone(), &fake);
    let start = runner.start_session_with("alice", no_socket());
    tokio::pin!(start);

    // The runtime's launch did not wait for the slow sidecar's: when the
    // runtime's returned, the sidecar's was still under way (both had
    // begun, and no sidecar guest had come of it yet).
    let runtime = tokio::select! {
        r = &mut start => panic!("start finished before any guest launched: {r:?}"),
        g = launches.next(WAIT) => g.unwrap(),
    };
    assert_eq!(runtime.spec.role, GuestRole::Runtime);
    let begun: Vec<_> = fake.launches().iter().map(|l| l.role).collect();
    assert_eq!(begun.len(), 2, "{begun:?}");
    assert!(begun.contains(&GuestRole::Sidecar), "{begun:?}");
    let session = start.await.unwrap();
    let sidecar = launches.next(WAIT).await.unwrap();
    assert_eq!(sidecar.spec.role, GuestRole::Sidecar);
    let ep = runtime.spec.envelope.sidecar_endpoint.clone().unwrap();
    assert_eq!(
        ep.address,
        session.workspace().sidecar_socket().display().to_string()
    );
    // The start returned only once both had launched.
    let health = session.health().await.unwrap();
    assert!(health.healthy, "{health:?}");
    assert!(
        health.guests.iter().all(|g| g.state == GuestState::Running),
        "{health:?}"
    );
    session.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(sidecar.stop_calls(), 1);
    assert_eq!(runtime.stop_calls(), 1);
}

/// Starts a session for bob on `fake` with `failing`'s launch scripted to
/// fail; the launch error the start returned, which must name `failing`.
async fn start_with_failing_launch(
    s: &Setup,
    fake: &FakeBackend,
    failing: GuestRole,
) -> LaunchError {
    fake.script(failing, [LaunchScript::Fail]);
    let runner = runner(s.config.clone(), fake);
    match runner.start_session_with("bob", no_socket()).await {
        Err(SessionError::Launch { role, source }) if role == failing => source,
        other => panic!("expected {failing}'s launch error, got {other:?}"),
    }
}

/// `guest` (launched beside a failed one) was stopped and cleaned up.
fn assert_torn_down(guest: &FakeGuest) {
    let role = guest.spec.role;
    assert_eq!(guest.stop_calls(), 1, "{role} was not stopped");
    assert!(guest.cleanup_calls() >= 1, "{role} was not cleaned up");
}

#[tokio::test]
async fn a_sidecar_launch_failure_launches_no_runtime() {
    let s = setup();
    let (fake, mut launches) = fake();
    start_with_failing_launch(&s, &fake, GuestRole::Sidecar).await;
    assert!(
        fake.launches().iter().all(|l| l.role == GuestRole::Sidecar),
        "a runtime launch began"
    );
    assert!(launches.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn an_overlapping_sidecar_launch_failure_stops_the_runtime_launched_beside_it() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_overlapping_launches(true);
    let err = start_with_failing_launch(&s, &fake, GuestRole::Sidecar).await;
    assert!(matches!(err, LaunchError::NotConfigured { .. }), "{err:?}");
    let runtime = launches.next(WAIT).await.unwrap();
    assert_eq!(runtime.spec.role, GuestRole::Runtime);
    assert_torn_down(&runtime);
    assert!(
        launches.next(Duration::from_millis(300)).await.is_none(),
        "a guest launched after the failed start"
    );
}

#[tokio::test]
async fn runtime_launch_failure_tears_the_sidecar_down() {
    let s = setup();
    let (fake, mut launches) = fake();
    let err = start_with_failing_launch(&s, &fake, GuestRole::Runtime).await;
    assert!(matches!(err, LaunchError::NotConfigured { .. }), "{err:?}");
    let sidecar = launches.next(WAIT).await.unwrap();
    assert_eq!(sidecar.spec.role, GuestRole::Sidecar);
    assert_torn_down(&sidecar);
}

#[tokio::test]
async fn a_control_socket_that_cannot_be_bound_stops_both_launched_guests() {
    let s = setup();
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let first = start_session(&runner, "carol").await;
    let socket = first.workspace().control_socket();
    first.shutdown(Duration::from_secs(10)).await.unwrap();
    sidecar_and_runtime(&mut launches).await;
    // A directory where the socket goes: the bind refuses it, after the
    // guests it overlaps with have launched.
    std::fs::create_dir(&socket).unwrap();
    let err = runner
        .start_session_with("carol", SessionOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::ControlSocketPath { .. }),
        "{err:?}"
    );
    let (sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    assert_eq!(runtime.stop_calls(), 1, "runtime was not stopped");
    assert_eq!(sidecar.stop_calls(), 1, "sidecar was not stopped");
    assert!(socket.is_dir(), "the directory in the way was touched");
}

#[tokio::test]
async fn crash_restarts_with_backoff_and_output_keeps_flowing_into_the_same_file() {
    let s = setup();
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "carol").await;
    let mut events = session.events();
    let (_sidecar, mut runtime) = sidecar_and_runtime(&mut launches).await;
    runtime
        .write(LogStream::Stdout, b"first life\n")
        .await
        .unwrap();
    runtime.close_output();
    runtime.exit(ExitStatus::Code(2));

    let e = wait_event(&mut events, |e| {
        matches!(e, SessionEvent::GuestRestarting { .. })
    })
    .await;
    assert!(matches!(
        e,
        SessionEvent::GuestRestarting {
            role: GuestRole::Runtime,
            attempt: 1,
            ..
        }
    ));
    let mut second = launches.next(WAIT).await.unwrap();
    assert_eq!(second.spec.role, GuestRole::Runtime);
    assert_eq!(second.spec.envelope, runtime.spec.envelope);
    second
        .write(LogStream::Stdout, b"second life\n")
        .await
        .unwrap();
    second.close_output();

    let log = session
        .workspace()
        .logs
        .join(LogStream::Stdout.file_name(GuestRole::Runtime));
    eventually(|| std::fs::read(&log).unwrap_or_default() == b"first life\nsecond life\n").await;
    let h = session.health().await.unwrap();
    let rt = guest_of(&h, GuestRole::Runtime);
    assert_eq!(rt.restarts, 1);
    assert_eq!(rt.last_exit.unwrap().status, ExitStatus::Code(2));
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn restart_limit_fails_the_session_in_health_and_events() {
    let s = setup();
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "dave").await;
    let mut events = session.events();
    let (_sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    runtime.exit(ExitStatus::Signal(11));
    // max_restarts = 3: the 4th crash inside the window gives up.
    for _ in 0..3 {
        let g = launches.next(WAIT).await.expect("relaunch");
        assert_eq!(g.spec.role, GuestRole::Runtime);
        g.exit(ExitStatus::Signal(11));
    }
    let reason = session_failed(&mut events).await;
    assert!(
        matches!(
            reason,
            FailureReason::RestartLimit {
                role: GuestRole::Runtime,
                restarts: 3,
                limit: 3,
                last: ExitStatus::Signal(11),
                ..
            }
        ),
        "{reason:?}"
    );
    let h = session.health().await.unwrap();
    assert!(!h.healthy);
    assert!(
        h.message.as_deref().unwrap_or("").contains("restarts"),
        "{h:?}"
    );
    let rt = guest_of(&h, GuestRole::Runtime);
    assert_eq!(rt.state, GuestState::Failed);
    assert!(matches!(session.phase(), SessionPhase::Failed { .. }));
    assert!(
        launches.next(Duration::from_millis(300)).await.is_none(),
        "relaunched after giving up"
    );
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn a_failed_relaunch_fails_the_session_naming_the_guest() {
    let s = setup();
    let (fake, mut launches) = fake();
    fake.script(
        GuestRole::Runtime,
        [LaunchScript::Succeed, LaunchScript::Fail],
    );
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "frank").await;
    let mut events = session.events();
    let (_sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    runtime.exit(ExitStatus::Code(3));
    let reason = session_failed(&mut events).await;
    assert!(
        matches!(
            reason,
            FailureReason::RelaunchFailed {
                role: GuestRole::Runtime,
                ..
            }
        ),
        "{reason:?}"
    );
    assert_eq!(session.phase(), SessionPhase::Failed { reason });
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn clean_exit_is_not_restarted_under_on_failure() {
    let s = setup();
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "erin").await;
    let mut events = session.events();
    let (_sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    runtime.exit(ExitStatus::Code(0));
    wait_event(&mut events, |e| {
        matches!(
            e,
            SessionEvent::GuestState {
                role: GuestRole::Runtime,
                state: GuestState::Exited
            }
        )
    })
    .await;
    assert!(launches.next(Duration::from_millis(300)).await.is_none());
    assert!(!session.health().await.unwrap().healthy);
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_with_stubborn_guests_and_open_streams() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_stop_behavior(StopBehavior::IgnoreTerm);
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "frank").await;
    let (sidecar, mut runtime) = sidecar_and_runtime(&mut launches).await;
    runtime
        .write(LogStream::Stderr, b"still talking")
        .await
        .unwrap();
    // Output stays open (like a grandchild holding the pipe): the pumps must
    // be cut at the drain timeout.
    let grace = s.config.shutdown.grace;
    let drain = s.config.shutdown.log_drain;
    let deadline = 2 * (grace + Duration::from_secs(3)) + drain + Duration::from_secs(5);
    let report = session
        .shutdown(deadline)
        .await
        .expect("shutdown within its deadline");
    assert_eq!(sidecar.exited().unwrap().status, ExitStatus::Signal(9));
    assert_eq!(runtime.exited().unwrap().status, ExitStatus::Signal(9));
    assert!(runtime.cleanup_calls() >= 1 && sidecar.cleanup_calls() >= 1);
    assert!(
        report.cut_streams.iter().any(|s| s == "oxydra-vm.stderr"),
        "{:?}",
        report.cut_streams
    );
    assert!(
        report.guests.iter().all(|g| g.state == GuestState::Stopped),
        "{:?}",
        report.guests
    );
    assert_eq!(session.phase(), SessionPhase::Stopped);
    let log = session
        .workspace()
        .logs
        .join(LogStream::Stderr.file_name(GuestRole::Runtime));
    assert_eq!(std::fs::read(log).unwrap(), b"still talking");
    drop(runtime);
}

#[tokio::test]
async fn shutdown_stops_the_runtime_before_the_sidecar_and_removes_the_socket() {
    let s = setup();
    let (fake, mut launches) = fake();
    // The runtime sits out its grace: the sidecar's stop must still wait.
    let fake = fake.with_stop_behavior(StopBehavior::IgnoreTerm);
    let runner = runner(s.config.clone(), &fake);
    let session = runner
        .start_session_with("gina", SessionOptions::default())
        .await
        .unwrap();
    let mut events = session.events();
    let (sidecar, runtime) = sidecar_and_runtime(&mut launches).await;
    let socket = session.control_socket().expect("serves control");
    assert!(socket.exists(), "{}", socket.display());

    session.shutdown(session.shutdown_bound()).await.unwrap();

    assert!(!socket.exists(), "socket left behind: {}", socket.display());
    assert_eq!(runtime.stop_calls(), 1);
    assert_eq!(sidecar.stop_calls(), 1);
    let mut stops = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("events until the shutdown completed")
            .expect("no event lost");
        match event {
            SessionEvent::GuestState { role, state }
                if matches!(state, GuestState::Stopping | GuestState::Stopped) =>
            {
                stops.push((role, state));
            }
            SessionEvent::ShutdownComplete => break,
            _ => {}
        }
    }
    assert_eq!(
        stops,
        [
            (GuestRole::Runtime, GuestState::Stopping),
            (GuestRole::Runtime, GuestState::Stopped),
            (GuestRole::Sidecar, GuestState::Stopping),
            (GuestRole::Sidecar, GuestState::Stopped),
        ]
    );
}

#[tokio::test]
async fn many_sessions_share_one_process_without_names_colliding() {
    let s = setup();
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let mut sessions = Vec::new();
    for i in 0..20 {
        sessions.push(
            runner
                .start_session_with(&format!("u{i}"), no_socket())
                .await
                .unwrap(),
        );
    }
    for _ in 0..40 {
        launches.next(WAIT).await.unwrap();
    }
    for s in &sessions {
        assert!(s.health().await.unwrap().healthy);
    }
    let shutdowns = sessions.iter().map(|s| s.shutdown(Duration::from_secs(10)));
    for r in futures::future::join_all(shutdowns).await {
        r.unwrap();
    }
}

#[tokio::test]
async fn no_sidecar_configured_runs_runtime_only_and_says_so() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_sidecar(false);
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "gina").await;
    let only = launches.next(WAIT).await.unwrap();
    assert_eq!(only.spec.role, GuestRole::Runtime);
    assert_eq!(only.spec.envelope.sidecar_endpoint, None);
    let h = session.health().await.unwrap();
    assert!(h.healthy);
    assert!(!h.startup_status.sidecar_available);
    assert!(degraded(&h, "sidecar_unavailable"));
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn bad_user_ids_are_refused_before_anything_starts() {
    let s = setup();
    let (fake, _launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    for bad in ["../etc", "a/b", "", "x\0y"] {
        let err = runner
            .start_session_with(bad, no_socket())
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::UserId(_)), "{bad:?}: {err:?}");
    }
    assert!(fake.launches().is_empty());
}

#[tokio::test]
async fn the_first_event_receiver_sees_the_start() {
    let s = setup();
    let (fake, _launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "hank").await;
    let mut events = session.events();
    let first = wait_event(&mut events, |e| {
        matches!(e, SessionEvent::GuestStarted { .. })
    })
    .await;
    assert!(
        matches!(
            first,
            SessionEvent::GuestStarted {
                role: GuestRole::Sidecar,
                ..
            }
        ),
        "{first:?}"
    );
    wait_event(&mut events, |e| {
        matches!(
            e,
            SessionEvent::GuestStarted {
                role: GuestRole::Runtime,
                ..
            }
        )
    })
    .await;
    // A later subscriber starts from now.
    let mut later = session.events();
    assert!(later.try_recv().is_err());
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Starts alice's session on `fake` with `slow`'s launch taking 1.5 s and
/// cancels the start once the other guest has launched; returns that
/// guest. Checks that the start resolved `Cancelled`, that the slow launch
/// was begun and abandoned (no guest came of it), and that the lock is free
/// again.
async fn cancel_while_launching(
    s: &Setup,
    fake: &FakeBackend,
    launches: &mut FakeLaunches,
    slow: GuestRole,
) -> FakeGuest {
    fake.script(
        slow,
        [LaunchScript::SucceedAfter(Duration::from_millis(1500))],
    );
    let runner = runner(s.config.clone(), fake);
    let cancel = tokio_util::sync::CancellationToken::new();
    let start = runner.start_session_cancellable("alice", no_socket(), cancel.clone());
    tokio::pin!(start);
    let launched = tokio::select! {
        r = &mut start => panic!("start finished before the cancel: {r:?}"),
        g = launches.next(WAIT) => g.unwrap(),
    };
    assert_ne!(launched.spec.role, slow);
    cancel.cancel();
    let err = tokio::time::timeout(WAIT, start)
        .await
        .expect("a cancelled start resolves")
        .unwrap_err();
    assert!(matches!(err, SessionError::Cancelled), "{err:?}");
    assert!(
        fake.launches().iter().any(|l| l.role == slow),
        "the {slow}'s launch never began"
    );
    assert!(
        launches.next(Duration::from_millis(1600)).await.is_none(),
        "the abandoned launch still produced a guest"
    );
    let again = start_session(&runner, "alice").await;
    again.shutdown(Duration::from_secs(10)).await.unwrap();
    launched
}

#[tokio::test]
async fn a_cancelled_start_resolves_after_everything_it_started_is_stopped() {
    let s = setup();
    let (fake, mut launches) = fake();
    // The runtime's launch is slow; the start is cancelled while it runs.
    // Everything the start launched was stopped before the cancel resolved.
    let sidecar = cancel_while_launching(&s, &fake, &mut launches, GuestRole::Runtime).await;
    assert_eq!(sidecar.stop_calls(), 1);
}

#[tokio::test]
async fn a_start_cancelled_during_overlapping_launches_stops_the_guest_that_launched() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_overlapping_launches(true);
    // The sidecar's launch is slow, the runtime's beside it is not; the
    // start is cancelled once the runtime runs, which is stopped.
    let runtime = cancel_while_launching(&s, &fake, &mut launches, GuestRole::Sidecar).await;
    assert_torn_down(&runtime);
}

#[tokio::test]
async fn force_shutdown_cuts_the_grace_of_a_stop_in_progress() {
    let s = setup();
    let (fake, mut launches) = fake();
    let fake = fake.with_stop_behavior(StopBehavior::IgnoreTerm);
    let mut config = s.config.clone();
    config.shutdown.grace = Duration::from_secs(60);
    let runner = runner(config, &fake);
    let session = start_session(&runner, "alice").await;
    let guests = [
        launches.next(WAIT).await.unwrap(),
        launches.next(WAIT).await.unwrap(),
    ];
    let stopping = session.clone();
    let graceful = tokio::spawn(async move { stopping.shutdown(Duration::from_secs(300)).await });
    let mut phase_seen = false;
    for _ in 0..200 {
        if session.phase() == SessionPhase::ShuttingDown {
            phase_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(phase_seen, "shutdown did not begin");
    session.force_shutdown();
    assert!(
        session.wait_stopped(runner_actors::FORCED_STOP_BOUND).await,
        "forced shutdown did not finish in its bound"
    );
    let report = tokio::time::timeout(WAIT, graceful)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.took < Duration::from_secs(60), "{report:?}");
    for g in &guests {
        assert!(g.exited().is_some(), "{:?} not stopped", g.spec.role);
    }
}

#[tokio::test]
async fn a_guest_not_ready_in_time_is_degraded_until_its_check_passes() {
    let mut s = setup();
    s.config.readiness.runtime = Some(ReadinessCheck {
        probe: Probe::File("ipc/up".into()),
        timeout: Duration::from_millis(50),
    });
    let (fake, mut launches) = fake();
    let runner = runner(s.config.clone(), &fake);
    let session = start_session(&runner, "nina").await;
    let (_sidecar, _runtime) = sidecar_and_runtime(&mut launches).await;
    let ready = |h: &runner_types::HealthStatus, role| {
        h.guests
            .iter()
            .find(|g| g.role == role)
            .and_then(|g| g.ready)
    };
    let not_ready = |h: &runner_types::HealthStatus| degraded(h, NOT_READY);
    let mut health = session.watch_health();
    let h = tokio::time::timeout(WAIT, health.wait_for(|h| not_ready(h)))
        .await
        .expect("not_ready within the bound")
        .unwrap()
        .clone();
    assert_eq!(ready(&h, GuestRole::Runtime), Some(false), "{h:?}");
    assert_eq!(ready(&h, GuestRole::Sidecar), None, "{h:?}");
    assert!(h.healthy, "not ready is degraded, not failed: {h:?}");

    std::fs::write(session.workspace().ipc.join("up"), "").unwrap();
    let h = tokio::time::timeout(
        WAIT,
        health.wait_for(|h| ready(h, GuestRole::Runtime) == Some(true) && !not_ready(h)),
    )
    .await
    .expect("ready within the bound")
    .unwrap()
    .clone();
    assert!(h.healthy, "{h:?}");
    session.shutdown(Duration::from_secs(10)).await.unwrap();
}
