//! [`ProcStat`]: the fields of `/proc/<pid>/stat` the runner reads, parsed
//! in one place (metrics, the Firecracker reaper's identity check, tests).
//!
//! The command name (field 2) may hold spaces and parentheses, so fields
//! are counted from the line's last `)`. Reads are of a pseudo-file the
//! kernel fills in memory; nothing here touches a disk.

use std::io::Read;
use std::path::Path;

/// Fields of one `/proc/<pid>/stat` line (numbered as in `proc(5)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: the state letter (`R`, `S`, `D`, `Z`, `X`, ...).
    pub state: u8,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 5: the process group.
    pub pgrp: u32,
    /// Field 6: the session.
    pub session: u32,
    /// Fields 14 to 17: user and system time, its own and that of the
    /// children it reaped, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22: start time, in clock ticks since boot.
    pub start_time: u64,
    /// Field 24: resident set, in pages.
    pub rss_pages: u64,
}

/// The last field parsed: 24 (rss).
const LAST_FIELD: usize = 24;

impl ProcStat {
    /// Parses one stat line; `None` if it is cut short or malformed.
    pub fn parse(line: &[u8]) -> Option<Self> {
        let close = line.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
        // Field N is at index N - 3 after the name.
        let mut fields = [""; LAST_FIELD - 2];
        let mut count = 0;
        for (slot, field) in fields.iter_mut().zip(rest.split_ascii_whitespace()) {
            *slot = field;
            count += 1;
        }
        if count < fields.len() {
            return None;
        }
        let num = |n: usize| fields[n - 3].parse::<u64>().ok();
        let id = |n: usize| num(n).and_then(|v| u32::try_from(v).ok());
        Some(Self {
            state: *fields[0].as_bytes().first()?,
            ppid: id(4)?,
            pgrp: id(5)?,
            session: id(6)?,
            cpu_ticks: num(14)? + num(15)? + num(16)? + num(17)?,
            start_time: num(22)?,
            rss_pages: num(24)?,
        })
    }

    /// Reads and parses `/proc/<pid>/stat`; `None` if there is no such
    /// process (or the line cannot be parsed).
    pub fn of(pid: u32) -> Option<Self> {
        let mut buf = Vec::with_capacity(512);
        Self::read_at(
            &Path::new("/proc").join(pid.to_string()).join("stat"),
            &mut buf,
        )
    }

    /// Reads and parses the stat file at `path`, reusing `buf`.
    pub fn read_at(path: &Path, buf: &mut Vec<u8>) -> Option<Self> {
        buf.clear();
        std::fs::File::open(path).ok()?.read_to_end(buf).ok()?;
        Self::parse(buf)
    }

    /// Whether the process still runs: neither a zombie nor dead.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, b'Z' | b'X')
    }
}

/// Whether a process with this pid exists and still runs (a zombie counts
/// as gone).
pub fn process_running(pid: u32) -> bool {
    ProcStat::of(pid).is_some_and(|stat| stat.is_running())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_last_parenthesis() {
        let line = b"4242 (a b) c)) S 1 4240 4239 0 -1 4194560 10 0 0 0 7 3 2 1 20 0 1 0 555 1000000 250 18446744073709551615\n";
        assert_eq!(
            ProcStat::parse(line),
            Some(ProcStat {
                state: b'S',
                ppid: 1,
                pgrp: 4240,
                session: 4239,
                cpu_ticks: 13,
                start_time: 555,
                rss_pages: 250,
            })
        );
        assert_eq!(ProcStat::parse(b"4242 (x) S 1 2"), None);
        assert_eq!(ProcStat::parse(b"garbage"), None);
        let zombie = b"7 (z) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0 0\n";
        assert!(!ProcStat::parse(zombie).unwrap().is_running());
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let me = std::process::id();
        let stat = ProcStat::of(me).expect("our own stat");
        assert!(stat.is_running());
        assert_eq!(stat.pgrp, nix::unistd::getpgrp().as_raw() as u32);
        assert_eq!(stat.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(stat.rss_pages > 0);
        assert!(process_running(me));
        assert!(!process_running(u32::MAX));
    }
}
