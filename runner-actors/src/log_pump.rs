//! [`LogPumpHandle`]: one per (guest, stream), alive for the whole session.
//!
//! It owns the stream's [`LogSink`] (the rotating file), so every launch of
//! the guest — first start and each restart — appends to the same files,
//! and the tasks that copy each launch's stream into it.
//!
//! Not an actor: its two operations need no mailbox. `attach` spawns the
//! copy task at once (copying never runs in a caller's message handler),
//! and `drain` waits, bounded, for every attached stream's EOF, cutting
//! what does not end. The session supervisor owns the handles: its
//! shutdown drains them and then [`LogPumpHandle::stop`]s them, and its
//! state's drop guard stops them too, so a supervisor that dies without a
//! shutdown still ends every copy task (bytes already read are still
//! written). A thousand sessions save four actors each this way (their
//! mailboxes, tasks and registry entries).

use crate::error::SessionError;
use runner_core::config::LogLimits;
use runner_core::logs::{GuestStream, LogPump, LogSink, PumpEnd, PumpHandle};
use runner_types::{GuestRole, LogStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Some stream was cut before its EOF.
    pub cut: bool,
    /// The sink's writer did not finish what was read in time: writes to
    /// the log file are stuck (a hung disk or mount).
    pub writes_stuck: bool,
}

/// Handle to one guest stream's sink and its copy tasks. Cheap to clone;
/// the tasks end when [`LogPumpHandle::stop`] is called or the last clone
/// is dropped.
#[derive(Clone)]
pub struct LogPumpHandle {
    inner: Arc<Pumps>,
}

struct Pumps {
    role: GuestRole,
    stream: LogStream,
    sink: LogSink,
    name: String,
    /// The copy tasks of the launches attached so far; `None` once
    /// stopped (a stream attached then is dropped).
    running: Mutex<Option<Vec<PumpHandle>>>,
}

impl LogPumpHandle {
    /// Opens the sink of every (`role`, `stream`) of `streams` under
    /// `logs_dir` (in one trip to the blocking pool: opening checks and
    /// creates files).
    pub async fn open_all(
        logs_dir: &Path,
        streams: Vec<(GuestRole, LogStream)>,
        limits: LogLimits,
    ) -> Result<Vec<Self>, SessionError> {
        let dir = logs_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            streams
                .into_iter()
                .map(|(role, stream)| {
                    LogSink::open(&dir, role, stream, limits)
                        .map(|sink| Self::new(role, stream, sink))
                        .map_err(|e| SessionError::Logs {
                            path: dir.join(stream.file_name(role)),
                            source: e,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|source| SessionError::BlockingTask {
            what: "opening a log",
            source,
        })?
    }

    /// A handle on `sink`, with no stream attached yet.
    pub fn new(role: GuestRole, stream: LogStream, sink: LogSink) -> Self {
        Self {
            inner: Arc::new(Pumps {
                role,
                stream,
                sink,
                name: format!("{}.{}", role.label(), stream),
                running: Mutex::new(Some(Vec::new())),
            }),
        }
    }

    /// Which guest.
    pub fn role(&self) -> GuestRole {
        self.inner.role
    }

    /// Which stream.
    pub fn stream(&self) -> LogStream {
        self.inner.stream
    }

    /// `<role label>.<stream>`, for messages.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The sink (for readers and live subscribers).
    pub fn sink(&self) -> &LogSink {
        &self.inner.sink
    }

    /// Starts copying a new launch's stream into the sink (in a task; must
    /// be called within a Tokio runtime). After [`Self::stop`] the stream
    /// is dropped instead.
    pub fn attach(&self, reader: GuestStream) {
        let mut running = self.lock();
        match running.as_mut() {
            Some(pumps) => {
                pumps.retain(|p| !p.is_finished());
                pumps.push(LogPump::spawn(reader, &self.inner.sink));
            }
            None => tracing::warn!(stream = %self.inner.name, "log pump stopped; output dropped"),
        }
    }

    /// Waits up to `timeout` for every attached stream to reach EOF, then
    /// cuts what is left (the writer gets `STOP_GRACE` more to finish
    /// what was read). Streams attached while this runs are not waited for.
    pub async fn drain(&self, timeout: Duration) -> Drained {
        let pumps = self.lock().as_mut().map(std::mem::take).unwrap_or_default();
        let reports = futures::future::join_all(pumps.into_iter().map(|p| p.finish(timeout))).await;
        Drained {
            cut: reports.iter().any(|r| r.was_cut()),
            writes_stuck: reports.iter().any(|r| matches!(r.end, PumpEnd::Abandoned)),
        }
    }

    /// Stops every copy task still running (bytes already read are still
    /// written) and drops whatever is attached later.
    pub fn stop(&self) {
        let pumps = self.lock().take();
        drop(pumps);
    }

    /// Copy tasks attached and not yet ended (for tests).
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock()
            .as_ref()
            .map_or(0, |p| p.iter().filter(|p| !p.is_finished()).count())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<PumpHandle>>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[path = "log_pump_tests.rs"]
mod tests;
