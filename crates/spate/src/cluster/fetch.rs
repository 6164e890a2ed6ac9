//! The I/O: DescribeCluster, Metadata, DescribeConfigs and DescribeQuorum.

use super::assess::{
    assemble, min_isr_by_topic, nodes_from_describe_cluster, nodes_from_metadata, partition_health,
    quorum_reply, QuorumReply,
};
use super::render::counted;
use super::{
    ClusterStatus, Quorum, QuorumUnknown, DESCRIBE_CLUSTER_FENCED_VERSION, METADATA_PARTITION,
    METADATA_TOPIC, MIN_ISR_CONFIG, QUORUM_HOPS_MAX, RESOURCE_TOPIC,
};
use crate::cli::{self, Retry};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    DescribeClusterRequest, DescribeConfigsRequest, DescribeQuorumRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spate_client::{self as client, ClientError, Cluster};
use std::collections::BTreeMap;

pub(super) async fn fetch_status(cluster: &mut Cluster) -> anyhow::Result<ClusterStatus> {
    let bootstrap = cluster.bootstrap().await?;
    let mut notes = Vec::new();
    let described = match cluster
        .send(&bootstrap, |version| {
            let request = DescribeClusterRequest::default();
            if version >= DESCRIBE_CLUSTER_FENCED_VERSION {
                request.with_include_fenced_brokers(true)
            } else {
                request
            }
        })
        .await
    {
        Ok((version, response)) => {
            client::check_message(
                response.error_code,
                response.error_message.as_deref(),
                || "DescribeCluster".to_owned(),
            )?;
            Some(nodes_from_describe_cluster(&response, version))
        }
        // Before Kafka 2.8: Metadata's brokers below.
        Err(ClientError::Unsupported { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let (version, metadata) = cluster
        .send(&bootstrap, |version| cli::metadata_request(version, None))
        .await?;
    client::check(metadata.error_code, || "Metadata".to_owned())?;
    let nodes = described.unwrap_or_else(|| nodes_from_metadata(&metadata, version));

    let names: Vec<String> = metadata
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .filter_map(|t| Some(t.name.as_ref()?.0.to_string()))
        .collect();
    let min_isr = if names.is_empty() {
        BTreeMap::new()
    } else {
        match describe_min_isr(cluster, &bootstrap, &names).await {
            Ok((min_isr, unknown)) => {
                if !unknown.is_empty() {
                    notes.push(format!(
                        "{MIN_ISR_CONFIG} is unknown for {}: {}",
                        counted(unknown.len(), "topic", "topics"),
                        unknown.join(", ")
                    ));
                }
                min_isr
            }
            Err(e) => {
                notes.push(format!(
                    "{MIN_ISR_CONFIG} is unknown, under min ISR not checked: {e:#}"
                ));
                BTreeMap::new()
            }
        }
    };
    let partitions = partition_health(&metadata.topics, version, &min_isr);

    let addresses = nodes.addresses();
    let first = nodes
        .controller_id
        .and_then(|c| addresses.get(&c).cloned())
        .unwrap_or_else(|| bootstrap.clone());
    let quorum = quorum_with_retries(cluster, &first, &addresses)
        .await
        .map_err(|e| match e.downcast_ref::<ClientError>() {
            Some(ClientError::Unsupported { .. }) => QuorumUnknown::Unsupported(
                "the broker does not offer DescribeQuorum (not a KRaft cluster?)".to_owned(),
            ),
            _ => QuorumUnknown::Failed(format!("{e:#}")),
        });
    Ok(assemble(nodes, partitions, quorum, notes))
}

/// One DescribeConfigs for every topic, asking only for `min.insync.replicas`.
async fn describe_min_isr(
    cluster: &mut Cluster,
    addr: &str,
    names: &[String],
) -> anyhow::Result<(BTreeMap<String, i32>, Vec<String>)> {
    let (_, response) = cluster
        .send(addr, |_| {
            DescribeConfigsRequest::default().with_resources(
                names
                    .iter()
                    .map(|name| {
                        DescribeConfigsResource::default()
                            .with_resource_type(RESOURCE_TOPIC)
                            .with_resource_name(StrBytes::from_string(name.clone()))
                            .with_configuration_keys(Some(vec![StrBytes::from_static_str(
                                MIN_ISR_CONFIG,
                            )]))
                    })
                    .collect(),
            )
        })
        .await?;
    Ok(min_isr_by_topic(names, &response))
}

fn quorum_request() -> DescribeQuorumRequest {
    DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![
            PartitionData::default().with_partition_index(METADATA_PARTITION)
        ])])
}

pub(super) fn not_leader(error: &ClientError) -> bool {
    error.kafka_error() == Some(ResponseError::NotLeaderOrFollower)
}

/// DescribeQuorum from `first`, following the leader a NOT_LEADER_OR_FOLLOWER answer names
/// (its broker address from `addresses`, else from the answer's own `nodes`); waiting and
/// asking again while no leader is known, until the deadline. A node other than the bootstrap
/// broker that cannot be reached is given up for the bootstrap broker.
async fn quorum_with_retries(
    cluster: &mut Cluster,
    first: &str,
    addresses: &BTreeMap<i32, String>,
) -> anyhow::Result<Quorum> {
    let bootstrap = cluster.bootstrap().await?;
    let mut retry = Retry::default();
    let mut target = first.to_owned();
    let mut hops = 0;
    loop {
        let response = match cluster.send(&target, |_| quorum_request()).await {
            Ok((_, response)) => response,
            Err(error) if target != bootstrap => {
                retry
                    .wait(cluster, error.into(), |e| {
                        !matches!(e, ClientError::Unsupported { .. })
                    })
                    .await?;
                target = bootstrap.clone();
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        match quorum_reply(&response, &target)? {
            QuorumReply::Described(quorum) => return Ok(quorum),
            QuorumReply::NotLeader {
                leader,
                addresses: listed,
                error,
            } => {
                let next = leader.and_then(|l| addresses.get(&l).or(listed.get(&l)).cloned());
                tracing::debug!(%target, ?leader, ?next, "DescribeQuorum: not the leader");
                match next {
                    Some(next) if next != target && hops < QUORUM_HOPS_MAX => {
                        hops += 1;
                        target = next;
                    }
                    _ => {
                        retry.wait(cluster, error.into(), not_leader).await?;
                        hops = 0;
                        target = next.unwrap_or_else(|| first.to_owned());
                    }
                }
            }
        }
    }
}
