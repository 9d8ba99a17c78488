//! [`EventHistory`]: a session's lifecycle events with sequence numbers,
//! the newest kept in a bounded ring, for the control socket's `events` op.
//!
//! Sequence numbers start at the history's creation time in microseconds
//! and then increase by one per event, so a cursor from an earlier session
//! (an earlier daemon for the same user) is always recognised as foreign
//! rather than read as a position in this one. Events that fell out of the
//! ring, or a foreign cursor, are reported as an [`EventGap`], never
//! skipped silently.

use crate::clock::unix_ms_now;
use crate::control::since::rfc3339_ms;
use runner_types::GuestRole;
use runner_types::events::{EventGap, EventKind, EventRecord};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Events a session keeps by default (an event is a few hundred bytes).
pub const DEFAULT_EVENT_HISTORY: usize = 1024;

/// A session's recent events. Cheap to clone; clones share the history.
#[derive(Debug, Clone)]
pub struct EventHistory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // std Mutex: held only to push or copy a few records, never across an
    // await.
    ring: Mutex<Ring>,
    /// The newest event's `seq` (`first - 1` before any), for followers.
    latest: watch::Sender<u64>,
}

#[derive(Debug)]
struct Ring {
    records: VecDeque<EventRecord>,
    capacity: usize,
    /// The first `seq` this history ever gives.
    first: u64,
    /// The `seq` the next event gets.
    next: u64,
}

/// Events after a cursor, as far as one read goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsAfter {
    /// Events asked for but no longer kept (or a foreign cursor).
    pub gap: Option<EventGap>,
    /// The events, oldest first.
    pub events: Vec<EventRecord>,
    /// Resume point: the last event's `seq`, else the cursor (moved past a
    /// gap).
    pub cursor: u64,
    /// More events are kept after `cursor` than `max` allowed.
    pub more: bool,
}

impl EventHistory {
    /// An empty history keeping the newest `capacity` events (at least 1),
    /// numbered from the current time in microseconds.
    pub fn new(capacity: usize) -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self::starting_at(capacity, micros.max(1))
    }

    /// An empty history whose first event gets `seq` `first` (at least 1).
    pub fn starting_at(capacity: usize, first: u64) -> Self {
        let first = first.max(1);
        let ring = Ring {
            // Grown as events come: most sessions record a handful, and a
            // thousand sessions must not each hold room for the maximum.
            records: VecDeque::new(),
            capacity: capacity.max(1),
            first,
            next: first,
        };
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(ring),
                latest: watch::Sender::new(first - 1),
            }),
        }
    }

    /// Records an event now; returns its `seq`.
    pub fn record(&self, role: Option<GuestRole>, kind: EventKind) -> u64 {
        let mut ring = self.lock();
        let seq = ring.next;
        ring.next += 1;
        if ring.records.len() == ring.capacity {
            ring.records.pop_front();
        }
        ring.records.push_back(EventRecord {
            seq,
            timestamp: rfc3339_ms(unix_ms_now()),
            role,
            kind,
        });
        // Under the lock: followers never see a `seq` before its record.
        self.inner.latest.send_replace(seq);
        seq
    }

    /// Position before every event (what a request without `after` means).
    pub fn origin(&self) -> u64 {
        self.lock().first - 1
    }

    /// The newest event's `seq` (the origin if none yet).
    pub fn latest(&self) -> u64 {
        *self.inner.latest.borrow()
    }

    /// Changes whenever an event is recorded (its value is the newest `seq`).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.inner.latest.subscribe()
    }

    /// Up to `max` (at least 1) events after `cursor`, and the gap before
    /// them if events after `cursor` are no longer kept.
    pub fn after(&self, cursor: u64, max: usize) -> EventsAfter {
        let ring = self.lock();
        let oldest = ring.records.front().map_or(ring.next, |r| r.seq);
        let foreign = cursor + 1 < ring.first || cursor >= ring.next;
        let gap = if foreign {
            Some(EventGap {
                after: cursor,
                resumed_at: oldest,
                missed: None,
            })
        } else if cursor + 1 < oldest {
            Some(EventGap {
                after: cursor,
                resumed_at: oldest,
                missed: Some(oldest - cursor - 1),
            })
        } else {
            None
        };
        let from = if gap.is_some() { oldest - 1 } else { cursor };
        let skip = usize::try_from((from + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        let max = max.max(1);
        let events: Vec<EventRecord> = ring.records.iter().skip(skip).take(max).cloned().collect();
        let cursor = events.last().map_or(from, |e| e.seq);
        EventsAfter {
            gap,
            more: cursor + 1 < ring.next,
            events,
            cursor,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.inner
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(a: &EventsAfter) -> Vec<u64> {
        a.events.iter().map(|e| e.seq).collect()
    }

    fn history(capacity: usize, events: usize) -> EventHistory {
        let h = EventHistory::starting_at(capacity, 100);
        for _ in 0..events {
            h.record(None, EventKind::Stopping);
        }
        h
    }

    #[test]
    fn numbers_increase_and_a_cursor_resumes_without_gap_or_repeat() {
        let h = history(10, 3);
        assert_eq!(h.origin(), 99);
        assert_eq!(h.latest(), 102);
        let all = h.after(h.origin(), 100);
        assert_eq!(
            (seqs(&all), all.gap, all.cursor, all.more),
            (vec![100, 101, 102], None, 102, false)
        );
        let first = h.after(99, 2);
        assert_eq!((seqs(&first), first.more), (vec![100, 101], true));
        h.record(Some(GuestRole::Runtime), EventKind::Stopped);
        let rest = h.after(first.cursor, 100);
        assert_eq!((seqs(&rest), rest.gap), (vec![102, 103], None));
        // Caught up: nothing, and the cursor stays.
        let none = h.after(103, 100);
        assert_eq!((none.events.len(), none.gap, none.cursor), (0, None, 103));
    }

    #[test]
    fn overflow_is_reported_as_a_gap_with_the_count() {
        let h = history(4, 10); // keeps 106..=109
        let a = h.after(101, 100);
        assert_eq!(
            a.gap,
            Some(EventGap {
                after: 101,
                resumed_at: 106,
                missed: Some(4)
            })
        );
        assert_eq!(seqs(&a), vec![106, 107, 108, 109]);
        // Right before the oldest kept one: no gap.
        assert_eq!(h.after(105, 100).gap, None);
        // Without a cursor, everything from the origin was asked for.
        assert_eq!(h.after(h.origin(), 100).gap.unwrap().missed, Some(6));
    }

    #[test]
    fn a_foreign_cursor_is_a_gap_of_unknown_size() {
        let h = history(4, 2);
        for cursor in [5, 500] {
            let a = h.after(cursor, 100);
            let gap = a.gap.unwrap();
            assert_eq!((gap.after, gap.resumed_at, gap.missed), (cursor, 100, None));
            assert_eq!(seqs(&a), vec![100, 101]);
        }
    }

    #[tokio::test]
    async fn the_watch_moves_with_each_event() {
        let h = history(4, 0);
        let mut w = h.watch();
        let seq = h.record(None, EventKind::SessionStarted);
        w.changed().await.unwrap();
        assert_eq!(*w.borrow(), seq);
    }
}
