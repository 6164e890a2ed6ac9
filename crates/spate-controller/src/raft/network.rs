//! The controller transport: Raft RPCs between voters, and brokers' requests to the active
//! controller (forwarded proposals, heartbeats, quorum status), over one framed TCP protocol of
//! ours.
//!
//! Wire format: a client opens with the 10-byte preface [`PREFACE`] (magic and version) and its
//! cluster id (one length byte, 0 while it knows none, then the id); a server that knows a
//! different cluster id closes the connection, so a node whose data belongs to another cluster
//! can never vote in or be replicated to by this one. Then every message is `[len: u32 BE][JSON]`, a [`Request`] answered by exactly one [`Response`] on
//! the same connection, strictly in turn. Guarantees:
//! - a frame longer than [`FRAME_BYTES_MAX`] closes the connection before anything is
//!   allocated for it, and a frame's buffer grows only as its bytes arrive;
//! - anything else that is not a well-formed request (a wrong preface, bad JSON, a peer that
//!   stops mid-frame for [`FRAME_READ_TIMEOUT`]) closes the connection with one log line; the
//!   controller's state is never touched by it;
//! - inbound connections are bounded by [`INBOUND_CONNECTIONS_MAX`];
//! - every outbound call ends by its deadline; a connection whose call failed or timed out is
//!   dropped (it may hold half a frame), never reused.
//!
//! A request kind the receiver does not know (one added in a later Spate, such as
//! [`Request::QuorumStatus`]) is bad JSON to it: it closes the connection, and the caller sees
//! an unreachable peer and falls back (DescribeQuorum answers from its own view).
//!
//! JSON costs more than a binary encoding, but the controller carries metadata, not records:
//! a few small entries per admin request or leadership change.

use super::state_machine::Snapshot;
use super::{RaftNodeId, TypeConfig, Vote};
use crate::error::PeerFailure;
use crate::metadata::{MetadataCommand, MetadataImage, MetadataOutcome};
use crate::QuorumStatus;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spate_types::net::{BoxConn, Listener, Network};
use spate_types::{Clock, NodeId};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{watch, Semaphore};

/// Sent once by the client after connecting: magic and protocol version.
pub(crate) const PREFACE: &[u8; 10] = b"SPATECTL\x00\x01";
/// The largest frame either side accepts: a snapshot of the metadata image with headroom over
/// what the snapshot file itself may hold.
pub(crate) const FRAME_BYTES_MAX: usize = 2 * crate::fsio::RECORD_BYTES_MAX;
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
/// Inbound connections one controller serves at once (voters and brokers keep a few each).
pub(crate) const INBOUND_CONNECTIONS_MAX: usize = 256;
/// Idle outbound connections kept per peer for proposals and heartbeats.
const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 4;
/// How long a started frame may take to arrive in full.
pub(crate) const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest cluster id sent in the preface (Kafka's are 22 characters).
pub(crate) const CLUSTER_ID_BYTES_MAX: usize = 64;
/// Connection set-up limit for outbound calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A broker's periodic liveness report to the active controller (Kafka's BrokerHeartbeat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHeartbeat {
    pub node: NodeId,
    /// The epoch the broker registered with: its `RegisterBroker` entry's log index.
    pub broker_epoch: u64,
    /// The last metadata log index this broker has applied.
    pub applied_index: u64,
    /// The broker is shutting down and asks for its leaderships to move away first.
    pub want_shutdown: bool,
}

/// The active controller's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The broker may not lead (not yet caught up, or shut down).
    pub fenced: bool,
    /// A controlled shutdown is complete: the broker leads nothing and may stop.
    pub shutdown_ready: bool,
    /// The broker epoch is not the registered one: the broker must register again.
    pub stale_epoch: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: super::SnapshotMeta,
        image: Box<MetadataImage>,
    },
    /// A broker's proposal for the active controller.
    Propose(MetadataCommand),
    Heartbeat(BrokerHeartbeat),
    /// The active controller's Raft view, for DescribeQuorum on a node that is not it.
    QuorumStatus,
    /// The active controller hands its role to the receiver before it stops (KIP-595's
    /// EndQuorumEpoch does the same for KRaft): the receiver elects itself at once instead of
    /// every voter waiting out an election timeout.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
}

