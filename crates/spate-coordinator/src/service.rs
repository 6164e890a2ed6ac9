//! The coordinator task: one owner of the [`GroupCoordinator`] core, reached by message.
//!
//! A node coordinates the groups of the `__consumer_offsets` partitions it leads (a group's
//! partition is Kafka's hash of the group id). [`Coordinator::own`] hands the task the set of
//! partitions this node leads: a newly led partition is replayed into memory (up to its log
//! end: as the leader, its log is the partition's truth), and the groups of a partition no
//! longer led are dropped, their waiting requests answered NOT_COORDINATOR. Requests for a
//! group whose partition is not led here get NOT_COORDINATOR, so clients look the coordinator
//! up again (FindCoordinator names the partition's leader).
//!
//! An OffsetCommit is applied to memory once its batch is in the log and answered only after
//! the batch is below the high watermark ([`CommitOutcome::durable`]: fsynced on every in-sync
//! replica). A SyncGroup that hands out an assignment is answered, as in Kafka, only once the
//! group's record (generation, members, assignment) is below the high watermark too, or the
//! partition's log as this node loaded it, for a group no record was written for since: a
//! coordinator that takes over after a failure then knows every generation a member was
//! assigned partitions in, and never counts one again with other members (two members owning
//! one partition in "the same" generation, and a commit of the older one's accepted). Other
//! group records (a member left, the group emptied) are not waited for: losing one costs
//! members a rejoin.

use crate::core::{
    Action, CommitRequest, GroupCoordinator, GroupSettings, HeartbeatRequest, JoinRequest,
    JoinResponse, LeaveRequest, LeaveResponse, ReplyId, SyncRequest, SyncResponse,
};
use crate::error::GroupError;
use crate::records::{partition_for, OffsetsRecord};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_log::BatchHeader;
use spate_replica::{Partition, ReplicaError};
use spate_types::{Clock, Offset, Seams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Kafka's name for the internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Requests queued for the coordinator task; senders wait when it is full.
const COMMANDS_QUEUED_MAX: usize = 4096;
/// Bytes read per step when replaying an offsets partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

type Query = Box<dyn FnOnce(&mut GroupCoordinator, i64) + Send>;

enum Command {
    Join(JoinRequest, oneshot::Sender<JoinResponse>),
    Sync(SyncRequest, oneshot::Sender<SyncResponse>),
    Commit(CommitRequest, oneshot::Sender<CommitOutcome>),
    /// A TxnOffsetCommit of this producer id and epoch.
    TxnCommit(CommitRequest, TxnProducer, oneshot::Sender<CommitOutcome>),
    Query(Query),
    /// A query about one group: refused unless its partition is led here.
    GroupQuery(String, Query, oneshot::Sender<GroupError>),
    /// The offsets partitions this node leads now, by partition number.
    Own(BTreeMap<i32, Arc<Partition>>),
}

impl Command {
    /// The group a command is about, if it is about one.
    fn group(&self) -> Option<&str> {
        match self {
            Command::Join(req, _) => Some(&req.group_id),
            Command::Sync(req, _) => Some(&req.group_id),
            Command::Commit(req, _) | Command::TxnCommit(req, _, _) => Some(&req.group_id),
            Command::GroupQuery(group, _, _) => Some(group),
            Command::Query(_) | Command::Own(_) => None,
        }
    }
}

/// Which offsets partitions this node coordinates.
#[derive(Debug, Default)]
struct Ownership {
    count: i32,
    owned: BTreeSet<i32>,
}

impl Ownership {
    fn check(&self, group: &str) -> Result<(), GroupError> {
        if self.count > 0 && self.owned.contains(&partition_for(group, self.count)) {
            Ok(())
        } else {
            Err(GroupError::NotCoordinator)
        }
    }
}

/// The result of an OffsetCommit.
pub struct CommitOutcome {
    /// A group-level refusal, or one result per requested partition, in request order.
    pub results: Result<Vec<Option<GroupError>>, GroupError>,
    /// Wait for this offset of this partition to be fsynced before answering.
    pub durable: Option<(Arc<Partition>, Offset)>,
}

/// A handle to the coordinator task. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Command>,
    ownership: Arc<RwLock<Ownership>>,
}

