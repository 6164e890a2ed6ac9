//! `spate topic list`: every topic from Metadata, as rows.

use super::{topic_id, INTERNAL_PREFIX};
use crate::cli::{self, render_table};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use serde::Serialize;
use spate_client::{self as client, Cluster};

/// One row of `spate topic list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListedTopic {
    pub topic: String,
    pub topic_id: Option<String>,
    pub partitions: usize,
    pub replication_factor: usize,
    pub internal: bool,
}

pub(super) async fn list_topics(
    cluster: &mut Cluster,
    internal: bool,
) -> anyhow::Result<Vec<ListedTopic>> {
    let bootstrap = cluster.bootstrap().await?;
    let (_, metadata) = cluster
        .send(&bootstrap, |version| cli::metadata_request(version, None))
        .await?;
    for t in &metadata.topics {
        let name = t.name.as_ref().map_or("?", |n| n.0.as_str());
        if let Err(e) = client::check(t.error_code, || format!("Metadata for {name}")) {
            eprintln!("warning: {e}");
        }
    }
    Ok(listed_topics(&metadata.topics, internal))
}

/// Sorted by name; internal topics (flagged so, or named `__...`) only when asked for.
pub(super) fn listed_topics(topics: &[MetadataResponseTopic], internal: bool) -> Vec<ListedTopic> {
    let mut listed: Vec<ListedTopic> = topics
        .iter()
        .filter_map(|t| {
            let name = t.name.as_ref()?.0.to_string();
            let is_internal = t.is_internal || name.starts_with(INTERNAL_PREFIX);
            (internal || !is_internal).then(|| ListedTopic {
                topic_id: topic_id(t.topic_id),
                partitions: t.partitions.len(),
                replication_factor: replication_factor(t),
                internal: is_internal,
                topic: name,
            })
        })
        .collect();
    listed.sort_by(|a, b| a.topic.cmp(&b.topic));
    listed
}

/// As Kafka's tools count it: the replicas of the lowest-numbered partition.
pub(super) fn replication_factor(topic: &MetadataResponseTopic) -> usize {
    topic
        .partitions
        .iter()
        .min_by_key(|p| p.partition_index)
        .map_or(0, |p| p.replica_nodes.len())
}

pub(super) fn render_list(topics: &[ListedTopic]) -> String {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.topic.clone(),
                t.partitions.to_string(),
                t.replication_factor.to_string(),
            ]
        })
        .collect();
    render_table(&["NAME", "PARTITIONS", "REPLICATION FACTOR"], &rows)
}
