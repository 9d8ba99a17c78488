//! The demo guest: a small program that honours the guest contract (see
//! `docs/guest-contract.md`) so the runner can be exercised end to end without oxydra's images.
//!
//! It reads its bootstrap envelope with `runner_types::reader` (whichever
//! transport the runner used), then prints one line per event on stdout:
//!
//! | line | when |
//! | --- | --- |
//! | `ack` | right after the envelope was read (the launch benchmark waits for it) |
//! | `envelope=<compact JSON>` | the envelope as received |
//! | `workspace_root_arg=<path>` | the runner's `--workspace-root`, when given |
//! | `marker=<path>` | with `--write-marker NAME`, once `<workspace-root>/ipc/NAME` is written |
//! | `env=<JSON object>` | with `--print-env`: its whole environment |
//! | `grandchild_pid=<pid>` | with `--spawn-grandchild` |
//! | `sidecar_listening=<path>` | sidecar role, once its socket is bound |
//! | `sidecar_connected=<address>` | runtime role, once the sidecar greeted it |
//! | `heartbeat n=<k>` | every `--heartbeat-ms` (also `heartbeat-err n=<k>` on stderr) |
//! | `sigterm ignored` | with `--ignore-sigterm`, on each SIGTERM |
//! | `exiting code=<c>` | with `--exit-after-ms`, before exiting with `--exit-code` |
//! | `shutdown` | on SIGTERM, before exiting 0 |
//!
//! The sidecar role listens on `<user dir>/ipc/shell-daemon.sock`
//! (see `sidecar.rs`) and removes it on exit. Exit codes: 0 after SIGTERM,
//! `--exit-code` after `--exit-after-ms`, 1 on a runtime error (no envelope,
//! socket trouble, stdout gone), 2 on a bad command line.

mod args;
mod runtime;
mod sidecar;

use args::{Options, Role};
use runtime::SidecarLink;
use signal_hook::consts::SIGTERM;
use signal_hook::iterator::Signals;
use std::error::Error;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a `--sleeper` grandchild lives at most, so a failed test run
/// cannot leave it behind forever.
const SLEEPER_LIFETIME: Duration = Duration::from_secs(120);

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Runs the demo guest with `argv` (its arguments, without the program
/// name). `exec_prefix` is what must follow the executable to run the demo
/// guest again (empty for the `demo-guest` binary, `["demo-guest"]` when
/// embedded in `runner-bin`); `--spawn-grandchild` uses it.
pub fn run_with(argv: Vec<String>, exec_prefix: &[&str]) -> ExitCode {
    let opts = match Options::parse(&argv) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo-guest: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = if opts.sleeper {
        sleeper()
    } else {
        run(&opts, &argv, exec_prefix)
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("demo-guest: {e}");
        ExitCode::from(1)
    })
}

