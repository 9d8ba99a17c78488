//! [`WriterThreads`]: the threads sinks' writers run on, kept a while after
//! a writer ends so that the next one (of any sink sharing them) reuses one
//! instead of creating a thread.
//!
//! A sink's writer runs only while its guest writes (see [`super::queue`]),
//! so with many sessions writers start and end all the time: at every
//! session's start (the guests' first lines) and stop (their last ones).
//! Creating a thread (its stack and signal stack mapped, its thread-local
//! state set up) and ending it (all of that unmapped again, which also
//! interrupts the other CPUs to flush their address caches) costs more
//! than most writers' whole work. So a thread whose writer has ended waits
//! [`IDLE_KEEP`] for another writer before it ends.
//!
//! There is no cap: a writer that finds no idle thread gets a new one, as
//! it did when every writer had a thread of its own. A writer stuck on a
//! hung disk therefore still holds its own thread and nothing else; it
//! never keeps another sink's writer waiting.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a thread with no writer to run waits for one before it ends.
pub const IDLE_KEEP: Duration = Duration::from_secs(10);

/// Stack of a writer thread: it only runs the writer's shallow calls.
const STACK_BYTES: usize = 256 * 1024;

/// A writer's work, run once on one of the threads.
type Job = Box<dyn FnOnce() + Send>;

/// Threads for log writers, shared by the sinks opened on them (see the
/// module docs). Cheap to clone; the idle threads end once the last clone
/// (the runner's, and each sink's) is gone.
#[derive(Clone)]
pub struct WriterThreads {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for WriterThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.owner.pool.lock();
        f.debug_struct("WriterThreads")
            .field("threads", &state.threads)
            .field("idle", &state.idle)
            .finish_non_exhaustive()
    }
}

impl Default for WriterThreads {
    fn default() -> Self {
        Self::new()
    }
}

/// The clones' share: dropping the last one lets the idle threads go.
struct Owner {
    pool: Arc<Pool>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.pool.lock().closed = true;
        self.pool.wake.notify_all();
    }
}

/// What the threads share (they hold no [`Owner`], so an idle thread never
/// keeps the pool open).
struct Pool {
    state: Mutex<State>,
    wake: Condvar,
    keep: Duration,
}

#[derive(Default)]
struct State {
    /// Jobs handed to idle threads and not yet taken.
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads alive (running a job or idle).
    threads: usize,
    /// No clone is left: idle threads end.
    closed: bool,
}

impl WriterThreads {
    /// No threads yet; they are created as writers need them.
    pub fn new() -> Self {
        Self::keeping(IDLE_KEEP)
    }

    /// Threads that wait `keep` for another writer before they end.
    fn keeping(keep: Duration) -> Self {
        Self {
            owner: Arc::new(Owner {
                pool: Arc::new(Pool {
                    state: Mutex::new(State::default()),
                    wake: Condvar::new(),
                    keep,
                }),
            }),
        }
    }

    /// Threads alive now: running a writer, or idle.
    pub fn threads(&self) -> usize {
        self.owner.pool.lock().threads
    }

