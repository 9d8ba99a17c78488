//! Opening runner-side files without trusting what is on disk.
//!
//! Every file the runner itself creates or opens under `run/` and `logs/`
//! (the session lock, logs and their `.idx`, the control socket) goes
//! through here. The rules:
//! - the last component is never followed if it is a symbolic link
//!   (`O_NOFOLLOW`);
//! - anything that is not a regular file (a FIFO, a device, a socket, a
//!   directory) is refused with [`HostFileError::WrongKind`] before it is
//!   opened, and again, race-free, on the open descriptor;
//! - the open itself is non-blocking, so a FIFO swapped in between the two
//!   checks cannot stall the runner; `O_NONBLOCK` is cleared afterwards.
//!
//! The directories above these files are checked when the workspace is
//! provisioned (owned by the runner, mode 0700), so no other user can
//! replace an entry in them; these checks are the second line.

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{Mode, SFlag, fstat};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What kind of file system object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The kind of a `st_mode` value.
    pub fn from_mode(mode: u32) -> Self {
        let t = mode & SFlag::S_IFMT.bits();
        [
            (SFlag::S_IFDIR, Self::Directory),
            (SFlag::S_IFLNK, Self::Symlink),
            (SFlag::S_IFIFO, Self::Fifo),
            (SFlag::S_IFSOCK, Self::Socket),
            (SFlag::S_IFCHR, Self::CharDevice),
            (SFlag::S_IFBLK, Self::BlockDevice),
        ]
        .into_iter()
        .find_map(|(flag, kind)| (flag.bits() == t).then_some(kind))
        .unwrap_or(Self::Regular)
    }

    /// The kind of `meta` (from `symlink_metadata`, so links are links).
    pub fn of(meta: &fs::Metadata) -> Self {
        let t = meta.file_type();
        if t.is_symlink() {
            Self::Symlink
        } else if t.is_dir() {
            Self::Directory
        } else if t.is_fifo() {
            Self::Fifo
        } else if t.is_socket() {
            Self::Socket
        } else if t.is_char_device() {
            Self::CharDevice
        } else if t.is_block_device() {
            Self::BlockDevice
        } else {
            Self::Regular
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Regular => "regular file",
            Self::Directory => "directory",
            Self::Symlink => "symbolic link",
            Self::Fifo => "FIFO",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
        })
    }
}

/// Why a runner-side file or directory was refused or could not be opened.
#[derive(Debug, Error)]
pub enum HostFileError {
    /// The path names the wrong kind of object (a symlink, a FIFO, ...).
    #[error(
        "{path} is a {found}, not a {expected}; the runner refuses to follow or use it. Remove it"
    )]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What the runner needs there.
        expected: FileKind,
        /// What is there.
        found: FileKind,
    },
    /// A runner directory belongs to someone else or others may write it.
    #[error(
        "{path} (owner uid {uid}, mode {mode:04o}) must be owned by the runner (uid {runner_uid}) and writable by no one else"
    )]
    Untrusted {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
        /// The runner's effective uid.
        runner_uid: u32,
    },
    /// The system call failed.
    #[error("Cannot open {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl HostFileError {
    /// Whether this is "the file does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// How [`open_regular`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenHow {
    /// Read only; never creates.
    Read,
    /// Read and write, created with `mode` if missing; never truncated.
    ReadWrite {
        /// Mode of a new file.
        mode: u32,
    },
    /// Write-only append, created with `mode` if missing.
    Append {
        /// Mode of a new file.
        mode: u32,
    },
    /// Write-only append to an existing file; never creates.
    AppendExisting,
}

impl OpenHow {
    fn flags_and_mode(self) -> (OFlag, u32) {
        match self {
            Self::Read => (OFlag::O_RDONLY, 0),
            Self::ReadWrite { mode } => (OFlag::O_RDWR | OFlag::O_CREAT, mode),
            Self::Append { mode } => (OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT, mode),
            Self::AppendExisting => (OFlag::O_WRONLY | OFlag::O_APPEND, 0),
        }
    }
}

