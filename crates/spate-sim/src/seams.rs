//! The seams of a simulated node: turmoil's network behind [`spate_types::Network`], and a
//! clock that reads the simulation's time (with a per-node wall-clock offset, for clock jumps).

use spate_types::net::{BoxConn, BoxRead, BoxWrite, Conn, Listener, NetFuture, Network};
use spate_types::Clock;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Turmoil's simulated TCP: connections between hosts of one simulation, subject to its
/// partitions, holds, latency and loss. Host names resolve through the simulation's DNS.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimNetwork;

/// `host:port` as turmoil takes it.
fn split_host_port(addr: &str) -> io::Result<(&str, u16)> {
    addr.rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{addr}' is not host:port"),
            )
        })
}

impl Network for SimNetwork {
    fn connect<'a>(&'a self, addr: &'a str) -> NetFuture<'a, BoxConn> {
        Box::pin(async move {
            let target = split_host_port(addr)?;
            let stream = turmoil::net::TcpStream::connect(target).await?;
            Ok(Box::new(SimStream(stream)) as BoxConn)
        })
    }

    fn bind(&self, addr: SocketAddr) -> NetFuture<'_, Box<dyn Listener>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener(listener)) as Box<dyn Listener>)
        })
    }
}

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&self) -> NetFuture<'_, (BoxConn, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(SimStream(stream)) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

struct SimStream(turmoil::net::TcpStream);

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Conn for SimStream {
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = self.0.into_split();
        (Box::new(read), Box::new(write))
    }
}

/// The wall-clock time at the start of every simulation (2027-01-15), fixed so that a seed
/// replays the same timestamps.
pub const EPOCH_MS: i64 = 1_800_000_000_000;

/// A node's clock: the simulation's elapsed time, plus `EPOCH_MS` and the node's own wall-clock
/// offset for the wall clock. Outside a running simulation (the harness checking the disks
/// afterwards) it reads as the start.
#[derive(Debug, Default)]
pub struct SimClock {
    wall_offset_ms: AtomicI64,
}

impl SimClock {
    /// Moves this node's wall clock by `by_ms` (forwards or backwards), as NTP or an operator
    /// may; the monotonic clock does not move.
    pub fn jump(&self, by_ms: i64) {
        self.wall_offset_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    fn elapsed_ms() -> u64 {
        turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(Self::elapsed_ms()).unwrap_or(i64::MAX);
        EPOCH_MS
            .saturating_add(elapsed)
            .saturating_add(self.wall_offset_ms.load(Ordering::SeqCst))
    }

    fn monotonic_ms(&self) -> u64 {
        Self::elapsed_ms()
    }
}
