//! Errors of the log layer.
//!
//! Only opening and reading can fail a caller: once a pump runs, write
//! failures are logged and counted as dropped bytes, never returned, because
//! the pump must keep draining the guest's pipe whatever the disk does.

use std::path::PathBuf;
use thiserror::Error;

/// Why a log sink could not be opened, a pump started, or logs read.
#[derive(Debug, Error)]
pub enum LogError {
    /// The logs directory could not be created.
    #[error("Cannot create log directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A log file, its index or the logs directory is not what the runner
    /// requires (a symlink, a FIFO, a directory open to others, ...).
    #[error("Unsafe log path")]
    Unsafe {
        /// What is wrong (names the path).
        #[source]
        source: crate::workspace::HostFileError,
    },
    /// A log or index file could not be opened.
    #[error("Cannot open log file {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A log or index file could not be read.
    #[error("Cannot read log file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The blocking task that reads log files panicked or was cancelled.
    #[error("Log reader task for {path} did not complete")]
    ReaderTask {
        /// The log file being read.
        path: PathBuf,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}