impl Coordinator {
    /// Starts the task for a `__consumer_offsets` topic of `partition_count` partitions,
    /// coordinating nothing until [`Coordinator::own`] says which partitions are led here.
    /// It reads the time (the wall clock: group deadlines, commit and expiry timestamps are
    /// epoch milliseconds) and its incarnation id from `seams` (the node's), never from the
    /// system directly. Timers (the wait for the next group deadline, the retention check
    /// interval) are the runtime's.
    pub fn start_with_seams(
        settings: GroupSettings,
        partition_count: i32,
        offsets_retention_check: Duration,
        shutdown: watch::Receiver<bool>,
        seams: Seams,
    ) -> Coordinator {
        let incarnation = seams.ids.uuid().simple().to_string()[..8].to_owned();
        let core = GroupCoordinator::new(settings, incarnation);
        let ownership = Arc::new(RwLock::new(Ownership {
            count: partition_count,
            owned: BTreeSet::new(),
        }));
        let (tx, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        tokio::spawn(run(
            core,
            ownership.clone(),
            rx,
            offsets_retention_check,
            shutdown,
            seams.clock,
        ));
        Coordinator { tx, ownership }
    }

    /// Hands the task the offsets partitions this node leads now (by partition number): new
    /// ones are loaded, dropped ones unloaded. Idempotent.
    pub async fn own(&self, partitions: BTreeMap<i32, Arc<Partition>>) {
        let _ = self.tx.send(Command::Own(partitions)).await;
    }

    /// Whether this node coordinates `group` (NOT_COORDINATOR otherwise).
    pub fn check_group(&self, group: &str) -> Result<(), GroupError> {
        self.ownership
            .read()
            .map_err(|_| GroupError::CoordinatorNotAvailable)?
            .check(group)
    }

    /// The offsets partitions this node coordinates.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.ownership
            .read()
            .map(|o| o.owned.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Runs `f` on the core for one group, inside the task, if this node coordinates it.
    pub async fn query_group<R: Send + 'static>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupCoordinator, i64) -> R + Send + 'static,
    ) -> Result<R, GroupError> {
        let (tx, rx) = oneshot::channel();
        let (refused_tx, refused_rx) = oneshot::channel();
        let query: Query = Box::new(move |core, now| {
            let _ = tx.send(f(core, now));
        });
        self.tx
            .send(Command::GroupQuery(group.to_owned(), query, refused_tx))
            .await
            .map_err(|_| GroupError::CoordinatorNotAvailable)?;
        // A refused query is dropped unanswered after its refusal is sent; an answered one
        // drops the refusal sender. So wait for the answer first, then for the refusal.
        match rx.await {
            Ok(answer) => Ok(answer),
            Err(_) => Err(refused_rx
                .await
                .unwrap_or(GroupError::CoordinatorNotAvailable)),
        }
    }

    async fn call<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| GroupError::CoordinatorNotAvailable)?;
        rx.await.map_err(|_| GroupError::CoordinatorNotAvailable)
    }

    /// Waits until the rebalance completes (or the request is refused).
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        self.call(|tx| Command::Join(req, tx))
            .await
            .unwrap_or_else(|e| JoinResponse {
                error: Some(e),
                generation_id: -1,
                member_id,
                ..Default::default()
            })
    }

    pub async fn sync(&self, req: SyncRequest) -> SyncResponse {
        self.call(|tx| Command::Sync(req, tx))
            .await
            .unwrap_or_else(|e| SyncResponse {
                error: Some(e),
                ..Default::default()
            })
    }

    pub async fn commit(&self, req: CommitRequest) -> CommitOutcome {
        self.call(|tx| Command::Commit(req, tx))
            .await
            .unwrap_or_else(|e| CommitOutcome {
                results: Err(e),
                durable: None,
            })
    }

    /// TxnOffsetCommit: the offsets are stored in a transactional batch of `producer` and
    /// become the group's only when its transaction commits.
    pub async fn txn_commit(&self, req: CommitRequest, producer: TxnProducer) -> CommitOutcome {
        self.call(|tx| Command::TxnCommit(req, producer, tx))
            .await
            .unwrap_or_else(|e| CommitOutcome {
                results: Err(e),
                durable: None,
            })
    }

    /// A marker for `producer_id` is durable on offsets partition `partition`: its pending
    /// transactional offsets there are applied (commit) or dropped (abort).
    pub async fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let count = self.ownership.read().map_or(0, |o| o.count);
        let in_partition = move |g: &str| partition_for(g, count) == partition;
        let applied = self
            .query(move |core, now| core.complete_txn(now, producer_id, commit, in_partition))
            .await
            .unwrap_or(0);
        if applied > 0 {
            tracing::debug!(
                producer_id,
                commit,
                applied,
                "transactional offset commits ended"
            );
        }
    }

    /// Runs `f` on the core inside the task; records it queues are stored afterwards.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut GroupCoordinator, i64) -> R + Send + 'static,
    ) -> Result<R, GroupError> {
        self.call(|tx| {
            Command::Query(Box::new(move |core, now| {
                let _ = tx.send(f(core, now));
            }))
        })
        .await
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<(), GroupError> {
        let group = req.group_id.clone();
        self.query_group(&group, move |core, now| core.heartbeat(now, &req))
            .await?
    }

    pub async fn leave(&self, req: LeaveRequest) -> LeaveResponse {
        let members = req.members.clone();
        let group = req.group_id.clone();
        self.query_group(&group, move |core, now| core.leave(now, &req))
            .await
            .unwrap_or_else(|e| LeaveResponse {
                error: Some(e),
                members: members.into_iter().map(|(m, i)| (m, i, Some(e))).collect(),
            })
    }
}

