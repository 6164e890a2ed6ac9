//! The Spate controller: cluster metadata (brokers, topics, partitions with leader, leader epoch,
//! replicas and ISR, topic, group and dynamic broker configs, producer id blocks) as a state
//! machine replicated by Raft.
//!
//! Metadata changes **only** through [`Controller::propose`]: a [`MetadataCommand`] is appended to
//! the Raft log, committed, and applied by the pure function [`state::apply`] to the
//! [`MetadataImage`], which readers get as a cheap `Arc` via [`Controller::image`] or
//! [`Controller::subscribe`]. openraft is an implementation detail: none of its types appear in
//! this crate's public API.
//!
//! The quorum is fixed by configuration (`controller.quorum.voters`): one voter (this node, no
//! network at all) or several, which talk over the controller listener (`raft/network.rs`).
//! Every node is a broker too; a node that is not the active controller forwards its proposals,
//! heartbeats and quorum status requests to the one that is, and [`Controller::propose`] returns
//! only once this node's own image includes the change.
//!
//! Time and fresh ids come from the [`Seams`] given to [`Controller::open_with_seams`] (the
//! system's by default): the liveness core's clock is `Seams::clock`'s monotonic clock, and the
//! cluster id candidate comes from `Seams::ids`. Every file (below) is read, written and
//! fsynced through `Seams::disk`, so a test can run the controller on an in-memory disk and
//! crash it. Timers (heartbeat and liveness intervals,
//! request deadlines) and openraft's own timing and transport are still the Tokio runtime's.
//!
//! Modules: `resource_configs.rs` (group and dynamic broker config overrides), `open.rs` (open,
//! join, shutdown, directory lock), `forward.rs` (proposals, forwarding
//! to the active controller, the controller listener's request handler), `heartbeat.rs` (broker
//! registration, heartbeats, the liveness task that fences silent brokers), `quorum.rs` (the
//! Raft view for DescribeQuorum).
//!
//! On disk, under the directory given to [`Controller::open`]:
//! - `lock` — held with an exclusive advisory lock while a controller runs;
//! - `raft-log` — append-only journal of CRC-framed Raft log entries, votes, commit and purge
//!   marks (see `raft/log_store.rs`);
//! - `snapshot` — the last snapshot of the image, replaced atomically (see
//!   `raft/state_machine.rs`).

mod error;
mod forward;
mod fsio;
mod heartbeat;
mod liveness;
mod metadata;
mod open;
mod quorum;
mod raft;
mod resource_configs;
pub mod state;

pub use error::{ControllerError, PeerFailure, StopCause};
pub use metadata::{
    BrokerEndpoint, MetadataCommand, MetadataError, MetadataImage, MetadataOutcome, PartitionImage,
    TopicImage, NO_LEADER,
};
pub use quorum::QuorumStatus;
pub use raft::network::{BrokerHeartbeat, HeartbeatReply};
pub use resource_configs::{
    ConfigMap, ResourceConfigs, CONFIGS_PER_RESOURCE_MAX, CONFIG_NAME_BYTES_MAX,
    CONFIG_VALUE_BYTES_MAX, GROUPS_WITH_CONFIGS_MAX, GROUP_ID_BYTES_MAX,
};
pub use state::manual_partitions;

