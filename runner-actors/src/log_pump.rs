//! `LogPumpActor`: one per (guest, stream), alive for the whole session.
//!
//! It owns the stream's [`LogSink`] (the rotating file), so every launch of
//! the guest — first start and each restart — appends to the same files.
//! Messages: `Attach` (a new launch's stream; copied by a task the actor
//! owns), `Drain` (answered: wait for every attached stream to reach EOF,
//! bounded, cutting what does not). Copying runs in tasks, never in
//! `handle`, so the mailbox stays responsive. `post_stop` stops any copy
//! still running (bytes already read are still written).

use crate::error::SessionError;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use runner_core::config::LogLimits;
use runner_core::logs::{GuestStream, LogPump, LogSink, PumpEnd, PumpHandle, STOP_GRACE};
use runner_types::{GuestRole, LogStream};
use std::path::Path;
use std::time::Duration;

/// How much longer than a drain's own bound its caller waits for the answer.
const DRAIN_ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Messages of [`LogPumpActor`].
pub enum LogPumpMsg {
    /// Start copying a new launch's stream into the sink.
    Attach(GuestStream),
    /// Wait up to the timeout for every attached stream to reach EOF;
    /// answers how it went.
    Drain {
        /// Bound.
        timeout: Duration,
        /// Answer.
        reply: RpcReplyPort<Drained>,
    },
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Some stream was cut before its EOF (or the actor did not answer).
    pub cut: bool,
    /// The sink's writer did not finish what was read in time: writes to
    /// the log file are stuck (a hung disk or mount).
    pub writes_stuck: bool,
}

/// The pump actor. See the module docs.
pub struct LogPumpActor;

/// State of [`LogPumpActor`].
pub struct LogPumpState {
    sink: LogSink,
    pumps: Vec<PumpHandle>,
}

impl Actor for LogPumpActor {
    type Msg = LogPumpMsg;
    type State = LogPumpState;
    type Arguments = LogSink;

    async fn pre_start(
        &self,
        _: ActorRef<LogPumpMsg>,
        sink: LogSink,
    ) -> Result<LogPumpState, ActorProcessingErr> {
        Ok(LogPumpState {
            sink,
            pumps: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LogPumpMsg>,
        msg: LogPumpMsg,
        state: &mut LogPumpState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LogPumpMsg::Attach(reader) => {
                state.pumps.retain(|p| !p.is_finished());
                state.pumps.push(LogPump::spawn(reader, &state.sink));
            }
            LogPumpMsg::Drain { timeout, reply } => {
                let drained = on_drain(state, timeout).await;
                if reply.send(drained).is_err() {
                    tracing::debug!("drain requester went away");
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<LogPumpMsg>,
        state: &mut LogPumpState,
    ) -> Result<(), ActorProcessingErr> {
        // Dropping a pump handle stops its task (bytes already read are
        // still written).
        state.pumps.clear();
        Ok(())
    }
}

async fn on_drain(state: &mut LogPumpState, timeout: Duration) -> Drained {
    let pumps = std::mem::take(&mut state.pumps);
    let reports = futures::future::join_all(pumps.into_iter().map(|p| p.finish(timeout))).await;
    Drained {
        cut: reports.iter().any(|r| r.was_cut()),
        writes_stuck: reports.iter().any(|r| matches!(r.end, PumpEnd::Abandoned)),
    }
}

/// Typed handle to a [`LogPumpActor`].
#[derive(Clone)]
pub struct LogPumpHandle {
    actor: ActorRef<LogPumpMsg>,
    role: GuestRole,
    stream: LogStream,
    sink: LogSink,
    name: String,
}

impl LogPumpHandle {
    /// Opens the sink of every (`role`, `stream`) of `streams` under
    /// `logs_dir` (in one trip to the blocking pool: opening checks and
    /// creates files) and spawns one actor per sink, linked to
    /// `supervisor`, all at once.
    pub async fn spawn_all(
        supervisor: ActorCell,
        logs_dir: &Path,
        streams: Vec<(GuestRole, LogStream)>,
        limits: LogLimits,
    ) -> Result<Vec<Self>, SessionError> {
        let dir = logs_dir.to_path_buf();
        let sinks = tokio::task::spawn_blocking(move || {
            streams
                .into_iter()
                .map(|(role, stream)| {
                    LogSink::open(&dir, role, stream, limits)
                        .map(|sink| (role, stream, sink))
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
        })??;
        let spawns = sinks
            .into_iter()
            .map(|(role, stream, sink)| Self::spawn_for(supervisor.clone(), role, stream, sink));
        futures::future::join_all(spawns)
            .await
            .into_iter()
            .collect()
    }

    async fn spawn_for(
        supervisor: ActorCell,
        role: GuestRole,
        stream: LogStream,
        sink: LogSink,
    ) -> Result<Self, SessionError> {
        let (actor, _join) = Actor::spawn_linked(None, LogPumpActor, sink.clone(), supervisor)
            .await
            .map_err(SessionError::Spawn)?;
        Ok(Self {
            actor,
            role,
            stream,
            sink,
            name: format!("{}.{}", role.label(), stream),
        })
    }

    /// The pump actor's id.
    pub(crate) fn id(&self) -> ractor::ActorId {
        self.actor.get_id()
    }

    /// Which guest.
    pub fn role(&self) -> GuestRole {
        self.role
    }

    /// Which stream.
    pub fn stream(&self) -> LogStream {
        self.stream
    }

    /// `<role label>.<stream>`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sink (for readers and live subscribers).
    pub fn sink(&self) -> &LogSink {
        &self.sink
    }

    /// Hands a new launch's stream to the pump.
    pub fn attach(&self, reader: GuestStream) {
        if self.actor.cast(LogPumpMsg::Attach(reader)).is_err() {
            tracing::warn!(stream = %self.name, "log pump gone; output dropped");
        }
    }

    /// Drains to EOF within `timeout` (plus [`STOP_GRACE`] for the writer
    /// to finish what was read).
    pub async fn drain(&self, timeout: Duration) -> Drained {
        let bound = timeout + STOP_GRACE + DRAIN_ANSWER_MARGIN;
        crate::call::call(
            &self.actor,
            |reply| LogPumpMsg::Drain { timeout, reply },
            bound,
        )
        .await
        .unwrap_or(Drained {
            cut: true,
            writes_stuck: false,
        })
    }
}
