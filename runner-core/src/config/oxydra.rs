//! The parts of oxydra's config format this runner accepts for
//! compatibility: `config_version`, `[behavior] timezone`, `[channels.*]`
//! and `[web]`.

use super::{ChannelSecret, ConfigError, ConfigNotice};
use runner_types::config::{ChannelFile, WebSection};
use std::collections::BTreeMap;
use std::path::Path;

/// Time zone of guests whose file names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Accepts what oxydra accepts: no version, or a version whose major part
/// is 1 (`1`, `1.0`, `1.0.1`, `1.2.0-beta`).
pub(super) fn check_version(path: &Path, version: Option<&str>) -> Result<(), ConfigError> {
    let Some(value) = version else {
        return Ok(());
    };
    let core = value.trim().split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let supported = parts.len() <= 3 && parts.iter().all(numeric) && parts[0].parse() == Ok(1u64);
    if supported {
        Ok(())
    } else {
        Err(ConfigError::UnsupportedVersion {
            path: path.to_path_buf(),
            value: value.to_owned(),
        })
    }
}

/// `[behavior] timezone`, checked for the shape of an IANA name (the name
/// itself is resolved by the guest's C library).
pub(super) fn timezone(path: &Path, value: Option<&str>) -> Result<String, ConfigError> {
    let Some(value) = value else {
        return Ok(DEFAULT_TIMEZONE.to_owned());
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '-');
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(allowed)
        && !value.starts_with(['/', '-'])
        && value
            .split('/')
            .all(|part| !part.is_empty() && part != "..");
    if ok {
        Ok(value.to_owned())
    } else {
        Err(ConfigError::InvalidTimezone {
            path: path.to_path_buf(),
            value: value.to_owned(),
        })
    }
}

/// The `bot_token_env` of every channel, in channel-name order.
pub(super) fn channel_secrets(
    path: &Path,
    channels: &BTreeMap<String, ChannelFile>,
) -> Result<Vec<ChannelSecret>, ConfigError> {
    let mut out = Vec::new();
    for (channel, c) in channels {
        let Some(env) = &c.bot_token_env else {
            continue;
        };
        if !is_env_name(env) {
            return Err(ConfigError::InvalidEnvName {
                path: path.to_path_buf(),
                key: format!("channels.{channel}.bot_token_env"),
                name: env.clone(),
            });
        }
        out.push(ChannelSecret {
            channel: channel.clone(),
            env: env.clone(),
        });
    }
    Ok(out)
}

/// A `[web]` table is accepted and ignored, with a notice.
pub(super) fn web_notice(path: &Path, web: Option<&WebSection>) -> Option<ConfigNotice> {
    web.map(|_| ConfigNotice::WebIgnored {
        path: path.to_path_buf(),
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name a shell could export.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/runner/alice.toml")
    }

    #[test]
    fn major_version_one_loads() {
        for ok in ["1", "1.0", "1.0.1", "1.2.0-beta.1", " 1.0.1 "] {
            assert!(check_version(p(), Some(ok)).is_ok(), "{ok}");
        }
        assert!(check_version(p(), None).is_ok());
        for bad in ["2.0.0", "0.9", "", "one", "1..0", "1.0.0.0", "v1.0"] {
            let err = check_version(p(), Some(bad)).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnsupportedVersion { value, .. } if value == bad),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn timezones() {
        assert_eq!(timezone(p(), None).unwrap(), "UTC");
        for ok in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            assert_eq!(timezone(p(), Some(ok)).unwrap(), ok);
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "Europe//Berlin",
            "A B",
            "-x",
            "Europe/..",
        ] {
            assert!(
                matches!(
                    timezone(p(), Some(bad)),
                    Err(ConfigError::InvalidTimezone { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("TELEGRAM_BOT_TOKEN") && is_env_name("_x1"));
        assert!(!is_env_name("") && !is_env_name("1X") && !is_env_name("A-B"));
    }
}
