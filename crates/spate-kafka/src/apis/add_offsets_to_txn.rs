//! AddOffsetsToTxn: a transactional producer that will commit a consumer group's offsets in
//! its transaction (`send_offsets_to_transaction`) adds the group's `__consumer_offsets`
//! partition to it, so the commit or abort marker reaches the offsets too. The offsets
//! themselves go to the group coordinator (TxnOffsetCommit).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_code;
use crate::groups::string;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_coordinator::txn::AddPartitionsRequest;
use spate_coordinator::OFFSETS_TOPIC;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

/// v2 (KIP-588) clients know PRODUCER_FENCED.
const FENCED_VERSION: i16 = 2;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: AddOffsetsToTxnRequest,
) -> Reply<AddOffsetsToTxnResponse> {
    let error =
        |code: ResponseError| AddOffsetsToTxnResponse::default().with_error_code(code.code());
    let group = string(&request.group_id.0);
    if group.is_empty() {
        return Reply::Now(error(ResponseError::InvalidGroupId));
    }
    // The group's offsets partition: the group coordinator (and its topic) must exist.
    if let Err(e) = crate::groups::coordinator(broker).await {
        return Reply::Now(error(e.code));
    }
    let count = broker
        .image()
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(0, |t| t.partitions.len() as i32);
    if count == 0 {
        return Reply::Now(error(ResponseError::CoordinatorNotAvailable));
    }
    let partition = spate_coordinator::partition_for(&group, count);
    let service = match crate::txns::coordinator(broker).await {
        Ok(s) => s.clone(),
        Err(e) => return Reply::Now(error(e.code)),
    };
    let req = AddPartitionsRequest {
        transactional_id: string(&request.transactional_id.0),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        partitions: vec![(OFFSETS_TOPIC.to_owned(), partition)],
        tv2: false,
    };
    let knows_fenced = ctx.version() >= FENCED_VERSION;
    Reply::Later(Box::pin(async move {
        let answer = service.add_partitions(req).await;
        AddOffsetsToTxnResponse::default().with_error_code(txn_code(answer.error, knows_fenced))
    }))
}
