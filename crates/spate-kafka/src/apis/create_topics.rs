//! CreateTopics: creates (or, with `validate_only`, only checks) each topic through the
//! controller. Names, partition counts, replication factors and configs are checked as Kafka
//! checks them (see [`create_topic`]); v5+ responses echo the partition count, replication
//! factor and every config with its source, v7 the topic id.
//!
//! Manual replica assignments are checked like Kafka's and accepted only when they say exactly
//! what automatic placement would do (one broker: every replica on it); placing replicas by
//! hand on a larger cluster is refused with INVALID_REQUEST until the controller supports it.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs::{self, ConfigEntry};
use crate::topics::{create_topic, ApiError, NewTopic};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::MetadataImage;
use spate_types::{validate_topic_name, NodeId};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 2, max: 7 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: CreateTopicsRequest,
) -> Reply<CreateTopicsResponse> {
    let duplicated = configs::duplicates(request.topics.iter().map(|t| t.name.0.to_string()));
    let mut reported = BTreeSet::new();
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        if duplicated.contains(&name) {
            // Kafka answers once per duplicated name and creates none of them.
            if reported.insert(name) {
                results.push(failed(
                    result,
                    ApiError::new(ResponseError::InvalidRequest, "Duplicate topic name."),
                ));
            }
            continue;
        }
        results.push(match create(broker, topic, request.validate_only).await {
            Ok(created) => result
                .with_topic_id(created.topic_id)
                .with_error_message(None)
                .with_num_partitions(created.partitions)
                .with_replication_factor(created.replication_factor)
                .with_configs(Some(
                    created.configs.into_iter().map(creatable_config).collect(),
                )),
            Err(e) => {
                tracing::debug!(
                    topic = %name,
                    code = ?e.code,
                    message = %e.message,
                    "create topic refused",
                );
                failed(result, e)
            }
        });
    }
    Reply::Now(CreateTopicsResponse::default().with_topics(results))
}

struct Created {
    topic_id: uuid::Uuid,
    partitions: i32,
    replication_factor: i16,
    configs: Vec<ConfigEntry>,
}

async fn create(
    broker: &Broker,
    topic: CreatableTopic,
    validate_only: bool,
) -> Result<Created, ApiError> {
    let name = topic.name.0.to_string();
    // The name is checked first, as Kafka does, so a bad name wins over any other error.
    validate_topic_name(&name)
        .map_err(|reason| ApiError::new(ResponseError::InvalidTopicException, reason))?;
    let image = broker.image();
    if let Some(existing) = colliding_topic(&image, &name) {
        return Err(ApiError::new(
            ResponseError::InvalidTopicException,
            format!("Topic '{name}' collides with existing topic: {existing}"),
        ));
    }
    let overrides = configs::override_map(
        topic
            .configs
            .iter()
            .map(|c| (c.name.as_str(), c.value.as_deref())),
    )?;
    let (partitions, replication_factor) = if topic.assignments.is_empty() {
        (topic.num_partitions, topic.replication_factor)
    } else {
        let assignments: Vec<(i32, Vec<i32>)> = topic
            .assignments
            .iter()
            .map(|a| {
                (
                    a.partition_index,
                    a.broker_ids.iter().map(|b| b.0).collect(),
                )
            })
            .collect();
        let brokers: Vec<NodeId> = image.alive_brokers().map(|(id, _)| *id).collect();
        resolve_assignments(
            topic.num_partitions,
            topic.replication_factor,
            &assignments,
            &brokers,
        )?
    };
    // `create_topic` validates the configs too; this adds the value size limit.
    configs::validate_overrides(&broker.config.log_defaults, &overrides)?;
    let echoed = configs::topic_entries(&broker.config.log_defaults, &overrides);
    let created = create_topic(
        broker,
        NewTopic {
            name,
            partitions,
            replication_factor,
            configs: overrides,
        },
        validate_only,
    )
    .await?;
    Ok(Created {
        topic_id: created.topic_id,
        partitions: created.partitions,
        replication_factor: created.replication_factor,
        configs: echoed,
    })
}

