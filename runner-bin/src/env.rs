//! Guest environment from `-e`, `--env-file` and the user's channels.
//!
//! `-e KEY=VALUE` sets a value; `-e KEY` takes the value from the runner's
//! own environment (the way to pass a secret without putting it on the
//! command line, where `/proc/<pid>/cmdline` shows it to every local user).
//! Entries are then routed per guest by [`GuestEnv::route`].

use anyhow::{Context, bail};
use runner_core::config::{ChannelSecret, is_env_name};
use runner_core::guest_env::GuestEnv;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Parses one `-e` argument: `KEY=VALUE`, or `KEY` looked up with `lookup`
/// (the runner's environment).
pub fn parse_entry(
    s: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) => {
            check_key(k).with_context(|| format!("-e {k}=..."))?;
            Ok((k.to_owned(), v.to_owned()))
        }
        None => {
            check_key(s).with_context(|| format!("-e {s:?}"))?;
            match lookup(s) {
                Some(v) => Ok((s.to_owned(), v)),
                None => bail!(
                    "-e {s}: {s} is not set in the runner's environment (export it first, or pass -e {s}=VALUE)"
                ),
            }
        }
    }
}

/// Reads an env file: `KEY=VALUE` lines; blank lines and `#` comments
/// skipped; an optional `export ` prefix is allowed; values are taken
/// literally. Warns when the file is readable by group or others.
pub fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read env file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o044 != 0
    {
        tracing::warn!(
            "env file {} is readable by other users (mode {:o}); secrets in it are exposed: chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected KEY=VALUE", path.display(), n + 1);
        };
        check_key(k).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// The guests' extra environment: the env file's entries, then `-e`
/// entries (which win), routed per guest; then each channel's bot token,
/// from the runner's environment, for the runtime guest only.
pub fn guest_env(
    env_file: Option<&Path>,
    entries: &[String],
    channels: &[ChannelSecret],
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<GuestEnv> {
    let mut all = match env_file {
        Some(f) => read_env_file(f)?,
        None => Vec::new(),
    };
    for e in entries {
        all.push(parse_entry(e, &lookup)?);
    }
    let mut env = GuestEnv::route(all);
    for secret in channels {
        if env.runtime.contains_key(&secret.env) {
            continue;
        }
        match lookup(&secret.env).filter(|v| !v.is_empty()) {
            Some(v) => {
                env.runtime.insert(secret.env.clone(), v);
            }
            None => tracing::warn!(
                "channels.{}.bot_token_env names {}, which is unset or empty in the runner's environment; export it before starting, or pass -e {}=VALUE",
                secret.channel,
                secret.env,
                secret.env
            ),
        }
    }
    Ok(env)
}

fn check_key(k: &str) -> anyhow::Result<()> {
    if !is_env_name(k) {
        bail!("invalid variable name {k:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(k: &str) -> Option<String> {
        match k {
            "FROM_ENV" => Some("secret".into()),
            "BOT" => Some("123:abc".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn entries_and_files() {
        assert_eq!(
            parse_entry("A=b=c", lookup).unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_entry("FROM_ENV", lookup).unwrap(),
            ("FROM_ENV".into(), "secret".into())
        );
        let unset = parse_entry("NOPE", lookup).unwrap_err().to_string();
        assert!(unset.contains("NOPE is not set"), "{unset}");
        assert!(parse_entry("1A=x", lookup).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e");
        std::fs::write(&f, "# c\n\nexport X=1\nY= two \n").unwrap();
        let m = read_env_file(&f).unwrap();
        assert_eq!(m, [("X".into(), "1".into()), ("Y".into(), " two".into())]);
        std::fs::write(&f, "bad line\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains(":1"));
    }

    #[test]
    fn routing_and_channel_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e");
        std::fs::write(&f, "A=file\nSHELL_B=file\n").unwrap();
        let channels = [
            ChannelSecret {
                channel: "telegram".into(),
                env: "BOT".into(),
            },
            ChannelSecret {
                channel: "other".into(),
                env: "EMPTY".into(),
            },
        ];
        let env = guest_env(
            Some(&f),
            &["A=flag".into(), "TZ=Asia/Tokyo".into(), "FROM_ENV".into()],
            &channels,
            lookup,
        )
        .unwrap();
        assert_eq!(env.runtime["A"], "flag");
        assert_eq!(env.runtime["FROM_ENV"], "secret");
        assert_eq!(env.runtime["BOT"], "123:abc");
        assert!(!env.runtime.contains_key("EMPTY"));
        assert_eq!(env.sidecar.get("B").map(String::as_str), Some("file"));
        assert!(!env.sidecar.contains_key("BOT") && !env.sidecar.contains_key("FROM_ENV"));
        assert_eq!(env.sidecar["TZ"], "Asia/Tokyo");
    }
}
