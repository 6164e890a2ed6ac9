//! Fetch: serves stored batches, long-polling until `min_bytes` are available or `max_wait_ms`
//! passes, from the partition leader only.
//!
//! - A consumer reads up to the high watermark (durable on every in-sync replica); its wait
//!   wakes as soon as any of its partitions' high watermark moves.
//! - A `read_committed` consumer (`isolation_level = 1`) reads up to the last stable offset
//!   instead (nothing of a transaction still open, or whose marker is not yet below the high
//!   watermark), and is told the aborted transactions overlapping what it got, as
//!   `(producer id, first offset)`; its wait wakes when the last stable offset moves. An offset
//!   between the last stable offset and the high watermark reads nothing, as in Kafka. Every
//!   partition answer carries the last stable offset, in both isolation levels;
//!   `aborted_transactions` is null for `read_uncommitted` and for followers.
//! - A follower (a request with a replica id, KIP-392's `ReplicaState` from v15) reads up to
//!   the log end; its fetch offset tells the leader what it holds durably, which may move the
//!   high watermark; its wait wakes when the leader's log end moves.
//! - A refusal from a replica that is not the leader names the leader (`current_leader`, v12+).
//!
//! Fetch sessions (KIP-227) are not implemented: every request is a full fetch (a client's
//! incremental request gets full answers for the partitions it lists, session id 0), so there
//! is no second path that could read past the last stable offset.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use crate::probe;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_log::BatchHeader;
use spate_replica::{FollowerFetch, Partition, ReplicaError, ReplicaManager};
use spate_types::{LeaderEpoch, NodeId, Offset, TopicPartition};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 4, max: 16 };

/// Fetch v13 (KIP-516) names topics by id.
const TOPIC_ID_VERSION: i16 = 13;
/// Fetch v15 (KIP-903) moved the replica id into `replica_state`.
const REPLICA_STATE_VERSION: i16 = 15;
/// Fetch v12 carries the leader beside NOT_LEADER_OR_FOLLOWER and FENCED_LEADER_EPOCH.
const LEADER_HINT_VERSION: i16 = 12;
/// Bound on how long a fetch may wait, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(60);
/// `isolation_level` of a consumer that reads committed records only.
const READ_COMMITTED: i8 = 1;

/// One partition a fetch asks for, resolved against the metadata image.
struct Wanted {
    topic_index: usize,
    partition_index: i32,
    fetch_offset: i64,
    partition_max_bytes: i32,
    current_leader_epoch: i32,
    /// -1 when absent (before v12, or an empty follower log).
    last_fetched_epoch: i32,
    partition: Result<Arc<Partition>, ResponseError>,
}

