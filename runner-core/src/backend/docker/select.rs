//! Which backend serves a tier on which host OS.
//!
//! The host OS is an argument, never read from a global, so a Linux test can
//! take the macOS path explicitly: on macOS the `micro_vm` tier runs on the
//! same Docker path as the container tier (Docker Desktop's VM is the
//! isolation boundary), only labelled and named `micro_vm`.

use runner_types::SandboxTier;
use std::fmt;

/// The operating system the runner runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostOs {
    /// Linux: `micro_vm` means Firecracker.
    Linux,
    /// macOS: `micro_vm` means a Docker-backed VM.
    MacOs,
}

/// The tier a [`super::DockerBackend`] serves; it names and labels its
/// containers with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerTier {
    /// `container`: a Docker container on the host's engine.
    Container,
    /// `micro_vm` on macOS: a container inside Docker Desktop's VM.
    MicroVm,
}

impl DockerTier {
    /// The sandbox tier this is.
    pub fn sandbox_tier(self) -> SandboxTier {
        match self {
            Self::Container => SandboxTier::Container,
            Self::MicroVm => SandboxTier::MicroVm,
        }
    }

    /// Spelling in names and labels: `container` or `micro_vm`.
    pub fn as_str(self) -> &'static str {
        self.sandbox_tier().as_str()
    }
}

impl fmt::Display for DockerTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend implementation a tier maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Host processes.
    Process,
    /// Docker containers, named and labelled with this tier.
    Docker(DockerTier),
    /// Firecracker microVMs (Linux).
    Firecracker,
}

/// Picks the backend for `tier` on `os`.
pub fn select_backend_for(tier: SandboxTier, os: HostOs) -> BackendKind {
    match (tier, os) {
        (SandboxTier::Process, _) => BackendKind::Process,
        (SandboxTier::Container, _) => BackendKind::Docker(DockerTier::Container),
        (SandboxTier::MicroVm, HostOs::Linux) => BackendKind::Firecracker,
        (SandboxTier::MicroVm, HostOs::MacOs) => BackendKind::Docker(DockerTier::MicroVm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_vm_is_docker_on_macos_and_firecracker_on_linux() {
        use SandboxTier::{Container, MicroVm, Process};
        assert_eq!(
            select_backend_for(MicroVm, HostOs::Linux),
            BackendKind::Firecracker
        );
        assert_eq!(
            select_backend_for(MicroVm, HostOs::MacOs),
            BackendKind::Docker(DockerTier::MicroVm)
        );
        for os in [HostOs::Linux, HostOs::MacOs] {
            assert_eq!(select_backend_for(Process, os), BackendKind::Process);
            assert_eq!(
                select_backend_for(Container, os),
                BackendKind::Docker(DockerTier::Container)
            );
        }
        assert_eq!(DockerTier::MicroVm.as_str(), "micro_vm");
        assert_eq!(DockerTier::Container.sandbox_tier(), Container);
    }
}
