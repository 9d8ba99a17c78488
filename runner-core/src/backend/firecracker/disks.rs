//! Per-launch files a VM reads: private copies of writable drives, and (for
//! a jailed VM) the kernel, initrd and read-only drives made visible inside
//! its chroot.
//!
//! Rules:
//! - A template's files are only ever opened read-only, here and by
//!   Firecracker: every drive with `is_read_only: false` (or no such key)
//!   gets a private copy per launch, so no two VMs ever share a writable
//!   drive and nothing a guest writes reaches the template or the next VM.
//! - A copy is a reflink (`FICLONE`) where the filesystem can share blocks,
//!   otherwise a sparse copy (data ranges found with `SEEK_DATA` /
//!   `SEEK_HOLE`, holes left as holes). It is created mode 0600 and, for a
//!   jailed VM, owned by the uid the VM runs as.
//! - Read-only files of a jailed VM are hard-linked into the chroot when the
//!   template file is a world-readable, not world-writable regular file on
//!   the same filesystem; otherwise they are copied like a writable drive
//!   (mode 0400). An unjailed VM reads them where they are.

use super::error::FirecrackerLaunchError;
use crate::identity::GuestUser;
use rustix::fs::SeekFrom;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the files of one launch go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staging {
    /// Unjailed: private drive copies in `run` as `<label>-drive-<n>.img`;
    /// other files stay where the template says.
    Direct {
        /// The user's `run/`.
        run: PathBuf,
        /// The guest's label (`oxydra-vm` / `shell-vm`).
        label: &'static str,
    },
    /// Jailed: everything in the chroot `root`, seen by Firecracker as `/`.
    Jailed {
        /// The chroot directory on the host.
        root: PathBuf,
        /// Who the VM runs as.
        user: GuestUser,
    },
}

/// How one file was made available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// Blocks shared with the source (copy-on-write).
    Reflink,
    /// Data ranges copied, holes kept.
    Sparse,
    /// A hard link to the (read-only) source.
    Link,
}

/// Makes every file `config` names available as `staging` requires and
/// rewrites the paths in `config` accordingly. Returns the files created
/// (for removal at stop). On error, files created so far are removed.
pub fn stage(
    config: &mut Value,
    staging: &Staging,
) -> Result<Vec<PathBuf>, FirecrackerLaunchError> {
    let mut created = Vec::new();
    let result = stage_into(config, staging, &mut created);
    if result.is_err() {
        remove_files(&created);
        created.clear();
    }
    result.map(|()| created)
}

fn stage_into(
    config: &mut Value,
    staging: &Staging,
    created: &mut Vec<PathBuf>,
) -> Result<(), FirecrackerLaunchError> {
    if let Staging::Jailed { root, user } = staging {
        for (key, name) in [("kernel_image_path", "kernel"), ("initrd_path", "initrd")] {
            let Some(slot) = config.get_mut("boot-source").and_then(|b| b.get_mut(key)) else {
                continue;
            };
            let Some(src) = slot.as_str().map(PathBuf::from) else {
                continue;
            };
            let dst = root.join(name);
            share_read_only(&src, &dst, *user)?;
            created.push(dst);
            *slot = Value::String(format!("/{name}"));
        }
    }
    let Some(drives) = config.get_mut("drives").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (n, drive) in drives.iter_mut().enumerate() {
        let Some(src) = drive
            .get("path_on_host")
            .and_then(Value::as_str)
            .map(PathBuf::from)
        else {
            continue;
        };
        let read_only = drive
            .get("is_read_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let visible = match staging {
            Staging::Direct { .. } if read_only => continue,
            Staging::Direct { run, label } => {
                let dst = run.join(format!("{label}-drive-{n}.img"));
                private_copy(&src, &dst, None, 0o600)?;
                created.push(dst.clone());
                dst
            }
            Staging::Jailed { root, user } => {
                let name = format!("drive-{n}.img");
                let dst = root.join(&name);
                if read_only {
                    share_read_only(&src, &dst, *user)?;
                } else {
                    private_copy(&src, &dst, Some(*user), 0o600)?;
                }
                created.push(dst);
                PathBuf::from(format!("/{name}"))
            }
        };
        drive["path_on_host"] = Value::String(visible.to_string_lossy().into_owned());
    }
    Ok(())
}

/// Removes `files`, logging (not failing on) any that cannot be removed.
pub fn remove_files(files: &[PathBuf]) {
    for f in files {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %f.display(), error = %e, "cannot remove per-launch VM file");
            }
            _ => {}
        }
    }
}

/// Hard-links `src` to `dst` when that is safe for a VM running as `user`
/// (see the module docs), else copies it (mode 0400, owned by `user`).
fn share_read_only(
    src: &Path,
    dst: &Path,
    user: GuestUser,
) -> Result<CopyKind, FirecrackerLaunchError> {
    let meta = std::fs::metadata(src).map_err(|source| stage_err(src, dst, source))?;
    let mode = meta.permissions().mode();
    if meta.is_file() && mode & 0o004 != 0 && mode & 0o002 == 0 {
        match std::fs::hard_link(src, dst) {
            Ok(()) => return Ok(CopyKind::Link),
            Err(e) => {
                tracing::debug!(src = %src.display(), error = %e, "cannot hard-link; copying");
            }
        }
    }
    private_copy(src, dst, Some(user), 0o400)
}

