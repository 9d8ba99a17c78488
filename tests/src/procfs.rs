//! What `/proc/<pid>/…` says about a process: the identity, limits and
//! open descriptors a guest started with. Every reader panics with the
//! file it read when the entry is missing: a test cannot go on without it.

/// The value of `key:` in `/proc/<pid>/status` (for example `Uid`,
/// `NoNewPrivs`, `Umask`), trimmed.
pub fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Soft and hard value of the `/proc/<pid>/limits` row starting with `row`
/// (for example `Max open files`).
pub fn limit(pid: u32, row: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row} in /proc/{pid}/limits"));
    let mut values = line[row.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// The descriptors open in `pid`, ascending.
pub fn fds(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    fds
}
