//! Leftovers: containers a crashed or restarted runner left behind.
//!
//! Ownership is decided by labels only. A container is this runner's when
//! its `oxydra.runner.instance` label is this instance's id; it belongs to a
//! user when its `oxydra.runner.user` label says so. Containers of other
//! users or other runner instances are never touched.

use super::client::Engine;
use super::create::{LABEL_INSTANCE, LABEL_USER};
use super::error::{DockerLaunchError, EngineAction, status_of};
use crate::UserId;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use std::collections::HashMap;

/// What to do about a container that already has the name we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameHolder {
    /// Gone by the time we looked: just create again.
    Vanished,
    /// Ours (same instance and user): remove it, then create again.
    Stale {
        /// Its id.
        id: String,
    },
    /// Someone else's: leave it alone and fail.
    Foreign {
        /// Its `oxydra.runner.instance` label, if any.
        owner: Option<String>,
    },
}

/// Decides about a same-name container from its labels.
pub(crate) fn classify_holder(
    id: String,
    labels: Option<&HashMap<String, String>>,
    instance_id: &str,
    user: &UserId,
) -> NameHolder {
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    if label(LABEL_INSTANCE) == Some(instance_id) && label(LABEL_USER) == Some(user.as_str()) {
        NameHolder::Stale { id }
    } else {
        NameHolder::Foreign {
            owner: label(LABEL_INSTANCE).map(str::to_owned),
        }
    }
}

/// Looks at the container holding `name`.
pub(crate) async fn name_holder(
    engine: &Engine,
    name: &str,
    instance_id: &str,
    user: &UserId,
) -> Result<NameHolder, DockerLaunchError> {
    let docker = engine.docker().await?;
    match docker.inspect_container(name, None).await {
        Ok(c) => Ok(classify_holder(
            c.id.unwrap_or_else(|| name.to_owned()),
            c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()),
            instance_id,
            user,
        )),
        Err(e) if status_of(&e) == Some(404) => Ok(NameHolder::Vanished),
        Err(e) => Err(engine.map_err(e, |source| DockerLaunchError::Rejected {
            name: name.to_owned(),
            action: EngineAction::Inspect,
            source,
        })),
    }
}

/// Force-removes every container labelled with this instance and `user`.
/// Returns how many were removed.
pub(crate) async fn remove_orphans(
    engine: &Engine,
    instance_id: &str,
    user: &UserId,
) -> Result<usize, DockerLaunchError> {
    let docker = engine.docker().await?;
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{LABEL_INSTANCE}={instance_id}"),
            format!("{LABEL_USER}={user}"),
        ],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| {
            engine.map_err(e, |source| DockerLaunchError::Rejected {
                name: format!("labelled {LABEL_INSTANCE}={instance_id},{LABEL_USER}={user}"),
                action: EngineAction::List,
                source,
            })
        })?;
    let mut removed = 0;
    for c in list {
        // The engine filtered by label; check again so that nothing else is
        // ever removed, whatever the engine's filter semantics.
        let Some(id) = c.id else { continue };
        let holder = classify_holder(id.clone(), c.labels.as_ref(), instance_id, user);
        if holder != (NameHolder::Stale { id: id.clone() }) {
            continue;
        }
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| id.clone());
        tracing::info!(container = %name, user = %user, "Removing leftover container");
        force_remove(docker, &id)
            .await
            .map_err(|source| DockerLaunchError::RemoveLeftover { name, source })?;
        removed += 1;
    }
    Ok(removed)
}

/// `docker rm -f`; a container that is already gone counts as removed.
pub(crate) async fn force_remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        // Another removal of it is under way (a dropped launch's clean-up,
        // say): done once the container is gone.
        Err(e) if status_of(&e) == Some(409) => wait_gone(docker, id, e).await,
        other => other,
    }
}

/// Polls until `id` no longer exists, at most [`REMOVAL_WAIT`]; `e` if it
/// still does then.
async fn wait_gone(
    docker: &Docker,
    id: &str,
    e: bollard::errors::Error,
) -> Result<(), bollard::errors::Error> {
    let until = tokio::time::Instant::now() + REMOVAL_WAIT;
    while tokio::time::Instant::now() < until {
        match docker.inspect_container(id, None).await {
            Err(gone) if status_of(&gone) == Some(404) => return Ok(()),
            _ => tokio::time::sleep(REMOVAL_POLL).await,
        }
    }
    Err(e)
}

/// How long a removal already in progress is waited for.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Interval between checks while waiting for it.
const REMOVAL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_same_instance_and_user_is_stale() {
        let alice = UserId::new("alice").unwrap();
        let c = |l: &HashMap<String, String>| classify_holder("id".into(), Some(l), "i1", &alice);
        assert_eq!(
            c(&labels(&[(LABEL_INSTANCE, "i1"), (LABEL_USER, "alice")])),
            NameHolder::Stale { id: "id".into() }
        );
        assert_eq!(
            c(&labels(&[(LABEL_INSTANCE, "i2"), (LABEL_USER, "alice")])),
            NameHolder::Foreign {
                owner: Some("i2".into())
            }
        );
        assert_eq!(
            c(&labels(&[(LABEL_INSTANCE, "i1"), (LABEL_USER, "bob")])),
            NameHolder::Foreign {
                owner: Some("i1".into())
            }
        );
        assert_eq!(
            classify_holder("id".into(), None, "i1", &alice),
            NameHolder::Foreign { owner: None }
        );
    }
}
