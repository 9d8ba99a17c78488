//! Temporary probe (to be removed).
use runner_core::config::LogLimits;
use runner_core::logs::{LogPump, LogSink};
use runner_types::{GuestRole, LogStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let rt = if mode.contains("ct") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let reps: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    for _ in 0..reps {
    if mode.contains("sync") { nix::unistd::sync(); }
    if mode.contains("cat") { let st = Instant::now(); std::process::Command::new("sh").args(["-c", "head -c 1073741824 /dev/zero | cat > /tmp/probe/y; rm /tmp/probe/y"]).status().unwrap(); println!("cat {:?}", st.elapsed()); if mode.contains("sync") { nix::unistd::sync(); } }
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let limits = if mode.contains("big") {
            LogLimits {
                max_file_bytes: 1 << 31,
                max_files: 1,
            }
        } else {
            LogLimits::default()
        };
        let sink =
            LogSink::open(dir.path(), GuestRole::Runtime, LogStream::Stdout, limits).unwrap();
        let start = Instant::now();
        let mut child = tokio::process::Command::new("head")
            .args([
                "-c",
                if mode.contains("1g") {
                    "1073741824"
                } else {
                    "268435456"
                },
                "/dev/zero",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        if mode.contains("discard") {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let k = out.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            println!("{mode} {:?} {n}", start.elapsed());
        } else {
            let pump = LogPump::spawn(Box::pin(out), &sink);
            let r = pump.finish(Duration::from_secs(100)).await;
            let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap(); println!("{mode} {:?} {} cpu={}.{:06}+{}.{:06}", start.elapsed(), r.bytes_written, u.user_time().tv_sec(), u.user_time().tv_usec(), u.system_time().tv_sec(), u.system_time().tv_usec());
        }
        child.wait().await.unwrap();
    });
    }
}
