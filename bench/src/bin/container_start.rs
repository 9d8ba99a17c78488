//! Container session start: both guests (sidecar, then runtime, as a session
//! starts them) launched and both envelopes read — the `envelope=` line seen
//! on each container's output — through the Docker backend, versus
//!
//! - raw bollard: create + start of the same two containers with the same
//!   options (the backend's own `ContainerPlan`), then the `logs` follow
//!   stream until the same line; the envelope files are written outside the
//!   timer;
//! - the CLI: `docker run -d` with the same options for both, then
//!   `docker logs -f` on each until the same line.
//!
//! Ours includes everything a launch does (encode and write the envelope
//! file, create, attach, start, start the exit watcher). 15 rounds after a
//! warm-up, interleaved (rotating which variant goes first); medians
//! reported. Needs a Docker engine (`bash .ci/dockerd.sh start`, export
//! DOCKER_HOST); the guest images are built like the tests build them.

use bollard::Docker;
use bollard::query_parameters::{LogsOptions, RemoveContainerOptions};
use futures::StreamExt;
use runner_bench::{bench_spec, median};
use runner_core::backend::docker::create::ContainerPlan;
use runner_core::backend::docker::{DockerBackend, DockerBackendConfig, DockerTier};
use runner_core::backend::{LaunchSpec, SandboxBackend};
use runner_core::bootstrap::{EnvelopeParams, build_envelope};
use runner_core::config::UserConfig;
use runner_core::workspace::MountOverrides;
use runner_core::{UserId, Workspace};
use runner_types::GuestRole;
use runner_types::config::DockerSection;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::time::timeout;

const ROUNDS: usize = 15;
const BOUND: Duration = Duration::from_secs(30);
const LINE: &[u8] = b"envelope=";

struct Setup {
    host: String,
    docker: Docker,
    backend: DockerBackend,
    workspace: Workspace,
    specs: Vec<LaunchSpec>,
}

async fn setup(dir: &Path) -> Option<Setup> {
    let host = runner_tests::docker::docker_host()?;
    let docker = runner_tests::docker::connect(&host).await;
    let runtime = runner_tests::docker::guest_image(&docker, "demo-guest", &[]).await;
    let sidecar =
        runner_tests::docker::guest_image(&docker, "demo-guest", &["--role", "sidecar"]).await;
    let backend = DockerBackend::new(DockerBackendConfig {
        tier: DockerTier::Container,
        instance_id: runner_tests::docker::unique_id("bench"),
        docker: DockerSection::default(),
        docker_host_env: Some(host.clone()),
        runtime_image: runtime,
        sidecar_image: Some(sidecar),
        runner_user: format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid()),
        env: BTreeMap::new(),
    })
    .expect("backend");
    let user = UserId::new(runner_tests::docker::unique_id("bench")).expect("user id");
    let workspace =
        Workspace::provision(dir, &user, &MountOverrides::default()).expect("workspace");
    backend
        .prepare_session(&user, &workspace)
        .await
        .expect("engine reachable");
    let user_config = UserConfig {
        shell_enabled: true,
        ..UserConfig::default()
    };
    let specs = GuestRole::START_ORDER
        .iter()
        .map(|&role| {
            let envelope = build_envelope(EnvelopeParams {
                user: &user,
                tier: backend.tier(),
                role,
                workspace: &workspace,
                user_config: &user_config,
                sidecar_endpoint: Some(backend.sidecar_endpoint(&workspace)),
                sidecar_running: true,
                degraded_reasons: Vec::new(),
            });
            bench_spec(role, &user, &workspace, envelope)
        })
        .collect();
    Some(Setup {
        host,
        docker,
        backend,
        workspace,
        specs,
    })
}

/// Reads `r` until a line starting with [`LINE`] has been seen, then keeps
/// draining it in the background.
async fn until_line(r: impl AsyncRead + Send + Unpin + 'static) {
    let mut lines = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = lines.read_until(b'\n', &mut line).await.expect("read");
        assert!(n > 0, "stream ended before the envelope line");
        if line.starts_with(LINE) {
            break;
        }
    }
    tokio::spawn(async move {
        let mut sink = Vec::new();
        if let Err(e) = lines.read_to_end(&mut sink).await {
            eprintln!("draining: {e}");
        }
    });
}

/// Plans of both containers (files at the backend's own paths).
fn plans(s: &Setup) -> Vec<ContainerPlan> {
    s.specs
        .iter()
        .map(|spec| {
            let file = s
                .workspace
                .run
                .join(format!("{}.bootstrap.json", spec.role.label()));
            s.backend.plan_for(spec, &file).expect("plan")
        })
        .collect()
}

/// Writes both envelope files (untimed for the baselines).
fn write_envelopes(s: &Setup) {
    for spec in &s.specs {
        let file = s
            .workspace
            .run
            .join(format!("{}.bootstrap.json", spec.role.label()));
        if let Err(e) = std::fs::remove_file(&file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            panic!("remove {}: {e}", file.display());
        }
        std::fs::write(&file, spec.envelope.to_json().expect("envelope")).expect("write");
    }
}

