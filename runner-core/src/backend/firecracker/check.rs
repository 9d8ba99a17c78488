//! Pre-launch checks of the micro_vm tier's host requirements: the
//! firecracker binary (and resolving a bare name against a PATH value the
//! caller passes in), and a usable KVM device.

use super::error::FirecrackerLaunchError;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether `binary` is a bare name (no directory part) to look up on PATH.
pub fn is_bare_name(binary: &Path) -> bool {
    let mut parts = binary.components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    )
}

/// Resolves `binary`: a path with a directory part is returned as is; a bare
/// name is looked up in `path_var` (a `PATH`-style list the caller read from
/// its environment). `None` when a bare name is on no listed directory.
pub fn resolve_binary(binary: &Path, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if !is_bare_name(binary) {
        return Some(binary.to_path_buf());
    }
    std::env::split_paths(path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(binary))
        .find(|candidate| check_binary(candidate).is_ok())
}

/// Fails unless `path` is an executable regular file. An unresolved bare
/// name is reported as [`FirecrackerLaunchError::BinaryNotOnPath`].
pub fn check_binary(path: &Path) -> Result<(), FirecrackerLaunchError> {
    if is_bare_name(path) {
        return Err(FirecrackerLaunchError::BinaryNotOnPath {
            name: path.to_path_buf(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|source| FirecrackerLaunchError::BinaryMissing {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(FirecrackerLaunchError::BinaryNotExecutable {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Fails unless `device` opens read-write, as Firecracker opens it.
pub fn check_kvm(device: &Path) -> Result<(), FirecrackerLaunchError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map(drop)
        .map_err(|source| FirecrackerLaunchError::KvmUnusable {
            path: device.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn executable(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn bare_names_are_resolved_on_the_given_path_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        executable(a.path(), "firecracker", 0o644); // not executable: skipped
        let want = executable(b.path(), "firecracker", 0o755);
        let path_var = std::env::join_paths([a.path(), Path::new("rel"), b.path()]).unwrap();
        let name = Path::new("firecracker");
        assert_eq!(resolve_binary(name, Some(&path_var)), Some(want));
        assert_eq!(resolve_binary(name, None), None);
        assert_eq!(resolve_binary(name, Some(a.path().as_os_str())), None);
        let explicit = Path::new("./bin/firecracker");
        assert_eq!(resolve_binary(explicit, None), Some(explicit.to_path_buf()));
    }

    #[test]
    fn binary_problems_are_distinct_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ok = executable(dir.path(), "fc", 0o755);
        check_binary(&ok).unwrap();
        let plain = executable(dir.path(), "plain", 0o644);
        assert!(matches!(
            check_binary(&plain),
            Err(FirecrackerLaunchError::BinaryNotExecutable { .. })
        ));
        assert!(matches!(
            check_binary(dir.path()),
            Err(FirecrackerLaunchError::BinaryNotExecutable { .. })
        ));
        assert!(matches!(
            check_binary(&dir.path().join("absent")),
            Err(FirecrackerLaunchError::BinaryMissing { .. })
        ));
        assert!(matches!(
            check_binary(Path::new("firecracker")),
            Err(FirecrackerLaunchError::BinaryNotOnPath { .. })
        ));
    }

    #[test]
    fn unopenable_kvm_device_is_reported_with_its_path() {
        let err = check_kvm(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(
            matches!(&err, FirecrackerLaunchError::KvmUnusable { path, .. } if path == Path::new("/nonexistent/kvm")),
            "{err:?}"
        );
        // A directory cannot be opened for writing either.
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            check_kvm(dir.path()),
            Err(FirecrackerLaunchError::KvmUnusable { .. })
        ));
    }
}
