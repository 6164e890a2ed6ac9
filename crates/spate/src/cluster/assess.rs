//! The responses read into nodes, partition health and the quorum, and all of it judged into a
//! [`ClusterStatus`]: pure.

use super::render::{counted, named};
use super::{
    id, known, ClusterStatus, NodeRow, NodeState, Nodes, PartitionHealth, PartitionRow, Quorum,
    QuorumReplica, QuorumUnknown, Role, TopicError, DESCRIBE_CLUSTER_FENCED_VERSION,
    METADATA_CLUSTER_ID_VERSION, METADATA_CONTROLLER_VERSION, METADATA_OFFLINE_VERSION,
    METADATA_PARTITION, METADATA_TOPIC, MIN_ISR_CONFIG, RESOURCE_TOPIC,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_quorum_response::ReplicaState;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    DescribeClusterResponse, DescribeConfigsResponse, DescribeQuorumResponse, MetadataResponse,
};
use spate_client::{self as client, ClientError};
use std::collections::BTreeMap;

pub(super) fn nodes_from_describe_cluster(
    response: &DescribeClusterResponse,
    version: i16,
) -> Nodes {
    let controller_id = id(response.controller_id.0);
    let mut rows: Vec<NodeRow> = response
        .brokers
        .iter()
        .map(|b| NodeRow {
            id: b.broker_id.0,
            host: b.host.to_string(),
            port: b.port,
            rack: b.rack.as_ref().map(|r| r.to_string()),
            state: if b.is_fenced {
                NodeState::Fenced
            } else {
                NodeState::Alive
            },
            active_controller: controller_id == Some(b.broker_id.0),
        })
        .collect();
    rows.sort_by_key(|n| n.id);
    Nodes {
        cluster_id: Some(response.cluster_id.to_string()).filter(|c| !c.is_empty()),
        controller_id,
        rows,
        fenced_listed: version >= DESCRIBE_CLUSTER_FENCED_VERSION,
    }
}

/// Kafka's Metadata lists live brokers only (Spate's also a recently fenced one, but Spate answers
/// DescribeCluster, so this is for other servers).
pub(super) fn nodes_from_metadata(response: &MetadataResponse, version: i16) -> Nodes {
    let controller_id = if version >= METADATA_CONTROLLER_VERSION {
        id(response.controller_id.0)
    } else {
        None
    };
    let mut rows: Vec<NodeRow> = response
        .brokers
        .iter()
        .map(|b| NodeRow {
            id: b.node_id.0,
            host: b.host.to_string(),
            port: b.port,
            rack: b.rack.as_ref().map(|r| r.to_string()),
            state: NodeState::Alive,
            active_controller: controller_id == Some(b.node_id.0),
        })
        .collect();
    rows.sort_by_key(|n| n.id);
    let cluster_id = if version >= METADATA_CLUSTER_ID_VERSION {
        response.cluster_id.as_ref().map(|c| c.to_string())
    } else {
        None
    };
    Nodes {
        cluster_id,
        controller_id,
        rows,
        fenced_listed: false,
    }
}

/// Each topic's `min.insync.replicas`; the topics it is unknown for.
pub(super) fn min_isr_by_topic(
    names: &[String],
    response: &DescribeConfigsResponse,
) -> (BTreeMap<String, i32>, Vec<String>) {
    let mut min_isr = BTreeMap::new();
    for result in &response.results {
        if result.resource_type != RESOURCE_TOPIC || result.error_code != 0 {
            continue;
        }
        let value = result
            .configs
            .iter()
            .find(|c| c.name.as_str() == MIN_ISR_CONFIG)
            .and_then(|c| c.value.as_ref())
            .and_then(|v| v.trim().parse::<i32>().ok());
        if let Some(value) = value {
            min_isr.insert(result.resource_name.to_string(), value);
        }
    }
    let unknown = names
        .iter()
        .filter(|n| !min_isr.contains_key(n.as_str()))
        .cloned()
        .collect();
    (min_isr, unknown)
}

