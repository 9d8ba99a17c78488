//! `runner-bin --daemon` as root, started the way a careless parent would
//! start it (an inherited descriptor, umask 000, a low open-file limit that
//! the daemon then raises): both process-tier guests still start clean,
//! under their user's own uid.

use runner_tests::daemon;
use runner_tests::procfs::{fds, limit, status_field};
use runner_tests::runner_binary;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The daemon's soft open-file limit at its start.
const START_NOFILE: u64 = 256;

fn client(dir: &Path, args: &[&str]) -> Output {
    daemon::output_bounded(
        Command::new(runner_binary())
            .args(args)
            .arg("--config")
            .arg(dir.join("runner.toml"))
            .current_dir(dir),
        WAIT,
    )
}

#[test]
fn guests_of_a_careless_daemon_start_clean_under_their_own_uid() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
        eprintln!("skipping: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Guests that open nothing themselves, so every descriptor they hold
    // came from their start.
    let config = tmp.path().join("runner.toml");
    std::fs::write(
        &config,
        "[process]\n\
         runtime = { program = \"/bin/sh\", args = [\"-c\", \"exec sleep 1000\"] }\n\
         sidecar = { program = \"/bin/sh\", args = [\"-c\", \"exec sleep 1000\"] }\n",
    )
    .unwrap();
    // Inherited by the daemon: no close-on-exec.
    let leaked = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked) as u32;
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let (mut child, lines) = daemon::spawn(
        Command::new("/bin/sh")
            .args(["-c", "umask 000; exec \"$@\"", "sh", "prlimit"])
            .arg(format!("--nofile={START_NOFILE}:{hard}"))
            .arg(runner_binary())
            .args(["--daemon", "--user", "erin", "--config"])
            .arg(&config)
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    drop(leaked);
    daemon::wait_serving(&lines, WAIT);
    let daemon = child.0.id();
    // The daemon really has the extra descriptor, and raised its limit.
    assert!(fds(daemon).contains(&leaked_fd), "{:?}", fds(daemon));
    assert_ne!(limit(daemon, "Max open files").0, START_NOFILE.to_string());

    let out = client(tmp.path(), &["status", "--user", "erin", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health: runner_types::HealthStatus = serde_json::from_slice(&out.stdout).unwrap();
    let pids: Vec<u32> = health.guests.iter().filter_map(|g| g.pid).collect();
    assert_eq!(pids.len(), 2, "runtime and sidecar");
    let mut uids = Vec::new();
    for pid in pids {
        let uid = status_field(pid, "Uid");
        assert!(
            !uid.split_whitespace().any(|u| u == "0"),
            "{pid} runs as {uid}"
        );
        uids.push(uid);
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        assert_eq!(status_field(pid, "Umask"), "0077");
        assert_eq!(status_field(pid, "Groups"), "");
        assert_eq!(fds(pid), [0, 1, 2], "guest {pid}");
        assert_eq!(limit(pid, "Max open files").0, START_NOFILE.to_string());
        assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
        let nproc = "512".to_owned();
        assert_eq!(limit(pid, "Max processes"), (nproc.clone(), nproc));
    }
    // Both guests of one user share that user's uid.
    assert_eq!(uids[0], uids[1]);

    assert!(
        client(tmp.path(), &["stop", "--user", "erin"])
            .status
            .success()
    );
    assert!(child.wait_bounded(WAIT).success());
}
