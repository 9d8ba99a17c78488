//! The daemon's stop signals: SIGINT, SIGTERM and SIGHUP all ask for the
//! graceful stop; a second one during the stop forces it.

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT, SIGTERM and SIGHUP as one stream.
pub struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    /// Installs the handlers (from then on these signals no longer kill
    /// the process by default).
    pub fn install() -> anyhow::Result<Self> {
        let one = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("Cannot install the {name} handler"))
        };
        Ok(Self {
            int: one(SignalKind::interrupt(), "SIGINT")?,
            term: one(SignalKind::terminate(), "SIGTERM")?,
            hup: one(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next stop signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
