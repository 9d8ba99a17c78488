//! Every way `runner.toml` or a per-user file can be refused, asserted on the
//! `ConfigError` variant, the file it names and the key.

use runner_core::config::{ConfigError, Location, load_runner_config, parse_runner_config};
use runner_core::user::UserIdError;
use std::fs;
use std::path::{Path, PathBuf};

/// A temp directory with `runner.toml` (and whatever else a test writes).
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn runner(&self, text: &str) -> Result<runner_core::config::RunnerConfig, ConfigError> {
        let path = self.write("runner.toml", text);
        load_runner_config(&path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `runner.toml` registering alice with `users/alice.toml` = `user_text`.
    fn with_user(&self, user_text: &str) -> Result<runner_core::config::RunnerConfig, ConfigError> {
        self.write("users/alice.toml", user_text);
        self.runner("[users.alice]\nconfig_path = \"users/alice.toml\"\n")
    }
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let d = Dir::new();
    let path = d.path("nope.toml");
    match load_runner_config(&path) {
        Err(ConfigError::Read { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn syntax_error_has_line_and_column() {
    let d = Dir::new();
    let err = d.runner("config_version = \"1\"\n[logs]\nmax_files = = 3\n");
    match err {
        Err(ConfigError::Syntax { path, at, .. }) => {
            assert_eq!(path, d.path("runner.toml"));
            let at = at.expect("syntax error without a position");
            assert_eq!(at.line, 3);
            assert!(at.column >= 12, "{at:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_name_file_key_and_position() {
    let d = Dir::new();
    let cases = [
        ("bogus = 1\n", "bogus", 1, 1),
        (
            "[logs]\nmax_files = 2\nmax_filez = 3\n",
            "logs.max_filez",
            3,
            1,
        ),
        ("[restart]\n  extra = true\n", "restart.extra", 2, 3),
        (
            "[process.runtime]\nprogram = \"x\"\nprogam = \"y\"\n",
            "process.runtime.progam",
            3,
            1,
        ),
        (
            "[guest_images]\noxydra = \"a\"\n",
            "guest_images.oxydra",
            2,
            1,
        ),
        (
            "[users.alice]\nconfig_path = \"a.toml\"\npath = \"b\"\n",
            "users.alice.path",
            3,
            1,
        ),
        (
            "shutdown = { grace_ms = 1, drain = 2 }\n",
            "shutdown.drain",
            1,
            28,
        ),
    ];
    for (text, want_key, line, column) in cases {
        match d.runner(text) {
            Err(ConfigError::UnknownKey { path, key, at, .. }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(key, want_key, "{text}");
                assert_eq!(at, Location { line, column }, "{text}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn wrong_types_name_the_key() {
    let d = Dir::new();
    let cases = [
        ("[logs]\nmax_files = \"five\"\n", Some("logs.max_files"), 2),
        ("[shutdown]\ngrace_ms = -1\n", Some("shutdown.grace_ms"), 2),
        (
            "[restart]\npolicy = \"sometimes\"\n",
            Some("restart.policy"),
            2,
        ),
        ("default_tier = \"vm\"\n", Some("default_tier"), 1),
        ("workspace_root = 3\n", Some("workspace_root"), 1),
        (
            "[process.runtime]\nprogram = \"x\"\nargs = [1]\n",
            Some("process.runtime.args[0]"),
            3,
        ),
        // A table missing its required key is blamed on the table.
        (
            "[process]\n[process.sidecar]\nprogram = \"x\"\n",
            Some("process"),
            1,
        ),
    ];
    for (text, want_key, line) in cases {
        match d.runner(text) {
            Err(ConfigError::WrongType { path, key, at, .. }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(key.as_deref(), want_key, "{text}");
                assert_eq!(at.map(|a| a.line), Some(line), "{text}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn empty_image_refs_are_refused() {
    let d = Dir::new();
    for (text, want) in [
        (
            "[guest_images]\noxydra_vm = \"\"\n",
            "guest_images.oxydra_vm",
        ),
        (
            "[guest_images]\nshell_vm = \"  \"\n",
            "guest_images.shell_vm",
        ),
    ] {
        match d.runner(text) {
            Err(ConfigError::EmptyImage { path, key }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(key, want);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn empty_programs_are_refused() {
    let d = Dir::new();
    for (text, want) in [
        (
            "[process.runtime]\nprogram = \"\"\n",
            "process.runtime.program",
        ),
        (
            "[process]\nruntime = { program = \"g\" }\nsidecar = { program = \"\" }\n",
            "process.sidecar.program",
        ),
        ("[firecracker]\nbinary = \"\"\n", "firecracker.binary"),
    ] {
        match d.runner(text) {
            Err(ConfigError::EmptyProgram { key, .. }) => assert_eq!(key, want),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn invalid_env_names_are_refused() {
    let d = Dir::new();
    let text = "[process.runtime]\nprogram = \"g\"\nenv = { \"A=B\" = \"1\" }\n";
    match d.runner(text) {
        Err(ConfigError::InvalidEnvName { key, name, .. }) => {
            assert_eq!(key, "process.runtime.env");
            assert_eq!(name, "A=B");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_paths_are_refused() {
    let d = Dir::new();
    for (text, want) in [
        ("workspace_root = \"\"\n", "workspace_root"),
        ("[users.bob]\nconfig_path = \"\"\n", "users.bob.config_path"),
        (
            "[guest_images]\nfirecracker_shell_vm_config = \"\"\n",
            "guest_images.firecracker_shell_vm_config",
        ),
    ] {
        match d.runner(text) {
            Err(ConfigError::EmptyPath { path, key }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(key, want);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn zero_limits_are_refused() {
    let d = Dir::new();
    for (text, want) in [
        ("[logs]\nmax_file_bytes = 0\n", "logs.max_file_bytes"),
        ("[logs]\nmax_files = 0\n", "logs.max_files"),
        ("[restart]\nwindow_secs = 0\n", "restart.window_secs"),
    ] {
        match d.runner(text) {
            Err(ConfigError::Zero { path, key }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(key, want);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn backoff_initial_above_max_is_refused() {
    let d = Dir::new();
    let err = d.runner("[restart]\nbackoff_initial_ms = 500\nbackoff_max_ms = 100\n");
    assert!(
        matches!(
            err,
            Err(ConfigError::BackoffOrder {
                initial_ms: 500,
                max_ms: 100,
                ..
            })
        ),
        "{err:?}"
    );
    // Equal is fine.
    d.runner("[restart]\nbackoff_initial_ms = 100\nbackoff_max_ms = 100\n")
        .unwrap();
}

#[test]
fn invalid_user_ids_are_refused() {
    let d = Dir::new();
    for (id, invalid) in [("\"../etc\"", true), ("\"\"", false), ("\"a b\"", true)] {
        let text = format!("[users.{id}]\nconfig_path = \"u.toml\"\n");
        match d.runner(&text) {
            Err(ConfigError::InvalidUserId { path, source, .. }) => {
                assert_eq!(path, d.path("runner.toml"));
                if invalid {
                    assert!(matches!(source, UserIdError::Invalid { .. }), "{id}");
                } else {
                    assert_eq!(source, UserIdError::Empty);
                }
            }
            other => panic!("{id}: {other:?}"),
        }
    }
}

#[test]
fn user_file_missing_names_that_file() {
    let d = Dir::new();
    let err = d.runner("[users.alice]\nconfig_path = \"users/alice.toml\"\n");
    match err {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, d.path("users/alice.toml")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn user_file_broken_names_that_file() {
    let d = Dir::new();
    match d.with_user("[resources\n") {
        Err(ConfigError::Syntax { path, at, .. }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(at.map(|a| a.line), Some(1));
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[resources]\nmax_cpus = 2\n") {
        Err(ConfigError::UnknownKey { path, key, at, .. }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(key, "resources.max_cpus");
            assert_eq!(at.line, 2);
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[behavior]\nsandbox_tier = \"vm\"\n") {
        Err(ConfigError::WrongType { path, key, .. }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(key.as_deref(), Some("behavior.sandbox_tier"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zero_resource_limits_name_the_user_file_and_key() {
    let d = Dir::new();
    for (text, want) in [
        (
            "[resources]\nmax_memory_mib = 0\n",
            "resources.max_memory_mib",
        ),
        ("[resources]\nmax_vcpus = 0\n", "resources.max_vcpus"),
        (
            "[resources]\nmax_processes = 0\n",
            "resources.max_processes",
        ),
    ] {
        match d.with_user(text) {
            Err(ConfigError::Zero { path, key }) => {
                assert_eq!(path, d.path("users/alice.toml"));
                assert_eq!(key, want);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn empty_credential_refs_are_refused() {
    let d = Dir::new();
    match d.with_user("[credential_refs]\n\"\" = \"vault:x\"\n") {
        Err(ConfigError::EmptyCredentialName { path }) => {
            assert_eq!(path, d.path("users/alice.toml"))
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[credential_refs]\nopenai = \"\"\n") {
        Err(ConfigError::EmptyCredentialRef { path, name }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(name, "openai");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_mount_paths_name_the_user_file() {
    let d = Dir::new();
    match d.with_user("[mounts]\nvault = \"\"\n") {
        Err(ConfigError::EmptyPath { path, key }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(key, "mounts.vault");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_report_their_file() {
    let d = Dir::new();
    let err = d
        .with_user("[resources]\nmax_memory_mib = 0\n")
        .unwrap_err();
    assert_eq!(err.path(), d.path("users/alice.toml"));
    let err = parse_runner_config("x = 1", Path::new("/etc/runner/r.toml")).unwrap_err();
    assert_eq!(err.path(), Path::new("/etc/runner/r.toml"));
}

#[test]
fn a_chroot_base_inside_the_workspace_root_is_refused() {
    let d = Dir::new();
    for chroot in ["ws/alice/shared/jails", "ws", "./ws/../ws/x"] {
        let text = format!("workspace_root = \"ws\"\n[firecracker]\nchroot_base = \"{chroot}\"\n");
        match d.runner(&text) {
            Err(ConfigError::ChrootBaseInWorkspace {
                path,
                chroot_base,
                workspace_root,
            }) => {
                assert_eq!(path, d.path("runner.toml"));
                assert_eq!(chroot_base, d.path(chroot));
                assert_eq!(workspace_root, d.path("ws"));
            }
            other => panic!("{chroot}: {other:?}"),
        }
    }
    let outside = "workspace_root = \"ws\"\n[firecracker]\nchroot_base = \"jails\"\n";
    let cfg = d.runner(outside).unwrap();
    assert_eq!(
        cfg.firecracker.chroot_base.as_deref(),
        Some(d.path("jails").to_str().unwrap())
    );
    let empty = "[firecracker]\nchroot_base = \"\"\n";
    assert!(matches!(
        d.runner(empty),
        Err(ConfigError::EmptyPath { key, .. }) if key == "firecracker.chroot_base"
    ));
}

#[test]
fn guest_identity_errors_name_the_file_and_key() {
    let d = Dir::new();
    match d.with_user("[guest_identity]\nuid = 0\n") {
        Err(ConfigError::GuestIdRoot { path, key }) => {
            assert_eq!(path, d.path("users/alice.toml"));
            assert_eq!(key, "guest_identity.uid");
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[guest_identity]\nallow_root = true\nuid = 5\n") {
        Err(ConfigError::GuestIdentityKeys { path, .. }) => {
            assert_eq!(path, d.path("users/alice.toml"))
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[guest_identity]\nuid = -1\n") {
        Err(ConfigError::WrongType { key, .. }) => {
            assert_eq!(key.as_deref(), Some("guest_identity.uid"))
        }
        other => panic!("{other:?}"),
    }
    match d.with_user("[guest_identity]\nname = \"x\"\n") {
        Err(ConfigError::UnknownKey { key, .. }) => assert_eq!(key, "guest_identity.name"),
        other => panic!("{other:?}"),
    }
    match d.runner("[guest_identity]\nuid_base = 2147483000\nuid_count = 1000\n") {
        Err(ConfigError::GuestIdRange { path, .. }) => assert_eq!(path, d.path("runner.toml")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_users_with_one_explicit_uid_are_refused() {
    let d = Dir::new();
    d.write("users/alice.toml", "[guest_identity]\nuid = 5000\n");
    d.write("users/bob.toml", "[guest_identity]\nuid = 5000\n");
    let err = d
        .runner(
            "[users.alice]\nconfig_path = \"users/alice.toml\"\n\
             [users.bob]\nconfig_path = \"users/bob.toml\"\n",
        )
        .unwrap_err();
    match err {
        ConfigError::SharedGuestUid {
            path,
            uid,
            first,
            second,
        } => {
            assert_eq!(path, d.path("runner.toml"));
            assert_eq!(
                (uid, first.as_str(), second.as_str()),
                (5000, "alice", "bob")
            );
        }
        other => panic!("{other:?}"),
    }
}