enum Waiting {
    Join(oneshot::Sender<JoinResponse>),
    /// The group, and where to answer.
    Sync(String, oneshot::Sender<SyncResponse>),
}

/// Where a group's state as this node knows it ends in its offsets partition: the last record
/// to be durable before a SyncGroup hands out an assignment.
type DurableAt = (Arc<Partition>, Offset);

async fn run(
    mut core: GroupCoordinator,
    ownership: Arc<RwLock<Ownership>>,
    mut rx: mpsc::Receiver<Command>,
    retention_check: Duration,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let mut waiting: BTreeMap<ReplyId, Waiting> = BTreeMap::new();
    let mut next_reply: ReplyId = 0;
    let count = ownership.read().map(|o| o.count).unwrap_or(0);
    let mut partitions: BTreeMap<i32, Arc<Partition>> = BTreeMap::new();
    // Per group, its last group record written here; per partition, its log as loaded.
    let mut group_records: BTreeMap<String, DurableAt> = BTreeMap::new();
    let mut loaded_at: BTreeMap<i32, DurableAt> = BTreeMap::new();
    let check = |group: &str| -> Result<(), GroupError> {
        ownership
            .read()
            .map_err(|_| GroupError::CoordinatorNotAvailable)?
            .check(group)
    };
    let mut retention = tokio::time::interval(retention_check.max(Duration::from_millis(10)));
    retention.tick().await;
    loop {
        let sleep_ms = core
            .next_deadline()
            .map(|d| (d - clock.now_ms()).clamp(0, 60_000))
            .unwrap_or(60_000);
        // Biased (deterministic under simulation): the shutdown, which ends the loop; then the
        // timers, ready once per period (a late retention interval catches up by a finite
        // burst); then the commands, which can arrive back to back and would starve the
        // timers if polled first.
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64 + 1)) => core.tick(clock.now_ms()),
            _ = retention.tick() => {
                let expired = core.expire_offsets(clock.now_ms());
                if expired > 0 {
                    tracing::info!(expired, "expired committed offsets (offsets.retention.minutes)");
                }
            }
            command = rx.recv() => {
                let Some(command) = command else { break };
                let now = clock.now_ms();
                // Deadlines that passed before the timer fired take effect first, as
                // Kafka's timers would have: for the group asked about, or for all groups
                // before a query across them.
                match command.group() {
                    Some(group) => core.tick_group(now, group),
                    None if matches!(command, Command::Query(_)) => core.tick(now),
                    None => {}
                }
                match command {
                    Command::Join(req, tx) => match check(&req.group_id) {
                        Ok(()) => {
                            next_reply += 1;
                            waiting.insert(next_reply, Waiting::Join(tx));
                            core.join(now, next_reply, req);
                        }
                        Err(e) => {
                            let _ = tx.send(JoinResponse {
                                error: Some(e),
                                generation_id: -1,
                                member_id: req.member_id,
                                ..Default::default()
                            });
                        }
                    },
                    Command::Sync(req, tx) => match check(&req.group_id) {
                        Ok(()) => {
                            next_reply += 1;
                            waiting.insert(next_reply, Waiting::Sync(req.group_id.clone(), tx));
                            core.sync(now, next_reply, req);
                        }
                        Err(e) => {
                            let _ = tx.send(SyncResponse {
                                error: Some(e),
                                ..Default::default()
                            });
                        }
                    },
                    Command::Commit(req, tx) => {
                        let outcome = match check(&req.group_id) {
                            Ok(()) => commit(&mut core, &partitions, count, now, req, None),
                            Err(e) => CommitOutcome { results: Err(e), durable: None },
                        };
                        let _ = tx.send(outcome);
                    }
                    Command::TxnCommit(req, producer, tx) => {
                        let outcome = match check(&req.group_id) {
                            Ok(()) => commit(&mut core, &partitions, count, now, req, Some(producer)),
                            Err(e) => CommitOutcome { results: Err(e), durable: None },
                        };
                        let _ = tx.send(outcome);
                    }
                    Command::Query(f) => f(&mut core, now),
                    Command::GroupQuery(group, f, refused) => match check(&group) {
                        Ok(()) => f(&mut core, now),
                        Err(e) => {
                            let _ = refused.send(e);
                        }
                    },
                    Command::Own(wanted) => {
                        own(&mut core, &ownership, &mut partitions, count, wanted, now);
                        loaded_at.retain(|p, _| partitions.contains_key(p));
                        group_records.retain(|g, _| partitions.contains_key(&partition_for(g, count)));
                        for (index, partition) in &partitions {
                            if let (false, Ok(end)) = (loaded_at.contains_key(index), partition.log_end_offset()) {
                                loaded_at.insert(*index, (partition.clone(), Offset(end.0 - 1)));
                            }
                        }
                    }
                }
            }
        }
        let mut stores = Vec::new();
        let mut syncs = Vec::new();
        for action in core.take_actions() {
            match action {
                Action::Join(id, response) => {
                    if let Some(Waiting::Join(tx)) = waiting.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Action::Sync(id, response) => {
                    if let Some(Waiting::Sync(group, tx)) = waiting.remove(&id) {
                        syncs.push((group, tx, response));
                    }
                }
                Action::Store(record) => stores.push(record),
            }
        }
        // The groups whose record this round wrote, and whether writing failed.
        let written: BTreeSet<String> = stores
            .iter()
            .filter(|r| matches!(r, OffsetsRecord::Group { .. }))
            .map(|r| r.group().to_owned())
            .collect();
        let mut failed = None;
        match store(&partitions, count, &stores, clock.now_ms(), None) {
            Ok(at) => {
                for group in written {
                    if let Some(durable) = at.get(&partition_for(&group, count)) {
                        group_records.insert(group, durable.clone());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, records = stores.len(), "cannot store group metadata");
                let error = if e.not_leader {
                    GroupError::NotCoordinator
                } else {
                    GroupError::CoordinatorNotAvailable
                };
                let now = clock.now_ms();
                for group in &written {
                    core.assignment_not_stored(now, group);
                }
                // Its answers (REBALANCE_IN_PROGRESS to the members waiting on a sync) go out
                // with the next command's; nothing more is stored for it now.
                failed = Some((written, error));
            }
        }
        for (group, tx, response) in syncs {
            if response.error.is_some() {
                let _ = tx.send(response);
                continue;
            }
            if let Some((_, error)) = failed.as_ref().filter(|(w, _)| w.contains(&group)) {
                let _ = tx.send(SyncResponse::error(*error));
                continue;
            }
            let durable = group_records
                .get(&group)
                .or_else(|| loaded_at.get(&partition_for(&group, count)))
                .cloned();
            match durable {
                Some(at) => {
                    tokio::spawn(answer_when_durable(at, tx, response));
                }
                None => {
                    let _ = tx.send(response);
                }
            }
        }
    }
    // Dropping the senders answers every waiting request with COORDINATOR_NOT_AVAILABLE.
    drop(waiting);
}

