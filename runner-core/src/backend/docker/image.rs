//! Images: telling "image missing" apart from other "not found" answers, and
//! pulling — only when `[docker] pull = true`; by default a missing image is
//! a clear error naming it.

use super::client::Engine;
use super::error::{DockerLaunchError, EngineAction, status_of};
use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;

/// Whether `image` is on the engine.
pub(crate) async fn exists(engine: &Engine, image: &str) -> Result<bool, DockerLaunchError> {
    let docker = engine.docker().await?;
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(engine.map_err(e, |source| DockerLaunchError::Rejected {
            name: image.to_owned(),
            action: EngineAction::InspectImage,
            source,
        })),
    }
}

/// Pulls `image`, following the progress stream to its end.
pub(crate) async fn pull(engine: &Engine, image: &str) -> Result<(), DockerLaunchError> {
    let docker = engine.docker().await?;
    tracing::info!(image, "Pulling image");
    let opts = CreateImageOptions {
        from_image: Some(image.to_owned()),
        ..Default::default()
    };
    let mut progress = docker.create_image(Some(opts), None, None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| {
            engine.map_err(e, |source| DockerLaunchError::Pull {
                image: image.to_owned(),
                source,
            })
        })?;
    }
    Ok(())
}