use liveness::Liveness;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raft::network::Peers;
use raft::{Raft, RaftNodeId};
use spate_types::disk::DiskLock;
use spate_types::{IdSource, NodeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

pub use spate_types::Seams;

/// Tuning and quorum settings; [`Controller::open`] uses the defaults (a single voter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Build a snapshot once this many entries were applied since the last one; the log before
    /// it is then purged.
    pub snapshot_every_entries: u64,
    /// Applied entries kept in the log behind a snapshot, so a briefly lagging voter can catch up
    /// from the log instead of a full snapshot.
    pub log_entries_kept_after_snapshot: u64,
    /// How long [`Controller::open`] waits for a single-voter quorum to elect this node. A
    /// multi-voter quorum waits for its majority as long as it takes (logging while it waits).
    pub open_timeout_ms: u64,
    /// `controller.quorum.voters`: every voter's controller address (host:port). Empty means
    /// this node is the only voter and no controller listener is needed.
    pub voters: BTreeMap<NodeId, String>,
    /// `controller.listen`: where this node accepts controller connections; required when
    /// `voters` names other nodes.
    pub listen: Option<SocketAddr>,
    /// How long a forwarded proposal or a heartbeat may take, retries included.
    pub request_timeout_ms: u64,
    /// `broker.session.timeout.ms`: an unfenced broker that sends no heartbeat for this long is
    /// fenced by the active controller.
    pub broker_session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`: how often this broker reports itself alive.
    pub broker_heartbeat_interval_ms: u64,
    /// The cluster id stored in this node's data directory, if any. Connections from nodes of
    /// another cluster are refused; a quorum that has no id yet is named with it (or with a
    /// fresh one) by the first committed proposal.
    pub known_cluster_id: Option<String>,
    /// This broker's data directory id (`directory.id` in meta.properties), sent with its
    /// registration: a broker back with the same directory keeps its ISR places. Nil: unknown.
    pub directory_id: uuid::Uuid,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            snapshot_every_entries: 1000,
            log_entries_kept_after_snapshot: 100,
            open_timeout_ms: 10_000,
            voters: BTreeMap::new(),
            listen: None,
            request_timeout_ms: 15_000,
            broker_session_timeout_ms: 2_400,
            broker_heartbeat_interval_ms: 400,
            known_cluster_id: None,
            directory_id: uuid::Uuid::nil(),
        }
    }
}

/// Handle to the running controller. Cheap to clone; all clones share one Raft node.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    raft_id: RaftNodeId,
    raft: Raft,
    config: ControllerConfig,
    /// Controller addresses of the other voters, by node id.
    addresses: BTreeMap<NodeId, String>,
    peers: Peers,
    identity: raft::network::Identity,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    liveness: std::sync::Mutex<Liveness>,
    /// Voters whose controller port refuses connections (their process is gone), from Raft's
    /// connections to them.
    refusals: raft::network::Refusals,
    /// This broker's epoch (the log index of its registration); 0 before it registered.
    broker_epoch: AtomicU64,
    listen_addr: Option<SocketAddr>,
    /// What this broker registers as (again, after a stale-epoch answer).
    advertised: BrokerEndpoint,
    /// Set by [`Controller::controlled_shutdown`]; sent with every heartbeat from then on.
    want_shutdown: std::sync::atomic::AtomicBool,
    heartbeat_now: tokio::sync::Notify,
    /// The active controller's latest answer to this broker's heartbeat.
    last_heartbeat: watch::Sender<Option<HeartbeatReply>>,
    /// The clock (its monotonic side drives the liveness core) and the id source.
    seams: Seams,
    tasks_stop: watch::Sender<bool>,
    /// The task accepting controller connections: a stop waits for it, so that the listening
    /// port is free once the stop returns (a node reopened at once in the same process could
    /// not bind it otherwise).
    listener_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The directory lock; `None` once shut down.
    lock: Mutex<Option<DiskLock>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// The latest applied metadata image (cheap: an Arc clone). After shutdown, the last one.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.inner.image_rx.borrow().clone()
    }

    /// Notified with each new image after every apply. The receiver starts with the current image
    /// marked as seen, so `changed().await` waits for the next one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.inner.image_rx.clone()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// Where the controller listener is bound, if there is one.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen_addr
    }

    /// The active controller as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .current_leader
            .and_then(raft::spate_id)
    }

    /// Resolves, with the reason, when the Raft core stopped by itself: a storage error (a
    /// failed write or fsync of the metadata log) or a panic. The node must stop then (its
    /// metadata can no longer advance), as Kafka halts when its metadata log directory fails;
    /// a clean [`Controller::shutdown`] also resolves it, so watch it only while serving.
    pub async fn halted(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return format!("the metadata log stopped: {fatal}");
            }
            if metrics.changed().await.is_err() {
                return "the metadata log stopped".to_owned();
            }
        }
    }
}

/// A Kafka-style cluster id: 16 bytes of a fresh UUID from `ids` in URL-safe base64 without
/// padding.
pub fn new_cluster_id(ids: &dyn IdSource) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = ids.uuid().as_u128();
    let mut out = String::with_capacity(22);
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    out
}

/// The monotonic clock in milliseconds (arbitrary origin): the clock of the liveness core.
fn now_ms(inner: &Inner) -> i64 {
    i64::try_from(inner.seams.clock.monotonic_ms()).unwrap_or(i64::MAX)
}

/// Whether this node is the active controller right now.
fn is_leader(inner: &Inner) -> bool {
    inner.raft.metrics().borrow_watched().state == ServerState::Leader
}

impl Drop for Inner {
    /// Last handle dropped without [`Controller::shutdown`]: stop Raft in the background so its
    /// tasks do not outlive the controller, and release the directory lock only once it stopped.
    /// Nothing is lost either way: every acknowledged write is already durable.
    fn drop(&mut self) {
        let Some(lock) = self.lock.get_mut().take() else {
            return;
        };
        let _ = self.tasks_stop.send(true);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            runtime.spawn(async move {
                if let Err(e) = raft.shutdown().await {
                    tracing::warn!(error = %e, "stopping a dropped controller");
                }
                // Only now may another controller take the directory.
                drop(lock);
            });
        }
    }
}
