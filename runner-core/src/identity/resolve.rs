//! Deciding a session's guest identity (the rules are in the module docs of
//! [`crate::identity`]).

use super::AccountCache;
use super::accounts::account_named;
use super::store::LockedStore;
use super::{GuestIdRange, GuestIdentityChoice, GuestUser};
use crate::UserId;
use crate::config::RunnerConfig;
use crate::workspace::WorkspaceRoot;
use nix::unistd::User;
use runner_types::SandboxTier;
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

/// What a session's guests run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityDecision {
    /// The uid/gid for every guest of the session; `None`: the runner's own.
    pub run_as: Option<GuestUser>,
    /// The runner is root and the user's guests run as root (`allow_root`):
    /// report [`super::GUEST_RUNS_AS_ROOT`].
    pub runs_as_root: bool,
}

/// Why no guest identity could be decided.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The workspace root failed its checks or could not be created.
    #[error("Cannot use the workspace root for the guest uid record")]
    Root(#[from] Box<crate::workspace::WorkspaceError>),
    /// The record file could not be read or written.
    #[error("Cannot use the guest uid record {path}")]
    Store {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The record path is a symlink, FIFO, device or directory.
    #[error("Guest uid record {path} is not a regular file; remove it")]
    StoreNotRegular {
        /// The path.
        path: PathBuf,
    },
    /// The record belongs to someone else or others may write it.
    #[error(
        "Guest uid record {path} must be owned by the runner and writable by nobody else (owner {owner}, mode {mode:o})"
    )]
    StoreNotPrivate {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its mode.
        mode: u32,
    },
    /// The record kept being replaced while this runner waited for its lock.
    #[error("Guest uid record {path} kept changing while waiting for its lock")]
    StoreContended {
        /// The path.
        path: PathBuf,
    },
    /// The record is not what the runner writes.
    #[error("Guest uid record {path} is corrupt")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Every uid of the range is taken.
    #[error(
        "No free guest uid left in [guest_identity] uid_base = {base}, uid_count = {count}; widen the range"
    )]
    Exhausted {
        /// `uid_base`.
        base: u32,
        /// `uid_count`.
        count: u32,
    },
    /// A user's configured or recorded uid belongs to another user.
    #[error("Guest uid {uid} of user {user} is already user {other}'s guest uid")]
    UidOfAnotherUser {
        /// The user starting.
        user: String,
        /// The uid.
        uid: u32,
        /// Who has it.
        other: String,
    },
    /// A recorded uid became a host account or group after it was allocated.
    #[error(
        "Guest uid {uid} recorded for user {user} in {path} is now also the host account or group {account:?}; give the user an explicit [guest_identity] uid or remove its record"
    )]
    RecordedUidTaken {
        /// The user.
        user: String,
        /// The uid.
        uid: u32,
        /// The account or group name.
        account: String,
        /// The record file.
        path: PathBuf,
    },
    /// The account databases could not be read.
    #[error("Cannot look up uid/gid {id} in the host's account databases")]
    Accounts {
        /// The id.
        id: u32,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// `[docker] user` names an account that does not exist or is not
    /// `uid[:gid]`.
    #[error("[docker] user = {value:?} is neither `uid[:gid]` nor a host account")]
    DockerUserUnknown {
        /// The value.
        value: String,
    },
    /// `[docker] user` is root while the runner is root.
    #[error(
        "[docker] user = {value:?} runs containers as root; remove it (guests get their own uids) or set allow_root in the per-user file"
    )]
    DockerUserRoot {
        /// The value.
        value: String,
    },
}

/// Decides what `user`'s guests run as, allocating and recording a uid
/// when needed. `runner_uid` is the runner's effective uid (the caller
/// passes `geteuid()`): only a root runner switches uids.
pub fn resolve_guest_user(
    config: &RunnerConfig,
    user: &UserId,
    tier: SandboxTier,
    runner_uid: u32,
) -> Result<IdentityDecision, IdentityError> {
    resolve(config, None, user, tier, runner_uid, &Lookup::Fresh)
}

