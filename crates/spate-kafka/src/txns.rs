//! The transaction coordinator as the Kafka handlers reach it: started on first use, which
//! creates the internal `__transaction_state` topic (compacted,
//! `transaction.state.log.num.partitions`, replication factor
//! `transaction.state.log.replication.factor` capped at the live brokers, `min.insync.replicas`
//! `transaction.state.log.min.isr` capped at that), or at start when the topic exists so open
//! transactions are finished (or time out) without waiting for a client.

use crate::broker::Broker;
use crate::markers::NodeMarkerWriter;
use crate::topics::{
    capped_at_live_brokers, ensure_internal_topic, led_partitions, partition_count, ApiError,
    NewTopic,
};
use kafka_protocol::ResponseError;
use spate_coordinator::txn::{TxnService, TxnSettings, TRANSACTION_STATE_TOPIC};
use spate_types::TopicPartition;
use std::sync::Arc;

/// The transaction coordinator, starting it (and creating its topic) if needed.
pub(crate) async fn coordinator(broker: &Arc<Broker>) -> Result<&TxnService, ApiError> {
    broker
        .txns
        .get_or_try_init(|| async {
            let config = &broker.config.txns;
            let replication_factor =
                capped_at_live_brokers(broker, config.state_log_replication_factor);
            let min_isr = config.state_log_min_isr.min(i32::from(replication_factor));
            let configs = [
                ("cleanup.policy", "compact".to_owned()),
                ("segment.bytes", config.state_log_segment_bytes.to_string()),
                ("min.insync.replicas", min_isr.to_string()),
                ("compression.type", "uncompressed".to_owned()),
            ];
            let topic = NewTopic {
                name: TRANSACTION_STATE_TOPIC.to_owned(),
                partitions: config.settings.partition_count,
                replication_factor,
                configs: configs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                assignments: None,
            };
            ensure_internal_topic(broker, topic).await?;
            start(broker)
        })
        .await
}

fn start(broker: &Arc<Broker>) -> Result<TxnService, ApiError> {
    let count = partition_count(broker, TRANSACTION_STATE_TOPIC);
    if count == 0 {
        return Err(ApiError::new(
            ResponseError::CoordinatorNotAvailable,
            format!("{TRANSACTION_STATE_TOPIC} does not exist"),
        ));
    }
    let config = &broker.config.txns;
    // The partition count is the topic's, whatever the setting says now (Kafka's too: the
    // hash of a transactional id must not move).
    let settings = TxnSettings {
        partition_count: count,
        ..config.settings.clone()
    };
    let service = TxnService::start(
        settings,
        config.abort_check,
        Arc::new(NodeMarkerWriter::new(broker)),
        broker.shutdown.clone(),
        broker.seams().clone(),
    );
    tokio::spawn(follow_leadership(broker.clone(), service.clone()));
    Ok(service)
}

/// Hands the coordinator the `__transaction_state` partitions this node leads after every
/// reconciliation (a leader change loads or unloads transactional ids; a partition that failed
/// to load is tried again).
async fn follow_leadership(broker: Arc<Broker>, service: TxnService) {
    let mut reconciled = broker.reconciled.clone();
    let mut shutdown = broker.shutdown.clone();
    let count = partition_count(&broker, TRANSACTION_STATE_TOPIC);
    loop {
        let led = led_partitions(&broker, TRANSACTION_STATE_TOPIC, count);
        service.own(led).await;
        // Biased (deterministic under simulation); the shutdown, which ends the loop, first.
        tokio::select! {
            biased;
            _ = crate::broker::shutdown_signalled(&mut shutdown) => return,
            changed = reconciled.changed() => if changed.is_err() { return },
        }
    }
}

/// The node that coordinates `transactional_id`: the leader of its `__transaction_state`
/// partition, if it has one.
pub(crate) fn coordinator_node(
    broker: &Broker,
    transactional_id: &str,
) -> Option<spate_types::NodeId> {
    crate::topics::coordinator_node(broker, TRANSACTION_STATE_TOPIC, transactional_id)
}

/// Starts the coordinator at node start if `__transaction_state` exists.
pub async fn start_txns_if_present(broker: &Arc<Broker>) {
    if broker.image().topics.contains_key(TRANSACTION_STATE_TOPIC) {
        if let Err(e) = coordinator(broker).await {
            tracing::error!(error = %e.message, "cannot start the transaction coordinator");
        }
    }
}

/// KIP-890: asks the coordinator of `transactional_id` whether `tp` is in the producer's
/// ongoing transaction, or (`add`, a transaction version 2 producer) to add it. The
/// coordinator may be this node or another (AddPartitionsToTxn v4+, a broker's request).
/// Errors a producer retries on (the coordinator moving or busy) come back as
/// NOT_ENOUGH_REPLICAS, as Kafka's partition leaders answer them.
pub(crate) async fn verify(
    broker: &Arc<Broker>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    tp: &TopicPartition,
    add: bool,
) -> Result<(), ResponseError> {
    let retriable = |e: ResponseError| match e {
        ResponseError::CoordinatorNotAvailable
        | ResponseError::CoordinatorLoadInProgress
        | ResponseError::NotCoordinator
        | ResponseError::ConcurrentTransactions => ResponseError::NotEnoughReplicas,
        other => other,
    };
    let node =
        coordinator_node(broker, transactional_id).ok_or(ResponseError::NotEnoughReplicas)?;
    let partition = (tp.topic.clone(), tp.partition);
    if node == broker.config.node_id {
        let service = coordinator(broker).await.map_err(|e| retriable(e.code))?;
        let error = if add {
            service
                .add_partitions(spate_coordinator::txn::AddPartitionsRequest {
                    transactional_id: transactional_id.to_owned(),
                    producer_id,
                    producer_epoch,
                    partitions: vec![partition],
                    tv2: true,
                })
                .await
                .error
        } else {
            let id = transactional_id.to_owned();
            match service
                .query(move |core, _| core.verify(&id, producer_id, producer_epoch, &[partition]))
                .await
                .and_then(|r| r)
            {
                Ok(each) => each.into_iter().flatten().next(),
                Err(e) => Some(e),
            }
        };
        return match error {
            None => Ok(()),
            Some(e) => Err(retriable(crate::errors::txn_error(&e))),
        };
    }
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, ProducerId, TopicName, TransactionalId,
    };
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(crate::groups::str_bytes(transactional_id)))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_verify_only(!add)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(crate::groups::str_bytes(tp.topic.clone())))
                .with_partitions(vec![tp.partition])]),
    ]);
    let response = broker
        .peers
        .send(broker, node, &request)
        .await
        .map_err(|e| {
            tracing::debug!(%node, error = %e, "cannot reach the transaction coordinator");
            ResponseError::NotEnoughReplicas
        })?;
    if let Some(e) = ResponseError::try_from_code(response.error_code) {
        return Err(retriable(e));
    }
    let code = response
        .results_by_transaction
        .iter()
        .flat_map(|t| &t.topic_results)
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .find(|c| *c != 0);
    match code.and_then(ResponseError::try_from_code) {
        None => Ok(()),
        Some(e) => Err(retriable(e)),
    }
}
