//! The replicated metadata model: commands proposed to the controller, their outcomes, and the
//! image they build.
//!
//! Everything here is plain data. Maps are `BTreeMap` so that iteration order, serialization and
//! therefore snapshots are identical on every replica. Commands carry every nondeterministic
//! choice (topic ids, node ids) made by the proposer, so applying a command is a pure function of
//! the image and the command (see `state.rs`).

use crate::resource_configs::ResourceConfigs;
use serde::{Deserialize, Serialize};
use spate_types::{LeaderEpoch, NodeId, ProducerId};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Names the cluster, once: later proposals leave the first id in place (every node of a
    /// fresh cluster may propose its own candidate; the first committed wins).
    InitCluster { cluster_id: String },
    /// Adds a broker, or replaces the endpoint of a registered one (a restart). The broker
    /// starts fenced; its broker epoch becomes this entry's log index, so heartbeats of an
    /// earlier incarnation are told apart.
    ///
    /// `directory_id` names the broker's data directory (`directory.id` in meta.properties,
    /// Kafka's KIP-858). A broker that comes back with the directory it registered with before
    /// still holds every record it fsynced, which is all the ISR ever counted for it (a
    /// follower fetches again only after fsyncing), so it keeps its ISR places. A new directory
    /// (a wiped or replaced disk, or nil: unknown) leaves every ISR where another member is
    /// alive, as a fenced broker does.
    RegisterBroker {
        node: NodeId,
        endpoint: BrokerEndpoint,
        #[serde(default)]
        directory_id: Uuid,
    },
    /// The broker missed its session (or asked to leave, with `shutdown`): it leaves the ISR
    /// of every partition where another member remains, and its leaderships move to another
    /// live ISR member, or to none (leader -1) when it was the last one.
    FenceBroker {
        node: NodeId,
        #[serde(default)]
        shutdown: bool,
    },
    /// The broker caught up with the metadata log after registering: it may lead again. Every
    /// leaderless partition whose ISR holds it gets it as leader.
    UnfenceBroker { node: NodeId, broker_epoch: u64 },
    /// A partition leader changes the ISR (Kafka's AlterPartition). Applied only if `leader`,
    /// `leader_epoch` and `partition_epoch` are still current, so a stale leader's request is
    /// refused.
    AlterPartition {
        topic: String,
        partition: i32,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
    /// A replica found a batch of `topic_id`'s partition on its disk damaged (its CRC fails):
    /// `node` leaves the ISR, and its leadership moves to the next live ISR member in replica
    /// order, so that it can truncate below the damage and fetch the batch again from a healthy
    /// copy (Kafka takes the whole log directory offline instead). Refused while `node` is the
    /// last live ISR member: every other copy may miss committed records, so it stays, refusing
    /// the damaged batch, and asks again later. A node already out of the ISR is a no-op.
    LeaveIsr {
        topic: String,
        topic_id: Uuid,
        partition: i32,
        node: NodeId,
    },
    /// Moves leadership of each listed partition to its preferred replica (the first of its
    /// replicas) where that replica is in the ISR, unfenced, and not already leader.
    ElectPreferredLeaders { partitions: Vec<(String, i32)> },
    /// Creates a topic. `topic_id` is chosen (randomly) by the proposer; `replication_factor`
    /// must already be resolved (Kafka's `-1`, "broker default", is rejected here).
    CreateTopic {
        name: String,
        topic_id: Uuid,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        /// The replica list of each partition, chosen by the client (CreateTopics' manual
        /// assignment); the first replica in the ISR leads. Without, the controller places
        /// replicas itself.
        #[serde(default)]
        assignments: Option<Vec<Vec<NodeId>>>,
    },
    /// Deletes a topic; with `topic_id`, only that incarnation of the name (a request resolved
    /// by id must not delete a topic re-created under the same name meanwhile).
    DeleteTopic {
        name: String,
        #[serde(default)]
        topic_id: Option<Uuid>,
    },
    /// Grows a topic to `new_total` partitions; `assignments`, when given, holds the replica
    /// list of each new partition (CreatePartitions' manual assignment).
    CreatePartitions {
        name: String,
        new_total: i32,
        #[serde(default)]
        assignments: Option<Vec<Vec<NodeId>>>,
    },
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
    /// Full replacement of a group's config overrides (Kafka's dynamic group configs, KIP-848);
    /// an empty map removes the group's entry. The group need not exist: Kafka keeps configs of
    /// groups that have no members yet. With `expected`, compare-and-set as `SetTopicConfigs`
    /// (`None` there means "no overrides").
    SetGroupConfigs {
        group: String,
        configs: BTreeMap<String, String>,
        #[serde(default)]
        expected: Option<BTreeMap<String, String>>,
    },
    /// Full replacement of dynamic broker config overrides: of one registered broker (`node`),
    /// or the cluster-wide defaults (`node: None`, Kafka's resource name ""). An empty map
    /// removes the entry. With `expected`, compare-and-set as `SetTopicConfigs`.
    SetBrokerConfigs {
        node: Option<NodeId>,
        configs: BTreeMap<String, String>,
        #[serde(default)]
        expected: Option<BTreeMap<String, String>>,
    },
}

impl fmt::Display for MetadataCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InitCluster { cluster_id } => write!(f, "InitCluster({cluster_id})"),
            Self::FenceBroker { node, shutdown } => {
                write!(f, "FenceBroker(node={node}, shutdown={shutdown})")
            }
            Self::UnfenceBroker { node, broker_epoch } => {
                write!(f, "UnfenceBroker(node={node}, epoch={broker_epoch})")
            }
            Self::AlterPartition { topic, partition, leader_epoch, partition_epoch, isr, .. } => write!(
                f,
                "AlterPartition({topic}-{partition}, leader_epoch={leader_epoch}, partition_epoch={partition_epoch}, isr={isr:?})"
            ),
            Self::ElectPreferredLeaders { partitions } => {
                write!(f, "ElectPreferredLeaders({} partitions)", partitions.len())
            }
            Self::LeaveIsr { topic, partition, node, .. } => {
                write!(f, "LeaveIsr({topic}-{partition}, node={node})")
            }
            Self::RegisterBroker { node, endpoint, directory_id } => write!(
                f,
                "RegisterBroker(node={node}, {}:{}, directory={directory_id})",
                endpoint.host, endpoint.port
            ),
            Self::CreateTopic { name, topic_id, partitions, replication_factor, configs, assignments } => write!(
                f,
                "CreateTopic({name}, id={topic_id}, partitions={partitions}, rf={replication_factor}, configs={}{})",
                configs.len(),
                if assignments.is_some() { ", manual assignment" } else { "" }
            ),
            Self::DeleteTopic { name, .. } => write!(f, "DeleteTopic({name})"),
            Self::CreatePartitions { name, new_total, assignments } => write!(
                f,
                "CreatePartitions({name}, new_total={new_total}{})",
                if assignments.is_some() { ", manual assignment" } else { "" }
            ),
            Self::SetTopicConfigs { name, configs, .. } => {
                write!(f, "SetTopicConfigs({name}, configs={})", configs.len())
            }
            Self::AllocateProducerIds { node, count } => {
                write!(f, "AllocateProducerIds(node={node}, count={count})")
            }
            Self::SetGroupConfigs { group, configs, .. } => {
                write!(f, "SetGroupConfigs({group}, configs={})", configs.len())
            }
            Self::SetBrokerConfigs { node, configs, .. } => match node {
                Some(node) => write!(f, "SetBrokerConfigs(node={node}, configs={})", configs.len()),
                None => write!(f, "SetBrokerConfigs(cluster default, configs={})", configs.len()),
            },
        }
    }
}

