//! DeleteRecords: raises a partition's log start offset (its low watermark) to the requested
//! offset and deletes the segments wholly below it. Offset -1 means "up to the high
//! watermark"; an offset above the high watermark, or negative, is OFFSET_OUT_OF_RANGE; a topic
//! whose `cleanup.policy` does not include `delete` refuses with POLICY_VIOLATION, as in Kafka.
//!
//! Only the leader deletes. Every partition here is a single replica today, so the new low
//! watermark is final when the call returns; with followers, Kafka answers once every replica
//! has moved its log start offset, which this handler will need to wait for.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_controller::{MetadataImage, PartitionImage};
use spate_types::{Offset, TopicPartition};
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// The requested offset that means "the high watermark".
const HIGH_WATERMARK: i64 = -1;
/// The low watermark Kafka reports with an error.
const INVALID_LOW_WATERMARK: i64 = -1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DeleteRecordsRequest,
) -> Reply<DeleteRecordsResponse> {
    let image = broker.image();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let tp = TopicPartition::new(name.clone(), p.partition_index);
            let result =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match delete(broker, &image, tp, p.offset).await {
                Ok(low_watermark) => result.with_low_watermark(low_watermark.0),
                Err(code) => result
                    .with_error_code(code.code())
                    .with_low_watermark(INVALID_LOW_WATERMARK),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    Reply::Now(DeleteRecordsResponse::default().with_topics(topics))
}

async fn delete(
    broker: &Broker,
    image: &MetadataImage,
    tp: TopicPartition,
    requested: i64,
) -> Result<Offset, ResponseError> {
    let assignment = assignment(image, &tp)?;
    if assignment.leader != broker.config.node_id {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    // Known and led here but not open yet, or still another topic of the name (the image is
    // being applied): retriable.
    let partition = broker
        .hosted(image, &tp, None)
        .map_err(|_| ResponseError::NotLeaderOrFollower)?;
    let target = target_offset(requested, partition.high_watermark())?;
    // Unlinking segments and checkpointing the log start offset are disk work: off the
    // runtime's worker threads.
    let outcome = spate_types::exec::blocking(move || {
        partition.with_log(|log| {
            if !log.config().deletes() {
                return Ok(Err(ResponseError::PolicyViolation));
            }
            log.delete_records_before(target).map(Ok)
        })
    })
    .await
    .map_err(|e| {
        tracing::error!(partition = %tp, error = %e, "delete records task failed");
        ResponseError::UnknownServerError
    })?;
    match outcome {
        Ok(Ok(low_watermark)) => {
            tracing::info!(partition = %tp, %low_watermark, "deleted records");
            Ok(low_watermark)
        }
        Ok(Err(code)) => {
            tracing::debug!(
                partition = %tp,
                "delete records refused: cleanup.policy does not include delete",
            );
            Err(code)
        }
        Err(e) => {
            let code = errors::replica_error(&e);
            if code == ResponseError::KafkaStorageError {
                tracing::error!(partition = %tp, error = %e, "delete records task failed");
            } else {
                tracing::debug!(partition = %tp, error = %e, "delete records refused");
            }
            Err(code)
        }
    }
}

/// The partition as the metadata image knows it.
fn assignment<'a>(
    image: &'a MetadataImage,
    tp: &TopicPartition,
) -> Result<&'a PartitionImage, ResponseError> {
    image
        .topics
        .get(&tp.topic)
        .and_then(|topic| {
            usize::try_from(tp.partition)
                .ok()
                .and_then(|i| topic.partitions.get(i))
        })
        .ok_or(ResponseError::UnknownTopicOrPartition)
}

/// The offset to delete below: -1 is the high watermark; anything else must lie in
/// `0..=high_watermark`.
fn target_offset(requested: i64, high_watermark: Offset) -> Result<Offset, ResponseError> {
    let target = if requested == HIGH_WATERMARK {
        high_watermark
    } else {
        Offset(requested)
    };
    if target.0 < 0 || target > high_watermark {
        return Err(ResponseError::OffsetOutOfRange);
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_controller::TopicImage;
    use spate_types::{LeaderEpoch, NodeId};
    use std::collections::BTreeMap;

    #[test]
    fn minus_one_means_the_high_watermark() {
        assert_eq!(target_offset(-1, Offset(42)), Ok(Offset(42)));
        assert_eq!(target_offset(-1, Offset(0)), Ok(Offset(0)));
    }

    #[test]
    fn offsets_up_to_and_including_the_high_watermark_are_accepted() {
        assert_eq!(target_offset(0, Offset(10)), Ok(Offset(0)));
        assert_eq!(target_offset(10, Offset(10)), Ok(Offset(10)));
    }

    #[test]
    fn beyond_the_high_watermark_or_negative_is_offset_out_of_range() {
        assert_eq!(
            target_offset(11, Offset(10)),
            Err(ResponseError::OffsetOutOfRange)
        );
        assert_eq!(
            target_offset(-2, Offset(10)),
            Err(ResponseError::OffsetOutOfRange)
        );
        assert_eq!(
            target_offset(i64::MIN, Offset(10)),
            Err(ResponseError::OffsetOutOfRange)
        );
    }

    #[test]
    fn unknown_topic_or_partition_index() {
        let partition = PartitionImage {
            partition_epoch: 0,
            leader: NodeId(1),
            leader_epoch: LeaderEpoch(0),
            replicas: vec![NodeId(1)],
            isr: vec![NodeId(1)],
        };
        let mut image = MetadataImage::default();
        image.topics.insert(
            "t".into(),
            TopicImage {
                topic_id: uuid::Uuid::from_u128(1),
                partitions: vec![partition],
                configs: BTreeMap::new(),
            },
        );
        assert!(assignment(&image, &TopicPartition::new("t", 0)).is_ok());
        for tp in [
            TopicPartition::new("t", 1),
            TopicPartition::new("t", -1),
            TopicPartition::new("u", 0),
        ] {
            assert_eq!(
                assignment(&image, &tp).err(),
                Some(ResponseError::UnknownTopicOrPartition),
                "{tp}"
            );
        }
    }
}