impl Request {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Request::AppendEntries(_) => "append-entries",
            Request::Vote(_) => "vote",
            Request::PreVote(_) => "pre-vote",
            Request::Snapshot { .. } => "snapshot",
            Request::Propose(_) => "propose",
            Request::Heartbeat(_) => "heartbeat",
            Request::QuorumStatus => "quorum-status",
            Request::TransferLeader(_) => "transfer-leader",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    /// Committed and applied on the active controller at log `index`.
    Proposed {
        outcome: MetadataOutcome,
        index: u64,
    },
    Heartbeat(HeartbeatReply),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// The active controller's Raft view; its `leader` is the node that answered.
    QuorumStatus(QuorumStatus),
    /// The receiver is not the active controller; `leader` is, if known.
    NotLeader {
        leader: Option<NodeId>,
    },
    /// The receiver could not serve the request (its Raft node stopped, for instance).
    Failed(PeerFailure),
    /// Sent once, instead of serving, to a node whose preface named another cluster: the
    /// receiver's cluster id. The connection is then closed.
    OtherCluster {
        cluster_id: String,
    },
}

/// Why an outbound call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("controller {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("controller {addr} did not answer within {timeout_ms} ms")]
    TimedOut { addr: String, timeout_ms: u64 },
}

async fn write_frame<W, T>(out: &mut W, message: &T) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    T: Serialize,
{
    let json = serde_json::to_vec(message).map_err(io::Error::other)?;
    if json.len() > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "controller message of {} bytes exceeds the {FRAME_BYTES_MAX}-byte limit",
                json.len()
            ),
        ));
    }
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&json).await?;
    out.flush().await
}

/// Reads one frame. `Ok(None)` is a clean end of stream between frames. The length is checked
/// before anything is allocated, and the buffer grows only as bytes arrive.
async fn read_frame<R, T>(input: &mut R) -> io::Result<Option<T>>
where
    R: tokio::io::AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {FRAME_BYTES_MAX}-byte limit"),
        ));
    }
    let mut body = Vec::new();
    let read = tokio::time::timeout(
        FRAME_READ_TIMEOUT,
        (&mut *input).take(len as u64).read_to_end(&mut body),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "frame arrived too slowly"))??;
    if read != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame cut short after {read} of {len} bytes"),
        ));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The cluster id this node knows (from its data directory or, once joined, the quorum), shared
