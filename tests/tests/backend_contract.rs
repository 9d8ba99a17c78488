//! The backend contract (`runner_tests::contract`), run against every tier
//! and the fake: process (real processes), Docker (the real engine),
//! Firecracker (real VMs of the test kernel on /dev/kvm) and the fake.
//! Docker and KVM checks skip without an engine or KVM, and fail instead
//! with `CI` set.

use async_trait::async_trait;
use runner_core::UserId;
use runner_core::backend::docker::DockerTier;
use runner_core::backend::fake::{FakeBackend, FakeGuest};
use runner_core::backend::{ExitWatch, GuestIdentity, SandboxBackend};
use runner_tests::contract::{self, Act, Case, PRINT_LEN, PRINT_SEED, Subject, probe_output};
use runner_tests::docker::container_facts;
use runner_tests::docker::harness::Harness;
use runner_tests::process_alive;
use runner_types::reader::parse_cmdline;
use runner_types::{BootstrapEnvelope, ExitStatus, GuestRole, LogStream, SandboxTier};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------
// process tier
// ---------------------------------------------------------------------------

struct Process {
    fx: runner_tests::process::Fixture,
}

#[async_trait]
impl Subject for Process {
    async fn case(&self, act: Act) -> Case {
        use runner_tests::process::{demo, demo_at, runtime_only};
        let command = match act {
            Act::Hold => demo(&["--heartbeat-ms", "60000"]),
            Act::Print => demo_at(
                runner_tests::guest_binary("probe-guest"),
                &["bytes", &PRINT_SEED.to_string(), &PRINT_LEN.to_string()],
            ),
        };
        let backend = runtime_only(command);
        let envelope = self.fx.envelope(GuestRole::Runtime, &backend);
        Case {
            spec: self.fx.spec(GuestRole::Runtime, envelope),
            backend: Arc::new(backend),
        }
    }

    async fn running(&self, identity: &GuestIdentity) -> bool {
        process_alive(identity.pid().expect("a process has a pid"))
    }
}

fn process() -> Process {
    Process {
        fx: runner_tests::process::Fixture::new(),
    }
}

// ---------------------------------------------------------------------------
// container tier
// ---------------------------------------------------------------------------

struct Docker {
    h: Harness,
    user: UserId,
    ws: runner_core::Workspace,
}

#[async_trait]
impl Subject for Docker {
    async fn case(&self, act: Act) -> Case {
        let image = match act {
            Act::Hold => self.h.demo_image(&["--heartbeat-ms", "60000"]).await,
            Act::Print => {
                let (seed, len) = (PRINT_SEED.to_string(), PRINT_LEN.to_string());
                runner_tests::docker::guest_image(
                    &self.h.docker,
                    "probe-guest",
                    &["bytes", &seed, &len],
                )
                .await
            }
        };
        let backend = self.h.backend(self.h.config(DockerTier::Container, &image));
        let spec = runner_tests::docker::harness::spec(
            &backend,
            GuestRole::Runtime,
            &self.user,
            &self.ws,
            Default::default(),
        );
        Case {
            spec,
            backend: Arc::new(backend),
        }
    }

    async fn running(&self, identity: &GuestIdentity) -> bool {
        let name = identity.container_name().expect("a container has a name");
        container_facts(&self.h.docker, name)
            .await
            .is_some_and(|c| c.running)
    }
}

async fn docker() -> Option<Docker> {
    let h = Harness::new().await?;
    let (user, ws) = h.user("contract");
    Some(Docker { h, user, ws })
}

// ---------------------------------------------------------------------------
// micro_vm tier
// ---------------------------------------------------------------------------

/// The test kernel: `hang` reports its command line (with the envelope)
/// and halts; `exit` reports it and resets the VM (exit code 0).
struct MicroVm {
    hold: runner_tests::firecracker::Fixture,
    print: runner_tests::firecracker::Fixture,
}

#[async_trait]
impl Subject for MicroVm {
    async fn case(&self, act: Act) -> Case {
        let fx = match act {
            Act::Hold => &self.hold,
            Act::Print => &self.print,
        };
        let backend = fx.backend();
        backend
            .prepare_session(&fx.user, &fx.workspace)
            .await
            .expect("prepare session");
        Case {
            spec: fx.spec(GuestRole::Runtime, &backend),
            backend: Arc::new(backend),
        }
    }

