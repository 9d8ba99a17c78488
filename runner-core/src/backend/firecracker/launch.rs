//! Starting one firecracker process: per-launch file names, the command
//! line (plain data) and the spawn. The running VM is then owned by
//! [`super::FirecrackerControl`].
//!
//! Process handling: firecracker is started like a process-tier guest (see
//! `backend::process::clean_child`): without copying the runner, in its
//! own process group (so a Ctrl-C at the runner's terminal reaches the
//! runner, which then stops VMs in order), with a cleared environment,
//! stdin from `/dev/null` and stdout (serial console) and stderr piped.

use super::control::FirecrackerControl;
use super::error::FirecrackerLaunchError;
use super::jail::JailLayout;
use super::vsock_bridge::VsockBridge;
use crate::backend::clean_start::StartRlimits;
use crate::backend::process::SpawnThreadSlot;
use crate::backend::process::clean_child;
use crate::backend::{GuestIdentity, GuestOutput, LaunchedGuest, StopError};
use crate::identity::GuestUser;
use runner_types::GuestRole;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tokio::net::unix::pipe;

/// Pipe buffer asked for the serial console. Firecracker drops serial bytes
/// when the pipe is full; 1 MiB (the default unprivileged maximum) is about
/// 40 s of serial output at the UART's speed, slack for a briefly slow pump.
const SERIAL_PIPE_BYTES: i32 = 1 << 20;
/// Firecracker's own log level; its log goes to a file, not the console.
const VMM_LOG_LEVEL: &str = "Warn";

/// Per-launch files of one VM: in the workspace's `run/` for an unjailed
/// VM, in its chroot for a jailed one. All fields are host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPaths {
    /// Generated config (`<label>-firecracker.json`, mode 0600).
    pub config: PathBuf,
    /// API socket (`<label>-firecracker.sock`).
    pub api_socket: PathBuf,
    /// Host side of the vsock device (`<label>-vsock.sock`).
    pub vsock_socket: PathBuf,
    /// Firecracker's own log (`<label>-firecracker.log`, mode 0600). Moved
    /// to `logs/<label>-firecracker.log` after the VM exits, for diagnosis
    /// (replaced by the next launch's).
    pub vmm_log: PathBuf,
    /// The chroot a jailed Firecracker sees as `/`; `None` when unjailed.
    pub jail_root: Option<PathBuf>,
}

impl LaunchPaths {
    /// The files for an unjailed VM of `role` under `run`.
    pub fn new(run: &Path, role: GuestRole) -> Self {
        let label = role.label();
        Self {
            config: run.join(format!("{label}-firecracker.json")),
            api_socket: run.join(format!("{label}-firecracker.sock")),
            vsock_socket: run.join(format!("{label}-vsock.sock")),
            vmm_log: run.join(format!("{label}-firecracker.log")),
            jail_root: None,
        }
    }

    /// The files of a jailed VM whose chroot is `root`.
    pub fn jailed(root: &Path) -> Self {
        Self {
            config: root.join("config.json"),
            api_socket: root.join("api.sock"),
            vsock_socket: root.join("vsock.sock"),
            vmm_log: root.join("firecracker.log"),
            jail_root: Some(root.to_path_buf()),
        }
    }

    /// `host` as Firecracker sees it: unchanged when unjailed, relative to
    /// the chroot (with a leading `/`) when jailed.
    pub fn visible(&self, host: &Path) -> PathBuf {
        match self.jail_root.as_deref().map(|r| host.strip_prefix(r)) {
            Some(Ok(inside)) => Path::new("/").join(inside),
            _ => host.to_path_buf(),
        }
    }

    /// Where the runtime VM's connections to host vsock port `port` arrive
    /// (Firecracker's `<uds_path>_<port>` convention).
    pub fn vsock_port_socket(&self, port: u32) -> PathBuf {
        let mut name = self.vsock_socket.clone().into_os_string();
        name.push(format!("_{port}"));
        PathBuf::from(name)
    }

