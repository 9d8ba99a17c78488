//! Shared fixtures for the Firecracker-backend integration tests: a temp
//! workspace with per-role templates that boot the test kernel in a chosen
//! mode, the envelopes the runner would send, and bounded readers over a
//! VM's serial console.

#![allow(dead_code)] // each test file uses a different subset

use runner_core::backend::firecracker::{
    FirecrackerBackend, FirecrackerBackendConfig, JailerSettings,
};
use runner_core::backend::{GuestOutput, LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{
    BootstrapEnvelope, GuestRole, LogStream, ResolvedMounts, ResourceLimits, RuntimePolicy,
    SandboxTier, StartupStatus,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Generous bound for anything a healthy VM does "promptly" (it boots in
/// tens of milliseconds; the machine is shared and noisy).
pub const PROMPT: Duration = Duration::from_secs(20);

/// A provisioned workspace plus a template per role.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub user: UserId,
    pub workspace: Workspace,
    pub runtime_template: PathBuf,
    pub sidecar_template: PathBuf,
}

impl Fixture {
    /// Templates booting the test kernel with `boot_args` extended by
    /// `testkernel.mode=<mode>`.
    pub fn new(runtime_mode: &str, sidecar_mode: &str) -> Self {
        Self::for_user(
            "alice",
            tempfile::tempdir().unwrap(),
            runtime_mode,
            sidecar_mode,
        )
    }

    /// [`Self::new`] for `user`, in `dir`.
    pub fn for_user(
        user: &str,
        dir: tempfile::TempDir,
        runtime_mode: &str,
        sidecar_mode: &str,
    ) -> Self {
        let user = UserId::new(user).unwrap();
        let workspace =
            Workspace::provision(dir.path(), &user, &MountOverrides::default()).unwrap();
        let write = |name: &str, mode: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                template_json(&format!("console=ttyS0 testkernel.mode={mode}")),
            )
            .unwrap();
            path
        };
        Self {
            runtime_template: write("runtime.json", runtime_mode),
            sidecar_template: write("sidecar.json", sidecar_mode),
            dir,
            user,
            workspace,
        }
    }

    /// A backend on the pinned binary, `/dev/kvm` and this fixture's
    /// templates, running Firecracker unjailed (as the runner's user; as
    /// root, with `allow_without_jailer`).
    pub fn backend(&self) -> FirecrackerBackend {
        FirecrackerBackend::new(FirecrackerBackendConfig {
            binary: runner_tests::firecracker_binary(),
            runtime_template: Some(self.runtime_template.clone()),
            sidecar_template: Some(self.sidecar_template.clone()),
            kvm_device: PathBuf::from("/dev/kvm"),
            jailer: JailerSettings {
                binary: self.dir.path().join("no-jailer"),
                chroot_base: None,
                allow_without_jailer: true,
                runner_is_root: nix::unistd::geteuid().is_root(),
            },
        })
    }

    /// [`Self::backend`] with the pinned jailer: as root, VMs run jailed.
    pub fn jailed_backend(&self) -> FirecrackerBackend {
        let mut config = self.backend().config().clone();
        config.jailer = JailerSettings {
            binary: jailer_binary(),
            chroot_base: None,
            allow_without_jailer: false,
            runner_is_root: nix::unistd::geteuid().is_root(),
        };
        FirecrackerBackend::new(config)
    }

    /// The kind of envelope the runner builds for a guest of `role`.
    pub fn envelope(&self, role: GuestRole, backend: &FirecrackerBackend) -> BootstrapEnvelope {
        let ws = &self.workspace;
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let runtime = role == GuestRole::Runtime;
        BootstrapEnvelope {
            user_id: self.user.to_string(),
            sandbox_tier: SandboxTier::MicroVm,
            workspace_root: s(&ws.user_root),
            sidecar_endpoint: runtime.then(|| backend.sidecar_endpoint(ws)),
            runtime_policy: Some(RuntimePolicy {
                mounts: ResolvedMounts {
                    shared: s(&ws.shared),
                    tmp: s(&ws.tmp),
                    vault: s(&ws.vault),
                },
                resources: ResourceLimits {
                    max_vcpus: Some(1),
                    max_memory_mib: Some(64),
                    max_processes: None,
                },
                credential_refs: if runtime {
                    BTreeMap::from([("openai".to_owned(), "vault:openai-key".to_owned())])
                } else {
                    BTreeMap::new()
                },
            }),
            startup_status: Some(StartupStatus {
                sandbox_tier: SandboxTier::MicroVm,
                sidecar_available: true,
                shell_available: true,
                browser_available: false,
                degraded_reasons: Vec::new(),
            }),
        }
    }

    /// A launch spec for `role` with [`Self::envelope`].
    pub fn spec(&self, role: GuestRole, backend: &FirecrackerBackend) -> LaunchSpec {
        LaunchSpec {
            run_as: None,
            role,
            user_id: self.user.clone(),
            session_id: "s1".into(),
            workspace: self.workspace.clone(),
            envelope: self.envelope(role, backend),
            extra_env: BTreeMap::new(),
            resources: ResourceLimits {
                max_vcpus: Some(1),
                max_memory_mib: Some(64),
                max_processes: None,
            },
        }
    }
}

pub use runner_tests::jailer_binary;

/// A template for the test kernel with these `boot_args`.
pub fn template_json(boot_args: &str) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": runner_tests::test_kernel(),
            "boot_args": boot_args,
        },
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    })
    .to_string()
}

/// Takes the stream `which` out of a launched guest.
pub fn take_output(guest: &mut LaunchedGuest, which: LogStream) -> Pin<Box<dyn AsyncRead + Send>> {
    let i = guest
        .outputs
        .iter()
        .position(|o| o.stream == which)
        .unwrap_or_else(|| panic!("no {which} output"));
    let GuestOutput { reader, .. } = guest.outputs.remove(i);
    reader.into_reader()
}

/// Reads `reader` to EOF, bounded by [`PROMPT`].
pub async fn read_to_end(mut reader: Pin<Box<dyn AsyncRead + Send>>) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(PROMPT, reader.read_to_end(&mut all))
        .await
        .expect("console did not reach EOF in time")
        .unwrap();
    all
}

/// Reads until `marker` has appeared, bounded by [`PROMPT`]; returns what
/// was read and the reader, for the caller to keep draining.
pub async fn read_until(
    mut reader: Pin<Box<dyn AsyncRead + Send>>,
    marker: &str,
) -> (Vec<u8>, Pin<Box<dyn AsyncRead + Send>>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(PROMPT, async {
        let mut chunk = [0u8; 4096];
        loop {
            if String::from_utf8_lossy(&seen).contains(marker) {
                return true;
            }
            match reader.read(&mut chunk).await.unwrap() {
                0 => return false,
                n => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "{marker:?} not seen; console so far: {:?}",
        String::from_utf8_lossy(&seen)
    );
    (seen, reader)
}

/// The `cmdline=` line the test kernel prints.
pub fn console_cmdline(console: &[u8]) -> String {
    let text = String::from_utf8_lossy(console);
    text.lines()
        .find_map(|l| l.strip_prefix("cmdline="))
        .unwrap_or_else(|| panic!("no cmdline= line in console output: {text:?}"))
        .to_owned()
}

/// The `cmdline_len=` value the test kernel prints.
pub fn console_cmdline_len(console: &[u8]) -> usize {
    let text = String::from_utf8_lossy(console);
    text.lines()
        .find_map(|l| l.strip_prefix("cmdline_len="))
        .unwrap_or_else(|| panic!("no cmdline_len= line in console output: {text:?}"))
        .trim()
        .parse()
        .unwrap()
}
