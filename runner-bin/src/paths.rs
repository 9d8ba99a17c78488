//! Where a user's daemon lives, from the config (or the defaults).

use anyhow::Context;
use runner_core::config::RunnerConfig;
use std::path::Path;

/// Loads `--config`, or the built-in defaults relative to the current directory.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<RunnerConfig> {
    match path {
        Some(p) => Ok(RunnerConfig::load(p)?),
        None => {
            let cwd = std::env::current_dir().context("Cannot read the current directory")?;
            Ok(RunnerConfig::defaults(&cwd))
        }
    }
}