async fn remove_all(s: &Setup, plans: &[ContainerPlan]) {
    for p in plans {
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match s.docker.remove_container(&p.name, Some(opts)).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => panic!("remove {}: {e}", p.name),
        }
    }
}

/// Waits (bounded) until every task has seen its envelope line; the time
/// since `start` then.
async fn until_all(waits: Vec<tokio::task::JoinHandle<()>>, start: Instant) -> Duration {
    for w in waits {
        timeout(BOUND, w)
            .await
            .expect("envelope line")
            .expect("task");
    }
    start.elapsed()
}

async fn ours(s: &Setup) -> Duration {
    let start = Instant::now();
    let mut waits = Vec::new();
    let mut guests = Vec::new();
    for spec in &s.specs {
        let mut g = s.backend.launch(spec.clone()).await.expect("launch");
        let out = g.outputs.remove(0);
        waits.push(tokio::spawn(until_line(out.reader)));
        guests.push(g);
    }
    let took = until_all(waits, start).await;
    for g in guests {
        g.control.cleanup().await.expect("cleanup");
    }
    took
}

async fn raw(s: &Setup, plans: &[ContainerPlan]) -> Duration {
    write_envelopes(s);
    let start = Instant::now();
    let mut waits = Vec::new();
    for p in plans {
        s.docker
            .create_container(Some(p.create_options()), p.create_body())
            .await
            .expect("create");
        s.docker
            .start_container(&p.name, None)
            .await
            .expect("start");
        let opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let stream = s.docker.logs(&p.name, Some(opts));
        waits.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut pending = Vec::new();
            while let Some(frame) = stream.next().await {
                if let bollard::container::LogOutput::StdOut { message } = frame.expect("logs") {
                    pending.extend_from_slice(&message);
                    if pending.split(|&b| b == b'\n').any(|l| l.starts_with(LINE)) {
                        return;
                    }
                }
            }
            panic!("logs ended before the envelope line");
        }));
    }
    let took = until_all(waits, start).await;
    remove_all(s, plans).await;
    took
}

/// `docker run -d` arguments equivalent to `p`.
fn cli_args(p: &ContainerPlan) -> Vec<String> {
    let mut a: Vec<String> = ["run", "-d", "--name", &p.name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (k, v) in &p.labels {
        a.extend(["--label".into(), format!("{k}={v}")]);
    }
    for m in &p.mounts {
        let ro = if m.read_only { ",readonly" } else { "" };
        a.extend([
            "--mount".into(),
            format!(
                "type=bind,src={},dst={}{ro}",
                m.source.display(),
                m.target.display()
            ),
        ]);
    }
    for e in &p.env {
        a.extend(["--env".into(), e.clone()]);
    }
    a.extend(
        [
            "--user",
            &p.user,
            "--network",
            &p.network,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
            "--init",
            "--restart",
            "no",
            "--log-driver",
            "local",
            "--log-opt",
            "max-size=1m",
            "--log-opt",
            "max-file=1",
            "--log-opt",
            "compress=false",
            &p.image,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend(p.cmd.iter().cloned());
    a
}

async fn cli(s: &Setup, plans: &[ContainerPlan]) -> Duration {
    write_envelopes(s);
    let start = Instant::now();
    let mut waits = Vec::new();
    for p in plans {
        let status = tokio::process::Command::new("docker")
            .arg("-H")
            .arg(&s.host)
            .args(cli_args(p))
            .stdout(Stdio::null())
            .status()
            .await
            .expect("docker run");
        assert!(status.success(), "docker run failed: {status}");
        let mut follow = tokio::process::Command::new("docker")
            .arg("-H")
            .arg(&s.host)
            .args(["logs", "-f", &p.name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("docker logs");
        let out = follow.stdout.take().expect("stdout");
        waits.push(tokio::spawn(async move {
            until_line(out).await;
            drop(follow);
        }));
    }
    let took = until_all(waits, start).await;
    remove_all(s, plans).await;
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(s) = setup(dir.path()).await else {
        return;
    };
    let plans = plans(&s);
    // Warm-up (image layers, caches), not counted.
    ours(&s).await;
    raw(&s, &plans).await;
    cli(&s, &plans).await;

    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => a.push(ours(&s).await),
                1 => b.push(raw(&s, &plans).await),
                _ => c.push(cli(&s, &plans).await),
            }
        }
    }
    let (a, b, c) = (median(&mut a), median(&mut b), median(&mut c));
    println!(
        "container session start (2 guests, until both envelope= lines), {ROUNDS} rounds, medians:"
    );
    println!("  backend      {:8.1} ms", ms(a));
    println!(
        "  raw bollard  {:8.1} ms   (backend / raw = {:.2})",
        ms(b),
        ms(a) / ms(b)
    );
    println!(
        "  docker CLI   {:8.1} ms   (backend / CLI = {:.2})",
        ms(c),
        ms(a) / ms(c)
    );
    println!(
        "| container session start (2 guests) | {:.1} ms | raw bollard {:.1} ms ({:.2}×) | docker run -d + logs -f {:.1} ms ({:.2}×) |",
        ms(a),
        ms(b),
        ms(a) / ms(b),
        ms(c),
        ms(a) / ms(c)
    );
}
