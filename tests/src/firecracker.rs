//! Shared fixtures for the Firecracker-backend integration tests: a temp
//! workspace with per-role templates that boot the test kernel in a chosen
//! mode, the envelopes the runner would send, and bounded readers over a
//! VM's serial console.

use crate::envelope::{envelope_for, launch_spec, user_config};
pub use crate::jailer_binary;
use runner_core::backend::firecracker::{
    FirecrackerBackend, FirecrackerBackendConfig, FirecrackerLaunchError, JailerSettings,
};
use runner_core::backend::{GuestOutput, LaunchError, LaunchSpec, LaunchedGuest, SandboxBackend};
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::{BootstrapEnvelope, GuestRole, LogStream, ResourceLimits};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Generous bound for anything a healthy VM does "promptly" (it boots in
/// tens of milliseconds; the machine is shared and noisy).
pub const PROMPT: Duration = Duration::from_secs(20);

/// A provisioned workspace plus a template per role.
pub struct Fixture {
    /// Holds the workspace and the templates.
    pub dir: tempfile::TempDir,
    /// The user.
    pub user: UserId,
    /// Its provisioned workspace.
    pub workspace: Workspace,
    /// The runtime VM's template.
    pub runtime_template: PathBuf,
    /// The sidecar VM's template.
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
            binary: crate::firecracker_binary(),
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

    /// The envelope the runner builds for a guest of `role` (1 vCPU,
    /// 64 MiB, one credential).
    pub fn envelope(&self, role: GuestRole, backend: &FirecrackerBackend) -> BootstrapEnvelope {
        let config = user_config(vm_limits(), &[("openai", "vault:openai-key")]);
        envelope_for(backend, &self.user, &self.workspace, role, &config)
    }

    /// The error `backend`'s session pre-flight refuses this fixture with.
    ///
    /// # Panics
    ///
    /// When the pre-flight passes or fails with another tier's error.
    pub async fn preflight_error(&self, backend: &FirecrackerBackend) -> FirecrackerLaunchError {
        let err = backend
            .prepare_session(&self.user, &self.workspace)
            .await
            .expect_err("the pre-flight refuses");
        firecracker_error(err)
    }

    /// The error launching `role` on `backend` fails with.
    ///
    /// # Panics
    ///
    /// When the launch succeeds or fails with another tier's error.
    pub async fn launch_error(
        &self,
        backend: &FirecrackerBackend,
        role: GuestRole,
    ) -> FirecrackerLaunchError {
        let err = backend
            .launch(self.spec(role, backend))
            .await
            .expect_err("the launch fails");
        firecracker_error(err)
    }

    /// A launch spec for `role` with [`Self::envelope`].
    pub fn spec(&self, role: GuestRole, backend: &FirecrackerBackend) -> LaunchSpec {
        let envelope = self.envelope(role, backend);
        launch_spec(role, &self.user, &self.workspace, envelope, vm_limits())
    }
}

/// The micro_vm tier's own error inside `err`.
///
/// # Panics
///
/// When `err` is another tier's.
pub fn firecracker_error(err: LaunchError) -> FirecrackerLaunchError {
    match err {
        LaunchError::Firecracker(e) => e,
        other => panic!("not a firecracker error: {other:?}"),
    }
}

/// The limits the fixture's VMs get: 1 vCPU, 64 MiB.
pub fn vm_limits() -> ResourceLimits {
    ResourceLimits {
        max_vcpus: Some(1),
        max_memory_mib: Some(64),
        max_processes: None,
    }
}

/// A template for the test kernel with these `boot_args`.
pub fn template_json(boot_args: &str) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": crate::test_kernel(),
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

/// Waits (bounded) until a launched guest's console says `TESTKERNEL hang`,
/// draining its stderr on a task meanwhile; the task that then drains the
/// console to EOF (it yields the rest of the console).
pub async fn await_hang(guest: &mut LaunchedGuest) -> tokio::task::JoinHandle<Vec<u8>> {
    let _stderr = tokio::spawn(read_to_end(take_output(guest, LogStream::Stderr)));
    let (_, console) = read_until(take_output(guest, LogStream::Stdout), "TESTKERNEL hang\n").await;
    tokio::spawn(read_to_end(console))
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
    console_value(console, "cmdline=")
}

/// The `cmdline_len=` value the test kernel prints.
pub fn console_cmdline_len(console: &[u8]) -> usize {
    console_value(console, "cmdline_len=")
        .trim()
        .parse()
        .unwrap()
}

/// The rest of the first console line starting with `key`.
fn console_value(console: &[u8], key: &str) -> String {
    let text = String::from_utf8_lossy(console);
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in console output: {text:?}"))
        .to_owned()
}
