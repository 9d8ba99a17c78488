//! End-to-end test helpers shared by the workspace's integration tests and
//! benchmarks.
//!
//! - [`guest_binary`]: builds the `runner-examples` binaries (the demo guest)
//!   once per test process and returns the path of one of them.
//! - [`firecracker_binary`], [`test_kernel`], [`kvm_or_skip`],
//!   [`pids_with_arg`], [`process_alive`]: the micro_vm tier's fixtures.
//! - [`docker`]: the container tier's fixtures (engine lookup, static guest
//!   images, unique ids, clean-up) and [`docker::harness`] for its backend.
//! - [`process`], [`firecracker`], [`logs`]: the other tiers' and the log
//!   pipeline's fixtures.
//! - [`daemon`]: `runner-bin --daemon` as a child (start, wait for it to
//!   serve, signal, bounded waits).
//! - [`mount`]: an ext4 image on a loop mount that a test can freeze, so
//!   writes to it hang (the stuck-disk tests).
//! - [`procfs`]: a process's `/proc` status fields, limits and descriptors.
//! - [`envelope`]: envelopes built by the runner's own `bootstrap` code.
//! - [`contract`]: the one suite every backend must pass.
//! - [`probe_pattern`]: the bytes `probe-guest bytes` writes.

pub mod contract;
pub mod daemon;
pub mod docker;
pub mod envelope;
pub mod firecracker;
pub mod logs;
pub mod mount;
pub mod process;
pub mod procfs;

pub use runner_examples::probe::pattern as probe_pattern;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of a binary of the `runner-examples` crate (for example
/// `"demo-guest"`), built for the same profile and target directory as the
/// calling test or benchmark executable.
///
/// The first call in a process runs `cargo build -p runner-examples --bins`
/// (the `cargo` that compiled this crate, into the target directory the
/// caller's own executable lives in); later calls reuse that build. Cargo
/// serialises concurrent builds of several test binaries on its own lock.
///
/// # Panics
///
/// When the build fails or the binary does not exist afterwards: a test
/// cannot run without its guest, and the panic message says why.
pub fn guest_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let profile_dir = match BUILT.get_or_init(|| build_package("runner-examples")) {
        Ok(dir) => dir,
        Err(why) => panic!("cannot build the runner-examples binaries: {why}"),
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "runner-examples has no binary {name:?} at {}",
        path.display()
    );
    path
}

/// The profile directory (`<target>/debug`, `<target>/release`, ...) that
/// holds the current executable: test executables live one level deeper, in
/// `deps/`.
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir = dir
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

/// Path of the `runner-bin` binary, built once per test process.
pub fn runner_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let profile_dir = match BUILT.get_or_init(|| build_package("runner-bin")) {
        Ok(dir) => dir,
        Err(why) => panic!("cannot build runner-bin: {why}"),
    };
    profile_dir.join("runner-bin")
}

fn build_package(package: &str) -> Result<PathBuf, String> {
    let profile_dir = profile_dir()?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no profile name", profile_dir.display()))?;
    // The `debug` directory belongs to the `dev` profile.
    let profile = if profile == "debug" { "dev" } else { profile };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("runner-tests has no parent directory")?
        .join("Cargo.toml");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut build = Command::new(cargo);
    build
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", profile, "-p", package, "--bins"]);
    run_ok(&mut build, &format!("{cargo} build"))?;
    Ok(profile_dir)
}

/// Runs `cmd` (described as `what`) to completion; its output, or why it
/// did not run or did not succeed (with its stderr).
pub fn run_ok(cmd: &mut Command, what: &str) -> Result<std::process::Output, String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

// ---------------------------------------------------------------------------
// micro_vm tier: the pinned Firecracker binary, the test kernel, KVM.
// ---------------------------------------------------------------------------

/// The repository root (the parent of this crate's directory; holds
/// `Cargo.toml` and `.ci/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runner-tests lives one level below the repository root")
        .to_path_buf()
}

/// Runs `bash <script> <args...>` and returns the last non-empty stdout line
/// as a path (both fixture scripts print their artefact's path last).
fn run_path_script(script: &Path, args: &[&Path]) -> Result<PathBuf, String> {
    let output = run_ok(
        Command::new("bash").arg(script).args(args),
        &script.display().to_string(),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| format!("{} printed no path", script.display()))?;
    let path = PathBuf::from(last.trim());
    if !path.is_file() {
        return Err(format!(
            "{} printed {}, which is not a file",
            script.display(),
            path.display()
        ));
    }
    Ok(path)
}

/// Path of the pinned, hash-verified Firecracker binary, fetched by
/// `.ci/firecracker.sh` (idempotent; fast when cached).
///
/// # Panics
///
/// When the script fails: a micro_vm test cannot run without it.
pub fn firecracker_binary() -> PathBuf {
    static FETCHED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FETCHED
        .get_or_init(|| run_path_script(&repo_root().join(".ci/firecracker.sh"), &[]))
        .clone()
        .unwrap_or_else(|why| panic!("cannot get the firecracker binary: {why}"))
}

