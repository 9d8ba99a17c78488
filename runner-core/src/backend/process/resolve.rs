//! Finding a guest's program before anything is spawned, so that a typo in
//! the config is a clear error naming the program and where it was looked
//! for, not an `ENOENT` from deep inside `fork`/`exec`.
//!
//! Rules:
//! - A program containing `/` is a path; a relative one is made absolute
//!   against the runner's working directory (the guest runs in another
//!   directory, and exec'ing a relative path there would find something else).
//! - A bare name is looked up in the runner's search path (its `PATH`, handed
//!   in by the embedding program), in order, taking the first executable
//!   regular file — as `execvp` does. Relative entries (including the empty
//!   entry that means "current directory") are skipped for the same reason.
//! - Always resolved to an absolute path, which is what gets exec'd.

use super::error::{NotExecutableReason, ProcessLaunchError};
use nix::errno::Errno;
use nix::unistd::{AccessFlags, access};
use runner_types::GuestRole;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Resolves `program` for `role` to an absolute, executable file.
pub(super) fn resolve_program(
    role: GuestRole,
    program: &Path,
    search_path: Option<&OsStr>,
) -> Result<PathBuf, ProcessLaunchError> {
    let inspect = |path: &Path, source| ProcessLaunchError::Inspect {
        role,
        path: path.to_path_buf(),
        source,
    };
    if program.as_os_str().is_empty() {
        return Err(ProcessLaunchError::ProgramMissing {
            role,
            path: program.to_path_buf(),
        });
    }
    if program.as_os_str().as_bytes().contains(&b'/') {
        let path = std::path::absolute(program).map_err(|e| inspect(program, e))?;
        return match check(&path) {
            Ok(()) => Ok(path),
            Err(Unusable::Missing) => Err(ProcessLaunchError::ProgramMissing { role, path }),
            Err(Unusable::Not(reason)) => {
                Err(ProcessLaunchError::NotExecutable { role, path, reason })
            }
            Err(Unusable::Io(e)) => Err(inspect(&path, e)),
        };
    }
    let searched: Vec<PathBuf> = search_path
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default();
    let mut first_unusable = None;
    for dir in &searched {
        let candidate = dir.join(program);
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Unusable::Not(reason)) => {
                first_unusable.get_or_insert((candidate, reason));
            }
            // Like execvp: an unreadable or missing directory is skipped.
            Err(Unusable::Missing | Unusable::Io(_)) => {}
        }
    }
    Err(match first_unusable {
        Some((path, reason)) => ProcessLaunchError::NotExecutable { role, path, reason },
        None => ProcessLaunchError::NotOnSearchPath {
            role,
            program: program.to_path_buf(),
            searched,
        },
    })
}

/// Why a candidate path cannot be exec'd.
enum Unusable {
    Missing,
    Not(NotExecutableReason),
    Io(std::io::Error),
}

fn check(path: &Path) -> Result<(), Unusable> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Err(Unusable::Missing);
        }
        Err(e) => return Err(Unusable::Io(e)),
    };
    if !meta.is_file() {
        return Err(Unusable::Not(NotExecutableReason::NotARegularFile));
    }
    match access(path, AccessFlags::X_OK) {
        Ok(()) => Ok(()),
        Err(Errno::EACCES) => Err(Unusable::Not(NotExecutableReason::NoExecutePermission)),
        Err(e) => Err(Unusable::Io(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ROLE: GuestRole = GuestRole::Runtime;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn bare_name_takes_first_executable_on_the_search_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(a.path(), "guest", 0o644);
        let want = file(b.path(), "guest", 0o755);
        let path = std::env::join_paths([
            "relative",
            "",
            a.path().to_str().unwrap(),
            b.path().to_str().unwrap(),
        ])
        .unwrap();
        let got = resolve_program(ROLE, Path::new("guest"), Some(&path)).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn bare_name_not_found_lists_absolute_dirs_searched() {
        let a = tempfile::tempdir().unwrap();
        let path = std::env::join_paths(["rel", a.path().to_str().unwrap()]).unwrap();
        let err = resolve_program(ROLE, Path::new("nope"), Some(&path)).unwrap_err();
        match err {
            ProcessLaunchError::NotOnSearchPath { searched, .. } => {
                assert_eq!(searched, vec![a.path().to_path_buf()])
            }
            other => panic!("{other:?}"),
        }
        let err = resolve_program(ROLE, Path::new("nope"), None).unwrap_err();
        assert!(
            matches!(err, ProcessLaunchError::NotOnSearchPath { ref searched, .. } if searched.is_empty())
        );
    }

    #[test]
    fn bare_name_found_only_without_permission_is_not_executable() {
        let a = tempfile::tempdir().unwrap();
        file(a.path(), "guest", 0o600);
        let err =
            resolve_program(ROLE, Path::new("guest"), Some(a.path().as_os_str())).unwrap_err();
        assert!(
            matches!(
                err,
                ProcessLaunchError::NotExecutable {
                    reason: NotExecutableReason::NoExecutePermission,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn paths_are_checked_as_given() {
        let a = tempfile::tempdir().unwrap();
        let ok = file(a.path(), "ok", 0o700);
        assert_eq!(resolve_program(ROLE, &ok, None).unwrap(), ok);
        let err = resolve_program(ROLE, &a.path().join("missing"), None).unwrap_err();
        assert!(matches!(err, ProcessLaunchError::ProgramMissing { .. }));
        let err = resolve_program(ROLE, a.path(), None).unwrap_err();
        assert!(matches!(
            err,
            ProcessLaunchError::NotExecutable {
                reason: NotExecutableReason::NotARegularFile,
                ..
            }
        ));
        let err = resolve_program(ROLE, &ok.join("below-a-file"), None).unwrap_err();
        assert!(matches!(err, ProcessLaunchError::ProgramMissing { .. }));
    }

    #[test]
    fn relative_paths_become_absolute() {
        let got = resolve_program(ROLE, Path::new("./no/such/guest"), None).unwrap_err();
        match got {
            ProcessLaunchError::ProgramMissing { path, .. } => assert!(path.is_absolute()),
            other => panic!("{other:?}"),
        }
    }
}