fn failed(result: CreatableTopicResult, e: ApiError) -> CreatableTopicResult {
    result
        .with_error_code(e.code.code())
        .with_error_message(Some(StrBytes::from_string(e.message)))
}

fn creatable_config(entry: ConfigEntry) -> CreatableTopicConfigs {
    CreatableTopicConfigs::default()
        .with_name(StrBytes::from_static_str(entry.name))
        .with_value(Some(StrBytes::from_string(entry.value)))
        .with_read_only(entry.read_only)
        .with_config_source(entry.source.id())
        .with_is_sensitive(false)
}

/// An existing topic whose name differs from `name` only by '.' versus '_': Kafka refuses
/// such a topic because both map to the same metric names.
fn colliding_topic<'a>(image: &'a MetadataImage, name: &str) -> Option<&'a str> {
    let unified = |n: &str| n.replace('.', "_");
    let wanted = unified(name);
    image
        .topics
        .keys()
        .map(String::as_str)
        .find(|existing| *existing != name && unified(existing) == wanted)
}

/// Checks CreateTopics' manual assignment (`(partition index, broker ids)` per partition) and
/// returns the partition count and replication factor it amounts to.
fn resolve_assignments(
    num_partitions: i32,
    replication_factor: i16,
    assignments: &[(i32, Vec<i32>)],
    brokers: &[NodeId],
) -> Result<(i32, i16), ApiError> {
    if replication_factor != -1 {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "A manual partition assignment was specified, but replication factor was not set to -1.",
        ));
    }
    if num_partitions != -1 {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            "A manual partition assignment was specified, but numPartitions was not set to -1.",
        ));
    }
    let mut indexes = BTreeSet::new();
    for (index, _) in assignments {
        if !indexes.insert(*index) {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("Found multiple manual partition assignments for partition {index}"),
            ));
        }
    }
    // Indexes are distinct, so 0..n are all present exactly when the largest is n - 1 and
    // none is negative.
    let count = i32::try_from(indexes.len()).unwrap_or(i32::MAX);
    if indexes.first().is_some_and(|first| *first != 0)
        || indexes.last().is_some_and(|last| *last != count - 1)
    {
        return Err(ApiError::new(
            ResponseError::InvalidReplicaAssignment,
            "partitions should be a consecutive 0-based integer sequence",
        ));
    }
    let lists: Vec<&[i32]> = assignments.iter().map(|(_, ids)| ids.as_slice()).collect();
    let replication_factor = check_manual_assignment(&lists, None, brokers)?;
    Ok((count, replication_factor))
}

