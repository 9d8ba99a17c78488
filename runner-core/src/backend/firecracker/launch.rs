//! Starting one firecracker process and owning it: per-launch file names,
//! the command line (plain data), the spawn, the waiter task that publishes
//! the exit, and [`FirecrackerControl`], the stop/cleanup handle.
//!
//! Process handling: firecracker runs in its own process group (so a Ctrl-C
//! at the runner's terminal reaches the runner, which then stops VMs in
//! order), with a cleared environment, stdin from /dev/null and stdout
//! (serial console) and stderr piped. The waiter task owns the `Child`; a
//! forced stop asks it to kill, so a signal can never hit a reused pid. The
//! child is `kill_on_drop`: if the tokio runtime that owns the waiter goes
//! away, the VM goes with it.

use super::api;
use super::error::FirecrackerLaunchError;
use crate::backend::exit::{ExitNotifier, exit_channel, exit_now};
use crate::backend::{
    ExitWatch, GuestControl, GuestIdentity, GuestOutput, LaunchedGuest, StopError,
};
use async_trait::async_trait;
use runner_types::{ExitStatus, GuestExit, GuestRole};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Longest the shutdown API request may take (less if the grace is shorter).
const API_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for the exit after SIGKILL before reporting failure.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pipe buffer asked for the serial console. Firecracker drops serial bytes
/// when the pipe is full; 1 MiB (the default unprivileged maximum) is about
/// 40 s of serial output at the UART's speed, slack for a briefly slow pump.
const SERIAL_PIPE_BYTES: i32 = 1 << 20;
/// Firecracker's own log level; its log goes to a file, not the console.
const VMM_LOG_LEVEL: &str = "Warn";

/// Per-launch files of one VM, all in the workspace's `run/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPaths {
    /// Generated config (`<label>-firecracker.json`, mode 0600).
    pub config: PathBuf,
    /// API socket (`<label>-firecracker.sock`).
    pub api_socket: PathBuf,
    /// Host side of the vsock device (`<label>-vsock.sock`).
    pub vsock_socket: PathBuf,
    /// Firecracker's own log (`<label>-firecracker.log`, mode 0600). Kept
    /// after the VM exits for diagnosis; truncated by the next launch.
    pub vmm_log: PathBuf,
}

impl LaunchPaths {
    /// The files for `role` under `run`.
    pub fn new(run: &Path, role: GuestRole) -> Self {
        let label = role.label();
        Self {
            config: run.join(format!("{label}-firecracker.json")),
            api_socket: run.join(format!("{label}-firecracker.sock")),
            vsock_socket: run.join(format!("{label}-vsock.sock")),
            vmm_log: run.join(format!("{label}-firecracker.log")),
        }
    }

