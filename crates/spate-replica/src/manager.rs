//! The partition replicas this node hosts: the one map of them, their fetchers and their ISR
//! proposals. The reconciler (in the server) calls [`ReplicaManager::ensure`] and
//! [`ReplicaManager::delete`] for each metadata image; the front end reaches partitions through
//! [`ReplicaManager::get`]; every call that can make a replica change role or propose an ISR
//! change goes through here, so the fetchers and the proposal queue always follow the replicas.
//!
//! Each partition directory holds `partition.metadata` with its topic id (as Kafka's does), so a
//! topic deleted and re-created under the same name, even while this node was down, never
//! revives the old data. A new partition's directory (and the logs directory, if it is new too)
//! is made durable before its log is opened, so a crash never loses a partition's name while
//! keeping its fsynced data.
//!
//! Every file is reached through the [`Disk`] given to [`ReplicaManager::new`].

use crate::core::{Command, LeaderAndIsr, ReplicaSettings};
use crate::fetcher::{FetcherSettings, Fetchers};
use crate::health::StorageHealth;
use crate::partition::{FlushPolicy, FollowerFetch, Partition, PartitionRead, ReplicaError};
use spate_log::LogConfig;
use spate_types::disk::{self, Disk};
use spate_types::{LeaderEpoch, NodeId, Offset, TopicPartition};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use uuid::Uuid;

pub const PARTITION_METADATA: &str = "partition.metadata";
/// A `partition.metadata` longer than this is not one we wrote.
const PARTITION_METADATA_BYTES_MAX: u64 = 4096;
/// ISR proposals waiting for the controller, across all partitions (each partition has at most
/// one pending); a full queue refuses the proposal, which the leader retries on a later tick.
pub const ISR_PROPOSALS_QUEUED_MAX: usize = 1024;

/// A leader's request to change a partition's ISR, for the controller (AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    pub tp: TopicPartition,
    pub leader_epoch: LeaderEpoch,
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
}

/// What the controller's answer to an [`IsrProposal`] tells its leader (Kafka's
/// `Partition.handleAlterPartitionError` draws the same lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsrAnswer {
    /// Applied: the metadata brings the new ISR.
    Committed,
    /// Applied as a refusal (an ineligible or invalid ISR): the proposal is forgotten, and a
    /// joiner stops counting in the high watermark.
    Refused,
    /// Refused because the leader's partition state is out of date (the epochs moved, perhaps
    /// by this very proposal, sent before and answered late): the proposal stays pending until
    /// the newer metadata arrives and settles it.
    Stale,
    /// No answer that says whether it was applied (a timeout, a lost connection, a stopped
    /// controller): the proposal stays pending, its joiner counting in the high watermark, and
    /// is sent again.
    Unknown,
}

/// Node-wide replication settings.
#[derive(Clone, Debug)]
pub struct ReplicationSettings {
    pub node: NodeId,
    /// `replica.lag.time.max.ms`
    pub replica_lag_time_max_ms: i64,
    pub fetch: FetcherSettings,
}

/// Hosts partitions under `<logs_dir>/<topic>-<partition>`, the directory naming Kafka uses.
pub struct ReplicaManager {
    disk: Arc<dyn Disk>,
    logs_dir: PathBuf,
    policy: FlushPolicy,
    settings: ReplicationSettings,
    partitions: RwLock<BTreeMap<TopicPartition, Arc<Partition>>>,
    proposals: mpsc::Sender<IsrProposal>,
    fetchers: Fetchers,
    health: StorageHealth,
    /// Partitions found damaged (see `damage.rs`), for the owner to report to the controller.
    damage: mpsc::Sender<TopicPartition>,
    damage_reports: std::sync::Mutex<Option<mpsc::Receiver<TopicPartition>>>,
}

