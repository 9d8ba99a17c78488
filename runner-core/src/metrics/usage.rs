//! CPU time and resident memory of a guest, read from the kernel: a host
//! process group from `/proc` (process tier, and a microVM's firecracker
//! process), a container from its cgroup (Docker's `cgroupfs` layout, v1 or
//! v2, or the `systemd` one).
//!
//! Plain reads of pseudo-files that the kernel fills in memory; nothing
//! here touches a disk.

use crate::procfs::ProcStat;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a guest uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time (user + system) consumed, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.cpu_seconds += other.cpu_seconds;
        self.resident_bytes += other.resident_bytes;
    }
}

/// Where the kernel's files are (the real roots by default; tests point
/// them at fixtures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRoots {
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// The cgroup hierarchy, normally `/sys/fs/cgroup`.
    pub cgroup: PathBuf,
}

impl Default for UsageRoots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            cgroup: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Kernel units: clock ticks per second and the page size.
#[derive(Debug, Clone, Copy)]
struct Units {
    ticks_per_second: f64,
    page_bytes: u64,
}

impl Units {
    fn of_this_host() -> Self {
        Self {
            ticks_per_second: rustix::param::clock_ticks_per_second() as f64,
            page_bytes: rustix::param::page_size() as u64,
        }
    }
}

/// Usage per process group, from one pass over `/proc`: every process's
/// CPU time (its own and that of the children it reaped) and resident set
/// are added to its group's total. A guest's group is the whole tree it
/// started (the process tier starts each guest as a group leader, and the
/// firecracker process leads its own). Shared pages count once per process
/// that maps them, as the kernel's per-process RSS does.
#[derive(Debug, Default)]
pub struct ProcessGroups {
    by_group: HashMap<u32, Usage>,
}

impl ProcessGroups {
    /// Scans `proc_root` for the processes of the groups in `wanted`.
    pub fn scan(proc_root: &Path, wanted: &HashSet<u32>) -> Self {
        let mut out = Self::default();
        if wanted.is_empty() {
            return out;
        }
        let Ok(dir) = std::fs::read_dir(proc_root) else {
            return out;
        };
        let units = Units::of_this_host();
        let mut buf = Vec::with_capacity(512);
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = proc_root.join(pid).join("stat");
            // A process may exit between the listing and the read: skip it.
            if let Some(stat) = ProcStat::read_at(&path, &mut buf)
                && wanted.contains(&stat.pgrp)
            {
                let usage = Usage {
                    cpu_seconds: stat.cpu_ticks as f64 / units.ticks_per_second,
                    resident_bytes: stat.rss_pages * units.page_bytes,
                };
                out.by_group.entry(stat.pgrp).or_default().add(usage);
            }
        }
        out
    }

    /// The total of group `pgid`, if any of its processes was seen.
    pub fn group(&self, pgid: u32) -> Option<Usage> {
        self.by_group.get(&pgid).copied()
    }
}

/// Usage of the container with id `id`, from its cgroup: cgroup v1
/// (`cpuacct.usage`, `memory.stat` `total_rss` + `total_mapped_file`) or
/// v2 (`cpu.stat` `usage_usec`, `memory.stat` `anon` + `file_mapped`),
/// under Docker's `cgroupfs` parent `docker/<id>` or the `systemd` one
/// `system.slice/docker-<id>.scope`. `None` if no such cgroup exists (the
/// container is gone, or the engine uses another parent).
pub fn container_usage(cgroup_root: &Path, id: &str) -> Option<Usage> {
    let parents = [
        PathBuf::from("docker").join(id),
        PathBuf::from("system.slice").join(format!("docker-{id}.scope")),
    ];
    let v1_cpu = cgroup_root.join("cpuacct");
    if v1_cpu.is_dir() {
        let dir = parents.iter().find(|p| v1_cpu.join(p).is_dir())?;
        let nanos = read_number(&v1_cpu.join(dir).join("cpuacct.usage"))?;
        let mem = std::fs::read_to_string(cgroup_root.join("memory").join(dir).join("memory.stat"))
            .ok()?;
        let resident = stat_value(&mem, "total_rss")? + stat_value(&mem, "total_mapped_file")?;
        return Some(Usage {
            cpu_seconds: nanos as f64 / 1e9,
            resident_bytes: resident,
        });
    }
    let dir = parents
        .iter()
        .map(|p| cgroup_root.join(p))
        .find(|p| p.is_dir())?;
    let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let mem = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    Some(Usage {
        cpu_seconds: stat_value(&cpu, "usage_usec")? as f64 / 1e6,
        resident_bytes: stat_value(&mem, "anon")? + stat_value(&mem, "file_mapped")?,
    })
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_group_has_cpu_and_memory() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        // Burn a little CPU so the tick count is non-zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let groups = ProcessGroups::scan(Path::new("/proc"), &HashSet::from([me]));
        let usage = groups.group(me).expect("our own group is in /proc");
        assert!(usage.resident_bytes > 0, "{usage:?}");
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
        assert_eq!(groups.group(u32::MAX), None);
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cgroup_v1_cgroupfs_layout() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join("cpuacct/docker/abc/cpuacct.usage"), "2500000000\n");
        write(
            &r.join("memory/docker/abc/memory.stat"),
            "cache 4096\nrss 100\ntotal_rss 8192\ntotal_mapped_file 4096\n",
        );
        assert_eq!(
            container_usage(r, "abc"),
            Some(Usage {
                cpu_seconds: 2.5,
                resident_bytes: 12288
            })
        );
        assert_eq!(container_usage(r, "gone"), None);
    }

    #[test]
    fn cgroup_v2_systemd_layout() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("system.slice/docker-abc.scope");
        write(&dir.join("cpu.stat"), "usage_usec 1500000\nuser_usec 1\n");
        write(
            &dir.join("memory.stat"),
            "anon 8192\nfile 1\nfile_mapped 8192\n",
        );
        assert_eq!(
            container_usage(root.path(), "abc"),
            Some(Usage {
                cpu_seconds: 1.5,
                resident_bytes: 16384
            })
        );
    }
}