/// Prints one line on stdout; a closed stdout is an error (the runner is gone).
fn say(line: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn run(opts: &Options, argv: &[String], exec_prefix: &[&str]) -> Result<ExitCode> {
    // Install SIGTERM handling before anything else, so a stop that arrives
    // during start-up still ends in a clean shutdown.
    let terms = watch_sigterm(opts.ignore_sigterm)?;
    let sources = runner_types::reader::Sources {
        args: argv.to_vec(),
        ..runner_types::reader::Sources::from_process()
    };
    let (envelope, _transport) = sources.read(std::io::stdin().lock())?;
    say(format_args!("ack"))?;
    let json = String::from_utf8(envelope.to_json()?)?;
    say(format_args!("envelope={json}"))?;
    if let Some(root) = &opts.workspace_root {
        say(format_args!("workspace_root_arg={root}"))?;
    }
    if let Some(name) = &opts.write_marker {
        // Where oxydra's runtime publishes its gateway endpoint: below the
        // workspace root it was given, which is the user's own directory.
        let root = opts
            .workspace_root
            .as_deref()
            .unwrap_or(&envelope.workspace_root);
        let path = std::path::Path::new(root).join("ipc").join(name);
        std::fs::write(&path, format!("{}\n", envelope.user_id))?;
        say(format_args!("marker={}", path.display()))?;
    }
    if opts.print_env {
        let env: std::collections::BTreeMap<String, String> = std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        say(format_args!("env={}", serde_json::to_string(&env)?))?;
    }
    if opts.spawn_grandchild {
        // `/proc/self/exe`, not the path: a guest running under its own uid
        // may not be able to walk the directories above its own binary.
        let child = Command::new("/proc/self/exe")
            .args(exec_prefix)
            .arg("--sleeper")
            .stdin(Stdio::null())
            .spawn()?;
        say(format_args!("grandchild_pid={}", child.id()))?;
    }
    let mut sidecar = None;
    let ending = match opts.role {
        Role::Sidecar => {
            let s = sidecar.insert(sidecar::Sidecar::start(&envelope)?);
            say(format_args!("sidecar_listening={}", s.path().display()))
                .and_then(|()| beat_until_done(opts, &terms))
        }
        Role::Runtime => match runtime::connect_sidecar(&envelope, &terms) {
            SidecarLink::Terminated => Ok(Ending::Terminated),
            SidecarLink::Connected(addr) => say(format_args!("sidecar_connected={addr}"))
                .and_then(|()| beat_until_done(opts, &terms)),
            SidecarLink::Failed(addr, e) => {
                eprintln!("sidecar_unreachable={addr} error={e}");
                beat_until_done(opts, &terms)
            }
            SidecarLink::None => beat_until_done(opts, &terms),
        },
    };
    if let Some(s) = sidecar {
        s.close();
    }
    match ending? {
        Ending::Terminated => {
            say(format_args!("shutdown"))?;
            Ok(ExitCode::SUCCESS)
        }
        Ending::ExitAfter => {
            say(format_args!("exiting code={}", opts.exit_code))?;
            Ok(ExitCode::from(opts.exit_code))
        }
    }
}

/// Why the main loop ended.
enum Ending {
    /// SIGTERM arrived.
    Terminated,
    /// `--exit-after-ms` elapsed.
    ExitAfter,
}

/// Starts a thread that forwards each SIGTERM as a message, or (with
/// `ignore`) only reports it.
fn watch_sigterm(ignore: bool) -> Result<mpsc::Receiver<()>> {
    let mut signals = Signals::new([SIGTERM])?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if ignore {
                if say(format_args!("sigterm ignored")).is_err() {
                    return;
                }
            } else if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Heartbeats until SIGTERM or `--exit-after-ms`.
fn beat_until_done(opts: &Options, terms: &mpsc::Receiver<()>) -> Result<Ending> {
    let start = Instant::now();
    let exit_at = opts.exit_after.map(|d| start + d);
    let mut next_beat = start + opts.heartbeat;
    let mut n = 0u64;
    loop {
        let now = Instant::now();
        if exit_at.is_some_and(|at| now >= at) {
            return Ok(Ending::ExitAfter);
        }
        if now >= next_beat {
            n += 1;
            say(format_args!("heartbeat n={n}"))?;
            writeln!(std::io::stderr(), "heartbeat-err n={n}")?;
            next_beat = now + opts.heartbeat;
            continue;
        }
        let wake = exit_at.map_or(next_beat, |at| at.min(next_beat));
        match terms.recv_timeout(wake - now) {
            Ok(()) => return Ok(Ending::Terminated),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The signal thread is gone (only with --ignore-sigterm after a
            // failed write): keep the timers going.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wake - now),
        }
    }
}

/// The `--spawn-grandchild` process: ignores SIGTERM and sleeps, holding the
/// inherited stdout and stderr open, for at most [`SLEEPER_LIFETIME`].
fn sleeper() -> Result<ExitCode> {
    // A registered handler replaces the default action (terminate), so
    // SIGTERM is effectively ignored; the flag itself is never read.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(SIGTERM, flag)?;
    let until = Instant::now() + SLEEPER_LIFETIME;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    Ok(ExitCode::SUCCESS)
}