/// What applying a command did. A rejected command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataOutcome {
    ClusterInitialized { cluster_id: String },
    BrokerRegistered { broker_epoch: u64 },
    BrokerFenced,
    BrokerUnfenced,
    PartitionAltered { partition_epoch: i32 },
    LeadersElected { moved: usize },
    TopicCreated { topic_id: Uuid },
    TopicDeleted { topic_id: Uuid },
    PartitionsCreated,
    TopicConfigsSet,
    GroupConfigsSet,
    BrokerConfigsSet,
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
    /// proposer re-reads and retries. Carries the resource: `topic 't'`, `group 'g'`,
    /// `broker 1` or `the cluster-wide broker defaults`.
    #[error("{0} was changed concurrently")]
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
    /// Kafka: INVALID_REPLICA_ASSIGNMENT. A manual assignment naming unknown brokers, a broker
    /// twice, replica lists of different lengths, or only fenced brokers for a partition.
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// Kafka: BROKER_ID_NOT_REGISTERED (or STALE_BROKER_EPOCH when the epoch is old).
    #[error("broker {node} is not registered with epoch {broker_epoch}")]
    UnknownBroker { node: NodeId, broker_epoch: u64 },
    /// AlterPartition from a leader whose view is out of date. Kafka: FENCED_LEADER_EPOCH,
    /// INVALID_UPDATE_VERSION or NOT_LEADER_OR_FOLLOWER.
    #[error("stale partition state: {0}")]
    StalePartitionState(String),
    /// AlterPartition with an ISR that is not a non-empty subset of the replicas, holds a
    /// fenced broker being added, or leaves out the leader. Kafka: INVALID_REQUEST /
    /// INELIGIBLE_REPLICA.
    #[error("invalid ISR: {0}")]
    InvalidIsr(String),
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
    /// Set once, by the first committed `InitCluster`.
    #[serde(default)]
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<NodeId, BrokerEndpoint>,
    /// Each registered broker's epoch: the log index of its latest `RegisterBroker`.
    #[serde(default)]
    pub broker_epochs: BTreeMap<NodeId, u64>,
    /// Each registered broker's data directory id, as of its latest `RegisterBroker`.
    #[serde(default)]
    pub broker_directories: BTreeMap<NodeId, Uuid>,
    /// Registered brokers that may not lead (not yet caught up, session expired, or shut down).
    #[serde(default)]
    pub fenced: BTreeSet<NodeId>,
    /// Fenced brokers that left by controlled shutdown (a subset of `fenced`).
    #[serde(default)]
    pub shutting_down: BTreeSet<NodeId>,
    pub topics: BTreeMap<String, TopicImage>,
    /// The first producer id the next `AllocateProducerIds` hands out.
    pub next_producer_id: i64,
    /// The Raft leader that wrote the last applied entry: the active controller.
    pub controller_id: Option<NodeId>,
    /// Raft log index of the last applied entry (0 before anything is applied).
    pub last_applied_index: u64,
    /// Config overrides of groups and dynamic broker configs (`resource_configs.rs`). Left out
    /// of the serialized image while empty, and absent from images written before it existed:
    /// both read back as empty.
    #[serde(default, skip_serializing_if = "ResourceConfigs::is_empty")]
    pub resource_configs: ResourceConfigs,
}