    fn printed(&self, case: &Case) -> Vec<(LogStream, Vec<u8>)> {
        let cmdline = self
            .print
            .backend()
            .generate(&case.spec)
            .expect("config generates")
            .cmdline;
        let console = format!(
            "TESTKERNEL start\ncmdline={cmdline}\ncmdline_len={}\nTESTKERNEL exit\n",
            cmdline.len()
        );
        vec![(LogStream::Stdout, console.into_bytes())]
    }

    fn reported_envelope(&self, stdout: &[u8]) -> Option<BootstrapEnvelope> {
        let text = String::from_utf8_lossy(stdout);
        let (line, _) = text.split_once("cmdline=")?.1.split_once('\n')?;
        Some(
            parse_cmdline(line)
                .expect("the command line parses")
                .expect("an envelope on the command line"),
        )
    }

    async fn running(&self, identity: &GuestIdentity) -> bool {
        process_alive(identity.pid().expect("a VM has a pid"))
    }
}

fn micro_vm(test: &str) -> Option<MicroVm> {
    if !runner_tests::kvm_or_skip(test) {
        return None;
    }
    Some(MicroVm {
        hold: runner_tests::firecracker::Fixture::new("hang", "hang"),
        print: runner_tests::firecracker::Fixture::new("exit", "exit"),
    })
}

// ---------------------------------------------------------------------------
// the fake
// ---------------------------------------------------------------------------

/// The fake backend with a task playing each guest by its session id:
/// `hold` reports its envelope and waits; `print` writes the probe pattern
/// and exits 3. Either closes its streams once it has exited.
struct Fake {
    fx: runner_tests::process::Fixture,
    backend: FakeBackend,
    exits: Arc<Mutex<HashMap<u32, ExitWatch>>>,
}

#[async_trait]
impl Subject for Fake {
    async fn case(&self, act: Act) -> Case {
        let fx = &self.fx;
        let backend: Arc<dyn SandboxBackend> = Arc::new(self.backend.clone());
        let config = runner_tests::envelope::user_config(Default::default(), &[]);
        let envelope = runner_tests::envelope::envelope_for(
            &*backend,
            &fx.user,
            &fx.workspace,
            GuestRole::Runtime,
            &config,
        );
        let mut spec = fx.spec(GuestRole::Runtime, envelope);
        spec.session_id = format!("{act:?}");
        Case { backend, spec }
    }

    async fn running(&self, identity: &GuestIdentity) -> bool {
        let pid = identity.pid().expect("the fake reports a pid");
        let exits = self.exits.lock().unwrap_or_else(|p| p.into_inner());
        exits
            .get(&pid)
            .expect("a launched fake guest")
            .get()
            .is_none()
    }
}

async fn play(mut guest: FakeGuest) {
    let mut exit = guest.exit_watch();
    if guest.spec.session_id == format!("{:?}", Act::Print) {
        for (stream, bytes) in probe_output() {
            guest.write(stream, &bytes).await.expect("fake output");
        }
        guest.exit(ExitStatus::Code(3));
    } else {
        let json = String::from_utf8(guest.spec.envelope.to_json().unwrap()).unwrap();
        let line = format!("envelope={json}\n");
        guest
            .write(LogStream::Stdout, line.as_bytes())
            .await
            .expect("fake output");
    }
    exit.wait().await;
    guest.close_output();
}

fn fake() -> Fake {
    let (backend, mut launches) = FakeBackend::new(SandboxTier::Process);
    let backend = backend.with_sidecar(false);
    let exits = Arc::new(Mutex::new(HashMap::new()));
    let seen = exits.clone();
    tokio::spawn(async move {
        while let Some(guest) = launches.next(std::time::Duration::from_secs(3600)).await {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(guest.pid, guest.exit_watch());
            tokio::spawn(play(guest));
        }
    });
    Fake {
        fx: runner_tests::process::Fixture::new(),
        backend,
        exits,
    }
}

// ---------------------------------------------------------------------------
// every check against every subject
// ---------------------------------------------------------------------------

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        mod process_tier {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                contract::$check(&process()).await;
            })*
        }
        mod container_tier {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(subject) = docker().await else { return };
                contract::$check(&subject).await;
            })*
        }
        mod micro_vm_tier {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(subject) = micro_vm(stringify!($check)) else { return };
                contract::$check(&subject).await;
            })*
        }
        mod fake_backend {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                contract::$check(&fake()).await;
            })*
        }
    };
}

contract_tests!(
    stop_is_idempotent,
    cleanup_is_idempotent,
    exit_is_published_once,
    dropping_the_control_ends_the_guest,
    the_envelope_arrives,
    output_is_byte_exact,
);
