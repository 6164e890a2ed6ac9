//! The Spate controller: cluster metadata (brokers, topics, partitions with leader, leader epoch,
//! replicas and ISR, topic configs, producer id blocks) as a state machine replicated by Raft.
//!
//! Metadata changes **only** through [`Controller::propose`]: a [`MetadataCommand`] is appended to
//! the Raft log, committed, and applied by the pure function [`state::apply`] to the
//! [`MetadataImage`], which readers get as a cheap `Arc` via [`Controller::image`] or
//! [`Controller::subscribe`]. Today the quorum is a single voter (this node); the network
//! milestone adds voters through the same path. openraft is an implementation detail: none of its
//! types appear in this crate's public API.
//!
//! On disk, under the directory given to [`Controller::open`]:
//! - `lock` — held with an exclusive advisory lock while a controller runs;
//! - `raft-log` — append-only journal of CRC-framed Raft log entries, votes, commit and purge
//!   marks (see `raft/log_store.rs`);
//! - `snapshot` — the last snapshot of the image, replaced atomically (see
//!   `raft/state_machine.rs`).

mod error;
mod fsio;
mod metadata;
mod raft;
pub mod state;

pub use error::ControllerError;
pub use metadata::{
    BrokerEndpoint, MetadataCommand, MetadataError, MetadataImage, MetadataOutcome, PartitionImage,
    TopicImage,
};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use raft::log_store::LogStore;
use raft::network::{NetworkFactory, Router};
use raft::state_machine::StateMachine;
use raft::{Raft, RaftNodeId};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};

const LOCK_FILE: &str = "lock";

/// Tuning knobs; [`Controller::open`] uses the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Build a snapshot once this many entries were applied since the last one; the log before
    /// it is then purged.
    pub snapshot_every_entries: u64,
    /// Applied entries kept in the log behind a snapshot, so a briefly lagging voter can catch up
    /// from the log instead of a full snapshot.
    pub log_entries_kept_after_snapshot: u64,
    /// How long [`Controller::open`] waits for this node to become the active controller.
    pub open_timeout_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            snapshot_every_entries: 1000,
            log_entries_kept_after_snapshot: 100,
            open_timeout_ms: 10_000,
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
    router: Router,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
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

impl Controller {
    /// Opens (or creates) the controller's durable state under `dir`, starts the Raft node,
    /// and for a fresh single-node cluster initializes membership with this node as the only
    /// voter, then waits until it is leader and has applied its log. Also proposes
    /// `RegisterBroker` for itself.
    ///
    /// Fails with [`ControllerError::Locked`] if another controller has `dir` open.
    ///
    /// Takes a few milliseconds on a local disk: a fresh node initializes and elects itself at
    /// once, and a restarted sole voter triggers its election instead of waiting out the election
    /// timeout. Fails fast with [`ControllerError::NotAVoter`] if `dir` belongs to another node
    /// id, and with [`ControllerError::OpenTimeout`] after `open_timeout_ms` (default 10 s) if it
    /// cannot become leader.
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

    /// [`Controller::open`] with explicit tuning.
    pub async fn open_with_config(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
        config: ControllerConfig,
    ) -> Result<Controller, ControllerError> {
        let started = Instant::now();
        let raft_id = raft::raft_id(node).ok_or(ControllerError::InvalidNodeId(node))?;
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

        let router = Router::default();
        let raft = Raft::new(
            raft_id,
            Arc::new(raft_config),
            NetworkFactory::new(router.clone()),
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ControllerError::Raft(format!("starting raft: {e}")))?;
        router.register(raft_id, raft.clone());

        let mut image_rx = image_rx;
        image_rx.mark_unchanged();
        let controller = Controller {
            inner: Arc::new(Inner {
                node,
                raft_id,
                raft,
                router,
                image_rx,
                lock: Mutex::new(Some(lock)),
            }),
        };
        let timeout = Duration::from_millis(config.open_timeout_ms);
        match controller.become_leader(&advertised, timeout).await {
            Ok(()) => {
                tracing::info!(
                    node = %node,
                    dir = %dir.display(),
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

    async fn become_leader(
        &self,
        advertised: &BrokerEndpoint,
        timeout: Duration,
    ) -> Result<(), ControllerError> {
        let raft = &self.inner.raft;
        let raft_id = self.inner.raft_id;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ControllerError::Stopped(e.to_string()))?;
        if !initialized {
            let mut members = BTreeMap::new();
            members.insert(
                raft_id,
                BasicNode::new(format!("{}:{}", advertised.host, advertised.port)),
            );
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    return Err(ControllerError::Raft(format!(
                        "initializing membership: {e}"
                    )))
                }
            }
        } else {
            // A restarted sole voter would otherwise sit out a full election timeout first.
            let voters: Vec<RaftNodeId> = raft
                .metrics()
                .borrow_watched()
                .membership_config
                .voter_ids()
                .collect();
            if !voters.contains(&raft_id) {
                return Err(ControllerError::NotAVoter {
                    node: self.inner.node,
                    voters: voters.into_iter().filter_map(raft::spate_id).collect(),
                });
            }
            if voters == [raft_id] {
                raft.trigger()
                    .elect(false)
                    .await
                    .map_err(|e| ControllerError::Stopped(e.to_string()))?;
            }
        }
        raft.wait(Some(timeout))
            .state(ServerState::Leader, "controller open: become leader")
            .await
            .map_err(|_| ControllerError::OpenTimeout {
                waited_ms: timeout.as_millis() as u64,
            })?;
        // Applied in log order, so once this is applied so is everything before it.
        let cmd = MetadataCommand::RegisterBroker {
            node: self.inner.node,
            endpoint: advertised.clone(),
        };
        match self.propose(cmd).await? {
            MetadataOutcome::BrokerRegistered => Ok(()),
            other => Err(ControllerError::Raft(format!(
                "registering this broker: {other:?}"
            ))),
        }
    }

    /// Replicates and applies one command; returns its outcome once applied (committed).
    ///
    /// A well-formed command that the metadata rules refuse is `Ok(MetadataOutcome::Rejected)`.
    ///
    /// Cancel safety: dropping the future does not withdraw the command; it may still be applied.
    /// After [`ControllerError::NotLeader`] the command may or may not have been applied (the
    /// proposer must tolerate e.g. `TopicAlreadyExists` on retry).
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<MetadataOutcome, ControllerError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => resp.data.ok_or_else(|| {
                ControllerError::Raft("applied command produced no outcome".to_owned())
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
            | Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Err(ControllerError::NotLeader {
                    leader: f.leader_id.and_then(raft::spate_id),
                })
            }
            Err(RaftError::APIError(e)) => Err(ControllerError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ControllerError::Stopped(e.to_string())),
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

    /// Stops Raft cleanly and releases the directory lock. Every write the controller
    /// acknowledged was already fsynced. Idempotent; later `propose` calls fail with
    /// [`ControllerError::Stopped`].
    pub async fn shutdown(&self) -> Result<(), ControllerError> {
        let mut lock = self.inner.lock.lock().await;
        if lock.is_none() {
            return Ok(());
        }
        let result = self.inner.raft.shutdown().await;
        self.inner.router.unregister(self.inner.raft_id);
        // Dropping the file releases the advisory lock.
        *lock = None;
        result.map_err(|e| ControllerError::Raft(format!("raft shutdown: {e}")))
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
        self.router.unregister(self.raft_id);
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
