//! `runner-bin --daemon`: one user's session in the foreground.

use crate::cli::DaemonArgs;
use crate::notify::{Notifier, ServiceNotify};
use crate::signals::StopSignals;
use crate::{backends, env, metrics_http, paths};
use anyhow::{Context, bail};
use runner_actors::{FORCED_STOP_BOUND, Runner, SessionError, SessionHandle, SessionOptions};
use runner_core::backend::clean_start::StartRlimits;
use runner_core::config::RunnerConfig;
use runner_core::health::SessionPhase;
use runner_core::identity::resolve_guest_user_in;
use runner_core::workspace::WorkspaceRoot;
use runner_core::{UserId, Workspace};
use runner_types::SandboxTier;
use std::io::Write;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the daemon until SIGINT, SIGTERM, SIGHUP or `shutdown_user`.
/// Process-tier guests start with `start_rlimits`, the limits this process
/// started with.
pub async fn run(args: DaemonArgs, start_rlimits: StartRlimits) -> anyhow::Result<()> {
    // Installed first: from here on a stop signal is a graceful stop, never
    // the default action (which would leave sockets and guests behind).
    let mut signals = StopSignals::install()?;
    let mut service = ServiceNotify::new(Notifier::from_env()?);
    let Some(user) = args.user.clone() else {
        bail!("--daemon needs --user <id>");
    };
    // Bound before the start, so a taken port fails fast.
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("Cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let (runner, options, tier) = configure(&user, args, start_rlimits)?;
    let Some(session) = start_or_cancel(&runner, &user, options, &mut signals).await? else {
        return Ok(());
    };
    let metrics_http = metrics_listener.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(url = %format!("http://{addr}/metrics"), "serving metrics");
        }
        tokio::spawn(metrics_http::serve(l, runner.metrics().clone()))
    });
    let socket = session
        .control_socket()
        .expect("daemon sessions serve a control socket");
    println!("control_socket={}", socket.display());
    std::io::stdout()
        .flush()
        .context("Cannot write to stdout")?;
    tracing::info!(user, tier = %tier, socket = %socket.display(), "serving");
    let signal = serve_until_signal(&session, &mut signals, &mut service).await;
    service.stopping();
    match signal {
        Some(name) => stop(&session, name, &mut signals).await?,
        None => tracing::info!("stopped by shutdown_user"),
    }
    if let Some(task) = metrics_http {
        task.abort();
    }
    if let SessionPhase::Failed { reason } = session.phase() {
        tracing::warn!(reason = %reason.to_text(), "session had failed before shutdown");
    }
    Ok(())
}

/// Loads the config, routes the guest environment, provisions the
/// workspace and builds the backends.
fn configure(
    user: &str,
    args: DaemonArgs,
    start_rlimits: StartRlimits,
) -> anyhow::Result<(Runner, SessionOptions, SandboxTier)> {
    let user_id = UserId::new(user).with_context(|| format!("Invalid --user {user:?}"))?;
    let config = paths::load_config(args.config.as_deref())?;
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    let user_config = config.user(&user_id);
    let guest_env = env::guest_env(
        args.env_file.as_deref(),
        &args.env,
        &user_config.channel_secrets,
        |k| std::env::var(k).ok(),
    )?;
    let tier = if args.insecure {
        eprintln!(
            "WARNING: --insecure: guests run as plain host processes with NO isolation (process tier forced)"
        );
        SandboxTier::Process
    } else {
        config.tier_for(&user_id)
    };
    provision(&config, &user_id, tier)?;
    if tier == SandboxTier::Process && !args.insecure {
        tracing::warn!("process tier: guests run as host processes without isolation");
    }
    let backends = backends::for_tier(&config, tier, start_rlimits)?;
    let options = SessionOptions {
        serve_control: true,
        insecure: args.insecure,
        env: guest_env,
        ..SessionOptions::default()
    };
    Ok((Runner::new(config, backends), options, tier))
}

