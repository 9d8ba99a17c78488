//! Loading valid config files: a full file with every field checked, the
//! defaults when tables are absent (the documented defaults), relative path
//! resolution, a raw-shape round trip, and the shipped example.

use runner_core::UserId;
use runner_core::config::{
    GuestCommand, LogLimits, RestartConfig, RunnerConfig, ShutdownTimings, load_runner_config,
    parse_runner_config,
};
use runner_types::config::{RestartPolicy, RunnerConfigFile};
use runner_types::{ResourceLimits, SandboxTier};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FULL: &str = r#"
config_version = "1"
workspace_root = "ws"
default_tier = "container"

[guest_images]
oxydra_vm = "registry.local/oxydra-vm:1.2"
shell_vm = "registry.local/shell-vm:1.2"
firecracker_oxydra_vm_config = "fc/oxydra.json"
firecracker_shell_vm_config = "/opt/fc/shell.json"

[users.alice]
config_path = "users/alice.toml"

[users.bob]
config_path = "/ABS/bob.toml"

[process]
runtime = { program = "bin/guest", args = ["--role", "runtime"], env = { A = "1" } }
sidecar = { program = "sidecar-guest" }

[logs]
max_file_bytes = 4096
max_files = 2

[shutdown]
grace_ms = 250
log_drain_ms = 75

[restart]
policy = "always"
max_restarts = 3
window_secs = 30
backoff_initial_ms = 10
backoff_max_ms = 20

[docker]
host = "unix:///run/d.sock"
network = "none"
user = "1000:1000"
pull = true
command = ["--x"]

[firecracker]
binary = "./bin/firecracker"
jailer = "./bin/jailer"
chroot_base = "jails"
allow_without_jailer = true
"#;

const ALICE: &str = r#"
[mounts]
shared = "data/shared"
tmp = "/scratch/alice"

[resources]
max_vcpus = 2
max_memory_mib = 512
max_processes = 64

[credential_refs]
openai = "vault:openai"

[behavior]
sandbox_tier = "micro_vm"
shell_enabled = false
browser_enabled = true
"#;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

/// Writes FULL (with `/ABS` pointing into the temp dir) and the user files.
fn full_setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let runner = root.join("etc/runner.toml");
    let bob = root.join("elsewhere/bob.toml");
    write(
        &runner,
        &FULL.replace("/ABS/bob.toml", bob.to_str().unwrap()),
    );
    write(&root.join("etc/users/alice.toml"), ALICE);
    write(&bob, "[mounts]\nvault = \"v\"\n");
    (dir, runner)
}