/// Opens `path` as a regular file, never through a symlink and never
/// blocking on a FIFO (see the module docs). A missing file is
/// [`HostFileError::Io`] with `NotFound` (check with
/// [`HostFileError::is_not_found`]) unless `how` creates it.
pub fn open_regular(path: &Path, how: OpenHow) -> Result<File, HostFileError> {
    let io_err = |source| HostFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Refuse a FIFO or device before opening it at all: opening some
    // devices has side effects.
    match fs::symlink_metadata(path) {
        Ok(meta) => expect_kind(path, FileKind::of(&meta), FileKind::Regular)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let (access, mode) = how.flags_and_mode();
    let flags = access | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = nix::fcntl::open(path, flags, Mode::from_bits_truncate(mode))
        .map_err(|errno| classify_open_error(path, errno))?;
    let stat = fstat(&fd).map_err(|e| io_err(e.into()))?;
    expect_kind(path, FileKind::from_mode(stat.st_mode), FileKind::Regular)?;
    let status = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| io_err(e.into()))?;
    let cleared = OFlag::from_bits_truncate(status) - OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(cleared)).map_err(|e| io_err(e.into()))?;
    Ok(File::from(fd))
}

/// Checks that `path` is a real directory (not a link to one) owned by
/// `runner_uid` that no one else may write, so no one else can replace the
/// entries in it.
pub fn check_runner_dir(path: &Path, runner_uid: u32) -> Result<(), HostFileError> {
    let meta = fs::symlink_metadata(path).map_err(|source| HostFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    expect_kind(path, FileKind::of(&meta), FileKind::Directory)?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != runner_uid || mode & 0o022 != 0 {
        return Err(HostFileError::Untrusted {
            path: path.to_path_buf(),
            uid: meta.uid(),
            mode,
            runner_uid,
        });
    }
    Ok(())
}

/// Removes a leftover socket at `path` before a bind. Only a socket is
/// removed (checked with `lstat`); anything else there is refused.
/// Returns whether a socket was removed.
pub fn remove_stale_socket(path: &Path) -> Result<bool, HostFileError> {
    let io_err = |source| HostFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) => expect_kind(path, FileKind::of(&meta), FileKind::Socket)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(e)),
    }
}

fn expect_kind(path: &Path, found: FileKind, expected: FileKind) -> Result<(), HostFileError> {
    if found == expected {
        return Ok(());
    }
    Err(HostFileError::WrongKind {
        path: path.to_path_buf(),
        expected,
        found,
    })
}

/// Turns the errors `O_NOFOLLOW` and `O_NONBLOCK` produce into the kind
/// of object that caused them.
fn classify_open_error(path: &Path, errno: Errno) -> HostFileError {
    let found = match errno {
        Errno::ELOOP => Some(FileKind::Symlink),
        // A FIFO without a reader refuses a non-blocking write-only open.
        Errno::ENXIO => fs::symlink_metadata(path).ok().map(|m| FileKind::of(&m)),
        _ => None,
    };
    match found {
        Some(found) if found != FileKind::Regular => HostFileError::WrongKind {
            path: path.to_path_buf(),
            expected: FileKind::Regular,
            found,
        },
        _ => HostFileError::Io {
            path: path.to_path_buf(),
            source: errno.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_appends_and_reads_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let mut f = open_regular(&p, OpenHow::Append { mode: 0o600 }).unwrap();
        f.write_all(b"ab").unwrap();
        let mut f = open_regular(&p, OpenHow::AppendExisting).unwrap();
        f.write_all(b"c").unwrap();
        let mut s = String::new();
        open_regular(&p, OpenHow::Read)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "abc");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let missing = open_regular(&dir.path().join("none"), OpenHow::Read).unwrap_err();
        assert!(missing.is_not_found(), "{missing:?}");
    }

    #[test]
    fn symlinks_fifos_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        for (path, found) in [
            (&link, FileKind::Symlink),
            (&fifo, FileKind::Fifo),
            (&dir.path().to_path_buf(), FileKind::Directory),
        ] {
            for how in [OpenHow::Read, OpenHow::Append { mode: 0o600 }] {
                let err = open_regular(path, how).unwrap_err();
                assert!(
                    matches!(err, HostFileError::WrongKind { found: f, .. } if f == found),
                    "{path:?}: {err:?}"
                );
            }
        }
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn only_sockets_are_removed_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(remove_stale_socket(&sock).unwrap());
        assert!(!remove_stale_socket(&sock).unwrap());
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = remove_stale_socket(&file).unwrap_err();
        assert!(matches!(
            err,
            HostFileError::WrongKind {
                found: FileKind::Regular,
                ..
            }
        ));
        assert!(file.exists());
    }

    #[test]
    fn runner_dir_check() {
        let dir = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        check_runner_dir(dir.path(), uid).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o770)).unwrap();
        let err = check_runner_dir(dir.path(), uid).unwrap_err();
        assert!(matches!(err, HostFileError::Untrusted { mode: 0o770, .. }));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let err = check_runner_dir(&link, uid).unwrap_err();
        assert!(matches!(
            err,
            HostFileError::WrongKind {
                found: FileKind::Symlink,
                ..
            }
        ));
    }
}
