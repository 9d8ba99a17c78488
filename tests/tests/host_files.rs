//! Host files a neighbour or a guest cannot subvert: workspace provisioning,
//! the session lock and the log sink against planted symlinks, FIFOs,
//! foreign owners and mount overrides, on real files.
//!
//! Runs as root (as CI does) and drops to other uids with `setpriv` to
//! plant things as the neighbour (uid 61001) or the guest (uid 61000).

use runner_core::config::LogLimits;
use runner_core::identity::GuestUser;
use runner_core::lock::{LOCK_NAME, LockError, SessionLock};
use runner_core::logs::{LogError, LogSink};
use runner_core::workspace::{
    AncestorProblem, FileKind, HostFileError, MountConflict, MountKey, MountOverrides,
    WorkspaceError,
};
use runner_core::{UserId, Workspace};
use runner_tests::sh_as_uid as as_uid;
use runner_types::{GuestRole, LogStream};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const NEIGHBOUR: u32 = 61001;
const GUEST: GuestUser = GuestUser {
    uid: 61000,
    gid: 61000,
};
const WAIT: Duration = Duration::from_secs(20);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests plant files as other uids and must run as root"
    );
}

fn user() -> UserId {
    UserId::new("alice").unwrap()
}

fn limits() -> LogLimits {
    LogLimits {
        max_file_bytes: 1 << 20,
        max_files: 2,
    }
}

/// A file the neighbour cannot write, remembered so the test can prove it
/// was not touched.
struct Victim {
    path: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
}

impl Victim {
    fn new(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let bytes = format!("victim {name} contents\n").into_bytes();
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        Self {
            path,
            bytes,
            mode: 0o644,
        }
    }

    fn assert_untouched(&self) {
        let meta = fs::symlink_metadata(&self.path).unwrap();
        assert_eq!(meta.mode() & 0o7777, self.mode, "{:?} mode", self.path);
        assert_eq!(fs::read(&self.path).unwrap(), self.bytes, "{:?}", self.path);
    }
}

/// `<tmp>/ws` mode 1777 (anyone may create entries, as in `/tmp`) and a
/// root-owned `<tmp>/victim` directory the neighbour can read but not write.
fn world_writable_root() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let ws = tmp.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::set_permissions(&ws, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = tmp.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o755)).unwrap();
    (tmp, ws, victim)
}

#[test]
fn neighbour_symlinked_user_dir_is_refused_and_its_target_untouched() {
    require_root();
    let (_tmp, ws, victim) = world_writable_root();
    let file = Victim::new(&victim, "data");
    let alice = ws.join("alice");
    assert!(as_uid(
        NEIGHBOUR,
        &format!("ln -s {} {}", victim.display(), alice.display())
    ));
    let err = Workspace::provision(&ws, &user(), &MountOverrides::default()).unwrap_err();
    assert!(
        matches!(&err, WorkspaceError::NotADirectory { path, found: FileKind::Symlink } if *path == alice),
        "{err:?}"
    );
    file.assert_untouched();
    assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        1,
        "nothing created in the target"
    );
}

#[test]
fn neighbour_premade_user_dir_with_symlinked_lock_and_logs_is_refused() {
    require_root();
    let (_tmp, ws, victim) = world_writable_root();
    let lock = Victim::new(&victim, "lock");
    let log = Victim::new(&victim, "log");
    let idx = Victim::new(&victim, "idx");
    let alice = ws.join("alice");
    let script = format!(
        "set -e; umask 077; mkdir -p {a}/run {a}/logs; \
         ln -s {lock} {a}/run/session.lock; \
         ln -s {log} {a}/logs/oxydra-vm.stdout.log; \
         ln -s {idx} {a}/logs/oxydra-vm.stdout.log.idx",
        a = alice.display(),
        lock = lock.path.display(),
        log = log.path.display(),
        idx = idx.path.display()
    );
    assert!(as_uid(NEIGHBOUR, &script));

    let err = Workspace::provision(&ws, &user(), &MountOverrides::default()).unwrap_err();
    assert!(
        matches!(&err, WorkspaceError::WrongOwner { path, found, .. } if *path == alice && found.uid == NEIGHBOUR),
        "{err:?}"
    );
    // Even a caller that skipped provisioning gets no further.
    let run = alice.join("run");
    assert!(!SessionLock::is_held(&run));
    let err = SessionLock::acquire(&run).unwrap_err();
    assert_lock_refused(&err, FileKind::Symlink);
    let err = LogSink::open(
        &alice.join("logs"),
        GuestRole::Runtime,
        LogStream::Stdout,
        limits(),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            LogError::Unsafe {
                source: HostFileError::Untrusted { uid: NEIGHBOUR, .. }
            }
        ),
        "{err:?}"
    );
    for v in [&lock, &log, &idx] {
        v.assert_untouched();
    }
}

