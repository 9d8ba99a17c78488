//! Shared fixtures for the process-backend integration tests: a provisioned
//! temp workspace, demo-guest commands, a timed line reader over a guest's
//! output, and a bounded "is this pid gone" check.

#![allow(dead_code)] // each test file uses a different subset

use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::backend::{GuestOutput, LaunchSpec, LaunchedGuest};
use runner_core::config::GuestCommand;
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SandboxTier, StartupStatus,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Generous bound for anything a healthy guest does "promptly".
pub const PROMPT: Duration = Duration::from_secs(10);

/// A provisioned workspace in a temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub user: UserId,
    pub workspace: Workspace,
}

impl Fixture {
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

    /// The kind of envelope the runner builds for a guest of `role`.
    pub fn envelope(&self, role: GuestRole, backend: &ProcessBackend) -> BootstrapEnvelope {
        use runner_core::backend::SandboxBackend;
        let ws = &self.workspace;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        BootstrapEnvelope {
            user_id: self.user.to_string(),
            sandbox_tier: SandboxTier::Process,
            workspace_root: s(&ws.user_root),
            sidecar_endpoint: (role == GuestRole::Runtime && backend.has_sidecar())
                .then(|| backend.sidecar_endpoint(ws)),
            runtime_policy: Some(RuntimePolicy {
                mounts: ResolvedMounts {
                    shared: s(&ws.shared),
                    tmp: s(&ws.tmp),
                    vault: s(&ws.vault),
                },
                resources: ResourceLimits {
                    max_vcpus: Some(2),
                    max_memory_mib: Some(512),
                    max_processes: None,
                },
                credential_refs: BTreeMap::from([("github".into(), "vault:gh".into())]),
            }),
            startup_status: Some(StartupStatus {
                sandbox_tier: SandboxTier::Process,
                sidecar_available: backend.has_sidecar(),
                shell_available: true,
                browser_available: false,
                degraded_reasons: vec![runner_types::DegradedReason {
                    code: "insecure_process_tier".into(),
                    detail: "process tier: no isolation".into(),
                }],
            }),
        }
    }

    pub fn spec(&self, role: GuestRole, envelope: BootstrapEnvelope) -> LaunchSpec {
        LaunchSpec {
            run_as: None,
            role,
            user_id: self.user.clone(),
            session_id: "s1".into(),
            workspace: self.workspace.clone(),
            envelope,
            extra_env: BTreeMap::new(),
            resources: ResourceLimits::default(),
        }
    }
}

/// The demo guest with `args`.
pub fn demo(args: &[&str]) -> GuestCommand {
    demo_at(runner_tests::guest_binary("demo-guest"), args)
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

/// Whether `pid` no longer runs: no such process, or a zombie (dead, waiting
/// for whoever inherited it to reap it).
pub fn pid_dead(pid: u32) -> bool {
    match std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/stat"))) {
        Err(_) => true,
        // State is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

/// Waits up to `within` for `pid` to be dead. There is no event for a
/// non-child's death, so this re-checks every 20 ms until the deadline.
pub async fn wait_dead(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pid_dead(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
