//! A scripted fake backend for actor-level tests (feature `test-util`).
//!
//! [`FakeBackend`] records every [`LaunchSpec`] and hands the test a
//! [`FakeGuest`] per launch, through which the test writes guest output,
//! makes the guest exit, and sees whether it was stopped and cleaned up.
//! Launch failures are scripted per role and are real [`LaunchError`]
//! variants. Nothing here runs a process.
//!
//! It keeps the [`GuestControl`] drop contract as the real tiers do:
//! dropping the control of a guest that has not exited kills it (its exit
//! is published as SIGKILL).

use crate::UserId;
use crate::backend::exit::{exit_channel, exit_now};
use crate::backend::{
    ExitNotifier, GuestControl, GuestIdentity, GuestOutput, LaunchError, LaunchSpec, LaunchedGuest,
    SandboxBackend, StopError,
};
use crate::workspace::Workspace;
use async_trait::async_trait;
use runner_types::{
    ExitStatus, GuestExit, GuestRole, LogStream, SandboxTier, SidecarEndpoint, SidecarTransport,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// How a fake guest reacts to `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBehavior {
    /// Exits at once with SIGTERM.
    ExitOnTerm,
    /// Ignores SIGTERM: exits with SIGKILL once the grace period has passed.
    IgnoreTerm,
}

/// What the next launch of a role does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchScript {
    /// Launch succeeds.
    Succeed,
    /// Launch fails with [`LaunchError::NotConfigured`] for the role.
    Fail,
    /// Launch succeeds after this delay (a slow image check or VM boot).
    SucceedAfter(std::time::Duration),
}

#[derive(Debug, Default)]
struct Shared {
    launches: Vec<LaunchSpec>,
    scripts: Vec<(GuestRole, VecDeque<LaunchScript>)>,
    prepared: Vec<UserId>,
    next_pid: u32,
}

/// The fake backend. Clone it freely; clones share state.
#[derive(Debug, Clone)]
pub struct FakeBackend {
    tier: SandboxTier,
    has_sidecar: bool,
    overlaps_launches: bool,
    stop_behavior: StopBehavior,
    shared: Arc<Mutex<Shared>>,
    launched: mpsc::UnboundedSender<FakeGuest>,
}

/// Receives a [`FakeGuest`] for each successful launch.
#[derive(Debug)]
pub struct FakeLaunches(mpsc::UnboundedReceiver<FakeGuest>);

impl FakeLaunches {
    /// The next launched guest, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<FakeGuest> {
        tokio::time::timeout(timeout, self.0.recv())
            .await
            .ok()
            .flatten()
    }
}

