//! Identity decisions against the real account databases and a real record
//! file in a temp dir. The runner's uid is passed in, so "the runner is
//! root" is simulated whoever runs the tests.

use super::*;
use crate::config::UserConfig;
use crate::identity::{DEFAULT_UID_BASE, GuestIdentityChoice, STORE_FILE_NAME};
use nix::unistd::{Gid, Group};

const ROOT: u32 = 0;

fn config(root: &std::path::Path) -> RunnerConfig {
    RunnerConfig::defaults(root)
}

fn id(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn uid_of(config: &RunnerConfig, user: &str) -> u32 {
    resolve_guest_user(config, &id(user), SandboxTier::Process, ROOT)
        .unwrap()
        .run_as
        .expect("a root runner maps guests")
        .uid
}

/// Uids of `/etc/passwd`.
fn passwd_uids() -> Vec<u32> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

#[test]
fn allocation_is_stable_across_calls_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let first = uid_of(&config(dir.path()), "alice");
    assert!(first >= DEFAULT_UID_BASE);
    assert_eq!(uid_of(&config(dir.path()), "alice"), first);
    // A reload with another range keeps the recorded uid.
    let mut reloaded = config(dir.path());
    reloaded.guest_identity = GuestIdRange {
        base: first + 100,
        count: 10,
    };
    assert_eq!(uid_of(&reloaded, "alice"), first);
    let decision =
        resolve_guest_user(&reloaded, &id("alice"), SandboxTier::Container, ROOT).unwrap();
    assert_eq!(
        decision.run_as,
        Some(GuestUser {
            uid: first,
            gid: first
        })
    );
    assert!(!decision.runs_as_root);
}

#[test]
fn two_users_get_two_uids_and_neither_is_root() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let (a, b) = (uid_of(&c, "alice"), uid_of(&c, "bob"));
    assert_ne!(a, b);
    assert!(a != 0 && b != 0);
    assert_eq!(uid_of(&c, "bob"), b);
}

#[test]
fn existing_accounts_are_skipped() {
    let taken = passwd_uids();
    let first = *taken
        .iter()
        .filter(|&&u| u > 0 && u < 60_000)
        .min()
        .expect("/etc/passwd has a non-root account");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.guest_identity = GuestIdRange {
        base: first,
        count: 70_000,
    };
    let got = uid_of(&c, "alice");
    assert!(got >= first);
    assert!(!taken.contains(&got), "{got} is an account in /etc/passwd");
    assert!(Group::from_gid(Gid::from_raw(got)).unwrap().is_none());
}

#[test]
fn a_recorded_uid_that_became_an_account_is_refused() {
    let taken = *passwd_uids().iter().find(|&&u| u > 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    uid_of(&c, "bob");
    let path = dir.path().join("workspaces").join(STORE_FILE_NAME);
    let mut records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    records["uids"]["alice"] = taken.into();
    std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
    let err = resolve_guest_user(&c, &id("alice"), SandboxTier::Process, ROOT).unwrap_err();
    assert!(
        matches!(err, IdentityError::RecordedUidTaken { uid, .. } if uid == taken),
        "{err:?}"
    );
}

#[test]
fn an_explicit_uid_recorded_for_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let bobs = uid_of(&c, "bob");
    let explicit = |uid| UserConfig {
        guest_identity: GuestIdentityChoice::Explicit(GuestUser { uid, gid: uid }),
        shell_enabled: true,
        ..UserConfig::default()
    };
    c.users.insert(id("alice"), explicit(bobs));
    let err = resolve_guest_user(&c, &id("alice"), SandboxTier::Process, ROOT).unwrap_err();
    assert!(
        matches!(err, IdentityError::UidOfAnotherUser { uid, ref other, .. } if uid == bobs && other == "bob"),
        "{err:?}"
    );
    // Bob himself may be given his own uid explicitly.
    c.users.insert(id("bob"), explicit(bobs));
    assert_eq!(uid_of(&c, "bob"), bobs);
    // And a fresh allocation skips an explicit uid of another user.
    c.users.insert(id("alice"), explicit(bobs + 1));
    let carol = uid_of(&c, "carol");
    assert!(carol != bobs && carol != bobs + 1, "{carol}");
}

#[test]
fn allow_root_runs_as_root_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.users.insert(
        id("alice"),
        UserConfig {
            guest_identity: GuestIdentityChoice::Root,
            ..UserConfig::default()
        },
    );
    let d = resolve_guest_user(&c, &id("alice"), SandboxTier::Process, ROOT).unwrap();
    assert_eq!(
        d,
        IdentityDecision {
            run_as: None,
            runs_as_root: true
        }
    );
    assert_eq!(
        crate::identity::guest_runs_as_root().code,
        crate::identity::GUEST_RUNS_AS_ROOT
    );
}

