//! DescribeTransactions: the state of transactional ids this node coordinates (admin clients
//! ask each id's coordinator); an id coordinated elsewhere gets NOT_COORDINATOR.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_error;
use crate::groups::{str_bytes, string};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::txn::TxnError;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 0 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: DescribeTransactionsRequest,
) -> Reply<DescribeTransactionsResponse> {
    let ids: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|t| string(&t.0))
        .collect();
    // Only a node that coordinates transactions has any to describe; starting the coordinator
    // for a describe would create its topic.
    let service = broker.txns.get().cloned();
    Reply::Later(Box::pin(async move {
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            let described = match &service {
                None => Err(TxnError::NotCoordinator),
                Some(service) => {
                    let key = id.clone();
                    service
                        .query(move |core, _| core.describe(&key))
                        .await
                        .and_then(|r| r)
                }
            };
            let state = TransactionState::default()
                .with_transactional_id(TransactionalId(str_bytes(id)))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            states.push(match described {
                Err(e) => state.with_error_code(txn_error(&e).code()),
                Ok(d) => {
                    let mut topics: Vec<TopicData> = Vec::new();
                    for (topic, p) in d.partitions {
                        match topics.iter_mut().find(|t| t.topic.0.as_str() == topic) {
                            Some(t) => t.partitions.push(p),
                            None => topics.push(
                                TopicData::default()
                                    .with_topic(TopicName(str_bytes(topic)))
                                    .with_partitions(vec![p]),
                            ),
                        }
                    }
                    state
                        .with_transaction_state(str_bytes(d.state.name()))
                        .with_transaction_timeout_ms(d.timeout_ms)
                        .with_transaction_start_time_ms(d.start_ms)
                        .with_producer_id(ProducerId(d.producer_id))
                        .with_producer_epoch(d.producer_epoch)
                        .with_topics(topics)
                }
            });
        }
        DescribeTransactionsResponse::default().with_transaction_states(states)
    }))
}
