//! Limits every guest gets, whatever its user's `[resources]` says.
//!
//! A user without `[resources]` (or without one of its keys) still gets
//! these, so one fork bomb or one runaway allocation stays inside its
//! guest. Set `[resources]` in the per-user file to change them.

use runner_types::ResourceLimits;

/// Processes (threads count too) per guest: the container tier's pids
/// limit and the process tier's `RLIMIT_NPROC` for the guest uid.
pub const DEFAULT_MAX_PROCESSES: u32 = 512;

/// Memory per container, in MiB (the container tier's memory limit; swap
/// is not added on top).
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 2048;

/// `max_processes`, or [`DEFAULT_MAX_PROCESSES`].
pub fn max_processes(r: &ResourceLimits) -> u32 {
    r.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES)
}

/// `max_memory_mib`, or [`DEFAULT_MAX_MEMORY_MIB`].
pub fn max_memory_mib(r: &ResourceLimits) -> u64 {
    r.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB)
}
