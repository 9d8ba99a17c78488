//! Finding and ending VMs a previous runner left running.
//!
//! Why this exists: the parent-death signal that ends an unjailed VM with
//! its runner is cleared by the kernel when the jailer changes uid, so a
//! jailed VM survives a SIGKILLed runner. Two records let the next session
//! start find it:
//! - an ownership record `run/<label>-firecracker.owner` written just
//!   after the spawn (by the VM's waiter, while the launch returns):
//!   `<pid> <start time>`, the start time (field 22 of
//!   `/proc/<pid>/stat`, unchanged by the jailer's exec) guarding against a
//!   reused pid;
//! - the jail's cgroups `firecracker/<jail id>`, whose `cgroup.procs` lists
//!   the VM even if the runner died before writing the record.
//!
//! [`reap`] SIGKILLs what both name, waits (bounded) until it is gone, then
//! removes the record, the cgroup directories and the jail directory.

use super::jail::JailLayout;
use super::launch::remove_if_present;
use crate::procfs::{ProcStat, process_running};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use runner_types::GuestRole;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`reap`] waits for killed processes to disappear.
pub const REAP_WAIT: Duration = Duration::from_secs(5);

/// The ownership record of `role`'s VM under `run`.
pub fn record_path(run: &Path, role: GuestRole) -> PathBuf {
    run.join(format!("{}-firecracker.owner", role.label()))
}

/// Writes the record of `pid`, started at `start` (see [`start_time`]), to
/// `path`, mode 0600, replacing any earlier one.
pub fn write_record(path: &Path, pid: u32, start: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    remove_if_present(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{pid} {start}\n").as_bytes())
}

/// Removes the record at `path` if present, logging a failure.
pub fn remove_record(path: &Path) {
    if let Err(e) = remove_if_present(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove VM ownership record");
    }
}

/// What [`reap`] ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Pids that were killed.
    pub killed: Vec<u32>,
    /// Pids still present after [`REAP_WAIT`].
    pub survivors: Vec<u32>,
}

/// Kills whatever `record` and `jail`'s cgroups name, waits for it, then
/// removes the record, the cgroups and the jail directory. Blocking.
pub fn reap(record: &Path, jail: Option<&JailLayout>) -> Reaped {
    let mut targets: Vec<u32> = read_record(record)
        .filter(|(pid, start)| start_time(*pid) == Some(*start))
        .map(|(pid, _)| pid)
        .into_iter()
        .collect();
    if let Some(jail) = jail {
        for dir in jail.cgroup_dirs() {
            targets.extend(cgroup_procs(&dir));
        }
    }
    targets.sort_unstable();
    targets.dedup();
    for pid in &targets {
        match kill(Pid::from_raw(*pid as i32), Signal::SIGKILL) {
            Ok(()) => {
                tracing::warn!(pid, record = %record.display(), "killed a VM left by an earlier runner")
            }
            Err(e) => tracing::debug!(pid, error = %e, "cannot kill leftover VM"),
        }
    }
    // Wait until the killed processes are gone and, so that the cgroups can
    // be removed, reaped by their new parent (a zombie stays listed in its
    // cgroup). Bounded: a parent that never reaps only delays the removal.
    let cgroups = jail.map(JailLayout::cgroup_dirs).unwrap_or_default();
    let deadline = Instant::now() + REAP_WAIT;
    let mut survivors: Vec<u32> = targets.clone();
    loop {
        survivors.retain(|p| process_running(*p));
        let listed = cgroups.iter().any(|d| !cgroup_procs(d).is_empty());
        if (survivors.is_empty() && !listed) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in &survivors {
        tracing::warn!(pid, "leftover VM did not exit after SIGKILL");
    }
    remove_record(record);
    if let Some(jail) = jail {
        remove_jail(jail);
    }
    Reaped {
        killed: targets,
        survivors,
    }
}

/// Removes `jail`'s directory and (empty) cgroups, logging failures.
pub fn remove_jail(jail: &JailLayout) {
    // remove_dir_all does not follow symlinks, so a guest-owned chroot
    // cannot steer it outside the jail.
    match std::fs::remove_dir_all(&jail.instance_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %jail.instance_dir.display(), error = %e, "cannot remove jail");
        }
        _ => {}
    }
    for dir in jail.cgroup_dirs() {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove VM cgroup");
            }
            _ => {}
        }
    }
}

/// Pids listed in a cgroup v1 directory (none when it does not exist).
pub fn cgroup_procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn read_record(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((pid, start))
}

/// Start time of `pid` in clock ticks since boot (see [`ProcStat`]).
pub fn start_time(pid: u32) -> Option<u64> {
    ProcStat::of(pid).map(|stat| stat.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_a_live_process_only_with_its_start_time() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record_path(dir.path(), GuestRole::Runtime);
        assert!(rec.ends_with("oxydra-vm-firecracker.owner"));
        let me = std::process::id();
        write_record(&rec, me, start_time(me).unwrap()).unwrap();
        let (pid, start) = read_record(&rec).unwrap();
        assert_eq!(pid, me);
        assert_eq!(start_time(me), Some(start));

        // A record whose start time does not match (a reused pid) is not
        // acted on: reaping it kills nothing (certainly not this process).
        std::fs::write(&rec, format!("{me} {}\n", start + 1)).unwrap();
        let reaped = reap(&rec, None);
        assert!(reaped.killed.is_empty(), "{reaped:?}");
        assert!(!rec.exists(), "the record is removed");
    }

    #[test]
    fn a_recorded_process_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record_path(dir.path(), GuestRole::Sidecar);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write_record(&rec, child.id(), start_time(child.id()).unwrap()).unwrap();
        // Reap from another thread: `reap` waits for the pid to disappear,
        // which for our own child means being reaped by us.
        let waiter = std::thread::spawn(move || child.wait().unwrap());
        let reaped = reap(&rec, None);
        let status = waiter.join().unwrap();
        assert_eq!(reaped.survivors, Vec::<u32>::new());
        assert_eq!(reaped.killed.len(), 1);
        assert!(!status.success());
    }
}
