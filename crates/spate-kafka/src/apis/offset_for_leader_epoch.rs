//! OffsetForLeaderEpoch (KIP-101, KIP-279, KIP-320): where a leader epoch ended in this
//! leader's log. Followers ask it before fetching after a leader or epoch change, to find where
//! their log diverged; consumers ask it after a leader change to detect log truncation.
//!
//! Answered by the leader only, in the epoch the caller names (`current_leader_epoch`, -1 for
//! none): the largest epoch ≤ the requested one that this log knows and the offset where it
//! ended (the log end for the current epoch), or UNDEFINED (-1/-1) when the log knows no such
//! epoch. Versions 0 and 1 were removed in Kafka 4.0 and are not in the protocol schemas.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_replica::Partition;
use spate_types::{LeaderEpoch, TopicPartition};
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 2, max: 4 };

/// Kafka's "no epoch" (`RecordBatch.NO_PARTITION_LEADER_EPOCH`), in both request fields.
const NO_EPOCH: i32 = -1;
/// Kafka's UNDEFINED_EPOCH_OFFSET.
const UNDEFINED_OFFSET: i64 = -1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: OffsetForLeaderEpochRequest,
) -> Reply<OffsetForLeaderEpochResponse> {
    let image = broker.image();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let tp = TopicPartition::new(name.clone(), p.partition);
                    // A replica of another topic of the name (the image not yet applied
                    // here) must not answer for this one.
                    let partition = broker.hosted(&image, &tp, None).ok();
                    let answer = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(NO_EPOCH)
                        .with_end_offset(UNDEFINED_OFFSET);
                    match end_offset(partition.as_deref(), p.current_leader_epoch, p.leader_epoch) {
                        Ok((epoch, end)) => answer.with_leader_epoch(epoch).with_end_offset(end),
                        Err(error) => answer.with_error_code(error.code()),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(OffsetForLeaderEpochResponse::default().with_topics(topics))
}

/// The answer for one partition: `(epoch, end offset)`, -1/-1 when undefined.
fn end_offset(
    partition: Option<&Partition>,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Result<(i32, i64), ResponseError> {
    let partition = partition.ok_or(ResponseError::UnknownTopicOrPartition)?;
    let current = (current_leader_epoch != NO_EPOCH).then_some(LeaderEpoch(current_leader_epoch));
    partition
        .check_consumer(current)
        .map_err(|e| errors::replica_error(&e))?;
    if leader_epoch < 0 {
        // A follower that never recorded an epoch (Kafka answers UNDEFINED too).
        return Ok((NO_EPOCH, UNDEFINED_OFFSET));
    }
    let found = partition
        .epoch_end_offset(LeaderEpoch(leader_epoch))
        .map_err(|e| errors::replica_error(&e))?;
    Ok(found.map_or((NO_EPOCH, UNDEFINED_OFFSET), |(epoch, end)| {
        (epoch.0, end.0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use spate_log::LogConfig;
    use spate_replica::{FlushPolicy, LeaderAndIsr, ReplicaSettings};
    use spate_types::NodeId;

    const LOCAL: NodeId = NodeId(1);
    const OTHER: NodeId = NodeId(2);

    fn state(leader: NodeId, epoch: i32) -> LeaderAndIsr {
        LeaderAndIsr {
            leader: Some(leader),
            leader_epoch: LeaderEpoch(epoch),
            partition_epoch: epoch,
            replicas: vec![LOCAL, OTHER],
            isr: vec![LOCAL, OTHER],
        }
    }

    fn batch() -> Vec<u8> {
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    fn open(dir: &std::path::Path) -> Arc<Partition> {
        let settings = ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 10_000,
            min_insync_replicas: 1,
            fsync_required: true,
        };
        Partition::open(
            Arc::new(spate_types::OsDisk),
            dir,
            TopicPartition::new("t", 0),
            uuid::Uuid::from_u128(1),
            LogConfig::default(),
            settings,
            FlushPolicy::default(),
            spate_replica::StorageHealth::default(),
            Arc::new(spate_types::SystemClock),
            0,
        )
        .expect("open")
    }

    #[tokio::test]
    async fn the_leader_answers_where_each_epoch_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path());
        // Offsets 0 and 1 in epoch 1, offset 2 in epoch 3.
        p.apply(state(LOCAL, 1)).expect("leader in 1");
        for _ in 0..2 {
            p.append(&mut batch(), false, 0).expect("append");
        }
        p.apply(state(LOCAL, 3)).expect("leader in 3");
        p.append(&mut batch(), false, 0).expect("append");
        let p = Some(&*p);
        assert_eq!(end_offset(p, 3, 1), Ok((1, 2)));
        assert_eq!(
            end_offset(p, 3, 2),
            Ok((1, 2)),
            "the largest epoch ≤ 2 is 1"
        );
        assert_eq!(
            end_offset(p, 3, 3),
            Ok((3, 3)),
            "the current epoch ends at the log end"
        );
        assert_eq!(end_offset(p, -1, 3), Ok((3, 3)), "-1: no epoch check");
        assert_eq!(
            end_offset(p, 3, 4),
            Ok((-1, -1)),
            "newer than any: UNDEFINED"
        );
        assert_eq!(end_offset(p, 3, -1), Ok((-1, -1)));
        assert_eq!(
            end_offset(p, 3, 0),
            Ok((0, 0)),
            "older than any: Kafka's answer"
        );
    }

    #[tokio::test]
    async fn errors_are_kafkas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path());
        p.apply(state(LOCAL, 3)).expect("leader");
        let leader = Some(&*p);
        assert_eq!(
            end_offset(leader, 2, 3),
            Err(ResponseError::FencedLeaderEpoch)
        );
        assert_eq!(
            end_offset(leader, 4, 3),
            Err(ResponseError::UnknownLeaderEpoch)
        );
        assert_eq!(
            end_offset(None, 3, 3),
            Err(ResponseError::UnknownTopicOrPartition)
        );
        p.apply(state(OTHER, 4)).expect("follower");
        assert_eq!(
            end_offset(Some(&*p), 4, 3),
            Err(ResponseError::NotLeaderOrFollower),
            "only the leader answers"
        );
    }
}