/// Answers a SyncGroup once its group's record is durable on every in-sync replica, or with
/// the error a client acts on when it cannot be (the coordinator moved, or cannot store).
async fn answer_when_durable(
    (partition, offset): DurableAt,
    tx: oneshot::Sender<SyncResponse>,
    response: SyncResponse,
) {
    let answer = if offset.0 < 0 {
        response
    } else {
        match partition.wait_acks_all(offset).await {
            Ok(()) => response,
            Err(e) => {
                tracing::warn!(error = %e, "group assignment not durable on the in-sync replicas");
                SyncResponse::error(match e {
                    ReplicaError::NotLeader { .. } | ReplicaError::Closed(_) => {
                        GroupError::NotCoordinator
                    }
                    _ => GroupError::CoordinatorNotAvailable,
                })
            }
        }
    };
    let _ = tx.send(answer);
}

/// Loads the partitions newly led here and unloads those no longer led.
fn own(
    core: &mut GroupCoordinator,
    ownership: &RwLock<Ownership>,
    partitions: &mut BTreeMap<i32, Arc<Partition>>,
    count: i32,
    wanted: BTreeMap<i32, Arc<Partition>>,
    now: i64,
) {
    let gone: BTreeSet<i32> = partitions
        .keys()
        .filter(|p| !wanted.contains_key(p))
        .copied()
        .collect();
    // Actions of earlier commands were taken already; what the replays add are records the
    // log holds, not to be written again. Unloading comes after, so its answers survive.
    let mut replayed = 0usize;
    for (index, partition) in &wanted {
        if partitions.contains_key(index) {
            continue;
        }
        let in_partition = |g: &str| partition_for(g, count) == *index;
        match replay(partition, |replayed_record| {
            replayed += 1;
            match replayed_record {
                Replayed::Record(record) => core.apply_record(now, record),
                Replayed::Transactional(producer_id, record) => {
                    core.stage_txn_offsets(producer_id, vec![record])
                }
                Replayed::Marker(producer_id, commit) => {
                    core.complete_txn(now, producer_id, commit, in_partition);
                }
            }
        }) {
            Ok(()) => {
                tracing::info!(partition = %partition.topic_partition(), "loaded the groups of an offsets partition this node now leads")
            }
            Err(e) => tracing::error!(partition = %partition.topic_partition(), error = %e,
                "cannot replay offsets partition; its groups start empty"),
        }
    }
    let replay_actions = core.take_actions();
    debug_assert!(replay_actions.iter().all(|a| matches!(a, Action::Store(_))));
    if !gone.is_empty() {
        let unloaded = core.unload_groups(|g| gone.contains(&partition_for(g, count)));
        tracing::info!(partitions = ?gone, groups = unloaded, "unloaded groups of offsets partitions no longer led here");
    }
    *partitions = wanted;
    if let Ok(mut o) = ownership.write() {
        o.owned = partitions.keys().copied().collect();
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            "group coordinator loaded offsets records"
        );
    }
}