impl FakeBackend {
    /// A fake for `tier` whose guests exit on SIGTERM; with a sidecar.
    pub fn new(tier: SandboxTier) -> (Self, FakeLaunches) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backend = Self {
            tier,
            has_sidecar: true,
            overlaps_launches: false,
            stop_behavior: StopBehavior::ExitOnTerm,
            shared: Arc::new(Mutex::new(Shared {
                next_pid: 10_000,
                ..Shared::default()
            })),
            launched: tx,
        };
        (backend, FakeLaunches(rx))
    }

    /// Sets how guests launched from now on react to `stop`.
    pub fn with_stop_behavior(mut self, behavior: StopBehavior) -> Self {
        self.stop_behavior = behavior;
        self
    }

    /// Sets whether a sidecar is configured.
    pub fn with_sidecar(mut self, has_sidecar: bool) -> Self {
        self.has_sidecar = has_sidecar;
        self
    }

    /// Sets whether a session may launch the runtime while the sidecar's
    /// launch is under way (see [`SandboxBackend::overlaps_launches`]).
    pub fn with_overlapping_launches(mut self, overlaps: bool) -> Self {
        self.overlaps_launches = overlaps;
        self
    }

    /// Queues what the next launches of `role` do (in order; then succeed).
    pub fn script(&self, role: GuestRole, steps: impl IntoIterator<Item = LaunchScript>) {
        let mut shared = self.lock();
        let queue = match shared.scripts.iter().position(|(r, _)| *r == role) {
            Some(i) => &mut shared.scripts[i].1,
            None => {
                shared.scripts.push((role, VecDeque::new()));
                &mut shared.scripts.last_mut().expect("just pushed").1
            }
        };
        queue.extend(steps);
    }

    /// Every launch so far (including failed ones), in order.
    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.lock().launches.clone()
    }

    /// Users for which `prepare_session` ran.
    pub fn prepared(&self) -> Vec<UserId> {
        self.lock().prepared.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panicking test thread must not hide later assertions behind poison.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn tier(&self) -> SandboxTier {
        self.tier
    }

    fn has_sidecar(&self) -> bool {
        self.has_sidecar
    }

    fn overlaps_launches(&self) -> bool {
        self.overlaps_launches
    }

    fn sidecar_endpoint(&self, workspace: &Workspace) -> SidecarEndpoint {
        SidecarEndpoint {
            transport: SidecarTransport::Unix,
            address: workspace.sidecar_socket().display().to_string(),
        }
    }

    async fn prepare_session(&self, user: &UserId, _: &Workspace) -> Result<(), LaunchError> {
        self.lock().prepared.push(user.clone());
        Ok(())
    }

    async fn launch(&self, spec: LaunchSpec) -> Result<LaunchedGuest, LaunchError> {
        let role = spec.role;
        let (script, pid) = {
            let mut shared = self.lock();
            shared.launches.push(spec.clone());
            let script = shared
                .scripts
                .iter_mut()
                .find(|(r, _)| *r == role)
                .and_then(|(_, q)| q.pop_front())
                .unwrap_or(LaunchScript::Succeed);
            shared.next_pid += 1;
            (script, shared.next_pid)
        };
        match script {
            LaunchScript::Fail => {
                return Err(LaunchError::NotConfigured {
                    role,
                    tier: self.tier,
                });
            }
            LaunchScript::SucceedAfter(delay) => tokio::time::sleep(delay).await,
            LaunchScript::Succeed => {}
        }
        let (stdout_w, stdout_r) = tokio::io::duplex(64 * 1024);
        let (stderr_w, stderr_r) = tokio::io::duplex(64 * 1024);
        let (notifier, exit) = exit_channel();
        let notifier = Arc::new(notifier);
        let counters = Arc::new(Counters::default());
        let control = FakeControl {
            notifier: notifier.clone(),
            behavior: self.stop_behavior,
            counters: counters.clone(),
        };
        let guest = FakeGuest {
            spec,
            pid,
            stdout: Some(stdout_w),
            stderr: Some(stderr_w),
            notifier,
            counters,
        };
        // The receiver may be gone if the test stopped listening; that is fine.
        if self.launched.send(guest).is_err() {
            tracing::debug!("fake launch not observed by the test");
        }
        Ok(LaunchedGuest {
            identity: GuestIdentity::Process { pid },
            outputs: GuestOutput::pair(stdout_r, stderr_r),
            exit,
            control: Box::new(control),
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    stops: AtomicU32,
    cleanups: AtomicU32,
}

#[derive(Debug)]
struct FakeControl {
    notifier: Arc<ExitNotifier>,
    behavior: StopBehavior,
    counters: Arc<Counters>,
}

#[async_trait]
impl GuestControl for FakeControl {
    async fn stop(&self, grace: Duration) -> Result<GuestExit, StopError> {
        self.counters.stops.fetch_add(1, Ordering::SeqCst);
        let mut watch = self.notifier.watch();
        if let Some(exit) = watch.get() {
            return Ok(exit);
        }
        match self.behavior {
            StopBehavior::ExitOnTerm => self
                .notifier
                .notify(exit_now(ExitStatus::Signal(15), false)),
            StopBehavior::IgnoreTerm => {
                if tokio::time::timeout(grace, watch.wait()).await.is_err() {
                    self.notifier.notify(exit_now(ExitStatus::Signal(9), false));
                }
            }
        }
        Ok(watch.wait().await)
    }

    async fn cleanup(&self) -> Result<(), StopError> {
        self.counters.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for FakeControl {
    fn drop(&mut self) {
        // The drop contract: a guest whose control is gone is killed.
        self.notifier.notify(exit_now(ExitStatus::Signal(9), false));
    }
}

/// The test's side of one launched fake guest.
#[derive(Debug)]
pub struct FakeGuest {
    /// What the runner asked for.
    pub spec: LaunchSpec,
    /// The fake pid reported in the identity.
    pub pid: u32,
    stdout: Option<DuplexStream>,
    stderr: Option<DuplexStream>,
    notifier: Arc<ExitNotifier>,
    counters: Arc<Counters>,
}

impl FakeGuest {
    /// Writes bytes to the guest's stdout (or stderr).
    pub async fn write(&mut self, stream: LogStream, bytes: &[u8]) -> std::io::Result<()> {
        let pipe = match stream {
            LogStream::Stdout => self.stdout.as_mut(),
            LogStream::Stderr => self.stderr.as_mut(),
        };
        match pipe {
            Some(p) => p.write_all(bytes).await,
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Closes both output streams (the pumps see EOF).
    pub fn close_output(&mut self) {
        self.stdout = None;
        self.stderr = None;
    }

    /// Makes the guest exit with `status`. Output stays open until
    /// [`FakeGuest::close_output`] or drop, like a grandchild holding a pipe.
    pub fn exit(&self, status: ExitStatus) {
        self.notifier.notify(exit_now(status, false));
    }

    /// Makes the guest exit as if OOM-killed.
    pub fn exit_oom(&self) {
        self.notifier.notify(exit_now(ExitStatus::Signal(9), true));
    }

    /// The exit, if any.
    pub fn exited(&self) -> Option<GuestExit> {
        self.notifier.watch().get()
    }

    /// A watch on this guest's exit (however it comes: [`FakeGuest::exit`],
    /// a stop, or its control dropped).
    pub fn exit_watch(&self) -> crate::backend::ExitWatch {
        self.notifier.watch()
    }

    /// How often `stop` was called.
    pub fn stop_calls(&self) -> u32 {
        self.counters.stops.load(Ordering::SeqCst)
    }

    /// How often `cleanup` was called.
    pub fn cleanup_calls(&self) -> u32 {
        self.counters.cleanups.load(Ordering::SeqCst)
    }
}
