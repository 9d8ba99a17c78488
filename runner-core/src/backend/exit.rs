//! A one-shot, many-reader exit notification.
//!
//! A backend's waiter task holds the [`ExitNotifier`]; any number of
//! [`ExitWatch`] clones can await the exit or peek at it.

use runner_types::{ExitStatus, GuestExit};
use tokio::sync::watch;

/// Sends the exit, once.
#[derive(Debug)]
pub struct ExitNotifier(watch::Sender<Option<GuestExit>>);

/// Observes the exit.
#[derive(Debug, Clone)]
pub struct ExitWatch(watch::Receiver<Option<GuestExit>>);

/// A connected notifier/watch pair.
pub fn exit_channel() -> (ExitNotifier, ExitWatch) {
    let (tx, rx) = watch::channel(None);
    (ExitNotifier(tx), ExitWatch(rx))
}

impl ExitNotifier {
    /// Publishes the exit; later calls are ignored.
    pub fn notify(&self, exit: GuestExit) {
        self.0.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(exit);
            true
        });
    }

    /// A new watch on this notifier.
    pub fn watch(&self) -> ExitWatch {
        ExitWatch(self.0.subscribe())
    }
}

impl ExitWatch {
    /// The exit, if it has happened.
    pub fn get(&self) -> Option<GuestExit> {
        *self.0.borrow()
    }

    /// Waits for the exit. If the notifier is dropped without an exit, the
    /// guest is reported as killed by SIGKILL: its owner is gone.
    pub async fn wait(&mut self) -> GuestExit {
        let seen = self.0.wait_for(Option::is_some).await.map(|v| *v);
        match seen {
            Ok(Some(exit)) => exit,
            _ => self
                .get()
                .unwrap_or_else(|| exit_now(ExitStatus::Signal(9), false)),
        }
    }
}

/// A [`GuestExit`] stamped with the current time.
pub fn exit_now(status: ExitStatus, oom_killed: bool) -> GuestExit {
    GuestExit {
        status,
        at_unix_ms: crate::clock::unix_ms_now(),
        oom_killed,
        engine_lost: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_exit_wins_and_every_watch_sees_it() {
        let (tx, mut a) = exit_channel();
        let mut b = tx.watch();
        assert_eq!(a.get(), None);
        let first = exit_now(ExitStatus::Code(3), false);
        tx.notify(first);
        tx.notify(exit_now(ExitStatus::Code(4), false));
        assert_eq!(a.wait().await, first);
        assert_eq!(b.wait().await, first);
    }

    #[tokio::test]
    async fn dropped_notifier_reads_as_killed() {
        let (tx, mut a) = exit_channel();
        drop(tx);
        assert_eq!(a.wait().await.status, ExitStatus::Signal(9));
    }
}
