//! The container tier's lifecycle on a real Docker engine: leftover removal,
//! bounded stop, exit codes and relaunch under the fixed name, and the
//! errors for an unreachable engine, a missing image, a foreign container
//! holding our name and a limit the engine refuses. Skips without an engine.

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptions;
use runner_core::backend::docker::create::{LABEL_INSTANCE, LABEL_USER};
use runner_core::backend::docker::{
    DockerBackend, DockerBackendConfig, DockerLaunchError, DockerTier, EngineAction,
    MAX_STOP_OVERRUN,
};
use runner_core::backend::{GuestIdentity, LaunchError, LaunchedGuest, SandboxBackend};
use runner_tests::docker::harness::{BOUND, Capture, Harness, launch, spec};
use runner_tests::docker::unique_id;
use runner_types::{ExitStatus, GuestRole, ResourceLimits};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::time::timeout;

fn id_of(g: &LaunchedGuest) -> String {
    match &g.identity {
        GuestIdentity::Container { id, .. } => id.clone(),
        other => panic!("not a container: {other:?}"),
    }
}

async fn exists(h: &Harness, id: &str) -> bool {
    match h.docker.inspect_container(id, None).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => panic!("inspect {id}: {e}"),
    }
}

async fn running(h: &Harness, id: &str) -> bool {
    let info = h.docker.inspect_container(id, None).await.unwrap();
    info.state.and_then(|s| s.running) == Some(true)
}

/// A guest that keeps running until stopped (heartbeats off the hot path).
fn long_running(h: &Harness, image: &str, instance: &str, extra: &[&str]) -> DockerBackendConfig {
    let mut c = h.config(DockerTier::Container, image);
    c.instance_id = instance.to_owned();
    let mut cmd: Vec<String> = vec!["--heartbeat-ms".into(), "60000".into()];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    c.docker.command = Some(cmd);
    c
}

/// A backend for this instance whose guests run the demo guest with
/// `extra` arguments.
async fn demo_backend(h: &Harness, extra: &[&str]) -> DockerBackend {
    let image = h.demo_image(&[]).await;
    h.backend(long_running(h, &image, &h.instance, extra))
}

#[tokio::test]
async fn prepare_session_removes_only_this_instances_containers_for_that_user() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let image = h.demo_image(&[]).await;
    let other_instance = unique_id("other");
    let _other_guard =
        runner_tests::docker::RemoveOnDrop::new(&h.host, LABEL_INSTANCE, &other_instance);
    let (alice, alice_ws) = h.user("alice");
    let (bob, bob_ws) = h.user("bob");

    // A crashed runner (same instance id) left alice's and bob's guests
    // running; another runner instance runs its own guest for alice.
    let crashed = h.backend(long_running(&h, &image, &h.instance, &[]));
    let mut ids = HashMap::new();
    for (who, backend, user, ws, role) in [
        (
            "alice-ours",
            &crashed,
            &alice,
            &alice_ws,
            GuestRole::Runtime,
        ),
        ("bob-ours", &crashed, &bob, &bob_ws, GuestRole::Runtime),
    ] {
        let g = launch(backend, role, user, ws).await.expect("launch");
        ids.insert(who, id_of(&g));
        std::mem::forget(g); // the "crash": nobody stops or cleans up
    }
    // The other instance's guest for alice uses the sidecar name (the
    // runtime name is taken by ours), so both can exist at once.
    let mut other_cfg = long_running(&h, &image, &other_instance, &[]);
    other_cfg.sidecar_image = Some(image.clone());
    let other = h.backend(other_cfg);
    let g = launch(&other, GuestRole::Sidecar, &alice, &alice_ws)
        .await
        .expect("launch other instance");
    ids.insert("alice-other", id_of(&g));
    std::mem::forget(g);

    let fresh = h.backend(h.config(DockerTier::Container, &image));
    fresh
        .prepare_session(&alice, &alice_ws)
        .await
        .expect("prepare");
    assert!(
        !exists(&h, &ids["alice-ours"]).await,
        "alice's orphan removed"
    );
    assert!(running(&h, &ids["bob-ours"]).await, "bob's guest untouched");
    assert!(
        running(&h, &ids["alice-other"]).await,
        "other instance's guest untouched"
    );
    let info = h
        .docker
        .inspect_container(&ids["bob-ours"], None)
        .await
        .unwrap();
    let labels = info.config.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_USER], bob.as_str());
}

