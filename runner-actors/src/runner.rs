//! [`Runner`]: the embedding entry point — config plus backends in, sessions out.

use crate::control::ControlLimits;
use crate::error::SessionError;
use crate::events::EventBus;
use crate::events::SessionEvent;
use crate::session::start::{self, FilesJob, FilesPlan};
use crate::session::{LAUNCH_TIMEOUT, SessionArgs, SessionHandle, SessionMsg, SessionSupervisor};
use ractor::{Actor, ActorRef};
use runner_core::backend::SandboxBackend;
use runner_core::bootstrap;
use runner_core::config::RunnerConfig;
use runner_core::guest_env::GuestEnv;
use runner_core::health::{HealthInputs, SessionPhase, health_report};
use runner_core::identity;
use runner_core::lock::{LockError, SessionLock};
use runner_core::logs::WriterThreads;
use runner_core::metrics::RunnerMetrics;
use runner_core::workspace::WorkspaceRoot;
use runner_core::{UserId, Workspace};
use runner_types::{HealthStatus, SandboxTier};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The backends a runner may use, one per tier. Inject fakes in tests.
#[derive(Clone, Default)]
pub struct Backends {
    process: Option<Arc<dyn SandboxBackend>>,
    container: Option<Arc<dyn SandboxBackend>>,
    micro_vm: Option<Arc<dyn SandboxBackend>>,
}

impl Backends {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `backend` for the tier it reports.
    pub fn with(mut self, backend: Arc<dyn SandboxBackend>) -> Self {
        let slot = match backend.tier() {
            SandboxTier::Process => &mut self.process,
            SandboxTier::Container => &mut self.container,
            SandboxTier::MicroVm => &mut self.micro_vm,
        };
        *slot = Some(backend);
        self
    }

    /// The backend for `tier`, if any.
    pub fn get(&self, tier: SandboxTier) -> Option<Arc<dyn SandboxBackend>> {
        match tier {
            SandboxTier::Process => self.process.clone(),
            SandboxTier::Container => self.container.clone(),
            SandboxTier::MicroVm => self.micro_vm.clone(),
        }
    }
}

/// Per-session choices.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Serve `run/runner-control.sock` (default true).
    pub serve_control: bool,
    /// Force the process tier (`--insecure`); reported as degraded.
    pub insecure: bool,
    /// Extra guest environment (`-e`, `--env-file`), routed per guest
    /// ([`GuestEnv::route`]); the user's time zone is added as `TZ` where
    /// it is unset.
    pub env: GuestEnv,
    /// Control-socket connection limits.
    pub control_limits: ControlLimits,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            serve_control: true,
            insecure: false,
            env: GuestEnv::default(),
            control_limits: ControlLimits::default(),
        }
    }
}

/// Starts sessions. Holds no global state: many runners, and many sessions
/// per runner, can live in one process.
pub struct Runner {
    config: Arc<RunnerConfig>,
    backends: Backends,
    sessions_started: AtomicU64,
    metrics: RunnerMetrics,
    /// Ids the host's account databases did not know, remembered briefly
    /// (see [`identity::AccountCache`]).
    accounts: Arc<identity::AccountCache>,
    /// The threads every session's log writers share (see
    /// [`WriterThreads`]).
    log_writers: WriterThreads,
}

impl Runner {
    /// A runner over `config` using `backends`.
    pub fn new(config: RunnerConfig, backends: Backends) -> Self {
        Self {
            config: Arc::new(config),
            backends,
            sessions_started: AtomicU64::new(0),
            metrics: RunnerMetrics::default(),
            accounts: Arc::default(),
            log_writers: WriterThreads::new(),
        }
    }

    /// The metrics of this runner and all its sessions
    /// ([`RunnerMetrics::render`] gives the OpenMetrics text).
    pub fn metrics(&self) -> &RunnerMetrics {
        &self.metrics
    }

    /// The config.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Starts a session for `user` with default options.
    pub async fn start_session(&self, user: &str) -> Result<SessionHandle, SessionError> {
        self.start_session_with(user, SessionOptions::default())
            .await
    }

