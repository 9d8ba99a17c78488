//! Config errors: each names the file and, where there is one, the key.

use std::path::PathBuf;
use thiserror::Error;

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("Cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
