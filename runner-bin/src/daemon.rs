//! `runner-bin --daemon`: one user's session in the foreground.

use crate::cli::DaemonArgs;
use crate::{backends, env, paths};
use anyhow::{Context, bail};
use runner_actors::{Runner, SessionError, SessionOptions};
use runner_core::backend::clean_start::StartRlimits;
use runner_core::health::SessionPhase;
use runner_core::identity::resolve_guest_user;
use runner_core::{UserId, Workspace};
use runner_types::SandboxTier;
use std::io::Write;
use tokio::signal::unix::{SignalKind, signal};

/// Runs the daemon until SIGINT, SIGTERM or `shutdown_user`. Process-tier
/// guests start with `start_rlimits`, the limits this process started with.
pub async fn run(args: DaemonArgs, start_rlimits: StartRlimits) -> anyhow::Result<()> {
    let Some(user) = args.user.as_deref() else {
        bail!("--daemon needs --user <id>");
    };
    let user_id = UserId::new(user).with_context(|| format!("Invalid --user {user:?}"))?;
    let config = paths::load_config(args.config.as_deref())?;
    let mut extra_env = match &args.env_file {
        Some(f) => env::read_env_file(f)?,
        None => Default::default(),
    };
    for pair in &args.env {
        let (k, v) = env::parse_pair(pair)?;
        extra_env.insert(k, v);
    }
    // Provisioned before the backends are built: the container tier labels
    // its containers with the canonical workspace root, which only resolves
    // once the root exists (a first start must label like every later one).
    // The session lock (one live session per user) is taken by start_session.
    // Guests get their own uid when this runs as root (start_session decides
    // the same again: the allocation is recorded, so it is stable).
    let user_config = config.user(&user_id);
    let tier = if args.insecure {
        eprintln!(
            "WARNING: --insecure: guests run as plain host processes with NO isolation (process tier forced)"
        );
        SandboxTier::Process
    } else {
        config.tier_for(&user_id)
    };
    let identity = resolve_guest_user(&config, &user_id, tier, nix::unistd::geteuid().as_raw())
        .with_context(|| format!("Cannot decide the host uid of user {user}'s guests"))?;
    Workspace::provision_for(
        &config.workspace_root,
        &user_id,
        &user_config.mounts,
        identity.run_as,
    )?;
    match identity.run_as {
        Some(g) => tracing::info!(uid = g.uid, gid = g.gid, "guests run as their own uid"),
        None if identity.runs_as_root => {
            tracing::warn!("guest_identity.allow_root: guests run as root")
        }
        None => tracing::info!("not root: guests run as the runner's own uid"),
    }
    if tier == SandboxTier::Process && !args.insecure {
        tracing::warn!("process tier: guests run as host processes without isolation");
    }

    let backends = backends::for_tier(&config, tier, start_rlimits)?;
    let runner = Runner::new(config, backends);
    let mut sigint =
        signal(SignalKind::interrupt()).context("Cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("Cannot install the SIGTERM handler")?;
    let options = SessionOptions {
        serve_control: true,
        insecure: args.insecure,
        extra_env,
        ..SessionOptions::default()
    };
    let run_dir = Workspace::layout(
        &runner.config().workspace_root,
        &user_id,
        &user_config.mounts,
    )
    .run;
    let mut start = Box::pin(runner.start_session_with(user, options));
    let interrupted = tokio::select! {
        r = &mut start => Ok(r),
        _ = sigint.recv() => Err("SIGINT"),
        _ = sigterm.recv() => Err("SIGTERM"),
    };
    let started = match interrupted {
        Ok(r) => r,
        Err(signal) => {
            // Dropping the start runs its guard, which shuts down whatever
            // was launched; the session lock is released once that is done.
            tracing::info!(signal, "signal during start; stopping what was started");
            drop(start);
            wait_unlocked(&run_dir).await;
            return Ok(());
        }
    };
    let session = match started {
        Ok(s) => s,
        Err(e @ SessionError::AlreadyRunning { .. }) => {
            return Err(anyhow::Error::new(e).context(format!(
                "Stop it first with `runner-bin stop --user {user}`"
            )));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("Cannot start the session for user {user}"))
            );
        }
    };
    let socket = session
        .control_socket()
        .expect("daemon sessions serve a control socket");
    println!("control_socket={}", socket.display());
    std::io::stdout()
        .flush()
        .context("Cannot write to stdout")?;
    tracing::info!(user, tier = %tier, socket = %socket.display(), "serving");

    let mut events = session.events();
    let signal_name = loop {
        tokio::select! {
            _ = sigint.recv() => break Some("SIGINT"),
            _ = sigterm.recv() => break Some("SIGTERM"),
            stopped = session.wait_stopped(std::time::Duration::from_secs(3600)) => {
                if stopped { break None; }
            }
            event = events.recv() => {
                if let Ok(e) = event {
                    tracing::info!(event = ?e, "session event");
                }
            }
        }
    };
    match signal_name {
        Some(name) => {
            tracing::info!(signal = name, "shutting down");
            let report = session
                .shutdown(session.shutdown_bound())
                .await
                .context("Shutdown did not finish in time")?;
            tracing::info!(took = ?report.took, cut = ?report.cut_streams, "stopped");
        }
        None => tracing::info!("stopped by shutdown_user"),
    }
    if let SessionPhase::Failed { reason } = session.phase() {
        tracing::warn!(%reason, "session had failed before shutdown");
    }
    Ok(())
}

/// Waits (bounded) until no session holds the lock in `run_dir`.
async fn wait_unlocked(run_dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while runner_core::lock::SessionLock::is_held(run_dir) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
