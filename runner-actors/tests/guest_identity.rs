//! Guest identities through `Runner::start_session`, with the fake backend:
//! as root, every launch of a user carries that user's own non-root uid,
//! stable across sessions and runners; `allow_root` is reported as degraded.

mod common;

use common::*;
use runner_actors::SessionOptions;
use runner_core::UserId;
use runner_core::config::UserConfig;
use runner_core::identity::{GUEST_RUNS_AS_ROOT, GuestIdentityChoice, GuestUser};
use std::time::Duration;

fn no_socket() -> SessionOptions {
    SessionOptions {
        serve_control: false,
        ..SessionOptions::default()
    }
}

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: CI runs as root");
    eprintln!("{test}: skipping: needs root");
    false
}

/// Starts `user`'s session, returns what both guests were launched as and
/// the startup degraded codes, and shuts it down.
async fn launched_as(
    config: &runner_core::config::RunnerConfig,
    user: &str,
) -> (Vec<Option<GuestUser>>, Vec<String>) {
    let (fake, _launches) = fake();
    let runner = runner(config.clone(), &fake);
    let session = runner.start_session_with(user, no_socket()).await.unwrap();
    let health = session.health().await.unwrap();
    let codes = health
        .startup_status
        .degraded_reasons
        .iter()
        .map(|r| r.code.clone())
        .collect();
    session.shutdown(Duration::from_secs(10)).await.unwrap();
    let run_as = fake.launches().iter().map(|s| s.run_as).collect();
    (run_as, codes)
}

#[tokio::test]
async fn each_user_gets_its_own_stable_uid_for_both_guests() {
    if !root_or_skip("each_user_gets_its_own_stable_uid_for_both_guests") {
        return;
    }
    let s = setup();
    let (alice, codes) = launched_as(&s.config, "alice").await;
    assert_eq!(alice.len(), 2, "sidecar and runtime");
    let a = alice[0].expect("a root runner maps guests");
    assert_ne!(a.uid, 0);
    assert_eq!(alice[1], Some(a), "both roles share the user's uid");
    assert!(!codes.contains(&GUEST_RUNS_AS_ROOT.to_owned()));

    let (bob, _) = launched_as(&s.config, "bob").await;
    let b = bob[0].unwrap();
    assert_ne!(b.uid, a.uid);
    // A later session, of a new runner over the same root: the same uid.
    let (again, _) = launched_as(&s.config, "alice").await;
    assert_eq!(again[0], Some(a));
    // The workspace is provisioned for that uid.
    let shared = s.config.workspace_root.join("alice/shared");
    let meta = std::fs::metadata(shared).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), a.uid);
}

#[tokio::test]
async fn allow_root_is_reported_as_degraded() {
    if !root_or_skip("allow_root_is_reported_as_degraded") {
        return;
    }
    let mut s = setup();
    s.config.users.insert(
        UserId::new("root-ok").unwrap(),
        UserConfig {
            guest_identity: GuestIdentityChoice::Root,
            shell_enabled: true,
            ..UserConfig::default()
        },
    );
    let (run_as, codes) = launched_as(&s.config, "root-ok").await;
    assert_eq!(run_as, [None, None], "guests run as the runner: root");
    assert!(codes.contains(&GUEST_RUNS_AS_ROOT.to_owned()), "{codes:?}");
}
