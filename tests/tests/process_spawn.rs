//! Process backend, the spawn itself: a failed setup step or exec is a
//! typed error naming the program and the step; the new process starts
//! clean as its own `/proc` files show; launches from many threads at
//! once, while other threads allocate, all start the right program; and a
//! guest outlives its dropped backend (its parent-death signal is tied to
//! the backend's spawn thread).

use runner_core::backend::process::{ProcessBackend, ProcessLaunchError, SpawnStep};
use runner_core::backend::{GuestIdentity, LaunchError, LaunchedGuest, SandboxBackend};
use runner_core::config::GuestCommand;
use runner_core::identity::GuestUser;
use runner_core::workspace::MountOverrides;
use runner_tests::process::*;
use runner_tests::procfs::{fds, status_field};
use runner_types::{ExitStatus, GuestRole};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// An unprivileged uid no account uses.
const GUEST_UID: u32 = 1_900_071_234;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn command(program: impl Into<PathBuf>, args: &[&str]) -> GuestCommand {
    GuestCommand {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
    }
}

fn executable(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn launch_result(
    fx: &Fixture,
    backend: &ProcessBackend,
    run_as: Option<GuestUser>,
) -> Result<LaunchedGuest, LaunchError> {
    let mut spec = fx.spec(GuestRole::Runtime, fx.envelope(GuestRole::Runtime, backend));
    spec.run_as = run_as;
    tokio::time::timeout(PROMPT, backend.launch(spec))
        .await
        .expect("launch is bounded")
}

/// Asserts `result` is a failed start at `step` with `errno`, naming
/// `program`.
fn assert_start_failed(
    result: Result<LaunchedGuest, LaunchError>,
    program: &Path,
    step: SpawnStep,
    errno: i32,
) {
    match result {
        Err(LaunchError::Process(ProcessLaunchError::Start {
            role,
            program: named,
            step: failed,
            source,
        })) => {
            assert_eq!(role, GuestRole::Runtime);
            assert_eq!(named, program);
            assert_eq!(failed, step);
            assert_eq!(source.raw_os_error(), Some(errno), "{source}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(guest) => panic!("launched {:?}", guest.identity),
    }
}

#[tokio::test]
async fn exec_failure_is_typed_and_names_the_program() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    // Passes every check before the spawn; only the kernel's exec refuses.
    let script = executable(dir.path(), "guest.sh", b"#!/no/such/interpreter\n");
    let backend = runtime_only(command(&script, &[]));
    let result = launch_result(&fx, &backend, None).await;
    assert_start_failed(result, &script, SpawnStep::Exec, nix::libc::ENOENT);
    let bogus = executable(dir.path(), "bogus", b"\x7fELF but not really an executable");
    let backend = runtime_only(command(&bogus, &[]));
    let result = launch_result(&fx, &backend, None).await;
    assert_start_failed(result, &bogus, SpawnStep::Exec, nix::libc::ENOEXEC);
    // Control: the same fixture launches a real program.
    let ok = executable(dir.path(), "ok.sh", b"#!/bin/sh\nexit 0\n");
    let backend = runtime_only(command(&ok, &[]));
    let mut guest = launch_result(&fx, &backend, None).await.unwrap();
    assert_eq!(guest.exit.wait().await.status, ExitStatus::Code(0));
}

/// As root: the guest's uid cannot enter a working directory only root can
/// (the check before the spawn runs as root and passes). Not root: switching
/// to another gid is refused.
#[tokio::test]
async fn a_failed_setup_step_is_reported_as_that_step() {
    let fx = Fixture::new();
    let guest = GuestUser {
        uid: GUEST_UID,
        gid: GUEST_UID,
    };
    let (step, errno) = if is_root() {
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(fx.dir.path(), private).unwrap();
        (SpawnStep::WorkDir, nix::libc::EACCES)
    } else {
        (SpawnStep::Gid, nix::libc::EPERM)
    };
    let backend = runtime_only(command("/bin/sh", &["-c", "exit 0"]));
    let result = launch_result(&fx, &backend, Some(guest)).await;
    assert_start_failed(result, Path::new("/bin/sh"), step, errno);
}

/// `(ppid, pgrp, session)` from `/proc/<pid>/stat`.
fn stat_ids(pid: u32) -> (u32, u32, u32) {
    let stat = runner_core::procfs::ProcStat::of(pid).expect("the guest's stat");
    (stat.ppid, stat.pgrp, stat.session)
}

/// A perl guest (perl is part of every Debian-like base system) that
/// prints its own parent-death signal, which no `/proc` file shows, then
/// `ready`, and sleeps. Extra runner flags land in `@ARGV` after `--`.
fn pdeathsig_reporter() -> GuestCommand {
    let script = format!(
        "$| = 1; my $s = pack('i', -1); \
         syscall({nr}, {get}, $s) == 0 or die \"prctl: $!\"; \
         printf(\"pdeathsig=%d\\n\", unpack('i', $s)); print \"ready\\n\"; sleep 1000;",
        nr = nix::libc::SYS_prctl,
        get = nix::libc::PR_GET_PDEATHSIG,
    );
    command("/usr/bin/perl", &["-e", &script, "--"])
}

/// A workspace the guest uid owns, below a root other uids may traverse.
fn guest_fixture(guest: GuestUser) -> Fixture {
    let mut fx = Fixture::new();
    let root = fx.dir.path().join("open");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    fx.workspace = runner_core::Workspace::provision_for(
        &root,
        &fx.user,
        &MountOverrides::default(),
        Some(guest),
    )
    .unwrap();
    fx
}

#[tokio::test]
async fn the_child_starts_clean_as_its_proc_files_show() {
    let guest = GuestUser {
        uid: GUEST_UID,
        gid: GUEST_UID,
    };
    let run_as = is_root().then_some(guest);
    let fx = match run_as {
        Some(guest) => guest_fixture(guest),
        None => Fixture::new(),
    };
    // What a careless runner would pass on: a descriptor without
    // close-on-exec.
    let leaked = std::fs::File::open("/dev/null").unwrap();
    let leaked = std::os::fd::OwnedFd::from(leaked);
    nix::fcntl::fcntl(
        &leaked,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let backend = runtime_only(pdeathsig_reporter());
    let mut launched = launch_result(&fx, &backend, run_as).await.unwrap();
    let (mut out, _err) = take_outputs(&mut launched);
    assert_eq!(out.until("pdeathsig=", PROMPT).await, "9");
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("ready"));
    let GuestIdentity::Process { pid } = launched.identity else {
        panic!("{:?}", launched.identity);
    };
    let (ppid, pgrp, _) = stat_ids(pid);
    assert_eq!(ppid, std::process::id());
    assert_eq!(pgrp, pid, "the guest leads its own process group");
    assert_eq!(status_field(pid, "Umask"), "0077");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(fds(pid), [0, 1, 2], "the test holds {leaked:?} open");
    assert_eq!(status_field(pid, "SigBlk"), "0000000000000000");
    let ignored = u64::from_str_radix(&status_field(pid, "SigIgn"), 16).unwrap();
    assert_eq!(
        ignored & (1 << (nix::libc::SIGPIPE - 1)),
        0,
        "SIGPIPE is back to default"
    );
    let uid = run_as
        .map_or(nix::unistd::getuid().as_raw(), |g| g.uid)
        .to_string();
    let uids: Vec<String> = status_field(pid, "Uid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(uids, [uid.as_str(); 4]);
    if run_as.is_some() {
        assert_eq!(status_field(pid, "Groups"), "");
    }
    launched.control.stop(PROMPT).await.unwrap();
}

/// Launches from every worker thread at once, while another thread keeps
/// the allocator busy (a child that took an allocator lock would hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn launches_from_many_threads_at_once_each_start_their_own_program() {
    const GUESTS: usize = 32;
    let fx = Arc::new(Fixture::new());
    let backend = Arc::new(runtime_only(command(
        "/bin/sh",
        &["-c", "echo \"n=$N\"; exit 7"],
    )));
    let done = Arc::new(AtomicBool::new(false));
    let churn = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 512 + i]).collect();
                std::hint::black_box(v);
            }
        })
    };
    let launches = (0..GUESTS).map(|n| {
        let (fx, backend) = (fx.clone(), backend.clone());
        tokio::spawn(async move {
            let mut spec = fx.spec(
                GuestRole::Runtime,
                fx.envelope(GuestRole::Runtime, &backend),
            );
            spec.extra_env.insert("N".into(), n.to_string());
            let mut guest = tokio::time::timeout(PROMPT, backend.launch(spec))
                .await
                .expect("launch is bounded")
                .expect("launch succeeds");
            let (mut out, _err) = take_outputs(&mut guest);
            let line = out.next(PROMPT).await;
            let exit = tokio::time::timeout(PROMPT, guest.exit.wait())
                .await
                .unwrap();
            (n, line, exit.status)
        })
    });
    let results = futures::future::join_all(launches).await;
    done.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for result in results {
        let (n, line, status) = result.unwrap();
        assert_eq!(line, Some(format!("n={n}")));
        assert_eq!(status, ExitStatus::Code(7));
    }
}

