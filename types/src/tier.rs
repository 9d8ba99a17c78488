//! Small enums that name tiers, guest roles and output streams.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Isolation tier a guest runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxTier {
    /// Firecracker microVM (Linux) or a Docker-backed VM (macOS).
    MicroVm,
    /// Docker container.
    Container,
    /// Plain host process; no isolation beyond a cleared environment.
    Process,
}

impl SandboxTier {
    /// The wire / config spelling (`process`, `container`, `micro_vm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MicroVm => "micro_vm",
            Self::Container => "container",
            Self::Process => "process",
        }
    }
}

impl fmt::Display for SandboxTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a session's two guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestRole {
    /// The agent guest (image `oxydra_vm`).
    Runtime,
    /// The shell guest (image `shell_vm`).
    Sidecar,
}

impl GuestRole {
    /// Both roles, in start order (sidecar first).
    pub const START_ORDER: [GuestRole; 2] = [GuestRole::Sidecar, GuestRole::Runtime];

    /// Wire spelling: `runtime` or `sidecar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Sidecar => "sidecar",
        }
    }

    /// Label used in file and container names and in `logs` entries:
    /// `oxydra-vm` or `shell-vm`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Runtime => "oxydra-vm",
            Self::Sidecar => "shell-vm",
        }
    }

    /// The role whose [`Self::label`] is `label`.
    pub fn from_label(label: &str) -> Option<Self> {
        [Self::Runtime, Self::Sidecar]
            .into_iter()
            .find(|r| r.label() == label)
    }
}

impl fmt::Display for GuestRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One captured output stream of a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output (for a microVM: its serial console).
    Stdout,
    /// Standard error (for a microVM: the VMM's own stderr).
    Stderr,
}

impl LogStream {
    /// Both streams.
    pub const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    /// Wire spelling: `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    /// Log file name for a role and stream: `<role label>.<stream>.log`.
    pub fn file_name(self, role: GuestRole) -> String {
        format!("{}.{}.log", role.label(), self.as_str())
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_pinned() {
        assert_eq!(
            serde_json::to_string(&SandboxTier::MicroVm).unwrap(),
            "\"micro_vm\""
        );
        assert_eq!(GuestRole::Runtime.label(), "oxydra-vm");
        assert_eq!(GuestRole::Sidecar.label(), "shell-vm");
        assert_eq!(
            LogStream::Stderr.file_name(GuestRole::Sidecar),
            "shell-vm.stderr.log"
        );
        assert_eq!(GuestRole::START_ORDER[0], GuestRole::Sidecar);
    }
}