impl ReplicaManager {
    /// Hosts partitions under `logs_dir` on `disk`. The receiver gets every ISR proposal; its
    /// owner sends each to the controller and reports the answer with
    /// [`ReplicaManager::isr_proposal_answered`].
    pub fn new(
        disk: Arc<dyn Disk>,
        logs_dir: impl Into<PathBuf>,
        policy: FlushPolicy,
        settings: ReplicationSettings,
    ) -> (Arc<Self>, mpsc::Receiver<IsrProposal>) {
        let (proposals, rx) = mpsc::channel(ISR_PROPOSALS_QUEUED_MAX);
        let (damage, damage_reports) = mpsc::channel(ISR_PROPOSALS_QUEUED_MAX);
        let fetchers = Fetchers::new(settings.node, settings.fetch.clone());
        let manager = Arc::new(Self {
            disk,
            logs_dir: logs_dir.into(),
            policy,
            settings,
            partitions: RwLock::new(BTreeMap::new()),
            proposals,
            fetchers,
            health: StorageHealth::default(),
            damage,
            damage_reports: std::sync::Mutex::new(Some(damage_reports)),
        });
        (manager, rx)
    }

    /// The partitions found damaged, each once (see `damage.rs`): the owner asks the
    /// controller to take this node out of their ISRs. `None` after the first call.
    pub fn take_damage_reports(&self) -> Option<mpsc::Receiver<TopicPartition>> {
        self.damage_reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// A read of `partition` from `start` failed with `error`: damage is recorded and
    /// reported once (see [`Partition::read_failed`]).
    pub fn read_failed(&self, partition: &Partition, start: Offset, error: &ReplicaError) {
        if partition.read_failed(start, error) {
            self.report_damage(partition);
        }
    }

    fn report_damage(&self, partition: &Partition) {
        if self
            .damage
            .try_send(partition.topic_partition().clone())
            .is_err()
        {
            tracing::warn!(partition = %partition.topic_partition(), "damage report queue full; reporting at the next read");
            partition.forget_damage();
        }
    }

    pub fn node(&self) -> NodeId {
        self.settings.node
    }

    /// The first failed fsync of any hosted partition: the node must stop when there is one.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    pub fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    pub fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.logs_dir.join(format!("{}-{}", tp.topic, tp.partition))
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().ok()?.get(tp).cloned()
    }

