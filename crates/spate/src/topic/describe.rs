//! `spate topic describe`: Metadata and DescribeConfigs turned into a description per topic.

use super::list::replication_factor;
use super::{
    not_found, topic_id, CONFIG_SOURCE_DEFAULT, METADATA_LEADER_EPOCH_VERSION,
    METADATA_OFFLINE_VERSION, RESOURCE_TOPIC,
};
use crate::cli::{self, render_table, Retry};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::DescribeConfigsRequest;
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use spate_client::{self as client, Cluster};
use std::collections::BTreeMap;

/// One partition row of `spate topic describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    pub partition: i32,
    /// None when the partition has no leader.
    pub leader: Option<i32>,
    /// None when unknown (Metadata before v7).
    pub leader_epoch: Option<i32>,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Empty also where unknown (Metadata before v5).
    pub offline_replicas: Vec<i32>,
    /// The partition's error in Metadata, e.g. LEADER_NOT_AVAILABLE.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicDescription {
    pub topic: String,
    pub topic_id: Option<String>,
    pub partition_count: usize,
    pub replication_factor: usize,
    /// Configs not at their default; a value the broker hides (sensitive) is null.
    pub configs: BTreeMap<String, Option<String>>,
    pub partitions: Vec<PartitionRow>,
}

pub(super) async fn describe_with_retries(
    cluster: &mut Cluster,
    names: &[String],
) -> anyhow::Result<Vec<TopicDescription>> {
    let mut retry = Retry::default();
    loop {
        match describe_topics(cluster, names).await {
            Ok(topics) => return Ok(topics),
            // A topic created a moment ago may not have its leaders yet.
            Err(error) => {
                retry
                    .wait(cluster, error, |e| {
                        e.kafka_error() == Some(ResponseError::LeaderNotAvailable)
                    })
                    .await?
            }
        }
    }
}

async fn describe_topics(
    cluster: &mut Cluster,
    names: &[String],
) -> anyhow::Result<Vec<TopicDescription>> {
    let bootstrap = cluster.bootstrap().await?;
    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    let (version, metadata) = cluster
        .send(&bootstrap, |version| {
            cli::metadata_request(version, Some(&wanted))
        })
        .await?;
    let (_, configs) = cluster
        .send(&bootstrap, |_| {
            DescribeConfigsRequest::default().with_resources(
                names
                    .iter()
                    .map(|name| {
                        DescribeConfigsResource::default()
                            .with_resource_type(RESOURCE_TOPIC)
                            .with_resource_name(StrBytes::from_string(name.clone()))
                            .with_configuration_keys(None)
                    })
                    .collect(),
            )
        })
        .await?;
    let mut non_default = BTreeMap::new();
    for result in &configs.results {
        let name = result.resource_name.to_string();
        if !names.contains(&name) {
            continue;
        }
        match ResponseError::try_from_code(result.error_code) {
            // Metadata says which topics do not exist.
            Some(ResponseError::UnknownTopicOrPartition) => continue,
            _ => client::check_message(result.error_code, result.error_message.as_deref(), || {
                format!("DescribeConfigs for topic {name}")
            })?,
        }
        non_default.insert(name, non_default_configs(result));
    }
    descriptions(names, &metadata.topics, version, non_default)
}

/// Configs not at their default, as `kafka-topics.sh --describe` lists them.
pub(super) fn non_default_configs(
    result: &DescribeConfigsResult,
) -> BTreeMap<String, Option<String>> {
    result
        .configs
        .iter()
        .filter(|c| c.config_source != CONFIG_SOURCE_DEFAULT)
        .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
        .collect()
}

/// One description per name, in the order given; an error naming every topic that does not
/// exist, or the first other topic error.
pub(super) fn descriptions(
    names: &[String],
    topics: &[MetadataResponseTopic],
    version: i16,
    mut configs: BTreeMap<String, BTreeMap<String, Option<String>>>,
) -> anyhow::Result<Vec<TopicDescription>> {
    let by_name: BTreeMap<&str, &MetadataResponseTopic> = topics
        .iter()
        .filter_map(|t| Some((t.name.as_ref()?.0.as_str(), t)))
        .collect();
    let mut missing = Vec::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(topic) = by_name.get(name.as_str()) else {
            missing.push(name.as_str());
            continue;
        };
        match ResponseError::try_from_code(topic.error_code) {
            Some(ResponseError::UnknownTopicOrPartition) => {
                missing.push(name.as_str());
                continue;
            }
            _ => client::check(topic.error_code, || format!("Metadata for topic {name}"))?,
        }
        let mut partitions: Vec<PartitionRow> = topic
            .partitions
            .iter()
            .map(|p| PartitionRow {
                partition: p.partition_index,
                leader: Some(p.leader_id.0).filter(|&id| id >= 0),
                leader_epoch: Some(p.leader_epoch)
                    .filter(|&e| version >= METADATA_LEADER_EPOCH_VERSION && e >= 0),
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                offline_replicas: if version >= METADATA_OFFLINE_VERSION {
                    p.offline_replicas.iter().map(|b| b.0).collect()
                } else {
                    Vec::new()
                },
                error: ResponseError::try_from_code(p.error_code).map(client::error_name),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        out.push(TopicDescription {
            topic: name.clone(),
            topic_id: topic_id(topic.topic_id),
            partition_count: partitions.len(),
            replication_factor: replication_factor(topic),
            configs: configs.remove(name.as_str()).unwrap_or_default(),
            partitions,
        });
    }
    if !missing.is_empty() {
        return Err(not_found(&missing));
    }
    Ok(out)
}

/// Comma-separated ids, `-` for none.
fn id_list(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_owned();
    }
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

pub(super) fn render_descriptions(topics: &[TopicDescription]) -> String {
    let opt = |v: Option<i32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = String::new();
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let configs: Vec<String> = t
            .configs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("null")))
            .collect();
        out.push_str(&format!(
            "Topic: {}\tTopicId: {}\tPartitionCount: {}\tReplicationFactor: {}\tConfigs: {}\n",
            t.topic,
            t.topic_id.as_deref().unwrap_or("-"),
            t.partition_count,
            t.replication_factor,
            configs.join(",")
        ));
        let rows: Vec<Vec<String>> = t
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    opt(p.leader),
                    opt(p.leader_epoch),
                    id_list(&p.replicas),
                    id_list(&p.isr),
                    id_list(&p.offline_replicas),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &[
                "PARTITION",
                "LEADER",
                "LEADER EPOCH",
                "REPLICAS",
                "ISR",
                "OFFLINE",
            ],
            &rows,
        ));
        for p in &t.partitions {
            if let Some(error) = &p.error {
                out.push_str(&format!("Partition {} reports {error}.\n", p.partition));
            }
        }
    }
    out
}
