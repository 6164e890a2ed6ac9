//! `spate topic delete`: DeleteTopics on the controller.

use super::{controller, controller_moved, not_found, topic_name, DELETE_TOPICS_STATES_VERSION};
use crate::cli::Retry;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use spate_client::{self as client, Cluster};
use std::collections::BTreeMap;

pub(super) async fn delete_with_retries(
    cluster: &mut Cluster,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut retry = Retry::default();
    loop {
        let controller = controller(cluster).await?;
        match delete_topics(cluster, &controller, names).await {
            Ok(deleted) => return Ok(deleted),
            Err(error) => retry.wait(cluster, error, controller_moved).await?,
        }
    }
}

async fn delete_topics(
    cluster: &mut Cluster,
    controller: &str,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let timeout_ms = cluster.deadline().remaining_ms_i32();
    let (_, response) = cluster
        .send(controller, |version| {
            let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
            if version >= DELETE_TOPICS_STATES_VERSION {
                request.with_topics(
                    names
                        .iter()
                        .map(|n| DeleteTopicState::default().with_name(Some(topic_name(n))))
                        .collect(),
                )
            } else {
                request.with_topic_names(names.iter().map(|n| topic_name(n)).collect())
            }
        })
        .await?;
    deleted(names, &response)
}

/// The deleted topics in the order given, or an error naming each topic that was not deleted
/// (and those that were); NOT_CONTROLLER (nothing was deleted) as the [`ClientError`](spate_client::ClientError) it is.
pub(super) fn deleted(
    names: &[String],
    response: &DeleteTopicsResponse,
) -> anyhow::Result<Vec<String>> {
    let results: BTreeMap<&str, _> = response
        .responses
        .iter()
        .filter_map(|r| Some((r.name.as_ref()?.0.as_str(), r)))
        .collect();
    if let Some(moved) = results
        .values()
        .find(|r| ResponseError::try_from_code(r.error_code) == Some(ResponseError::NotController))
    {
        client::check(moved.error_code, || "DeleteTopics".to_owned())?;
    }
    let mut deleted = Vec::new();
    let mut missing = Vec::new();
    let mut failures = Vec::new();
    for name in names {
        let Some(result) = results.get(name.as_str()) else {
            failures.push(format!("the DeleteTopics response does not mention {name}"));
            continue;
        };
        match ResponseError::try_from_code(result.error_code) {
            None => deleted.push(name.clone()),
            Some(ResponseError::UnknownTopicOrPartition) => missing.push(name.as_str()),
            Some(_) => {
                let error = client::check_message(
                    result.error_code,
                    result.error_message.as_deref(),
                    || format!("cannot delete topic {name}"),
                )
                .expect_err("the code is an error");
                failures.push(error.to_string());
            }
        }
    }
    if !missing.is_empty() {
        failures.insert(0, not_found(&missing).to_string());
    }
    if failures.is_empty() {
        return Ok(deleted);
    }
    let mut message = failures.join("; ");
    if !deleted.is_empty() {
        message.push_str(&format!(" (deleted: {})", deleted.join(", ")));
    }
    Err(anyhow::anyhow!(message))
}
