//! `[readiness]` of `runner.toml` and of per-user files, validated.

use super::ConfigError;
use crate::readiness::{DEFAULT_TIMEOUT, Probe, ReadinessCheck, ReadinessChecks};
use runner_types::GuestRole;
use runner_types::config::{ReadinessCheckFile, ReadinessSection};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Both guests' checks from `section` of the file at `path`.
pub(super) fn checks(
    path: &Path,
    section: &ReadinessSection,
) -> Result<ReadinessChecks, ConfigError> {
    let one = |role, file: &Option<ReadinessCheckFile>| {
        file.as_ref().map(|f| check(path, role, f)).transpose()
    };
    Ok(ReadinessChecks {
        runtime: one(GuestRole::Runtime, &section.runtime)?,
        sidecar: one(GuestRole::Sidecar, &section.sidecar)?,
    })
}

fn check(
    path: &Path,
    role: GuestRole,
    file: &ReadinessCheckFile,
) -> Result<ReadinessCheck, ConfigError> {
    let probe = match (&file.file, &file.socket) {
        (Some(f), None) => Probe::File(relative(path, &format!("readiness.{role}.file"), f)?),
        (None, Some(s)) => Probe::Socket(relative(path, &format!("readiness.{role}.socket"), s)?),
        _ => {
            return Err(ConfigError::ReadinessProbe {
                path: path.to_path_buf(),
                role,
            });
        }
    };
    let timeout = match file.timeout_ms {
        Some(0) => {
            return Err(ConfigError::ReadinessTimeout {
                path: path.to_path_buf(),
                role,
            });
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_TIMEOUT,
    };
    Ok(ReadinessCheck { probe, timeout })
}

/// `value` as a path below the user's directory: relative, made of plain
/// names only (no `..`, no root, not empty).
fn relative(path: &Path, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let p = Path::new(value);
    let mut names = p
        .components()
        .filter(|c| *c != Component::CurDir)
        .peekable();
    let plain = names.peek().is_some() && names.all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(ConfigError::ReadinessPath {
            path: path.to_path_buf(),
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(p.components().filter(|c| *c != Component::CurDir).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(
        file: Option<&str>,
        socket: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> ReadinessSection {
        ReadinessSection {
            runtime: Some(ReadinessCheckFile {
                file: file.map(str::to_owned),
                socket: socket.map(str::to_owned),
                timeout_ms,
            }),
            sidecar: None,
        }
    }

    #[test]
    fn a_check_names_one_plain_relative_path() {
        let p = Path::new("/etc/runner.toml");
        let ok = checks(p, &section(Some("./ipc/gateway-endpoint"), None, Some(500))).unwrap();
        assert_eq!(
            ok.runtime,
            Some(ReadinessCheck {
                probe: Probe::File("ipc/gateway-endpoint".into()),
                timeout: Duration::from_millis(500),
            })
        );
        assert_eq!(ok.sidecar, None);
        let socket = checks(p, &section(None, Some("ipc/s.sock"), None)).unwrap();
        assert_eq!(socket.runtime.unwrap().timeout, DEFAULT_TIMEOUT);

        for bad in ["../escape", "/abs/path", "", ".", "ipc/../../x"] {
            let err = checks(p, &section(Some(bad), None, None)).unwrap_err();
            assert!(
                matches!(&err, ConfigError::ReadinessPath { key, value, .. }
                    if key == "readiness.runtime.file" && value == bad),
                "{bad:?}: {err:?}"
            );
        }
        assert!(matches!(
            checks(p, &section(Some("a"), Some("b"), None)),
            Err(ConfigError::ReadinessProbe {
                role: GuestRole::Runtime,
                ..
            })
        ));
        assert!(matches!(
            checks(p, &section(None, None, None)),
            Err(ConfigError::ReadinessProbe { .. })
        ));
        assert!(matches!(
            checks(p, &section(Some("a"), None, Some(0))),
            Err(ConfigError::ReadinessTimeout { .. })
        ));
    }
}