#[test]
fn full_file_is_loaded_field_by_field() {
    let (dir, path) = full_setup();
    let etc = dir.path().join("etc");
    let cfg = load_runner_config(&path).unwrap();

    assert_eq!(cfg.source.as_deref(), Some(path.as_path()));
    assert_eq!(cfg.workspace_root, etc.join("ws"));
    assert_eq!(cfg.default_tier, SandboxTier::Container);

    let images = &cfg.guest_images;
    assert_eq!(images.oxydra_vm, "registry.local/oxydra-vm:1.2");
    assert_eq!(images.shell_vm, "registry.local/shell-vm:1.2");
    assert_eq!(
        images.firecracker_oxydra_vm_config,
        Some(etc.join("fc/oxydra.json"))
    );
    assert_eq!(
        images.firecracker_shell_vm_config,
        Some(PathBuf::from("/opt/fc/shell.json"))
    );

    let process = cfg.process.as_ref().unwrap();
    assert_eq!(
        process.runtime,
        GuestCommand {
            program: etc.join("bin/guest"),
            args: vec!["--role".into(), "runtime".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
        }
    );
    // No '/': stays a bare name for PATH lookup.
    assert_eq!(
        process.sidecar.as_ref().unwrap().program,
        PathBuf::from("sidecar-guest")
    );

    assert_eq!(
        cfg.logs,
        LogLimits {
            max_file_bytes: 4096,
            max_files: 2
        }
    );
    assert_eq!(
        cfg.shutdown,
        ShutdownTimings {
            grace: Duration::from_millis(250),
            log_drain: Duration::from_millis(75)
        }
    );
    assert_eq!(
        cfg.restart,
        RestartConfig {
            policy: RestartPolicy::Always,
            max_restarts: 3,
            window: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
        }
    );
    assert_eq!(cfg.docker.host.as_deref(), Some("unix:///run/d.sock"));
    assert_eq!(cfg.docker.network.as_deref(), Some("none"));
    assert_eq!(cfg.docker.user.as_deref(), Some("1000:1000"));
    assert!(cfg.docker.pull);
    assert_eq!(cfg.docker.command, Some(vec!["--x".to_owned()]));
    assert_eq!(
        cfg.firecracker.binary.as_deref(),
        Some(etc.join("./bin/firecracker").to_str().unwrap())
    );
    assert_eq!(
        cfg.firecracker.jailer.as_deref(),
        Some(etc.join("./bin/jailer").to_str().unwrap())
    );
    assert_eq!(
        cfg.firecracker.chroot_base.as_deref(),
        Some(etc.join("jails").to_str().unwrap())
    );
    assert!(cfg.firecracker.allow_without_jailer);

    // alice: mounts relative to her own file's directory (etc/users/).
    let alice = cfg.user(&user("alice"));
    assert_eq!(alice.mounts.shared, Some(etc.join("users/data/shared")));
    assert_eq!(alice.mounts.tmp, Some(PathBuf::from("/scratch/alice")));
    assert_eq!(alice.mounts.vault, None);
    assert_eq!(
        alice.resources,
        ResourceLimits {
            max_vcpus: Some(2),
            max_memory_mib: Some(512),
            max_processes: Some(64)
        }
    );
    assert_eq!(
        alice.credential_refs,
        BTreeMap::from([("openai".into(), "vault:openai".into())])
    );
    assert_eq!(alice.sandbox_tier, Some(SandboxTier::MicroVm));
    assert!(!alice.shell_enabled);
    assert!(alice.browser_enabled);
    assert_eq!(cfg.tier_for(&user("alice")), SandboxTier::MicroVm);

    // bob: absolute config_path; his relative mount resolves next to it.
    let bob = cfg.user(&user("bob"));
    assert_eq!(bob.mounts.vault, Some(dir.path().join("elsewhere/v")));
    assert!(
        bob.shell_enabled,
        "shell is on unless the file says otherwise"
    );
    assert!(!bob.browser_enabled);
    assert_eq!(cfg.tier_for(&user("bob")), SandboxTier::Container);
    assert_eq!(cfg.users.len(), 2);
}

#[test]
fn raw_shape_round_trips_through_toml() {
    let (_dir, path) = full_setup();
    let text = fs::read_to_string(&path).unwrap();
    let raw: RunnerConfigFile = toml::from_str(&text).unwrap();
    let again = toml::to_string(&raw).unwrap();
    assert_eq!(toml::from_str::<RunnerConfigFile>(&again).unwrap(), raw);
    // Same validated config from the re-serialised text.
    assert_eq!(
        parse_runner_config(&again, &path).unwrap(),
        load_runner_config(&path).unwrap()
    );
}

#[test]
fn empty_file_gives_design_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runner.toml");
    write(&path, "");
    let cfg = load_runner_config(&path).unwrap();

    let mut expected = RunnerConfig::defaults(dir.path());
    expected.source = Some(path.clone());
    assert_eq!(cfg, expected);

    // The documented config shapes, spelled out.
    assert_eq!(cfg.workspace_root, dir.path().join("workspaces"));
    assert_eq!(cfg.default_tier, SandboxTier::Process);
    assert_eq!(cfg.process, None);
    assert!(cfg.users.is_empty());
    assert_eq!(cfg.guest_images.oxydra_vm, "oxydra-vm:latest");
    assert_eq!(cfg.guest_images.shell_vm, "shell-vm:latest");
    assert_eq!(cfg.guest_images.firecracker_oxydra_vm_config, None);
    assert_eq!(cfg.shutdown.grace, Duration::from_millis(5000));
    assert_eq!(cfg.shutdown.log_drain, Duration::from_millis(2000));
    assert_eq!(cfg.logs.max_file_bytes, 10_485_760);
    assert_eq!(cfg.logs.max_files, 5);
    assert_eq!(cfg.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(cfg.restart.max_restarts, 5);
    assert_eq!(cfg.restart.window, Duration::from_secs(60));
    assert_eq!(cfg.restart.backoff_initial, Duration::from_millis(100));
    assert_eq!(cfg.restart.backoff_max, Duration::from_millis(10_000));
}

#[test]
fn partial_tables_keep_defaults_for_missing_keys() {
    let cfg = parse_runner_config(
        "[logs]\nmax_files = 9\n[restart]\npolicy = \"never\"\n[shutdown]\ngrace_ms = 1\n",
        Path::new("/etc/runner/runner.toml"),
    )
    .unwrap();
    assert_eq!(cfg.logs.max_files, 9);
    assert_eq!(cfg.logs.max_file_bytes, 10_485_760);
    assert_eq!(cfg.restart.policy, RestartPolicy::Never);
    assert_eq!(cfg.restart.window, Duration::from_secs(60));
    assert_eq!(cfg.shutdown.grace, Duration::from_millis(1));
    assert_eq!(cfg.shutdown.log_drain, Duration::from_millis(2000));
    assert_eq!(cfg.workspace_root, Path::new("/etc/runner/workspaces"));
}

#[test]
fn unregistered_user_gets_defaults() {
    let cfg = parse_runner_config("default_tier = \"micro_vm\"", Path::new("/r.toml")).unwrap();
    let u = cfg.user(&user("carol"));
    assert!(u.shell_enabled);
    assert!(!u.browser_enabled);
    assert_eq!(u.resources, ResourceLimits::default());
    assert_eq!(cfg.tier_for(&user("carol")), SandboxTier::MicroVm);
    assert_eq!(cfg.workspace_root, Path::new("/workspaces"));
}

#[test]
fn relative_config_path_resolves_against_the_current_directory() {
    // `parse_runner_config` with a relative path still yields absolute paths.
    let cfg =
        parse_runner_config("workspace_root = \"ws\"", Path::new("conf/runner.toml")).unwrap();
    assert!(cfg.workspace_root.is_absolute());
    assert!(cfg.workspace_root.ends_with("conf/ws"));
    assert!(cfg.source.unwrap().is_absolute());
}

#[test]
fn shipped_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/runner.toml");
    let cfg = RunnerConfig::load(&path).unwrap();
    let examples = path.parent().unwrap();
    assert_eq!(cfg.workspace_root, examples.join("workspaces"));
    let process = cfg.process.as_ref().expect("example configures [process]");
    assert!(process.sidecar.is_some());
    assert_eq!(
        process.runtime.program,
        examples.join("../target/debug/demo-guest")
    );
    let alice = cfg.user(&user("alice"));
    assert_eq!(alice.resources.max_memory_mib, Some(1024));
    assert_eq!(alice.mounts.vault, Some(examples.join("users/vault/alice")));
    // The example states the defaults: it must agree with the built-ins.
    let defaults = RunnerConfig::defaults(examples);
    assert_eq!(cfg.logs, defaults.logs);
    assert_eq!(cfg.shutdown, defaults.shutdown);
    assert_eq!(cfg.restart, defaults.restart);
    assert_eq!(cfg.guest_images, defaults.guest_images);
    assert_eq!(cfg.default_tier, defaults.default_tier);
    assert_eq!(cfg.guest_identity, defaults.guest_identity);
    assert_eq!(
        alice.guest_identity,
        runner_core::identity::GuestIdentityChoice::Allocated
    );
}

#[test]
fn guest_identity_tables_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("runner.toml"),
        "[guest_identity]\nuid_base = 3000000\nuid_count = 10\n\
         [users.alice]\nconfig_path = \"alice.toml\"\n\
         [users.bob]\nconfig_path = \"bob.toml\"\n",
    );
    write(
        &root.join("alice.toml"),
        "[guest_identity]\nuid = 4000\ngid = 4001\n",
    );
    write(
        &root.join("bob.toml"),
        "[guest_identity]\nallow_root = true\n",
    );
    let cfg = RunnerConfig::load(root.join("runner.toml")).unwrap();
    use runner_core::identity::{GuestIdRange, GuestIdentityChoice, GuestUser};
    assert_eq!(
        cfg.guest_identity,
        GuestIdRange {
            base: 3_000_000,
            count: 10
        }
    );
    assert_eq!(
        cfg.user(&user("alice")).guest_identity,
        GuestIdentityChoice::Explicit(GuestUser {
            uid: 4000,
            gid: 4001
        })
    );
    assert_eq!(
        cfg.user(&user("bob")).guest_identity,
        GuestIdentityChoice::Root
    );
}
