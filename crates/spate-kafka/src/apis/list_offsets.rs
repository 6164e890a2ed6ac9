//! ListOffsets: earliest, latest, max-timestamp and by-timestamp offset lookups.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
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

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: ListOffsetsRequest,
) -> Reply<ListOffsetsResponse> {
    // The leader epoch exists from v4; kafka-protocol refuses to encode it set in older ones.
    let with_epoch = ctx.version() >= LEADER_EPOCH_VERSION;
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
                    match lookup(
                        broker,
                        &image,
                        &TopicPartition::new(name.clone(), p.partition_index),
                        &p,
                    ) {
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

fn lookup(
    broker: &Broker,
    image: &spate_controller::MetadataImage,
    tp: &TopicPartition,
    request: &kafka_protocol::messages::list_offsets_request::ListOffsetsPartition,
) -> Result<(i64, i64, i32), ResponseError> {
    let partition = broker.hosted(image, tp, None)?;
    let map = |e: spate_replica::ReplicaError| errors::replica_error(&e);
    // Only the leader answers, in the epoch the client names (if any), once its high
    // watermark has settled (KIP-207: OFFSET_NOT_AVAILABLE until then).
    let requested = (request.current_leader_epoch >= 0)
        .then_some(spate_types::LeaderEpoch(request.current_leader_epoch));
    partition.check_consumer_read(requested).map_err(map)?;
    let epoch = partition.leader_epoch().0;
    let hw = partition.high_watermark().0;
    match request.timestamp {
        LATEST => Ok((hw, -1, epoch)),
        EARLIEST | EARLIEST_LOCAL => Ok((partition.log_start_offset().map_err(map)?.0, -1, epoch)),
        LATEST_TIERED => Ok((-1, -1, -1)),
        MAX_TIMESTAMP => match partition
            .with_log(|log| log.max_timestamp_offset())
            .map_err(map)?
        {
            Some((offset, timestamp)) if offset.0 < hw => Ok((offset.0, timestamp, epoch)),
            _ => Ok((-1, -1, -1)),
        },
        target if target >= 0 => {
            match partition
                .with_log(|log| log.offset_for_timestamp(target))
                .map_err(map)?
            {
                Some((offset, timestamp)) if offset.0 < hw => Ok((offset.0, timestamp, epoch)),
                _ => Ok((-1, -1, -1)),
            }
        }
        _ => Err(ResponseError::InvalidRequest),
    }
}
