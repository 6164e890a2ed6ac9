//! ListTransactions: the transactional ids this node coordinates, filtered by state, producer
//! id and (v1, KIP-994) by how long their transaction has been open. Admin clients ask every
//! broker and merge. Unknown state names are listed back, as Kafka does.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_error;
use crate::groups::str_bytes;
use kafka_protocol::messages::list_transactions_response::TransactionState;
use kafka_protocol::messages::{
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::txn::TxnState;
use std::collections::BTreeSet;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: ListTransactionsRequest,
) -> Reply<ListTransactionsResponse> {
    let mut states = BTreeSet::new();
    let mut unknown = Vec::new();
    for name in &request.state_filters {
        match TxnState::from_name(name.as_str()) {
            Some(s) => {
                states.insert(s);
            }
            None => unknown.push(name.clone()),
        }
    }
    let response = ListTransactionsResponse::default().with_unknown_state_filters(unknown.clone());
    // Every filter named an unknown state: nothing can match.
    if states.is_empty() && !request.state_filters.is_empty() {
        return Reply::Now(response);
    }
    let producer_ids: BTreeSet<i64> = request.producer_id_filters.iter().map(|p| p.0).collect();
    let min_duration_ms = request.duration_filter;
    let Some(service) = broker.txns.get().cloned() else {
        return Reply::Now(response);
    };
    Reply::Later(Box::pin(async move {
        let listed = service
            .query(move |core, now| core.list(now, &producer_ids, &states, min_duration_ms))
            .await;
        match listed {
            Err(e) => response.with_error_code(txn_error(&e).code()),
            Ok(listed) => response.with_transaction_states(
                listed
                    .into_iter()
                    .map(|d| {
                        TransactionState::default()
                            .with_transactional_id(TransactionalId(str_bytes(d.transactional_id)))
                            .with_producer_id(ProducerId(d.producer_id))
                            .with_transaction_state(str_bytes(d.state.name()))
                    })
                    .collect(),
            ),
        }
    }))
}
