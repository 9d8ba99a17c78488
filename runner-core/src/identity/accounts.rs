//! Looking ids up in the host's account databases, with a short memory of
//! the ids they do not know.
//!
//! A recorded guest uid is checked against the account databases at every
//! session start (a uid that has since become a host account or group is
//! refused). Through NSS that lookup is not cheap: with `files systemd` in
//! `nsswitch.conf`, an unknown id costs two file parses and a walk of the
//! systemd userdb directories, for the user and again for the group. A
//! [`AccountCache`] (one per runner) remembers that an id was unknown, so
//! a user's next starts skip the lookup, within these limits:
//!
//! - only "unknown" is remembered; an id that is an account is looked up
//!   again every time (that answer fails the start anyway);
//! - every remembered answer is forgotten as soon as `/etc/passwd` or
//!   `/etc/group` changes (checked with one `stat` each per lookup), so an
//!   account added locally (`useradd`, `groupadd`, an edit of the files) is
//!   seen by the very next start;
//! - an account that appears through another NSS source (systemd userdb
//!   drop-ins, LDAP, sssd) changes neither file: it is seen at most
//!   [`ACCOUNT_CACHE_TTL`] after the lookup that found the id unknown.
//!
//! The check was always a point-in-time one (an account created right
//! after it goes unnoticed until the next start); the cache widens that
//! window by at most [`ACCOUNT_CACHE_TTL`], and only for sources other than
//! the local files. Nothing else about a guest's identity is cached: the
//! uid record is read under its lock at every start.

use super::resolve::IdentityError;
use nix::unistd::{Gid, Group, Uid, User};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an "unknown id" answer is trusted when the local account files
/// have not changed.
pub const ACCOUNT_CACHE_TTL: Duration = Duration::from_secs(10);

/// The local account files whose change forgets every remembered answer.
const ACCOUNT_FILES: [&str; 2] = ["/etc/passwd", "/etc/group"];

/// Remembers for a while which ids the host's account databases did not
/// know (see the module docs). Cheap to share: a runner keeps one for all
/// its session starts.
#[derive(Debug, Default)]
pub struct AccountCache {
    state: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    /// What the account files looked like when the answers were taken.
    files: Option<[FileStamp; 2]>,
    /// Id → when it was found unknown.
    unknown: HashMap<u32, Instant>,
}

/// Identity and last change of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &str) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

fn account_files() -> Option<[FileStamp; 2]> {
    Some([
        FileStamp::of(ACCOUNT_FILES[0])?,
        FileStamp::of(ACCOUNT_FILES[1])?,
    ])
}

impl AccountCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The host account with uid `id`, else the group with gid `id`;
    /// answered from memory when `id` was found unknown less than
    /// [`ACCOUNT_CACHE_TTL`] ago and the account files have not changed
    /// since.
    pub fn account_named(&self, id: u32) -> Result<Option<String>, IdentityError> {
        self.account_named_at(id, Instant::now(), ACCOUNT_CACHE_TTL)
    }

    fn account_named_at(
        &self,
        id: u32,
        now: Instant,
        ttl: Duration,
    ) -> Result<Option<String>, IdentityError> {
        let files = account_files();
        {
            let mut state = self.lock();
            if files.is_none() || state.files != files {
                state.unknown.clear();
                state.files = files;
            }
            let fresh = |at: &Instant| now.saturating_duration_since(*at) < ttl;
            state.unknown.retain(|_, at| fresh(at));
            if files.is_some() && state.unknown.contains_key(&id) {
                return Ok(None);
            }
        }
        let found = account_named(id)?;
        if found.is_none() && files.is_some() {
            let mut state = self.lock();
            // Only if the files are still those the lookup read.
            if state.files == files {
                state.unknown.insert(id, now);
            }
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The host account with uid `id`, else the group with gid `id`.
pub(super) fn account_named(id: u32) -> Result<Option<String>, IdentityError> {
    let err = |source| IdentityError::Accounts { id, source };
    if let Some(u) = User::from_uid(Uid::from_raw(id)).map_err(err)? {
        return Ok(Some(u.name));
    }
    Ok(Group::from_gid(Gid::from_raw(id))
        .map_err(err)?
        .map(|g| g.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id well inside the default guest range, which no test host has
    /// as an account.
    const UNKNOWN: u32 = 1_900_065_000;

    #[test]
    fn an_unknown_id_is_remembered_and_an_account_never() {
        let cache = AccountCache::new();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        assert_eq!(cache.account_named_at(UNKNOWN, now, ttl).unwrap(), None);
        assert!(cache.lock().unknown.contains_key(&UNKNOWN));
        // Root is always an account: looked up, never remembered.
        assert_eq!(
            cache.account_named_at(0, now, ttl).unwrap().as_deref(),
            Some("root")
        );
        assert!(!cache.lock().unknown.contains_key(&0));
    }

    #[test]
    fn a_remembered_answer_expires() {
        let cache = AccountCache::new();
        let ttl = Duration::from_secs(60);
        let then = Instant::now();
        cache.account_named_at(UNKNOWN, then, ttl).unwrap();
        cache
            .account_named_at(UNKNOWN + 1, then + ttl, ttl)
            .unwrap();
        let state = cache.lock();
        assert!(!state.unknown.contains_key(&UNKNOWN), "expired");
        assert!(state.unknown.contains_key(&(UNKNOWN + 1)));
    }

    #[test]
    fn a_changed_account_file_forgets_every_answer() {
        let cache = AccountCache::new();
        let ttl = Duration::from_secs(60);
        let now = Instant::now();
        cache.account_named_at(UNKNOWN, now, ttl).unwrap();
        // As if /etc/group had changed since the answer was taken.
        cache.lock().files.as_mut().expect("account files stat")[1].size += 1;
        cache.account_named_at(UNKNOWN + 1, now, ttl).unwrap();
        let state = cache.lock();
        assert!(!state.unknown.contains_key(&UNKNOWN), "forgotten");
        assert!(state.unknown.contains_key(&(UNKNOWN + 1)));
    }
}
