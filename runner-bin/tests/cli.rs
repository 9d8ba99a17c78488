//! The binary's conventions and operator commands, run as a user runs them:
//! `--version`, `completions`, `man`, and `status` / `metrics` against a
//! daemon on built-in defaults (process tier, demo guests).

use runner_tests::daemon::{self, KillOnDrop, daemon_command};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_runner-bin");
const WAIT: Duration = Duration::from_secs(30);

fn run(dir: &Path, args: &[&str]) -> Output {
    // Bounded: the pipes are small enough here not to fill before exit.
    let out = daemon::output_bounded(Command::new(BIN).args(args).current_dir(dir), WAIT);
    assert!(
        out.status.success(),
        "runner-bin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn version_names_the_package_and_the_git_revision() {
    let text = stdout(&run(Path::new("."), &["--version"]));
    let version = concat!("runner-bin ", env!("CARGO_PKG_VERSION"));
    let rest = text
        .strip_prefix(version)
        .unwrap_or_else(|| panic!("{text:?}"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git_known = repo.join(".git").exists()
        && Command::new("git")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if git_known {
        let rev = rest
            .strip_prefix(" (git ")
            .and_then(|r| r.strip_suffix(")\n"))
            .unwrap_or_else(|| panic!("no git revision in {text:?}"));
        assert!(
            rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "{text:?}"
        );
    } else {
        assert_eq!(rest, "\n");
    }
}

#[test]
fn completions_and_man_page() {
    let bash = stdout(&run(Path::new("."), &["completions", "bash"]));
    for sub in ["status", "stop", "logs", "metrics", "completions", "man"] {
        assert!(bash.contains(sub), "no {sub} in the bash completions");
    }
    let man = stdout(&run(Path::new("."), &["man"]));
    assert!(man.contains(".TH runner-bin 1"), "{man}");
    assert!(man.contains("metrics"), "{man}");
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    run(Path::new("."), &["man", "--dir", dir_arg]);
    assert!(dir.path().join("runner-bin-status.1").is_file());
}

fn start_daemon(dir: &Path, user: &str) -> KillOnDrop {
    let (child, lines) =
        daemon::spawn(daemon_command(Path::new(BIN), user, dir).stderr(Stdio::null()));
    daemon::wait_serving(&lines, WAIT);
    child
}

#[test]
fn metrics_over_http_with_metrics_listen() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let mut child = daemon_command(Path::new(BIN), "web", tmp.path())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let daemon = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(i) = line.find("url=http://")
                && tx.send(line[i + "url=http://".len()..].to_owned()).is_err()
            {
                return;
            }
        }
    });
    let rest = rx.recv_timeout(WAIT).expect("no metrics url logged");
    let addr = rest.split('/').next().unwrap().to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        body.contains("runner_guest_state{user=\"web\",role=\"runtime\""),
        "{body}"
    );
    run(tmp.path(), &["stop", "--user", "web"]);
    let mut daemon = daemon;
    daemon.wait_bounded(WAIT);
}

#[test]
fn status_table_and_metrics_from_a_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = start_daemon(tmp.path(), "ops");
    let table = stdout(&run(tmp.path(), &["status", "--user", "ops"]));
    let mut lines = table.lines();
    assert_eq!(lines.next(), Some("user ops: healthy (process tier)"));
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ROLE     STATE    PID/CONTAINER"),
        "{table}"
    );
    for role in ["sidecar", "runtime"] {
        let row = lines.next().unwrap();
        assert!(
            row.starts_with(&format!("{role:<9}running  pid ")),
            "{table}"
        );
    }
    assert!(table.contains("oxydra-vm.stdout.log"), "{table}");

    let text = stdout(&run(tmp.path(), &["metrics", "--user", "ops"]));
    assert!(text.ends_with("# EOF\n"), "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    let find = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    };
    // The status above was one health_check.
    let health = find(
        "runner_control_requests_total",
        &[("op", "health_check"), ("result", "ok")],
    );
    assert!(health.is_some(), "{text}");
    let memory = find(
        "runner_guest_resident_memory_bytes",
        &[("user", "ops"), ("role", "runtime")],
    );
    assert!(
        matches!(memory.map(|s| &s.value), Some(prometheus_parse::Value::Gauge(v)) if *v > 0.0),
        "{text}"
    );

    run(tmp.path(), &["stop", "--user", "ops"]);
    daemon.wait_bounded(WAIT);
}