impl MetadataImage {
    /// Finds a topic by its id. Linear in the number of topics.
    pub fn topic_by_id(&self, id: Uuid) -> Option<(&str, &TopicImage)> {
        self.topics
            .iter()
            .find(|(_, t)| t.topic_id == id)
            .map(|(name, t)| (name.as_str(), t))
    }

    /// Registered brokers that are not fenced, in node id order.
    pub fn alive_brokers(&self) -> impl Iterator<Item = (&NodeId, &BrokerEndpoint)> {
        self.brokers
            .iter()
            .filter(|(id, _)| !self.fenced.contains(id))
    }

    pub fn is_alive(&self, node: NodeId) -> bool {
        self.brokers.contains_key(&node) && !self.fenced.contains(&node)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionImage> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
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
    /// [`NO_LEADER`] while no ISR member is alive.
    pub leader: NodeId,
    /// Bumped on every leader change.
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change of leader or ISR (Kafka's partition epoch), so AlterPartition
    /// requests built on an older state are refused.
    #[serde(default)]
    pub partition_epoch: i32,
    /// The assigned replicas; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// Never empty: the last member stays even when fenced, so that only a replica known to
    /// hold every committed record can lead again (Kafka without unclean election).
    pub isr: Vec<NodeId>,
}

/// Kafka's leader id for "no leader".
pub const NO_LEADER: NodeId = NodeId(-1);

impl PartitionImage {
    pub fn has_leader(&self) -> bool {
        self.leader != NO_LEADER
    }

    /// Replicas not alive in `image` (Kafka's offline replicas).
    pub fn offline_replicas(&self, image: &MetadataImage) -> Vec<NodeId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !image.is_alive(*r))
            .collect()
    }
}
