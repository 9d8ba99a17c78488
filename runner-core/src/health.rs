//! Building the health report from what the session knows (pure).

use crate::failure::FailureReason;
use runner_types::{
    DegradedReason, GuestRole, GuestState, GuestStatus, HealthStatus, LogStream, SandboxTier,
    StartupStatus,
};

/// Degraded-reason code: output of a guest stream was lost instead of
/// logged (the detail names the guest, the stream and the byte count).
pub const LOG_BYTES_DROPPED: &str = "log_bytes_dropped";

/// Phase of a whole session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionPhase {
    /// Guests are being launched.
    Starting,
    /// Start finished; guests may still exit and restart.
    Running,
    /// A guest exceeded its restart limit or could not be relaunched.
    Failed {
        /// Why.
        reason: FailureReason,
    },
    /// Ordered shutdown in progress.
    ShuttingDown,
    /// Everything stopped and cleaned up.
    Stopped,
}

impl SessionPhase {
    /// Shutting down or stopped.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Stopped)
    }
}

/// Inputs for [`health_report`].
#[derive(Debug, Clone)]
pub struct HealthInputs<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Tier in effect.
    pub tier: SandboxTier,
    /// What was set up.
    pub startup: &'a StartupStatus,
    /// Session phase.
    pub phase: &'a SessionPhase,
    /// Host log directory.
    pub log_dir: &'a str,
    /// Status of every configured guest.
    pub guests: &'a [GuestStatus],
    /// Whether the runtime can reach the sidecar now, on tiers where a
    /// runner-side link joins them (see
    /// `SandboxBackend::sidecar_link`); `true` elsewhere. While `false`,
    /// health claims no sidecar, shell or browser.
    pub sidecar_linked: bool,
    /// Bytes of output lost instead of logged so far, per guest stream
    /// (entries with 0 are ignored).
    pub log_bytes_dropped: &'a [(GuestRole, LogStream, u64)],
    /// Why the session runs degraded now, beyond what was known at start
    /// (for example `engine_unreachable`); added to
    /// `startup_status.degraded_reasons`.
    pub degraded: &'a [DegradedReason],
}

