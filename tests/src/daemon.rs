//! `runner-bin --daemon` as a child process, the way the end-to-end tests
//! drive it: start it, wait (bounded) for its `control_socket=` line, signal
//! it, and wait (bounded) for it to exit. The binary's path is a parameter:
//! tests in this crate pass [`crate::runner_binary`], runner-bin's own tests
//! `env!("CARGO_BIN_EXE_runner-bin")`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the bounded waits re-check a child: there is no event for a
/// child's exit that a `std::process::Child` can wait on with a deadline.
const POLL: Duration = Duration::from_millis(20);

/// A child process that is killed and reaped when dropped while still
/// running: only a failed test drops it so, and it must not leave the
/// daemon behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl KillOnDrop {
    /// Sends `sig` to the child.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(&self.0, sig);
    }

    /// Waits up to `within` for the child to exit; its status.
    pub fn wait_bounded(&mut self, within: Duration) -> ExitStatus {
        wait_bounded(&mut self.0, within)
    }
}

/// `bin --daemon --user <user>` in `dir`, with stdin closed and stdout and
/// stderr piped; callers add arguments, environment or other stdio.
pub fn daemon_command(bin: &Path, user: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--daemon", "--user", user])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns `cmd` (whose stdout must be piped) and returns it, killed on
/// drop, with its stdout lines.
pub fn spawn(cmd: &mut Command) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = cmd.spawn().expect("spawn the daemon");
    let stdout = child.stdout.take().expect("the daemon's stdout is piped");
    (KillOnDrop(child), lines_of(stdout))
}

/// Waits up to `within` for the daemon's first stdout line, which must be
/// `control_socket=<path>`; the path.
pub fn wait_serving(lines: &mpsc::Receiver<String>, within: Duration) -> PathBuf {
    let line = lines
        .recv_timeout(within)
        .expect("daemon printed no control_socket line");
    let socket = line
        .strip_prefix("control_socket=")
        .unwrap_or_else(|| panic!("not a control_socket= line: {line:?}"));
    PathBuf::from(socket)
}

/// The lines `reader` yields, sent from a thread until it ends or the
/// receiver is gone.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal the child");
}

/// Waits up to `within` for `child` to exit; its status. Panics when it
/// is still running then.
pub fn wait_bounded(child: &mut Child, within: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "process {} did not exit within {within:?}",
            child.id()
        );
        std::thread::sleep(POLL);
    }
}

/// Runs `cmd` with stdin closed and stdout and stderr piped, waits up to
/// `within` for it to exit, and returns its output. Only for commands whose
/// output fits the pipes.
pub fn output_bounded(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    wait_bounded(&mut child, within);
    child.wait_with_output().expect("collect the output")
}
