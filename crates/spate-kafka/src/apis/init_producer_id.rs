//! InitProducerId: an idempotent producer gets a fresh producer id (epoch 0); a transactional
//! one goes to the coordinator of its transactional id, which fences older producers of the
//! same id by bumping the epoch (and aborts a transaction they left open: the client gets
//! CONCURRENT_TRANSACTIONS and retries).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_code;
use crate::groups::string;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_coordinator::txn::InitRequest;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v4 (KIP-588) clients know PRODUCER_FENCED.
const FENCED_VERSION: i16 = 4;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: InitProducerIdRequest,
) -> Reply<InitProducerIdResponse> {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let Some(transactional_id) = request.transactional_id.as_ref().map(|t| string(&t.0)) else {
        // Like Kafka, an idempotent producer always gets a new id, even when it names its old
        // one (KIP-360 epoch bumps apply to transactional producers).
        return match broker.next_producer_id().await {
            Ok(id) => Reply::Now(
                response
                    .with_producer_id(ProducerId(id.0))
                    .with_producer_epoch(0),
            ),
            Err(reason) => {
                tracing::warn!(%reason, "producer id allocation failed");
                Reply::Now(response.with_error_code(ResponseError::CoordinatorNotAvailable.code()))
            }
        };
    };
    let service = match crate::txns::coordinator(broker).await {
        Ok(s) => s.clone(),
        Err(e) => return Reply::Now(response.with_error_code(e.code.code())),
    };
    let req = InitRequest {
        transactional_id,
        timeout_ms: request.transaction_timeout_ms,
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    let knows_fenced = ctx.version() >= FENCED_VERSION;
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let allocate = || async move { broker.next_producer_id().await.map(|id| id.0) };
        let answer = service.init_producer_id(req, allocate).await;
        InitProducerIdResponse::default()
            .with_error_code(txn_code(answer.error, knows_fenced))
            .with_producer_id(ProducerId(answer.producer_id))
            .with_producer_epoch(answer.producer_epoch)
    }))
}
