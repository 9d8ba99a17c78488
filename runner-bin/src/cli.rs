//! Command-line interface (these names are pinned: scripts and docs rely on them).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `--version`: the package version, with the git revision it was built
/// from when the build knew it (see build.rs).
pub const VERSION: &str = env!("RUNNER_BIN_VERSION");

/// Sandbox runner: supervises a runtime and a sidecar guest per user.
#[derive(Debug, Parser)]
#[command(
    name = "runner-bin",
    version = VERSION,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Run the daemon in the foreground for `--user`.
    #[arg(long)]
    pub daemon: bool,
    #[command(flatten)]
    pub daemon_args: DaemonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options of `--daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// User whose session to run.
    #[arg(long)]
    pub user: Option<String>,
    /// runner.toml; without it, built-in defaults (process tier, demo guests, ./workspaces).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Force the process tier (no isolation).
    #[arg(long)]
    pub insecure: bool,
    /// Add KEY=VALUE to a guest's environment (repeatable). `-e KEY` takes
    /// the value from the runner's environment: use it for secrets. Plain
    /// keys go to the runtime guest only, SHELL_KEY to the sidecar as KEY,
    /// TZ to both.
    #[arg(short = 'e', value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Read KEY=VALUE lines for the guests' environment from a file.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Also serve the metrics over HTTP at http://ADDR/metrics (plain
    /// HTTP, no authentication: bind it to a loopback address).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Client subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the session's health.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the raw health JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shut the session down; the daemon exits.
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Print guest logs.
    Logs {
        #[command(flatten)]
        target: Target,
        /// Which guest.
        #[arg(long, value_enum, default_value_t = RoleArg::All)]
        role: RoleArg,
        /// Which stream.
        #[arg(long, value_enum, default_value_t = StreamArg::Both)]
        stream: StreamArg,
        /// Last N lines per stream (at most 1000).
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Only lines written in the last DURATION (`90s`, `5m`, `2h`) or
        /// since a Unix time in milliseconds.
        #[arg(long, value_name = "DURATION|UNIX_MS", value_parser = parse_since)]
        since: Option<Since>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Resume exactly after a previous answer's cursor (printed on
        /// stderr as `cursor=...` when this is given, and in `--json`
        /// frames): the oldest lines after it, no gap, no repeat.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        /// Print raw response frames as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the session's lifecycle events (starts, exits, restarts,
    /// failures, stop), oldest first.
    Events {
        #[command(flatten)]
        target: Target,
        /// Keep printing new events.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only events after this sequence number (a previous run's last).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Print raw response frames as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's metrics in the OpenMetrics text format.
    Metrics {
        #[command(flatten)]
        target: Target,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `runner-bin man > runner-bin.1`.
    Man {
        /// Instead, write runner-bin.1 and one runner-bin-SUBCOMMAND.1
        /// per subcommand into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Run the built-in demo guest (what the default config launches).
    #[command(hide = true)]
    DemoGuest {
        /// Arguments for the demo guest.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Which daemon a client talks to.
#[derive(Debug, Args)]
pub struct Target {
    /// The daemon's user.
    #[arg(long)]
    pub user: String,
    /// The daemon's runner.toml (to find its workspace root).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `--since`: a look-back duration or an absolute time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(std::time::Duration),
    /// Milliseconds since the Unix epoch.
    UnixMs(u64),
}

fn parse_since(s: &str) -> Result<Since, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 90s, 5m, 2h or a Unix time in ms"))?;
    let secs = match unit {
        "" => return Ok(Since::UnixMs(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    Ok(Since::Ago(std::time::Duration::from_secs(secs)))
}

/// `--role`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Runtime guest.
    Runtime,
    /// Sidecar guest.
    Sidecar,
    /// Both.
    All,
}

/// `--stream`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StreamArg {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both.
    Both,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_daemon_and_subcommands() {
        let c = Cli::try_parse_from([
            "runner-bin",
            "--daemon",
            "--user",
            "alice",
            "--insecure",
            "-e",
            "A=1",
        ])
        .unwrap();
        assert!(c.daemon && c.daemon_args.insecure);
        assert_eq!(c.daemon_args.env, ["A=1"]);
        let c = Cli::try_parse_from(["runner-bin", "logs", "--user", "a", "-f", "--tail", "5"])
            .unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Logs {
                follow: true,
                tail: 5,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["runner-bin", "status"]).is_err());
        assert_eq!(
            parse_since("5m"),
            Ok(Since::Ago(std::time::Duration::from_secs(300)))
        );
        assert_eq!(
            parse_since("1700000000000"),
            Ok(Since::UnixMs(1_700_000_000_000))
        );
        assert!(parse_since("5y").is_err() && parse_since("m").is_err());
    }
}
