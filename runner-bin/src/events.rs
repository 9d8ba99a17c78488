//! `runner-bin events`: the session's lifecycle events, once or followed.

use crate::cli::Target;
use crate::client::{ask, connect, quiet_on_broken_pipe};
use anyhow::bail;
use futures::StreamExt;
use runner_types::events::{EventKind, EventRecord, EventsRequest, EventsResponse};
use runner_types::{ControlRequest, ControlResponse};
use std::io::Write;

/// Prints the events `req` asks for; with `follow`, until the daemon
/// closes the connection (it does when the session stops).
pub async fn run(target: &Target, req: EventsRequest, json: bool) -> anyhow::Result<()> {
    let (_, mut client) = connect(target).await?;
    if req.follow {
        let mut frames = Box::pin(client.follow_events(req));
        while let Some(frame) = frames.next().await {
            print_frame(&frame?, json)?;
        }
        return Ok(());
    }
    let mut req = req;
    loop {
        let ControlResponse::Events(frame) = ask(&mut client, &ControlRequest::Events(req)).await?
        else {
            bail!("The daemon answered events with something else");
        };
        print_frame(&frame, json)?;
        if !frame.truncated {
            return Ok(());
        }
        req.after = Some(frame.cursor);
    }
}

fn print_frame(frame: &EventsResponse, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let line = serde_json::to_string(frame)?;
        return quiet_on_broken_pipe(writeln!(out, "{line}"));
    }
    if let Some(gap) = &frame.gap {
        let missed = gap
            .missed
            .map_or("an unknown number of".to_owned(), |n| n.to_string());
        let line = format!(
            "-- {missed} events after {} are no longer kept; resuming at {}",
            gap.after, gap.resumed_at
        );
        quiet_on_broken_pipe(writeln!(out, "{line}"))?;
    }
    for event in &frame.events {
        quiet_on_broken_pipe(writeln!(out, "{}", line(event)))?;
    }
    quiet_on_broken_pipe(out.flush())
}

/// One event as a line: `seq timestamp role what`.
fn line(e: &EventRecord) -> String {
    let role = e.role.map_or("-", |r| r.as_str());
    format!("{} {} {role:<7} {}", e.seq, e.timestamp, what(&e.kind))
}

fn what(kind: &EventKind) -> String {
    match kind {
        EventKind::SessionStarted => "session started".to_owned(),
        EventKind::GuestStarted {
            pid,
            container_name,
            restarts,
        } => {
            let id = match (pid, container_name) {
                (_, Some(name)) => format!("container {name}"),
                (Some(pid), None) => format!("pid {pid}"),
                (None, None) => "-".to_owned(),
            };
            format!("started ({id}, restarts {restarts})")
        }
        EventKind::GuestExited { exit } => {
            let oom = if exit.oom_killed { ", OOM-killed" } else { "" };
            format!("exited ({}{oom})", exit.status)
        }
        EventKind::GuestRestarting {
            attempt,
            backoff_ms,
        } => format!("restarting (attempt {attempt}, in {backoff_ms} ms)"),
        EventKind::SessionFailed { reason, .. } => format!("session FAILED: {reason}"),
        EventKind::Degraded { code, detail } => format!("degraded: {code} ({detail})"),
        EventKind::Recovered { code } => format!("recovered: {code}"),
        EventKind::LogBytesDropped { stream, total } => {
            format!("{stream} output lost: {total} bytes so far")
        }
        EventKind::Stopping => "stopping".to_owned(),
        EventKind::Stopped => "stopped".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_types::{ExitStatus, GuestExit, GuestRole};

    #[test]
    fn lines_name_the_event_and_the_guest() {
        let e = EventRecord {
            seq: 7,
            timestamp: "2026-11-30T10:00:00.000Z".into(),
            role: Some(GuestRole::Runtime),
            kind: EventKind::GuestExited {
                exit: GuestExit {
                    status: ExitStatus::Code(3),
                    at_unix_ms: 1,
                    oom_killed: false,
                    engine_lost: false,
                },
            },
        };
        assert_eq!(
            line(&e),
            "7 2026-11-30T10:00:00.000Z runtime exited (exit code 3)"
        );
        let e = EventRecord {
            role: None,
            kind: EventKind::Stopping,
            ..e
        };
        assert_eq!(line(&e), "7 2026-11-30T10:00:00.000Z -       stopping");
    }
}