    /// The firecracker arguments for these files: API socket, config file,
    /// and Firecracker's log sent to [`Self::vmm_log`] so that stdout carries
    /// the serial console alone.
    pub fn firecracker_args(&self) -> Vec<OsString> {
        vec![
            "--api-sock".into(),
            self.api_socket.clone().into(),
            "--config-file".into(),
            self.config.clone().into(),
            "--log-path".into(),
            self.vmm_log.clone().into(),
            "--level".into(),
            VMM_LOG_LEVEL.into(),
        ]
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

/// Starts firecracker for `role` with the already prepared `paths`.
pub fn spawn(
    binary: &Path,
    role: GuestRole,
    paths: LaunchPaths,
) -> Result<LaunchedGuest, FirecrackerLaunchError> {
    let spawn_err = |source| FirecrackerLaunchError::Spawn {
        role,
        binary: binary.to_path_buf(),
        source,
    };
    let mut cmd = Command::new(binary);
    cmd.args(paths.firecracker_args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // A VM must not outlive a runner that died (SIGKILL, OOM).
    crate::backend::parent_death::arm(cmd.as_std_mut());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pid = child
        .id()
        .ok_or_else(|| spawn_err(std::io::Error::other("exited before its pid was read")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("stdout and stderr were configured as pipes");
    };
    if let Err(e) = nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(SERIAL_PIPE_BYTES),
    ) {
        tracing::warn!(%role, pid, error = %e, "cannot enlarge the serial console pipe");
    }

    let (notifier, exit) = exit_channel();
    // Capacity 1: one pending kill request is all a waiter ever needs.
    let (kill_tx, kill_rx) = mpsc::channel(1);
    tokio::spawn(wait_for_exit(child, role, pid, notifier, kill_rx));
    tracing::debug!(%role, pid, config = %paths.config.display(), "firecracker started");

    Ok(LaunchedGuest {
        identity: GuestIdentity::MicroVm { pid },
        outputs: GuestOutput::pair(stdout, stderr),
        exit: exit.clone(),
        control: Box::new(FirecrackerControl {
            role,
            pid,
            paths,
            exit,
            kill: kill_tx,
        }),
    })
}

/// Owns the child until it exits, killing it when asked; publishes the exit.
async fn wait_for_exit(
    mut child: Child,
    role: GuestRole,
    pid: u32,
    notifier: ExitNotifier,
    mut kill_rx: mpsc::Receiver<()>,
) {
    let waited = tokio::select! {
        status = child.wait() => status,
        // A kill request, or every control handle dropped: nobody can stop
        // this VM any more, and it must not outlive its owner.
        _ = kill_rx.recv() => {
            if let Err(e) = child.start_kill() {
                tracing::warn!(%role, pid, error = %e, "cannot kill firecracker");
            }
            child.wait().await
        }
    };
    let status = match waited {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Signal(9),
        },
        Err(e) => {
            tracing::warn!(%role, pid, error = %e, "cannot wait for firecracker; reporting it killed");
            ExitStatus::Signal(9)
        }
    };
    tracing::debug!(%role, pid, %status, "firecracker exited");
    notifier.notify(exit_now(status, false));
}

/// Stop and clean-up of one VM.
#[derive(Debug)]
pub struct FirecrackerControl {
    role: GuestRole,
    pid: u32,
    paths: LaunchPaths,
    exit: ExitWatch,
    kill: mpsc::Sender<()>,
}

#[async_trait]
impl GuestControl for FirecrackerControl {
    /// Sends Ctrl-Alt-Del through the API (bounded by the grace and
    /// one second), waits out the rest of the grace, then SIGKILLs.
    /// Firecracker has no SIGTERM handler, so it is never sent: it would end
    /// the VM just as abruptly as SIGKILL, without the guest's chance to act
    /// on Ctrl-Alt-Del.
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        if let Some(exit) = self.exit.get() {
            return Ok(exit);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let api_limit = grace.min(API_TIMEOUT);
        if !api_limit.is_zero() {
            match api::send_ctrl_alt_del(&self.paths.api_socket, api_limit).await {
                Ok(()) => tracing::debug!(role = %self.role, pid = self.pid, "sent Ctrl-Alt-Del"),
                Err(e) => {
                    tracing::warn!(role = %self.role, pid = self.pid, error = %e, "cannot ask the guest to shut down")
                }
            }
        }
        let mut watch = self.exit.clone();
        if let Ok(exit) = tokio::time::timeout_at(deadline, watch.wait()).await {
            return Ok(exit);
        }
        tracing::info!(role = %self.role, pid = self.pid, ?grace, "guest did not stop within grace; killing firecracker");
        if let Err(e) = self.kill.try_send(()) {
            // Full: a kill is already pending. Closed: the waiter has
            // finished, so the exit is (about to be) published. Either way
            // the wait below sees it.
            tracing::debug!(role = %self.role, pid = self.pid, error = %e, "kill not queued");
        }
        tokio::time::timeout(KILL_WAIT, watch.wait())
            .await
            .map_err(|_| StopError::StillRunning { waited: KILL_WAIT })
    }

    async fn cleanup(&self) -> Result<(), StopError> {
        self.paths.remove()
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
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
        let args: Vec<String> = p
            .firecracker_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
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
