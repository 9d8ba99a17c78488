//! Waiting for a line in log files without a polling interval.
//!
//! The session benchmarks' baselines read their guests' pipes and wake the
//! moment a line arrives; the runner's side must be read from its log
//! files. An inotify watch on the files' directories wakes the waiter at
//! the runner's first write to a file (creation included), so what it
//! measures is the runner's latency, not a polling period, and it does not
//! take CPU from the start it measures while it waits.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a wait looks for a directory that did not exist yet (a new
/// user's `logs/`, created by the start being measured).
const DIR_RETRY: Duration = Duration::from_micros(200);

/// An inotify instance watching some directories for writes to the files
/// in them. Set it up before the clock starts; [`LogWatch::wait`] then
/// blocks the calling thread (run it on a blocking thread).
pub struct LogWatch {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl LogWatch {
    /// Watches each distinct directory in `dirs` that exists; the others
    /// are watched by [`LogWatch::wait`] once they appear.
    pub fn on<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Self {
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).expect("inotify_init1");
        let mut watch = Self {
            inotify,
            dirs: HashMap::new(),
        };
        for dir in dirs {
            watch.watch(dir);
        }
        watch
    }

    /// Watches `dir` unless it is watched already; whether it is now.
    fn watch(&mut self, dir: &Path) -> bool {
        if self.dirs.values().any(|d| d == dir) {
            return true;
        }
        let flags =
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO;
        match self.inotify.add_watch(dir, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.to_path_buf());
                true
            }
            Err(nix::errno::Errno::ENOENT) => false,
            Err(e) => panic!("inotify watch on {}: {e}", dir.display()),
        }
    }

    /// Closes the watch on a thread of its own. Closing an inotify
    /// instance waits for the kernel's notification readers to leave
    /// (an SRCU grace period, milliseconds here), which must not land in
    /// what a benchmark measures.
    pub fn close_in_background(self) {
        std::thread::spawn(move || drop(self));
    }

    /// Blocks until each file holds `needle` somewhere past its offset. A
    /// file is read again only when an event names it (all of them after
    /// an event-queue overflow). The first file still without `needle`
    /// after `timeout` is the error.
    pub fn wait(
        &mut self,
        files: &[(PathBuf, u64)],
        needle: &str,
        timeout: Duration,
    ) -> Result<(), PathBuf> {
        let deadline = Instant::now() + timeout;
        let mut unwatched: Vec<&Path> = files.iter().filter_map(|(p, _)| p.parent()).collect();
        let mut pending: HashMap<&Path, u64> = HashMap::new();
        let mut recheck_all = true;
        loop {
            // A directory watched from now on: its files may have been
            // written before, so they are all read once.
            let before = unwatched.len();
            unwatched.retain(|dir| !self.watch(dir));
            recheck_all |= unwatched.len() < before;
            if recheck_all {
                pending = files
                    .iter()
                    .filter(|(path, from)| !holds_past(path, *from, needle))
                    .map(|(path, from)| (path.as_path(), *from))
                    .collect();
                recheck_all = false;
            }
            let Some(first) = pending.keys().next() else {
                return Ok(());
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(first.to_path_buf());
            }
            if unwatched.is_empty() {
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => panic!("poll on inotify: {e}"),
                }
            } else {
                std::thread::sleep(DIR_RETRY.min(left));
            }
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => panic!("reading inotify events: {e}"),
            };
            let mut named = Vec::new();
            for event in events {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    recheck_all = true;
                } else if let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), event.name) {
                    named.push(dir.join(name));
                }
            }
            if !recheck_all {
                pending.retain(|path, from| {
                    !(named.iter().any(|n| n == path) && holds_past(path, *from, needle))
                });
            }
        }
    }
}

/// Whether the file at `path` holds `needle` past byte `from`.
fn holds_past(path: &Path, from: u64, needle: &str) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return false;
    }
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}