#[tokio::test]
async fn stop_of_a_guest_ignoring_sigterm_is_bounded_and_removes_it() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let backend = demo_backend(
        &h,
        &[
            "--ignore-sigterm",
            "--bootstrap-file",
            "/run/oxydra/bootstrap",
        ],
    )
    .await;
    let (user, ws) = h.user("stop");
    let mut guest = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .expect("launch");
    let id = id_of(&guest);
    let mut out = Capture::all(guest.outputs.drain(..).collect());
    out[0].line("envelope=").await; // its SIGTERM handler is installed by now

    let grace = Duration::from_millis(1500);
    let started = Instant::now();
    let exit = timeout(grace + MAX_STOP_OVERRUN, guest.control.stop(grace))
        .await
        .expect("stop returns within grace + MAX_STOP_OVERRUN")
        .expect("stop");
    let took = started.elapsed();
    // SIGTERM was ignored, so only the kill after the (rounded-up) grace
    // period ended it.
    assert_eq!(exit.status, ExitStatus::Code(137), "{exit:?}");
    assert!(took >= Duration::from_secs(1), "stopped after {took:?}");
    out[0].line("sigterm ignored").await;
    assert!(!exists(&h, &id).await, "stop removed the container");
    assert_eq!(guest.exit.wait().await, exit);
    // Stopping again returns the same exit; cleanup is idempotent.
    assert_eq!(guest.control.stop(grace).await.unwrap(), exit);
    guest.control.cleanup().await.expect("cleanup");
    guest.control.cleanup().await.expect("cleanup again");
}

#[tokio::test]
async fn exit_code_is_reported_and_a_relaunch_replaces_the_container() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let backend = demo_backend(
        &h,
        &[
            "--exit-after-ms",
            "200",
            "--exit-code",
            "4",
            "--bootstrap-file",
            "/run/oxydra/bootstrap",
        ],
    )
    .await;
    let (user, ws) = h.user("exit");
    let mut first = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .expect("launch");
    let mut out = Capture::all(first.outputs.drain(..).collect());
    let exit = timeout(BOUND, first.exit.wait()).await.expect("exit seen");
    assert_eq!(exit.status, ExitStatus::Code(4));
    assert!(!exit.oom_killed);
    assert_eq!(out[0].line("exiting code=").await, "4");
    out[0].until_eof().await;
    let first_id = id_of(&first);
    assert!(
        exists(&h, &first_id).await,
        "exited container kept until cleanup"
    );

    // A relaunch before cleanup finds its own stale container under the
    // fixed name and replaces it.
    let mut second = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .expect("relaunch replaces the stale container");
    assert!(!exists(&h, &first_id).await);
    let second_id = id_of(&second);
    // The first launch's late cleanup leaves the second alone.
    first.control.cleanup().await.expect("late cleanup");
    assert!(exists(&h, &second_id).await);
    let _out2 = Capture::all(second.outputs.drain(..).collect());
    let exit = timeout(BOUND, second.exit.wait()).await.expect("exit seen");
    assert_eq!(exit.status, ExitStatus::Code(4));
    second.control.cleanup().await.expect("cleanup");
    assert!(!exists(&h, &second_id).await);
}

#[tokio::test]
async fn an_unreachable_engine_names_its_socket_and_nothing_is_written() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let socket = h.dir.path().join("no-engine.sock");
    let mut config = h.config(DockerTier::Container, "unused:1");
    config.docker.host = Some(format!("unix://{}", socket.display()));
    let backend = h.backend(config);
    let (user, ws) = h.user("unreach");
    match backend.prepare_session(&user, &ws).await {
        Err(LaunchError::Docker(DockerLaunchError::Unreachable { socket: s, .. })) => {
            assert_eq!(s, socket)
        }
        other => panic!("{other:?}"),
    }
    let err = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LaunchError::Docker(DockerLaunchError::Unreachable { socket: s, .. }) if *s == socket),
        "{err:?}"
    );
    assert!(!ws.run.join("oxydra-vm.bootstrap.json").exists());
}

#[tokio::test]
async fn a_missing_image_is_named_and_nothing_is_left() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let image = format!("runner-test-missing:{}", unique_id("x"));
    let backend = h.backend(h.config(DockerTier::Container, &image));
    let (user, ws) = h.user("noimg");
    let err = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .unwrap_err();
    match err {
        LaunchError::Docker(DockerLaunchError::ImageMissing { image: i, role }) => {
            assert_eq!(i, image);
            assert_eq!(role, GuestRole::Runtime);
        }
        other => panic!("{other:?}"),
    }
    assert!(!exists(&h, &format!("oxydra-container-{user}-oxydra-vm")).await);
    assert!(!ws.run.join("oxydra-vm.bootstrap.json").exists());
}