    /// Starts a session: provisions the workspace, starts pumps, the sidecar,
    /// the runtime and (optionally) the control listener. On failure,
    /// whatever was started is stopped again before the error is returned.
    pub async fn start_session_with(
        &self,
        user: &str,
        options: SessionOptions,
    ) -> Result<SessionHandle, SessionError> {
        self.start_session_cancellable(user, options, CancellationToken::new())
            .await
    }

    /// As [`Runner::start_session_with`], cancellable: once `cancel` fires,
    /// launches still in flight are no longer waited for, everything
    /// started so far is shut down, and only then does this return
    /// [`SessionError::Cancelled`] (so the session lock is free again).
    pub async fn start_session_cancellable(
        &self,
        user: &str,
        options: SessionOptions,
        cancel: CancellationToken,
    ) -> Result<SessionHandle, SessionError> {
        let began = std::time::Instant::now();
        let user = UserId::new(user)?;
        let tier = if options.insecure {
            SandboxTier::Process
        } else {
            self.config.tier_for(&user)
        };
        let backend = self
            .backends
            .get(tier)
            .ok_or(SessionError::NoBackend { tier })?;
        let plan = FilesPlan {
            has_sidecar: backend.has_sidecar(),
            limits: self.config.logs,
            writers: self.log_writers.clone(),
            control: options
                .serve_control
                .then_some(self.config.control.ipc_socket_link),
        };
        let provisioned = self.provision(&user, tier, plan).await?;
        let (args, handle) = self.session_args(user, tier, backend, provisioned, options, &cancel);
        let (actor, join) = Actor::spawn(None, SessionSupervisor, args)
            .instrument(tracing::debug_span!("session.spawn_supervisor"))
            .await
            .map_err(SessionError::Spawn)?;
        let handle = handle.attach(actor, join);
        let handle = start_or_shut_down(handle, cancel).await?;
        self.metrics.session_started(tier, began.elapsed());
        Ok(handle)
    }

    /// The guest identity (root runs every guest under its user's own uid,
    /// see runner_core::identity; anyone else runs guests as itself), the
    /// workspace and the lock file: file-system work, so it runs on the
    /// blocking pool, never on a runtime worker. The same task then goes on
    /// to open the session's log files and bind its control socket (see
    /// [`FilesPlan`]) while the start goes ahead; it holds the session lock
    /// until it hands both over.
    async fn provision(
        &self,
        user: &UserId,
        tier: SandboxTier,
        plan: FilesPlan,
    ) -> Result<Provisioned, SessionError> {
        let config = self.config.clone();
        let accounts = self.accounts.clone();
        let user = user.clone();
        let span = tracing::debug_span!("session.provision");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = tokio::task::spawn_blocking(move || {
            let provisioned = span.in_scope(|| provision_and_lock(&config, &accounts, &user, tier));
            drop(span); // closes it: the files below are `session.files`
            let (identity, workspace, lock) = match provisioned {
                Ok(p) => p,
                Err(e) => {
                    if tx.send(Err(e)).is_err() {
                        tracing::debug!("session start dropped during provisioning");
                    }
                    return None;
                }
            };
            if tx.send(Ok((identity, workspace.clone()))).is_err() {
                return None; // the start was dropped: let the lock go
            }
            let files = tracing::debug_span!("session.files")
                .in_scope(|| start::open_files(&workspace, plan));
            Some((files, lock))
        });
        match rx.await {
            Ok(provisioned) => provisioned.map(|(identity, workspace)| (identity, workspace, job)),
            // The task ended without answering: it panicked.
            Err(_) => Err(match job.await {
                Err(source) => SessionError::BlockingTask {
                    what: "workspace provisioning",
                    source,
                },
                Ok(_) => SessionError::Gone,
            }),
        }
    }