#[test]
fn symlinks_inside_runner_owned_run_and_logs_are_never_followed() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let ws = Workspace::provision(tmp.path(), &user(), &MountOverrides::default()).unwrap();
    let lock = Victim::new(victim.path(), "lock");
    let log = Victim::new(victim.path(), "log");
    let idx = Victim::new(victim.path(), "idx");
    symlink(&lock.path, ws.run.join(LOCK_NAME)).unwrap();
    let log_path = ws.logs.join("oxydra-vm.stdout.log");
    symlink(&log.path, &log_path).unwrap();

    // The probe that `stop` and `status` use writes nothing.
    assert!(!SessionLock::is_held(&ws.run));
    let err = SessionLock::acquire(&ws.run).unwrap_err();
    assert_lock_refused(&err, FileKind::Symlink);
    let open = || LogSink::open(&ws.logs, GuestRole::Runtime, LogStream::Stdout, limits());
    let err = open().unwrap_err();
    assert_log_refused(&err, FileKind::Symlink);
    // A real log but a symlinked index.
    fs::remove_file(&log_path).unwrap();
    fs::write(&log_path, b"old\n").unwrap();
    symlink(&idx.path, ws.logs.join("oxydra-vm.stdout.log.idx")).unwrap();
    let err = open().unwrap_err();
    assert_log_refused(&err, FileKind::Symlink);
    for v in [&lock, &log, &idx] {
        v.assert_untouched();
    }
}

/// Asserts that taking or probing a lock refused its file for being a
/// `kind`.
fn assert_lock_refused(err: &LockError, kind: FileKind) {
    assert!(
        matches!(err, LockError::Open { source: HostFileError::WrongKind { found, .. } } if *found == kind),
        "{err:?}"
    );
}

/// Asserts that opening a log refused a file for being a `kind`.
fn assert_log_refused(err: &LogError, kind: FileKind) {
    assert!(
        matches!(err, LogError::Unsafe { source: HostFileError::WrongKind { found, .. } } if *found == kind),
        "{err:?}"
    );
}

/// Runs `f` on a thread and fails the test if it does not return in time
/// (a blocked open on a FIFO would never return).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(WAIT).expect("call blocked (FIFO opened?)")
}

#[test]
fn a_fifo_where_a_log_or_lock_belongs_is_a_prompt_error() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::provision(tmp.path(), &user(), &MountOverrides::default()).unwrap();
    let mkfifo =
        |p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let log_path = ws.logs.join("oxydra-vm.stdout.log");
    mkfifo(&log_path);
    let logs = ws.logs.clone();
    let err = bounded(move || {
        LogSink::open(&logs, GuestRole::Runtime, LogStream::Stdout, limits()).unwrap_err()
    });
    assert!(
        matches!(&err, LogError::Unsafe { source: HostFileError::WrongKind { found: FileKind::Fifo, path, .. } } if *path == log_path),
        "{err:?}"
    );
    // Its index.
    let idx_path = ws.logs.join("oxydra-vm.stderr.log.idx");
    mkfifo(&idx_path);
    let logs = ws.logs.clone();
    let err = bounded(move || {
        LogSink::open(&logs, GuestRole::Runtime, LogStream::Stderr, limits()).unwrap_err()
    });
    assert_log_refused(&err, FileKind::Fifo);
    // The lock, both taken and probed.
    mkfifo(&ws.run.join(LOCK_NAME));
    let run = ws.run.clone();
    let (err, held) = bounded(move || {
        (
            SessionLock::acquire(&run).unwrap_err(),
            SessionLock::is_held(&run),
        )
    });
    assert_lock_refused(&err, FileKind::Fifo);
    assert!(!held);
}

