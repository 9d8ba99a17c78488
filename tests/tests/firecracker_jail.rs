//! micro_vm tier as root: VMs run under the jailer as the guest's uid, and
//! every launch gets a private copy of each writable drive. Real
//! Firecracker and jailer on /dev/kvm.

use runner_core::backend::firecracker::{FirecrackerBackend, plan};
use runner_core::backend::{LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::identity::GuestUser;
use runner_tests::firecracker::*;
use runner_types::GuestRole;
use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A template booting the test kernel in `hang` mode with a writable root
/// drive at `disk` and a read-only data drive at `ro`.
fn template_with_drives(disk: &Path, ro: &Path) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": runner_tests::test_kernel(),
            "boot_args": "console=ttyS0 testkernel.mode=hang",
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": disk,
            "is_root_device": true,
            "is_read_only": false,
        }, {
            "drive_id": "data",
            "path_on_host": ro,
            "is_root_device": false,
            "is_read_only": true,
        }],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    })
    .to_string()
}

/// `(dev, ino)` of every file `pid` has open.
fn open_files(pid: u32) -> HashSet<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn id_of(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

/// The real, effective, saved and filesystem uids of `pid`.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

struct Running {
    guest: LaunchedGuest,
    pid: u32,
    copy: PathBuf,
    instance_dir: PathBuf,
    cgroups: Vec<PathBuf>,
    _drain: tokio::task::JoinHandle<Vec<u8>>,
}

async fn launch_hanging(
    fx: &Fixture,
    backend: &FirecrackerBackend,
    run_as: GuestUser,
) -> (LaunchSpec, Running) {
    let mut spec = fx.spec(GuestRole::Runtime, backend);
    spec.run_as = Some(run_as);
    backend
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    let mut guest = backend.launch(spec.clone()).await.unwrap();
    let pid = guest.identity.pid().unwrap();
    let drain = await_hang(&mut guest).await;
    let layout = plan::layout_of(backend.config(), &fx.workspace.run, GuestRole::Runtime);
    let running = Running {
        guest,
        pid,
        copy: layout.root.join("drive-0.img"),
        cgroups: layout.cgroup_dirs(),
        instance_dir: layout.instance_dir,
        _drain: drain,
    };
    (spec, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_users_vm_gets_a_private_drive_and_runs_as_its_guest_uid() {
    if !runner_tests::kvm_or_skip("each_users_vm_gets_a_private_drive") {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the jailer tests run as root"
    );
    let alice = Fixture::for_user("alice", tempfile::tempdir().unwrap(), "hang", "hang");
    let bob = Fixture::for_user("bob", tempfile::tempdir().unwrap(), "hang", "hang");
    // One template (and one writable root drive) for both users.
    let disk = alice.dir.path().join("rootfs.ext4");
    let mut pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    pattern.resize(8 << 20, 0);
    std::fs::write(&disk, &pattern).unwrap();
    // A read-only drive may be shared: world-readable, so it is hard-linked.
    let ro = alice.dir.path().join("data.img");
    std::fs::write(&ro, vec![7u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o644)).unwrap();
    for fx in [&alice, &bob] {
        std::fs::write(&fx.runtime_template, template_with_drives(&disk, &ro)).unwrap();
    }
    let template_id = id_of(&disk);

    let users = [
        GuestUser {
            uid: 61101,
            gid: 61101,
        },
        GuestUser {
            uid: 61102,
            gid: 61102,
        },
    ];
    let mut vms = Vec::new();
    for (fx, user) in [(&alice, users[0]), (&bob, users[1])] {
        let backend = fx.jailed_backend();
        let (_, vm) = launch_hanging(fx, &backend, user).await;
        vms.push(vm);
    }

    let mut copies = HashSet::new();
    for (vm, user) in vms.iter().zip(users) {
        assert!(
            uids(vm.pid).iter().all(|u| *u == user.uid),
            "firecracker {} runs as {:?}, want {}",
            vm.pid,
            uids(vm.pid),
            user.uid
        );
        let open = open_files(vm.pid);
        assert!(
            !open.contains(&template_id),
            "firecracker {} has the template drive open",
            vm.pid
        );
        let copy = id_of(&vm.copy);
        assert!(open.contains(&copy), "VM {} does not use its copy", vm.pid);
        let meta = std::fs::metadata(&vm.copy).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(copies.insert(copy), "two VMs share one drive copy");
        // cgroup v1 limits (this project's CI hosts have v1): guest RAM
        // (32 MiB) plus 64 MiB, and 64 tasks.
        assert!(
            Path::new("/sys/fs/cgroup/pids/tasks").exists(),
            "expected a cgroup v1 host"
        );
        let read = |dir: &PathBuf, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(
            read(&vm.cgroups[0], "memory.limit_in_bytes"),
            ((32 + 64) << 20).to_string()
        );
        assert_eq!(read(&vm.cgroups[1], "pids.max"), "64");
        assert!(read(&vm.cgroups[1], "cgroup.procs").contains(&vm.pid.to_string()));
        assert!(
            open.contains(&id_of(&ro)),
            "VM {} cannot use the shared read-only drive",
            vm.pid
        );
        assert_eq!(std::fs::read(&vm.copy).unwrap(), pattern);
    }

    for (vm, fx) in vms.iter().zip([&alice, &bob]) {
        vm.guest.control.stop(Duration::ZERO).await.unwrap();
        vm.guest.control.cleanup().await.unwrap();
        assert!(
            !vm.instance_dir.exists(),
            "{} left behind",
            vm.instance_dir.display()
        );
        // Firecracker's own log is kept for diagnosis, in logs/ (run/ is
        // left empty).
        let log = fx.workspace.logs.join("oxydra-vm-firecracker.log");
        assert!(log.is_file(), "{} not kept", log.display());
    }
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        pattern,
        "the template drive changed"
    );
    assert_eq!(id_of(&disk), template_id);
}

#[tokio::test]
async fn a_jailed_launch_needs_a_non_root_guest_user() {
    let fx = Fixture::new("exit", "exit");
    let backend = fx.jailed_backend();
    for run_as in [
        None,
        Some(GuestUser { uid: 0, gid: 61103 }),
        Some(GuestUser { uid: 61103, gid: 0 }),
    ] {
        let mut spec = fx.spec(GuestRole::Sidecar, &backend);
        spec.run_as = run_as;
        let err = backend.launch(spec).await.unwrap_err();
        assert!(
            matches!(
                &err,
                runner_core::backend::LaunchError::Firecracker(
                    runner_core::backend::firecracker::FirecrackerLaunchError::NoGuestUser {
                        role: GuestRole::Sidecar,
                        run_as: r,
                    }
                ) if *r == run_as
            ),
            "{err:?}"
        );
    }
    assert_eq!(std::fs::read_dir(&fx.workspace.run).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jailed_runtime_vm_gets_a_bridge_its_uid_can_reach_until_it_stops() {
    if !runner_tests::kvm_or_skip("the_jailed_runtime_vm_gets_a_bridge") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root());
    let fx = Fixture::new("hang", "hang");
    let backend = fx.jailed_backend();
    let user = GuestUser {
        uid: 61104,
        gid: 61104,
    };
    backend
        .prepare_session(&fx.user, &fx.workspace)
        .await
        .unwrap();
    let link = backend.sidecar_link(&fx.workspace).expect("a sidecar link");
    assert!(!*link.borrow(), "bridge up before any launch");

    let mut guests = Vec::new();
    for role in GuestRole::START_ORDER {
        let mut spec = fx.spec(role, &backend);
        spec.run_as = Some(user);
        let mut guest = backend.launch(spec).await.unwrap();
        let console = await_hang(&mut guest).await;
        guests.push((guest, console));
    }
    let rt_root = plan::layout_of(backend.config(), &fx.workspace.run, GuestRole::Runtime).root;
    let bridge = rt_root.join("vsock.sock_1024");
    let meta = std::fs::symlink_metadata(&bridge).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (61104, 61104, 0o600)
    );
    assert!(*link.borrow(), "bridge up but not reported");
    // The generated config points the runtime's vsock at the jail's socket.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rt_root.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["vsock"]["uds_path"], "/vsock.sock");

    // Stopping the runtime VM tears the bridge down before its exit shows.
    let (runtime, _) = guests.pop().unwrap();
    runtime.control.stop(Duration::ZERO).await.unwrap();
    assert!(
        !*link.borrow(),
        "bridge still reported after the runtime stopped"
    );
    assert!(!bridge.exists());
    runtime.control.cleanup().await.unwrap();
    for (g, _) in guests {
        g.control.stop(Duration::ZERO).await.unwrap();
        g.control.cleanup().await.unwrap();
    }
}