struct Plan {
    topics: Vec<(TopicName, Uuid)>,
    wanted: Vec<Wanted>,
    max_bytes: usize,
    /// The follower this fetch comes from; `None` for a consumer.
    replica: Option<NodeId>,
    replicas: Arc<ReplicaManager>,
    version: i16,
    /// A consumer's `isolation_level = 1`; always false for a follower, which reads to the
    /// log end whatever it sends.
    read_committed: bool,
}

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: FetchRequest,
) -> Reply<FetchResponse> {
    let image = broker.image();
    let replica_id = if ctx.version() >= REPLICA_STATE_VERSION {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let mut plan = Plan {
        topics: Vec::new(),
        wanted: Vec::new(),
        max_bytes: request.max_bytes.max(0) as usize,
        replica: (replica_id >= 0).then_some(NodeId(replica_id)),
        replicas: broker.replicas.clone(),
        version: ctx.version(),
        read_committed: replica_id < 0 && request.isolation_level == READ_COMMITTED,
    };
    for topic in request.topics {
        let by_id = ctx.version() >= TOPIC_ID_VERSION;
        let name = if by_id {
            image
                .topic_by_id(topic.topic_id)
                .map(|(name, _)| name.to_owned())
        } else {
            Some(topic.topic.0.to_string())
        };
        let topic_index = plan.topics.len();
        for p in topic.partitions {
            let partition = match &name {
                None => Err(ResponseError::UnknownTopicId),
                Some(name) => broker.hosted(
                    &image,
                    &TopicPartition::new(name.clone(), p.partition),
                    by_id.then_some(topic.topic_id),
                ),
            };
            plan.wanted.push(Wanted {
                topic_index,
                partition_index: p.partition,
                fetch_offset: p.fetch_offset,
                partition_max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
                last_fetched_epoch: p.last_fetched_epoch,
                partition,
            });
        }
        plan.topics.push((topic.topic, topic.topic_id));
    }
    // Subscribe before the first read so that no append between the read and the wait is missed.
    let watches = subscribe(&plan);
    let (response, bytes, errors) = read_all(&plan);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    if bytes >= min_bytes || max_wait.is_zero() || errors || watches.is_empty() {
        return Reply::Now(response);
    }
    let deadline = Instant::now() + max_wait;
    let fetcher = match plan.replica {
        Some(_) => probe::Fetcher::Follower,
        None => probe::Fetcher::Consumer,
    };
    // Counted from here, with the watches in place: an append after the gauge moved wakes it.
    let delayed = probe::delayed_fetch(fetcher);
    let shutdown = broker.shutdown.clone();
    Reply::Later(Box::pin(async move {
        let response = long_poll(plan, watches, min_bytes, deadline, shutdown).await;
        drop(delayed);
        response
    }))
}

/// What a parked fetch waits for, per partition. A follower: the leader's log end. A consumer:
/// the offset it reads up to (the high watermark, or for `read_committed` the last stable
/// offset, which the replica republishes as the high watermark moves), and the log end too: an
/// acks=0/1 append becomes visible only once fsynced, and a parked consumer's re-read is what
/// asks for that fsync at once (`read_partition`), instead of at the next flush interval.
fn subscribe(plan: &Plan) -> Vec<watch::Receiver<Offset>> {
    plan.wanted
        .iter()
        .filter_map(|w| w.partition.as_ref().ok())
        .flat_map(|p| match (plan.replica, plan.read_committed) {
            (Some(_), _) => vec![p.subscribe_log_end()],
            (None, false) => vec![p.subscribe_high_watermark(), p.subscribe_log_end()],
            (None, true) => vec![p.subscribe_last_stable_offset(), p.subscribe_log_end()],
        })
        .collect()
}

/// The parked part of a fetch: re-reads whenever a watched offset moves, until `min_bytes`
/// are there, a partition answers with an error, the deadline passes or the broker shuts
/// down. Cancel safe (it only reads).
async fn long_poll(
    plan: Plan,
    mut watches: Vec<watch::Receiver<Offset>>,
    min_bytes: usize,
    deadline: Instant,
    mut shutdown: watch::Receiver<bool>,
) -> FetchResponse {
    loop {
        let changed = wait_any(&mut watches);
        // Biased (deterministic under simulation): the shutdown and the deadline before the
        // offsets, which can move on every produce and must not hold the reply past
        // `max_wait_ms`.
        tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => return read_all(&plan).0,
            _ = tokio::time::sleep_until(deadline) => return read_all(&plan).0,
            _ = changed => {}
        }
        let (response, bytes, errors) = read_all(&plan);
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            return response;
        }
    }
}

/// Resolves when any receiver sees a new value; receivers whose partition closed are dropped
/// (so a closed partition cannot make the wait spin).
async fn wait_any(watches: &mut Vec<watch::Receiver<Offset>>) {
    loop {
        if watches.is_empty() {
            return futures::future::pending().await;
        }
        let (result, index, _) =
            futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed()))).await;
        if result.is_ok() {
            return;
        }
        watches.swap_remove(index);
    }
}

/// Reads every wanted partition once. Returns the response, the record bytes in it, and
/// whether any partition answered with an error (which ends a long poll, as in Kafka).
fn read_all(plan: &Plan) -> (FetchResponse, usize, bool) {
    let mut topics: Vec<FetchableTopicResponse> = plan
        .topics
        .iter()
        .map(|(name, id)| {
            FetchableTopicResponse::default()
                .with_topic(name.clone())
                .with_topic_id(*id)
        })
        .collect();
    let mut total = 0usize;
    let mut any_error = false;
    for wanted in &plan.wanted {
        let remaining = plan.max_bytes.saturating_sub(total);
        let budget = remaining.min(wanted.partition_max_bytes.max(0) as usize);
        let data = read_partition(plan, wanted, budget, total == 0);
        if data.error_code != 0 {
            any_error = true;
        }
        let size = data.records.as_ref().map(|r| r.len()).unwrap_or(0);
        total += size;
        topics[wanted.topic_index].partitions.push(data);
    }
    probe::fetched(total);
    (
        FetchResponse::default().with_responses(topics),
        total,
        any_error,
    )
}

