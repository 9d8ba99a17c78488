//! The runtime-to-sidecar vsock bridge against a double of Firecracker's
//! host-side vsock protocol (no Linux guest boots on this machine): the
//! double listens where the sidecar VM's vsock socket would be, reads
//! `CONNECT <port>\n`, and either answers `OK <host port>\n` and then acts as
//! the sidecar guest, or refuses by closing, as Firecracker does when no
//! guest listens on the port.

use runner_core::backend::firecracker::vsock_bridge::{BridgeConfig, BridgeLimits, VsockBridge};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

const BOUND: Duration = Duration::from_secs(10);
const PORT: u32 = 1024;

/// How the double answers the next `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `OK`, then send `S>` and echo everything back.
    Accept,
    /// Close without a reply.
    Refuse,
    /// Read the request and never answer.
    Silent,
}

/// The double: answers connections in the order of `answers`, and reports
/// each request line it read.
fn sidecar_double(
    path: &Path,
    mut answers: mpsc::UnboundedReceiver<Answer>,
) -> mpsc::UnboundedReceiver<String> {
    let listener = UnixListener::bind(path).unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let answer = answers
                .recv()
                .await
                .expect("an answer for every connection");
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                while line.last() != Some(&b'\n') {
                    let b = conn.read_u8().await.unwrap();
                    line.push(b);
                }
                seen.send(String::from_utf8(line).unwrap()).unwrap();
                match answer {
                    Answer::Refuse => {}
                    Answer::Silent => std::future::pending::<()>().await,
                    Answer::Accept => {
                        conn.write_all(b"OK 1073741824\nS>").await.unwrap();
                        let (mut r, mut w) = conn.split();
                        let _copied = tokio::io::copy(&mut r, &mut w).await;
                    }
                }
            });
        }
    });
    seen_rx
}

struct Setup {
    _dir: tempfile::TempDir,
    listen: PathBuf,
    answers: mpsc::UnboundedSender<Answer>,
    seen: mpsc::UnboundedReceiver<String>,
    bridge: VsockBridge,
    up: watch::Receiver<bool>,
}

fn setup(limits: BridgeLimits) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shell-vm-vsock.sock");
    let listen = dir.path().join("oxydra-vm-vsock.sock_1024");
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let seen = sidecar_double(&target, answers_rx);
    let (up_tx, up) = watch::channel(false);
    let bridge = VsockBridge::start(
        BridgeConfig {
            listen: listen.clone(),
            target,
            port: PORT,
            owner: None,
            limits,
        },
        up_tx,
    )
    .unwrap();
    Setup {
        _dir: dir,
        listen,
        answers,
        seen,
        bridge,
        up,
    }
}

/// A runtime-side connection, as Firecracker would open it for the guest.
async fn runtime_connect(s: &mut Setup, answer: Answer) -> UnixStream {
    s.answers.send(answer).unwrap();
    let conn = UnixStream::connect(&s.listen).await.unwrap();
    let line = tokio::time::timeout(BOUND, s.seen.recv())
        .await
        .expect("the double saw no request")
        .unwrap();
    assert_eq!(line, format!("CONNECT {PORT}\n"));
    conn
}

async fn read_exact(conn: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .unwrap();
    buf
}

