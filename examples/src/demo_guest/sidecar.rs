//! The sidecar half of the demo guest: a Unix listener that greets each
//! connection and echoes its lines.
//!
//! The runner tells the sidecar nothing about where to listen: its envelope
//! carries no `sidecar_endpoint` (that is for the runtime guest). It derives
//! the path the runner hands the runtime guest from the guest contract:
//! `<workspace_root>/ipc/shell-daemon.sock` on the process tier (the
//! envelope's `workspace_root` is the user's own directory),
//! and `/ipc/shell-daemon.sock` in a container, where the sidecar sees the
//! user's `ipc/` at `/ipc` (the runtime sees the same directory at its host
//! path).

use runner_types::{BootstrapEnvelope, SandboxTier};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// File name of the sidecar socket inside `ipc/` (the runner's
/// `SIDECAR_SOCKET_NAME`).
const SOCKET_NAME: &str = "shell-daemon.sock";

/// A bound sidecar socket; [`Sidecar::close`] removes the file.
#[derive(Debug)]
pub struct Sidecar {
    path: PathBuf,
}

/// Where the sidecar of this envelope's user listens.
pub fn socket_path(envelope: &BootstrapEnvelope) -> PathBuf {
    if envelope.sandbox_tier == SandboxTier::Container {
        return Path::new("/ipc").join(SOCKET_NAME);
    }
    Path::new(&envelope.workspace_root)
        .join("ipc")
        .join(SOCKET_NAME)
}

impl Sidecar {
    /// Binds the socket (replacing a stale one a previous run left) and
    /// serves connections on a background thread.
    pub fn start(envelope: &BootstrapEnvelope) -> std::io::Result<Self> {
        let path = socket_path(envelope);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        let greeting = format!("sidecar user={}\n", envelope.user_id);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let greeting = greeting.clone();
                        std::thread::spawn(move || serve(stream, &greeting));
                    }
                    Err(e) => eprintln!("sidecar accept failed: {e}"),
                }
            }
        });
        Ok(Self { path })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file.
    pub fn close(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Greets, then echoes each line back as `echo <line>` until EOF.
fn serve(stream: UnixStream, greeting: &str) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("sidecar connection: {e}");
            return;
        }
    };
    if writer.write_all(greeting.as_bytes()).is_err() {
        return;
    }
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writeln!(writer, "echo {line}").is_err() {
            return;
        }
    }
}