    /// The firecracker arguments for these files: API socket, config file,
    /// and Firecracker's log sent to [`Self::vmm_log`] so that stdout carries
    /// the serial console alone.
    pub fn firecracker_args(&self) -> Vec<OsString> {
        vec![
            "--api-sock".into(),
            self.visible(&self.api_socket).into(),
            "--config-file".into(),
            self.visible(&self.config).into(),
            "--log-path".into(),
            self.visible(&self.vmm_log).into(),
            "--level".into(),
            VMM_LOG_LEVEL.into(),
        ]
    }

    /// Gives the generated config and the VMM log to `user` (a jailed
    /// Firecracker reads the one and writes the other after dropping root).
    pub fn hand_to(&self, user: GuestUser) -> Result<(), FirecrackerLaunchError> {
        for path in [&self.config, &self.vmm_log] {
            std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
                FirecrackerLaunchError::WriteFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Removes sockets an earlier launch left behind (Firecracker refuses to
    /// start on a stale API socket) and writes the generated config and an
    /// empty VMM log (Firecracker requires `--log-path` to exist), both 0600.
    pub fn prepare(&self, config_json: &str) -> Result<(), FirecrackerLaunchError> {
        for socket in [&self.api_socket, &self.vsock_socket] {
            remove_if_present(socket).map_err(|source| FirecrackerLaunchError::RemoveStale {
                path: socket.clone(),
                source,
            })?;
        }
        write_private(&self.config, config_json.as_bytes())?;
        write_private(&self.vmm_log, b"")
    }

    /// Removes everything [`Self::prepare`] wrote, the VMM log included: for
    /// a launch that never started.
    pub fn discard(&self) -> Result<(), StopError> {
        self.remove()?;
        remove_if_present(&self.vmm_log).map_err(|source| StopError::RemoveFile {
            path: self.vmm_log.clone(),
            source,
        })
    }

    /// Removes the generated config and both sockets. Every file is tried;
    /// the first failure is returned, the others logged.
    pub fn remove(&self) -> Result<(), StopError> {
        let mut first = None;
        for path in [&self.api_socket, &self.vsock_socket, &self.config] {
            if let Err(source) = remove_if_present(path) {
                tracing::warn!(path = %path.display(), error = %source, "cannot remove per-launch file");
                first.get_or_insert(StopError::RemoveFile {
                    path: path.clone(),
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// What a launch leaves besides [`LaunchPaths`], owned by its control and
/// waiter until the VM has exited and been cleaned up.
#[derive(Debug, Default)]
pub struct LaunchResources {
    /// Private drive copies (unjailed VMs; a jail's are removed with it).
    pub private_files: Vec<PathBuf>,
    /// The jail, removed with its cgroups at cleanup.
    pub jail: Option<JailLayout>,
    /// Where the VMM log is moved before a jail is removed.
    pub keep_log_at: Option<PathBuf>,
    /// The ownership record, removed once the VM has exited.
    pub record: Option<PathBuf>,
    /// The runtime-to-sidecar bridge, torn down when the VM exits.
    pub bridge: Option<VsockBridge>,
}

/// Starts `program args` (firecracker, or the jailer that becomes it) for
/// `role` with the already prepared `paths`.
pub fn spawn(
    program: &Path,
    args: Vec<OsString>,
    role: GuestRole,
    paths: LaunchPaths,
    resources: LaunchResources,
    rlimits: StartRlimits,
    spawner: &SpawnThreadSlot,
) -> Result<LaunchedGuest, FirecrackerLaunchError> {
    let spawn_err = |source| FirecrackerLaunchError::Spawn {
        role,
        binary: program.to_path_buf(),
        source,
    };
    // Created the way process-tier guests are: without copying the runner,
    // in its own process group, with an empty environment and a clean
    // start (the death signal, so that a VM does not outlive a runner that
    // died; umask 077; only fds 0-2; the runner's start rlimits;
    // no_new_privs, which does not stand in the jailer's way: it drops to
    // the guest uid without exec'ing anything set-uid).
    let child = clean_child::start(role, program, &args, rlimits, spawner).map_err(spawn_err)?;
    let pid = child.pid;
    let (stdout, stderr) = console_pipes(child.stdout, child.stderr, role, pid)
        .inspect_err(|_| child.group.kill_quietly())
        .map_err(spawn_err)?;
    let (control, exit) =
        FirecrackerControl::start(child.group, child.exit, role, pid, paths, resources);
    Ok(LaunchedGuest {
        identity: GuestIdentity::MicroVm { pid },
        outputs: GuestOutput::pipes(stdout, stderr),
        exit,
        control: Box::new(control),
    })
}

/// The child's stdout (the serial console, its pipe enlarged) and stderr as
/// Tokio pipes, so the console is spliced into its log.
fn console_pipes(
    stdout: OwnedFd,
    stderr: OwnedFd,
    role: GuestRole,
    pid: u32,
) -> std::io::Result<(pipe::Receiver, pipe::Receiver)> {
    let stdout = pipe::Receiver::from_owned_fd(stdout)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr)?;
    if let Err(e) = nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(SERIAL_PIPE_BYTES),
    ) {
        tracing::warn!(%role, pid, error = %e, "cannot enlarge the serial console pipe");
    }
    Ok((stdout, stderr))
}

/// Removes `path`; a file that is not there is no error.
pub(super) fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replaces `path` with a new 0600 file holding `bytes` (removed first, so a
/// leftover file with a wider mode is never reused).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), FirecrackerLaunchError> {
    let err = |source| FirecrackerLaunchError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    remove_if_present(path).map_err(err)?;
    // `create_new` (O_EXCL) never opens an existing file, symlink or FIFO;
    // O_NOFOLLOW says the same once more.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn args_of(p: &LaunchPaths) -> Vec<String> {
        p.firecracker_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn per_launch_names_and_arguments() {
        let p = LaunchPaths::new(Path::new("/ws/alice/run"), GuestRole::Sidecar);
        assert_eq!(
            p.config,
            Path::new("/ws/alice/run/shell-vm-firecracker.json")
        );
        assert_eq!(
            p.api_socket,
            Path::new("/ws/alice/run/shell-vm-firecracker.sock")
        );
        assert_eq!(
            p.vsock_socket,
            Path::new("/ws/alice/run/shell-vm-vsock.sock")
        );
        let args = args_of(&p);
        assert_eq!(
            args,
            [
                "--api-sock",
                "/ws/alice/run/shell-vm-firecracker.sock",
                "--config-file",
                "/ws/alice/run/shell-vm-firecracker.json",
                "--log-path",
                "/ws/alice/run/shell-vm-firecracker.log",
                "--level",
                "Warn",
            ]
        );
    }

    #[test]
    fn a_jailed_vm_sees_its_files_relative_to_the_chroot() {
        let root = Path::new("/ws/alice/run/jail/firecracker/oxydra-vm-0123/root");
        let p = LaunchPaths::jailed(root);
        assert_eq!(p.api_socket, root.join("api.sock"));
        assert_eq!(p.visible(&p.vsock_socket), Path::new("/vsock.sock"));
        assert_eq!(p.vsock_port_socket(1024), root.join("vsock.sock_1024"));
        let args = args_of(&p);
        assert_eq!(
            args,
            [
                "--api-sock",
                "/api.sock",
                "--config-file",
                "/config.json",
                "--log-path",
                "/firecracker.log",
                "--level",
                "Warn"
            ]
        );
        // Unjailed, paths are the host's.
        let direct = LaunchPaths::new(Path::new("/ws/alice/run"), GuestRole::Runtime);
        assert_eq!(direct.visible(&direct.vsock_socket), direct.vsock_socket);
        assert_eq!(
            direct.vsock_port_socket(1024),
            Path::new("/ws/alice/run/oxydra-vm-vsock.sock_1024")
        );
    }

    #[test]
    fn prepare_replaces_stale_files_and_remove_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = LaunchPaths::new(dir.path(), GuestRole::Runtime);
        for stale in [&p.api_socket, &p.vsock_socket, &p.config] {
            std::fs::write(stale, b"old").unwrap();
            std::fs::set_permissions(stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        p.prepare("{}").unwrap();
        assert!(!p.api_socket.exists() && !p.vsock_socket.exists());
        assert_eq!(std::fs::read_to_string(&p.config).unwrap(), "{}");
        for f in [&p.config, &p.vmm_log] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        p.remove().unwrap();
        assert!(!p.config.exists());
        assert!(p.vmm_log.exists(), "the VMM log is kept for diagnosis");
        p.remove().unwrap(); // idempotent
    }
}