fn commit(
    core: &mut GroupCoordinator,
    partitions: &BTreeMap<i32, Arc<Partition>>,
    count: i32,
    now: i64,
    req: CommitRequest,
    producer: Option<TxnProducer>,
) -> CommitOutcome {
    let prepared = match producer {
        None => core.prepare_commit(now, &req),
        Some(_) => core.prepare_txn_commit(now, &req),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            return CommitOutcome {
                results: Err(e),
                durable: None,
            }
        }
    };
    let records: Vec<OffsetsRecord> = prepared.iter().filter_map(|r| r.clone().ok()).collect();
    let durable = match store(partitions, count, &records, now, producer) {
        Ok(durable) => durable,
        Err(e) => {
            tracing::warn!(group = %req.group_id, error = %e, "offset commit not stored");
            let code = if e.not_leader {
                GroupError::NotCoordinator
            } else {
                GroupError::StorageError
            };
            return CommitOutcome {
                results: Ok(prepared.iter().map(|_| Some(code)).collect()),
                durable: None,
            };
        }
    };
    match producer {
        None => {
            for record in records {
                core.apply_record(now, record);
            }
        }
        Some(p) => core.stage_txn_offsets(p.producer_id, records),
    }
    CommitOutcome {
        results: Ok(prepared.into_iter().map(|r| r.err()).collect()),
        durable: durable.into_values().next(),
    }
}