    pub fn contains(&self, tp: &TopicPartition) -> bool {
        self.partitions
            .read()
            .map(|p| p.contains_key(tp))
            .unwrap_or(false)
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every hosted partition with its topic id.
    pub fn hosted(&self) -> Vec<(TopicPartition, Uuid)> {
        self.partitions
            .read()
            .map(|p| p.iter().map(|(tp, p)| (tp.clone(), p.topic_id())).collect())
            .unwrap_or_default()
    }

    /// Where the other brokers' Kafka listeners are, for the fetchers.
    pub fn set_broker_addresses(&self, addresses: BTreeMap<NodeId, String>) {
        self.fetchers.set_addresses(addresses);
    }

    /// Brings one partition to the controller's state: opens it (claiming its directory for
    /// `topic_id`, recovering its log) unless hosted, applies the topic config, which of its
    /// replicas may not join the ISR (`ineligible`: their brokers are fenced, shutting down or
    /// not registered), and the leader and ISR. Idempotent.
    pub fn ensure(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
        state: LeaderAndIsr,
        ineligible: BTreeSet<NodeId>,
        now_ms: i64,
    ) -> Result<Arc<Partition>, ReplicaError> {
        let opened = self.get(&tp).is_none();
        let partition = match self.get(&tp) {
            Some(p) => p,
            None => self
                .open(tp.clone(), topic_id, config.clone(), now_ms)
                .inspect_err(|e| {
                    // A replica the metadata counts on cannot serve: the node stops, as on a failed
                    // fsync, so that its supervisor restarts it and the open is tried again, rather
                    // than serving on without the partition (Kafka takes the log directory offline).
                    if matches!(e, ReplicaError::Log(spate_log::LogError::Io(_))) {
                        self.health.fail(format!("cannot open partition {tp}: {e}"));
                    }
                })?,
        };
        let mut commands = partition.set_config(config)?;
        commands.extend(partition.set_ineligible(ineligible)?);
        commands.extend(partition.apply(state)?);
        self.execute(&partition, commands);
        if opened && partition.damaged_from().is_some() {
            // Once it knows its ISR: the report is dropped for a replica out of it.
            self.report_damage(&partition);
        }
        Ok(partition)
    }

    fn open(
        &self,
        tp: TopicPartition,
        topic_id: Uuid,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Arc<Partition>, ReplicaError> {
        let dir = self.partition_dir(&tp);
        claim_dir(&*self.disk, &dir, topic_id)
            .map_err(|e| ReplicaError::Log(spate_log::LogError::Io(e)))?;
        let settings = ReplicaSettings {
            local: self.settings.node,
            replica_lag_time_max_ms: self.settings.replica_lag_time_max_ms,
            min_insync_replicas: usize::try_from(config.min_insync_replicas.max(1)).unwrap_or(1),
            fsync_required: self.policy.fsync_acks_all,
        };
        let partition = Partition::open(
            Arc::clone(&self.disk),
            &dir,
            tp.clone(),
            topic_id,
            config,
            settings,
            self.policy,
            self.health.clone(),
            self.settings.fetch.clock.clone(),
            now_ms,
        )?;
        let mut map = self
            .partitions
            .write()
            .map_err(|_| ReplicaError::Closed(tp.clone()))?;
        Ok(map.entry(tp).or_insert(partition).clone())
    }

    /// Carries out the commands a replica returned that concern the node: fetchers and
    /// ISR proposals.
    fn execute(&self, partition: &Arc<Partition>, commands: Vec<Command>) {
        let tp = partition.topic_partition();
        for command in commands {
            match command {
                Command::BecomeLeader { leader_epoch, .. } => {
                    // The simulator's invariant 4 check reads this line (node, partition, topic
                    // id, epoch).
                    tracing::info!(node = %self.settings.node, partition = %tp, topic_id = %partition.topic_id(), %leader_epoch, "became leader");
                    self.fetchers.unfollow(tp);
                }
                Command::BecomeFollower {
                    leader,
                    leader_epoch,
                } => {
                    tracing::info!(partition = %tp, %leader, %leader_epoch, "became follower");
                    self.fetchers
                        .follow(partition.clone(), leader, leader_epoch);
                }
                Command::Offline { leader_epoch } => {
                    tracing::info!(partition = %tp, %leader_epoch, "offline (no leader)");
                    self.fetchers.unfollow(tp);
                }
                Command::ProposeIsr {
                    leader_epoch,
                    partition_epoch,
                    isr,
                } => {
                    let proposal = IsrProposal {
                        tp: tp.clone(),
                        leader_epoch,
                        partition_epoch,
                        isr,
                    };
                    if self.proposals.try_send(proposal).is_err() {
                        tracing::warn!(partition = %tp, "ISR proposal queue full; retrying later");
                        if let Ok(more) = partition.isr_change_refused() {
                            self.execute(partition, more);
                        }
                    }
                }
                // Published by the partition itself.
                Command::HighWatermark(_) => {}
            }
        }
    }

    /// The controller answered `proposal` with `answer`. Returns whether to send it again: only
    /// for [`IsrAnswer::Unknown`], and only while the partition still has this very proposal
    /// pending (a newer state or proposal settles it).
    pub fn isr_proposal_answered(
        &self,
        tp: &TopicPartition,
        proposal: &IsrProposal,
        answer: IsrAnswer,
    ) -> bool {
        let Some(partition) = self.get(tp) else {
            return false;
        };
        // An answer to an older proposal must not settle a newer one.
        let still_pending = partition.pending_isr_change().is_some_and(|p| {
            p.partition_epoch == proposal.partition_epoch && p.isr == proposal.isr
        });
        match answer {
            IsrAnswer::Committed | IsrAnswer::Stale => false,
            IsrAnswer::Unknown => still_pending,
            IsrAnswer::Refused => {
                if still_pending {
                    if let Ok(commands) = partition.isr_change_refused() {
                        self.execute(&partition, commands);
                    }
                }
                false
            }
        }
    }

    /// A follower's fetch of `tp` at `fetch_offset` (see [`Partition::read_for_follower`]).
    pub fn read_for_follower(
        &self,
        partition: &Arc<Partition>,
        fetch: FollowerFetch,
    ) -> Result<PartitionRead, ReplicaError> {
        let (read, commands) = partition.read_for_follower(fetch)?;
        self.execute(partition, commands);
        Ok(read)
    }

    /// Periodic work: leaders check follower lag (ISR shrink proposals), on each partition's
    /// monotonic clock.
    pub fn tick(&self) {
        for partition in self.all() {
            match partition.tick() {
                Ok(commands) => self.execute(&partition, commands),
                Err(e) => {
                    tracing::debug!(partition = %partition.topic_partition(), error = %e, "tick")
                }
            }
        }
    }

    /// Writes every moved high watermark to its checkpoint. Blocking.
    pub fn checkpoint_high_watermarks(&self) {
        for partition in self.all() {
            if let Err(e) = partition.checkpoint_high_watermark() {
                tracing::warn!(partition = %partition.topic_partition(), error = %e, "high watermark checkpoint failed");
            }
        }
    }

    /// Stops hosting the partition and deletes its data.
    pub fn delete(&self, tp: &TopicPartition) -> Result<(), ReplicaError> {
        self.fetchers.unfollow(tp);
        let removed = self
            .partitions
            .write()
            .ok()
            .and_then(|mut map| map.remove(tp));
        if let Some(partition) = removed {
            if let Some(log) = partition.close()? {
                log.delete()?;
            }
        } else {
            match self.disk.remove_dir_all(&self.partition_dir(tp)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ReplicaError::Log(spate_log::LogError::Io(e)));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes partition directories of partitions the metadata does not assign to this node
    /// (`assigned`: topics deleted, or reassigned away, while this node was down). Run once at
    /// start-up, after the first reconciliation. Decided by the metadata, never by which
    /// partitions opened: an assigned partition that failed to open (a full disk during its
    /// recovery) keeps its data, or a restart would come back empty, be elected from the ISR,
    /// and take every acknowledged record with it (simulator seed 2491). A directory of another
    /// topic id under an assigned name is replaced when that partition opens (`claim_dir`).
    pub fn remove_orphans(&self, assigned: &BTreeSet<TopicPartition>) {
        let Ok(entries) = self.disk.read_dir(&self.logs_dir) else {
            return;
        };
        let hosted: BTreeSet<PathBuf> = assigned.iter().map(|tp| self.partition_dir(tp)).collect();
        for entry in entries {
            let path = self.logs_dir.join(&entry.name);
            if entry.is_dir
                && self.disk.file_len(&path.join(PARTITION_METADATA)).is_ok()
                && !hosted.contains(&path)
            {
                tracing::info!(dir = %path.display(), "removing data of a partition this node no longer hosts");
                if let Err(e) = self.disk.remove_dir_all(&path) {
                    tracing::error!(dir = %path.display(), error = %e, "failed to remove orphan partition");
                }
            }
        }
    }

    /// Stops the fetchers, fsyncs and closes every partition (clean shutdown).
    pub async fn close_all(&self) -> Vec<(TopicPartition, ReplicaError)> {
        self.fetchers.shutdown().await;
        let mut failures = Vec::new();
        for partition in self.all() {
            if let Err(e) = partition.close() {
                failures.push((partition.topic_partition().clone(), e));
            }
        }
        failures
    }
}

/// Makes `dir` belong to `topic_id`: an existing directory of another topic id is removed. The
/// directory (with any missing parent) and its `partition.metadata` file are made durable
/// before any data goes in.
fn claim_dir(disk: &dyn Disk, dir: &Path, topic_id: Uuid) -> std::io::Result<()> {
    let file = dir.join(PARTITION_METADATA);
    let content = format!("version: 0\ntopic_id: {topic_id}\n");
    if let Some(existing) = disk::read_bounded(disk, &file, PARTITION_METADATA_BYTES_MAX)? {
        let existing = std::str::from_utf8(&existing)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if existing == content {
            return Ok(());
        }
        tracing::info!(dir = %dir.display(), "removing data of a deleted topic with the same name");
        disk.remove_dir_all(dir)?;
    }
    if let Some(parent) = dir.parent() {
        // The logs directory itself is new on a node's first partition.
        spate_types::disk::create_dir_all_durable(disk, parent)?;
        disk.create_dir_all(dir)?;
        disk.sync_dir(parent)?;
    } else {
        disk.create_dir_all(dir)?;
    }
    disk::write_atomic(disk, dir, PARTITION_METADATA, content.as_bytes())
}
