//! The per-launch envelope file: `run/<role label>.bootstrap.json`, mode
//! 0400, bind-mounted read-only into its own guest only.
//!
//! The name is fixed per role, so a relaunch replaces the file. Cleanup of
//! an older launch removes the file only if it is still the one that launch
//! wrote (same device and inode). A filesystem may hand a freed inode
//! number straight to the successor's file, so this guard is best-effort;
//! it matters little, because once a container has started its bind mount
//! holds the file itself and removing the path does not affect it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A written envelope file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootstrapFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BootstrapFile {
    /// Writes `json` to `path` (replacing any file there) with mode 0400,
    /// owned by `owner` (uid, gid) if given — the guest's user, when it is
    /// not the runner's own.
    pub(crate) fn write(path: PathBuf, json: &[u8], owner: Option<(u32, u32)>) -> io::Result<Self> {
        remove_if_present(&path)?;
        // `create_new` (O_EXCL) never opens an existing file, symlink or
        // FIFO; O_NOFOLLOW says the same once more.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)?;
        file.write_all(json)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        let meta = file.metadata()?;
        Ok(Self {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still the one [`Self::write`] created.
    pub(crate) fn remove(&self) -> io::Result<()> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => remove_if_present(&self.path),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_read_only_and_replaced_on_relaunch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oxydra-vm.bootstrap.json");
        let first = BootstrapFile::write(path.clone(), b"{\"a\":1}", None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        // A hard link keeps the first inode allocated (as a running
        // container's bind mount would), so the second file gets another.
        fs::hard_link(&path, dir.path().join("held")).unwrap();
        let second = BootstrapFile::write(path.clone(), b"{\"a\":2}", None).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":2}");
        // The first launch's cleanup leaves its successor's file alone.
        first.remove().unwrap();
        assert!(path.exists());
        second.remove().unwrap();
        assert!(!path.exists());
        second.remove().unwrap();
        assert_eq!(second.path(), path);
    }
}
