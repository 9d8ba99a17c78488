//! Command-line options of the demo guest.
//!
//! The runner appends `--user-id <id> --workspace-root <path>
//! --bootstrap-stdin` (or `--bootstrap-file <path>`); everything else comes
//! from the configured `args` of `[process] runtime` / `sidecar`.

use std::fmt;
use std::time::Duration;

/// Which guest this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connects to the sidecar, if its envelope names one.
    Runtime,
    /// Listens on `<user dir>/ipc/shell-daemon.sock`.
    Sidecar,
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--role runtime|sidecar` (default runtime).
    pub role: Role,
    /// `--heartbeat-ms N` (default 1000).
    pub heartbeat: Duration,
    /// `--exit-after-ms N`: exit on its own after N ms.
    pub exit_after: Option<Duration>,
    /// `--exit-code C`: code used by `--exit-after-ms` (default 0).
    pub exit_code: u8,
    /// `--ignore-sigterm`: keep running on SIGTERM (prints `sigterm ignored`).
    pub ignore_sigterm: bool,
    /// `--spawn-grandchild`: start a sleeper child that shares stdout.
    pub spawn_grandchild: bool,
    /// `--print-env`: print the environment as `env=<JSON object>`.
    pub print_env: bool,
    /// `--sleeper`: be the grandchild (ignore SIGTERM, sleep, print nothing).
    pub sleeper: bool,
    /// `--write-marker NAME`: write `<workspace-root>/ipc/NAME`, as oxydra's
    /// runtime publishes `ipc/gateway-endpoint`.
    pub write_marker: Option<String>,
    /// The runner's `--workspace-root` (the user's directory).
    pub workspace_root: Option<String>,
}

/// A bad command line.
#[derive(Debug)]
pub enum ArgError {
    /// A flag this guest does not know.
    Unknown(String),
    /// A flag without its value.
    MissingValue(&'static str),
    /// A value that does not parse.
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(a) => write!(f, "unknown argument {a:?}"),
            Self::MissingValue(flag) => write!(f, "{flag} needs a value"),
            Self::BadValue { flag, value } => write!(f, "bad value {value:?} for {flag}"),
        }
    }
}

impl Options {
    /// Parses `args` (without the program name). The runner's own flags
    /// (`--user-id`, `--workspace-root`, `--bootstrap-*`) are accepted and
    /// skipped: the envelope reader handles the bootstrap flags, and the
    /// envelope is the authority on user and workspace.
    pub fn parse(args: &[String]) -> Result<Self, ArgError> {
        let mut o = Self {
            role: Role::Runtime,
            heartbeat: Duration::from_millis(1000),
            exit_after: None,
            exit_code: 0,
            ignore_sigterm: false,
            spawn_grandchild: false,
            print_env: false,
            sleeper: false,
            write_marker: None,
            workspace_root: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |flag: &'static str| it.next().ok_or(ArgError::MissingValue(flag));
            match arg.as_str() {
                "--role" => {
                    o.role = match value("--role")?.as_str() {
                        "runtime" => Role::Runtime,
                        "sidecar" => Role::Sidecar,
                        v => return Err(bad("--role", v)),
                    }
                }
                "--heartbeat-ms" => {
                    o.heartbeat = millis("--heartbeat-ms", value("--heartbeat-ms")?)?
                }
                "--exit-after-ms" => {
                    o.exit_after = Some(millis("--exit-after-ms", value("--exit-after-ms")?)?)
                }
                "--exit-code" => {
                    let v = value("--exit-code")?;
                    o.exit_code = v.parse().map_err(|_| bad("--exit-code", v))?;
                }
                "--workspace-root" => {
                    o.workspace_root = Some(value("--workspace-root")?.clone());
                }
                "--write-marker" => o.write_marker = Some(value("--write-marker")?.clone()),
                "--user-id" | "--bootstrap-file" => {
                    value("runner flag")?;
                }
                "--bootstrap-stdin" => {}
                "--ignore-sigterm" => o.ignore_sigterm = true,
                "--spawn-grandchild" => o.spawn_grandchild = true,
                "--print-env" => o.print_env = true,
                "--sleeper" => o.sleeper = true,
                other => return Err(ArgError::Unknown(other.to_string())),
            }
        }
        if o.heartbeat.is_zero() {
            return Err(bad("--heartbeat-ms", "0"));
        }
        Ok(o)
    }
}

fn bad(flag: &'static str, value: &str) -> ArgError {
    ArgError::BadValue {
        flag,
        value: value.to_string(),
    }
}

fn millis(flag: &'static str, v: &str) -> Result<Duration, ArgError> {
    v.parse()
        .map(Duration::from_millis)
        .map_err(|_| bad(flag, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, ArgError> {
        Options::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn runner_flags_and_options() {
        let o = parse(&[
            "--role",
            "sidecar",
            "--heartbeat-ms",
            "50",
            "--user-id",
            "alice",
            "--workspace-root",
            "/w",
            "--bootstrap-stdin",
        ])
        .unwrap();
        assert_eq!(o.role, Role::Sidecar);
        assert_eq!(o.heartbeat, Duration::from_millis(50));
        assert_eq!(o.workspace_root.as_deref(), Some("/w"));
        assert!(!o.ignore_sigterm);
    }

    #[test]
    fn bad_command_lines() {
        assert!(matches!(parse(&["--nope"]), Err(ArgError::Unknown(_))));
        assert!(matches!(
            parse(&["--role", "x"]),
            Err(ArgError::BadValue { flag: "--role", .. })
        ));
        assert!(matches!(
            parse(&["--exit-code"]),
            Err(ArgError::MissingValue("--exit-code"))
        ));
        assert!(matches!(
            parse(&["--heartbeat-ms", "0"]),
            Err(ArgError::BadValue { .. })
        ));
    }
}
