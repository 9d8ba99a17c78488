//! Client subcommands: `status`, `stop`, `logs` (and `events`, in its own module).

use crate::cli::{Command, RoleArg, Since, StreamArg, Target};
use crate::{output, paths, status_table};
use anyhow::{Context, bail};
use futures::StreamExt;
use runner_core::control::since::rfc3339_ms;
use runner_core::control::{ControlClient, ControlClientError};
use runner_core::lock::SessionLock;
use runner_core::metrics::RequestResult;
use runner_core::{UserId, Workspace};
use runner_types::control::{
    LogsRequest, LogsResponse, MetricsRequest, RoleSelector, StreamSelector,
};
use runner_types::events::EventsRequest;
use runner_types::{ControlRequest, ControlResponse, HealthStatus};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one client subcommand.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Status { target, json } => status(&target, json).await,
        Command::Stop { target } => stop(&target).await,
        Command::Metrics { target } => metrics(&target).await,
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
        Command::DemoGuest { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
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
            "The daemon refused the request ({}): {}",
            RequestResult::Error(e.code).as_str(),
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
    // The client runs on the daemon's host: the log sizes are read from
    // the files (nothing if this user may not read them).
    let logs = h
        .log_dir
        .as_deref()
        .map(|d| status_table::log_sizes(Path::new(d)))
        .unwrap_or_default();
    let now = runner_core::metrics::unix_ms_now();
    print!("{}", status_table::render(h, &logs, now));
}

async fn metrics(target: &Target) -> anyhow::Result<()> {
    let (_, mut client) = connect(target).await?;
    let req = ControlRequest::Metrics(MetricsRequest {});
    let ControlResponse::Metrics(m) = ask(&mut client, &req).await? else {
        bail!("The daemon answered metrics with something else");
    };
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(m.text.as_bytes()).and_then(|()| out.flush()))
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
    let run = client
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
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
    let mode = output_mode(json);
    if !req.follow {
        let ControlResponse::Logs(chunk) = ask(&mut client, &ControlRequest::Logs(req)).await?
        else {
            bail!("The daemon answered logs with something else");
        };
        print_chunk(&chunk, prefix, mode)?;
        if show_cursor {
            print_cursor(&chunk);
        }
        return Ok(());
    }
    let mut chunks = Box::pin(client.follow_logs(req));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        print_chunk(&chunk, prefix, mode)?;
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

/// The answer's cursor on stderr (stdout stays the lines; a loss is among
/// the warnings printed with them).
fn print_cursor(chunk: &LogsResponse) {
    if let Some(cursor) = &chunk.cursor {
        eprintln!("cursor={cursor}");
    }
}

/// How `logs` prints: JSON lines, escaped for a terminal, or raw.
fn output_mode(json: bool) -> output::Mode {
    if json {
        output::Mode::Json
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        output::Mode::Terminal
    } else {
        output::Mode::Raw
    }
}

fn print_chunk(chunk: &LogsResponse, prefix: bool, mode: output::Mode) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(output::write_chunk(&mut out, chunk, prefix, mode))
}
