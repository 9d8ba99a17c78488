//! The relative symlink `ipc/runner-control.sock -> ../run/runner-control.sock`,
//! kept while a control socket serves, where oxydra's clients look for it.
//!
//! The link is relative on purpose: inside a container `ipc/` is mounted
//! without `run/`, so the link resolves to nothing there, and the socket
//! itself stays out of every guest's reach. `ipc/` is guest-writable, so a
//! guest can replace the link; this runner's own CLI never uses it. The
//! link is made and removed relative to a directory fd opened without
//! following symlinks, and only an entry that is still our link is removed.

use crate::workspace::{CONTROL_SOCKET_NAME, Workspace};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// Where the link points, relative to `ipc/`.
pub const LINK_TARGET: &str = "../run/runner-control.sock";

/// A created link; [`IpcLink::remove`] takes it away again.
#[derive(Debug)]
pub struct IpcLink {
    user_root: PathBuf,
}

impl IpcLink {
    /// Creates the link, replacing a stale link or socket of that name.
    /// Anything else there (a guest's file or directory) is left alone and
    /// is an error.
    pub fn create(workspace: &Workspace) -> Result<Self, Errno> {
        let ipc = open_ipc(&workspace.user_root)?;
        match fstatat(
            &ipc,
            CONTROL_SOCKET_NAME,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => {
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                if kind != SFlag::S_IFLNK && kind != SFlag::S_IFSOCK {
                    return Err(Errno::EEXIST);
                }
                unlinkat(&ipc, CONTROL_SOCKET_NAME, UnlinkatFlags::NoRemoveDir)?;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        symlinkat(LINK_TARGET, &ipc, CONTROL_SOCKET_NAME)?;
        Ok(Self {
            user_root: workspace.user_root.clone(),
        })
    }

    /// Removes the link if it is still ours; a guest's replacement stays.
    pub fn remove(self) {
        let removed = open_ipc(&self.user_root).and_then(|ipc| {
            if readlinkat(&ipc, CONTROL_SOCKET_NAME)?.as_os_str() != OsStr::new(LINK_TARGET) {
                return Ok(());
            }
            unlinkat(&ipc, CONTROL_SOCKET_NAME, UnlinkatFlags::NoRemoveDir)
        });
        match removed {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
            Err(e) => tracing::warn!(
                dir = %self.user_root.display(),
                error = %e,
                "cannot remove ipc/runner-control.sock"
            ),
        }
    }
}

/// `<user dir>/ipc`, opened without following a symlink at either step.
fn open_ipc(user_root: &std::path::Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let user = nix::fcntl::open(user_root, flags, Mode::empty())?;
    openat(&user, "ipc", flags, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserId;
    use crate::workspace::MountOverrides;

    fn workspace(root: &std::path::Path) -> Workspace {
        let user = UserId::new("alice").unwrap();
        Workspace::provision(root, &user, &MountOverrides::default()).unwrap()
    }

    #[test]
    fn relative_link_made_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ws = workspace(dir.path());
        let link_path = ws.ipc.join(CONTROL_SOCKET_NAME);
        std::fs::write(ws.control_socket(), b"").unwrap();
        // A stale link from a killed daemon is replaced.
        std::os::unix::fs::symlink("/elsewhere", &link_path).unwrap();
        let link = IpcLink::create(&ws).unwrap();
        assert_eq!(
            std::fs::read_link(&link_path).unwrap(),
            PathBuf::from(LINK_TARGET)
        );
        assert_eq!(
            std::fs::canonicalize(&link_path).unwrap(),
            std::fs::canonicalize(ws.control_socket()).unwrap()
        );
        link.remove();
        assert!(std::fs::symlink_metadata(&link_path).is_err());
    }

    #[test]
    fn a_guests_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ws = workspace(dir.path());
        let path = ws.ipc.join(CONTROL_SOCKET_NAME);
        std::fs::write(&path, b"guest data").unwrap();
        assert_eq!(IpcLink::create(&ws).unwrap_err(), Errno::EEXIST);
        assert_eq!(std::fs::read(&path).unwrap(), b"guest data");
        // A replacement made after creation stays too.
        std::fs::remove_file(&path).unwrap();
        let link = IpcLink::create(&ws).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        link.remove();
        assert_eq!(
            std::fs::read_link(&path).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }
}