/// As [`resolve_guest_user`], with the record opened below `root` (the
/// checked and opened `config.workspace_root`), so a session start walks
/// the root's ancestors once for the record and its workspace.
pub fn resolve_guest_user_in(
    config: &RunnerConfig,
    root: &WorkspaceRoot,
    user: &UserId,
    tier: SandboxTier,
    runner_uid: u32,
) -> Result<IdentityDecision, IdentityError> {
    resolve(config, Some(root), user, tier, runner_uid, &Lookup::Fresh)
}

/// As [`resolve_guest_user_in`], taking the host's answer "no such
/// account" from `accounts` while it is fresh (see
/// [`super::AccountCache`] for how stale it may be).
pub fn resolve_guest_user_cached(
    config: &RunnerConfig,
    root: &WorkspaceRoot,
    user: &UserId,
    tier: SandboxTier,
    runner_uid: u32,
    accounts: &AccountCache,
) -> Result<IdentityDecision, IdentityError> {
    let lookup = Lookup::Cached(accounts);
    resolve(config, Some(root), user, tier, runner_uid, &lookup)
}

/// How account databases are asked.
enum Lookup<'a> {
    /// Every time.
    Fresh,
    /// Through a cache of unknown ids.
    Cached(&'a AccountCache),
}

impl Lookup<'_> {
    fn account_named(&self, id: u32) -> Result<Option<String>, IdentityError> {
        match self {
            Self::Fresh => account_named(id),
            Self::Cached(cache) => cache.account_named(id),
        }
    }
}

fn resolve(
    config: &RunnerConfig,
    root: Option<&WorkspaceRoot>,
    user: &UserId,
    tier: SandboxTier,
    runner_uid: u32,
    lookup: &Lookup<'_>,
) -> Result<IdentityDecision, IdentityError> {
    let decided = |g| IdentityDecision {
        run_as: Some(g),
        runs_as_root: false,
    };
    if runner_uid != 0 {
        return Ok(IdentityDecision {
            run_as: None,
            runs_as_root: false,
        });
    }
    match config.user(user).guest_identity {
        GuestIdentityChoice::Root => Ok(IdentityDecision {
            run_as: None,
            runs_as_root: true,
        }),
        GuestIdentityChoice::Explicit(g) => {
            let store = lock_store(config, root)?;
            if let Some(other) = holder(&store.records.uids, g.uid, user) {
                return Err(IdentityError::UidOfAnotherUser {
                    user: user.to_string(),
                    uid: g.uid,
                    other,
                });
            }
            Ok(decided(g))
        }
        GuestIdentityChoice::Allocated => {
            if tier == SandboxTier::Container
                && let Some(value) = &config.docker.user
            {
                return docker_user(value).map(decided);
            }
            allocate(config, root, user, lookup).map(decided)
        }
    }
}

/// The record, locked: below `root` if it is open, else below
/// `config.workspace_root` (checked and opened now).
fn lock_store(
    config: &RunnerConfig,
    root: Option<&WorkspaceRoot>,
) -> Result<LockedStore, IdentityError> {
    match root {
        Some(root) => LockedStore::open_in(root),
        None => LockedStore::open(&config.workspace_root),
    }
}

