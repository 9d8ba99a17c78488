//! Starting a guest program its uid could not reach by path.
//!
//! A guest runs under its own uid, which may not be able to walk the path
//! to its program: the built-in demo guests are `runner-bin` itself, often
//! below a directory like `/root` that only root can enter. The runner
//! (root) opens the program before the child is created and the child
//! executes that descriptor (`execveat(fd, "", AT_EMPTY_PATH)`, what
//! `fexecve(3)` does): the kernel then checks only the file's own execute
//! permission, never the directories above it. The descriptor is
//! close-on-exec, so the guest does not inherit it.
//!
//! Only ELF executables go this way: for a `#!` script the kernel would hand
//! the interpreter a `/dev/fd/<n>` that is already closed, so scripts are
//! executed by path (their directories must be reachable by the guest).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How the child names the program at exec time. Keep it alive until the
/// spawn has returned.
#[derive(Debug)]
pub(super) struct ProgramHandle {
    file: Option<File>,
    path: PathBuf,
}

impl ProgramHandle {
    /// The program to run as another uid (`by_fd`) or as the runner's own.
    pub(super) fn open(program: &Path, by_fd: bool) -> io::Result<Self> {
        let path = program.to_path_buf();
        if !by_fd {
            return Ok(Self { file: None, path });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
            .open(program)?;
        // Above 0-2 (a runner started with one of them closed), so the
        // child's stdio set-up cannot replace it.
        let file = match file.as_raw_fd() {
            0..=2 => File::from(rustix::io::fcntl_dupfd_cloexec(&file, 3)?),
            _ => file,
        };
        let mut magic = [0u8; 4];
        let elf = file.read_exact_at(&mut magic, 0).is_ok() && magic == *b"\x7fELF";
        Ok(Self {
            file: elf.then_some(file),
            path,
        })
    }

    /// The open program to execute by descriptor, if it goes that way;
    /// otherwise it is executed by [`Self::path`].
    pub(super) fn exec_fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(AsFd::as_fd)
    }

    /// The program's real path (for `argv[0]` and messages).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_goes_by_fd_and_scripts_by_path() {
        let sh = ProgramHandle::open(Path::new("/bin/sh"), true).unwrap();
        assert!(sh.exec_fd().is_some());
        assert_eq!(sh.path(), Path::new("/bin/sh"));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let by_path = ProgramHandle::open(&script, true).unwrap();
        assert!(by_path.exec_fd().is_none());
        assert_eq!(by_path.path(), script);
        let own = ProgramHandle::open(Path::new("/bin/sh"), false).unwrap();
        assert!(own.exec_fd().is_none());
        assert!(ProgramHandle::open(&dir.path().join("missing"), true).is_err());
    }
}