    /// The supervisor's arguments, and the parts of its handle that exist
    /// before the supervisor does.
    fn session_args(
        &self,
        user: UserId,
        tier: SandboxTier,
        backend: Arc<dyn SandboxBackend>,
        (identity, workspace, files): Provisioned,
        options: SessionOptions,
        cancel: &CancellationToken,
    ) -> (SessionArgs, HandleParts) {
        let user_config = self.config.user(&user);
        let env = options.env.with_timezone(&user_config.timezone);
        let startup = startup_status(tier, &user_config, &*backend, &identity, options.insecure);
        let sidecar_link = backend.sidecar_link(&workspace);
        let initial = initial_health(&user, tier, &startup, &workspace, sidecar_link.as_ref());
        let (health_tx, health) = watch::channel(initial);
        let (phase_tx, phase) = watch::channel(SessionPhase::Starting);
        let (events, first_events) = EventBus::with_first_subscriber();
        let (report_tx, report) = watch::channel(None);
        let force = CancellationToken::new();
        let args = SessionArgs {
            user: user.clone(),
            session_id: self.next_session_id(),
            tier,
            config: self.config.clone(),
            user_config,
            backend,
            workspace: workspace.clone(),
            run_as: identity.run_as,
            degraded: startup.degraded_reasons.clone(),
            startup,
            env,
            readiness: self.config.readiness_for(&user),
            sidecar_link,
            control_limits: options.control_limits,
            health_tx,
            phase_tx,
            events: events.clone(),
            quiescing: Arc::new(AtomicBool::new(false)),
            force: force.clone(),
            start_cancel: cancel.clone(),
            report_tx,
            metrics: self.metrics.clone(),
            files: Some(files),
            lock: None,
        };
        let parts = HandleParts {
            user,
            workspace,
            serves_control: options.serve_control,
            health,
            phase,
            events,
            first_events,
            report,
            shutdown_bound: args.shutdown_bound(),
            force,
        };
        (args, parts)
    }

    fn next_session_id(&self) -> String {
        let n = self.sessions_started.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms:x}-{n}")
    }
}

/// How long a start may go unanswered: both guests' launches (each bounded
/// by the guest actor) and the listener, with room to spare.
const START_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What provisioning yields: the guests' identity, the workspace, and the
/// task that goes on to open the session's files (and holds its lock).
type Provisioned = (identity::IdentityDecision, Workspace, FilesJob);

/// A [`SessionHandle`] without its supervisor.
struct HandleParts {
    user: UserId,
    workspace: Workspace,
    serves_control: bool,
    health: watch::Receiver<HealthStatus>,
    phase: watch::Receiver<SessionPhase>,
    events: EventBus,
    first_events: tokio::sync::broadcast::Receiver<SessionEvent>,
    report: watch::Receiver<Option<crate::ShutdownReport>>,
    shutdown_bound: Duration,
    force: CancellationToken,
}

impl HandleParts {
    fn attach(self, actor: ActorRef<SessionMsg>, join: JoinHandle<()>) -> SessionHandle {
        SessionHandle {
            actor,
            user: self.user,
            workspace: self.workspace,
            serves_control: self.serves_control,
            health: self.health,
            phase: self.phase,
            events: self.events,
            first_events: Arc::new(std::sync::Mutex::new(Some(self.first_events))),
            report: self.report,
            join: Arc::new(tokio::sync::Mutex::new(Some(join))),
            shutdown_bound: self.shutdown_bound,
            force: self.force,
        }
    }
}

/// What the guests are told about the session's setup, with every reason
/// known before the start to run degraded.
fn startup_status(
    tier: SandboxTier,
    user_config: &runner_core::config::UserConfig,
    backend: &dyn SandboxBackend,
    identity: &identity::IdentityDecision,
    insecure: bool,
) -> runner_types::StartupStatus {
    let mut degraded = backend.degraded_reasons();
    if tier == SandboxTier::Process {
        degraded.push(bootstrap::insecure_process_tier(insecure));
    }
    if identity.runs_as_root {
        degraded.push(identity::guest_runs_as_root());
    }
    bootstrap::startup_status(tier, user_config, backend.has_sidecar(), degraded)
}