#[test]
fn a_guest_cannot_swap_shared_and_a_swapped_shared_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::provision_for(tmp.path(), &user(), &MountOverrides::default(), Some(GUEST))
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    fs::set_permissions(target.path(), fs::Permissions::from_mode(0o700)).unwrap();
    // The guest owns shared/ but not the user directory holding it.
    let swap = format!(
        "mv {s} {s}.old && ln -s {t} {s}",
        s = ws.shared.display(),
        t = target.path().display()
    );
    assert!(!as_uid(GUEST.uid, &swap), "the guest could rename shared/");
    assert!(ws.shared.is_dir() && !ws.shared.is_symlink());

    // Should it happen anyway (a guest running as the runner's own user):
    // the next start refuses and the target keeps its mode and stays empty.
    fs::remove_dir(&ws.shared).unwrap();
    symlink(target.path(), &ws.shared).unwrap();
    let err =
        Workspace::provision_for(tmp.path(), &user(), &MountOverrides::default(), Some(GUEST))
            .unwrap_err();
    assert!(
        matches!(&err, WorkspaceError::NotADirectory { found: FileKind::Symlink, path } if *path == ws.shared),
        "{err:?}"
    );
    let meta = fs::metadata(target.path()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), 0);
    assert_eq!(fs::read_dir(target.path()).unwrap().count(), 0);
}

#[test]
fn other_uids_cannot_read_shared_files() {
    require_root();
    // Guests as the runner's own user: everything is 0700.
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::provision(tmp.path(), &user(), &MountOverrides::default()).unwrap();
    let file = ws.shared.join("notes.txt");
    fs::write(&file, b"private").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!as_uid(NEIGHBOUR, &format!("cat {}", file.display())));
    assert!(!as_uid(
        NEIGHBOUR,
        &format!("ls {}", ws.user_root.display())
    ));

    // Guests under their own uid: the guest can work in shared/, nobody
    // else can read what it writes there, even world-readable files.
    let tmp = tempfile::tempdir().unwrap();
    let ws = Workspace::provision_for(tmp.path(), &user(), &MountOverrides::default(), Some(GUEST))
        .unwrap();
    let file = ws.shared.join("notes.txt");
    let write = format!("umask 022; echo private > {}", file.display());
    assert!(as_uid(GUEST.uid, &write), "the guest cannot write shared/");
    assert!(as_uid(GUEST.uid, &format!("cat {}", file.display())));
    assert!(!as_uid(NEIGHBOUR, &format!("cat {}", file.display())));
    assert!(!as_uid(
        NEIGHBOUR,
        &format!("ls {}", ws.user_root.display())
    ));
    // The guest enters its user directory but cannot list it or reach run/.
    assert!(!as_uid(
        GUEST.uid,
        &format!("ls {}", ws.user_root.display())
    ));
    assert!(!as_uid(GUEST.uid, &format!("ls {}", ws.run.display())));
}