/// by its outbound connections and its listener; and which peers turned this node away as a
/// node of another cluster (peer address → their cluster id).
#[derive(Clone, Debug, Default)]
pub(crate) struct Identity {
    id: Arc<std::sync::RwLock<Option<String>>>,
    rejected_by: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Identity {
    pub(crate) fn new(cluster_id: Option<String>) -> Self {
        Self {
            id: Arc::new(std::sync::RwLock::new(cluster_id)),
            rejected_by: Default::default(),
        }
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.id.read().ok().and_then(|id| id.clone())
    }

    pub(crate) fn set(&self, cluster_id: &str) {
        if let Ok(mut id) = self.id.write() {
            *id = Some(cluster_id.to_owned());
        }
    }

    /// Peers (by address) that last answered as members of another cluster, with their id.
    pub(crate) fn rejected_by(&self) -> BTreeMap<String, String> {
        self.rejected_by
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn note_answer(&self, addr: &str, other_cluster: Option<&str>) {
        if let Ok(mut rejected) = self.rejected_by.lock() {
            match other_cluster {
                Some(theirs) => {
                    rejected.insert(addr.to_owned(), theirs.to_owned());
                }
                None => {
                    rejected.remove(addr);
                }
            }
        }
    }

    fn preface(&self) -> Vec<u8> {
        let id = self.get().unwrap_or_default();
        let id = if id.len() <= CLUSTER_ID_BYTES_MAX {
            id
        } else {
            String::new()
        };
        let mut out = PREFACE.to_vec();
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out
    }
}

type Stream = (
    BufReader<tokio::io::ReadHalf<BoxConn>>,
    BufWriter<tokio::io::WriteHalf<BoxConn>>,
);

async fn connect(net: &dyn Network, addr: &str, identity: &Identity) -> io::Result<Stream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, net.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (read, write) = tokio::io::split(stream);
    let mut write = BufWriter::new(write);
    write.write_all(&identity.preface()).await?;
    Ok((BufReader::new(read), write))
}

/// `request` on `reused` (a connection kept from an earlier call) or else a fresh one. A kept
/// connection the peer has closed since (it restarted, or its process is gone) is replaced by a
/// fresh one once, which either works or is refused at once. Returns the connection to keep.
async fn exchange_on(
    net: &dyn Network,
    reused: Option<Stream>,
    request: &Request,
    addr: &str,
    identity: &Identity,
) -> io::Result<(Stream, Response)> {
    if let Some(mut stream) = reused {
        match exchange(&mut stream, request, addr, identity).await {
            Ok(response) => return Ok((stream, response)),
            Err(e) if closed_by_peer(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut stream = connect(net, addr, identity).await?;
    let response = exchange(&mut stream, request, addr, identity).await?;
    Ok((stream, response))
}

/// One request and its response on an open stream. A peer of another cluster answers
/// [`Response::OtherCluster`]: an error naming both clusters, remembered in `identity`.
async fn exchange(
    stream: &mut Stream,
    request: &Request,
    addr: &str,
    identity: &Identity,
) -> io::Result<Response> {
    write_frame(&mut stream.1, request).await?;
    let response = read_frame(&mut stream.0).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the response",
        )
    })?;
    if let Response::OtherCluster { cluster_id } = &response {
        identity.note_answer(addr, Some(cluster_id));
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the controller at {addr} belongs to cluster {cluster_id}, but this node's data directory belongs to cluster {}",
                identity.get().unwrap_or_default()
            ),
        ));
    }
    identity.note_answer(addr, None);
    Ok(response)
}

/// Outbound calls to other controllers for proposals and heartbeats, with a few idle
/// connections kept per address. Raft's own RPCs use [`Connection`]s instead.
#[derive(Clone)]
pub(crate) struct Peers {
    idle: Arc<Mutex<BTreeMap<String, Vec<Stream>>>>,
    identity: Identity,
    net: Arc<dyn Network>,
}

impl Peers {
    pub(crate) fn new(identity: Identity, net: Arc<dyn Network>) -> Self {
        Self {
            idle: Default::default(),
            identity,
            net,
        }
    }

    /// Sends `request` to `addr` and waits for the answer, at most `timeout`.
    ///
    /// Cancel safety: cancelling drops the connection in use, so it is safe; the request may or
    /// may not have been received.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let pooled = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.get_mut(addr).and_then(Vec::pop));
        let attempt = exchange_on(self.net.as_ref(), pooled, request, addr, &self.identity);
        let (stream, response) = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| CallError::TimedOut {
                addr: addr.to_owned(),
                timeout_ms: timeout.as_millis() as u64,
            })?
            .map_err(|source| CallError::Io {
                addr: addr.to_owned(),
                source,
            })?;
        if let Ok(mut idle) = self.idle.lock() {
            let streams = idle.entry(addr.to_owned()).or_default();
            if streams.len() < IDLE_CONNECTIONS_PER_PEER_MAX {
                streams.push(stream);
            }
        }
        Ok(response)
    }
}

/// Where each voter's controller listens, by Raft node id. Configured addresses win over the
/// ones stored in the membership, so an operator can move a voter to a new address.
#[derive(Clone, Debug, Default)]
pub(crate) struct Addresses {
    pub(crate) voters: BTreeMap<RaftNodeId, String>,
}

/// Which voters refused a connection to their controller port, and since when (this node's
/// monotonic clock, ms): nothing listens there, so the process is gone (crashed, killed or
/// restarting). Raft's connections and this broker's calls to the active controller record
/// it (the latter right after a controller dies, long before an election has anyone send it a
/// vote request) and any answer from the voter clears it; the
/// liveness core fences a broker that refuses and has not heartbeat since, without waiting out
/// its session. A voter that is only unreachable (a partition, a paused process, a dead host)
/// times out instead and is fenced by its session as before.
#[derive(Clone, Debug)]
pub(crate) struct Refusals {
    since_ms: Arc<Mutex<BTreeMap<RaftNodeId, i64>>>,
    clock: Arc<dyn Clock>,
}

