//! Client subcommands: `status`, `stop`, `logs` (and `events`, in its own module).

use crate::cli::{Command, RoleArg, Since, StreamArg, Target};
use crate::{output, paths};
use anyhow::{Context, bail};
use futures::StreamExt;
use runner_core::control::since::rfc3339_ms;
use runner_core::control::{ControlClient, ControlClientError};
use runner_core::lock::SessionLock;
use runner_core::{UserId, Workspace};
use runner_types::control::{LogsRequest, LogsResponse, RoleSelector, StreamSelector};
use runner_types::events::EventsRequest;
use runner_types::{ControlRequest, ControlResponse, HealthStatus};

use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one client subcommand.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Status { target, json } => status(&target, json).await,
        Command::Stop { target } => stop(&target).await,
        Command::Logs {
            target,
            role,
            stream,
            tail,
            since,
            follow,
            after,
            json,
        } => {
            let since = since.map(|s| match s {
                Since::UnixMs(ms) => rfc3339_ms(ms),
                Since::Ago(d) => format!("{}s", d.as_secs()),
            });
            let req = LogsRequest {
                role: match role {
                    RoleArg::Runtime => RoleSelector::Runtime,
                    RoleArg::Sidecar => RoleSelector::Sidecar,
                    RoleArg::All => RoleSelector::All,
                },
                stream: match stream {
                    StreamArg::Stdout => StreamSelector::Stdout,
                    StreamArg::Stderr => StreamSelector::Stderr,
                    StreamArg::Both => StreamSelector::Both,
                },
                tail: Some(tail),
                since,
                follow,
                after,
                ..LogsRequest::default()
            };
            logs(&target, req, json).await
        }
        Command::Events {
            target,
            follow,
            after,
            json,
        } => crate::events::run(&target, EventsRequest { follow, after }, json).await,
        Command::DemoGuest { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn socket_of(target: &Target) -> anyhow::Result<(String, PathBuf)> {
    let user = UserId::new(target.user.as_str())
        .with_context(|| format!("Invalid --user {:?}", target.user))?;
    let config = paths::load_config(target.config.as_deref())?;
    let ws = Workspace::layout(&config.workspace_root, &user, &config.user(&user).mounts);
    Ok((user.to_string(), ws.control_socket()))
}

pub(crate) async fn connect(target: &Target) -> anyhow::Result<(String, ControlClient)> {
    let (user, path) = socket_of(target)?;
    match ControlClient::connect(&path, TIMEOUT).await {
        Ok(c) => Ok((user, c)),
        Err(ControlClientError::NotRunning { path, .. }) => {
            bail!(
                "No runner daemon is running for user {user} (no listener at {})",
                path.display()
            )
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn ask(
    client: &mut ControlClient,
    req: &ControlRequest,
) -> anyhow::Result<ControlResponse> {
    match client.request(req, TIMEOUT).await? {
        ControlResponse::Error(e) => bail!(
            "The daemon refused the request ({:?}): {}",
            e.code,
            e.message
        ),
        other => Ok(other),
    }
}

async fn status(target: &Target, json: bool) -> anyhow::Result<()> {
    let (_, mut client) = connect(target).await?;
    let ControlResponse::HealthStatus(h) = ask(&mut client, &ControlRequest::HealthCheck).await?
    else {
        bail!("The daemon answered health_check with something else");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        print_health(&h);
    }
    Ok(())
}

fn print_health(h: &HealthStatus) {
    let state = if h.shutdown {
        "shutting down"
    } else if h.healthy {
        "healthy"
    } else {
        "UNHEALTHY"
    };
    println!("user {}: {state} ({} tier)", h.user_id, h.sandbox_tier);
    if let Some(m) = &h.message {
        println!("  {m}");
    }
    for g in &h.guests {
        let id = match (&g.pid, &g.container_name) {
            (_, Some(name)) => format!("container {name}"),
            (Some(pid), None) => format!("pid {pid}"),
            (None, None) => "-".to_owned(),
        };
        let exit = g
            .last_exit
            .map(|e| format!(", last exit: {}", e.status))
            .unwrap_or_default();
        println!(
            "  {:<8} {:?} ({id}), restarts {}{exit}",
            g.role.as_str(),
            g.state,
            g.restarts
        );
    }
    for r in &h.startup_status.degraded_reasons {
        println!("  degraded: {} ({})", r.code, r.detail);
    }
    if let Some(d) = &h.log_dir {
        println!("  logs: {d}");
    }
}

async fn stop(target: &Target) -> anyhow::Result<()> {
    let (user, mut client) = connect(target).await?;
    let req = ControlRequest::ShutdownUser {
        user_id: user.clone(),
    };
    let ControlResponse::ShutdownStatus(s) = ask(&mut client, &req).await? else {
        bail!("The daemon answered shutdown_user with something else");
    };
    if !s.shutdown {
        bail!(
            "The daemon did not accept the shutdown: {}",
            s.message.unwrap_or_default()
        );
    }
    // The session lock is released only once the whole shutdown is done
    // (the socket goes away at its first step).
    let (_, path) = socket_of(target)?;
    let run = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while SessionLock::is_held(&run) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if SessionLock::is_held(&run) {
        bail!("The daemon for user {user} accepted the shutdown but has not finished after 60 s");
    }
    println!("stopped {user}");
    Ok(())
}

async fn logs(target: &Target, req: LogsRequest, json: bool) -> anyhow::Result<()> {
    let (_, mut client) = connect(target).await?;
    let prefix = req.role == RoleSelector::All || req.stream == StreamSelector::Both;
    let show_cursor = req.after.is_some() && !json;
    if !req.follow {
        let ControlResponse::Logs(chunk) = ask(&mut client, &ControlRequest::Logs(req)).await?
        else {
            bail!("The daemon answered logs with something else");
        };
        print_chunk(&chunk, prefix, json)?;
        if show_cursor {
            print_cursor(&chunk);
        }
        return Ok(());
    }
    let mut chunks = Box::pin(client.follow_logs(req));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        print_chunk(&chunk, prefix, json)?;
        if show_cursor {
            print_cursor(&chunk);
        }
    }
    Ok(())
}

/// `logs | head` closing the pipe is a normal way to stop reading.
pub(crate) fn quiet_on_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// The answer's cursor and any loss, on stderr (stdout stays the lines).
fn print_cursor(chunk: &LogsResponse) {
    for w in &chunk.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(cursor) = &chunk.cursor {
        eprintln!("cursor={cursor}");
    }
}

fn print_chunk(chunk: &LogsResponse, prefix: bool, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mode = if json {
        output::Mode::Json
    } else if std::io::IsTerminal::is_terminal(&out) {
        output::Mode::Terminal
    } else {
        output::Mode::Raw
    };
    quiet_on_broken_pipe(output::write_chunk(&mut out, chunk, prefix, mode))
}
