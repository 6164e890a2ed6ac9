//! `spate topic add-partitions`: CreatePartitions on the controller.

use super::{controller, controller_moved, not_found, topic_name};
use crate::cli::Retry;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use spate_client::{self as client, Cluster};

pub(super) async fn add_partitions_with_retries(
    cluster: &mut Cluster,
    name: &str,
    total: i32,
) -> anyhow::Result<()> {
    let mut retry = Retry::default();
    loop {
        let controller = controller(cluster).await?;
        match add_partitions(cluster, &controller, name, total).await {
            Ok(()) => return Ok(()),
            Err(error) => retry.wait(cluster, error, controller_moved).await?,
        }
    }
}

/// One CreatePartitions request growing `name` to `total` partitions, the broker assigning
/// the new partitions' replicas.
async fn add_partitions(
    cluster: &mut Cluster,
    controller: &str,
    name: &str,
    total: i32,
) -> anyhow::Result<()> {
    let timeout_ms = cluster.deadline().remaining_ms_i32();
    let (_, response) = cluster
        .send(controller, |_| {
            CreatePartitionsRequest::default()
                .with_timeout_ms(timeout_ms)
                .with_validate_only(false)
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic_name(name))
                    .with_count(total)
                    .with_assignments(None)])
        })
        .await?;
    partitions_added(name, &response)?;
    tracing::debug!(topic = name, partitions = total, "added partitions");
    Ok(())
}

/// `Ok` if the response grew `name`; "does not exist" for an unknown topic; else the broker's
/// error with its message (INVALID_PARTITIONS: "Topic already has 3 partition(s).") and
/// NOT_CONTROLLER as the [`ClientError`](spate_client::ClientError) it is, so it is retried.
pub(super) fn partitions_added(
    name: &str,
    response: &CreatePartitionsResponse,
) -> anyhow::Result<()> {
    let result = response
        .results
        .iter()
        .find(|r| r.name.0.as_str() == name)
        .ok_or_else(|| anyhow::anyhow!("the CreatePartitions response does not mention {name}"))?;
    if ResponseError::try_from_code(result.error_code)
        == Some(ResponseError::UnknownTopicOrPartition)
    {
        return Err(not_found(&[name]));
    }
    client::check_message(result.error_code, result.error_message.as_deref(), || {
        format!("cannot add partitions to topic {name}")
    })?;
    Ok(())
}

/// A topic only grows, from at least one partition: the new count is always plural.
pub(super) fn render_partitions_added(name: &str, total: i32) -> String {
    format!("Topic {name} now has {total} partitions.\n")
}
