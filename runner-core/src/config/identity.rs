//! Validating `[guest_identity]`: the allocation range of `runner.toml`, a
//! per-user file's explicit uid/gid or `allow_root`, and that no two users
//! are given the same uid.

use super::{ConfigError, UserConfig};
use crate::UserId;
use crate::identity::{GuestIdRange, GuestIdentityChoice, GuestUser, UID_CEILING};
use runner_types::config::{GuestIdentitySection, UserGuestIdentityFile};
use std::collections::BTreeMap;
use std::path::Path;

/// The range, with defaults filled in: non-empty, above 0, below 2^31.
pub(super) fn id_range(path: &Path, s: GuestIdentitySection) -> Result<GuestIdRange, ConfigError> {
    let d = GuestIdRange::default();
    let (base, count) = (s.uid_base.unwrap_or(d.base), s.uid_count.unwrap_or(d.count));
    if base == 0 || count == 0 || u64::from(base) + u64::from(count) > u64::from(UID_CEILING) {
        return Err(ConfigError::GuestIdRange {
            path: path.to_path_buf(),
            base: base.into(),
            count: count.into(),
        });
    }
    Ok(GuestIdRange { base, count })
}

/// A per-user file's choice.
pub(super) fn user_choice(
    path: &Path,
    f: UserGuestIdentityFile,
) -> Result<GuestIdentityChoice, ConfigError> {
    let keys = |conflict| ConfigError::GuestIdentityKeys {
        path: path.to_path_buf(),
        conflict,
    };
    match (f.allow_root, f.uid, f.gid) {
        (true, None, None) => Ok(GuestIdentityChoice::Root),
        (true, _, _) => Err(keys(
            "`allow_root = true` cannot be combined with `uid` or `gid`",
        )),
        (false, None, None) => Ok(GuestIdentityChoice::Allocated),
        (false, None, Some(_)) => Err(keys("`gid` needs a `uid`")),
        (false, Some(uid), gid) => {
            let gid = gid.unwrap_or(uid);
            for (key, id) in [("guest_identity.uid", uid), ("guest_identity.gid", gid)] {
                if id == 0 {
                    return Err(ConfigError::GuestIdRoot {
                        path: path.to_path_buf(),
                        key,
                    });
                }
            }
            Ok(GuestIdentityChoice::Explicit(GuestUser { uid, gid }))
        }
    }
}

/// No two registered users share an explicit uid.
pub(super) fn distinct_uids(
    path: &Path,
    users: &BTreeMap<UserId, UserConfig>,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<u32, &UserId> = BTreeMap::new();
    for (id, user) in users {
        let GuestIdentityChoice::Explicit(g) = user.guest_identity else {
            continue;
        };
        if let Some(first) = seen.insert(g.uid, id) {
            return Err(ConfigError::SharedGuestUid {
                path: path.to_path_buf(),
                uid: g.uid,
                first: first.to_string(),
                second: id.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/cfg/alice.toml")
    }

    fn file(uid: Option<u32>, gid: Option<u32>, allow_root: bool) -> UserGuestIdentityFile {
        UserGuestIdentityFile {
            uid,
            gid,
            allow_root,
        }
    }

    #[test]
    fn range_defaults_and_bounds() {
        let d = id_range(p(), GuestIdentitySection::default()).unwrap();
        assert_eq!(d, GuestIdRange::default());
        assert!(d.base > 65_535 && u64::from(d.base) + u64::from(d.count) <= 1 << 31);
        for (base, count) in [(0, 10), (10, 0), (UID_CEILING - 5, 6), (u32::MAX, 1)] {
            let s = GuestIdentitySection {
                uid_base: Some(base),
                uid_count: Some(count),
            };
            assert!(
                matches!(id_range(p(), s), Err(ConfigError::GuestIdRange { .. })),
                "{base} {count}"
            );
        }
    }

    #[test]
    fn explicit_root_needs_allow_root() {
        let err = user_choice(p(), file(Some(0), None, false)).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::GuestIdRoot {
                key: "guest_identity.uid",
                ..
            }
        ));
        let err = user_choice(p(), file(Some(5), Some(0), false)).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::GuestIdRoot {
                key: "guest_identity.gid",
                ..
            }
        ));
        assert_eq!(
            user_choice(p(), file(None, None, true)).unwrap(),
            GuestIdentityChoice::Root
        );
        assert_eq!(
            user_choice(p(), file(Some(5), None, false)).unwrap(),
            GuestIdentityChoice::Explicit(GuestUser { uid: 5, gid: 5 })
        );
    }

    #[test]
    fn contradictions_are_refused() {
        for f in [file(Some(5), None, true), file(None, Some(5), false)] {
            let err = user_choice(p(), f).unwrap_err();
            assert!(
                matches!(err, ConfigError::GuestIdentityKeys { .. }),
                "{f:?}"
            );
        }
    }

    #[test]
    fn two_users_with_one_uid_are_refused() {
        let user = |uid| UserConfig {
            guest_identity: GuestIdentityChoice::Explicit(GuestUser { uid, gid: uid }),
            ..UserConfig::default()
        };
        let mut users = BTreeMap::from([
            (UserId::new("alice").unwrap(), user(5000)),
            (UserId::new("bob").unwrap(), user(5001)),
        ]);
        distinct_uids(p(), &users).unwrap();
        users.insert(UserId::new("carol").unwrap(), user(5000));
        let err = distinct_uids(p(), &users).unwrap_err();
        assert!(
            matches!(err, ConfigError::SharedGuestUid { uid: 5000, ref first, ref second, .. } if first == "alice" && second == "carol"),
            "{err:?}"
        );
    }
}
