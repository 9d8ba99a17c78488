//! The bootstrap envelope a guest receives at start.
//!
//! The JSON shape is oxydra-compatible; `tests/contract.rs` pins it.

use crate::frame::{self, FrameError, MAX_ENVELOPE_FRAME};
use crate::tier::SandboxTier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Everything a guest is told at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapEnvelope {
    /// The session's user id.
    pub user_id: String,
    /// Tier the guest runs at.
    pub sandbox_tier: SandboxTier,
    /// Workspace root for this user, as the guest should use it.
    pub workspace_root: String,
    /// Where the sidecar listens (runtime guest only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_endpoint: Option<SidecarEndpoint>,
    /// Mounts, resource limits and credential references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_policy: Option<RuntimePolicy>,
    /// What the runner could and could not set up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_status: Option<StartupStatus>,
}

/// How to reach the sidecar guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarEndpoint {
    /// Socket family.
    pub transport: SidecarTransport,
    /// Unix socket path, or `<cid>:<port>` for vsock.
    pub address: String,
}

/// Socket family of a sidecar endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SidecarTransport {
    /// Unix domain socket path.
    Unix,
    /// virtio-vsock.
    Vsock,
}

/// Mounts, limits and credential references applied to a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimePolicy {
    /// Resolved mount paths.
    pub mounts: ResolvedMounts,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourceLimits,
    /// Credential name → reference (never the secret itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credential_refs: BTreeMap<String, String>,
}

/// Workspace directories as the guest sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedMounts {
    /// Persistent user data.
    pub shared: String,
    /// Scratch.
    pub tmp: String,
    /// Credentials (runtime guest only).
    pub vault: String,
}

/// Resource limits; `None` means unlimited / backend default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u16>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// Process / pid count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
}

/// What the runner set up for this session, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartupStatus {
    /// Tier actually in effect.
    pub sandbox_tier: SandboxTier,
    /// Whether a sidecar guest is running.
    pub sidecar_available: bool,
    /// Whether shell tools are available.
    pub shell_available: bool,
    /// Whether browser tools are available.
    pub browser_available: bool,
    /// Reasons the session runs degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded_reasons: Vec<DegradedReason>,
}

/// One reason a session runs degraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedReason {
    /// Machine-readable code, snake_case (for example `insecure_process_tier`).
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
}

/// Why an envelope is unusable.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The length-prefixed frame is malformed.
    #[error("Malformed bootstrap frame")]
    Frame(#[from] FrameError),
    /// The payload is not the envelope's JSON.
    #[error("Bootstrap envelope is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// A required field is empty.
    #[error("Bootstrap envelope field `{field}` must not be empty")]
    EmptyField {
        /// Dotted field path.
        field: &'static str,
    },
    /// A resource limit is zero.
    #[error("Bootstrap envelope resource limit `{field}` must be greater than zero")]
    ZeroLimit {
        /// Field name.
        field: &'static str,
    },
}

impl BootstrapEnvelope {
    /// Checks the invariants a guest relies on.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        let empty = |s: &str| s.trim().is_empty();
        if empty(&self.user_id) {
            return Err(EnvelopeError::EmptyField { field: "user_id" });
        }
        if empty(&self.workspace_root) {
            return Err(EnvelopeError::EmptyField {
                field: "workspace_root",
            });
        }
        if let Some(ep) = &self.sidecar_endpoint
            && empty(&ep.address)
        {
            return Err(EnvelopeError::EmptyField {
                field: "sidecar_endpoint.address",
            });
        }
        if let Some(policy) = &self.runtime_policy {
            let m = &policy.mounts;
            for (field, v) in [
                ("runtime_policy.mounts.shared", &m.shared),
                ("runtime_policy.mounts.tmp", &m.tmp),
                ("runtime_policy.mounts.vault", &m.vault),
            ] {
                if empty(v) {
                    return Err(EnvelopeError::EmptyField { field });
                }
            }
            let r = &policy.resources;
            if r.max_vcpus == Some(0) {
                return Err(EnvelopeError::ZeroLimit { field: "max_vcpus" });
            }
            if r.max_memory_mib == Some(0) {
                return Err(EnvelopeError::ZeroLimit {
                    field: "max_memory_mib",
                });
            }
            if r.max_processes == Some(0) {
                return Err(EnvelopeError::ZeroLimit {
                    field: "max_processes",
                });
            }
        }
        Ok(())
    }

    /// Compact JSON of a validated envelope.
    pub fn to_json(&self) -> Result<Vec<u8>, EnvelopeError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(EnvelopeError::Json)
    }

    /// Parses and validates envelope JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Self = serde_json::from_slice(json).map_err(EnvelopeError::Json)?;
        env.validate()?;
        Ok(env)
    }

    /// The stdin transport's frame: 4-byte big-endian length + JSON.
    pub fn to_frame(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(frame::encode(&self.to_json()?, MAX_ENVELOPE_FRAME)?)
    }

    /// Parses a complete stdin-transport frame.
    pub fn from_frame(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_json(frame::decode(bytes, MAX_ENVELOPE_FRAME)?)
    }
}
