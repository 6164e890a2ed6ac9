//! EndTxn: commit or abort the producer's transaction. Answered once PrepareCommit or
//! PrepareAbort is durable in the transaction log; the markers are written after. From v5 a
//! transaction version 2 producer (KIP-890) gets a bumped epoch (or a new producer id) in the
//! answer, so a late write from the transaction just ended is fenced.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_code;
use crate::groups::string;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::txn::EndRequest;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v2 (KIP-588) clients know PRODUCER_FENCED.
const FENCED_VERSION: i16 = 2;
/// v5: transaction version 2.
const TV2_VERSION: i16 = 5;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: EndTxnRequest,
) -> Reply<EndTxnResponse> {
    let response = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let service = match crate::txns::coordinator(broker).await {
        Ok(s) => s.clone(),
        Err(e) => return Reply::Now(response.with_error_code(e.code.code())),
    };
    let req = EndRequest {
        transactional_id: string(&request.transactional_id.0),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        commit: request.committed,
        tv2: ctx.version() >= TV2_VERSION,
    };
    let knows_fenced = ctx.version() >= FENCED_VERSION;
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let allocate = || async move { broker.next_producer_id().await.map(|id| id.0) };
        let answer = service.end_txn(req, allocate).await;
        EndTxnResponse::default()
            .with_error_code(txn_code(answer.error, knows_fenced))
            .with_producer_id(ProducerId(answer.producer_id))
            .with_producer_epoch(answer.producer_epoch)
    }))
}
