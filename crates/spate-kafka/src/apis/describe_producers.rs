//! DescribeProducers (KIP-664): the producers a partition's leader knows (its producer state),
//! for tools that find and abort hanging transactions (`kafka-transactions.sh
//! describe-producers`, `find-hanging`).
//!
//! Answered per partition by its leader only (Kafka's `activeProducerState`):
//! UNKNOWN_TOPIC_OR_PARTITION for a partition the metadata does not have,
//! NOT_LEADER_OR_FOLLOWER for one this node does not host or does not lead. Each producer is
//! reported with its epoch, the last sequence of its last remembered batch (-1 if none), the
//! timestamp of its last write, the coordinator epoch of its last marker (-1 if none) and the
//! first offset of its open transaction (-1 if none).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_controller::MetadataImage;
use spate_replica::Partition;
use spate_types::TopicPartition;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

/// Kafka's `RecordBatch.NO_SEQUENCE`, and "none" for the other fields.
const NONE: i32 = -1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DescribeProducersRequest,
) -> Reply<DescribeProducersResponse> {
    let image = broker.image();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partition_indexes
                .into_iter()
                .map(|index| {
                    let tp = TopicPartition::new(name.clone(), index);
                    let partition = broker
                        .hosted(&image, &tp, None)
                        .map_err(|e| not_hosted(&image, &tp, e));
                    describe(index, partition.as_deref().map_err(|e| *e))
                })
                .collect();
            TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(DescribeProducersResponse::default().with_topics(topics))
}

/// Kafka's `getPartitionOrError`: a partition the metadata has but this node does not host
/// belongs to another leader.
fn not_hosted(image: &MetadataImage, tp: &TopicPartition, error: ResponseError) -> ResponseError {
    let known = image.topics.get(&tp.topic).is_some_and(|t| {
        usize::try_from(tp.partition).is_ok_and(|index| index < t.partitions.len())
    });
    match error {
        ResponseError::UnknownTopicOrPartition if known => ResponseError::NotLeaderOrFollower,
        other => other,
    }
}

/// The answer for partition `index`, hosted here as `partition` or not.
fn describe(index: i32, partition: Result<&Partition, ResponseError>) -> PartitionResponse {
    let response = PartitionResponse::default().with_partition_index(index);
    match partition.and_then(producers) {
        Ok(producers) => response.with_active_producers(producers),
        Err(code) => response.with_error_code(code.code()),
    }
}

fn producers(partition: &Partition) -> Result<Vec<ProducerState>, ResponseError> {
    let map = |e: spate_replica::ReplicaError| errors::replica_error(&e);
    // The leader's producer state only (a follower's may lag it).
    partition.check_consumer(None).map_err(map)?;
    Ok(partition
        .producers()
        .map_err(map)?
        .into_iter()
        .map(|(pid, entry)| {
            ProducerState::default()
                .with_producer_id(ProducerId(pid.0))
                .with_producer_epoch(i32::from(entry.epoch.0))
                .with_last_sequence(entry.batches.back().map_or(NONE, |b| b.last_seq))
                .with_last_timestamp(entry.last_timestamp)
                .with_coordinator_epoch(entry.coordinator_epoch)
                .with_current_txn_start_offset(entry.current_txn_first_offset.map_or(-1, |o| o.0))
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::apis::fetch::tests::{batch, leader, produce, txn, NOW_MS, TXN_PID};
    use spate_controller::{PartitionImage, TopicImage};
    use spate_log::TxnMarker;
    use spate_replica::LeaderAndIsr;
    use spate_types::{LeaderEpoch, NodeId, ProducerEpoch, ProducerId as Pid};
    use std::collections::BTreeMap;

    /// `(id, epoch, last sequence, last timestamp, coordinator epoch, transaction start)`.
    type Described = (i64, i32, i32, i64, i32, i64);

    fn described(p: &Partition) -> Vec<Described> {
        let response = describe(3, Ok(p));
        assert_eq!(response.partition_index, 3);
        assert_eq!(response.error_code, 0);
        response
            .active_producers
            .iter()
            .map(|s| {
                (
                    s.producer_id.0,
                    s.producer_epoch,
                    s.last_sequence,
                    s.last_timestamp,
                    s.coordinator_epoch,
                    s.current_txn_start_offset,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn each_producer_of_the_leader_is_described() {
        let dir = tempfile::tempdir().unwrap();
        let p = leader(dir.path());
        assert_eq!(described(&p), []);
        produce(&p, batch(1, None, false, 1_000)).await;
        produce(&p, txn(2, 0, 2_000)).await;
        produce(&p, batch(1, Some((9, 0)), false, 3_000)).await;
        assert_eq!(
            described(&p),
            [(TXN_PID, 0, 1, 2_000, -1, 1), (9, 0, 0, 3_000, -1, -1),]
        );

        tracing::info!("--- a COMMIT marker from coordinator epoch 5 ends the transaction");
        let marker = TxnMarker {
            producer_id: Pid(TXN_PID),
            producer_epoch: ProducerEpoch(0),
            coordinator_epoch: 5,
            commit: true,
        };
        p.append_marker(marker, NOW_MS).unwrap();
        assert_eq!(described(&p)[0], (TXN_PID, 0, 1, NOW_MS, 5, -1));
    }

    #[tokio::test]
    async fn only_the_leader_answers() {
        let dir = tempfile::tempdir().unwrap();
        let p = leader(dir.path());
        p.apply(LeaderAndIsr {
            leader: Some(NodeId(2)),
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 1,
            replicas: vec![NodeId(1), NodeId(2)],
            isr: vec![NodeId(1), NodeId(2)],
        })
        .unwrap();
        let code = |r: PartitionResponse| (r.error_code, r.active_producers.len());
        assert_eq!(
            code(describe(0, Ok(&p))),
            (ResponseError::NotLeaderOrFollower.code(), 0)
        );
        assert_eq!(
            code(describe(0, Err(ResponseError::UnknownTopicOrPartition))),
            (ResponseError::UnknownTopicOrPartition.code(), 0)
        );

        tracing::info!("--- not hosted here: another node leads a partition the metadata has");
        let mut image = MetadataImage::default();
        let partition = PartitionImage {
            partition_epoch: 0,
            leader: NodeId(2),
            leader_epoch: LeaderEpoch(0),
            replicas: vec![NodeId(2)],
            isr: vec![NodeId(2)],
        };
        image.topics.insert(
            "t".into(),
            TopicImage {
                topic_id: uuid::Uuid::from_u128(1),
                partitions: vec![partition],
                configs: BTreeMap::new(),
            },
        );
        let unknown = ResponseError::UnknownTopicOrPartition;
        for (tp, expected) in [
            (
                TopicPartition::new("t", 0),
                ResponseError::NotLeaderOrFollower,
            ),
            (TopicPartition::new("t", 1), unknown),
            (TopicPartition::new("t", -1), unknown),
            (TopicPartition::new("u", 0), unknown),
        ] {
            assert_eq!(not_hosted(&image, &tp, unknown), expected, "{tp}");
        }
        assert_eq!(
            not_hosted(
                &image,
                &TopicPartition::new("t", 0),
                ResponseError::UnknownTopicId
            ),
            ResponseError::UnknownTopicId
        );
    }
}