#[tokio::test]
async fn a_foreign_container_holding_our_name_is_a_conflict_and_untouched() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let image = h.demo_image(&[]).await;
    let backend = h.backend(h.config(DockerTier::Container, &image));
    let (user, ws) = h.user("conflict");
    let name = format!("oxydra-container-{user}-oxydra-vm");
    // Labelled with this test's instance id so the harness removes it, but
    // for another user: not ours to remove.
    let foreign = h
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.clone()),
                labels: Some(HashMap::from([
                    (LABEL_INSTANCE.to_owned(), h.instance.clone()),
                    (LABEL_USER.to_owned(), "someone-else".to_owned()),
                ])),
                ..Default::default()
            },
        )
        .await
        .expect("create foreign container")
        .id;
    let err = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .unwrap_err();
    match err {
        LaunchError::Docker(DockerLaunchError::NameConflict { name: n, owner }) => {
            assert_eq!(n, name);
            assert_eq!(owner.as_deref(), Some(h.instance.as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert!(exists(&h, &foreign).await, "foreign container untouched");
    backend.prepare_session(&user, &ws).await.expect("prepare");
    assert!(
        exists(&h, &foreign).await,
        "not removed as an orphan either"
    );
}

#[tokio::test]
async fn a_limit_the_engine_refuses_carries_its_message() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let backend = h.backend(h.config(DockerTier::Container, &h.demo_image(&[]).await));
    let (user, ws) = h.user("limit");
    // Docker's minimum memory limit is 6 MiB.
    let limits = ResourceLimits {
        max_memory_mib: Some(1),
        ..Default::default()
    };
    let err = backend
        .launch(spec(&backend, GuestRole::Runtime, &user, &ws, limits))
        .await
        .unwrap_err();
    match err {
        LaunchError::Docker(DockerLaunchError::Rejected {
            action: EngineAction::Create,
            source:
                bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message,
                },
            ..
        }) => {
            assert!((400..500).contains(&status_code), "{status_code}");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(!ws.run.join("oxydra-vm.bootstrap.json").exists());
}

/// Starts a runtime launch of `user` and drops it the moment its container
/// exists (between create and start, or during the start); returns the
/// container's name and the state it was seen in.
async fn drop_launch_once_created(
    h: &Harness,
    backend: &runner_core::backend::docker::DockerBackend,
    user: &runner_core::UserId,
    ws: &runner_core::Workspace,
) -> (String, Option<bollard::models::ContainerStateStatusEnum>) {
    let name = runner_core::backend::docker::create::container_name(
        DockerTier::Container,
        user,
        GuestRole::Runtime,
    );
    let launch = backend.launch(spec(
        backend,
        GuestRole::Runtime,
        user,
        ws,
        Default::default(),
    ));
    let created = async {
        loop {
            if let Ok(c) = h.docker.inspect_container(&name, None).await {
                return c.state.and_then(|s| s.status);
            }
            tokio::task::yield_now().await;
        }
    };
    let seen = tokio::select! {
        biased;
        state = created => state,
        done = launch => panic!("the launch finished before its container was seen: {:?}", done.map(|g| g.identity)),
    };
    (name, seen)
}

/// A launch dropped while it runs (its timeout fired, or the start was
/// cancelled) between create and start leaves no container behind: the
/// test drops the launch future the moment its container exists.
#[tokio::test]
async fn a_launch_dropped_between_create_and_start_leaves_no_container() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let backend = demo_backend(&h, &[]).await;
    let (user, ws) = h.user("drop");
    let (name, seen) = drop_launch_once_created(&h, &backend, &user, &ws).await;
    // The launch future is gone here; its guard removes the container.
    eprintln!("dropped the launch with the container in state {seen:?}");
    let start = Instant::now();
    while exists(&h, &name).await {
        assert!(start.elapsed() < BOUND, "container {name} left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The clean-up of a dropped launch never removes the container of the next
/// launch of the same guest (same name, same instance and user labels).
#[tokio::test]
async fn a_dropped_launchs_clean_up_spares_the_next_launch() {
    let Some(h) = Harness::new().await else {
        return;
    };
    let backend = demo_backend(&h, &[]).await;
    let (user, ws) = h.user("next");
    drop_launch_once_created(&h, &backend, &user, &ws).await;
    // Relaunch at once, while the first launch's clean-up may still run.
    let second = launch(&backend, GuestRole::Runtime, &user, &ws)
        .await
        .expect("relaunch");
    let id = id_of(&second);
    for _ in 0..40 {
        assert!(
            exists(&h, &id).await,
            "the next launch's container was removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running(&h, &id).await);
    timeout(BOUND, second.control.stop(Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
}
