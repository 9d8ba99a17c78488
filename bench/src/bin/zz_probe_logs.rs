//! Temporary probe (to be removed).
use runner_core::config::LogLimits;
use runner_core::logs::{LogPump, LogSink};
use runner_types::{GuestRole, LogStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let sink = LogSink::open(dir.path(), GuestRole::Runtime, LogStream::Stdout, LogLimits::default()).unwrap();
        let start = Instant::now();
        let mut child = tokio::process::Command::new("head").args(["-c", "268435456", "/dev/zero"]).stdout(Stdio::piped()).spawn().unwrap();
        let pump = LogPump::spawn(Box::pin(child.stdout.take().unwrap()), &sink);
        let r = pump.finish(Duration::from_secs(100)).await;
        println!("{:?} {:?}", start.elapsed(), r);
        child.wait().await.unwrap();
    });
}