/// The `health_status` a session reports.
///
/// Healthy means: the session is running (not failed, not shutting down) and
/// every configured guest is in [`GuestState::Running`].
pub fn health_report(i: &HealthInputs<'_>) -> HealthStatus {
    let all_running = i.guests.iter().all(|g| g.state == GuestState::Running);
    let healthy = matches!(i.phase, SessionPhase::Running) && all_running;
    let message = match i.phase {
        SessionPhase::Failed { reason } => Some(format!("session failed: {}", reason.to_text())),
        SessionPhase::Starting => Some("starting".to_owned()),
        SessionPhase::ShuttingDown => Some("shutting down".to_owned()),
        SessionPhase::Stopped => Some("stopped".to_owned()),
        SessionPhase::Running if !all_running => Some(
            i.guests
                .iter()
                .filter(|g| g.state != GuestState::Running)
                .map(|g| format!("{} is {}", g.role, state_word(g.state)))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        SessionPhase::Running => None,
    };
    let runtime = i.guests.iter().find(|g| g.role == GuestRole::Runtime);
    let mut startup = i.startup.clone();
    startup.degraded_reasons.extend(i.degraded.iter().cloned());
    if !i.sidecar_linked {
        startup.sidecar_available = false;
        startup.shell_available = false;
        startup.browser_available = false;
    }
    let mut guests = i.guests.to_vec();
    for &(role, stream, bytes) in i.log_bytes_dropped.iter().filter(|l| l.2 > 0) {
        startup
            .degraded_reasons
            .push(log_bytes_dropped(role, stream, bytes));
        if let Some(g) = guests.iter_mut().find(|g| g.role == role) {
            g.log_bytes_dropped.insert(stream, bytes);
        }
    }
    HealthStatus {
        user_id: i.user_id.to_owned(),
        healthy,
        sandbox_tier: i.tier,
        shell_available: startup.shell_available,
        browser_available: startup.browser_available,
        startup_status: startup,
        shutdown: i.phase.is_shutdown(),
        message,
        log_dir: Some(i.log_dir.to_owned()),
        runtime_pid: runtime.and_then(|g| g.pid),
        runtime_container_name: runtime.and_then(|g| g.container_name.clone()),
        guests,
    }
}

/// [`LOG_BYTES_DROPPED`] for one guest stream.
pub fn log_bytes_dropped(role: GuestRole, stream: LogStream, bytes: u64) -> DegradedReason {
    DegradedReason {
        code: LOG_BYTES_DROPPED.into(),
        detail: format!(
            "{bytes} bytes of the {role} guest's {stream} were not logged (disk full, failing or too slow); \
             the gaps are recorded in {}.gaps",
            stream.file_name(role)
        ),
    }
}

fn state_word(s: GuestState) -> &'static str {
    match s {
        GuestState::Starting => "starting",
        GuestState::Running => "running",
        GuestState::BackingOff => "waiting to restart",
        GuestState::Exited => "exited",
        GuestState::Failed => "failed",
        GuestState::Stopping => "stopping",
        GuestState::Stopped => "stopped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(role: GuestRole, state: GuestState) -> GuestStatus {
        GuestStatus {
            state,
            pid: Some(42),
            ..GuestStatus::starting(role)
        }
    }

    /// Alice's running session on `tier` with these guests: no loss, no
    /// other degraded reason.
    fn running<'a>(
        tier: SandboxTier,
        startup: &'a StartupStatus,
        guests: &'a [GuestStatus],
        sidecar_linked: bool,
    ) -> HealthInputs<'a> {
        HealthInputs {
            user_id: "alice",
            tier,
            startup,
            phase: &SessionPhase::Running,
            log_dir: "/w/alice/logs",
            guests,
            sidecar_linked,
            log_bytes_dropped: &[],
            degraded: &[],
        }
    }

    fn startup() -> StartupStatus {
        StartupStatus {
            sandbox_tier: SandboxTier::Process,
            sidecar_available: true,
            shell_available: true,
            browser_available: false,
            degraded_reasons: vec![],
        }
    }

    #[test]
    fn healthy_only_when_running_and_all_guests_run() {
        let s = startup();
        let guests = [
            guest(GuestRole::Sidecar, GuestState::Running),
            guest(GuestRole::Runtime, GuestState::Running),
        ];
        let mut i = running(SandboxTier::Process, &s, &guests, true);
        let h = health_report(&i);
        assert!(h.healthy);
        assert!(h.startup_status.degraded_reasons.is_empty());

        // Loss is reported, per guest and as a degraded reason; the guest
        // still runs, so the session stays healthy.
        let lost = [
            (GuestRole::Runtime, LogStream::Stdout, 2_700_000),
            (GuestRole::Runtime, LogStream::Stderr, 0),
        ];
        i.log_bytes_dropped = &lost;
        let h = health_report(&i);
        assert!(h.healthy);
        let reasons = &h.startup_status.degraded_reasons;
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].code, LOG_BYTES_DROPPED);
        assert!(
            reasons[0].detail.contains("2700000 bytes"),
            "{}",
            reasons[0].detail
        );
        assert!(
            reasons[0].detail.contains("stdout"),
            "{}",
            reasons[0].detail
        );
        let runtime = h
            .guests
            .iter()
            .find(|g| g.role == GuestRole::Runtime)
            .unwrap();
        assert_eq!(
            runtime.log_bytes_dropped.get(&LogStream::Stdout),
            Some(&2_700_000)
        );
        assert_eq!(runtime.log_bytes_dropped.len(), 1);
        let sidecar = h
            .guests
            .iter()
            .find(|g| g.role == GuestRole::Sidecar)
            .unwrap();
        assert!(sidecar.log_bytes_dropped.is_empty());
        i.log_bytes_dropped = &[];
        assert_eq!(h.runtime_pid, Some(42));
        assert_eq!(h.message, None);

        let failed = SessionPhase::Failed {
            reason: FailureReason::RestartLimit {
                role: GuestRole::Runtime,
                restarts: 5,
                limit: 5,
                window: std::time::Duration::from_secs(60),
                last: runner_types::ExitStatus::Code(1),
            },
        };
        i.phase = &failed;
        let h = health_report(&i);
        assert!(!h.healthy);
        assert_eq!(
            h.message.as_deref(),
            Some(
                "session failed: the runtime guest hit its restart limit: 5 restarts within 60s (limit 5); last exit code 1"
            )
        );

        let backing = [guest(GuestRole::Runtime, GuestState::BackingOff)];
        i.phase = &SessionPhase::Running;
        i.guests = &backing;
        assert!(!health_report(&i).healthy);
    }

    #[test]
    fn no_shell_is_claimed_while_the_sidecar_link_is_down() {
        let s = startup();
        let guests = [guest(GuestRole::Runtime, GuestState::Running)];
        let mut i = running(SandboxTier::MicroVm, &s, &guests, false);
        let h = health_report(&i);
        assert!(!h.shell_available && !h.browser_available);
        assert!(!h.startup_status.shell_available && !h.startup_status.sidecar_available);
        i.sidecar_linked = true;
        let h = health_report(&i);
        assert!(h.shell_available && h.startup_status.sidecar_available);
    }
}
