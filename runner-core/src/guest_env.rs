//! Which guest gets which extra environment variable.
//!
//! The operator's `-e` and `--env-file` entries are routed as oxydra routes
//! them, because the two guests are trusted differently: the sidecar runs
//! untrusted shell commands, so secrets must never reach it.
//! - a plain `KEY` goes to the runtime guest only;
//! - `SHELL_<KEY>` goes to the sidecar only, as `<KEY>`;
//! - `TZ` goes to both.
//!
//! The user's `[behavior] timezone` becomes `TZ` in both guests unless an
//! entry already set it, and channel bot tokens go to the runtime only.

use runner_types::GuestRole;
use std::collections::BTreeMap;

/// Prefix of entries meant for the sidecar.
pub const SIDECAR_PREFIX: &str = "SHELL_";
/// The time zone variable, which both guests get.
pub const TZ: &str = "TZ";

/// Extra environment per guest, on top of each backend's configured one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestEnv {
    /// For the runtime guest.
    pub runtime: BTreeMap<String, String>,
    /// For the sidecar guest.
    pub sidecar: BTreeMap<String, String>,
}

impl GuestEnv {
    /// Routes operator entries (later entries win on a clash).
    pub fn route(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut env = Self::default();
        for (key, value) in entries {
            if key == TZ {
                env.runtime.insert(key.clone(), value.clone());
                env.sidecar.insert(key, value);
            } else if let Some(inner) = key.strip_prefix(SIDECAR_PREFIX).filter(|k| !k.is_empty()) {
                env.sidecar.insert(inner.to_owned(), value);
            } else {
                env.runtime.insert(key, value);
            }
        }
        env
    }

    /// Sets `TZ` to `timezone` in each guest that has none yet.
    pub fn with_timezone(mut self, timezone: &str) -> Self {
        for map in [&mut self.runtime, &mut self.sidecar] {
            map.entry(TZ.to_owned())
                .or_insert_with(|| timezone.to_owned());
        }
        self
    }

    /// The variables for `role`.
    pub fn for_role(&self, role: GuestRole) -> &BTreeMap<String, String> {
        match role {
            GuestRole::Runtime => &self.runtime,
            GuestRole::Sidecar => &self.sidecar,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn routes_like_oxydra() {
        let env = GuestEnv::route(pairs(&[
            ("API_KEY", "secret"),
            ("SHELL_PATH", "/bin"),
            ("TZ", "Asia/Tokyo"),
            ("SHELL_", "odd"),
        ]));
        assert_eq!(
            env.runtime,
            BTreeMap::from_iter(pairs(&[
                ("API_KEY", "secret"),
                ("TZ", "Asia/Tokyo"),
                ("SHELL_", "odd")
            ]))
        );
        assert_eq!(
            env.sidecar,
            BTreeMap::from_iter(pairs(&[("PATH", "/bin"), ("TZ", "Asia/Tokyo")]))
        );
    }

    #[test]
    fn timezone_fills_only_what_is_unset() {
        let env = GuestEnv::route(pairs(&[("SHELL_TZ", "Europe/Paris")])).with_timezone("UTC");
        assert_eq!(env.runtime["TZ"], "UTC");
        assert_eq!(env.sidecar["TZ"], "Europe/Paris");
        let env = GuestEnv::route(pairs(&[("TZ", "Asia/Tokyo")])).with_timezone("UTC");
        assert_eq!(env.for_role(GuestRole::Runtime)["TZ"], "Asia/Tokyo");
        assert_eq!(env.for_role(GuestRole::Sidecar)["TZ"], "Asia/Tokyo");
    }
}