pub(super) fn partition_health(
    topics: &[MetadataResponseTopic],
    version: i16,
    min_isr: &BTreeMap<String, i32>,
) -> PartitionHealth {
    let mut health = PartitionHealth::default();
    let mut rows = Vec::new();
    for topic in topics {
        let name = topic
            .name
            .as_ref()
            .map_or_else(|| topic.topic_id.to_string(), |n| n.0.to_string());
        if let Some(error) = ResponseError::try_from_code(topic.error_code) {
            health.topic_errors.push(TopicError {
                topic: name,
                error: client::error_name(error),
            });
            continue;
        }
        health.topics += 1;
        for p in &topic.partitions {
            rows.push(PartitionRow {
                topic: name.clone(),
                partition: p.partition_index,
                leader: id(p.leader_id.0),
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                offline_replicas: if version >= METADATA_OFFLINE_VERSION {
                    p.offline_replicas.iter().map(|b| b.0).collect()
                } else {
                    Vec::new()
                },
                min_isr: min_isr.get(&name).copied(),
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    health.topic_errors.sort_by(|a, b| a.topic.cmp(&b.topic));
    health.partitions = rows.len();
    for row in &rows {
        if row.is_offline() {
            health.offline.push(row);
        }
        if row.is_under_min_isr() {
            health.under_min_isr.push(row);
        }
        if row.is_under_replicated() {
            health.under_replicated.push(row);
        }
        if row.has_offline_replicas() {
            health.with_offline_replicas.push(row);
        }
    }
    health
}

/// A DescribeQuorum answer: the quorum, or the leader to ask instead.
#[derive(Debug)]
pub(super) enum QuorumReply {
    Described(Quorum),
    NotLeader {
        leader: Option<i32>,
        /// The listeners the answer lists (v2), by node id.
        addresses: BTreeMap<i32, String>,
        /// NOT_LEADER_OR_FOLLOWER as a [`ClientError`], for [`Retry`](crate::cli::Retry).
        error: ClientError,
    },
}

pub(super) fn quorum_reply(
    response: &DescribeQuorumResponse,
    addr: &str,
) -> anyhow::Result<QuorumReply> {
    client::check_message(
        response.error_code,
        response.error_message.as_deref(),
        || format!("DescribeQuorum on {addr}"),
    )?;
    let partition = response
        .topics
        .iter()
        .filter(|t| t.topic_name.0.as_str() == METADATA_TOPIC)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == METADATA_PARTITION)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the DescribeQuorum response of {addr} does not mention \
                 {METADATA_TOPIC}-{METADATA_PARTITION}"
            )
        })?;
    let leader = id(partition.leader_id.0);
    if ResponseError::try_from_code(partition.error_code)
        == Some(ResponseError::NotLeaderOrFollower)
    {
        let error = client::check_message(
            partition.error_code,
            partition.error_message.as_deref(),
            || format!("DescribeQuorum on {addr}"),
        )
        .expect_err("the code is an error");
        let addresses = response
            .nodes
            .iter()
            .filter_map(|n| {
                let listener = n.listeners.first()?;
                Some((
                    n.node_id.0,
                    client::address(&listener.host, i32::from(listener.port)),
                ))
            })
            .collect();
        return Ok(QuorumReply::NotLeader {
            leader,
            addresses,
            error,
        });
    }
    client::check_message(
        partition.error_code,
        partition.error_message.as_deref(),
        || format!("DescribeQuorum on {addr}"),
    )?;
    let high_watermark = known(partition.high_watermark);
    let replica = |r: &ReplicaState, role: Role| {
        let log_end_offset = known(r.log_end_offset);
        QuorumReplica {
            id: r.replica_id.0,
            role,
            log_end_offset,
            lag: high_watermark
                .zip(log_end_offset)
                .map(|(hw, leo)| hw.saturating_sub(leo).max(0)),
            last_fetch_timestamp_ms: known(r.last_fetch_timestamp),
            last_caught_up_timestamp_ms: known(r.last_caught_up_timestamp),
        }
    };
    let mut voters: Vec<QuorumReplica> = partition
        .current_voters
        .iter()
        .map(|r| {
            let role = if Some(r.replica_id.0) == leader {
                Role::Leader
            } else {
                Role::Follower
            };
            replica(r, role)
        })
        .collect();
    voters.sort_by_key(|r| r.id);
    let mut observers: Vec<QuorumReplica> = partition
        .observers
        .iter()
        .map(|r| replica(r, Role::Observer))
        .collect();
    observers.sort_by_key(|r| r.id);
    Ok(QuorumReply::Described(Quorum {
        leader_id: leader,
        leader_epoch: partition.leader_epoch,
        high_watermark,
        voters,
        observers,
    }))
}

/// Everything read, judged.
pub(super) fn assemble(
    nodes: Nodes,
    partitions: PartitionHealth,
    quorum: Result<Quorum, QuorumUnknown>,
    mut notes: Vec<String>,
) -> ClusterStatus {
    let mut problems = Vec::new();
    if nodes.controller_id.is_none() {
        problems.push("no active controller".to_owned());
    }
    let fenced: Vec<i32> = nodes
        .rows
        .iter()
        .filter(|n| n.state == NodeState::Fenced)
        .map(|n| n.id)
        .collect();
    if !fenced.is_empty() {
        let verb = if fenced.len() == 1 { "is" } else { "are" };
        problems.push(format!("{} {verb} fenced", named("node", &fenced)));
    }
    if !nodes.fenced_listed {
        notes.push("fenced brokers are not listed (DescribeCluster before v2)".to_owned());
    }
    let quorum = match quorum {
        Ok(quorum) => {
            if quorum.leader_id.is_none() {
                problems.push("the controller quorum has no leader".to_owned());
            }
            let unknown: Vec<i32> = quorum
                .voters
                .iter()
                .filter(|v| v.log_end_offset.is_none())
                .map(|v| v.id)
                .collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "the quorum leader does not know the log end offset of {}",
                    named("voter", &unknown)
                ));
            }
            Some(quorum)
        }
        Err(QuorumUnknown::Unsupported(why)) => {
            notes.push(format!("no quorum status: {why}"));
            None
        }
        Err(QuorumUnknown::Failed(why)) => {
            problems.push(format!("quorum status unavailable: {why}"));
            None
        }
    };
    for (list, singular, plural) in [
        (
            &partitions.offline,
            "offline partition",
            "offline partitions",
        ),
        (
            &partitions.under_min_isr,
            "partition under min ISR",
            "partitions under min ISR",
        ),
        (
            &partitions.under_replicated,
            "under-replicated partition",
            "under-replicated partitions",
        ),
        (
            &partitions.with_offline_replicas,
            "partition with offline replicas",
            "partitions with offline replicas",
        ),
    ] {
        if list.count > 0 {
            problems.push(counted(list.count, singular, plural));
        }
    }
    for e in &partitions.topic_errors {
        problems.push(format!("topic {}: {}", e.topic, e.error));
    }
    let healthy = problems.is_empty();
    ClusterStatus {
        healthy,
        verdict: if healthy {
            "healthy".to_owned()
        } else {
            format!("unhealthy: {}", problems.join("; "))
        },
        problems,
        notes,
        cluster_id: nodes.cluster_id,
        controller_id: nodes.controller_id,
        nodes: nodes.rows,
        quorum,
        partitions,
    }
}
