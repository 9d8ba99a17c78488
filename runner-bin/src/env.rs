//! Guest environment from `-e KEY=VALUE` and `--env-file`.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// Parses one `KEY=VALUE`.
pub fn parse_pair(s: &str) -> anyhow::Result<(String, String)> {
    let Some((k, v)) = s.split_once('=') else {
        bail!("-e {s:?}: expected KEY=VALUE");
    };
    check_key(k).with_context(|| format!("-e {s:?}"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Reads an env file: `KEY=VALUE` lines; blank lines and `#` comments skipped;
/// an optional `export ` prefix is allowed; values are taken literally.
pub fn read_env_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read env file {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = parse_pair(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        out.insert(k, v);
    }
    Ok(out)
}

fn check_key(k: &str) -> anyhow::Result<()> {
    let ok = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!("invalid variable name {k:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_files() {
        assert_eq!(parse_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_pair("A").is_err());
        assert!(parse_pair("1A=x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e");
        std::fs::write(&f, "# c\n\nexport X=1\nY= two \n").unwrap();
        let m = read_env_file(&f).unwrap();
        assert_eq!(m["X"], "1");
        assert_eq!(m["Y"], " two");
        std::fs::write(&f, "bad line\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains(":1"));
    }
}
