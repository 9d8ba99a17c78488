//! The service-manager notification protocol (`sd_notify`): with
//! `NOTIFY_SOCKET` set (systemd `Type=notify`), the daemon sends
//! `READY=1` once its control socket serves and every readiness check has
//! settled, `STATUS=` lines when what health says changes, and
//! `STOPPING=1` when the shutdown begins. One datagram per message on a
//! Unix datagram socket; no library needed.

use anyhow::Context;
use runner_core::readiness::NOT_READY;
use runner_types::{GuestState, HealthStatus};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go.
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The manager's socket from `NOTIFY_SOCKET` (a path, or `@name` for
    /// an abstract socket); `None` when it is unset or empty.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str());
        let to = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&value),
        }
        .with_context(|| format!("Invalid NOTIFY_SOCKET {value:?}"))?;
        let socket = UnixDatagram::unbound().context("Cannot create the notification socket")?;
        Ok(Some(Self { socket, to }))
    }

    /// Sends one notification; a failure is logged, never fatal (the
    /// manager may be gone, the runner's work goes on).
    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::warn!(error = %e, message, "cannot notify the service manager");
        }
    }
}

/// What the daemon has told the service manager so far.
pub struct ServiceNotify {
    notifier: Option<Notifier>,
    ready_sent: bool,
    stopping_sent: bool,
    last_status: String,
}

impl ServiceNotify {
    /// Notifies through `notifier` (`None`: no manager, nothing is sent).
    pub fn new(notifier: Option<Notifier>) -> Self {
        Self {
            notifier,
            ready_sent: false,
            stopping_sent: false,
            last_status: String::new(),
        }
    }

    /// Called with every health snapshot once the control socket serves:
    /// `READY=1` the first time the session is settled, `STATUS=` when
    /// the status line changes, `STOPPING=1` once health says shutdown.
    pub fn on_health(&mut self, health: &HealthStatus) {
        if self.notifier.is_none() {
            return;
        }
        if health.shutdown {
            self.stopping();
            return;
        }
        let status = status_line(health);
        let ready = !self.ready_sent && settled(health);
        if status == self.last_status && !ready {
            return;
        }
        let message = match ready {
            true => format!("READY=1\nSTATUS={status}"),
            false => format!("STATUS={status}"),
        };
        self.ready_sent |= ready;
        self.last_status = status;
        if let Some(n) = &self.notifier {
            n.send(&message);
        }
    }

    /// `STOPPING=1`, once.
    pub fn stopping(&mut self) {
        if std::mem::replace(&mut self.stopping_sent, true) {
            return;
        }
        if let Some(n) = &self.notifier {
            n.send("STOPPING=1\nSTATUS=shutting down");
        }
    }
}

/// Every guest is past its launch and every readiness check has passed or
/// missed its timeout (a guest not ready in time is degraded, reported
/// `not_ready`, and must not hold the service's start forever).
fn settled(h: &HealthStatus) -> bool {
    let pending = h.guests.iter().filter(|g| g.ready == Some(false)).count();
    let timed_out = h
        .startup_status
        .degraded_reasons
        .iter()
        .filter(|r| r.code == NOT_READY)
        .count();
    !h.guests.is_empty()
        && h.guests.iter().all(|g| g.state != GuestState::Starting)
        && pending <= timed_out
}

/// One line: each guest's state and readiness, then why the session is
/// unhealthy or degraded, if it is.
fn status_line(h: &HealthStatus) -> String {
    let guests = h
        .guests
        .iter()
        .map(|g| {
            let state = g.state.as_str();
            match g.ready {
                Some(true) => format!("{} {state}, ready", g.role),
                Some(false) => format!("{} {state}, not ready", g.role),
                None => format!("{} {state}", g.role),
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut line = format!(
        "{}: {guests}",
        if h.healthy { "healthy" } else { "unhealthy" }
    );
    let codes: Vec<&str> = h
        .startup_status
        .degraded_reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect();
    if !codes.is_empty() {
        line.push_str(&format!("; degraded: {}", codes.join(", ")));
    }
    if let Some(m) = h.message.as_deref().filter(|_| !h.healthy) {
        line.push_str(&format!("; {m}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_core::health::{HealthInputs, SessionPhase, health_report};
    use runner_types::{DegradedReason, GuestRole, GuestStatus, SandboxTier, StartupStatus};

    fn health(guests: Vec<GuestStatus>, degraded: &[&str]) -> HealthStatus {
        let startup = StartupStatus {
            sandbox_tier: SandboxTier::Process,
            sidecar_available: true,
            shell_available: true,
            browser_available: false,
            degraded_reasons: Vec::new(),
        };
        let degraded: Vec<DegradedReason> = degraded
            .iter()
            .map(|c| DegradedReason {
                code: (*c).into(),
                detail: String::new(),
            })
            .collect();
        health_report(&HealthInputs {
            user_id: "alice",
            tier: SandboxTier::Process,
            startup: &startup,
            phase: &SessionPhase::Running,
            log_dir: "/nowhere",
            guests: &guests,
            sidecar_linked: true,
            log_bytes_dropped: &[],
            degraded: &degraded,
        })
    }

    fn guest(role: GuestRole, state: GuestState, ready: Option<bool>) -> GuestStatus {
        GuestStatus {
            state,
            ready,
            ..GuestStatus::starting(role)
        }
    }

    #[test]
    fn settled_waits_for_launches_and_checks() {
        use GuestRole::{Runtime, Sidecar};
        use GuestState::{Running, Starting};
        assert!(!settled(&health(vec![], &[])));
        assert!(!settled(&health(vec![guest(Runtime, Starting, None)], &[])));
        let sidecar = guest(Sidecar, Running, None);
        assert!(settled(&health(
            vec![sidecar.clone(), guest(Runtime, Running, None)],
            &[]
        )));
        let pending = vec![sidecar.clone(), guest(Runtime, Running, Some(false))];
        assert!(!settled(&health(pending.clone(), &[])));
        assert!(settled(&health(pending, &[NOT_READY])));
        let passed = health(vec![sidecar, guest(Runtime, Running, Some(true))], &[]);
        assert!(settled(&passed));
        assert_eq!(
            status_line(&passed),
            "healthy: sidecar running; runtime running, ready"
        );
    }
}