/// Why records could not be stored.
#[derive(Debug)]
pub(crate) struct StoreError {
    pub(crate) reason: String,
    /// The partition is not (or no longer) led here.
    pub(crate) not_leader: bool,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl StoreError {
    fn other(reason: impl std::fmt::Display) -> StoreError {
        StoreError {
            reason: reason.to_string(),
            not_leader: false,
        }
    }
}

/// Appends records to their groups' partitions, one batch per partition, timestamped `now`
/// (wall clock, epoch ms). Returns, per partition written (by number), the last offset to
/// wait on for durability.
fn store(
    partitions: &BTreeMap<i32, Arc<Partition>>,
    count: i32,
    records: &[OffsetsRecord],
    now: i64,
    producer: Option<TxnProducer>,
) -> Result<BTreeMap<i32, DurableAt>, StoreError> {
    if records.is_empty() || count <= 0 {
        return Ok(BTreeMap::new());
    }
    let mut by_partition: BTreeMap<i32, Vec<&OffsetsRecord>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(partition_for(r.group(), count))
            .or_default()
            .push(r);
    }
    let mut written = BTreeMap::new();
    for (index, records) in by_partition {
        let Some(partition) = partitions.get(&index) else {
            return Err(StoreError {
                reason: format!("{OFFSETS_TOPIC}-{index} is not led here"),
                not_leader: true,
            });
        };
        let kvs = records.iter().map(|r| r.encode());
        let last = match producer {
            None => append_records(partition, kvs, now)?,
            Some(producer) => append_transactional(partition, kvs, producer, now)?,
        };
        written.insert(index, (partition.clone(), last));
    }
    Ok(written)
}

/// A transactional producer a TxnOffsetCommit is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// Appends one uncompressed batch of keyed records (an internal topic's), timestamped `now`
/// (wall clock, epoch ms), as the partition's leader. Returns the last offset written.
pub(crate) fn append_records(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    now: i64,
) -> Result<Offset, StoreError> {
    append_batch(partition, records, None, now)
}

/// Appends the records in a transactional batch of `producer`, as Kafka's coordinator writes
/// a TxnOffsetCommit: the partition's log then holds the producer's transaction open until its
/// marker. Only this coordinator writes the producer to an offsets partition (Produce to it is
/// refused), so the next sequence is the one the log expects of it.
fn append_transactional(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    producer: TxnProducer,
    now: i64,
) -> Result<Offset, StoreError> {
    let sequence = partition
        .with_log(|log| {
            Ok(log
                .producer_state()
                .entry(spate_types::ProducerId(producer.producer_id))
                .filter(|e| e.epoch.0 == producer.producer_epoch)
                .and_then(|e| e.batches.back())
                .map_or(0, |b| spate_log::batch::increment_sequence(b.last_seq, 1)))
        })
        .map_err(|e| StoreError {
            not_leader: matches!(e, ReplicaError::NotLeader { .. }),
            reason: e.to_string(),
        })?;
    append_batch(partition, records, Some((producer, sequence)), now)
}

