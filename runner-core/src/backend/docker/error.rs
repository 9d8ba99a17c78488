//! Errors of the Docker backend: launching (and preparing a session) and
//! stopping or cleaning up.

use runner_types::GuestRole;
use runner_types::envelope::EnvelopeError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// An engine call, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineAction {
    /// Create a container.
    Create,
    /// Attach to its output.
    Attach,
    /// Start it.
    Start,
    /// Stop it.
    Stop,
    /// Kill it.
    Kill,
    /// Remove it.
    Remove,
    /// Inspect it.
    Inspect,
    /// List containers.
    List,
    /// Inspect an image.
    InspectImage,
}

impl fmt::Display for EngineAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create container",
            Self::Attach => "attach to container",
            Self::Start => "start container",
            Self::Stop => "stop container",
            Self::Kill => "kill container",
            Self::Remove => "remove container",
            Self::Inspect => "inspect container",
            Self::List => "list containers",
            Self::InspectImage => "inspect image",
        })
    }
}

/// Why a Docker guest could not be launched (or a session prepared).
#[derive(Debug, Error)]
pub enum DockerLaunchError {
    /// `[docker] host` (or `DOCKER_HOST`) is not a Unix socket address.
    #[error("Docker host {host:?} is not supported: use unix:///path/to/docker.sock")]
    UnsupportedHost {
        /// The address as configured.
        host: String,
    },
    /// The runner instance id is empty.
    #[error("Docker backend needs a non-empty runner instance id")]
    EmptyInstanceId,
    /// The engine does not answer on its socket.
    #[error("Docker engine at {socket} does not answer")]
    Unreachable {
        /// The engine's socket.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The guest's image is not on the engine, and pulling is off.
    #[error(
        "Image {image} for the {role} guest is not on the Docker engine; build or load it, or set [docker] pull = true"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
        /// The guest it was for.
        role: GuestRole,
    },
    /// Pulling a missing image failed.
    #[error("Cannot pull image {image}")]
    Pull {
        /// The image reference.
        image: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The container name is taken by a container this runner does not own.
    #[error(
        "Container name {name} is taken by a container this runner instance does not own; it was left untouched"
    )]
    NameConflict {
        /// The name.
        name: String,
        /// The other container's `oxydra.runner.instance` label, if any.
        owner: Option<String>,
    },
    /// The engine refused a call (for example a resource limit it does not
    /// accept); its message is in the source.
    #[error("Docker engine refused to {action} {name}")]
    Rejected {
        /// The container (or image, or label filter) the call was about.
        name: String,
        /// What was asked.
        action: EngineAction,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// A leftover container of this runner could not be removed.
    #[error("Cannot remove leftover container {name}")]
    RemoveLeftover {
        /// The container.
        name: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The envelope could not be encoded.
    #[error("Cannot encode the {role} guest's bootstrap envelope")]
    Envelope {
        /// The guest.
        role: GuestRole,
        /// Cause.
        #[source]
        source: EnvelopeError,
    },
    /// The envelope file could not be written.
    #[error("Cannot write bootstrap file {path}")]
    BootstrapFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why stopping or cleaning up after a Docker guest failed.
#[derive(Debug, Error)]
pub enum DockerStopError {
    /// The engine refused or failed a call.
    #[error("Docker engine failed to {action} {name}")]
    Engine {
        /// The container.
        name: String,
        /// What was asked.
        action: EngineAction,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine did not answer in time.
    #[error("Docker engine did not {action} {name} within {after:?}")]
    Timeout {
        /// The container.
        name: String,
        /// What was asked.
        action: EngineAction,
        /// How long we waited.
        after: Duration,
    },
}

/// The HTTP status of an engine error answer, if it is one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether `e` means the engine could not be reached or did not answer
/// (as opposed to answering with an error).
pub(crate) fn is_transport(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::IOError { .. }
            | E::RequestTimeoutError
            | E::SocketNotFoundError(_)
    )
}
