//! Embedding the sandbox runner in your own program.
//!
//! Starts one session for user `alice` with two process-tier guests (the
//! demo guest as runtime and sidecar), prints its health, asks its control
//! socket the way an external client would, follows the runtime's log until
//! it has reached the sidecar, then shuts the session down and prints the
//! lifecycle events seen meanwhile.
//!
//! ```text
//! cargo run -p runner-examples --example embed                  # built-in defaults, temp workspace
//! cargo run -p runner-examples --example embed -- examples/runner.toml
//! ```
//!
//! Without a config file the workspace lives in a temporary directory that
//! is removed at exit; with one, in that file's `workspace_root` (for
//! `examples/runner.toml`, `examples/workspaces/`), which is left in place.
//!
//! Which guest program runs: without a config file, or with one that has no
//! `[process]` table, the demo guest. `cargo run --example` builds only this
//! example and the library, not the crate's binaries, so the example looks
//! for the `demo-guest` binary in its profile directory (examples live in
//! `target/<profile>/examples/`, binaries in `target/<profile>/`; `cargo
//! build -p runner-examples --bins` puts it there) and, when it is not
//! there, runs *itself* as the demo guest: started as `embed demo-guest
//! ...` it hands over to `runner_examples::demo_guest`, the way `runner-bin
//! demo-guest` does. Either way the example works from a clean build.
//!
//! Only the public API is used: `RunnerConfig`, `ProcessBackend`,
//! `Backends`, `Runner`, `SessionHandle`, `ControlClient`. Like any
//! embedding program (and unlike the library crates), this one reads its
//! own command line and `PATH` and passes them in.

use futures::StreamExt;
use runner_actors::{Backends, Runner, SessionEvent, SessionOptions};
use runner_core::UserId;
use runner_core::backend::process::{ProcessBackend, ProcessBackendConfig};
use runner_core::config::{GuestCommand, ProcessConfig, RunnerConfig};
use runner_core::control::ControlClient;
use runner_types::control::{LogsRequest, RoleSelector, StreamSelector};
use runner_types::{ControlRequest, ControlResponse, SandboxTier};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// First argument that makes this executable act as the demo guest.
const GUEST_MODE: &str = "demo-guest";
const USER: &str = "alice";
const WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(GUEST_MODE) {
        return runner_examples::demo_guest::run_with(args[1..].to_vec(), &[GUEST_MODE]);
    }
    // A multi-threaded runtime: process guests are tied to the thread that
    // launched them (parent-death signal), and worker threads live as long
    // as the runtime.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(run(args.first().map(PathBuf::from))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.as_ref()),
    }
}

/// Prints the error with its whole chain of causes, once.
fn fail(e: &dyn Error) -> ExitCode {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("embed: {message}");
    ExitCode::FAILURE
}

async fn run(config_path: Option<PathBuf>) -> Result<(), Box<dyn Error>> {
    // A short base directory: the control socket path must stay under 108 bytes.
    let scratch = tempfile::Builder::new()
        .prefix("embed")
        .tempdir_in("/tmp")?;
    let config = match &config_path {
        Some(path) => RunnerConfig::load(path)?,
        None => RunnerConfig::defaults(scratch.path()),
    };
    let guests = match &config.process {
        Some(process) => process.clone(),
        None => demo_guests()?,
    };
    println!("runtime guest: {}", guests.runtime.program.display());
    let backend = ProcessBackend::new(ProcessBackendConfig {
        runtime: guests.runtime,
        sidecar: guests.sidecar,
        search_path: std::env::var_os("PATH"),
    });
    let runner = Runner::new(config, Backends::new().with(Arc::new(backend)));

    // This example only wires the process backend, so force that tier if a
    // loaded config asks for another (health then reports why).
    let user = UserId::new(USER)?;
    let options = SessionOptions {
        insecure: runner.config().tier_for(&user) != SandboxTier::Process,
        ..SessionOptions::default()
    };
    let session = runner.start_session_with(USER, options).await?;
    let mut events = session.events();
    let printer = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("event: {event:?}");
            if event == SessionEvent::ShutdownComplete {
                return;
            }
        }
    });

    let health = session.health().await?;
    println!("health: {}", serde_json::to_string_pretty(&health)?);

    // What an external client (for example `runner-bin status`) sees.
    let socket = session
        .control_socket()
        .ok_or("session serves no control socket")?;
    match ControlClient::request_once(&socket, &ControlRequest::HealthCheck, WAIT).await? {
        ControlResponse::HealthStatus(h) => {
            println!("control socket {}: healthy={}", socket.display(), h.healthy)
        }
        other => println!("control socket answered {other:?}"),
    }

    // Follow the runtime's stdout until it has greeted the sidecar.
    let client = ControlClient::connect(&socket, WAIT).await?;
    let mut lines = Box::pin(client.follow_logs(LogsRequest {
        role: RoleSelector::Runtime,
        stream: StreamSelector::Stdout,
        tail: Some(10),
        ..LogsRequest::default()
    }));
    let reached = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = lines.next().await {
            for entry in chunk?.entries {
                println!("runtime stdout: {}", entry.message);
                if entry.message.starts_with("sidecar_connected=") {
                    return Ok(true);
                }
            }
        }
        Ok::<_, Box<dyn Error>>(false)
    })
    .await;
    match reached {
        Ok(Ok(true)) => println!("the runtime guest reached its sidecar"),
        Ok(Ok(false)) => println!("log stream ended before the runtime reached its sidecar"),
        Ok(Err(e)) => return Err(e),
        Err(_) => println!("the runtime did not reach its sidecar within {WAIT:?}"),
    }
    drop(lines);

    let report = session.shutdown(session.shutdown_bound()).await?;
    if tokio::time::timeout(WAIT, printer).await.is_err() {
        println!("(no ShutdownComplete event within {WAIT:?})");
    }
    println!("shutdown took {:?}", report.took);
    for guest in &report.guests {
        println!(
            "  {} guest: {:?}, last exit {:?}",
            guest.role, guest.state, guest.last_exit
        );
    }
    Ok(())
}

/// The demo guest as runtime and sidecar: the `demo-guest` binary next to
/// this example's profile directory if it was built, else this executable
/// in its demo-guest mode.
fn demo_guests() -> std::io::Result<ProcessConfig> {
    let exe = std::env::current_exe()?;
    let built = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("demo-guest"))
        .filter(|p| p.is_file());
    let (program, prefix) = match built {
        Some(bin) => (bin, Vec::new()),
        None => {
            println!(
                "no demo-guest binary beside this example (`cargo build -p runner-examples --bins` builds it); running this example as the guest"
            );
            (exe, vec![GUEST_MODE.to_string()])
        }
    };
    let command = |role: &str| GuestCommand {
        program: program.clone(),
        args: prefix
            .iter()
            .cloned()
            .chain(["--role".into(), role.into()])
            .collect(),
        env: BTreeMap::new(),
    };
    Ok(ProcessConfig {
        runtime: command("runtime"),
        sidecar: Some(command("sidecar")),
    })
}
