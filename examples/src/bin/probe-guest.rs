//! A tiny test guest that reports on the sandbox it runs in, for the
//! container-tier tests. Depends on std, nix and this crate only, so it
//! links statically into a `FROM scratch` image.
//!
//! ```text
//! probe-guest hardening      prints, one per line:
//!                              rootfs_writable=<true|false>
//!                              interfaces=<names, comma-separated, sorted>
//!                              cap_eff=<hex CapEff of this process>
//!                              no_new_privs=<0|1>
//!                              envelope=<compact JSON>   (via the bootstrap file)
//!                            then exits 0
//! probe-guest oom [delay-ms]  locks the pages mapped so far (see `oom`), then,
//!                            after an optional delay, allocates and touches
//!                            memory 1 MiB at a time, printing
//!                            allocated_mib=<n>, until killed; exits 0 if it
//!                            ever reaches 4 GiB
//! probe-guest whoami         prints uids=<real effective saved fs> (the Uid
//!                            line of /proc/self/status), then exits 0
//! probe-guest setuid-copy <dir>
//!                            prints uids=... as whoami does, copies its own
//!                            binary to <dir>/setuid-probe with mode 4755 (a
//!                            setuid file owned by whoever the guest runs
//!                            as), prints setuid_file=<path>, then exits 0
//! probe-guest bytes <seed> <len>
//!                            writes pattern(seed, len) to stdout and
//!                            pattern(seed + 1, len) to stderr in interleaved
//!                            chunks of varying size, then exits 3 at once
//!                            (like a crash; the last bytes have no newline)
//! ```
//!
//! `pattern` is xorshift64 from the seed, one byte per step, with the last
//! byte forced to `b'$'` (never a newline): `runner_examples::probe::pattern`,
//! which the tests use to check the output.
//!
//! Any arguments after those (the runner's `--user-id ...`) are ignored.

use runner_examples::probe::pattern;
use std::io::Write;
use std::process::ExitCode;

const OOM_CEILING_MIB: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("hardening") => hardening(),
        Some("oom") => oom(&args[1..]),
        Some("bytes") => bytes(&args[1..]),
        Some("whoami") => whoami().map(|()| ExitCode::SUCCESS),
        Some("setuid-copy") => setuid_copy(&args[1..]),
        _ => Err(
            "usage: probe-guest hardening | oom [delay-ms] | bytes <seed> <len> | whoami | setuid-copy <dir>"
                .into(),
        ),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("probe-guest: {e}");
            ExitCode::from(2)
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn hardening() -> Result<ExitCode> {
    let writable = std::fs::File::create("/probe-write-test").is_ok();
    println!("rootfs_writable={writable}");
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("interfaces={}", names.join(","));
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    println!("cap_eff={}", field("CapEff:"));
    println!("no_new_privs={}", field("NoNewPrivs:"));
    let (envelope, _) = runner_types::reader::read_envelope()?;
    println!("envelope={}", String::from_utf8(envelope.to_json()?)?);
    Ok(ExitCode::SUCCESS)
}

fn oom(args: &[String]) -> Result<ExitCode> {
    // Lock the pages mapped now (this binary's code and data) in memory.
    // Without it, at the limit the kernel reclaims them instead of killing
    // us, we fault them (and their read-ahead) back in, which reclaims
    // others, and so on: seen here to delay the kill by 14-23 s in 4 runs
    // of 10, and by over a minute in CI. Locked, nothing of ours is
    // reclaimable and the kill comes at once. Our code and data are about
    // 2 MiB, under the usual 8 MiB lock limit.
    if let Err(e) = nix::sys::mman::mlockall(nix::sys::mman::MlockAllFlags::MCL_CURRENT) {
        eprintln!("probe-guest: cannot lock its pages ({e}); the OOM kill may come late");
    }
    // The engine watches a container for OOM kills only once it has started
    // it: a guest that blows its limit within milliseconds of starting can
    // be killed without the engine noticing. The delay gives it time.
    if let Some(ms) = args.first().and_then(|a| a.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut out = std::io::stdout().lock();
    for mib in 1..=OOM_CEILING_MIB {
        // Non-zero bytes so every page is really touched.
        held.push(vec![0xa5; 1024 * 1024]);
        writeln!(out, "allocated_mib={mib}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes(args: &[String]) -> Result<ExitCode> {
    let seed: u64 = args.first().ok_or("bytes needs <seed>")?.parse()?;
    let len: usize = args.get(1).ok_or("bytes needs <len>")?.parse()?;
    let out_bytes = pattern(seed, len);
    let err_bytes = pattern(seed + 1, len);
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let (mut o, mut e) = (0, 0);
    let mut step = 1usize;
    while o < len || e < len {
        // Chunk sizes cycle through 1..=8191 so frames of every size occur.
        step = step * 31 % 8191 + 1;
        let n = step.min(len - o);
        out.write_all(&out_bytes[o..o + n])?;
        out.flush()?;
        o += n;
        let n = (step / 2 + 1).min(len - e);
        err.write_all(&err_bytes[e..e + n])?;
        e += n;
    }
    out.flush()?;
    err.flush()?;
    // Exit at once, without the runtime's usual tidy-up, like a crash.
    std::process::exit(3)
}

fn whoami() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .ok_or("no Uid line in /proc/self/status")?;
    let uids: Vec<&str> = uids.split_whitespace().collect();
    println!("uids={}", uids.join(" "));
    Ok(())
}

fn setuid_copy(args: &[String]) -> Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    whoami()?;
    let dir = std::path::Path::new(args.first().ok_or("setuid-copy needs <dir>")?);
    let path = dir.join("setuid-probe");
    std::fs::copy("/proc/self/exe", &path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755))?;
    println!("setuid_file={}", path.display());
    Ok(ExitCode::SUCCESS)
}
