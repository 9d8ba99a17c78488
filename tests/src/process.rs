//! Shared fixtures for the process-backend integration tests: a provisioned
//! temp workspace, demo-guest commands, a timed line reader over a guest's
//! output, and a bounded "is this pid gone" check.

use crate::envelope::{envelope_for, launch_spec, user_config};
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{GuestOutput, LaunchSpec, LaunchedGuest};
use runner_core::config::GuestCommand;
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{BootstrapEnvelope, GuestRole, LogStream, ResourceLimits};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Generous bound for anything a healthy guest does "promptly".
pub const PROMPT: Duration = Duration::from_secs(10);

/// A provisioned workspace in a temp dir.
pub struct Fixture {
    /// Holds the workspace.
    pub dir: tempfile::TempDir,
    /// The user (`alice`).
    pub user: UserId,
    /// Its provisioned workspace.
    pub workspace: Workspace,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A fresh workspace for `alice`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::new("alice").unwrap();
        let workspace =
            Workspace::provision(dir.path(), &user, &MountOverrides::default()).unwrap();
        Self {
            dir,
            user,
            workspace,
        }
    }

    /// The envelope the runner builds for a guest of `role` (2 vCPUs,
    /// 512 MiB, one credential).
    pub fn envelope(&self, role: GuestRole, backend: &ProcessBackend) -> BootstrapEnvelope {
        let limits = ResourceLimits {
            max_vcpus: Some(2),
            max_memory_mib: Some(512),
            max_processes: None,
        };
        let config = user_config(limits, &[("github", "vault:gh")]);
        envelope_for(backend, &self.user, &self.workspace, role, &config)
    }

    /// A launch spec for `role` carrying `envelope`.
    pub fn spec(&self, role: GuestRole, envelope: BootstrapEnvelope) -> LaunchSpec {
        let limits = ResourceLimits::default();
        launch_spec(role, &self.user, &self.workspace, envelope, limits)
    }
}

/// `user`'s workspace on the built-in defaults for `dir`, provisioned as
/// the daemon provisions it on the process tier: for the user's guest uid,
/// which a root runner maps.
pub fn provision_like_daemon(dir: &std::path::Path, user: &UserId) -> Workspace {
    let config = runner_core::config::RunnerConfig::defaults(dir);
    let identity = runner_core::identity::resolve_guest_user(
        &config,
        user,
        runner_types::SandboxTier::Process,
        nix::unistd::geteuid().as_raw(),
    )
    .unwrap();
    Workspace::provision_for(
        &config.workspace_root,
        user,
        &MountOverrides::default(),
        identity.run_as,
    )
    .unwrap()
}

/// The demo guest with `args`.
pub fn demo(args: &[&str]) -> GuestCommand {
    demo_at(crate::guest_binary("demo-guest"), args)
}

/// The demo guest at `program` with `args`.
pub fn demo_at(program: PathBuf, args: &[&str]) -> GuestCommand {
    GuestCommand {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
    }
}

/// A backend with only a runtime command.
pub fn runtime_only(runtime: GuestCommand) -> ProcessBackend {
    ProcessBackend::new(ProcessBackendConfig {
        runtime,
        sidecar: None,
        search_path: Some("/usr/local/bin:/usr/bin:/bin".into()),
    })
}

/// Launches `role` with the fixture's usual envelope.
pub async fn launch(fx: &Fixture, backend: &ProcessBackend, role: GuestRole) -> LaunchedGuest {
    use runner_core::backend::SandboxBackend;
    let spec = fx.spec(role, fx.envelope(role, backend));
    tokio::time::timeout(PROMPT, backend.launch(spec))
        .await
        .expect("launch is bounded")
        .expect("launch succeeds")
}

/// Line reader over one output stream of a guest.
pub struct Lines {
    reader: BufReader<Pin<Box<dyn AsyncRead + Send>>>,
}

/// Takes the guest's stdout and stderr as line readers.
pub fn take_outputs(guest: &mut LaunchedGuest) -> (Lines, Lines) {
    let mut take = |stream| {
        let i = guest
            .outputs
            .iter()
            .position(|o: &GuestOutput| o.stream == stream)
            .expect("stream is captured");
        Lines {
            reader: BufReader::new(guest.outputs.remove(i).reader.into_reader()),
        }
    };
    let out = take(LogStream::Stdout);
    let err = take(LogStream::Stderr);
    (out, err)
}

impl Lines {
    /// The next line (without its newline), `None` at EOF. Panics if none
    /// arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(within, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("a line or EOF within the bound")
            .expect("readable");
        if n == 0 {
            return None;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        Some(String::from_utf8(buf).expect("demo guest prints UTF-8"))
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub async fn until(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                None => panic!("EOF before a line starting with {prefix:?}"),
            }
        }
    }

    /// Every remaining line, up to EOF, which must come within `within`.
    pub async fn rest_until_eof(&mut self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        while let Some(l) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            lines.push(l);
        }
        lines
    }
}

/// Whether `pid` no longer runs: no such process, or a zombie (dead,
/// waiting for whoever inherited it to reap it).
pub fn pid_dead(pid: u32) -> bool {
    !crate::process_alive(pid)
}

pub use crate::wait_gone as wait_dead;
