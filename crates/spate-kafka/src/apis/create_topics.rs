//! CreateTopics: creates (or, with `validate_only`, only checks) each topic through the
//! controller. Names, partition counts, replication factors and configs are checked as Kafka
//! checks them (see [`create_topic`]); v5+ responses echo the partition count, replication
//! factor and every config with its source, v7 the topic id.
//!
//! Manual replica assignments (`replication_factor` and `num_partitions` -1, one broker list per
//! partition) are checked as Kafka checks them and handed to the controller, which places each
//! partition's replicas as listed; the first unfenced replica leads.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs::{self, ConfigEntry};
use crate::errors;
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
    let (partitions, replication_factor, assignments) = if topic.assignments.is_empty() {
        (topic.num_partitions, topic.replication_factor, None)
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
        let (partitions, replication_factor, lists) = resolve_assignments(
            topic.num_partitions,
            topic.replication_factor,
            &assignments,
            &image,
        )?;
        (partitions, replication_factor, Some(lists))
    };
    // `create_topic` validates the configs too; this adds the value size limit.
    configs::validate_overrides(&broker.log_defaults_in(&image), &overrides)?;
    let echoed = configs::topic_entries_on(
        &broker.config.log_defaults,
        &image,
        broker.config.node_id,
        &overrides,
    );
    let created = create_topic(
        broker,
        NewTopic {
            name,
            partitions,
            replication_factor,
            configs: overrides,
            assignments,
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
/// returns the partition count and replication factor it amounts to, and the replica lists in
/// partition order.
fn resolve_assignments(
    num_partitions: i32,
    replication_factor: i16,
    assignments: &[(i32, Vec<i32>)],
    image: &MetadataImage,
) -> Result<(i32, i16, Vec<Vec<NodeId>>), ApiError> {
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
    // Replica lists in partition order.
    let mut sorted: Vec<&(i32, Vec<i32>)> = assignments.iter().collect();
    sorted.sort_by_key(|(index, _)| *index);
    let lists: Vec<&[i32]> = sorted.iter().map(|(_, ids)| ids.as_slice()).collect();
    let replication_factor = check_manual_assignment(&lists, None, image)?;
    let lists = lists
        .iter()
        .map(|ids| ids.iter().copied().map(NodeId).collect())
        .collect();
    Ok((count, replication_factor, lists))
}

/// Checks the replica lists of new partitions as the controller will (see
/// [`spate_controller::manual_partitions`]: none empty, no broker twice, every broker
/// registered, at least one unfenced per partition, one replication factor, equal to
/// `expected_rf` when the topic has one) and returns their replication factor.
pub(crate) fn check_manual_assignment(
    lists: &[&[i32]],
    expected_rf: Option<usize>,
    image: &MetadataImage,
) -> Result<i16, ApiError> {
    let lists: Vec<Vec<NodeId>> = lists
        .iter()
        .map(|ids| ids.iter().copied().map(NodeId).collect())
        .collect();
    spate_controller::manual_partitions(image, 0, &lists, expected_rf)
        .map_err(|e| ApiError::new(errors::metadata_error(&e), metadata_message(e)))?;
    let replication_factor = expected_rf.or_else(|| lists.first().map(Vec::len));
    Ok(i16::try_from(replication_factor.unwrap_or(1)).unwrap_or(i16::MAX))
}

/// The reason a metadata rule gives, without the `Display` prefix, as Kafka words it.
fn metadata_message(e: spate_controller::MetadataError) -> String {
    match e {
        spate_controller::MetadataError::InvalidReplicaAssignment(message) => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use spate_controller::{BrokerEndpoint, TopicImage};
    use std::collections::BTreeMap;

    /// A cluster of the registered brokers `ids`, of which `fenced` are fenced.
    pub(crate) fn cluster(ids: &[i32], fenced: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in ids {
            let port = u16::try_from(9090 + id).unwrap();
            let endpoint = BrokerEndpoint {
                host: "localhost".into(),
                port,
                rack: None,
            };
            image.brokers.insert(NodeId(*id), endpoint);
        }
        image.fenced = fenced.iter().copied().map(NodeId).collect();
        image
    }

    fn assignment(pairs: &[(i32, &[i32])]) -> Vec<(i32, Vec<i32>)> {
        pairs.iter().map(|(p, ids)| (*p, ids.to_vec())).collect()
    }

    #[test]
    fn manual_assignment_on_one_broker_gives_partition_count_and_rf_one() {
        let a = assignment(&[(1, &[1]), (0, &[1]), (2, &[1])]);
        let (count, rf, lists) = resolve_assignments(-1, -1, &a, &cluster(&[1], &[])).unwrap();
        assert_eq!((count, rf), (3, 1));
        assert_eq!(lists, vec![vec![NodeId(1)]; 3]);
    }

    #[test]
    fn manual_assignment_requires_minus_one_counts() {
        let a = assignment(&[(0, &[1])]);
        let one = cluster(&[1], &[]);
        let e = resolve_assignments(1, -1, &a, &one).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidRequest);
        assert!(e.message.contains("numPartitions"), "{}", e.message);
        let e = resolve_assignments(-1, 1, &a, &one).unwrap_err();
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
            let e = resolve_assignments(-1, -1, &bad, &cluster(&[1], &[])).unwrap_err();
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
        let two = cluster(&[1, 2], &[]);
        let cases: [(&[&[i32]], &str); 5] = [
            (&[&[]], "empty replica list"),
            (&[&[1, 1]], "more than once"),
            (&[&[7]], "no such broker"),
            (&[&[-1]], "no such broker"),
            (&[&[1], &[1, 2]], "not consistent"),
        ];
        for (lists, expected) in cases {
            let e = check_manual_assignment(lists, None, &two).unwrap_err();
            assert_eq!(e.code, ResponseError::InvalidReplicaAssignment, "{lists:?}");
            assert!(e.message.contains(expected), "{lists:?}: {}", e.message);
        }
        // The topic's existing replication factor binds new partitions.
        let e = check_manual_assignment(&[&[1]], Some(2), &two).unwrap_err();
        assert!(
            e.message.contains("which have 2 replica(s)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn manual_assignment_places_replicas_anywhere_on_a_larger_cluster() {
        let three = cluster(&[1, 2, 3], &[]);
        assert_eq!(
            check_manual_assignment(&[&[3, 1], &[2, 3], &[1, 2]], None, &three).unwrap(),
            2
        );
        assert_eq!(
            check_manual_assignment(&[&[2]], Some(1), &three).unwrap(),
            1
        );
    }

    #[test]
    fn manual_assignment_needs_one_unfenced_replica_per_partition() {
        let fenced = cluster(&[1, 2, 3], &[3]);
        // A fenced broker may hold a replica, as in Kafka; it joins the ISR once caught up.
        assert_eq!(
            check_manual_assignment(&[&[3, 1]], None, &fenced).unwrap(),
            2
        );
        let e = check_manual_assignment(&[&[1], &[3]], None, &fenced).unwrap_err();
        assert_eq!(e.code, ResponseError::InvalidReplicaAssignment);
        assert_eq!(
            e.message,
            "All brokers specified in the manual partition assignment for partition 1 are fenced or in controlled shutdown."
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
