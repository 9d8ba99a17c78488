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
//!
//! A handle can exist before its sink is open ([`LogPumpHandle::unopened`]):
//! a session opens its logs on the blocking pool while its guests launch,
//! and a stream attached meanwhile waits, in its pipe, until
//! [`LogPumpHandle::open_with`] starts its copy. The pipe keeps every byte
//! the guest wrote in the meantime, in order.

use crate::error::SessionError;
use runner_core::config::LogLimits;
use runner_core::logs::{GuestStream, LogPump, LogSink, PumpEnd, PumpHandle, WriterThreads};
use runner_types::{GuestRole, LogStream};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
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
    /// Set once (under `attached`'s lock) when the sink is open.
    sink: OnceLock<LogSink>,
    name: String,
    attached: Mutex<Attached>,
}

/// The streams handed to a handle.
struct Attached {
    /// The copy tasks of the launches attached so far; `None` once
    /// stopped (a stream attached then is dropped).
    running: Option<Vec<PumpHandle>>,
    /// Streams attached before the sink was open, in attach order: their
    /// pipes hold the guest's output until [`LogPumpHandle::open_with`]
    /// starts their copy tasks.
    waiting: Vec<GuestStream>,
}

impl LogPumpHandle {
    /// Opens the sink of every (`role`, `stream`) of `streams` under
    /// `logs_dir`, in order, their writers running on `writers`. Blocking
    /// (opening checks and creates files): run it on the blocking pool.
    pub fn open_sinks(
        writers: &WriterThreads,
        logs_dir: &Path,
        streams: &[(GuestRole, LogStream)],
        limits: LogLimits,
    ) -> Result<Vec<LogSink>, SessionError> {
        streams
            .iter()
            .map(|&(role, stream)| {
                LogSink::open_on(writers, logs_dir, role, stream, limits).map_err(|e| {
                    SessionError::Logs {
                        path: logs_dir.join(stream.file_name(role)),
                        source: e,
                    }
                })
            })
            .collect()
    }

    /// A handle on `sink`, with no stream attached yet (for tests).
    #[cfg(test)]
    pub fn new(role: GuestRole, stream: LogStream, sink: LogSink) -> Self {
        let handle = Self::unopened(role, stream);
        handle.open_with(sink);
        handle
    }

    /// A handle whose sink is still being opened: streams attached before
    /// [`Self::open_with`] wait in their pipes (which hold what the guest
    /// writes meanwhile, up to the pipe's capacity, after which the guest's
    /// writes wait), so a guest can be launched while its logs are opened.
    pub fn unopened(role: GuestRole, stream: LogStream) -> Self {
        Self {
            inner: Arc::new(Pumps {
                role,
                stream,
                sink: OnceLock::new(),
                name: format!("{}.{}", role.label(), stream),
                attached: Mutex::new(Attached {
                    running: Some(Vec::new()),
                    waiting: Vec::new(),
                }),
            }),
        }
    }

    /// Hands the handle its open sink and starts copying every stream
    /// attached so far, in attach order (in tasks; must be called within a
    /// Tokio runtime). A second sink is refused and dropped.
    pub fn open_with(&self, sink: LogSink) {
        let mut attached = self.lock();
        if self.inner.sink.set(sink).is_err() {
            tracing::warn!(stream = %self.inner.name, "log sink already open; second one dropped");
            return;
        }
        let waiting = std::mem::take(&mut attached.waiting);
        for reader in waiting {
            self.start_copy(&mut attached, reader);
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

    /// The sink (for readers and live subscribers); `None` until
    /// [`Self::open_with`] (a session's start returns only after every
    /// sink is open).
    pub fn sink(&self) -> Option<&LogSink> {
        self.inner.sink.get()
    }

    /// Starts copying a new launch's stream into the sink (in a task; must
    /// be called within a Tokio runtime), or, while the sink is still
    /// being opened, keeps it until it is. After [`Self::stop`] the stream
    /// is dropped instead.
    pub fn attach(&self, reader: GuestStream) {
        let mut attached = self.lock();
        if self.inner.sink.get().is_none() && attached.running.is_some() {
            attached.waiting.push(reader);
        } else {
            self.start_copy(&mut attached, reader);
        }
    }

    /// Spawns `reader`'s copy task into the open sink, unless stopped.
    fn start_copy(&self, attached: &mut Attached, reader: GuestStream) {
        let (Some(sink), Some(pumps)) = (self.inner.sink.get(), attached.running.as_mut()) else {
            tracing::warn!(stream = %self.inner.name, "log pump stopped; output dropped");
            return;
        };
        pumps.retain(|p| !p.is_finished());
        pumps.push(LogPump::spawn(reader, sink));
    }

    /// Waits up to `timeout` for every attached stream to reach EOF, then
    /// cuts what is left (the writer gets `STOP_GRACE` more to finish
    /// what was read). Streams attached while this runs are not waited for,
    /// nor are streams still waiting for a sink that never opened (a failed
    /// start), which are dropped: the guest sees its pipe closed.
    pub async fn drain(&self, timeout: Duration) -> Drained {
        let pumps = {
            let mut attached = self.lock();
            attached.waiting.clear();
            attached
                .running
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default()
        };
        let reports = futures::future::join_all(pumps.into_iter().map(|p| p.finish(timeout))).await;
        Drained {
            cut: reports.iter().any(|r| r.was_cut()),
            writes_stuck: reports.iter().any(|r| matches!(r.end, PumpEnd::Abandoned)),
        }
    }

    /// Stops every copy task still running (bytes already read are still
    /// written) and drops whatever is attached later.
    pub fn stop(&self) {
        let (pumps, waiting) = {
            let mut attached = self.lock();
            (
                attached.running.take(),
                std::mem::take(&mut attached.waiting),
            )
        };
        drop((pumps, waiting));
    }

    /// Copy tasks attached and not yet ended (for tests).
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock()
            .running
            .as_ref()
            .map_or(0, |p| p.iter().filter(|p| !p.is_finished()).count())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attached> {
        self.inner
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[path = "log_pump_tests.rs"]
mod tests;
