//! Listener and connection tasks: framing, limits, in-order responses.
//!
//! A connection is read by one task and written by another. The reader decodes a frame,
//! runs the handler's immediate part, and queues the rest (a future yielding the encoded
//! response) on a bounded channel; the writer awaits the queued futures in order. A bad frame
//! (negative or oversized length, unknown API key, undecodable body) closes the connection
//! with one log line, as Kafka does. A peer that closes the connection gets nothing more: what
//! was still waiting to be answered is dropped at once.

use crate::apis::{self, Encoded, Response};
use crate::broker::{Broker, MEMORY_PERMIT_BYTES};
use crate::probe;
use bytes::BytesMut;
use spate_types::limits::IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX;
use spate_types::net::{BoxConn, BoxWrite, Listener};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The smallest frame that can hold a request header (api key, version, correlation id).
const FRAME_BYTES_MIN: usize = 8;
/// How long a shutting-down broker waits for connections to answer what they have read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` turns true, then waits (bounded) for every connection
/// to answer the requests it already read.
///
/// Cancel safety: not cancel safe; run it as its own task and stop it through `shutdown`.
pub async fn serve(
    listener: Box<dyn Listener>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let for_connections = shutdown.clone();
    loop {
        // Biased (deterministic under simulation): the shutdown, which ends the loop; then
        // reaping ended connections, ready once per connection, so that a storm of
        // connections cannot keep finished ones in the set; then accepting.
        tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, broker.clone(), for_connections.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections did not drain in time; closing them"
        );
        connections.abort_all();
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame length {0} is negative or smaller than a request header")]
    TooSmall(i32),
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

async fn connection(
    stream: BoxConn,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read_half, write_half) = stream.into_halves();
    let (tx, rx) = mpsc::channel::<Response>(IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX);
    let queued = Arc::new(QueuedBytes::default());
    let writer = tokio::spawn(write_responses(write_half, rx, queued.clone(), peer));
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    probe::connection_opened();
    // The peer closed the connection: nobody reads what is still waiting to be answered.
    let mut peer_gone = false;
    loop {
        // A client that does not read its responses must not make the broker hold them without
        // bound: stop reading requests while built responses exceed the budget.
        // The writer gone (the peer stopped reading and the socket failed) ends the reader too.
        // Both selects are biased (deterministic under simulation), the branches that end the
        // loop first.
        tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => break,
            _ = tx.closed() => break,
            _ = queued.below(RESPONSE_BYTES_QUEUED_MAX) => {}
        }
        let frame = tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => break,
            _ = tx.closed() => break,
            frame = read_frame(&mut reader, broker.config.request_bytes_max) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                peer_gone = true;
                break;
            }
            Err(FrameError::Io(e)) if is_disconnect(&e) => {
                peer_gone = true;
                break;
            }
            Err(e) => {
                probe::bad_request();
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        };
        // Bound the request bytes held across all connections (`queued.max.request.bytes`).
        let permits = (frame.len() / MEMORY_PERMIT_BYTES + 1) as u32;
        let Ok(permit) = broker
            .request_memory
            .clone()
            .acquire_many_owned(permits)
            .await
        else {
            break;
        };
        let response = apis::dispatch(&broker, frame, peer).await;
        drop(permit);
        match response {
            Ok(Some(response)) => {
                if let Response::Ready(Ok(bytes)) = &response {
                    queued.add(bytes.len());
                }
                if tx.send(response).await.is_err() {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                probe::bad_request();
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        }
    }
    drop(tx);
    if peer_gone {
        // As Kafka closes the channel: a parked long poll or acks=all wait ends now instead
        // of holding the connection's task (and its place in the delayed gauges) until it
        // times out. What was appended stays appended; only the answer is dropped.
        writer.abort();
    }
    let _ = writer.await;
    probe::connection_closed();
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Reads one size-prefixed frame. `Ok(None)` on a clean end of stream between frames.
///
/// Cancel safety: not cancel safe mid-frame; the caller drops the connection when cancelled.
pub(crate) async fn read_frame(
    reader: &mut (impl AsyncReadExt + Unpin),
    max: usize,
) -> Result<Option<BytesMut>, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    let size = usize::try_from(len).map_err(|_| FrameError::TooSmall(len))?;
    if size < FRAME_BYTES_MIN {
        return Err(FrameError::TooSmall(len));
    }
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    // Read into spare capacity rather than a zeroed buffer: one pass fewer over every byte.
    let mut frame = BytesMut::with_capacity(size);
    let mut body = (&mut *reader).take(size as u64);
    while frame.len() < size {
        if body.read_buf(&mut frame).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some(frame))
}

