//! `runner-bin` with oxydra's config files and oxydra's expectations, end
//! to end through real processes:
//! - the guests' `--workspace-root` is the user's own directory, and a
//!   guest that publishes `<workspace-root>/ipc/<marker>` (as oxydra's
//!   runtime publishes `ipc/gateway-endpoint`) leaves it in the user's `ipc/`;
//! - `ipc/runner-control.sock` is a relative link to the control socket
//!   while the daemon serves, and is gone after stop;
//! - environment routing: the channel's bot token and `-e NAME` secrets
//!   reach the runtime only, `SHELL_X` reaches the sidecar as `X`, the
//!   user's time zone reaches both, and no secret is on the daemon's
//!   command line;
//! - `logs` under a terminal escapes control bytes, piped it does not;
//! - `config_version = "2.0.0"` is refused naming `config_version`.

use runner_tests::daemon::{self, KillOnDrop, daemon_command};
use runner_tests::runner_binary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN_VAR: &str = "OXYDRA_TEST_TELEGRAM_TOKEN";
const TOKEN: &str = "telegram-token-4f2a";
const SECRET: &str = "api-secret-91c3";

struct Daemon {
    child: KillOnDrop,
    socket: PathBuf,
}

/// `runner.toml` and `alice.toml` in oxydra's format, with demo guests.
fn write_config(dir: &Path, runtime_args: &str) -> PathBuf {
    let bin = runner_binary();
    let bin = bin.display();
    std::fs::write(
        dir.join("runner.toml"),
        format!(
            r#"config_version = "1.0.1"
workspace_root = "ws"
default_tier = "process"

[users.alice]
config_path = "alice.toml"

[web]
enabled = false

[process]
runtime = {{ program = "{bin}", args = [{runtime_args}] }}
sidecar = {{ program = "{bin}", args = ["demo-guest", "--role", "sidecar", "--print-env", "--heartbeat-ms", "200"] }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("alice.toml"),
        format!(
            r#"config_version = "1.0.1"
[behavior]
timezone = "Asia/Tokyo"
[channels.telegram]
enabled = true
bot_token_env = "{TOKEN_VAR}"
[[channels.telegram.senders]]
platform_ids = [1]
display_name = "A"
[[channels.telegram.senders]]
platform_ids = ["2"]
"#
        ),
    )
    .unwrap();
    dir.join("runner.toml")
}

fn start_daemon(dir: &Path, config: &Path, extra: &[&str]) -> (Daemon, mpsc::Receiver<String>) {
    let (mut child, lines) = daemon::spawn(
        daemon_command(&runner_binary(), "alice", dir)
            .arg("--config")
            .arg(config)
            .args(extra)
            .env(TOKEN_VAR, TOKEN)
            .env("E2E_SECRET", SECRET)
            .env("RUST_LOG", "warn"),
    );
    let erx = daemon::lines_of(child.0.stderr.take().unwrap());
    let socket = daemon::wait_serving(&lines, WAIT);
    (Daemon { child, socket }, erx)
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    daemon::output_bounded(Command::new(program).args(args).current_dir(dir), WAIT)
}

/// The first line starting with `prefix` in a guest's stdout log, waiting
/// (bounded) for the guest to write it.
fn log_line(ws_user: &Path, label: &str, prefix: &str) -> String {
    let path = ws_user.join("logs").join(format!("{label}.stdout.log"));
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with(prefix)) {
            return l[prefix.len()..].to_owned();
        }
        assert!(start.elapsed() < WAIT, "no {prefix} in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn env_of(ws_user: &Path, label: &str) -> BTreeMap<String, String> {
    serde_json::from_str(&log_line(ws_user, label, "env=")).unwrap()
}

fn stop(dir: &Path, config: &Path, mut d: Daemon) {
    let cfg = config.to_str().unwrap();
    let out = run(
        dir,
        runner_binary().to_str().unwrap(),
        &["stop", "--user", "alice", "--config", cfg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.child.wait_bounded(WAIT);
}

#[test]
fn oxydra_configs_workspace_root_env_routing_and_socket_link() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = write_config(
        dir,
        r#""demo-guest", "--print-env", "--write-marker", "gateway-endpoint", "--heartbeat-ms", "200""#,
    );
    let (d, stderr) = start_daemon(
        dir,
        &config,
        &[
            "-e",
            "E2E_SECRET",
            "-e",
            "SHELL_SIDE=only-sidecar",
            "-e",
            "PLAIN=runtime-only",
        ],
    );
    let user_dir = dir.join("ws/alice");
    assert_eq!(d.socket, user_dir.join("run/runner-control.sock"));

    // --workspace-root and the envelope's workspace_root: the user's dir.
    assert_eq!(
        PathBuf::from(log_line(&user_dir, "oxydra-vm", "workspace_root_arg=")),
        user_dir
    );
    let envelope: runner_types::BootstrapEnvelope =
        serde_json::from_str(&log_line(&user_dir, "oxydra-vm", "envelope=")).unwrap();
    assert_eq!(PathBuf::from(&envelope.workspace_root), user_dir);
    let marker = PathBuf::from(log_line(&user_dir, "oxydra-vm", "marker="));
    assert_eq!(marker, user_dir.join("ipc/gateway-endpoint"));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "alice\n");
    assert!(!dir.join("ws/ipc").exists(), "the shared root got an ipc/");

    // Environment routing.
    let runtime = env_of(&user_dir, "oxydra-vm");
    let sidecar = env_of(&user_dir, "shell-vm");
    assert_eq!(runtime.get(TOKEN_VAR).map(String::as_str), Some(TOKEN));
    assert_eq!(runtime.get("E2E_SECRET").map(String::as_str), Some(SECRET));
    assert_eq!(
        runtime.get("PLAIN").map(String::as_str),
        Some("runtime-only")
    );
    assert_eq!(runtime.get("TZ").map(String::as_str), Some("Asia/Tokyo"));
    assert!(!runtime.contains_key("SIDE") && !runtime.contains_key("SHELL_SIDE"));
    assert_eq!(
        sidecar.get("SIDE").map(String::as_str),
        Some("only-sidecar")
    );
    assert_eq!(sidecar.get("TZ").map(String::as_str), Some("Asia/Tokyo"));
    for secret in [TOKEN_VAR, "E2E_SECRET", "PLAIN"] {
        assert!(!sidecar.contains_key(secret), "sidecar got {secret}");
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.child.0.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !cmdline.contains(SECRET) && !cmdline.contains(TOKEN),
        "{cmdline}"
    );

    // [web] is accepted with one warning line.
    let web_warning = stderr
        .recv_timeout(WAIT)
        .expect("no warning about [web] on stderr");
    assert!(
        web_warning.contains("[web]") && web_warning.contains("no web UI"),
        "{web_warning}"
    );

    // The relative link oxydra's clients use reaches the socket.
    let link = user_dir.join("ipc/runner-control.sock");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../run/runner-control.sock")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let health = rt.block_on(async {
        runner_core::control::ControlClient::request_once(
            &link,
            &runner_types::ControlRequest::HealthCheck,
            WAIT,
        )
        .await
        .unwrap()
    });
    assert!(
        matches!(&health, runner_types::ControlResponse::HealthStatus(h) if h.user_id == "alice"),
        "{health:?}"
    );

    // `logs --since` as oxydra users type it.
    log_line(&user_dir, "oxydra-vm", "heartbeat n=");
    let cfg = config.to_str().unwrap();
    let out = run(
        dir,
        runner_binary().to_str().unwrap(),
        &[
            "logs", "--user", "alice", "--config", cfg, "--since", "15m", "--tail", "5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("heartbeat n="));

    stop(dir, &config, d);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "ipc link left after stop"
    );
    assert!(!user_dir.join("run/runner-control.sock").exists());
}

#[test]
fn logs_escape_control_bytes_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A runtime that prints an escape sequence, then waits for SIGTERM.
    let config = write_config(
        dir,
        r#""demo-guest", "--heartbeat-ms", "60000", "--exit-after-ms", "600000""#,
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let script = r#"printf 'paint=\033[31mred\n'; exec sleep 600"#;
    let text = text.replacen(
        &format!("runtime = {{ program = \"{}\"", runner_binary().display()),
        &format!(
            "runtime = {{ program = \"/bin/sh\", args = [\"-c\", \"{}\"] }} # ",
            script.replace('\\', "\\\\")
        ),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let (d, _stderr) = start_daemon(dir, &config, &[]);
    let user_dir = dir.join("ws/alice");
    log_line(&user_dir, "oxydra-vm", "paint=");
    let bin = runner_binary();
    let cfg = config.to_str().unwrap();
    let args = [
        "logs", "--user", "alice", "--config", cfg, "--role", "runtime", "--stream", "stdout",
    ];

    let piped = run(dir, bin.to_str().unwrap(), &args);
    assert!(piped.status.success());
    assert!(
        piped.stdout.windows(6).any(|w| w == b"\x1b[31mr"),
        "{piped:?}"
    );

    // `script` gives the command a pseudo-terminal and copies what it shows.
    let line = std::iter::once(bin.to_str().unwrap())
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let tty = run(dir, "script", &["-q", "-e", "-c", &line, "/dev/null"]);
    assert!(tty.status.success(), "{tty:?}");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("paint=\\x1b[31mred"), "{shown}");
    assert!(
        !tty.stdout.contains(&0x1b),
        "raw ESC reached the terminal: {shown}"
    );
    stop(dir, &config, d);
}

#[test]
fn config_version_two_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("runner.toml");
    std::fs::write(&config, "config_version = \"2.0.0\"\n").unwrap();
    let out = run(
        tmp.path(),
        runner_binary().to_str().unwrap(),
        &[
            "--daemon",
            "--user",
            "alice",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("config_version") && err.contains("2.0.0"),
        "{err}"
    );
}