fn read_partition(plan: &Plan, wanted: &Wanted, budget: usize, first: bool) -> PartitionData {
    let data = PartitionData::default()
        .with_partition_index(wanted.partition_index)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(None)
        .with_records(Some(Bytes::new()));
    let partition = match &wanted.partition {
        Ok(p) => p,
        Err(code) => return data.with_error_code(code.code()),
    };
    let epoch =
        (wanted.current_leader_epoch >= 0).then_some(LeaderEpoch(wanted.current_leader_epoch));
    let offset = Offset(wanted.fetch_offset);
    // KIP-74: the first partition with data returns at least one whole batch, so a batch
    // larger than the limits never stalls a consumer.
    let read = match plan.replica {
        Some(replica) => plan.replicas.read_for_follower(
            partition,
            FollowerFetch {
                replica,
                current_leader_epoch: epoch,
                fetch_offset: offset,
                last_fetched_epoch: (wanted.last_fetched_epoch >= 0)
                    .then_some(LeaderEpoch(wanted.last_fetched_epoch)),
                max_bytes: budget,
            },
        ),
        None => partition.check_consumer_read(epoch).and_then(|()| {
            let read = if plan.read_committed {
                partition.read_committed(offset, budget, first)?
            } else {
                partition.read(offset, budget, first)?
            };
            if read.plan.is_empty() && read.log_end_offset > read.high_watermark {
                // Records written with acks=0/1 wait for their fsync to become visible; this
                // consumer is waiting for them, so fsync now rather than at the flush interval.
                partition.flush_soon();
            }
            Ok(read)
        }),
    }
    .and_then(|read| {
        let bytes = read.plan.load().map_err(spate_replica::ReplicaError::Log)?;
        Ok((bytes, read))
    });
    match read {
        Ok((bytes, read)) => {
            let aborted = if plan.read_committed {
                // Not damage to report if it fails: the index is derived data, and the
                // records are not served without it (a missing abort shows aborted records).
                match aborted_in(partition, offset, &bytes) {
                    Ok(aborted) => Some(aborted),
                    Err(e) => return refused(plan, partition, data, &e),
                }
            } else {
                None
            };
            let data = data
                .with_high_watermark(read.high_watermark.0)
                .with_last_stable_offset(read.last_stable_offset.0)
                .with_log_start_offset(read.log_start_offset.0)
                .with_aborted_transactions(aborted)
                .with_records(Some(bytes));
            match read.diverging_epoch {
                Some((epoch, end_offset)) => data.with_diverging_epoch(
                    EpochEndOffset::default()
                        .with_epoch(epoch.0)
                        .with_end_offset(end_offset.0),
                ),
                None => data,
            }
        }
        Err(e) => {
            plan.replicas.read_failed(partition, offset, &e);
            refused(plan, partition, data, &e)
        }
    }
}

/// The answer for a partition whose read failed with `e`.
fn refused(
    plan: &Plan,
    partition: &Partition,
    data: PartitionData,
    e: &ReplicaError,
) -> PartitionData {
    let code = errors::replica_error(e);
    if code == ResponseError::KafkaStorageError {
        tracing::error!(partition = %partition.topic_partition(), error = %e, "fetch failed");
    }
    let log_start = partition.log_start_offset().map(|o| o.0).unwrap_or(-1);
    let mut data = data
        .with_error_code(code.code())
        .with_high_watermark(partition.high_watermark().0)
        .with_last_stable_offset(partition.last_stable_offset().0)
        .with_log_start_offset(log_start)
        .with_aborted_transactions(None)
        .with_records(Some(Bytes::new()));
    if let (Some((leader, epoch)), true) =
        (errors::leader_hint(e), plan.version >= LEADER_HINT_VERSION)
    {
        data = data.with_current_leader(
            LeaderIdAndEpoch::default()
                .with_leader_id(BrokerId(leader.0))
                .with_leader_epoch(epoch.0),
        );
    }
    data
}

/// The aborted transactions a `read_committed` consumer must drop from `bytes`, the whole
/// batches read from `offset`: each one overlapping `[offset, the offset after the last
/// batch)`, as Kafka lists them (its consumer drops an aborted producer's records from the
/// transaction's first offset to its ABORT marker). Nothing read: none.
fn aborted_in(
    partition: &Partition,
    offset: Offset,
    bytes: &[u8],
) -> Result<Vec<AbortedTransaction>, ReplicaError> {
    let mut upper = None;
    let mut pos = 0;
    // The bytes are whole batches of this replica's log, validated when written.
    while let Some(Ok(h)) = bytes.get(pos..).map(BatchHeader::parse) {
        pos += h.total_bytes();
        upper = Some(h.next_offset());
    }
    let Some(upper) = upper else {
        return Ok(Vec::new());
    };
    Ok(partition
        .aborted_transactions(offset, upper)?
        .into_iter()
        .map(|t| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(t.producer_id.0))
                .with_first_offset(t.first_offset.0)
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests;
