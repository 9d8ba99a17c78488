//! The restart policy as a pure state machine (no clocks, no tasks): the
//! guest actor feeds it exits with their time and does what it answers.

use crate::config::RestartConfig;
use crate::failure::FailureReason;
use runner_types::config::RestartPolicy;
use runner_types::{ExitStatus, GuestRole};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What to do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start the guest again after this delay.
    Restart {
        /// Backoff before the relaunch.
        after: Duration,
        /// 1-based restart number within this session.
        attempt: u32,
    },
    /// The policy says this exit is final (for example exit 0 under on-failure).
    Done,
    /// Too many restarts within the window: the session is failed.
    GiveUp {
        /// Why ([`FailureReason::RestartLimit`]).
        reason: FailureReason,
    },
}

/// Tracks restarts of one guest.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    role: GuestRole,
    config: RestartConfig,
    recent: VecDeque<Instant>,
    consecutive: u32,
    total: u32,
}

impl RestartTracker {
    /// A tracker of `role`'s restarts with no history.
    pub fn new(role: GuestRole, config: RestartConfig) -> Self {
        Self {
            role,
            config,
            recent: VecDeque::new(),
            consecutive: 0,
            total: 0,
        }
    }

    /// Restarts decided so far.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Decides what follows an exit with `status` seen at `now`.
    ///
    /// `ran_for` is how long the guest ran: a run longer than the window
    /// resets the backoff, so a guest that crashes once a day restarts fast.
    pub fn on_exit(
        &mut self,
        status: ExitStatus,
        now: Instant,
        ran_for: Duration,
    ) -> RestartDecision {
        let wanted = match self.config.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        };
        if !wanted {
            return RestartDecision::Done;
        }
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) > self.config.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if ran_for > self.config.window {
            self.consecutive = 0;
        }
        if self.recent.len() as u32 >= self.config.max_restarts {
            return RestartDecision::GiveUp {
                reason: FailureReason::RestartLimit {
                    role: self.role,
                    restarts: self.recent.len() as u32,
                    limit: self.config.max_restarts,
                    window: self.config.window,
                    last: status,
                },
            };
        }
        let after = self.backoff(self.consecutive);
        self.recent.push_back(now);
        self.consecutive += 1;
        self.total += 1;
        RestartDecision::Restart {
            after,
            attempt: self.total,
        }
    }

    fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.config
            .backoff_initial
            .checked_mul(factor)
            .unwrap_or(self.config.backoff_max)
            .min(self.config.backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(policy: RestartPolicy) -> RestartConfig {
        RestartConfig {
            policy,
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let mut t = RestartTracker::new(GuestRole::Runtime, cfg(RestartPolicy::OnFailure));
        let now = Instant::now();
        let fail = ExitStatus::Code(1);
        let short = Duration::from_millis(5);
        let after = |d: RestartDecision| match d {
            RestartDecision::Restart { after, .. } => after,
            other => panic!("expected restart, got {other:?}"),
        };
        assert_eq!(
            after(t.on_exit(fail, now, short)),
            Duration::from_millis(100)
        );
        assert_eq!(
            after(t.on_exit(fail, now, short)),
            Duration::from_millis(200)
        );
        assert_eq!(
            after(t.on_exit(fail, now, short)),
            Duration::from_millis(350)
        );
        assert_eq!(
            t.on_exit(fail, now, short),
            RestartDecision::GiveUp {
                reason: FailureReason::RestartLimit {
                    role: GuestRole::Runtime,
                    restarts: 3,
                    limit: 3,
                    window: Duration::from_secs(60),
                    last: fail,
                }
            }
        );
        assert_eq!(t.total(), 3);
    }

    #[test]
    fn window_slides() {
        let mut t = RestartTracker::new(GuestRole::Runtime, cfg(RestartPolicy::Always));
        let start = Instant::now();
        let short = Duration::from_millis(5);
        for _ in 0..3 {
            assert!(matches!(
                t.on_exit(ExitStatus::Code(0), start, short),
                RestartDecision::Restart { .. }
            ));
        }
        let later = start + Duration::from_secs(61);
        assert!(matches!(
            t.on_exit(ExitStatus::Code(0), later, short),
            RestartDecision::Restart { .. }
        ));
    }

    #[test]
    fn policies() {
        let now = Instant::now();
        let d = Duration::ZERO;
        let mut never = RestartTracker::new(GuestRole::Runtime, cfg(RestartPolicy::Never));
        assert_eq!(
            never.on_exit(ExitStatus::Signal(9), now, d),
            RestartDecision::Done
        );
        let mut on_failure = RestartTracker::new(GuestRole::Runtime, cfg(RestartPolicy::OnFailure));
        assert_eq!(
            on_failure.on_exit(ExitStatus::Code(0), now, d),
            RestartDecision::Done
        );
        assert!(matches!(
            on_failure.on_exit(ExitStatus::Signal(9), now, d),
            RestartDecision::Restart { attempt: 1, .. }
        ));
    }

    #[test]
    fn long_run_resets_backoff() {
        let mut t = RestartTracker::new(GuestRole::Runtime, cfg(RestartPolicy::Always));
        let now = Instant::now();
        t.on_exit(ExitStatus::Code(1), now, Duration::ZERO);
        t.on_exit(ExitStatus::Code(1), now, Duration::ZERO);
        let d = t.on_exit(ExitStatus::Code(1), now, Duration::from_secs(3600));
        assert!(
            matches!(d, RestartDecision::Restart { after, .. } if after == Duration::from_millis(100))
        );
    }
}
