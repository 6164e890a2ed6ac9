//! DeleteTopics: deletes topics by name (v1-v6) or by topic id (v6) through the controller,
//! then applies the new metadata image so this node's partitions and their data go at once.
//!
//! With `delete.topic.enable=false` nothing is deleted: every topic gets TOPIC_DELETION_DISABLED
//! (INVALID_REQUEST before v3, whose clients do not know that code), as in Kafka.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::configs;
use crate::errors;
use crate::topics::{topic_name, ApiError};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::{MetadataCommand, MetadataImage, MetadataOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uuid::Uuid;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 1, max: 6 };

/// DeleteTopics v6 (KIP-516) names topics in `topics`, by name or by id.
const TOPIC_ID_VERSION: i16 = 6;
/// The first version whose clients know TOPIC_DELETION_DISABLED.
const DELETION_DISABLED_CODE_VERSION: i16 = 3;

/// One entry of the request, after Kafka's checks of how it names its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Name(String),
    Id(Uuid),
    /// Refused before any lookup; echoes what the client sent.
    Invalid {
        name: Option<String>,
        id: Uuid,
        error: (ResponseError, &'static str),
    },
}

/// How long a DeleteTopics request without a timeout may wait for up-to-date metadata before
/// it resolves its names.
const RESOLVE_WITHIN_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: DeleteTopicsRequest,
) -> Reply<DeleteTopicsResponse> {
    // The names are resolved only within the request's timeout: a request that waited out a
    // partition past it (its client gone, or retrying) must not resolve a name later, when it
    // may name a topic created again meanwhile (simulator seed 6100 deleted the re-created
    // topic that way).
    // librdkafka sends 0 ("do not wait for the deletion"): that gets a short default instead.
    let timeout = match u64::try_from(request.timeout_ms) {
        Ok(ms) if ms > 0 => std::time::Duration::from_millis(ms),
        _ => RESOLVE_WITHIN_DEFAULT,
    };
    let requested: Vec<(Option<String>, Uuid)> = if ctx.version() >= TOPIC_ID_VERSION {
        request
            .topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    if !broker.config.delete_topic_enable {
        let error = if ctx.version() < DELETION_DISABLED_CODE_VERSION {
            ApiError::new(ResponseError::InvalidRequest, "Topic deletion is disabled.")
        } else {
            ApiError::new(
                ResponseError::TopicDeletionDisabled,
                "Topic deletion is disabled.",
            )
        };
        let responses = requested
            .into_iter()
            .map(|(name, id)| result(name.as_deref(), id, Err(&error)))
            .collect();
        return Reply::Now(DeleteTopicsResponse::default().with_responses(responses));
    }

    // Names resolve on a view that holds every change committed before this request (a node
    // cut off from the controller must not answer from an older one).
    let caught_up = match tokio::time::timeout(timeout, broker.controller.catch_up()).await {
        Ok(caught_up) => {
            caught_up.map_err(|e| ApiError::new(crate::errors::controller_error(&e), e.to_string()))
        }
        Err(_) => Err(ApiError::new(
            ResponseError::RequestTimedOut,
            format!(
                "the metadata could not be brought up to date within the request's timeout ({} ms)",
                timeout.as_millis()
            ),
        )),
    };
    if let Err(error) = caught_up {
        let responses = requested
            .into_iter()
            .map(|(name, id)| result(name.as_deref(), id, Err(&error)))
            .collect();
        return Reply::Now(DeleteTopicsResponse::default().with_responses(responses));
    }
    let image = broker.image();
    let mut responses = Vec::with_capacity(requested.len());
    // Topics this request deleted, so that a topic named twice (once by name, once by id)
    // reports success twice instead of "unknown" the second time.
    let mut deleted: BTreeMap<String, Uuid> = BTreeMap::new();
    for target in classify(requested) {
        let (name, id) = match target {
            Target::Invalid {
                name,
                id,
                error: (code, message),
            } => {
                responses.push(result(
                    name.as_deref(),
                    id,
                    Err(&ApiError::new(code, message)),
                ));
                continue;
            }
            Target::Name(name) => match resolve_name(&image, &name) {
                Ok(id) => (name, id),
                Err(e) => {
                    responses.push(result(Some(&name), Uuid::nil(), Err(&e)));
                    continue;
                }
            },
            Target::Id(id) => match image.topic_by_id(id) {
                Some((name, _)) => (name.to_owned(), id),
                None => {
                    let e = ApiError::new(
                        ResponseError::UnknownTopicId,
                        format!("topic id {id} does not exist"),
                    );
                    responses.push(result(None, id, Err(&e)));
                    continue;
                }
            },
        };
        let outcome = match deleted.get(&name) {
            Some(done) => Ok(*done),
            // The group coordinator's state lives there.
            None if name == spate_coordinator::OFFSETS_TOPIC => Err(ApiError::new(
                ResponseError::InvalidTopicException,
                format!("the internal topic {name} cannot be deleted"),
            )),
            None => delete(broker, &name, id).await,
        };
        match outcome {
            Ok(topic_id) => {
                responses.push(result(Some(&name), topic_id, Ok(())));
                deleted.insert(name, topic_id);
            }
            Err(e) => responses.push(result(Some(&name), id, Err(&e))),
        }
    }
    if !deleted.is_empty() {
        broker.wait_reconciled().await;
        crate::groups::forget_deleted_topics(broker).await;
    }
    Reply::Now(DeleteTopicsResponse::default().with_responses(responses))
}

/// Applies Kafka's checks on how each entry names its topic: neither or both of name and id,
/// and names or ids given more than once (answered once each, and not deleted).
fn classify(requested: Vec<(Option<String>, Uuid)>) -> Vec<Target> {
    let names = configs::duplicates(
        requested
            .iter()
            .filter(|(_, id)| id.is_nil())
            .filter_map(|(n, _)| n.clone()),
    );
    let ids = configs::duplicates(
        requested
            .iter()
            .filter(|(n, _)| n.is_none())
            .map(|(_, id)| *id)
            .filter(|id| !id.is_nil()),
    );
    let mut reported_names = BTreeSet::new();
    let mut reported_ids = BTreeSet::new();
    let mut targets = Vec::with_capacity(requested.len());
    for (name, id) in requested {
        let target = match (name, id.is_nil()) {
            (None, true) => Target::Invalid {
                name: None,
                id,
                error: (
                    ResponseError::InvalidRequest,
                    "Neither topic name nor id were specified.",
                ),
            },
            (Some(name), false) => Target::Invalid {
                name: Some(name),
                id,
                error: (
                    ResponseError::InvalidRequest,
                    "You may not specify both topic name and topic id.",
                ),
            },
            (Some(name), true) if names.contains(&name) => {
                if !reported_names.insert(name.clone()) {
                    continue;
                }
                Target::Invalid {
                    name: Some(name),
                    id,
                    error: (ResponseError::InvalidRequest, "Duplicate topic name."),
                }
            }
            (None, false) if ids.contains(&id) => {
                if !reported_ids.insert(id) {
                    continue;
                }
                Target::Invalid {
                    name: None,
                    id,
                    error: (ResponseError::InvalidRequest, "Duplicate topic id."),
                }
            }
            (Some(name), true) => Target::Name(name),
            (None, false) => Target::Id(id),
        };
        targets.push(target);
    }
    targets
}

fn resolve_name(image: &MetadataImage, name: &str) -> Result<Uuid, ApiError> {
    image.topics.get(name).map(|t| t.topic_id).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("The topic '{name}' does not exist."),
        )
    })
}

