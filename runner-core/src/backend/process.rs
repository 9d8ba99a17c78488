//! Process tier.

use thiserror::Error;

/// Why a process guest could not be launched.
#[derive(Debug, Error)]
pub enum ProcessLaunchError {}
