//! The Spate controller: cluster metadata (brokers, topics, partitions with leader, leader epoch,
//! replicas and ISR, topic configs, producer id blocks) as a state machine replicated by Raft.
//!
//! Metadata changes **only** through [`Controller::propose`]: a [`MetadataCommand`] is appended to
//! the Raft log, committed, and applied by the pure function [`state::apply`] to the
//! [`MetadataImage`], which readers get as a cheap `Arc` via [`Controller::image`] or
//! [`Controller::subscribe`]. openraft is an implementation detail: none of its types appear in
//! this crate's public API.
//!
//! The quorum is fixed by configuration (`controller.quorum.voters`): one voter (this node, no
//! network at all) or several, which talk over the controller listener (`raft/network.rs`).
//! Every node is a broker too; a node that is not the active controller forwards its proposals
//! and heartbeats to the one that is, and [`Controller::propose`] returns only once this node's
//! own image includes the change.
//!
//! On disk, under the directory given to [`Controller::open`]:
//! - `lock` — held with an exclusive advisory lock while a controller runs;
//! - `raft-log` — append-only journal of CRC-framed Raft log entries, votes, commit and purge
//!   marks (see `raft/log_store.rs`);
//! - `snapshot` — the last snapshot of the image, replaced atomically (see
//!   `raft/state_machine.rs`).

mod error;
mod fsio;
mod liveness;
mod metadata;
mod raft;
pub mod state;

pub use error::ControllerError;
pub use metadata::{
    BrokerEndpoint, MetadataCommand, MetadataError, MetadataImage, MetadataOutcome, PartitionImage,
    TopicImage, NO_LEADER,
};
pub use raft::network::{BrokerHeartbeat, HeartbeatReply};

use liveness::Liveness;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use raft::log_store::LogStore;
use raft::network::{Addresses, NetworkFactory, Peers, Request, Response};
use raft::state_machine::StateMachine;
use raft::{Raft, RaftNodeId};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};

const LOCK_FILE: &str = "lock";
/// How often the active controller checks broker sessions.
const LIVENESS_TICK: Duration = Duration::from_millis(100);
/// Backoff while no controller leader is known or the known one is unreachable.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two "still waiting for a quorum" log lines.
const QUORUM_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// Zero point of the millisecond clock given to the liveness core.
    started: tokio::time::Instant,
    tasks_stop: watch::Sender<bool>,
    /// The directory lock; `None` once shut down.
    lock: Mutex<Option<File>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// A proposal's fate on this node's own Raft.
enum LocalWrite {
    Applied {
        outcome: MetadataOutcome,
        index: u64,
    },
    NotLeader {
        leader: Option<NodeId>,
    },
}

/// The Raft state of this controller, for `spate cluster status` and DescribeQuorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The last log index this node holds.
    pub last_log_index: u64,
    /// The last index this node knows committed.
    pub committed_index: u64,
    pub voters: Vec<NodeId>,
    /// On the leader: each voter's matched log index (`None` while unknown).
    pub voter_matched: BTreeMap<NodeId, Option<u64>>,
}

impl Controller {
    /// Opens (or creates) the controller's durable state under `dir`, starts the Raft node and
    /// joins the quorum, then registers this node as a broker (fenced until its heartbeats show
    /// it caught up) and makes sure the cluster has an id.
    ///
    /// A fresh quorum needs no separate format step: every voter initializes membership with the
    /// same configured voter set (openraft allows that; the vote elects one leader). A directory
    /// whose stored voters differ from the configured ones is refused with
    /// [`ControllerError::VotersMismatch`], one created under another node id with
    /// [`ControllerError::NotAVoter`], and one locked by a running controller with
    /// [`ControllerError::Locked`].
    ///
    /// A single voter elects itself at once (a restarted one does not sit out the election
    /// timeout) and gives up after `open_timeout_ms`. Several voters wait for a majority as long
    /// as it takes, logging every few seconds: start the other nodes.
    ///
    /// Must run inside a Tokio runtime (either flavor); Raft runs as tasks on it and disk I/O
    /// on its blocking pool.
    ///
    /// Cancel safety: cancelling is safe but not instant: a Raft node already started is stopped
    /// in the background and the directory lock is released once it has stopped.
    pub async fn open(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
    ) -> Result<Controller, ControllerError> {
        Self::open_with_config(dir, node, advertised, ControllerConfig::default()).await
    }

