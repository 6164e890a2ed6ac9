//! FindCoordinator: this node coordinates every group and transactional id (single node).
//! A group key starts the group coordinator (creating `__consumer_offsets` on first use).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::groups::{coordinator, str_bytes};
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
            KEY_TYPE_GROUP => coordinator(broker).await.err().map(|e| {
                tracing::warn!(error = %e.message, "group coordinator unavailable");
                (ResponseError::CoordinatorNotAvailable, e.message)
            }),
            KEY_TYPE_TRANSACTION => None,
            other => Some((
                ResponseError::InvalidRequest,
                format!("unknown coordinator key type {other}"),
            )),
        };
        let c = Coordinator::default().with_key(key);
        coordinators.push(match error {
            None => c
                .with_node_id(BrokerId(broker.config.node_id.0))
                .with_host(str_bytes(broker.config.advertised_host.clone()))
                .with_port(i32::from(broker.config.advertised_port)),
            Some((code, message)) => c
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