impl Refusals {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            since_ms: Default::default(),
            clock,
        }
    }

    pub(crate) fn refused(&self, target: RaftNodeId) {
        let now = i64::try_from(self.clock.monotonic_ms()).unwrap_or(i64::MAX);
        if let Ok(mut since) = self.since_ms.lock() {
            since.entry(target).or_insert(now);
        }
    }

    pub(crate) fn answered(&self, target: RaftNodeId) {
        if let Ok(mut since) = self.since_ms.lock() {
            since.remove(&target);
        }
    }

    /// Brokers whose controller port refuses connections now, with when that began.
    pub(crate) fn snapshot(&self) -> BTreeMap<NodeId, i64> {
        let Ok(since) = self.since_ms.lock() else {
            return BTreeMap::new();
        };
        since
            .iter()
            .filter_map(|(id, at)| super::spate_id(*id).map(|node| (node, *at)))
            .collect()
    }
}

pub(crate) struct NetworkFactory {
    addresses: Addresses,
    identity: Identity,
    refusals: Refusals,
    net: Arc<dyn Network>,
}

impl NetworkFactory {
    pub(crate) fn new(
        addresses: Addresses,
        identity: Identity,
        refusals: Refusals,
        net: Arc<dyn Network>,
    ) -> Self {
        Self {
            addresses,
            identity,
            refusals,
            net,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> Self::Network {
        let addr = self
            .addresses
            .voters
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone());
        Connection {
            target,
            addr,
            stream: None,
            identity: self.identity.clone(),
            refusals: self.refusals.clone(),
            net: self.net.clone(),
        }
    }
}

/// Raft's client for one target voter: one connection, reopened after any failure.
pub(crate) struct Connection {
    target: RaftNodeId,
    addr: String,
    stream: Option<Stream>,
    identity: Identity,
    refusals: Refusals,
    net: Arc<dyn Network>,
}

/// Errors that say a connection that was open is now closed by the peer (its process may have
/// exited), rather than that the peer is slow or unreachable.
fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl Connection {
    async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, Unreachable<TypeConfig>> {
        let kind = request.kind();
        // Taken: a call that fails or times out leaves no connection behind (it may hold half a
        // frame); one that answers puts its connection back.
        let reused = self.stream.take();
        let attempt = exchange_on(
            self.net.as_ref(),
            reused,
            &request,
            &self.addr,
            &self.identity,
        );
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((stream, response))) => {
                self.stream = Some(stream);
                Ok(Ok(response))
            }
            Ok(Err(e)) => Ok(Err(e)),
            Err(elapsed) => Err(elapsed),
        };
        match &result {
            Ok(Ok(_)) => self.refusals.answered(self.target),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                self.refusals.refused(self.target)
            }
            _ => {}
        }
        match result {
            Ok(Ok(Response::Failed(failure))) => Err(Unreachable::from_string(format!(
                "controller {} ({}) failed a {kind} request: {failure}",
                self.target, self.addr
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(Unreachable::from_string(format!(
                "controller {} ({}): {kind}: {e}",
                self.target, self.addr
            ))),
            Err(_) => Err(Unreachable::from_string(format!(
                "controller {} ({}) did not answer a {kind} request within {} ms",
                self.target,
                self.addr,
                timeout.as_millis()
            ))),
        }
    }

    fn unexpected(&self, kind: &str) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "controller {} ({}) answered a {kind} request with an unexpected response",
            self.target, self.addr
        ))
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = MetadataImage;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Request::AppendEntries(rpc), option.soft_ttl())
            .await?
        {
            Response::AppendEntries(r) => Ok(r),
            _ => Err(self.unexpected("append-entries").into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(Request::Vote(rpc), option.soft_ttl()).await? {
            Response::Vote(r) => Ok(r),
            _ => Err(self.unexpected("vote").into()),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(Request::TransferLeader(rpc), option.soft_ttl())
            .await?
        {
            Response::TransferLeader(r) => Ok(r),
            _ => Err(self.unexpected("transfer-leader").into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(Request::PreVote(rpc), option.soft_ttl()).await? {
            Response::Vote(r) => Ok(r),
            _ => Err(self.unexpected("pre-vote").into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            image: Box::new(snapshot.snapshot),
        };
        let call = self.call(request, option.hard_ttl());
        // Biased (deterministic under simulation); openraft's cancellation first.
        tokio::select! {
            biased;
            closed = cancel => {
                self.stream = None;
                Err(StreamingError::Closed(closed))
            }
            result = call => match result? {
                Response::Snapshot(r) => Ok(r),
                _ => Err(self.unexpected("snapshot").into()),
            },
        }
    }
}

/// What serves decoded requests: the controller, in `forward.rs`.
pub(crate) type Handler =
    Arc<dyn Fn(Request) -> futures::future::BoxFuture<'static, Response> + Send + Sync>;

/// Accepts controller connections until `shutdown`; each is served by its own task.
pub(crate) async fn serve(
    listener: Box<dyn Listener>,
    handler: Handler,
    identity: Identity,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX));
    loop {
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "controller listener accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = INBOUND_CONNECTIONS_MAX, "too many controller connections; closing");
            continue;
        };
        let handler = handler.clone();
        let identity = identity.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Biased (deterministic under simulation); the shutdown first.
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {}
                result = serve_connection(stream, &handler, &identity) => {
                    if let Err(e) = result {
                        tracing::info!(%peer, error = %e, "closed controller connection");
                    }
                }
            }
            drop(slot);
        });
    }
}