/// Health before the supervisor publishes its first report.
fn initial_health(
    user: &UserId,
    tier: SandboxTier,
    startup: &runner_types::StartupStatus,
    workspace: &Workspace,
    sidecar_link: Option<&watch::Receiver<bool>>,
) -> HealthStatus {
    let log_dir = workspace.logs.display().to_string();
    health_report(&HealthInputs {
        user_id: user.as_str(),
        tier,
        startup,
        phase: &SessionPhase::Starting,
        log_dir: &log_dir,
        guests: &[],
        sidecar_linked: sidecar_link.is_none_or(|l| *l.borrow()),
        log_bytes_dropped: &[],
        degraded: &[],
    })
}

/// Asks the supervisor to start and waits for it. If this future is
/// dropped, or the start fails or is cancelled, a guard shuts down
/// whatever was started: no session without a handle.
async fn start_or_shut_down(
    handle: SessionHandle,
    cancel: CancellationToken,
) -> Result<SessionHandle, SessionError> {
    let actor = handle.actor.clone();
    let guard = StartGuard(Some(actor.clone()), handle.shutdown_bound);
    // Each launch is bounded by the guest actor, so this wait is too.
    let started = crate::call::call(&actor, SessionMsg::Start, START_ANSWER_TIMEOUT);
    let started = tokio::select! {
        r = started => r.map_err(|_| SessionError::Gone)?,
        () = cancel.cancelled() => Err(SessionError::Cancelled),
    };
    if let Err(e) = started {
        // The supervisor shuts itself down after a failed start; make
        // sure it does after a cancelled one too, and wait for the end
        // (bounded), so the caller gets control back with nothing left.
        drop(guard);
        if !handle
            .wait_stopped(handle.shutdown_bound + LAUNCH_TIMEOUT)
            .await
        {
            tracing::warn!(user = %handle.user(), "session still stopping after a failed start");
        }
        handle
            .wait_terminated(crate::session::SUPERVISOR_EXIT_BOUND)
            .await;
        return Err(e);
    }
    guard.disarm();
    Ok(handle)
}

/// Shuts a half-started session down unless disarmed.
struct StartGuard(Option<ActorRef<SessionMsg>>, Duration);

impl StartGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(actor) = self.0.take() {
            let msg = SessionMsg::Shutdown {
                deadline: self.1,
                reply: None,
            };
            if actor.cast(msg).is_err() {
                tracing::debug!("half-started session already gone");
            }
        }
    }
}

/// Decides `user`'s guest identity, provisions the workspace for it and
/// takes the session lock. Blocking.
fn provision_and_lock(
    config: &RunnerConfig,
    accounts: &identity::AccountCache,
    user: &UserId,
    tier: SandboxTier,
) -> Result<(identity::IdentityDecision, Workspace, SessionLock), SessionError> {
    let euid = nix::unistd::geteuid().as_raw();
    // Checked and opened once: the uid record and the user's directory are
    // both opened relative to this fd.
    let root = tracing::debug_span!("session.root")
        .in_scope(|| WorkspaceRoot::open_for(&config.workspace_root, user))?;
    let identity = tracing::debug_span!("session.identity").in_scope(|| {
        identity::resolve_guest_user_cached(config, &root, user, tier, euid, accounts)
    })?;
    let workspace = tracing::debug_span!("session.workspace").in_scope(|| {
        Workspace::provision_in(&root, user, &config.user(user).mounts, identity.run_as)
    })?;
    let lock =
        tracing::debug_span!("session.lock").in_scope(|| SessionLock::acquire(&workspace.run));
    let lock = lock.map_err(|source| match source {
        LockError::Held { .. } => SessionError::AlreadyRunning {
            user: user.to_string(),
            source,
        },
        LockError::Io { .. } | LockError::Open { .. } => SessionError::Lock {
            user: user.to_string(),
            source,
        },
    })?;
    Ok((identity, workspace, lock))
}
