//! Topic creation shared by CreateTopics and Metadata's auto-create.

use crate::broker::Broker;
use crate::errors;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_controller::{MetadataCommand, MetadataOutcome};
use spate_types::{limits, validate_topic_name};
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
}

pub(crate) struct CreatedTopic {
    pub topic_id: Uuid,
    pub partitions: i32,
    pub replication_factor: i16,
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
    let image = broker.image();
    let alive = image.alive_brokers().count();
    if replication_factor < 1 || replication_factor as usize > alive {
        return Err(ApiError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor must be between 1 and the number of available brokers ({alive}), was {replication_factor}",
            ),
        ));
    }
    broker
        .config
        .log_defaults
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
            topic_id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs: topic.configs,
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