#[test]
fn a_runner_that_is_not_root_runs_guests_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let d = resolve_guest_user(&c, &id("alice"), SandboxTier::Process, 1000).unwrap();
    assert_eq!(d.run_as, None);
    assert!(!d.runs_as_root);
    // Nothing was allocated or written.
    assert!(!dir.path().join("workspaces").exists());
}

#[test]
fn an_exhausted_range_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.guest_identity = GuestIdRange {
        base: DEFAULT_UID_BASE,
        count: 1,
    };
    uid_of(&c, "alice");
    let err = resolve_guest_user(&c, &id("bob"), SandboxTier::Process, ROOT).unwrap_err();
    assert!(
        matches!(err, IdentityError::Exhausted { count: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn docker_user_applies_to_the_container_tier_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.docker.user = Some("4000:4001".into());
    let d = resolve_guest_user(&c, &id("alice"), SandboxTier::Container, ROOT).unwrap();
    assert_eq!(
        d.run_as,
        Some(GuestUser {
            uid: 4000,
            gid: 4001
        })
    );
    let d = resolve_guest_user(&c, &id("alice"), SandboxTier::Process, ROOT).unwrap();
    assert_ne!(d.run_as.unwrap().uid, 4000);
    for (value, root) in [
        ("0:0", true),
        ("root", true),
        ("5:0", true),
        ("no-such-user-x", false),
    ] {
        c.docker.user = Some(value.into());
        let err = resolve_guest_user(&c, &id("alice"), SandboxTier::Container, ROOT).unwrap_err();
        if root {
            assert!(
                matches!(err, IdentityError::DockerUserRoot { .. }),
                "{value}: {err:?}"
            );
        } else {
            assert!(
                matches!(err, IdentityError::DockerUserUnknown { .. }),
                "{value}: {err:?}"
            );
        }
    }
}

#[test]
fn a_lost_record_never_hands_an_owner_of_existing_directories_to_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let alice = uid_of(&config(dir.path()), "alice");
    // Alice's directory exists, owned by her guest uid; the record is lost.
    let root = config(dir.path()).workspace_root;
    let home = root.join("alice");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(0), Some(alice)).unwrap();
    std::fs::remove_file(root.join(STORE_FILE_NAME)).unwrap();
    let bob = uid_of(&config(dir.path()), "bob");
    assert_ne!(bob, alice, "bob was given the uid that owns alice's files");
}

#[test]
fn an_explicit_gid_is_never_allocated_as_a_uid() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    let alice = UserConfig {
        guest_identity: GuestIdentityChoice::Explicit(GuestUser {
            uid: 5000,
            gid: DEFAULT_UID_BASE,
        }),
        ..UserConfig::default()
    };
    cfg.users.insert(id("alice"), alice);
    assert_ne!(uid_of(&cfg, "bob"), DEFAULT_UID_BASE);
}

/// Many first starts at once (each rewrites the record) all get a uid, and
/// no two the same: an opener that finds the record replaced while it
/// waited for the lock retries instead of failing.
#[test]
fn concurrent_first_starts_all_get_distinct_uids() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let uids: Vec<u32> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..32)
            .map(|n| {
                let config = &config;
                s.spawn(move || uid_of(config, &format!("user{n}")))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut distinct = uids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), uids.len(), "{uids:?}");
    // And the record holds every one of them.
    for (n, uid) in uids.iter().enumerate() {
        assert_eq!(uid_of(&config, &format!("user{n}")), *uid);
    }
}

#[test]
fn a_shared_root_gives_the_same_uid_and_the_workspace_lands_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(&dir.path().join("ws"));
    let root = WorkspaceRoot::open_for(&c.workspace_root, &id("alice")).unwrap();
    let shared = resolve_guest_user_in(&c, &root, &id("alice"), SandboxTier::Process, ROOT)
        .unwrap()
        .run_as
        .unwrap();
    // The same record, read through a root opened by path.
    assert_eq!(uid_of(&c, "alice"), shared.uid);
    let ws = crate::Workspace::provision_in(
        &root,
        &id("alice"),
        &crate::workspace::MountOverrides::default(),
        None,
    )
    .unwrap();
    assert_eq!(ws.user_root, root.path().join("alice"));
    assert!(ws.run.is_dir() && ws.logs.is_dir());
}

#[test]
fn a_shared_root_refuses_a_planted_record_link_and_leaves_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join(STORE_FILE_NAME)).unwrap();
    let root = WorkspaceRoot::open(dir.path()).unwrap();
    let err =
        resolve_guest_user_in(&c, &root, &id("alice"), SandboxTier::Process, ROOT).unwrap_err();
    assert!(
        matches!(err, IdentityError::StoreNotRegular { .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}