/// In a runner with many descriptors, guests are created on the backend's
/// spawn thread, and the kernel fires their parent-death signal when that
/// thread ends: it must live on while a guest runs, even once the backend
/// itself is dropped.
#[tokio::test]
async fn a_guest_outlives_its_dropped_backend_until_stopped() {
    // A descriptor numbered 600: the table is then big enough that guests
    // are created on the spawn thread.
    let (read, _write) = nix::unistd::pipe().unwrap();
    let _high = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(600)).unwrap();
    let fx = Fixture::new();
    let backend = runtime_only(pdeathsig_reporter());
    let mut launched = launch_result(&fx, &backend, None).await.unwrap();
    let (mut out, _err) = take_outputs(&mut launched);
    assert_eq!(out.until("pdeathsig=", PROMPT).await, "9");
    drop(backend);
    // Another backend's whole launch and exit: time for a spawn thread
    // that wrongly ended with its backend to have killed the first guest.
    let other = runtime_only(command("/bin/sh", &["-c", "exit 0"]));
    let mut quick = launch_result(&fx, &other, None).await.unwrap();
    assert_eq!(quick.exit.wait().await.status, ExitStatus::Code(0));
    drop(other);
    assert_eq!(out.next(PROMPT).await.as_deref(), Some("ready"));
    let exit = launched.control.stop(PROMPT).await.expect("stop");
    assert_eq!(
        exit.status,
        ExitStatus::Signal(nix::libc::SIGTERM),
        "stopped by the runner, not killed by a parent-death signal"
    );
}
