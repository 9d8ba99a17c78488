//! Why a micro_vm guest could not be launched: the one error type of the
//! Firecracker backend, shared by the pre-launch checks, config generation
//! and spawning.

use super::vsock_bridge::BridgeError;
use crate::workspace::WorkspaceError;
use runner_types::GuestRole;
use runner_types::envelope::EnvelopeError;
use std::path::PathBuf;
use thiserror::Error;

/// Why a micro_vm guest could not be launched. Every variant is raised before
/// a firecracker process runs: once it has started, a failure is an exit,
/// not a launch error.
#[derive(Debug, Error)]
pub enum FirecrackerLaunchError {
    /// `[guest_images]` lacks the template for a role.
    #[error("linux micro_vm requires {field} in [guest_images]")]
    MissingTemplate {
        /// The missing key (`firecracker_oxydra_vm_config` or
        /// `firecracker_shell_vm_config`).
        field: &'static str,
    },
    /// A bare binary name was not found on the PATH the caller passed.
    #[error("No `{name}` found on PATH")]
    BinaryNotOnPath {
        /// The name as configured.
        name: PathBuf,
    },
    /// The binary cannot be inspected (usually: it does not exist).
    #[error("Cannot use firecracker binary {path}")]
    BinaryMissing {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary exists but is not an executable regular file.
    #[error("Firecracker binary {path} is not an executable file")]
    BinaryNotExecutable {
        /// The binary.
        path: PathBuf,
    },
    /// The KVM device cannot be opened read-write.
    #[error("Cannot open KVM device {path} read-write")]
    KvmUnusable {
        /// The device.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The runner is root and no usable jailer exists, and
    /// `[firecracker] allow_without_jailer` is not set.
    #[error(
        "The runner is root but the jailer {jailer} is unusable; install it or set \
         [firecracker] jailer (or, unsafely, allow_without_jailer = true)"
    )]
    JailerRequired {
        /// The jailer as configured or resolved.
        jailer: PathBuf,
        /// Why it is unusable.
        #[source]
        source: Box<FirecrackerLaunchError>,
    },
    /// A jailed launch has no guest identity, or one with uid/gid 0.
    #[error("The jailed {role} VM needs a non-root guest uid/gid (got {run_as:?})")]
    NoGuestUser {
        /// The guest.
        role: GuestRole,
        /// What the launch spec carried.
        run_as: Option<crate::identity::GuestUser>,
    },
    /// A jail directory cannot be prepared.
    #[error("Cannot prepare the jail {path}")]
    Jail {
        /// The directory or file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A drive, kernel or initrd cannot be copied or linked for a launch.
    #[error("Cannot stage {src} as {dst}")]
    StageFile {
        /// The template's file.
        src: PathBuf,
        /// The per-launch file.
        dst: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime-to-sidecar vsock bridge cannot start.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// A template cannot be read.
    #[error("Cannot read Firecracker template {path}")]
    ReadTemplate {
        /// The template.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A template is not JSON.
    #[error("Firecracker template {path} is not valid JSON")]
    TemplateJson {
        /// The template.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A template has no `boot-source` object.
    #[error("Firecracker template {path} has no `boot-source` object")]
    NoBootSource {
        /// The template.
        path: PathBuf,
    },
    /// A template key has the wrong JSON type.
    #[error("Firecracker template {path}: `{key}` must be {expected}")]
    TemplateShape {
        /// The template.
        path: PathBuf,
        /// Dotted key.
        key: &'static str,
        /// What it must be ("an object", "a string", ...).
        expected: &'static str,
    },
    /// The envelope cannot be encoded.
    #[error("Cannot encode the {role} bootstrap envelope")]
    Envelope {
        /// The guest.
        role: GuestRole,
        /// Cause.
        #[source]
        source: EnvelopeError,
    },
    /// The kernel command line, as Firecracker would build it, is over its
    /// limit. Nothing is truncated and nothing is launched.
    #[error(
        "Kernel command line would be {needed} bytes, over Firecracker's {limit}-byte limit \
         (the bootstrap envelope takes {envelope_bytes})"
    )]
    CmdlineTooLong {
        /// Bytes the whole command line would take (without the NUL).
        needed: usize,
        /// Most bytes allowed (without the NUL).
        limit: usize,
        /// Bytes of the `oxydra.bootstrap_b64=...` token.
        envelope_bytes: usize,
    },
    /// An API or vsock socket path is over the OS limit.
    #[error(transparent)]
    SocketPath(#[from] WorkspaceError),
    /// A per-launch file (config, VMM log) cannot be written.
    #[error("Cannot write {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket from an earlier launch cannot be removed.
    #[error("Cannot remove stale socket {path}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The firecracker process could not be started.
    #[error("Cannot start {binary} for the {role} guest")]
    Spawn {
        /// The guest.
        role: GuestRole,
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
