//! Container output: the engine's multiplexed attach stream, split into two
//! byte-exact [`GuestOutput`] readers (stdout, stderr).
//!
//! The backend attaches (stdout + stderr, `stream=1`) *before* it starts the
//! container, so the stream carries everything from the first byte, and it
//! reads the attach stream rather than the log driver's `logs` endpoint: the
//! attach stream is the engine's live copy of the container's pipes, bytes
//! unchanged and with backpressure, whereas following a size-capped log file
//! can lose what rotates away before it is read. The engine closes the
//! stream only after the container's pipes are drained, so the last bytes
//! before an exit — with or without a final newline — arrive before EOF.
//!
//! One task demultiplexes: each frame is written into the matching in-memory
//! pipe ([`tokio::io::duplex`]), so a slow reader slows the stream (and, in
//! the end, the guest) instead of growing a buffer. A reader that is dropped
//! is skipped from then on; when both are gone the task ends and drops the
//! attach connection.

use crate::backend::GuestOutput;
use bollard::container::LogOutput;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// Capacity of each in-memory pipe between the demultiplexer and a reader.
const PIPE_BYTES: usize = 64 * 1024;

/// Splits `frames` into a stdout and a stderr reader, in that order. The
/// returned task ends at the end of the stream, on a stream error (logged,
/// with `container` named), or when both readers are dropped.
pub(crate) fn demux<S>(frames: S, container: String) -> (Vec<GuestOutput>, JoinHandle<()>)
where
    S: Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send + 'static,
{
    let (out_w, out_r) = tokio::io::duplex(PIPE_BYTES);
    let (err_w, err_r) = tokio::io::duplex(PIPE_BYTES);
    let task = tokio::spawn(pump(frames, container, out_w, err_w));
    let outputs = GuestOutput::pair(out_r, err_r);
    (outputs, task)
}

async fn pump<S>(frames: S, container: String, out: DuplexStream, err: DuplexStream)
where
    S: Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send,
{
    let mut frames = std::pin::pin!(frames);
    let mut out = Some(out);
    let mut err = Some(err);
    while out.is_some() || err.is_some() {
        let (slot, bytes) = match frames.next().await {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(container, error = %e, "Container output stream failed");
                break;
            }
            // Console frames only occur with a TTY, which guests never get;
            // should one appear, it is the guest's stdout.
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                (&mut out, message)
            }
            Some(Ok(LogOutput::StdErr { message })) => (&mut err, message),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
        };
        write_or_drop(slot, bytes).await;
    }
    // Dropping the writers is the readers' EOF.
}

/// Writes `bytes` to the pipe in `slot`; a reader that has gone away is
/// forgotten, so its stream is discarded from then on.
async fn write_or_drop(slot: &mut Option<DuplexStream>, bytes: Bytes) {
    if let Some(w) = slot
        && w.write_all(&bytes).await.is_err()
    {
        *slot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::time::timeout;

    const BOUND: Duration = Duration::from_secs(10);

    fn out(b: &[u8]) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdOut {
            message: Bytes::copy_from_slice(b),
        })
    }

    fn err(b: &[u8]) -> Result<LogOutput, bollard::errors::Error> {
        Ok(LogOutput::StdErr {
            message: Bytes::copy_from_slice(b),
        })
    }

    async fn read_all(o: &mut GuestOutput) -> Vec<u8> {
        let mut buf = Vec::new();
        timeout(BOUND, o.reader.read_to_end(&mut buf))
            .await
            .expect("reader reached EOF")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_are_split_byte_exact_including_invalid_utf8_and_no_final_newline() {
        let frames = stream::iter(vec![
            out(b"line 1\n"),
            err(&[0xff, 0xfe, 0x80, b'\n']),
            out(&[0xc3]),
            out(&[0x28, b'x']),
            Ok(LogOutput::StdIn {
                message: Bytes::from_static(b"ignored"),
            }),
            err(b"last words"),
        ]);
        let (mut outputs, task) = demux(frames, "c".to_owned());
        assert_eq!(outputs[0].stream, runner_types::LogStream::Stdout);
        assert_eq!(outputs[1].stream, runner_types::LogStream::Stderr);
        let (a, b) = outputs.split_at_mut(1);
        let (o, e) = tokio::join!(read_all(&mut a[0]), read_all(&mut b[0]));
        assert_eq!(o, b"line 1\n\xc3\x28x");
        assert_eq!(e, b"\xff\xfe\x80\nlast words");
        timeout(BOUND, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn more_than_the_pipe_holds_arrives_in_order() {
        let chunk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let frames = stream::iter((0..50).map(|_| out(&chunk)).collect::<Vec<_>>());
        let (mut outputs, _task) = demux(frames, "c".to_owned());
        let got = read_all(&mut outputs[0]).await;
        assert_eq!(got.len(), 500_000);
        assert!(got.chunks(10_000).all(|c| c == chunk.as_slice()));
        assert!(read_all(&mut outputs[1]).await.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_reader_does_not_block_the_other() {
        let big = vec![b'x'; 4 * PIPE_BYTES];
        let frames = stream::iter(vec![err(&big), out(b"still here"), err(&big)]);
        let (mut outputs, task) = demux(frames, "c".to_owned());
        let stderr = outputs.pop().unwrap();
        drop(stderr);
        assert_eq!(read_all(&mut outputs[0]).await, b"still here");
        timeout(BOUND, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_stream_error_ends_both_readers() {
        let frames = stream::iter(vec![
            out(b"before"),
            Err(bollard::errors::Error::RequestTimeoutError),
            out(b"after"),
        ]);
        let (mut outputs, _task) = demux(frames, "c".to_owned());
        assert_eq!(read_all(&mut outputs[0]).await, b"before");
        assert!(read_all(&mut outputs[1]).await.is_empty());
    }

    #[tokio::test]
    async fn the_task_ends_when_both_readers_are_gone() {
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<LogOutput, bollard::errors::Error>>();
        let frames = stream::once(async { out(b"x") }).chain(rx);
        let (outputs, task) = demux(frames, "c".to_owned());
        drop(outputs);
        // The stream never ends by itself: the task notices on its next
        // write to each pipe.
        tx.unbounded_send(out(b"y")).unwrap();
        tx.unbounded_send(err(b"z")).unwrap();
        timeout(BOUND, task).await.unwrap().unwrap();
    }
}
