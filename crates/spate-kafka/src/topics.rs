//! Topic creation shared by CreateTopics and Metadata's auto-create.

use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_controller::{MetadataCommand, MetadataOutcome};
use spate_types::{limits, validate_topic_name, NodeId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A Kafka error code with the message Kafka would put beside it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: ResponseError,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

pub(crate) struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub partitions: i32,
    /// -1: `default.replication.factor`.
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Each partition's replica list, chosen by the client (then `partitions` and
    /// `replication_factor` are already resolved from it).
    pub assignments: Option<Vec<Vec<NodeId>>>,
}

pub(crate) struct CreatedTopic {
    pub topic_id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
}

const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// A replication factor an internal topic asks for, capped at the live brokers (Kafka's
/// `offsets.topic.replication.factor` and `transaction.state.log.replication.factor` fail
/// until enough brokers are up; a single node gets a working coordinator instead).
pub(crate) fn capped_at_live_brokers(broker: &Broker, replication_factor: i16) -> i16 {
    replication_factor.min(broker.image().alive_brokers().count().max(1) as i16)
}

/// How many partitions `topic` has in the metadata image (0: it does not exist).
pub(crate) fn partition_count(broker: &Broker, topic: &str) -> i32 {
    broker
        .image()
        .topics
        .get(topic)
        .map_or(0, |t| t.partitions.len() as i32)
}

/// The node that coordinates `key` on an internal topic (`__consumer_offsets` for a group id,
/// `__transaction_state` for a transactional id): the leader of the key's partition, if it
/// has one.
pub(crate) fn coordinator_node(
    broker: &Broker,
    topic: &str,
    key: &str,
) -> Option<spate_types::NodeId> {
    let image = broker.image();
    let topic = image.topics.get(topic)?;
    let index = spate_coordinator::partition_for(key, topic.partitions.len() as i32);
    let p = topic.partitions.get(usize::try_from(index).ok()?)?;
    p.has_leader().then_some(p.leader)
}

/// The partitions of an internal topic (of `count` partitions) this node leads, by number: what
/// its coordinator loads after each reconciliation.
pub(crate) fn led_partitions(
    broker: &Broker,
    topic: &str,
    count: i32,
) -> BTreeMap<i32, std::sync::Arc<spate_replica::Partition>> {
    (0..count)
        .filter_map(|index| {
            let p = broker
                .replicas
                .get(&spate_types::TopicPartition::new(topic, index))?;
            (p.role() == spate_replica::Role::Leader).then_some((index, p))
        })
        .collect()
}

/// Creates an internal topic (`__consumer_offsets`, `__transaction_state`) unless it exists,
/// then waits until this node's replicas follow the metadata. Another request creating it
/// first is not an error.
pub(crate) async fn ensure_internal_topic(
    broker: &std::sync::Arc<Broker>,
    topic: NewTopic,
) -> Result<(), ApiError> {
    if !broker.image().topics.contains_key(&topic.name) {
        match create_topic(broker, topic, false).await {
            Ok(_) => {}
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    broker.wait_reconciled().await;
    Ok(())
}

/// The `min.insync.replicas` a new topic gets when neither it nor the operator chose one: a
/// majority of three, so an acks=all write survives one node down and is never acknowledged by
/// a single replica; below three replicas, 1 (Kafka's default).
fn default_min_insync(
    config: &crate::BrokerConfig,
    replication_factor: i16,
    configs: &BTreeMap<String, String>,
) -> Option<i32> {
    if config.min_insync_replicas.is_some() || configs.contains_key(MIN_INSYNC_REPLICAS) {
        return None;
    }
    (replication_factor >= 3).then_some(2)
}

/// Validates and (unless `validate_only`) creates a topic through the controller.
pub(crate) async fn create_topic(
    broker: &Broker,
    topic: NewTopic,
    validate_only: bool,
) -> Result<CreatedTopic, ApiError> {
    validate_topic_name(&topic.name)
        .map_err(|reason| ApiError::new(ResponseError::InvalidTopicException, reason))?;
    let partitions = if topic.partitions == -1 {
        broker.config.num_partitions
    } else {
        topic.partitions
    };
    if !(1..=limits::PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!(
                "number of partitions must be between 1 and {}, was {}",
                limits::PARTITIONS_PER_TOPIC_MAX,
                topic.partitions
            ),
        ));
    }
    let replication_factor = if topic.replication_factor == -1 {
        broker.config.default_replication_factor
    } else {
        topic.replication_factor
    };
    // Checked against a view that holds every change committed before this request: a node
    // cut off from the controller answered TOPIC_ALREADY_EXISTS for a topic deleted meanwhile
    // (simulator seed 116).
    broker
        .controller
        .catch_up()
        .await
        .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
    let image = broker.image();
    let alive = image.alive_brokers().count();
    // Replicas placed by hand may include fenced brokers (each partition needs one unfenced).
    let placeable = if topic.assignments.is_some() {
        image.brokers.len()
    } else {
        alive
    };
    if replication_factor < 1 || replication_factor as usize > placeable {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor must be between 1 and the number of available brokers ({alive}), was {replication_factor}",
            ),
        ));
    }
    let mut topic = topic;
    if let Some(min_isr) = default_min_insync(&broker.config, replication_factor, &topic.configs) {
        topic
            .configs
            .insert(MIN_INSYNC_REPLICAS.to_owned(), min_isr.to_string());
    }
    broker
        .log_defaults_in(&image)
        .with_overrides(&topic.configs)
        .map_err(|e| ApiError::new(errors::config_error(&e), e.to_string()))?;
    if image.topics.contains_key(&topic.name) {
        return Err(ApiError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic '{}' already exists", topic.name),
        ));
    }
    if validate_only {
        return Ok(CreatedTopic {
            topic_id: Uuid::nil(),
            partitions,
            replication_factor,
        });
    }
    let outcome = broker
        .controller
        .propose(MetadataCommand::CreateTopic {
            name: topic.name.clone(),
            topic_id: broker.seams().ids.uuid(),
            partitions,
            replication_factor,
            configs: topic.configs,
            assignments: topic.assignments,
        })
        .await
        .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
    match outcome {
        MetadataOutcome::TopicCreated { topic_id } => {
            broker.wait_reconciled().await;
            tracing::info!(topic = %topic.name, partitions, %topic_id, "created topic");
            Ok(CreatedTopic {
                topic_id,
                partitions,
                replication_factor,
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_insync: Option<i32>) -> crate::BrokerConfig {
        crate::BrokerConfig {
            min_insync_replicas: min_insync,
            ..crate::configs::tests::broker_config()
        }
    }

    #[test]
    fn min_insync_defaults_to_a_majority_of_three() {
        let none = BTreeMap::new();
        assert_eq!(default_min_insync(&config(None), 3, &none), Some(2));
        assert_eq!(default_min_insync(&config(None), 5, &none), Some(2));
        // Below three replicas Kafka's default 1 stays: a second replica is not a majority.
        assert_eq!(default_min_insync(&config(None), 2, &none), None);
        assert_eq!(default_min_insync(&config(None), 1, &none), None);
    }

    #[test]
    fn min_insync_chosen_by_the_topic_or_the_operator_is_kept() {
        let chosen = BTreeMap::from([(MIN_INSYNC_REPLICAS.to_owned(), "3".to_owned())]);
        assert_eq!(default_min_insync(&config(None), 3, &chosen), None);
        assert_eq!(
            default_min_insync(&config(Some(1)), 3, &BTreeMap::new()),
            None
        );
    }
}
