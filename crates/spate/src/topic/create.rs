//! `spate topic create`: CreateTopics on the controller, and what it reports.

use super::{
    controller, controller_moved, topic_id, topic_name, CREATE_TOPICS_DEFAULTS_VERSION,
    CREATE_TOPICS_ECHO_VERSION, CREATE_TOPICS_TOPIC_ID_VERSION,
};
use crate::cli::Retry;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::CreateTopicsRequest;
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use spate_client::{self as client, ClientError, Cluster};

/// What `spate topic create` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreatedTopic {
    pub topic: String,
    pub topic_id: Option<String>,
    pub partitions: Option<i32>,
    pub replication_factor: Option<i16>,
}

pub(super) async fn create_with_retries(
    cluster: &mut Cluster,
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> anyhow::Result<CreatedTopic> {
    let mut retry = Retry::default();
    loop {
        let controller = controller(cluster).await?;
        let attempt = create_topic(
            cluster,
            &controller,
            name,
            partitions,
            replication_factor,
            configs,
        );
        match attempt.await {
            Ok(created) => return Ok(created),
            Err(error) => retry.wait(cluster, error, controller_moved).await?,
        }
    }
}

async fn create_topic(
    cluster: &mut Cluster,
    controller: &str,
    name: &str,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> anyhow::Result<CreatedTopic> {
    let version = cluster.version::<CreateTopicsRequest>(controller).await?;
    anyhow::ensure!(
        version >= CREATE_TOPICS_DEFAULTS_VERSION
            || (partitions.is_some() && replication_factor.is_some()),
        "broker {controller} speaks CreateTopics up to v{version}, which has no broker defaults: \
         give --partitions and --replication-factor"
    );
    let timeout_ms = cluster.deadline().remaining_ms_i32();
    let (version, response) = cluster
        .send(controller, |_| {
            CreateTopicsRequest::default()
                .with_timeout_ms(timeout_ms)
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(name))
                    .with_num_partitions(partitions.unwrap_or(-1))
                    .with_replication_factor(replication_factor.unwrap_or(-1))
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    )])
        })
        .await?;
    let result = response
        .topics
        .iter()
        .find(|t| t.name.0.as_str() == name)
        .ok_or_else(|| anyhow::anyhow!("CreateTopics response does not mention {name}"))?;
    let created = created(result, version, partitions, replication_factor)?;
    tracing::debug!(topic = name, version, "created topic");
    Ok(created)
}

/// The created topic, or the broker's error for it. Where the response does not say (older
/// versions), the partition count and replication factor are the ones asked for.
pub(super) fn created(
    result: &CreatableTopicResult,
    version: i16,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
) -> Result<CreatedTopic, ClientError> {
    let name = result.name.0.as_str();
    client::check_message(result.error_code, result.error_message.as_deref(), || {
        format!("cannot create topic {name}")
    })?;
    let echoed = version >= CREATE_TOPICS_ECHO_VERSION;
    Ok(CreatedTopic {
        topic: name.to_owned(),
        topic_id: if version >= CREATE_TOPICS_TOPIC_ID_VERSION {
            topic_id(result.topic_id)
        } else {
            None
        },
        partitions: if echoed {
            Some(result.num_partitions).filter(|&n| n > 0)
        } else {
            partitions
        },
        replication_factor: if echoed {
            Some(result.replication_factor).filter(|&n| n > 0)
        } else {
            replication_factor
        },
    })
}

pub(super) fn render_created(c: &CreatedTopic) -> String {
    let mut details = Vec::new();
    if let Some(id) = &c.topic_id {
        details.push(format!("topic id {id}"));
    }
    if let Some(n) = c.partitions {
        details.push(format!("{n} partition{}", if n == 1 { "" } else { "s" }));
    }
    if let Some(r) = c.replication_factor {
        details.push(format!("replication factor {r}"));
    }
    if details.is_empty() {
        format!("Created topic {}.\n", c.topic)
    } else {
        format!("Created topic {} ({}).\n", c.topic, details.join(", "))
    }
}