/// Provisions the workspace for the guests' identity. Done before the
/// backends are built: the container tier labels its containers with the
/// canonical workspace root, which only resolves once the root exists (a
/// first start must label like every later one). The session lock (one
/// live session per user) is taken by the start, which decides the identity
/// again: the allocation is recorded, so it is the same.
fn provision(config: &RunnerConfig, user_id: &UserId, tier: SandboxTier) -> anyhow::Result<()> {
    // Checked and opened once for the uid record and the user's directory.
    let root = WorkspaceRoot::open_for(&config.workspace_root, user_id)?;
    let identity = resolve_guest_user_in(
        config,
        &root,
        user_id,
        tier,
        nix::unistd::geteuid().as_raw(),
    )
    .with_context(|| format!("Cannot decide the host uid of user {user_id}'s guests"))?;
    let mounts = config.user(user_id).mounts;
    Workspace::provision_in(&root, user_id, &mounts, identity.run_as)?;
    match identity.run_as {
        Some(g) => tracing::info!(uid = g.uid, gid = g.gid, "guests run as their own uid"),
        None if identity.runs_as_root => {
            tracing::warn!("guest_identity.allow_root: guests run as root")
        }
        None => tracing::info!("not root: guests run as the runner's own uid"),
    }
    Ok(())
}

/// Starts the session; a stop signal during the start cancels it and waits
/// until what was started is stopped again (`None`: cancelled cleanly).
async fn start_or_cancel(
    runner: &Runner,
    user: &str,
    options: SessionOptions,
    signals: &mut StopSignals,
) -> anyhow::Result<Option<SessionHandle>> {
    let cancel = CancellationToken::new();
    let start = runner.start_session_cancellable(user, options, cancel.clone());
    tokio::pin!(start);
    let started = tokio::select! {
        r = &mut start => r,
        name = signals.next() => {
            tracing::info!(signal = name, "signal during start; stopping what was started");
            cancel.cancel();
            // Resolves once everything the start launched is stopped.
            start.await
        }
    };
    match started {
        Ok(s) => Ok(Some(s)),
        Err(SessionError::Cancelled) => Ok(None),
        Err(e @ SessionError::AlreadyRunning { .. }) => Err(anyhow::Error::new(e).context(
            format!("Stop it first with `runner-bin stop --user {user}`"),
        )),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("Cannot start the session for user {user}")))
        }
    }
}

/// Serves until a stop signal (its name) or until the session stops by
/// itself (`shutdown_user`: `None`), telling the service manager what
/// health says on the way.
async fn serve_until_signal(
    session: &SessionHandle,
    signals: &mut StopSignals,
    service: &mut ServiceNotify,
) -> Option<&'static str> {
    let mut events = session.events();
    let mut health = session.watch_health();
    service.on_health(&health.borrow_and_update());
    let mut health_open = true;
    loop {
        tokio::select! {
            name = signals.next() => return Some(name),
            stopped = session.wait_stopped(Duration::from_secs(3600)) => {
                if stopped { return None; }
            }
            event = events.recv() => {
                if let Ok(e) = event {
                    tracing::info!(event = ?e, "session event");
                }
            }
            changed = health.changed(), if health_open => match changed {
                Ok(()) => service.on_health(&health.borrow_and_update()),
                // The session is gone: wait_stopped answers next.
                Err(_) => health_open = false,
            }
        }
    }
}

/// The graceful stop; a second signal forces it, and the daemon then exits
/// non-zero once the forced stop is done (at most [`FORCED_STOP_BOUND`]).
async fn stop(
    session: &SessionHandle,
    first: &'static str,
    signals: &mut StopSignals,
) -> anyhow::Result<()> {
    tracing::info!(
        signal = first,
        "shutting down (send another signal to force)"
    );
    let graceful = session.shutdown(session.shutdown_bound());
    tokio::pin!(graceful);
    tokio::select! {
        report = &mut graceful => {
            let report = report.context("Shutdown did not finish in time")?;
            tracing::info!(took = ?report.took, cut = ?report.cut_streams, "stopped");
            if !report.stuck_logs.is_empty() {
                let paths: Vec<_> = report.stuck_logs.iter().map(|p| p.display().to_string()).collect();
                bail!("log writes to {} did not finish (the disk or mount is stuck)", paths.join(", "));
            }
            Ok(())
        }
        second = signals.next() => {
            tracing::warn!(signal = second, "second signal: forcing the shutdown");
            session.force_shutdown();
            if !session.wait_stopped(FORCED_STOP_BOUND).await {
                bail!("Forced shutdown did not finish within {FORCED_STOP_BOUND:?}; guests or files of user {} may be left", session.user());
            }
            bail!("Shutdown forced by a second signal ({second}): guests were killed without grace");
        }
    }
}
