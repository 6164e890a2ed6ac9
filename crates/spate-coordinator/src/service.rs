//! The coordinator task: one owner of the [`GroupCoordinator`] core, reached by message.
//!
//! It appends the core's records to the `__consumer_offsets` partitions (the group's
//! partition is Kafka's hash of the group id), and replays those partitions at start. An
//! OffsetCommit is applied to memory once its batch is in the log and answered only after
//! the batch is fsynced ([`CommitOutcome::durable`]); group metadata records are not waited
//! for (as in Kafka, losing one only costs members a rejoin).

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
use spate_replica::Partition;
use spate_types::Offset;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
    Query(Query),
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
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Coordinator {
    /// Replays the offsets partitions (index = partition number) and starts the task.
    pub fn start(
        settings: GroupSettings,
        partitions: Vec<Arc<Partition>>,
        offsets_retention_check: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Coordinator {
        let incarnation = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let mut core = GroupCoordinator::new(settings, incarnation);
        let now = now_ms();
        let mut replayed = 0usize;
        for partition in &partitions {
            match replay(partition, |record| {
                replayed += 1;
                core.apply_record(now, record)
            }) {
                Ok(()) => {}
                Err(e) => tracing::error!(partition = %partition.topic_partition(), error = %e,
                    "cannot replay offsets partition; its groups start empty"),
            }
        }
        // Records the replay did not need (tombstones already applied) are not re-written.
        let _ = core.take_actions();
        tracing::info!(
            records = replayed,
            partitions = partitions.len(),
            "group coordinator loaded"
        );
        let (tx, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        tokio::spawn(run(core, partitions, rx, offsets_retention_check, shutdown));
        Coordinator { tx }
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
        self.query(move |core, now| core.heartbeat(now, &req))
            .await?
    }

    pub async fn leave(&self, req: LeaveRequest) -> LeaveResponse {
        let members = req.members.clone();
        self.query(move |core, now| core.leave(now, &req))
            .await
            .unwrap_or_else(|e| LeaveResponse {
                error: Some(e),
                members: members.into_iter().map(|(m, i)| (m, i, Some(e))).collect(),
            })
    }
}

enum Waiting {
    Join(oneshot::Sender<JoinResponse>),
    Sync(oneshot::Sender<SyncResponse>),
}

async fn run(
    mut core: GroupCoordinator,
    partitions: Vec<Arc<Partition>>,
    mut rx: mpsc::Receiver<Command>,
    retention_check: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut waiting: BTreeMap<ReplyId, Waiting> = BTreeMap::new();
    let mut next_reply: ReplyId = 0;
    let mut retention = tokio::time::interval(retention_check.max(Duration::from_millis(10)));
    retention.tick().await;
    loop {
        let sleep_ms = core
            .next_deadline()
            .map(|d| (d - now_ms()).clamp(0, 60_000))
            .unwrap_or(60_000);
        tokio::select! {
            command = rx.recv() => {
                let Some(command) = command else { break };
                let now = now_ms();
                match command {
                    Command::Join(req, tx) => {
                        next_reply += 1;
                        waiting.insert(next_reply, Waiting::Join(tx));
                        core.join(now, next_reply, req);
                    }
                    Command::Sync(req, tx) => {
                        next_reply += 1;
                        waiting.insert(next_reply, Waiting::Sync(tx));
                        core.sync(now, next_reply, req);
                    }
                    Command::Commit(req, tx) => {
                        let _ = tx.send(commit(&mut core, &partitions, now, req));
                    }
                    Command::Query(f) => f(&mut core, now),
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64 + 1)) => core.tick(now_ms()),
            _ = retention.tick() => {
                let expired = core.expire_offsets(now_ms());
                if expired > 0 {
                    tracing::info!(expired, "expired committed offsets (offsets.retention.minutes)");
                }
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let mut stores = Vec::new();
        for action in core.take_actions() {
            match action {
                Action::Join(id, response) => {
                    if let Some(Waiting::Join(tx)) = waiting.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Action::Sync(id, response) => {
                    if let Some(Waiting::Sync(tx)) = waiting.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Action::Store(record) => stores.push(record),
            }
        }
        if let Err(e) = store(&partitions, &stores) {
            tracing::warn!(error = %e, records = stores.len(), "cannot store group metadata");
        }
    }
    // Dropping the senders answers every waiting request with COORDINATOR_NOT_AVAILABLE.
    drop(waiting);
}

fn commit(
    core: &mut GroupCoordinator,
    partitions: &[Arc<Partition>],
    now: i64,
    req: CommitRequest,
) -> CommitOutcome {
    let prepared = match core.prepare_commit(now, &req) {
        Ok(p) => p,
        Err(e) => {
            return CommitOutcome {
                results: Err(e),
                durable: None,
            }
        }
    };
    let records: Vec<OffsetsRecord> = prepared.iter().filter_map(|r| r.clone().ok()).collect();
    let durable = match store(partitions, &records) {
        Ok(durable) => durable,
        Err(e) => {
            tracing::warn!(group = %req.group_id, error = %e, "offset commit not stored");
            return CommitOutcome {
                results: Ok(prepared
                    .iter()
                    .map(|_| Some(GroupError::StorageError))
                    .collect()),
                durable: None,
            };
        }
    };
    for record in records {
        core.apply_record(now, record);
    }
    CommitOutcome {
        results: Ok(prepared.into_iter().map(|r| r.err()).collect()),
        durable: durable.into_iter().next(),
    }
}

/// Appends records to their groups' partitions, one batch per partition. Returns, per
/// partition written, the last offset to wait on for durability.
fn store(
    partitions: &[Arc<Partition>],
    records: &[OffsetsRecord],
) -> Result<Vec<(Arc<Partition>, Offset)>, String> {
    if records.is_empty() || partitions.is_empty() {
        return Ok(Vec::new());
    }
    let count = partitions.len() as i32;
    let mut by_partition: BTreeMap<i32, Vec<&OffsetsRecord>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(partition_for(r.group(), count))
            .or_default()
            .push(r);
    }
    let now = now_ms();
    let mut written = Vec::new();
    for (index, records) in by_partition {
        let partition = &partitions[index as usize];
        let batch: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (key, value) = r.encode();
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: -1,
                    timestamp: now,
                    key: Some(key),
                    value,
                    headers: Default::default(),
                }
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
        .map_err(|e| e.to_string())?;
        let receipt = partition
            .append(&mut buf, false, now)
            .map_err(|e| e.to_string())?;
        written.push((partition.clone(), receipt.last_offset));
    }
    Ok(written)
}

/// Feeds every record of the partition, in offset order, to `apply`.
fn replay(partition: &Partition, mut apply: impl FnMut(OffsetsRecord)) -> Result<(), String> {
    let mut next = partition.log_start_offset().map_err(|e| e.to_string())?;
    let end = partition.high_watermark();
    while next < end {
        let read = partition
            .read(next, REPLAY_READ_BYTES, true)
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
            if header.is_control() {
                continue;
            }
            let set = RecordBatchDecoder::decode(&mut one).map_err(|e| e.to_string())?;
            for record in set.records {
                let Some(key) = record.key else { continue };
                match OffsetsRecord::decode(&key, record.value.as_deref()) {
                    Ok(r) => apply(r),
                    Err(e) => {
                        tracing::warn!(offset = record.offset, error = %e, "skipping offsets record")
                    }
                }
            }
        }
    }
    Ok(())
}
