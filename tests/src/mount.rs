//! A small ext4 file system on a loop device that a test can freeze with
//! `fsfreeze`, so every write to it blocks until it is thawed: how the log
//! tests make a disk stop answering. Needs root (it mounts).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether [`FreezableMount::mount`] creates the mount point or mounts over
/// a directory that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPoint {
    /// Create the directory first (its parent must exist).
    Create,
    /// Mount over an existing directory, hiding what it holds.
    Existing,
}

/// Runs a helper command and asserts that it succeeded.
fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run helper command");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// An ext4 image mounted at a path, frozen on demand; thawed and unmounted
/// (lazily, so a busy mount does not fail the clean-up) when dropped, also
/// when the test fails.
pub struct FreezableMount {
    path: PathBuf,
}

impl FreezableMount {
    /// Makes a fresh ext4 image of `size_mib` MiB at `image`, loop-mounts
    /// it at `path` (created first if `mount_point` says so) and makes the
    /// mounted root private to its owner (mode 0700).
    pub fn mount(image: &Path, path: &Path, size_mib: u64, mount_point: MountPoint) -> Self {
        if mount_point == MountPoint::Create {
            std::fs::create_dir(path).unwrap();
        }
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{size_mib}M"))
            .arg(image));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(path));
        let mount = Self {
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
        mount
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Freezes the file system: writes to it block until [`Self::thaw`].
    pub fn freeze(&self) {
        run(Command::new("fsfreeze").arg("--freeze").arg(&self.path));
    }

    /// Thaws the file system; a no-op when it is not frozen.
    pub fn thaw(&self) {
        // Fails harmlessly (and quietly) when not frozen.
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for FreezableMount {
    fn drop(&mut self) {
        self.thaw();
        match Command::new("umount").arg("-l").arg(&self.path).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("cannot unmount {}: {other:?}", self.path.display()),
        }
    }
}
