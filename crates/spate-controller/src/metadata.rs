//! The replicated metadata model: commands proposed to the controller, their outcomes, and the
//! image they build.
//!
//! Everything here is plain data. Maps are `BTreeMap` so that iteration order, serialization and
//! therefore snapshots are identical on every replica. Commands carry every nondeterministic
//! choice (topic ids, node ids) made by the proposer, so applying a command is a pure function of
//! the image and the command (see `state.rs`).

use serde::{Deserialize, Serialize};
use spate_types::{LeaderEpoch, NodeId, ProducerId};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// Where clients reach a broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
}

/// A change to cluster metadata. Only ever applied through the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Adds a broker, or replaces the endpoint of a registered one.
    RegisterBroker {
        node: NodeId,
        endpoint: BrokerEndpoint,
    },
    /// Creates a topic. `topic_id` is chosen (randomly) by the proposer; `replication_factor`
    /// must already be resolved (Kafka's `-1`, "broker default", is rejected here).
    CreateTopic {
        name: String,
        topic_id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
    },
    /// Deletes a topic; with `topic_id`, only that incarnation of the name (a request resolved
    /// by id must not delete a topic re-created under the same name meanwhile).
    DeleteTopic {
        name: String,
        #[serde(default)]
        topic_id: Option<Uuid>,
    },
    /// Grows a topic to `new_total` partitions.
    CreatePartitions { name: String, new_total: i32 },
    /// Full replacement of a topic's config overrides (the front end computes the new map for both
    /// AlterConfigs (replace) and IncrementalAlterConfigs (set/delete/append/subtract)).
    ///
    /// With `expected`, applied only if the topic's overrides still equal it (compare-and-set),
    /// so two concurrent read-modify-write alterations cannot silently undo each other.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
        #[serde(default)]
        expected: Option<BTreeMap<String, String>>,
    },
    /// Hands `node` the next `count` producer ids.
    AllocateProducerIds { node: NodeId, count: i64 },
}

impl fmt::Display for MetadataCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RegisterBroker { node, endpoint } => {
                write!(f, "RegisterBroker(node={node}, {}:{})", endpoint.host, endpoint.port)
            }
            Self::CreateTopic { name, topic_id, partitions, replication_factor, configs } => write!(
                f,
                "CreateTopic({name}, id={topic_id}, partitions={partitions}, rf={replication_factor}, configs={})",
                configs.len()
            ),
            Self::DeleteTopic { name, .. } => write!(f, "DeleteTopic({name})"),
            Self::CreatePartitions { name, new_total } => {
                write!(f, "CreatePartitions({name}, new_total={new_total})")
            }
            Self::SetTopicConfigs { name, configs, .. } => {
                write!(f, "SetTopicConfigs({name}, configs={})", configs.len())
            }
            Self::AllocateProducerIds { node, count } => {
                write!(f, "AllocateProducerIds(node={node}, count={count})")
            }
        }
    }
}

/// What applying a command did. A rejected command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataOutcome {
    BrokerRegistered,
    TopicCreated { topic_id: Uuid },
    TopicDeleted { topic_id: Uuid },
    PartitionsCreated,
    TopicConfigsSet,
    ProducerIds { first: ProducerId, count: i64 },
    Rejected(MetadataError),
}

/// Why a command was rejected. The front end maps each variant to a Kafka error code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    /// Kafka: TOPIC_ALREADY_EXISTS. Also returned when the proposed topic id is already taken
    /// (the proposer should retry with a fresh id).
    #[error("topic '{0}' already exists")]
    TopicAlreadyExists(String),
    /// Kafka: UNKNOWN_TOPIC_OR_PARTITION.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// A compare-and-set command found the state changed since the proposer read it; the
    /// proposer re-reads and retries.
    #[error("topic '{0}' was changed concurrently")]
    ConcurrentModification(String),
    /// Kafka: INVALID_TOPIC_EXCEPTION. Carries the reason.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    /// Kafka: INVALID_PARTITIONS. Carries the reason.
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    /// Kafka: INVALID_REPLICATION_FACTOR. Carries the reason.
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    /// Kafka: INVALID_REQUEST. A command the proposer should never have built (non-positive
    /// producer id count, nil topic id, negative node id, exhausted producer id space). It is
    /// rejected rather than asserted because a panic while applying a committed entry would
    /// crash every replica, forever.
    #[error("invalid metadata request: {0}")]
    InvalidRequest(String),
}

/// The full cluster metadata as of `last_applied_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<NodeId, BrokerEndpoint>,
    pub topics: BTreeMap<String, TopicImage>,
    /// The first producer id the next `AllocateProducerIds` hands out.
    pub next_producer_id: i64,
    /// The Raft leader that wrote the last applied entry: the active controller.
    pub controller_id: Option<NodeId>,
    /// Raft log index of the last applied entry (0 before anything is applied).
    pub last_applied_index: u64,
}

impl MetadataImage {
    /// Finds a topic by its id. Linear in the number of topics.
    pub fn topic_by_id(&self, id: Uuid) -> Option<(&str, &TopicImage)> {
        self.topics
            .iter()
            .find(|(_, t)| t.topic_id == id)
            .map(|(name, t)| (name.as_str(), t))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub topic_id: Uuid,
    /// Indexed by partition number.
    pub partitions: Vec<PartitionImage>,
    /// Config overrides only; defaults are not stored.
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionImage {
    pub leader: NodeId,
    pub leader_epoch: LeaderEpoch,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}
