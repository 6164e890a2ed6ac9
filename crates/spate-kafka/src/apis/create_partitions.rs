//! CreatePartitions: grows topics to a new partition count through the controller (or, with
//! `validate_only`, only checks), then applies the new image so the new partitions open here
//! at once. New partitions keep the topic's replication factor; a manual assignment (one broker
//! list per new partition) is checked as CreateTopics checks one and placed as listed.

use super::create_topics::check_manual_assignment;
use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs;
use crate::errors;
use crate::topics::ApiError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::{MetadataCommand, MetadataImage, MetadataOutcome, TopicImage};
use spate_types::{limits, NodeId};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 3 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: CreatePartitionsRequest,
) -> Reply<CreatePartitionsResponse> {
    let duplicated = configs::duplicates(request.topics.iter().map(|t| t.name.0.to_string()));
    let mut reported = BTreeSet::new();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        let outcome = if duplicated.contains(&name) {
            // Answered once per name; none of the entries is applied.
            if !reported.insert(name.clone()) {
                continue;
            }
            Err(ApiError::new(
                ResponseError::InvalidRequest,
                "Duplicate topic name.",
            ))
        } else {
            grow(broker, &name, &topic, request.validate_only).await
        };
        results.push(match outcome {
            Ok(()) => result.with_error_message(None),
            Err(e) => {
                tracing::debug!(
                    topic = %name,
                    code = ?e.code,
                    message = %e.message,
                    "create partitions refused",
                );
                result
                    .with_error_code(e.code.code())
                    .with_error_message(Some(StrBytes::from_string(e.message)))
            }
        });
    }
    Reply::Now(CreatePartitionsResponse::default().with_results(results))
}

async fn grow(
    broker: &Broker,
    name: &str,
    request: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), ApiError> {
    // Checked against a view that holds every change committed before this request.
    broker
        .controller
        .catch_up()
        .await
        .map_err(|e| ApiError::new(crate::errors::controller_error(&e), e.to_string()))?;
    let image = broker.image();
    let topic = image.topics.get(name).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        )
    })?;
    let lists: Option<Vec<Vec<i32>>> = request.assignments.as_ref().map(|a| {
        a.iter()
            .map(|p| p.broker_ids.iter().map(|b| b.0).collect())
            .collect()
    });
    check_growth(name, topic, request.count, lists.as_deref(), &image)?;
    if validate_only {
        return Ok(());
    }
    let outcome = broker
        .controller
        .propose(MetadataCommand::CreatePartitions {
            name: name.to_owned(),
            new_total: request.count,
            assignments: lists.map(|lists| {
                lists
                    .into_iter()
                    .map(|ids| ids.into_iter().map(NodeId).collect())
                    .collect()
            }),
        })
        .await
        .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
    match outcome {
        MetadataOutcome::PartitionsCreated => {
            broker.wait_reconciled().await;
            tracing::info!(
                topic = name,
                partitions = request.count,
                "created partitions"
            );
            Ok(())
        }
        MetadataOutcome::Rejected(e) => {
            Err(ApiError::new(errors::metadata_error(&e), e.to_string()))
        }
        other => Err(ApiError::new(
            ResponseError::UnknownServerError,
            format!("unexpected controller outcome {other:?}"),
        )),
    }
}

/// Kafka's checks of a new partition count and of its optional manual assignment (one broker
/// list per new partition).
fn check_growth(
    name: &str,
    topic: &TopicImage,
    count: i32,
    assignments: Option<&[Vec<i32>]>,
    image: &MetadataImage,
) -> Result<(), ApiError> {
    let current = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
    if count == current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    if count < current {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!(
                "The topic {name} currently has {current} partition(s); {count} would not be an increase."
            ),
        ));
    }
    if count > limits::PARTITIONS_PER_TOPIC_MAX {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!(
                "number of partitions must be between 1 and {}, was {count}",
                limits::PARTITIONS_PER_TOPIC_MAX
            ),
        ));
    }
    let Some(assignments) = assignments else {
        return Ok(());
    };
    let additional = count - current;
    if usize::try_from(additional).ok() != Some(assignments.len()) {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            format!(
                "Attempted to add {additional} additional partition(s), but only {} assignment(s) were specified.",
                assignments.len()
            ),
        ));
    }
    let replication_factor = topic.partitions.first().map(|p| p.replicas.len());
    let lists: Vec<&[i32]> = assignments.iter().map(Vec::as_slice).collect();
    check_manual_assignment(&lists, replication_factor, image).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use spate_controller::PartitionImage;
    use spate_types::LeaderEpoch;
    use std::collections::BTreeMap;

    use crate::apis::create_topics::tests::cluster;

    fn one() -> MetadataImage {
        cluster(&[1], &[])
    }

    fn topic(partitions: usize) -> TopicImage {
        let partition = PartitionImage {
            partition_epoch: 0,
            leader: NodeId(1),
            leader_epoch: LeaderEpoch(0),
            replicas: vec![NodeId(1)],
            isr: vec![NodeId(1)],
        };
        TopicImage {
            topic_id: uuid::Uuid::from_u128(1),
            partitions: vec![partition; partitions],
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn same_count_is_invalid_partitions_with_kafkas_message() {
        let e = check_growth("t", &topic(3), 3, None, &one()).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                ResponseError::InvalidPartitions,
                "Topic already has 3 partition(s)."
            )
        );
    }

    #[test]
    fn smaller_count_is_invalid_partitions_with_kafkas_message() {
        let e = check_growth("t", &topic(4), 3, None, &one()).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidPartitions);
        assert_eq!(
            e.message,
            "The topic t currently has 4 partition(s); 3 would not be an increase."
        );
    }

    #[test]
    fn count_above_the_limit_is_invalid_partitions() {
        let e = check_growth(
            "t",
            &topic(1),
            limits::PARTITIONS_PER_TOPIC_MAX + 1,
            None,
            &one(),
        )
        .unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidPartitions);
    }

    #[test]
    fn larger_count_is_accepted() {
        assert!(check_growth("t", &topic(1), 4, None, &one()).is_ok());
    }

    #[test]
    fn manual_assignment_must_cover_exactly_the_new_partitions() {
        let e = check_growth("t", &topic(1), 3, Some(&[vec![1]]), &one()).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidReplicaAssignment);
        assert!(
            e.message
                .contains("add 2 additional partition(s), but only 1"),
            "{}",
            e.message
        );
        assert!(check_growth("t", &topic(1), 3, Some(&[vec![1], vec![1]]), &one()).is_ok());
    }

    #[test]
    fn manual_assignment_keeps_the_topics_replication_factor() {
        let e = check_growth(
            "t",
            &topic(1),
            2,
            Some(&[vec![1, 2]]),
            &cluster(&[1, 2], &[]),
        )
        .unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidReplicaAssignment);
        assert!(e.message.contains("not consistent"), "{}", e.message);
    }

    #[test]
    fn manual_assignment_places_new_partitions_on_any_registered_broker() {
        let three = cluster(&[1, 2, 3], &[]);
        assert!(check_growth("t", &topic(1), 3, Some(&[vec![2], vec![3]]), &three).is_ok());
        let e = check_growth("t", &topic(1), 2, Some(&[vec![4]]), &three).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidReplicaAssignment);
        assert!(e.message.contains("no such broker"), "{}", e.message);
    }
}
