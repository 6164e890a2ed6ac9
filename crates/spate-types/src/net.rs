//! The network seam: how a component opens and accepts byte-stream connections.
//!
//! A component that talks to other nodes holds an `Arc<dyn Network>` (in [`crate::Seams`])
//! instead of calling `tokio::net` directly. In production that is [`TcpNetwork`]; tests and
//! the deterministic simulator use [`MemoryNetwork`], an in-process network of pipes where a
//! connection to an address nobody listens on is refused at once, as TCP refuses a closed port,
//! so several nodes run in one process with no sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;

/// One open connection: a bidirectional byte stream.
pub trait Conn: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {
    /// Splits the connection into halves owned by different tasks (a reader and a writer);
    /// TCP's without a lock between them.
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite);
}

impl Conn for tokio::net::TcpStream {
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = (*self).into_split();
        (Box::new(read), Box::new(write))
    }
}

impl Conn for DuplexStream {
    fn into_halves(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(*self);
        (Box::new(read), Box::new(write))
    }
}

pub type BoxConn = Box<dyn Conn>;
pub type BoxRead = Box<dyn AsyncRead + Send + Sync + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Sync + Unpin>;
pub type NetFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Opens connections and listeners.
pub trait Network: Send + Sync + fmt::Debug {
    /// Connects to `addr` (`host:port`).
    fn connect<'a>(&'a self, addr: &'a str) -> NetFuture<'a, BoxConn>;
    /// Listens on `addr` (port 0: any free port; [`Listener::local_addr`] says which).
    fn bind(&self, addr: SocketAddr) -> NetFuture<'_, Box<dyn Listener>>;
}

/// Accepts connections until dropped; dropping it closes the port.
pub trait Listener: Send + Sync {
    fn accept(&self) -> NetFuture<'_, (BoxConn, SocketAddr)>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// The operating system's TCP, with `TCP_NODELAY` on every connection (the protocols on top
/// are request/response, where Nagle's algorithm only adds delay).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpNetwork;

impl Network for TcpNetwork {
    fn connect<'a>(&'a self, addr: &'a str) -> NetFuture<'a, BoxConn> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn bind(&self, addr: SocketAddr) -> NetFuture<'_, Box<dyn Listener>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpAcceptor(listener)) as Box<dyn Listener>)
        })
    }
}

struct TcpAcceptor(tokio::net::TcpListener);

impl Listener for TcpAcceptor {
    fn accept(&self) -> NetFuture<'_, (BoxConn, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Bytes buffered in each direction of a [`MemoryNetwork`] connection.
const MEMORY_PIPE_BYTES: usize = 256 * 1024;
/// Connections waiting for `accept` on one [`MemoryNetwork`] listener.
const MEMORY_BACKLOG: usize = 128;

type Incoming = mpsc::Sender<(DuplexStream, SocketAddr)>;

/// An in-process network: listeners are registered by address, a connection is a pair of
/// in-memory pipes. Connecting to an address with no live listener fails with
/// `ConnectionRefused` at once; dropping a listener closes its port (connections already
/// accepted stay open until either end is dropped, which the other end sees as end of stream).
/// Clones share one network.
#[derive(Clone, Debug, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    listeners: BTreeMap<SocketAddr, Incoming>,
    next_port: u16,
}

impl MemoryState {
    /// A port for a client end or a `bind` to port 0, never one in use.
    fn free_port(&mut self, ip: IpAddr) -> io::Result<u16> {
        for _ in 0..=u16::MAX {
            self.next_port = self.next_port.wrapping_add(1).max(1024);
            if !self
                .listeners
                .contains_key(&SocketAddr::new(ip, self.next_port))
            {
                return Ok(self.next_port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "no free port",
        ))
    }
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // The state is a map of senders: a panic while it was held leaves it consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn refused(addr: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("connection to {addr} refused: nothing listens there"),
    )
}

