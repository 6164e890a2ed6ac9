//! Fetch: serves stored batches, long-polling until `min_bytes` are available or `max_wait_ms`
//! passes, from the partition leader only.
//!
//! - A consumer reads up to the high watermark (durable on every in-sync replica); its wait
//!   wakes as soon as any of its partitions' high watermark moves.
//! - A follower (a request with a replica id, KIP-392's `ReplicaState` from v15) reads up to
//!   the log end; its fetch offset tells the leader what it holds durably, which may move the
//!   high watermark; its wait wakes when the leader's log end moves.
//! - A refusal from a replica that is not the leader names the leader (`current_leader`, v12+).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_replica::{FollowerFetch, Partition, ReplicaManager};
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
    // A consumer waits for the high watermark, and for the log end too: an acks=0/1 append
    // becomes visible only once fsynced, and a parked consumer's re-read is what asks for that
    // fsync at once (`read_partition`), instead of at the next flush interval.
    let follower = plan.replica.is_some();
    let mut watches: Vec<watch::Receiver<Offset>> = plan
        .wanted
        .iter()
        .filter_map(|w| w.partition.as_ref().ok())
        .flat_map(|p| {
            if follower {
                vec![p.subscribe_log_end()]
            } else {
                vec![p.subscribe_high_watermark(), p.subscribe_log_end()]
            }
        })
        .collect();
    let (response, bytes, errors) = read_all(&plan);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    if bytes >= min_bytes || max_wait.is_zero() || errors || watches.is_empty() {
        return Reply::Now(response);
    }
    let deadline = Instant::now() + max_wait;
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut shutdown = broker.shutdown.clone();
        loop {
            let changed = wait_any(&mut watches);
            // Biased (deterministic under simulation): the shutdown and the deadline before
            // the offsets, which can move on every produce and must not hold the reply past
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
    }))
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
    crate::probe::fetched(total);
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
        .with_aborted_transactions(Some(Vec::new()))
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
            let read = partition.read(offset, budget, first)?;
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
            let data = data
                .with_high_watermark(read.high_watermark.0)
                .with_last_stable_offset(read.high_watermark.0)
                .with_log_start_offset(read.log_start_offset.0)
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
            let code = errors::replica_error(&e);
            if code == ResponseError::KafkaStorageError {
                tracing::error!(partition = %partition.topic_partition(), error = %e, "fetch failed");
            }
            let log_start = partition.log_start_offset().map(|o| o.0).unwrap_or(-1);
            let mut data = data
                .with_error_code(code.code())
                .with_high_watermark(partition.high_watermark().0)
                .with_last_stable_offset(partition.high_watermark().0)
                .with_log_start_offset(log_start);
            if let (Some((leader, epoch)), true) =
                (errors::leader_hint(&e), plan.version >= LEADER_HINT_VERSION)
            {
                data = data.with_current_leader(
                    LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(leader.0))
                        .with_leader_epoch(epoch.0),
                );
            }
            data
        }
    }
}