/// Runs `script` with `sh -c` as `uid:uid` with no supplementary groups
/// (`setpriv`), as the other local user or the guest of an attacker test
/// would; whether it succeeded. Needs root.
pub fn sh_as_uid(uid: u32, script: &str) -> bool {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("run setpriv")
        .success()
}

/// The pinned jailer, fetched and verified beside firecracker by
/// `.ci/firecracker.sh`.
pub fn jailer_binary() -> PathBuf {
    firecracker_binary().with_file_name("jailer")
}

/// Path of the test kernel (`tests/fixtures/test-kernel`), built by its
/// `build.sh` into `.ci/cache/test-kernel` (idempotent, atomic replace, so
/// concurrent test binaries are safe).
///
/// # Panics
///
/// When the build fails.
pub fn test_kernel() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| test_kernel_in(&repo_root().join(".ci/cache/test-kernel")))
        .clone()
        .unwrap_or_else(|why| panic!("cannot build the test kernel: {why}"))
}

/// Builds the test kernel into `dir` and returns the `vmlinux` path.
pub fn test_kernel_in(dir: &Path) -> Result<PathBuf, String> {
    run_path_script(
        &repo_root().join("tests/fixtures/test-kernel/build.sh"),
        &[dir],
    )
}

/// Why `device` cannot be used for KVM, or `None` when it opens read-write.
pub fn kvm_unusable_reason(device: &Path) -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => None,
        Err(e) => Some(format!("{}: {e}", device.display())),
    }
}

/// Gate for tests that need a real KVM: `true` when `/dev/kvm` is usable.
/// Otherwise, when the `CI` environment variable is set, panics (CI must
/// run these tests); else prints `skipping: /dev/kvm unusable: <why>` and
/// returns `false`, and the test should return.
pub fn kvm_or_skip(test: &str) -> bool {
    let Some(why) = kvm_unusable_reason(Path::new("/dev/kvm")) else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: /dev/kvm unusable on CI: {why}");
    }
    eprintln!("{test}: skipping: /dev/kvm unusable: {why}");
    false
}

/// Gate for tests that need root (to switch uids): `true` as root.
/// Otherwise, with the `CI` environment variable set, panics (CI runs them
/// as root); else prints `skipping: needs root` and returns `false`.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI runs these tests as root"
    );
    eprintln!("{test}: skipping: needs root");
    false
}

/// Pids of live processes whose command line contains `needle` as one whole
/// argument (read from `/proc/<pid>/cmdline`; zombies have none and are
/// not listed).
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    pids_where(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == needle.as_bytes())
        })
    })
}

/// Pids of the processes in `/proc` for which `keep` holds.
pub fn pids_where(keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| keep(*pid))
        .collect()
}

/// Whether a process with this pid exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    runner_core::procfs::process_running(pid)
}

/// Waits up to `within` for `pid` to be gone (see [`process_alive`]).
/// There is no event for a non-child's death, so this re-checks every
/// 20 ms until the deadline.
pub async fn wait_gone(pid: u32, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while process_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// SIGKILLs a helper "runner" started by [`spawn_reporting_helper`] and
/// reaps it.
///
/// # Panics
///
/// When it cannot be killed or reaped, or exited successfully anyway.
pub async fn sigkill_runner(mut runner: std::process::Child) {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(i32::try_from(runner.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGKILL).expect("SIGKILL the runner");
    let status = tokio::task::spawn_blocking(move || runner.wait())
        .await
        .expect("wait task")
        .expect("reap the runner");
    assert!(!status.success(), "the killed runner reported success");
}

/// Re-runs the current test executable with only the ignored test `helper`
/// selected and `env` set, and returns the child with the text after
/// `marker` on the first stdout line that has it. Used by tests that need a
/// "runner" process to SIGKILL. Panics (after killing the child) when no
/// such line arrives within `timeout`.
pub fn spawn_reporting_helper(
    helper: &str,
    env: (&str, &std::ffi::OsStr),
    marker: &str,
    timeout: std::time::Duration,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            helper,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env.0, env.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn helper");
    let stdout = child.stdout.take().expect("helper stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker_owned = marker.to_owned();
    std::thread::spawn(move || {
        // libtest prints the test name on the same line first.
        let found = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split_once(marker_owned.as_str())
                    .map(|(_, v)| v.trim().to_owned())
            });
        if tx.send(found).is_err() {
            eprintln!("helper report arrived after the test gave up");
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(Some(value)) => (child, value),
        other => {
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("cannot kill helper {helper}: {e}");
            }
            panic!("helper {helper} did not report {marker}: {other:?}");
        }
    }
}