impl Network for MemoryNetwork {
    fn connect<'a>(&'a self, addr: &'a str) -> NetFuture<'a, BoxConn> {
        Box::pin(async move {
            let target: SocketAddr = addr.parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{addr}' is not an ip:port address: {e}"),
                )
            })?;
            let (incoming, local) = {
                let mut state = self.state();
                let incoming = state.listeners.get(&target).cloned();
                let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
                let local = SocketAddr::new(ip, state.free_port(ip)?);
                (incoming, local)
            };
            let incoming = incoming.ok_or_else(|| refused(addr))?;
            let (ours, theirs) = tokio::io::duplex(MEMORY_PIPE_BYTES);
            // A full backlog drops the connection attempt (as a full SYN queue does): refused.
            incoming
                .try_send((theirs, local))
                .map_err(|_| refused(addr))?;
            Ok(Box::new(ours) as BoxConn)
        })
    }

    fn bind(&self, addr: SocketAddr) -> NetFuture<'_, Box<dyn Listener>> {
        Box::pin(async move {
            let mut state = self.state();
            let addr = if addr.port() == 0 {
                SocketAddr::new(addr.ip(), state.free_port(addr.ip())?)
            } else {
                addr
            };
            if state.listeners.get(&addr).is_some_and(|s| !s.is_closed()) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is in use"),
                ));
            }
            let (tx, rx) = mpsc::channel(MEMORY_BACKLOG);
            state.listeners.insert(addr, tx.clone());
            Ok(Box::new(MemoryListener {
                addr,
                incoming: tokio::sync::Mutex::new(rx),
                registered: tx,
                network: self.clone(),
            }) as Box<dyn Listener>)
        })
    }
}

struct MemoryListener {
    addr: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(DuplexStream, SocketAddr)>>,
    /// The sender this listener registered, to unregister exactly it.
    registered: Incoming,
    network: MemoryNetwork,
}

impl Listener for MemoryListener {
    fn accept(&self) -> NetFuture<'_, (BoxConn, SocketAddr)> {
        Box::pin(async move {
            match self.incoming.lock().await.recv().await {
                Some((stream, peer)) => Ok((Box::new(stream) as BoxConn, peer)),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "listener closed",
                )),
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        let mut state = self.network.state();
        if state
            .listeners
            .get(&self.addr)
            .is_some_and(|s| s.same_channel(&self.registered))
        {
            state.listeners.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn memory_connections_carry_bytes_both_ways_and_end_with_either_side() {
        let net = MemoryNetwork::new();
        let listener = net.bind("10.0.0.1:9000".parse().unwrap()).await.unwrap();
        assert_eq!(
            listener.local_addr().unwrap(),
            "10.0.0.1:9000".parse().unwrap()
        );
        let mut client = net.connect("10.0.0.1:9000").await.unwrap();
        let (mut server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(server);
        assert_eq!(client.read(&mut got).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn nothing_listening_is_refused_and_a_dropped_listener_frees_its_port() {
        let net = MemoryNetwork::new();
        let refused = net.connect("10.0.0.2:9000").await.err().unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let addr: SocketAddr = "10.0.0.2:9000".parse().unwrap();
        let listener = net.bind(addr).await.unwrap();
        let in_use = net.bind(addr).await.err().unwrap();
        assert_eq!(in_use.kind(), io::ErrorKind::AddrInUse);
        let mut accepted_before = net.connect("10.0.0.2:9000").await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        drop(listener);
        let refused = net.connect("10.0.0.2:9000").await.err().unwrap();
        assert_eq!(
            refused.kind(),
            io::ErrorKind::ConnectionRefused,
            "the port closed"
        );
        // A connection accepted before stays up.
        server.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        accepted_before.read_exact(&mut got).await.unwrap();
        net.bind(addr).await.expect("the port can be bound again");
    }

    #[tokio::test]
    async fn port_zero_gets_a_free_port_and_bad_addresses_are_refused_clearly() {
        let net = MemoryNetwork::new();
        let a = net.bind("10.0.0.3:0".parse().unwrap()).await.unwrap();
        let b = net.bind("10.0.0.3:0".parse().unwrap()).await.unwrap();
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_ne!(a.local_addr().unwrap().port(), 0);
        let e = net.connect("not-an-address").await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn tcp_network_connects_over_loopback() {
        let net = TcpNetwork;
        let listener = net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut client = net.connect(&addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
    }
}