/// Checks the replica lists of new partitions as Kafka does (non-empty, no broker twice, every
/// broker registered, one replication factor, equal to `expected_rf` when the topic has one)
/// and returns their replication factor.
///
/// Only assignments identical to automatic placement are accepted: on a one-broker cluster
/// every valid list is that broker. Anything else is refused with INVALID_REQUEST, because the
/// controller places replicas itself.
pub(crate) fn check_manual_assignment(
    lists: &[&[i32]],
    expected_rf: Option<usize>,
    brokers: &[NodeId],
) -> Result<i16, ApiError> {
    let invalid = |message: String| ApiError::new(ResponseError::InvalidReplicaAssignment, message);
    let mut replication_factor = expected_rf;
    for replicas in lists {
        if replicas.is_empty() {
            return Err(invalid(
                "The manual partition assignment includes an empty replica list.".to_owned(),
            ));
        }
        let mut seen = BTreeSet::new();
        for id in replicas.iter() {
            if !seen.insert(*id) {
                return Err(invalid(format!(
                    "The manual partition assignment includes the broker {id} more than once."
                )));
            }
            if !brokers.contains(&NodeId(*id)) {
                return Err(invalid(format!(
                    "The manual partition assignment includes broker {id}, but no such broker is registered."
                )));
            }
        }
        match replication_factor {
            Some(rf) if rf != replicas.len() => {
                return Err(invalid(format!(
                    "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {rf} replica(s).",
                    replicas.len()
                )));
            }
            _ => replication_factor = Some(replicas.len()),
        }
    }
    if brokers.len() != 1 {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!(
                "manual replica assignment is not supported yet on a cluster of {} brokers; omit the assignment to let the controller place replicas",
                brokers.len()
            ),
        ));
    }
    // One broker and valid lists: every list is exactly that broker.
    Ok(i16::try_from(replication_factor.unwrap_or(1)).unwrap_or(i16::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use spate_controller::TopicImage;
    use std::collections::BTreeMap;

    const ONE: &[NodeId] = &[NodeId(1)];

    fn assignment(pairs: &[(i32, &[i32])]) -> Vec<(i32, Vec<i32>)> {
        pairs.iter().map(|(p, ids)| (*p, ids.to_vec())).collect()
    }

    #[test]
    fn manual_assignment_on_one_broker_gives_partition_count_and_rf_one() {
        let a = assignment(&[(1, &[1]), (0, &[1]), (2, &[1])]);
        assert_eq!(resolve_assignments(-1, -1, &a, ONE).unwrap(), (3, 1));
    }

    #[test]
    fn manual_assignment_requires_minus_one_counts() {
        let a = assignment(&[(0, &[1])]);
        let e = resolve_assignments(1, -1, &a, ONE).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidRequest);
        assert!(e.message.contains("numPartitions"), "{}", e.message);
        let e = resolve_assignments(-1, 1, &a, ONE).unwrap_err();
        assert!(e.message.contains("replication factor"), "{}", e.message);
    }

    #[test]
    fn manual_assignment_partition_indexes_must_be_0_to_n() {
        for bad in [
            assignment(&[(0, &[1]), (0, &[1])]),
            assignment(&[(1, &[1])]),
            assignment(&[(0, &[1]), (2, &[1])]),
            assignment(&[(-1, &[1]), (0, &[1])]),
        ] {
            let e = resolve_assignments(-1, -1, &bad, ONE).unwrap_err();
            assert_eq!(
                e.code,
                ResponseError::InvalidReplicaAssignment,
                "{bad:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn manual_assignment_replica_lists_are_checked_like_kafka() {
        let cases: [(&[&[i32]], &str); 4] = [
            (&[&[]], "empty replica list"),
            (&[&[1, 1]], "more than once"),
            (&[&[7]], "no such broker"),
            (&[&[1], &[1, 2]], "not consistent"),
        ];
        for (lists, expected) in cases {
            let e = check_manual_assignment(lists, None, &[NodeId(1), NodeId(2)]).unwrap_err();
            assert_eq!(e.code, ResponseError::InvalidReplicaAssignment, "{lists:?}");
            assert!(e.message.contains(expected), "{lists:?}: {}", e.message);
        }
        // The topic's existing replication factor binds new partitions.
        let e = check_manual_assignment(&[&[1]], Some(2), ONE).unwrap_err();
        assert!(
            e.message.contains("which have 2 replica(s)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn valid_manual_assignment_on_a_larger_cluster_is_not_supported_yet() {
        let e = check_manual_assignment(&[&[1, 2]], None, &[NodeId(1), NodeId(2)]).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidRequest);
        assert_eq!(
            check_manual_assignment(&[&[1], &[1]], Some(1), ONE).unwrap(),
            1
        );
    }

    #[test]
    fn names_differing_only_by_dot_and_underscore_collide() {
        let mut image = MetadataImage::default();
        image.topics.insert(
            "a.b".into(),
            TopicImage {
                topic_id: uuid::Uuid::new_v4(),
                partitions: vec![],
                configs: BTreeMap::new(),
            },
        );
        assert_eq!(colliding_topic(&image, "a_b"), Some("a.b"));
        assert_eq!(
            colliding_topic(&image, "a.b"),
            None,
            "the same name is TOPIC_ALREADY_EXISTS, not a collision"
        );
        assert_eq!(colliding_topic(&image, "ab"), None);
    }
}