async fn serve_connection(
    stream: BoxConn,
    handler: &Handler,
    identity: &Identity,
) -> io::Result<()> {
    let (read, write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let mut write = BufWriter::new(write);
    let mut preface = [0u8; PREFACE.len()];
    tokio::time::timeout(FRAME_READ_TIMEOUT, read.read_exact(&mut preface))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no preface"))??;
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Spate controller client (wrong preface)",
        ));
    }
    let mut len = [0u8; 1];
    let mut theirs = vec![0u8; CLUSTER_ID_BYTES_MAX];
    let read_id = async {
        read.read_exact(&mut len).await?;
        let n = usize::from(len[0]);
        if n > CLUSTER_ID_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cluster id too long",
            ));
        }
        read.read_exact(&mut theirs[..n]).await?;
        theirs.truncate(n);
        Ok(())
    };
    tokio::time::timeout(FRAME_READ_TIMEOUT, read_id)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no cluster id"))??;
    let theirs = String::from_utf8_lossy(&theirs).into_owned();
    if let Some(ours) = identity.get() {
        if !theirs.is_empty() && theirs != ours {
            // Tell the stranger why, so that it can refuse to start with a clear message;
            // it has sent a request by now (or will, into a closed connection).
            let _ = tokio::time::timeout(
                FRAME_READ_TIMEOUT,
                write_frame(
                    &mut write,
                    &Response::OtherCluster {
                        cluster_id: ours.clone(),
                    },
                ),
            )
            .await;
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("a node of cluster {theirs} connected, but this is cluster {ours}; check its data directory"),
            ));
        }
    }
    while let Some(request) = read_frame::<_, Request>(&mut read).await? {
        let response = handler(request).await;
        write_frame(&mut write, &response).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_lengths_are_checked_before_allocating() {
        let mut buf = Vec::new();
        let hb = BrokerHeartbeat {
            node: NodeId(2),
            broker_epoch: 7,
            applied_index: 9,
            want_shutdown: false,
        };
        write_frame(&mut buf, &Request::Heartbeat(hb.clone()))
            .await
            .expect("write");
        let mut input = &buf[..];
        match read_frame::<_, Request>(&mut input).await.expect("read") {
            Some(Request::Heartbeat(got)) => assert_eq!(got, hb),
            other => panic!("unexpected {other:?}"),
        }
        assert!(read_frame::<_, Request>(&mut input)
            .await
            .expect("eof")
            .is_none());

        // A length past the limit is refused without reading (or allocating) the body.
        let huge = (FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
        let mut input = &huge[..];
        let e = read_frame::<_, Request>(&mut input)
            .await
            .expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A frame cut short, and a frame of garbage.
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"{\"Heart");
        let e = read_frame::<_, Request>(&mut &short[..])
            .await
            .expect_err("short");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"\xff\x00{]");
        let e = read_frame::<_, Request>(&mut &garbage[..])
            .await
            .expect_err("garbage");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn quorum_status_requests_and_answers_round_trip() {
        let status = QuorumStatus {
            leader: Some(NodeId(1)),
            term: 4,
            last_log_index: 12,
            committed_index: 11,
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            voter_matched: BTreeMap::from([(NodeId(1), Some(12)), (NodeId(2), None)]),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::QuorumStatus)
            .await
            .expect("write");
        write_frame(&mut buf, &Response::QuorumStatus(status.clone()))
            .await
            .expect("write");
        write_frame(&mut buf, &Response::Failed(PeerFailure::Storage))
            .await
            .expect("write");
        let mut input = &buf[..];
        assert!(matches!(
            read_frame::<_, Request>(&mut input).await.expect("read"),
            Some(Request::QuorumStatus)
        ));
        match read_frame::<_, Response>(&mut input).await.expect("read") {
            Some(Response::QuorumStatus(got)) => assert_eq!(got, status),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            read_frame::<_, Response>(&mut input).await.expect("read"),
            Some(Response::Failed(PeerFailure::Storage))
        ));
    }

    #[tokio::test]
    async fn garbage_on_the_controller_port_closes_the_connection() {
        let listener = spate_types::TcpNetwork
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        let handler: Handler = Arc::new(move |_req| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Response::Failed(PeerFailure::Stopped) })
        });
        let (stop, stop_rx) = watch::channel(false);
        let ours = Identity::new(Some("cluster-a".into()));
        let server = tokio::spawn(serve(listener, handler, ours, stop_rx));

        // An HTTP request instead of the preface: closed, nothing served.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is answered to garbage");

        // The right preface and then a huge length: closed too.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(PREFACE).await.expect("preface");
        s.write_all(&[0]).await.expect("no cluster id");
        s.write_all(&u32::MAX.to_be_bytes()).await.expect("len");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);

        // A node of another cluster is turned away.
        let hb = BrokerHeartbeat {
            node: NodeId(1),
            broker_epoch: 1,
            applied_index: 1,
            want_shutdown: false,
        };
        let stranger_identity = Identity::new(Some("cluster-b".into()));
        let stranger = Peers::new(stranger_identity.clone(), Arc::new(spate_types::TcpNetwork));
        let e = stranger
            .call(
                &addr.to_string(),
                &Request::Heartbeat(hb.clone()),
                Duration::from_secs(5),
            )
            .await
            .expect_err("other cluster");
        match &e {
            CallError::Io { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::PermissionDenied, "{e}");
                assert!(
                    e.to_string().contains("belongs to cluster cluster-a")
                        && e.to_string().contains("belongs to cluster cluster-b"),
                    "names both clusters: {e}"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            stranger_identity.rejected_by(),
            BTreeMap::from([(addr.to_string(), "cluster-a".to_owned())]),
            "the stranger remembers who turned it away"
        );
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);

        // A real call still works, from a node of this cluster or one that knows none yet.
        let fresh = Peers::new(Identity::new(None), Arc::new(spate_types::TcpNetwork));
        assert!(matches!(
            fresh
                .call(
                    &addr.to_string(),
                    &Request::Heartbeat(hb),
                    Duration::from_secs(5)
                )
                .await,
            Ok(Response::Failed(_))
        ));
        let peers = Peers::new(
            Identity::new(Some("cluster-a".into())),
            Arc::new(spate_types::TcpNetwork),
        );
        let hb = BrokerHeartbeat {
            node: NodeId(1),
            broker_epoch: 1,
            applied_index: 1,
            want_shutdown: false,
        };
        let response = peers
            .call(
                &addr.to_string(),
                &Request::Heartbeat(hb),
                Duration::from_secs(5),
            )
            .await
            .expect("call");
        assert!(matches!(response, Response::Failed(_)));
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
        let _ = stop.send(true);
        server.await.expect("server stops");
    }
}