async fn assert_eof(conn: &mut UnixStream) {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(BOUND, conn.read(&mut buf))
        .await
        .expect("EOF in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
}

#[tokio::test]
async fn bytes_flow_both_ways_and_a_refused_connect_ends_only_that_connection() {
    let mut s = setup(BridgeLimits::default());
    assert!(*s.up.borrow());

    let mut first = runtime_connect(&mut s, Answer::Accept).await;
    assert_eq!(read_exact(&mut first, 2).await, b"S>");
    let payload = b"ping \xff\x00 bytes";
    first.write_all(payload).await.unwrap();
    assert_eq!(read_exact(&mut first, payload.len()).await, payload);

    let mut refused = runtime_connect(&mut s, Answer::Refuse).await;
    assert_eof(&mut refused).await;

    // The first connection is unaffected.
    first.write_all(b"again").await.unwrap();
    assert_eq!(read_exact(&mut first, 5).await, b"again");

    // A new connection after the refusal works too.
    let mut third = runtime_connect(&mut s, Answer::Accept).await;
    assert_eq!(read_exact(&mut third, 2).await, b"S>");
    third.write_all(b"3").await.unwrap();
    assert_eq!(read_exact(&mut third, 1).await, b"3");
}

#[tokio::test]
async fn stopping_the_bridge_closes_every_connection_and_the_socket() {
    let mut s = setup(BridgeLimits::default());
    let mut conn = runtime_connect(&mut s, Answer::Accept).await;
    assert_eq!(read_exact(&mut conn, 2).await, b"S>");
    assert!(s.listen.exists());

    let mut up = s.up.clone();
    s.bridge.stop();
    assert!(!*up.borrow_and_update());
    assert_eof(&mut conn).await;
    assert!(!s.listen.exists(), "the listening socket was not removed");
    assert!(UnixStream::connect(&s.listen).await.is_err());
}

#[tokio::test]
async fn a_silent_sidecar_side_is_bounded_by_the_handshake_timeout() {
    let mut s = setup(BridgeLimits {
        handshake_timeout: Duration::from_millis(200),
        ..BridgeLimits::default()
    });
    let mut silent = runtime_connect(&mut s, Answer::Silent).await;
    assert_eof(&mut silent).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_others_keep_working() {
    let mut s = setup(BridgeLimits {
        max_connections: 1,
        ..BridgeLimits::default()
    });
    let mut first = runtime_connect(&mut s, Answer::Accept).await;
    assert_eq!(read_exact(&mut first, 2).await, b"S>");
    // Over the limit: closed by the bridge without reaching the double.
    let mut extra = UnixStream::connect(&s.listen).await.unwrap();
    assert_eof(&mut extra).await;
    assert!(
        s.seen.try_recv().is_err(),
        "the extra connection reached the sidecar"
    );

    first.write_all(b"ok").await.unwrap();
    assert_eq!(read_exact(&mut first, 2).await, b"ok");
    // Once the first closes, a new connection is bridged again.
    drop(first);
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        s.answers.send(Answer::Accept).unwrap();
        let mut again = UnixStream::connect(&s.listen).await.unwrap();
        let mut buf = [0u8; 2];
        match tokio::time::timeout(BOUND, again.read(&mut buf)).await {
            Ok(Ok(2)) => {
                assert_eq!(&buf, b"S>");
                break;
            }
            // The bridge had not yet noticed the close: the connection was
            // refused at the limit. Its unused answer is consumed by the
            // next accepted connection in order, so retry.
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "never bridged again"
            ),
        }
    }
}

/// A sidecar VMM that swaps its vsock socket for a symlink (to another
/// user's VM socket, say) gets no connection to the link's target: the
/// bridge connects only to a socket file it did not reach through a link.
#[tokio::test]
async fn a_symlink_in_place_of_the_sidecar_socket_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("another-users-vm.sock");
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let mut seen = sidecar_double(&elsewhere, answers_rx);
    let target = dir.path().join("shell-vm-vsock.sock");
    std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
    let listen = dir.path().join("oxydra-vm-vsock.sock_1024");
    let (up_tx, _up) = watch::channel(false);
    let _bridge = VsockBridge::start(
        BridgeConfig {
            listen: listen.clone(),
            target,
            port: PORT,
            owner: None,
            limits: BridgeLimits::default(),
        },
        up_tx,
    )
    .unwrap();
    answers.send(Answer::Accept).unwrap();
    let mut conn = UnixStream::connect(&listen).await.unwrap();
    // The runtime's connection is closed without a byte, and the socket
    // behind the link never sees a CONNECT.
    assert_eof(&mut conn).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "the bridge followed the symlink"
    );
}
