//! FindCoordinator: a group's coordinator is the leader of its `__consumer_offsets` partition,
//! a transactional id's the leader of its `__transaction_state` partition (Kafka's hash of the
//! key), whichever node is asked. A key starts its coordinator (creating the internal topic
//! on first use).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::groups::{coordinator, coordinator_node, str_bytes};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

/// v4 (KIP-699) looks up several keys at once.
const BATCHED_VERSION: i16 = 4;
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: FindCoordinatorRequest,
) -> Reply<FindCoordinatorResponse> {
    let keys: Vec<StrBytes> = if ctx.version() >= BATCHED_VERSION {
        request.coordinator_keys.clone()
    } else {
        vec![request.key.clone()]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        let error = match request.key_type {
            KEY_TYPE_GROUP if key.is_empty() => Some((
                ResponseError::InvalidGroupId,
                "the group id is empty".to_owned(),
            )),
            KEY_TYPE_GROUP => match coordinator(broker).await {
                Err(e) => {
                    tracing::warn!(error = %e.message, "group coordinator unavailable");
                    Some((ResponseError::CoordinatorNotAvailable, e.message))
                }
                Ok(_) => None,
            },
            KEY_TYPE_TRANSACTION if key.is_empty() => Some((
                ResponseError::InvalidRequest,
                "the transactional id is empty".to_owned(),
            )),
            KEY_TYPE_TRANSACTION => match crate::txns::coordinator(broker).await {
                Err(e) => {
                    tracing::warn!(error = %e.message, "transaction coordinator unavailable");
                    Some((ResponseError::CoordinatorNotAvailable, e.message))
                }
                Ok(_) => None,
            },
            other => Some((
                ResponseError::InvalidRequest,
                format!("unknown coordinator key type {other}"),
            )),
        };
        // The node: the leader of the key's partition of the internal topic.
        let found = match error {
            Some(e) => Err(e),
            None => {
                let node = if request.key_type == KEY_TYPE_GROUP {
                    coordinator_node(broker, key.as_str())
                } else {
                    crate::txns::coordinator_node(broker, key.as_str())
                };
                node.and_then(|node| broker.image().brokers.get(&node).map(|e| (node, e.clone())))
                    .ok_or_else(|| {
                        (
                            ResponseError::CoordinatorNotAvailable,
                            "the key's coordinator partition has no leader right now".to_owned(),
                        )
                    })
            }
        };
        tracing::debug!(key = %key, key_type = request.key_type, found = ?found.as_ref().map(|(n, _)| *n), "FindCoordinator");
        let c = Coordinator::default().with_key(key);
        coordinators.push(match found {
            Ok((node, endpoint)) => c
                .with_node_id(BrokerId(node.0))
                .with_host(str_bytes(endpoint.host))
                .with_port(i32::from(endpoint.port)),
            Err((code, message)) => c
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(message))),
        });
    }
    if ctx.version() >= BATCHED_VERSION {
        return Reply::Now(FindCoordinatorResponse::default().with_coordinators(coordinators));
    }
    let c = coordinators.pop().unwrap_or_default();
    Reply::Now(
        FindCoordinatorResponse::default()
            .with_error_code(c.error_code)
            .with_error_message(c.error_message)
            .with_node_id(c.node_id)
            .with_host(c.host)
            .with_port(c.port),
    )
}