/// Bytes of built responses a connection holds before its reader pauses. One response may
/// exceed it (a large fetch); then nothing more is read until it is written.
const RESPONSE_BYTES_QUEUED_MAX: usize = 16 * 1024 * 1024;

/// Bytes of built, unwritten responses of one connection.
#[derive(Default)]
struct QueuedBytes {
    bytes: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

impl QueuedBytes {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn remove(&self, n: usize) {
        self.bytes.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        self.drained.notify_waiters();
    }

    /// Resolves once fewer than `max` bytes are queued. Cancel safe.
    async fn below(&self, max: usize) {
        loop {
            let drained = self.drained.notified();
            if self.bytes.load(std::sync::atomic::Ordering::SeqCst) < max {
                return;
            }
            drained.await;
        }
    }
}

async fn write_responses(
    write_half: BoxWrite,
    mut rx: mpsc::Receiver<Response>,
    queued: Arc<QueuedBytes>,
    peer: SocketAddr,
) {
    let mut writer = tokio::io::BufWriter::with_capacity(64 * 1024, write_half);
    while let Some(response) = rx.recv().await {
        let (encoded, counted): (Encoded, bool) = match response {
            Response::Ready(encoded) => (encoded, true),
            Response::Waiting(mut future) => match futures::poll!(future.as_mut()) {
                Poll::Ready(encoded) => (encoded, false),
                Poll::Pending => {
                    // This one waits (an fsync, a long poll): what is already written goes out
                    // first, or it would wait too, behind a response it does not depend on.
                    if writer.flush().await.is_err() {
                        break;
                    }
                    (future.await, false)
                }
            },
        };
        let response = match encoded {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        };
        let written = writer.write_all(&response).await;
        if counted {
            queued.remove(response.len());
        }
        if written.is_err() {
            break;
        }
        // Flush when nothing else is ready, so pipelined responses share a write.
        if rx.is_empty() && writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], max: usize) -> Result<Option<BytesMut>, FrameError> {
        let mut reader = bytes;
        read_frame(&mut reader, max).await
    }

    #[tokio::test]
    async fn a_written_response_is_sent_before_the_writer_waits_for_the_next() {
        // Two pipelined requests: the first answered at once, the second waiting (an acks=all
        // produce for a partition whose fsync is still running). The first answer must reach
        // the client now, not sit in the write buffer until the second is ready.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let (_read_half, write_half) = spate_types::net::Conn::into_halves(Box::new(server));
        let (tx, rx) = mpsc::channel::<Response>(4);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = bytes::Bytes::from_static(&[0, 0, 0, 4, 0, 0, 0, 1]);
        let second = bytes::Bytes::from_static(&[0, 0, 0, 4, 0, 0, 0, 2]);
        let queued = Arc::new(QueuedBytes::default());
        queued.add(first.len());
        tx.send(Response::Ready(Ok(first.clone())))
            .await
            .expect("queue");
        let later = second.clone();
        tx.send(Response::Waiting(Box::pin(async move {
            let _ = released.await;
            Ok(later)
        })))
        .await
        .expect("queue");
        let writer = tokio::spawn(write_responses(write_half, rx, queued, peer));

        let mut got = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the first response arrives while the second still waits")
            .expect("read");
        assert_eq!(&got[..], &first[..]);

        release.send(()).expect("release");
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..], &second[..], "then the second, in order");
        drop(tx);
        writer
            .await
            .expect("writer ends when the reader side is gone");
    }

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let mut ok = 8i32.to_be_bytes().to_vec();
        ok.extend_from_slice(&[0, 18, 0, 3, 0, 0, 0, 1]);
        assert_eq!(
            read(&ok, 1024).await.expect("valid").expect("frame").len(),
            8
        );
        assert!(
            read(&[], 1024).await.expect("eof").is_none(),
            "clean end of stream"
        );
        assert!(matches!(
            read(&(-5i32).to_be_bytes(), 1024).await,
            Err(FrameError::TooSmall(-5))
        ));
        assert!(matches!(
            read(&3i32.to_be_bytes(), 1024).await,
            Err(FrameError::TooSmall(3))
        ));
        // A lying length is refused from the prefix alone, before any buffer is allocated.
        assert!(matches!(
            read(&i32::MAX.to_be_bytes(), 1024).await,
            Err(FrameError::TooLarge { size, max: 1024 }) if size == i32::MAX as usize
        ));
        // The length promises more than the stream holds.
        let mut short = 100i32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0; 10]);
        assert!(matches!(read(&short, 1024).await, Err(FrameError::Io(_))));
    }
}
