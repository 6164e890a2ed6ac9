//! Metadata: the live brokers (unfenced, with their racks; a fenced one stays listed for
//! `metadata.fenced.broker.retention.ms`, see [`crate::listed_brokers`]), topics and each partition's
//! leader, leader epoch, replicas, ISR and offline replicas, with auto-creation of topics. A
//! partition with no live in-sync replica answers LEADER_NOT_AVAILABLE with leader -1.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::topics::{create_topic, topic_name, NewTopic};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::{MetadataImage, TopicImage};
use std::sync::Arc;
use uuid::Uuid;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 13 };

/// Kafka's value for "authorized operations not requested".
pub(crate) const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// KIP-430 authorized operations, answered when a request asks for them. Spate has no
/// authorizer, so every operation Kafka defines on a resource type is allowed: a bit field
/// indexed by Kafka's `AclOperation` codes, with the operations of Kafka's
/// `AclEntry.supportedOperations` for each type.
pub(crate) mod authorized {
    const READ: u32 = 3;
    const WRITE: u32 = 4;
    const CREATE: u32 = 5;
    const DELETE: u32 = 6;
    const ALTER: u32 = 7;
    const DESCRIBE: u32 = 8;
    const CLUSTER_ACTION: u32 = 9;
    const DESCRIBE_CONFIGS: u32 = 10;
    const ALTER_CONFIGS: u32 = 11;
    const IDEMPOTENT_WRITE: u32 = 12;

    const fn bits(ops: &[u32]) -> i32 {
        let mut field = 0i32;
        let mut i = 0;
        while i < ops.len() {
            field |= 1 << ops[i];
            i += 1;
        }
        field
    }

    pub(crate) const TOPIC: i32 = bits(&[
        READ,
        WRITE,
        CREATE,
        DELETE,
        ALTER,
        DESCRIBE,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
    ]);
    pub(crate) const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);
    pub(crate) const CLUSTER: i32 = bits(&[
        CREATE,
        CLUSTER_ACTION,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
        IDEMPOTENT_WRITE,
        ALTER,
        DESCRIBE,
    ]);

    /// `ops` when the request asked for them, else Kafka's "not requested".
    pub(crate) fn if_requested(requested: bool, ops: i32) -> i32 {
        if requested {
            ops
        } else {
            super::AUTHORIZED_OPERATIONS_OMITTED
        }
    }
}

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: MetadataRequest,
) -> Reply<MetadataResponse> {
    // Before v4 the field did not exist and Kafka always allowed auto-creation.
    let allow_auto_create = ctx.version() < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match request.topics {
        // v0 used an empty list to mean "all topics"; later versions use null.
        None => topics.extend(all_topics(&broker.image())),
        Some(list) if list.is_empty() && ctx.version() == 0 => {
            topics.extend(all_topics(&broker.image()))
        }
        Some(list) => {
            for requested in list {
                topics.push(match requested.name {
                    Some(name) => by_name(broker, name.0.as_str(), allow_auto_create).await,
                    None => by_id(&broker.image(), requested.topic_id),
                });
            }
        }
    }
    if request.include_topic_authorized_operations {
        for topic in topics.iter_mut().filter(|t| t.error_code == 0) {
            topic.topic_authorized_operations = authorized::TOPIC;
        }
    }
    let image = broker.image();
    let listed = broker
        .fenced_since
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .listed(
            &image,
            broker.now_ms(),
            broker.config.fenced_broker_retention_ms,
        );
    let brokers = listed
        .into_iter()
        .map(|(id, endpoint)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id.0))
                .with_host(StrBytes::from_string(endpoint.host.clone()))
                .with_port(i32::from(endpoint.port))
                .with_rack(endpoint.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    let controller = broker
        .controller
        .leader()
        .or(image.controller_id)
        .map_or(-1, |id| id.0);
    Reply::Now(
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(StrBytes::from_string(
                broker.config.cluster_id.clone(),
            )))
            .with_controller_id(BrokerId(controller))
            .with_topics(topics)
            .with_cluster_authorized_operations(authorized::if_requested(
                request.include_cluster_authorized_operations,
                authorized::CLUSTER,
            )),
    )
}

fn all_topics(image: &MetadataImage) -> Vec<MetadataResponseTopic> {
    image
        .topics
        .iter()
        .map(|(name, topic)| describe(image, name, topic))
        .collect()
}

async fn by_name(broker: &Broker, name: &str, allow_auto_create: bool) -> MetadataResponseTopic {
    let image = broker.image();
    if let Some(topic) = image.topics.get(name) {
        return describe(&image, name, topic);
    }
    let error = if let Err(reason) = spate_types::validate_topic_name(name) {
        tracing::debug!(topic = name, %reason, "metadata for invalid topic name");
        ResponseError::InvalidTopicException
    } else if allow_auto_create && broker.config.auto_create_topics {
        let new_topic = NewTopic {
            name: name.to_owned(),
            partitions: -1,
            replication_factor: -1,
            configs: Default::default(),
            assignments: None,
        };
        match create_topic(broker, new_topic, false).await {
            Ok(_) => {
                let image = broker.image();
                match image.topics.get(name) {
                    Some(topic) => return describe(&image, name, topic),
                    None => ResponseError::LeaderNotAvailable,
                }
            }
            // Created concurrently by another request.
            Err(e) if e.code == ResponseError::TopicAlreadyExists => {
                let image = broker.image();
                match image.topics.get(name) {
                    Some(topic) => return describe(&image, name, topic),
                    None => ResponseError::LeaderNotAvailable,
                }
            }
            Err(e) => {
                tracing::warn!(topic = name, error = %e.message, "auto-creation failed");
                e.code
            }
        }
    } else {
        ResponseError::UnknownTopicOrPartition
    };
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(Some(topic_name(name)))
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn by_id(image: &MetadataImage, id: Uuid) -> MetadataResponseTopic {
    match image.topic_by_id(id) {
        Some((name, topic)) => describe(image, name, topic),
        None => MetadataResponseTopic::default()
            .with_error_code(ResponseError::UnknownTopicId.code())
            .with_topic_id(id)
            .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
    }
}

fn describe(image: &MetadataImage, name: &str, topic: &TopicImage) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let error = if p.has_leader() {
                0
            } else {
                ResponseError::LeaderNotAvailable.code()
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(p.leader.0))
                .with_leader_epoch(p.leader_epoch.0)
                .with_replica_nodes(p.replicas.iter().map(|r| BrokerId(r.0)).collect())
                .with_isr_nodes(p.isr.iter().map(|r| BrokerId(r.0)).collect())
                .with_offline_replicas(
                    p.offline_replicas(image)
                        .iter()
                        .map(|r| BrokerId(r.0))
                        .collect(),
                )
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(name)))
        .with_topic_id(topic.topic_id)
        .with_is_internal(name.starts_with("__"))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}
