//! InitProducerId: hands idempotent producers a fresh producer id (epoch 0).
//!
//! Transactional ids need the transaction coordinator, which does not exist yet; such
//! requests are refused with a non-retriable error instead of hanging the client.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: InitProducerIdRequest,
) -> Reply<InitProducerIdResponse> {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
        .with_ongoing_txn_producer_id(ProducerId(-1))
        .with_ongoing_txn_producer_epoch(-1);
    if request.transactional_id.is_some() {
        return Reply::Now(
            response.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code()),
        );
    }
    // Like Kafka, an idempotent producer always gets a new id, even when it names its old one
    // (KIP-360 epoch bumps apply to transactional producers).
    match broker.next_producer_id().await {
        Ok(id) => Reply::Now(
            response
                .with_producer_id(ProducerId(id.0))
                .with_producer_epoch(0),
        ),
        Err(reason) => {
            tracing::warn!(%reason, "producer id allocation failed");
            Reply::Now(response.with_error_code(ResponseError::CoordinatorNotAvailable.code()))
        }
    }
}
