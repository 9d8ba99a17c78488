//! `runner-bin`: the sandbox runner's daemon and its clients.
//!
//! This is the only place that reads the process environment (`PATH`,
//! `DOCKER_HOST`, `RUST_LOG`, `NOTIFY_SOCKET`) and installs signal handlers; everything else
//! takes what it needs as arguments.

mod backends;
mod cli;
mod cli_docs;
mod client;
mod daemon;
mod env;
mod events;
mod metrics_http;
mod notify;
mod output;
mod paths;
mod signals;
mod status_table;

use clap::Parser;
use runner_core::backend::clean_start::StartRlimits;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Once the daemon or a client is done, how long the async runtime may
/// take to end what still runs on it. A blocking task stuck in a
/// file-system call (a hung NFS or FUSE mount) never returns; after this
/// bound it is abandoned, the process exits non-zero and says so. Log
/// writes never count here: they run on each log's own writer thread,
/// which exiting the process ends (the shutdown already reported any log
/// whose writes did not finish).
const RUNTIME_SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::DemoGuest { args }) => {
            return runner_examples::demo_guest::run_with(args, &["demo-guest"]);
        }
        Some(cli::Command::Completions { shell }) => {
            cli_docs::completions(shell, &mut std::io::stdout().lock());
            return ExitCode::SUCCESS;
        }
        Some(cli::Command::Man { dir }) => {
            let written = match dir {
                Some(dir) => cli_docs::man_pages(&dir),
                None => cli_docs::man(&mut std::io::stdout().lock()).map_err(Into::into),
            };
            return written.map_or_else(fail, |()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    let daemon = cli.daemon;
    // Guests get the limits the runner started with, not the raised ones.
    let start_rlimits = StartRlimits::capture();
    init_tracing(if daemon { "info" } else { "warn" });
    if daemon {
        raise_fd_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::Error::new(e).context("Cannot start the async runtime")),
    };
    let result = runtime.block_on(async move {
        match (daemon, cli.command) {
            (true, _) => daemon::run(cli.daemon_args, start_rlimits).await,
            (false, Some(cmd)) => client::run(cmd).await,
            (false, None) => Err(anyhow::anyhow!(
                "Nothing to do: pass --daemon --user <id>, or a subcommand (status, stop, logs, events, metrics); see --help"
            )),
        }
    });
    let shutting_down = Instant::now();
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_BOUND);
    let runtime_left_work = shutting_down.elapsed() >= RUNTIME_SHUTDOWN_BOUND;
    match result {
        Err(e) => fail(e),
        Ok(()) if runtime_left_work => fail(anyhow::anyhow!(
            "background file-system calls did not finish within {RUNTIME_SHUTDOWN_BOUND:?} (a stuck disk or mount?); exiting without them"
        )),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// Prints the whole error chain on one line and returns failure.
fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Each session holds a few descriptors per guest plus one per control
/// connection: lift the soft limit to the hard one so a busy control socket
/// cannot starve log files and guest pipes of descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