    /// [`Controller::open`] with explicit settings.
    pub async fn open_with_config(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
        config: ControllerConfig,
    ) -> Result<Controller, ControllerError> {
        let started = Instant::now();
        let raft_id = raft::raft_id(node).ok_or(ControllerError::InvalidNodeId(node))?;
        let mut voters = BTreeMap::new();
        for (id, addr) in &config.voters {
            let rid = raft::raft_id(*id).ok_or(ControllerError::InvalidNodeId(*id))?;
            voters.insert(rid, addr.clone());
        }
        if !voters.is_empty() && !voters.contains_key(&raft_id) {
            return Err(ControllerError::NotInVoters {
                node,
                voters: config.voters.keys().copied().collect(),
            });
        }
        let multi_voter = voters.len() > 1;
        let listener = match config.listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ControllerError::io(format!("listening for controllers on {addr}"), e)
            })?),
            None if multi_voter => return Err(ControllerError::NoListener),
            None => None,
        };
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        // Disk recovery (replay, torn-tail truncation, fsyncs) runs on the blocking pool.
        let owned_dir = dir.to_owned();
        let (lock, log_store, state_machine, image_rx) =
            tokio::task::spawn_blocking(move || open_storage(&owned_dir))
                .await
                .map_err(|e| ControllerError::Raft(format!("storage recovery task: {e}")))??;

        let raft_config = openraft::Config {
            cluster_name: "spate-controller".to_owned(),
            heartbeat_interval: raft::HEARTBEAT_INTERVAL_MS,
            election_timeout_min: raft::ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: raft::ELECTION_TIMEOUT_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries.max(1)),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControllerError::Raft(format!("invalid raft config: {e}")))?;

        let identity = raft::network::Identity::new(
            config
                .known_cluster_id
                .clone()
                .or_else(|| image_rx.borrow().cluster_id.clone()),
        );
        let raft = Raft::new(
            raft_id,
            Arc::new(raft_config),
            NetworkFactory::new(
                Addresses {
                    voters: voters.clone(),
                },
                identity.clone(),
            ),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ControllerError::Raft(format!("starting raft: {e}")))?;

        let mut image_rx = image_rx;
        image_rx.mark_unchanged();
        let (tasks_stop, _) = watch::channel(false);
        let controller = Controller {
            inner: Arc::new(Inner {
                node,
                raft_id,
                raft,
                addresses: config.voters.clone(),
                liveness: std::sync::Mutex::new(Liveness::new(
                    i64::try_from(config.broker_session_timeout_ms).unwrap_or(i64::MAX),
                )),
                config,
                peers: Peers::new(identity.clone()),
                identity,
                image_rx,
                broker_epoch: AtomicU64::new(0),
                listen_addr,
                advertised: advertised.clone(),
                want_shutdown: std::sync::atomic::AtomicBool::new(false),
                heartbeat_now: tokio::sync::Notify::new(),
                last_heartbeat: watch::channel(None).0,
                started: tokio::time::Instant::now(),
                tasks_stop,
                lock: Mutex::new(Some(lock)),
            }),
        };
        if let Some(listener) = listener {
            let handler = request_handler(Arc::downgrade(&controller.inner));
            tokio::spawn(raft::network::serve(
                listener,
                handler,
                controller.inner.identity.clone(),
                controller.inner.tasks_stop.subscribe(),
            ));
        }
        tokio::spawn(liveness_task(
            Arc::downgrade(&controller.inner),
            controller.inner.tasks_stop.subscribe(),
        ));
        match controller.join(&advertised, &voters).await {
            Ok(()) => {
                tokio::spawn(heartbeat_task(
                    Arc::downgrade(&controller.inner),
                    controller.inner.tasks_stop.subscribe(),
                ));
                tracing::info!(
                    node = %node,
                    dir = %dir.display(),
                    voters = controller.inner.config.voters.len().max(1),
                    last_applied_index = controller.image().last_applied_index,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "controller open"
                );
                Ok(controller)
            }
            Err(e) => {
                if let Err(stop) = controller.shutdown().await {
                    tracing::warn!(error = %stop, "stopping the controller after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Initializes or checks membership, waits for a leader, names the cluster and registers
    /// this broker.
    async fn join(
        &self,
        advertised: &BrokerEndpoint,
        voters: &BTreeMap<RaftNodeId, String>,
    ) -> Result<(), ControllerError> {
        let raft = &self.inner.raft;
        let raft_id = self.inner.raft_id;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ControllerError::Stopped(e.to_string()))?;
        let configured: Vec<RaftNodeId> = if voters.is_empty() {
            vec![raft_id]
        } else {
            voters.keys().copied().collect()
        };
        if !initialized {
            let members: BTreeMap<RaftNodeId, BasicNode> = if voters.is_empty() {
                // The single voter's address is never dialled; record the broker's for operators.
                BTreeMap::from([(
                    raft_id,
                    BasicNode::new(format!("{}:{}", advertised.host, advertised.port)),
                )])
            } else {
                voters
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                    .collect()
            };
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    return Err(ControllerError::Raft(format!(
                        "initializing membership: {e}"
                    )))
                }
            }
        } else if configured == [raft_id] {
            self.check_voters(&configured)?;
            // A restarted sole voter would otherwise sit out a full election timeout first.
            raft.trigger()
                .elect(false)
                .await
                .map_err(|e| ControllerError::Stopped(e.to_string()))?;
        }
        let membership_known = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .next()
            .is_some();
        if initialized && membership_known {
            // Refuse a directory of another quorum before taking part in elections.
            self.check_voters(&configured)?;
        }
        if configured.len() == 1 {
            let timeout = Duration::from_millis(self.inner.config.open_timeout_ms);
            raft.wait(Some(timeout))
                .state(ServerState::Leader, "controller open: become leader")
                .await
                .map_err(|_| ControllerError::OpenTimeout {
                    waited_ms: timeout.as_millis() as u64,
                })?;
        } else {
            self.wait_for_quorum().await?;
            // Only now is the membership known for sure: a voter that peers reached before it
            // initialized itself learns it from the leader's log.
            self.check_voters(&configured)?;
        }
        self.ensure_cluster_id().await?;
        self.register(advertised).await?;
        self.wait_unfenced().await
    }

    /// Heartbeats until the active controller has unfenced this broker (it has applied the
    /// metadata log up to its own registration), as a Kafka broker waits before serving.
    async fn wait_unfenced(&self) -> Result<(), ControllerError> {
        let waiting_since = Instant::now();
        let mut last_log = Instant::now();
        loop {
            match self.heartbeat(false).await {
                Ok(reply) if !reply.fenced => {
                    self.inner.last_heartbeat.send_replace(Some(reply));
                    return Ok(());
                }
                Ok(reply) if reply.stale_epoch => self.register(&self.inner.advertised).await?,
                Ok(_) => {}
                Err(e @ ControllerError::Stopped(_)) => return Err(e),
                Err(e) => tracing::debug!(error = %e, "heartbeat while waiting to be unfenced"),
            }
            if last_log.elapsed() >= QUORUM_WAIT_LOG_EVERY {
                last_log = Instant::now();
                tracing::warn!(
                    node = %self.inner.node,
                    waited_s = waiting_since.elapsed().as_secs(),
                    "waiting for the active controller to unfence this broker"
                );
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Asks the active controller to move this broker's leaderships away (Kafka's controlled
    /// shutdown) and waits until it leads nothing, at most `timeout`. Returns whether it got
    /// there; either way the node may stop afterwards (an unclean stop only costs clients a
    /// session timeout of unavailability).
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        self.inner.want_shutdown.store(true, Ordering::SeqCst);
        self.inner.heartbeat_now.notify_one();
        let mut rx = self.inner.last_heartbeat.subscribe();
        let done = tokio::time::timeout(
            timeout,
            rx.wait_for(|r| r.as_ref().is_some_and(|r| r.shutdown_ready)),
        )
        .await;
        matches!(done, Ok(Ok(_)))
    }

    /// Refuses a directory whose quorum has other voters than the configured ones.
    fn check_voters(&self, configured: &[RaftNodeId]) -> Result<(), ControllerError> {
        let stored: Vec<RaftNodeId> = self
            .inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .collect();
        if !stored.contains(&self.inner.raft_id) {
            return Err(ControllerError::NotAVoter {
                node: self.inner.node,
                voters: stored.into_iter().filter_map(raft::spate_id).collect(),
            });
        }
        if stored != configured {
            return Err(ControllerError::VotersMismatch {
                stored: stored.into_iter().filter_map(raft::spate_id).collect(),
                configured: configured
                    .iter()
                    .copied()
                    .filter_map(raft::spate_id)
                    .collect(),
            });
        }
        Ok(())
    }

    /// Waits until a leader is known, logging every [`QUORUM_WAIT_LOG_EVERY`] while none is.
    async fn wait_for_quorum(&self) -> Result<(), ControllerError> {
        let waiting_since = Instant::now();
        loop {
            let waited = self
                .inner
                .raft
                .wait(Some(QUORUM_WAIT_LOG_EVERY))
                .metrics(
                    |m| m.current_leader.is_some(),
                    "a controller leader is known",
                )
                .await;
            match waited {
                Ok(_) => return Ok(()),
                Err(openraft::metrics::WaitError::Timeout(..)) => tracing::warn!(
                    node = %self.inner.node,
                    voters = ?self.inner.config.voters,
                    waited_s = waiting_since.elapsed().as_secs(),
                    "waiting for a majority of the controller quorum; start the other nodes"
                ),
                Err(e) => return Err(ControllerError::Stopped(e.to_string())),
            }
        }
    }

    /// Names the cluster with this node's candidate unless it already has a name.
    async fn ensure_cluster_id(&self) -> Result<(), ControllerError> {
        let cluster_id = match self.image().cluster_id.clone() {
            Some(id) => id,
            None => {
                let candidate = self
                    .inner
                    .config
                    .known_cluster_id
                    .clone()
                    .unwrap_or_else(new_cluster_id);
                match self
                    .propose(MetadataCommand::InitCluster {
                        cluster_id: candidate,
                    })
                    .await?
                {
                    MetadataOutcome::ClusterInitialized { cluster_id } => cluster_id,
                    other => {
                        return Err(ControllerError::Raft(format!(
                            "naming the cluster: {other:?}"
                        )))
                    }
                }
            }
        };
        self.inner.identity.set(&cluster_id);
        Ok(())
    }

    /// Registers (or re-registers) this node as a broker and remembers its broker epoch.
    pub async fn register(&self, advertised: &BrokerEndpoint) -> Result<(), ControllerError> {
        let cmd = MetadataCommand::RegisterBroker {
            node: self.inner.node,
            endpoint: advertised.clone(),
        };
        match self.propose(cmd).await? {
            MetadataOutcome::BrokerRegistered { broker_epoch } => {
                self.inner
                    .broker_epoch
                    .store(broker_epoch, Ordering::SeqCst);
                Ok(())
            }
            other => Err(ControllerError::Raft(format!(
                "registering this broker: {other:?}"
            ))),
        }
    }

    /// This broker's epoch: the log index of its latest registration.
    pub fn broker_epoch(&self) -> u64 {
        self.inner.broker_epoch.load(Ordering::SeqCst)
    }

    /// Appends `cmd` on this node's Raft if it is the leader.
    async fn write_local(&self, cmd: MetadataCommand) -> Result<LocalWrite, ControllerError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => {
                let index = resp.log_id.index();
                let outcome = resp.data.ok_or_else(|| {
                    ControllerError::Raft("applied command produced no outcome".to_owned())
                })?;
                Ok(LocalWrite::Applied { outcome, index })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
            | Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Ok(LocalWrite::NotLeader {
                    leader: f.leader_id.and_then(raft::spate_id),
                })
            }
            Err(RaftError::APIError(e)) => Err(ControllerError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ControllerError::Stopped(e.to_string())),
        }
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

    /// Replicates and applies one command; returns its outcome once it is applied on this node
    /// too. On a node that is not the active controller, the command is forwarded to the one
    /// that is (waiting through an election, within `request_timeout_ms`).
    ///
    /// A well-formed command that the metadata rules refuse is `Ok(MetadataOutcome::Rejected)`.
    ///
    /// Cancel safety: dropping the future does not withdraw the command; it may still be applied.
    /// After an error the command may or may not have been applied, and a forwarded command
    /// whose answer was lost is sent again: proposers must tolerate that (e.g.
    /// `TopicAlreadyExists` on a retried creation; commands carrying epochs are refused when
    /// stale).
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<MetadataOutcome, ControllerError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.inner.config.request_timeout_ms);
        let mut last_error = None;
        loop {
            let leader = match self.write_local(cmd.clone()).await? {
                LocalWrite::Applied { outcome, .. } => return Ok(outcome),
                LocalWrite::NotLeader { leader } => leader.or_else(|| self.leader()),
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(last_error.unwrap_or(ControllerError::NotLeader { leader }));
            }
            let target = leader
                .filter(|l| *l != self.inner.node)
                .and_then(|l| self.inner.addresses.get(&l).map(|a| (l, a.clone())));
            let Some((leader, addr)) = target else {
                tokio::time::sleep(RETRY_BACKOFF.min(remaining)).await;
                continue;
            };
            match self
                .inner
                .peers
                .call(&addr, &Request::Propose(cmd.clone()), remaining)
                .await
            {
                Ok(Response::Proposed { outcome, index }) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(outcome);
                }
                Ok(Response::NotLeader { leader: hint }) => {
                    last_error = Some(ControllerError::NotLeader { leader: hint });
                }
                Ok(Response::Failed(reason)) => {
                    last_error = Some(ControllerError::Forward { leader, reason });
                }
                Ok(other) => {
                    last_error = Some(ControllerError::Forward {
                        leader,
                        reason: format!("unexpected answer {other:?}"),
                    });
                }
                Err(e) => {
                    last_error = Some(ControllerError::Forward {
                        leader,
                        reason: e.to_string(),
                    });
                }
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(RETRY_BACKOFF.min(remaining)).await;
        }
    }

    /// Waits until this node has applied the log up to `index`.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ControllerError> {
        let mut rx = self.inner.image_rx.clone();
        let waited = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|image| image.last_applied_index >= index),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ControllerError::Stopped(
                "the state machine stopped".to_owned(),
            )),
            Err(_) => Err(ControllerError::ApplyTimeout { index }),
        }
    }

    /// Reports this broker alive to the active controller (directly when this node is it).
    /// `want_shutdown` asks for a controlled shutdown: leaderships move away, and the reply says
    /// when none is left.
    pub async fn heartbeat(&self, want_shutdown: bool) -> Result<HeartbeatReply, ControllerError> {
        let hb = BrokerHeartbeat {
            node: self.inner.node,
            broker_epoch: self.broker_epoch(),
            applied_index: self.image().last_applied_index,
            want_shutdown,
        };
        let leader = self
            .leader()
            .ok_or(ControllerError::NotLeader { leader: None })?;
        if leader == self.inner.node {
            return match handle_heartbeat(&self.inner, hb) {
                Response::Heartbeat(reply) => Ok(reply),
                Response::NotLeader { leader } => Err(ControllerError::NotLeader { leader }),
                other => Err(ControllerError::Raft(format!("heartbeat: {other:?}"))),
            };
        }
        let addr =
            self.inner
                .addresses
                .get(&leader)
                .cloned()
                .ok_or(ControllerError::NotLeader {
                    leader: Some(leader),
                })?;
        let timeout = Duration::from_millis(self.inner.config.request_timeout_ms);
        match self
            .inner
            .peers
            .call(&addr, &Request::Heartbeat(hb), timeout)
            .await
        {
            Ok(Response::Heartbeat(reply)) => Ok(reply),
            Ok(Response::NotLeader { leader }) => Err(ControllerError::NotLeader { leader }),
            Ok(other) => Err(ControllerError::Forward {
                leader,
                reason: format!("unexpected answer {other:?}"),
            }),
            Err(e) => Err(ControllerError::Forward {
                leader,
                reason: e.to_string(),
            }),
        }
    }

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

    /// The Raft view of this node: leader, term, indexes and (on the leader) each voter's lag.
    pub fn quorum_status(&self) -> QuorumStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = metrics
            .membership_config
            .voter_ids()
            .filter_map(raft::spate_id)
            .collect();
        let voter_matched = metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter_map(|(id, log)| {
                        raft::spate_id(*id).map(|n| (n, log.as_ref().map(|l| l.index())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        QuorumStatus {
            leader: metrics.current_leader.and_then(raft::spate_id),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: metrics.local_committed.map_or(0, |l| l.index()),
            voters,
            voter_matched,
        }
    }

    /// Stops Raft cleanly and releases the directory lock. Every write the controller
    /// acknowledged was already fsynced. Idempotent; later `propose` calls fail with
    /// [`ControllerError::Stopped`].
    pub async fn shutdown(&self) -> Result<(), ControllerError> {
        let mut lock = self.inner.lock.lock().await;
        if lock.is_none() {
            return Ok(());
        }
        let _ = self.inner.tasks_stop.send(true);
        let result = self.inner.raft.shutdown().await;
        // Dropping the file releases the advisory lock.
        *lock = None;
        result.map_err(|e| ControllerError::Raft(format!("raft shutdown: {e}")))
    }
}

/// A Kafka-style cluster id: 16 random bytes in URL-safe base64 without padding.
pub fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = uuid::Uuid::new_v4().as_u128();
    let mut out = String::with_capacity(22);
    for _ in 0..22 {
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
    }
    out
}

/// Serves requests arriving on the controller listener. Holds the controller weakly so that
/// the listener task does not keep a dropped controller alive.
fn request_handler(inner: Weak<Inner>) -> raft::network::Handler {
    Arc::new(move |request| {
        let inner = inner.clone();
        Box::pin(async move {
            let Some(inner) = inner.upgrade() else {
                return Response::Failed("controller stopped".to_owned());
            };
            let raft = &inner.raft;
            match request {
                Request::AppendEntries(rpc) => match raft.append_entries(rpc).await {
                    Ok(r) => Response::AppendEntries(r),
                    Err(e) => Response::Failed(e.to_string()),
                },
                Request::Vote(rpc) => match raft.vote(rpc).await {
                    Ok(r) => Response::Vote(r),
                    Err(e) => Response::Failed(e.to_string()),
                },
                Request::PreVote(rpc) => match raft.pre_vote(rpc).await {
                    Ok(r) => Response::Vote(r),
                    Err(e) => Response::Failed(e.to_string()),
                },
                Request::Snapshot { vote, meta, image } => {
                    let snapshot = raft::state_machine::Snapshot {
                        meta,
                        snapshot: image,
                    };
                    match raft.install_full_snapshot(vote, snapshot).await {
                        Ok(r) => Response::Snapshot(r),
                        Err(e) => Response::Failed(e.to_string()),
                    }
                }
                Request::Propose(cmd) => {
                    let controller = Controller {
                        inner: inner.clone(),
                    };
                    match controller.write_local(cmd).await {
                        Ok(LocalWrite::Applied { outcome, index }) => {
                            Response::Proposed { outcome, index }
                        }
                        Ok(LocalWrite::NotLeader { leader }) => Response::NotLeader { leader },
                        Err(e) => Response::Failed(e.to_string()),
                    }
                }
                Request::Heartbeat(hb) => handle_heartbeat(&inner, hb),
            }
        })
    })
}

fn now_ms(inner: &Inner) -> i64 {
    i64::try_from(inner.started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

fn is_leader(inner: &Inner) -> bool {
    inner.raft.metrics().borrow_watched().state == ServerState::Leader
}

/// The active controller's side of a heartbeat: answers at once, proposes any resulting change
/// in the background (the next heartbeat's answer shows it).
fn handle_heartbeat(inner: &Arc<Inner>, hb: BrokerHeartbeat) -> Response {
    if !is_leader(inner) {
        return Response::NotLeader {
            leader: inner
                .raft
                .metrics()
                .borrow_watched()
                .current_leader
                .and_then(raft::spate_id),
        };
    }
    let image = inner.image_rx.borrow().clone();
    let now = now_ms(inner);
    let (reply, command) = match inner.liveness.lock() {
        Ok(mut liveness) => {
            liveness.set_leading(now, true);
            liveness.heartbeat(now, &hb, &image)
        }
        Err(_) => return Response::Failed("liveness state poisoned".to_owned()),
    };
    if let Some(cmd) = command {
        propose_in_background(inner, cmd);
    }
    Response::Heartbeat(reply)
}

fn propose_in_background(inner: &Arc<Inner>, cmd: MetadataCommand) {
    let controller = Controller {
        inner: inner.clone(),
    };
    tokio::spawn(async move {
        tracing::info!(command = %cmd, "broker liveness change");
        match controller.write_local(cmd.clone()).await {
            Ok(LocalWrite::Applied {
                outcome: MetadataOutcome::Rejected(e),
                ..
            }) => tracing::warn!(command = %cmd, error = %e, "liveness change refused"),
            Ok(_) => {}
            Err(e) => tracing::warn!(command = %cmd, error = %e, "liveness change failed"),
        }
    });
}

/// This broker's heartbeats, every `broker.heartbeat.interval.ms` (at once after a shutdown
/// request). A stale-epoch answer (the controller forgot this incarnation) registers again.
async fn heartbeat_task(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let Some(interval) = inner
        .upgrade()
        .map(|i| Duration::from_millis(i.config.broker_heartbeat_interval_ms.max(1)))
    else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let controller = Controller { inner: strong };
        let want_shutdown = controller.inner.want_shutdown.load(Ordering::SeqCst);
        match controller.heartbeat(want_shutdown).await {
            Ok(reply) if reply.stale_epoch => {
                tracing::warn!(
                    "the active controller does not know this broker's epoch; registering again"
                );
                if let Err(e) = controller.register(&controller.inner.advertised).await {
                    tracing::warn!(error = %e, "re-registering failed");
                }
            }
            Ok(reply) => {
                failures = 0;
                controller.inner.last_heartbeat.send_replace(Some(reply));
            }
            Err(e) => {
                failures += 1;
                // One line per few seconds of trouble, not one per heartbeat.
                if failures % 10 == 1 {
                    tracing::warn!(error = %e, failures, "broker heartbeat failed");
                }
            }
        }
        let wake = controller.inner.clone();
        drop(controller);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.heartbeat_now.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// On the active controller: fences brokers whose session expired.
async fn liveness_task(inner: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let leading = is_leader(&inner);
        let image = inner.image_rx.borrow().clone();
        let now = now_ms(&inner);
        let commands = match inner.liveness.lock() {
            Ok(mut liveness) => {
                liveness.set_leading(now, leading);
                liveness.tick(now, &image)
            }
            Err(_) => return,
        };
        for cmd in commands {
            propose_in_background(&inner, cmd);
        }
    }
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

type Storage = (
    File,
    LogStore,
    StateMachine,
    watch::Receiver<Arc<MetadataImage>>,
);

/// Locks `dir` (creating it) and recovers the Raft log and the last snapshot.
fn open_storage(dir: &Path) -> Result<Storage, ControllerError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ControllerError::io(format!("creating {}", dir.display()), e))?;
    let lock = lock_dir(dir)?;
    let (log_store, recovery) = LogStore::open(dir).map_err(|e| {
        ControllerError::io(format!("opening the raft log in {}", dir.display()), e)
    })?;
    if recovery.torn_tail_bytes > 0 {
        tracing::warn!(
            dir = %dir.display(),
            records = recovery.records,
            dropped_bytes = recovery.torn_tail_bytes,
            "controller raft log had a torn tail (crash during a write); dropped it"
        );
    }
    let (state_machine, image_rx) = StateMachine::open(dir).map_err(|e| {
        ControllerError::io(format!("loading the snapshot in {}", dir.display()), e)
    })?;
    Ok((lock, log_store, state_machine, image_rx))
}

/// Takes the exclusive advisory lock on `dir/lock`, held for as long as the file stays open.
fn lock_dir(dir: &Path) -> Result<File, ControllerError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ControllerError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(ControllerError::Locked {
                path: dir.to_owned(),
            })
        }
        Err(TryLockError::Error(e)) => {
            return Err(ControllerError::io(
                format!("locking {}", path.display()),
                e,
            ))
        }
    }
    // For the operator who finds the lock: which process holds it.
    let pid = format!("{}\n", std::process::id());
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
    {
        tracing::debug!(error = %e, "could not record the pid in the controller lock file");
    }
    Ok(file)
}