#[test]
fn a_sticky_tmp_override_keeps_its_mode_and_owner() {
    require_root();
    let over = tempfile::tempdir().unwrap();
    fs::set_permissions(over.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    nix::unistd::chown(
        over.path(),
        Some(nix::unistd::Uid::from_raw(NEIGHBOUR)),
        None,
    )
    .unwrap();
    let mounts = MountOverrides {
        tmp: Some(over.path().to_path_buf()),
        ..MountOverrides::default()
    };
    for guest in [None, Some(GUEST)] {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::provision_for(tmp.path(), &user(), &mounts, guest).unwrap();
        assert_eq!(ws.tmp, over.path().canonicalize().unwrap());
        let meta = fs::metadata(over.path()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o1777);
        assert_eq!(meta.uid(), NEIGHBOUR);
        assert!(
            !tmp.path().join("alice/tmp").exists(),
            "default tmp/ created anyway"
        );
    }
}

#[test]
fn a_missing_override_is_created_private_and_bad_ones_are_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let vault = base.path().join("vault");
    let mounts = MountOverrides {
        vault: Some(vault.clone()),
        ..MountOverrides::default()
    };
    Workspace::provision_for(tmp.path(), &user(), &mounts, Some(GUEST)).unwrap();
    let meta = fs::symlink_metadata(&vault).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (GUEST.uid, 0o500));

    let root = tmp.path().canonicalize().unwrap();
    fs::create_dir_all(root.join("bob/run")).unwrap();
    let cases = [
        (
            MountKey::Shared,
            root.clone(),
            MountConflict::ContainsWorkspaceRoot,
        ),
        (
            MountKey::Tmp,
            root.join("bob/run"),
            MountConflict::InsidePrivateDirectory,
        ),
        (
            MountKey::Vault,
            root.join("alice/logs/x"),
            MountConflict::InsidePrivateDirectory,
        ),
        (
            MountKey::Tmp,
            root.join("alice"),
            MountConflict::IsUserDirectory,
        ),
    ];
    for (key, path, conflict) in cases {
        let mut mounts = MountOverrides::default();
        let slot = match key {
            MountKey::Shared => &mut mounts.shared,
            MountKey::Tmp => &mut mounts.tmp,
            MountKey::Vault => &mut mounts.vault,
        };
        *slot = Some(path.clone());
        let err = Workspace::provision_for(tmp.path(), &user(), &mounts, Some(GUEST)).unwrap_err();
        assert!(
            matches!(&err, WorkspaceError::MountForbidden { key: k, conflict: c, .. } if *k == key && *c == conflict),
            "{path:?}: {err:?}"
        );
    }
    // A symlink into run/ is resolved before the check.
    let sneaky = base.path().join("sneaky");
    symlink(root.join("alice/run"), &sneaky).unwrap();
    let mounts = MountOverrides {
        shared: Some(sneaky),
        ..MountOverrides::default()
    };
    let err = Workspace::provision_for(tmp.path(), &user(), &mounts, Some(GUEST)).unwrap_err();
    assert!(
        matches!(
            &err,
            WorkspaceError::MountForbidden {
                key: MountKey::Shared,
                conflict: MountConflict::InsidePrivateDirectory,
                ..
            }
        ),
        "{err:?}"
    );
    let file = base.path().join("file");
    fs::write(&file, b"").unwrap();
    let mounts = MountOverrides {
        shared: Some(file),
        ..MountOverrides::default()
    };
    let err = Workspace::provision_for(tmp.path(), &user(), &mounts, Some(GUEST)).unwrap_err();
    assert!(
        matches!(
            &err,
            WorkspaceError::MountNotADirectory {
                key: MountKey::Shared,
                found: FileKind::Regular,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_root_below_a_directory_another_uid_owns_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(NEIGHBOUR)), None).unwrap();
    let err =
        Workspace::provision(&theirs.join("ws"), &user(), &MountOverrides::default()).unwrap_err();
    assert!(
        matches!(&err, WorkspaceError::UnsafeAncestor { path, problem: AncestorProblem::Owner { uid: NEIGHBOUR }, .. } if *path == theirs),
        "{err:?}"
    );
    assert!(!theirs.join("ws").exists());
}

#[test]
fn lock_probe_on_a_symlinked_lock_writes_nothing() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    let ws = Workspace::provision(tmp.path(), &user(), &MountOverrides::default()).unwrap();
    // No lock file: the probe does not create one.
    assert!(!SessionLock::is_held(&ws.run));
    assert!(!ws.run.join(LOCK_NAME).exists());
    let target = Victim::new(victim.path(), "pidfile");
    let before = fs::metadata(&target.path).unwrap();
    symlink(&target.path, ws.run.join(LOCK_NAME)).unwrap();
    for _ in 0..3 {
        assert!(!SessionLock::is_held(&ws.run));
    }
    target.assert_untouched();
    let after = fs::metadata(&target.path).unwrap();
    assert_eq!(
        (after.mtime(), after.mtime_nsec(), after.len()),
        (before.mtime(), before.mtime_nsec(), before.len())
    );
    // A real lock held by a session is seen, and the probe leaves its pid.
    fs::remove_file(ws.run.join(LOCK_NAME)).unwrap();
    let held = SessionLock::acquire(&ws.run).unwrap();
    let pid = fs::read(ws.run.join(LOCK_NAME)).unwrap();
    assert!(SessionLock::is_held(&ws.run));
    assert_eq!(fs::read(ws.run.join(LOCK_NAME)).unwrap(), pid);
    drop(held);
    assert!(!SessionLock::is_held(&ws.run));
}