/// The user's recorded uid, or a new one recorded now.
fn allocate(
    config: &RunnerConfig,
    root: Option<&WorkspaceRoot>,
    user: &UserId,
    lookup: &Lookup<'_>,
) -> Result<GuestUser, IdentityError> {
    let explicit = explicit_uids(config);
    let mut store = lock_store(config, root)?;
    let path = config.workspace_root.join(super::STORE_FILE_NAME);
    if let Some(&uid) = store.records.uids.get(user.as_str()) {
        if let Some(other) = explicit.get(&uid).filter(|o| *o != user.as_str()) {
            return Err(IdentityError::UidOfAnotherUser {
                user: user.to_string(),
                uid,
                other: other.clone(),
            });
        }
        if let Some(account) = lookup.account_named(uid)? {
            return Err(IdentityError::RecordedUidTaken {
                user: user.to_string(),
                uid,
                account,
                path,
            });
        }
        return Ok(GuestUser { uid, gid: uid });
    }
    let owners = workspace_owners(&config.workspace_root);
    let uid = free_uid(
        config.guest_identity,
        &store.records.uids,
        &explicit,
        &owners,
        lookup,
    )?;
    store.records.version = 1;
    store.records.uids.insert(user.to_string(), uid);
    store.save()?;
    tracing::info!(user = %user, uid, "allocated a guest uid");
    Ok(GuestUser { uid, gid: uid })
}

/// The lowest uid of `range` that nobody has: no record, no explicit
/// per-user uid or gid, no owner of an existing user directory, no host
/// account or group.
fn free_uid(
    range: GuestIdRange,
    records: &BTreeMap<String, u32>,
    explicit: &BTreeMap<u32, String>,
    owners: &std::collections::BTreeSet<u32>,
    lookup: &Lookup<'_>,
) -> Result<u32, IdentityError> {
    let recorded: std::collections::BTreeSet<u32> = records.values().copied().collect();
    for uid in range.uids() {
        if recorded.contains(&uid) || explicit.contains_key(&uid) || owners.contains(&uid) {
            continue;
        }
        if lookup.account_named(uid)?.is_none() {
            return Ok(uid);
        }
    }
    Err(IdentityError::Exhausted {
        base: range.base,
        count: range.count,
    })
}

/// Explicit per-user uids and gids of the config: id → user id.
fn explicit_uids(config: &RunnerConfig) -> BTreeMap<u32, String> {
    config
        .users
        .iter()
        .filter_map(|(id, u)| match u.guest_identity {
            GuestIdentityChoice::Explicit(g) => {
                Some([(g.uid, id.to_string()), (g.gid, id.to_string())])
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Uids and gids that already own a user directory under `root`, or its
/// `shared/`: never handed to a new user, even if the record that named
/// them was lost (they would open that user's files to the new one).
fn workspace_owners(root: &std::path::Path) -> std::collections::BTreeSet<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut owners = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return owners;
    };
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        for path in [dir.clone(), dir.join("shared")] {
            if let Ok(m) = std::fs::symlink_metadata(&path)
                && m.is_dir()
            {
                owners.extend([m.uid(), m.gid()]);
            }
        }
    }
    owners
}

/// Another user recorded with `uid`, if any.
fn holder(records: &BTreeMap<String, u32>, uid: u32, user: &UserId) -> Option<String> {
    records
        .iter()
        .find(|(id, u)| **u == uid && id.as_str() != user.as_str())
        .map(|(id, _)| id.clone())
}

/// `[docker] user`: `uid[:gid]` (gid defaults to the uid) or an account
/// name (its primary group). Root is refused.
fn docker_user(value: &str) -> Result<GuestUser, IdentityError> {
    let unknown = || IdentityError::DockerUserUnknown {
        value: value.to_owned(),
    };
    let (uid, gid) = value.split_once(':').unwrap_or((value, value));
    let user = match (uid.parse::<u32>(), gid.parse::<u32>()) {
        (Ok(uid), Ok(gid)) => GuestUser { uid, gid },
        _ if !value.contains(':') => {
            let account = User::from_name(value).ok().flatten().ok_or_else(unknown)?;
            GuestUser {
                uid: account.uid.as_raw(),
                gid: account.gid.as_raw(),
            }
        }
        _ => return Err(unknown()),
    };
    if user.uid == 0 || user.gid == 0 {
        return Err(IdentityError::DockerUserRoot {
            value: value.to_owned(),
        });
    }
    Ok(user)
}

#[cfg(test)]
mod tests;
