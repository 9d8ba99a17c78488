//! The runtime half of the demo guest: reach the sidecar named in the
//! envelope.

use runner_types::{BootstrapEnvelope, SidecarTransport};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long to keep retrying: the sidecar may still be binding its socket.
const CONNECT_FOR: Duration = Duration::from_secs(5);
/// First retry delay; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// What came of trying the sidecar.
#[derive(Debug)]
pub enum SidecarLink {
    /// The envelope names no sidecar (or a vsock one, which a host process
    /// cannot reach).
    None,
    /// Connected and greeted; the address.
    Connected(String),
    /// Gave up; the address and the last error.
    Failed(String, std::io::Error),
    /// SIGTERM arrived while retrying.
    Terminated,
}

/// Connects to the envelope's Unix sidecar endpoint with bounded backoff and
/// reads the sidecar's greeting line. A SIGTERM (a message on `terms`)
/// ends the retries.
pub fn connect_sidecar(envelope: &BootstrapEnvelope, terms: &mpsc::Receiver<()>) -> SidecarLink {
    let Some(ep) = &envelope.sidecar_endpoint else {
        return SidecarLink::None;
    };
    if ep.transport != SidecarTransport::Unix {
        return SidecarLink::None;
    }
    let deadline = Instant::now() + CONNECT_FOR;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match greet(&ep.address) {
            Ok(()) => return SidecarLink::Connected(ep.address.clone()),
            Err(e) if Instant::now() + backoff >= deadline => {
                return SidecarLink::Failed(ep.address.clone(), e);
            }
            Err(_) => {
                // Retry pacing: the sidecar is another process that may not
                // have bound yet. Wait on the SIGTERM channel meanwhile.
                match terms.recv_timeout(backoff) {
                    Ok(()) => return SidecarLink::Terminated,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(backoff),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn greet(address: &str) -> std::io::Result<()> {
    let stream = UnixStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.starts_with("sidecar ") {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected sidecar greeting",
        ))
    }
}
