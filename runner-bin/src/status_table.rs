//! `runner-bin status`: the health report as a compact table.
//!
//! ```text
//! user alice: healthy (process tier)
//! ROLE     STATE    PID/CONTAINER  UPTIME  RESTARTS  LAST EXIT  READY
//! sidecar  running  pid 4241       1h02m   0         -          yes
//! ```
//! then the degraded reasons and the size of each guest log (with its
//! rotations).

use runner_types::{GuestStatus, HealthStatus};
use std::fmt::Write;
use std::path::Path;

/// Bytes on disk of one stream's log, rotations included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSize {
    /// The current file's name (`oxydra-vm.stdout.log`).
    pub name: String,
    /// The file and its rotations (`.1`, `.2`, ...), in bytes.
    pub bytes: u64,
    /// How many files that is.
    pub files: u32,
}

/// The table for `h`, with uptimes as of `now_unix_ms`.
pub fn render(h: &HealthStatus, logs: &[LogSize], now_unix_ms: u64) -> String {
    let mut out = String::new();
    let state = if h.shutdown {
        "shutting down"
    } else if h.healthy {
        "healthy"
    } else {
        "UNHEALTHY"
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "user {}: {state} ({} tier)", h.user_id, h.sandbox_tier);
    if let Some(m) = &h.message {
        let _ = writeln!(out, "  {m}");
    }
    let header = [
        "ROLE",
        "STATE",
        "PID/CONTAINER",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "READY",
    ];
    let rows: Vec<[String; 7]> = h.guests.iter().map(|g| row(g, now_unix_ms)).collect();
    table(&mut out, header, &rows);
    let reasons = &h.startup_status.degraded_reasons;
    if !reasons.is_empty() {
        let _ = writeln!(out, "degraded:");
        for r in reasons {
            let _ = writeln!(out, "  {}: {}", r.code, r.detail);
        }
    }
    if let Some(dir) = &h.log_dir {
        let _ = writeln!(out, "logs in {dir}:");
        let width = logs.iter().map(|l| l.name.len()).max().unwrap_or(0);
        for l in logs {
            let files = if l.files > 1 {
                format!(" in {} files", l.files)
            } else {
                String::new()
            };
            let _ = writeln!(out, "  {:<width$}  {}{files}", l.name, bytes(l.bytes));
        }
    }
    out
}

fn row(g: &GuestStatus, now_unix_ms: u64) -> [String; 7] {
    let id = match (&g.container_name, g.pid) {
        (Some(name), _) => name.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "-".to_owned(),
    };
    let uptime = match (g.state, g.started_at_unix_ms) {
        (runner_types::GuestState::Running, Some(at)) => {
            duration(now_unix_ms.saturating_sub(at) / 1000)
        }
        _ => "-".to_owned(),
    };
    let last_exit = g.last_exit.map_or("-".to_owned(), |e| {
        let mut s = e.status.to_string();
        if e.oom_killed {
            s.push_str(" (oom)");
        }
        if e.engine_lost {
            s.push_str(" (engine lost)");
        }
        s
    });
    let ready = match g.ready {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    [
        g.role.as_str().to_owned(),
        g.state.as_str().to_owned(),
        id,
        uptime,
        g.restarts.to_string(),
        last_exit,
        ready.to_owned(),
    ]
}

/// Left-aligned columns two spaces apart; no trailing spaces.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `45s`, `12m05s`, `3h04m`, `2d03h`.
fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `812 B`, `4.0 KiB`, `1.2 MiB`, `3.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The size of each `*.log` in `dir` with its rotations (`*.log.N`),
/// sorted by name. Unreadable entries are skipped; an unreadable directory
/// gives nothing.
pub fn log_sizes(dir: &Path) -> Vec<LogSize> {
    let mut sizes: Vec<LogSize> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return sizes;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = log_base(&name) else {
            continue;
        };
        // symlink_metadata: a log file is never followed.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        match sizes.iter_mut().find(|s| s.name == base) {
            Some(s) => {
                s.bytes += meta.len();
                s.files += 1;
            }
            None => sizes.push(LogSize {
                name: base.to_owned(),
                bytes: meta.len(),
                files: 1,
            }),
        }
    }
    sizes.sort_by(|a, b| a.name.cmp(&b.name));
    sizes
}

/// `x.log` for `x.log` and `x.log.3`; `None` for anything else.
fn log_base(name: &str) -> Option<&str> {
    if name.ends_with(".log") {
        return Some(name);
    }
    let (base, n) = name.rsplit_once('.')?;
    (base.ends_with(".log") && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then_some(base)
}

#[cfg(test)]
mod tests;
