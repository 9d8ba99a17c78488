//! How a firecracker process is confined: the decision (jailer or not), the
//! jail's layout on disk and in the cgroup tree, and the jailer's command
//! line as plain data.
//!
//! When the runner is root, Firecracker runs under the jailer: the jailer
//! builds `<chroot_base>/firecracker/<id>/root`, creates the device nodes it
//! needs there, joins the cgroups `firecracker/<id>` of each limited
//! controller, pivots into the chroot, drops to the guest's uid/gid and
//! execs Firecracker (same pid, no fork). `<id>` is `<label>-<hash of the
//! user's run/ path>`: unique per user, workspace root and role across the
//! host, because cgroup paths are host-wide.
//!
//! Measured facts about jailer 1.12.1: it refuses to start when the chroot
//! already holds its device nodes (`mknod ... File exists`), so every launch
//! starts from a fresh jail directory; it reuses an existing cgroup
//! directory; a process that changes uid loses its parent-death signal, so
//! a jailed VM outlives a SIGKILLed runner unless the next start reaps it
//! (see the `reaper` module).

use super::check;
use super::error::FirecrackerLaunchError;
use crate::identity::GuestUser;
use runner_types::GuestRole;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Jailer used when `[firecracker] jailer` is not set (looked up on PATH).
pub const DEFAULT_JAILER: &str = "jailer";
/// Default chroot base, relative to the user's `run/`.
pub const DEFAULT_CHROOT_DIR: &str = "jail";
/// The jailer's default parent cgroup.
pub const PARENT_CGROUP: &str = "firecracker";
/// Where cgroup v1 controllers are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Memory allowed to a jailed VM's cgroup on top of the guest's RAM
/// (Firecracker's own footprint is a few MiB; this leaves slack).
pub const VMM_MEMORY_OVERHEAD_MIB: u64 = 64;
/// Tasks allowed in a jailed VM's cgroup: Firecracker's threads (main,
/// API, one per vCPU, a few helpers) with room to spare.
pub const VM_PIDS_MAX: u64 = 64;
/// cgroup v1 controllers the runner limits.
pub const LIMITED_CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Jailer settings (from `[firecracker]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerSettings {
    /// The jailer binary (a bare name means "not found on PATH").
    pub binary: PathBuf,
    /// Chroot base; `None`: `<run>/jail` of each user.
    pub chroot_base: Option<PathBuf>,
    /// Run unjailed as root when no usable jailer exists.
    pub allow_without_jailer: bool,
    /// Whether the runner runs as root (only then is the jailer used: it
    /// needs root, and without root there is nothing to drop).
    pub runner_is_root: bool,
}

/// The confinement a launch gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// The runner is not root: Firecracker runs as the runner's own user.
    Direct,
    /// The runner is root, no usable jailer, `allow_without_jailer`:
    /// Firecracker runs as root without a chroot (degraded).
    UnjailedRoot,
    /// Under the jailer.
    Jailed {
        /// The jailer binary.
        jailer: PathBuf,
    },
}

impl JailerSettings {
    /// What a launch gets now. Root without a usable jailer is
    /// [`FirecrackerLaunchError::JailerRequired`] unless allowed.
    pub fn confinement(&self) -> Result<Confinement, FirecrackerLaunchError> {
        if !self.runner_is_root {
            return Ok(Confinement::Direct);
        }
        match check::check_binary(&self.binary) {
            Ok(()) => Ok(Confinement::Jailed {
                jailer: self.binary.clone(),
            }),
            Err(_) if self.allow_without_jailer => Ok(Confinement::UnjailedRoot),
            Err(source) => Err(FirecrackerLaunchError::JailerRequired {
                jailer: self.binary.clone(),
                source: Box::new(source),
            }),
        }
    }

    /// The chroot base for a user whose `run/` is `run`.
    pub fn chroot_base_for(&self, run: &Path) -> PathBuf {
        self.chroot_base
            .clone()
            .unwrap_or_else(|| run.join(DEFAULT_CHROOT_DIR))
    }
}

/// Where one role's jail lives: the same for every launch of that role of
/// that user, so a later start can find what a crashed runner left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailLayout {
    /// The jail id (`--id`).
    pub id: String,
    /// `--chroot-base-dir`.
    pub chroot_base: PathBuf,
    /// `<chroot_base>/<exec file name>/<id>`: removed as a whole.
    pub instance_dir: PathBuf,
    /// `<instance_dir>/root`: the VM's `/`.
    pub root: PathBuf,
}

impl JailLayout {
    /// The jail of `role` for the user whose `run/` is `run`, with
    /// `firecracker` as the exec file.
    pub fn new(chroot_base: &Path, run: &Path, role: GuestRole, firecracker: &Path) -> Self {
        let id = jail_id(run, role);
        let exec_name = firecracker
            .file_name()
            .map_or_else(|| OsString::from("firecracker"), |n| n.to_os_string());
        let instance_dir = chroot_base.join(exec_name).join(&id);
        Self {
            root: instance_dir.join("root"),
            chroot_base: chroot_base.to_path_buf(),
            instance_dir,
            id,
        }
    }

    /// The cgroup v1 directories the jailer creates for this jail.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        LIMITED_CONTROLLERS
            .iter()
            .map(|c| {
                Path::new(CGROUP_ROOT)
                    .join(c)
                    .join(PARENT_CGROUP)
                    .join(&self.id)
            })
            .collect()
    }

    /// The jailer's arguments: identity, chroot, cgroup `limits` (v1, as
    /// `file=value`; none when empty), then `--` and Firecracker's own.
    pub fn jailer_args(
        &self,
        firecracker: &Path,
        user: GuestUser,
        limits: &[String],
        firecracker_args: Vec<OsString>,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            self.id.clone().into(),
            "--exec-file".into(),
            firecracker.into(),
            "--uid".into(),
            user.uid.to_string().into(),
            "--gid".into(),
            user.gid.to_string().into(),
            "--chroot-base-dir".into(),
            self.chroot_base.clone().into(),
        ];
        if !limits.is_empty() {
            args.extend(["--cgroup-version".into(), "1".into()]);
            for l in limits {
                args.extend(["--cgroup".into(), l.into()]);
            }
        }
        args.push("--".into());
        args.extend(firecracker_args);
        args
    }
}

/// cgroup v1 limits for a VM of `mem_size_mib`, when the host has both
/// controllers mounted at [`CGROUP_ROOT`] (v1); none otherwise (cgroup v2
/// needs delegated controllers the runner does not set up).
pub fn cgroup_limits(mem_size_mib: u64) -> Vec<String> {
    let v1 = LIMITED_CONTROLLERS
        .iter()
        .all(|c| Path::new(CGROUP_ROOT).join(c).join("tasks").exists());
    if !v1 {
        return Vec::new();
    }
    let bytes = (mem_size_mib + VMM_MEMORY_OVERHEAD_MIB) << 20;
    vec![
        format!("memory.limit_in_bytes={bytes}"),
        format!("pids.max={VM_PIDS_MAX}"),
    ]
}

/// `<label>-<16 hex digits of FNV-1a over the run/ path>`: stable across
/// runs and builds (unlike std's hasher), short enough for socket paths.
pub fn jail_id(run: &Path, role: GuestRole) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}-{hash:016x}", role.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_stable_and_distinct_per_user_and_role() {
        let a = Path::new("/ws/alice/run");
        let b = Path::new("/ws/bob/run");
        assert_eq!(
            jail_id(a, GuestRole::Runtime),
            jail_id(a, GuestRole::Runtime)
        );
        assert_ne!(
            jail_id(a, GuestRole::Runtime),
            jail_id(b, GuestRole::Runtime)
        );
        assert_ne!(
            jail_id(a, GuestRole::Runtime),
            jail_id(a, GuestRole::Sidecar)
        );
        let id = jail_id(a, GuestRole::Sidecar);
        assert!(id.starts_with("shell-vm-") && id.len() == "shell-vm-".len() + 16);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn jailer_command_line() {
        let layout = JailLayout::new(
            Path::new("/ws/alice/run/jail"),
            Path::new("/ws/alice/run"),
            GuestRole::Runtime,
            Path::new("/opt/fc/firecracker"),
        );
        assert_eq!(
            layout.instance_dir,
            Path::new("/ws/alice/run/jail/firecracker").join(&layout.id)
        );
        assert_eq!(layout.root, layout.instance_dir.join("root"));
        let user = GuestUser {
            uid: 61001,
            gid: 61002,
        };
        let args = layout.jailer_args(
            Path::new("/opt/fc/firecracker"),
            user,
            &["pids.max=64".to_owned()],
            vec!["--api-sock".into(), "/api.sock".into()],
        );
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        let id = layout.id.clone();
        assert_eq!(
            args,
            [
                "--id",
                id.as_str(),
                "--exec-file",
                "/opt/fc/firecracker",
                "--uid",
                "61001",
                "--gid",
                "61002",
                "--chroot-base-dir",
                "/ws/alice/run/jail",
                "--cgroup-version",
                "1",
                "--cgroup",
                "pids.max=64",
                "--",
                "--api-sock",
                "/api.sock",
            ]
        );
        let no_limits = layout.jailer_args(Path::new("/fc"), user, &[], vec![]);
        assert!(!no_limits.iter().any(|a| a == "--cgroup-version"));
        assert_eq!(
            layout.cgroup_dirs()[1],
            Path::new("/sys/fs/cgroup/pids/firecracker").join(&id)
        );
    }

    #[test]
    fn root_needs_a_jailer_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = JailerSettings {
            binary: dir.path().join("no-jailer"),
            chroot_base: None,
            allow_without_jailer: false,
            runner_is_root: false,
        };
        assert_eq!(s.confinement().unwrap(), Confinement::Direct);
        s.runner_is_root = true;
        let err = s.confinement().unwrap_err();
        assert!(
            matches!(&err, FirecrackerLaunchError::JailerRequired { jailer, .. } if *jailer == s.binary),
            "{err:?}"
        );
        s.allow_without_jailer = true;
        assert_eq!(s.confinement().unwrap(), Confinement::UnjailedRoot);
        assert_eq!(
            s.chroot_base_for(Path::new("/ws/a/run")),
            Path::new("/ws/a/run/jail")
        );
    }
}