/// Copies `src` to a new file `dst` (which must not exist) with `mode`,
/// owned by `owner` when given: a reflink when possible, else a sparse copy.
/// `src` is opened read-only. A partial `dst` is removed on failure.
pub fn private_copy(
    src: &Path,
    dst: &Path,
    owner: Option<GuestUser>,
    mode: u32,
) -> Result<CopyKind, FirecrackerLaunchError> {
    let err = |source| stage_err(src, dst, source);
    let from = File::open(src).map_err(err)?;
    let meta = from.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dst)
        .map_err(err)?;
    let copied = copy_contents(&from, &to, meta.size()).and_then(|kind| {
        if let Some(u) = owner {
            std::os::unix::fs::fchown(&to, Some(u.uid), Some(u.gid))?;
        }
        to.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(kind)
    });
    copied.map_err(|e| {
        remove_files(&[dst.to_path_buf()]);
        err(e)
    })
}

fn copy_contents(from: &File, to: &File, len: u64) -> std::io::Result<CopyKind> {
    if rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(CopyKind::Reflink);
    }
    to.set_len(len)?;
    let mut offset = 0;
    while offset < len {
        let start = match rustix::fs::seek(from, SeekFrom::Data(offset)) {
            Ok(start) => start,
            // No data after `offset`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // SEEK_DATA unsupported: treat everything as data.
            Err(rustix::io::Errno::INVAL) => offset,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(from, SeekFrom::Hole(start)) {
            Ok(end) => end.min(len),
            Err(rustix::io::Errno::INVAL) => len,
            Err(e) => return Err(e.into()),
        };
        copy_range(from, to, start, end)?;
        offset = end;
    }
    Ok(CopyKind::Sparse)
}

fn copy_range(from: &File, to: &File, start: u64, end: u64) -> std::io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let want = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let n = rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "source shrank while being copied",
            ));
        }
    }
    Ok(())
}

fn stage_err(src: &Path, dst: &Path, source: std::io::Error) -> FirecrackerLaunchError {
    FirecrackerLaunchError::StageFile {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{Seek, Write};

    /// A 64 MiB file with data only at 0 and at 40 MiB.
    fn sparse_source(dir: &Path) -> PathBuf {
        let p = dir.join("root.ext4");
        let mut f = File::create(&p).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(std::io::SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(64 << 20).unwrap();
        p
    }

    #[test]
    fn a_copy_has_the_same_bytes_keeps_holes_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let dst = dir.path().join("copy.img");
        private_copy(&src, &dst, None, 0o600).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_ne!(meta.ino(), std::fs::metadata(&src).unwrap().ino());
        // 64 MiB apparent size; only a few blocks allocated.
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        // dst exists: refused, and the existing file is left alone.
        assert!(private_copy(&src, &dst, None, 0o600).is_err());
        assert!(dst.exists());
    }

    #[test]
    fn direct_staging_copies_only_writable_drives() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let mut config = json!({
            "boot-source": {"kernel_image_path": "/k"},
            "drives": [
                {"drive_id": "root", "path_on_host": src, "is_read_only": false},
                {"drive_id": "ro", "path_on_host": src, "is_read_only": true},
                {"drive_id": "default", "path_on_host": src},
            ]
        });
        let staging = Staging::Direct {
            run: dir.path().to_path_buf(),
            label: "oxydra-vm",
        };
        let created = stage(&mut config, &staging).unwrap();
        let want0 = dir.path().join("oxydra-vm-drive-0.img");
        let want2 = dir.path().join("oxydra-vm-drive-2.img");
        assert_eq!(created, vec![want0.clone(), want2.clone()]);
        assert_eq!(config["drives"][0]["path_on_host"], json!(want0));
        assert_eq!(config["drives"][1]["path_on_host"], json!(src));
        assert_eq!(config["drives"][2]["path_on_host"], json!(want2));
        assert_eq!(config["boot-source"]["kernel_image_path"], json!("/k"));
        remove_files(&created);
        assert!(!want0.exists() && !want2.exists());
    }

    #[test]
    fn a_failed_stage_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path());
        let mut config = json!({
            "boot-source": {},
            "drives": [
                {"path_on_host": src, "is_read_only": false},
                {"path_on_host": dir.path().join("missing"), "is_read_only": false},
            ]
        });
        let staging = Staging::Direct {
            run: dir.path().to_path_buf(),
            label: "shell-vm",
        };
        let err = stage(&mut config, &staging).unwrap_err();
        assert!(
            matches!(&err, FirecrackerLaunchError::StageFile { src, .. } if src.ends_with("missing")),
            "{err:?}"
        );
        assert!(!dir.path().join("shell-vm-drive-0.img").exists());
    }
}