/// Deletes exactly the topic resolved earlier in this request (`id`), never a topic
/// re-created under the same name in the meantime.
async fn delete(broker: &Broker, name: &str, id: Uuid) -> Result<Uuid, ApiError> {
    let outcome = broker
        .controller
        .propose(MetadataCommand::DeleteTopic {
            name: name.to_owned(),
            topic_id: Some(id),
        })
        .await
        .map_err(|e| ApiError::new(errors::controller_error(&e), e.to_string()))?;
    match outcome {
        MetadataOutcome::TopicDeleted { topic_id } => {
            tracing::info!(topic = name, %topic_id, "deleted topic");
            Ok(topic_id)
        }
        MetadataOutcome::Rejected(e) => {
            Err(ApiError::new(errors::metadata_error(&e), e.to_string()))
        }
        other => Err(ApiError::new(
            ResponseError::UnknownServerError,
            format!("unexpected controller outcome {other:?}"),
        )),
    }
}

fn result(name: Option<&str>, id: Uuid, outcome: Result<(), &ApiError>) -> DeletableTopicResult {
    let response = DeletableTopicResult::default()
        .with_name(name.map(topic_name))
        .with_topic_id(id);
    match outcome {
        Ok(()) => response.with_error_message(None),
        Err(e) => response
            .with_error_code(e.code.code())
            .with_error_message(Some(StrBytes::from_string(e.message.clone()))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(n: &str) -> (Option<String>, Uuid) {
        (Some(n.to_owned()), Uuid::nil())
    }

    #[test]
    fn entries_naming_neither_or_both_are_invalid() {
        let id = Uuid::from_u128(7);
        let targets = classify(vec![(None, Uuid::nil()), (Some("a".into()), id)]);
        assert!(matches!(
            &targets[0],
            Target::Invalid { error: (ResponseError::InvalidRequest, m), .. }
                if m.starts_with("Neither")
        ));
        assert!(matches!(
            &targets[1],
            Target::Invalid { name: Some(n), error: (ResponseError::InvalidRequest, m), .. }
                if n == "a" && m.contains("both")
        ));
    }

    #[test]
    fn duplicate_names_and_ids_are_answered_once_and_not_deleted() {
        let id = Uuid::from_u128(9);
        let targets = classify(vec![
            name("a"),
            name("b"),
            name("a"),
            (None, id),
            (None, id),
            name("a"),
        ]);
        assert_eq!(
            targets,
            vec![
                Target::Invalid {
                    name: Some("a".into()),
                    id: Uuid::nil(),
                    error: (ResponseError::InvalidRequest, "Duplicate topic name.")
                },
                Target::Name("b".into()),
                Target::Invalid {
                    name: None,
                    id,
                    error: (ResponseError::InvalidRequest, "Duplicate topic id.")
                },
            ]
        );
    }

    #[test]
    fn a_name_and_an_id_are_not_duplicates_of_each_other() {
        let id = Uuid::from_u128(3);
        assert_eq!(
            classify(vec![name("a"), (None, id)]),
            vec![Target::Name("a".into()), Target::Id(id)]
        );
    }

    #[test]
    fn unknown_name_is_unknown_topic_or_partition() {
        let e = resolve_name(&MetadataImage::default(), "nope").unwrap_err();
        assert_eq!(e.code, ResponseError::UnknownTopicOrPartition);
    }

    #[test]
    fn results_for_v1_to_v5_always_carry_a_name() {
        let ok = result(Some("t"), Uuid::nil(), Ok(()));
        assert_eq!((ok.error_code, ok.error_message), (0, None));
        assert_eq!(ok.name.map(|n| n.0.to_string()), Some("t".into()));
        let e = ApiError::new(
            ResponseError::TopicDeletionDisabled,
            "Topic deletion is disabled.",
        );
        let err = result(None, Uuid::from_u128(1), Err(&e));
        assert_eq!(err.error_code, ResponseError::TopicDeletionDisabled.code());
        assert!(err.name.is_none(), "v6 unknown ids answer with a null name");
    }
}