    /// Threads waiting for a writer now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.owner.pool.lock().idle
    }

    /// Runs `job` on an idle thread, or on a new one if none is idle. An
    /// error means no thread could be created; `job` has been dropped.
    pub(crate) fn run(&self, job: Job) -> io::Result<()> {
        let pool = &self.owner.pool;
        let mut state = pool.lock();
        if state.idle > state.jobs.len() {
            state.jobs.push_back(job);
            drop(state);
            pool.wake.notify_one();
            return Ok(());
        }
        state.threads += 1;
        drop(state);
        let thread_pool = pool.clone();
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .stack_size(STACK_BYTES)
            .spawn(move || thread_pool.serve(job));
        if started.is_err() {
            pool.lock().threads -= 1;
        }
        started.map(drop)
    }
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A thread's life: `first`, then whatever jobs come within
    /// [`Pool::keep`] of the last one ending.
    fn serve(&self, first: Job) {
        let mut job = first;
        loop {
            // A panicking job (a bug) ends itself, not the thread: the
            // pool's counts stay right and the thread serves on.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("A log writer panicked");
            }
            match self.next_job() {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Waits as an idle thread for the next job; `None` when none came
    /// within the keep time or the pool closed (the thread is no longer
    /// counted then).
    fn next_job(&self) -> Option<Job> {
        let deadline = std::time::Instant::now() + self.keep;
        let mut state = self.lock();
        state.idle += 1;
        loop {
            // A job handed over is always taken, even after the deadline
            // or the close: it was counted against this idle thread.
            if let Some(job) = state.jobs.pop_front() {
                state.idle -= 1;
                return Some(job);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if state.closed || left.is_zero() {
                state.idle -= 1;
                state.threads -= 1;
                return None;
            }
            state = self
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(20);

    fn thread_id_of(threads: &WriterThreads) -> std::thread::ThreadId {
        let (tx, rx) = mpsc::channel();
        threads
            .run(Box::new(move || {
                tx.send(std::thread::current().id()).unwrap()
            }))
            .unwrap();
        rx.recv_timeout(WAIT).unwrap()
    }

    /// Polls `ok` until it holds, failing after [`WAIT`].
    fn wait_until(what: &str, ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "never {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until `threads` has `n` idle threads.
    fn wait_for_idle(threads: &WriterThreads, n: usize) {
        wait_until(&format!("{n} idle"), || threads.idle() == n);
    }

    #[test]
    fn a_job_after_another_ended_reuses_its_thread() {
        let threads = WriterThreads::new();
        let first = thread_id_of(&threads);
        wait_for_idle(&threads, 1);
        let second = thread_id_of(&threads);
        assert_eq!(first, second);
        assert_eq!(threads.threads(), 1);
    }

    #[test]
    fn a_stuck_job_never_holds_up_another() {
        let threads = WriterThreads::new();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (stuck_tx, stuck_rx) = mpsc::channel();
        threads
            .run(Box::new(move || {
                stuck_tx.send(()).unwrap();
                // A writer on a hung disk.
                release_rx.recv().unwrap();
            }))
            .unwrap();
        stuck_rx.recv_timeout(WAIT).unwrap();
        // No thread is idle: the next job gets a thread of its own and
        // runs while the first is still stuck.
        thread_id_of(&threads);
        assert_eq!(threads.threads(), 2);
        release_tx.send(()).unwrap();
        wait_for_idle(&threads, 2);
    }

    #[test]
    fn a_panicking_job_leaves_its_thread_serving() {
        let threads = WriterThreads::new();
        let first = thread_id_of(&threads);
        wait_for_idle(&threads, 1);
        let (taken_tx, taken_rx) = mpsc::channel();
        threads
            .run(Box::new(move || {
                taken_tx.send(()).unwrap();
                panic!("a writer's bug");
            }))
            .unwrap();
        taken_rx.recv_timeout(WAIT).unwrap();
        wait_for_idle(&threads, 1);
        assert_eq!(thread_id_of(&threads), first);
        assert_eq!(threads.threads(), 1);
    }

    #[test]
    fn idle_threads_end_after_the_keep_time() {
        let threads = WriterThreads::keeping(Duration::from_millis(20));
        thread_id_of(&threads);
        wait_until("no thread left", || threads.threads() == 0);
        // A later job gets a new thread.
        thread_id_of(&threads);
        assert_eq!(threads.threads(), 1);
    }

    #[test]
    fn idle_threads_end_when_the_last_clone_is_dropped() {
        let threads = WriterThreads::new();
        thread_id_of(&threads);
        wait_for_idle(&threads, 1);
        let pool = threads.owner.pool.clone();
        drop(threads);
        wait_until("the idle thread gone", || pool.lock().threads == 0);
    }

    #[test]
    fn many_jobs_at_once_all_run_and_later_rounds_reuse_the_threads() {
        let threads = WriterThreads::new();
        let (tx, rx) = mpsc::channel();
        for round in 0..4 {
            for i in 0..50 {
                let tx = tx.clone();
                threads
                    .run(Box::new(move || tx.send(round * 50 + i).unwrap()))
                    .unwrap();
            }
            let mut got: Vec<i32> = (0..50).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
            got.sort_unstable();
            assert_eq!(got, (round * 50..round * 50 + 50).collect::<Vec<_>>());
            wait_for_idle(&threads, threads.threads());
            // Every idle thread takes a job before a new one is created.
            assert!(threads.threads() <= 50, "{} threads", threads.threads());
        }
    }
}
