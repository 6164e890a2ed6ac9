//! ListOffsets: earliest, latest, max-timestamp and by-timestamp offset lookups.
//!
//! Bounded as the asker reads (Kafka's `lastFetchableOffset`): by the high watermark, or for
//! `isolation_level = 1` (READ_COMMITTED, v2+) by the last stable offset: LATEST answers that
//! bound, and a timestamp lookup (MAX_TIMESTAMP included) that finds an offset at or past it
//! answers none (-1).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_replica::Partition;
use spate_types::TopicPartition;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 1, max: 9 };

const LEADER_EPOCH_VERSION: i16 = 4;

/// Special timestamps of the ListOffsets API.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// KIP-734: the offset of the record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;
/// KIP-405: the earliest offset in local storage; without tiered storage, the earliest.
const EARLIEST_LOCAL: i64 = -4;
/// KIP-1005: the latest offset in tiered storage; without tiered storage, none (-1).
const LATEST_TIERED: i64 = -5;
/// `isolation_level` of a consumer that reads committed records only.
const READ_COMMITTED: i8 = 1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: ListOffsetsRequest,
) -> Reply<ListOffsetsResponse> {
    // The leader epoch exists from v4; kafka-protocol refuses to encode it set in older ones.
    let with_epoch = ctx.version() >= LEADER_EPOCH_VERSION;
    // Absent before v2, where it decodes as 0 (READ_UNCOMMITTED).
    let read_committed = request.isolation_level == READ_COMMITTED;
    let image = broker.image();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1)
                        .with_leader_epoch(-1);
                    let tp = TopicPartition::new(name.clone(), p.partition_index);
                    let found = broker
                        .hosted(&image, &tp, None)
                        .and_then(|partition| lookup(&partition, &p, read_committed));
                    match found {
                        Ok((offset, timestamp, epoch)) => response
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(if with_epoch { epoch } else { -1 }),
                        Err(code) => response.with_error_code(code.code()),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(ListOffsetsResponse::default().with_topics(topics))
}

/// The answer for one partition: `(offset, timestamp, leader epoch)`.
fn lookup(
    partition: &Partition,
    request: &kafka_protocol::messages::list_offsets_request::ListOffsetsPartition,
    read_committed: bool,
) -> Result<(i64, i64, i32), ResponseError> {
    let map = |e: spate_replica::ReplicaError| errors::replica_error(&e);
    // Only the leader answers, in the epoch the client names (if any), once its high
    // watermark has settled (KIP-207: OFFSET_NOT_AVAILABLE until then).
    let requested = (request.current_leader_epoch >= 0)
        .then_some(spate_types::LeaderEpoch(request.current_leader_epoch));
    partition.check_consumer_read(requested).map_err(map)?;
    let epoch = partition.leader_epoch().0;
    // The offsets the asker may read are below this.
    let bound = if read_committed {
        partition.last_stable_offset().0
    } else {
        partition.high_watermark().0
    };
    match request.timestamp {
        LATEST => Ok((bound, -1, epoch)),
        EARLIEST | EARLIEST_LOCAL => Ok((partition.log_start_offset().map_err(map)?.0, -1, epoch)),
        LATEST_TIERED => Ok((-1, -1, -1)),
        MAX_TIMESTAMP => match partition
            .with_log(|log| log.max_timestamp_offset())
            .map_err(map)?
        {
            Some((offset, timestamp)) if offset.0 < bound => Ok((offset.0, timestamp, epoch)),
            _ => Ok((-1, -1, -1)),
        },
        target if target >= 0 => {
            match partition
                .with_log(|log| log.offset_for_timestamp(target))
                .map_err(map)?
            {
                Some((offset, timestamp)) if offset.0 < bound => Ok((offset.0, timestamp, epoch)),
                _ => Ok((-1, -1, -1)),
            }
        }
        _ => Err(ResponseError::InvalidRequest),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apis::fetch::tests::{batch, end_txn, leader, produce, txn, TXN_PID};
    use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;

    fn at(timestamp: i64) -> ListOffsetsPartition {
        ListOffsetsPartition::default()
            .with_timestamp(timestamp)
            .with_current_leader_epoch(-1)
    }

    /// `(offset, timestamp)` of a lookup of `timestamp`, in both isolation levels.
    fn both(p: &Partition, timestamp: i64) -> [(i64, i64); 2] {
        [false, true].map(|read_committed| {
            let (offset, timestamp, _) = lookup(p, &at(timestamp), read_committed).unwrap();
            (offset, timestamp)
        })
    }

    #[tokio::test]
    async fn read_committed_lookups_are_bounded_by_the_last_stable_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = leader(dir.path());
        produce(&p, batch(1, None, false, 1_000)).await;
        produce(&p, txn(1, 0, 2_000)).await;
        produce(&p, batch(1, None, false, 3_000)).await;
        // High watermark 3, last stable offset 1 (the open transaction).

        assert_eq!(both(&p, LATEST), [(3, -1), (1, -1)]);
        assert_eq!(both(&p, EARLIEST), [(0, -1), (0, -1)]);
        assert_eq!(both(&p, 500), [(0, 1_000), (0, 1_000)]);
        assert_eq!(
            both(&p, 1_500),
            [(1, 2_000), (-1, -1)],
            "found at or past the last stable offset: none"
        );
        assert_eq!(both(&p, MAX_TIMESTAMP), [(2, 3_000), (-1, -1)]);

        tracing::info!("--- committed: both levels agree again");
        end_txn(&p, TXN_PID, true).await;
        assert_eq!(both(&p, LATEST), [(4, -1), (4, -1)]);
        assert_eq!(both(&p, 1_500), [(1, 2_000), (1, 2_000)]);
        assert_eq!(both(&p, MAX_TIMESTAMP)[1].0, both(&p, MAX_TIMESTAMP)[0].0);
    }
}