fn append_batch(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    producer: Option<(TxnProducer, i32)>,
    now: i64,
) -> Result<Offset, StoreError> {
    let (producer_id, producer_epoch, first_sequence) = producer
        .map_or((-1, -1, -1), |(p, seq)| {
            (p.producer_id, p.producer_epoch, seq)
        });
    let batch: Vec<Record> = records
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Consecutive, from -1 without a producer: the encoder starts a new batch at any
            // record whose offset minus sequence differs from the first's (a constant -1 split
            // every record into its own batch, and a commit was then no longer all or
            // nothing). The batch stores only the first record's sequence.
            sequence: if first_sequence < 0 {
                i as i32 - 1
            } else {
                spate_log::batch::increment_sequence(first_sequence, i as i32)
            },
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &batch,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(StoreError::other)?;
    let receipt = partition
        .append(&mut buf, false, now)
        .map_err(|e| StoreError {
            not_leader: matches!(e, ReplicaError::NotLeader { .. }),
            reason: e.to_string(),
        })?;
    Ok(receipt.last_offset)
}

/// What replaying an offsets partition finds, in log order.
enum Replayed {
    /// A record to apply.
    Record(OffsetsRecord),
    /// A record of a producer's transaction (TxnOffsetCommit), held until its marker.
    Transactional(i64, OffsetsRecord),
    /// A producer's transaction ended here: commit (true) or abort.
    Marker(i64, bool),
}

/// Feeds everything of the offsets partition, in offset order, to `apply`.
fn replay(partition: &Partition, mut apply: impl FnMut(Replayed)) -> Result<(), String> {
    replay_records(partition, |header, record| {
        if header.is_control() {
            if let Some(commit) = record.key.as_deref().and_then(control_commit) {
                apply(Replayed::Marker(header.producer_id.0, commit));
            }
            return;
        }
        let Some(key) = record.key else { return };
        match OffsetsRecord::decode(&key, record.value.as_deref()) {
            Ok(r) if header.is_transactional() => {
                apply(Replayed::Transactional(header.producer_id.0, r))
            }
            Ok(r) => apply(Replayed::Record(r)),
            Err(e) => {
                tracing::warn!(offset = record.offset, error = %e, "skipping offsets record")
            }
        }
    })
}

/// A transaction marker's key (Kafka's control record key: version, type 0 = ABORT,
/// 1 = COMMIT): whether it commits. `None` for another control record.
fn control_commit(key: &[u8]) -> Option<bool> {
    match key {
        [0, 0, 0, 0] => Some(false),
        [0, 0, 0, 1] => Some(true),
        _ => None,
    }
}

/// Feeds every record of the partition (control records included), in offset order, with
/// its batch's header, to `apply`.
pub(crate) fn replay_records(
    partition: &Partition,
    mut apply: impl FnMut(&BatchHeader, Record),
) -> Result<(), String> {
    let mut next = partition.log_start_offset().map_err(|e| e.to_string())?;
    let end = partition.log_end_offset().map_err(|e| e.to_string())?;
    while next < end {
        let read = partition
            .read_to_log_end(next, REPLAY_READ_BYTES)
            .map_err(|e| e.to_string())?;
        if read.plan.is_empty() {
            break;
        }
        let bytes = read.plan.load().map_err(|e| e.to_string())?;
        let mut pos = 0;
        while pos < bytes.len() {
            let header = BatchHeader::parse(&bytes[pos..]).map_err(|e| e.to_string())?;
            let len = header.total_bytes();
            let mut one: Bytes = bytes.slice(pos..pos + len);
            pos += len;
            next = next.max(header.next_offset());
            let set = RecordBatchDecoder::decode(&mut one).map_err(|e| e.to_string())?;
            for record in set.records {
                apply(&header, record);
            }
        }
    }
    Ok(())
}
