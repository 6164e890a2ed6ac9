//! AddPartitionsToTxn: a transactional producer adds the partitions it is about to write to
//! its transaction (v0-3, one transaction per request). From v4 the request is a broker's
//! (KIP-890): a batch of transactions, each either verified (`verify_only`: is the partition
//! already in the producer's ongoing transaction? asked by a partition leader before it writes
//! a producer's first transactional batch) or added (a transaction version 2 producer does not
//! add partitions itself; its partition leaders do).
//!
//! A partition of a topic that does not exist makes the whole transaction's request fail:
//! UNKNOWN_TOPIC_OR_PARTITION for it, OPERATION_NOT_ATTEMPTED for the others (Kafka's answer).

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::txn_code;
use crate::groups::{str_bytes, string};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, TopicName, TransactionalId,
};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_coordinator::txn::{AddPartitionsRequest, TxnPartition, TxnService};
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v2 (KIP-588) clients know PRODUCER_FENCED.
const FENCED_VERSION: i16 = 2;
/// v4 (KIP-890): batched, sent by brokers.
const BROKER_VERSION: i16 = 4;
/// v5 (KIP-890 part 2): a leader adds a partition for a transaction version 2 producer.
const TV2_VERSION: i16 = 5;

/// One transaction of the request, resolved.
struct Txn {
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    verify_only: bool,
    /// Added by a partition leader for a transaction version 2 producer (v5).
    tv2: bool,
    partitions: Vec<TxnPartition>,
}

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: AddPartitionsToTxnRequest,
) -> Reply<AddPartitionsToTxnResponse> {
    let version = ctx.version();
    let txns: Vec<Txn> = if version >= BROKER_VERSION {
        request
            .transactions
            .iter()
            .map(|t| Txn {
                transactional_id: string(&t.transactional_id.0),
                producer_id: t.producer_id.0,
                producer_epoch: t.producer_epoch,
                verify_only: t.verify_only,
                tv2: version >= TV2_VERSION && !t.verify_only,
                partitions: partitions(&t.topics),
            })
            .collect()
    } else {
        vec![Txn {
            transactional_id: string(&request.v3_and_below_transactional_id.0),
            producer_id: request.v3_and_below_producer_id.0,
            producer_epoch: request.v3_and_below_producer_epoch,
            verify_only: false,
            tv2: false,
            partitions: partitions(&request.v3_and_below_topics),
        }]
    };
    let service = match crate::txns::coordinator(broker).await {
        Ok(s) => s.clone(),
        Err(e) => {
            let code = e.code.code();
            let results = txns
                .iter()
                .map(|t| (t, vec![code; t.partitions.len()]))
                .collect();
            return Reply::Now(respond(version, results));
        }
    };
    let image = broker.image();
    let unknown: Vec<Vec<bool>> = txns
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .map(|(topic, p)| {
                    !image
                        .topics
                        .get(topic)
                        .is_some_and(|t| (0..t.partitions.len() as i32).contains(p))
                })
                .collect()
        })
        .collect();
    let knows_fenced = version >= FENCED_VERSION;
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(txns.len());
        for (txn, unknown) in txns.iter().zip(unknown) {
            let codes = if unknown.iter().any(|u| *u) {
                unknown
                    .iter()
                    .map(|u| {
                        if *u {
                            ResponseError::UnknownTopicOrPartition.code()
                        } else {
                            ResponseError::OperationNotAttempted.code()
                        }
                    })
                    .collect()
            } else {
                one(&service, txn, knows_fenced).await
            };
            results.push((txn, codes));
        }
        respond(version, results)
    }))
}

/// The codes of one transaction's partitions.
async fn one(service: &TxnService, txn: &Txn, knows_fenced: bool) -> Vec<i16> {
    let n = txn.partitions.len();
    if txn.verify_only {
        let (id, pid, epoch, parts) = (
            txn.transactional_id.clone(),
            txn.producer_id,
            txn.producer_epoch,
            txn.partitions.clone(),
        );
        let verified = service
            .query(move |core, _| core.verify(&id, pid, epoch, &parts))
            .await
            .and_then(|r| r);
        return match verified {
            Ok(each) => each.into_iter().map(|e| txn_code(e, true)).collect(),
            Err(e) => vec![txn_code(Some(e), true); n],
        };
    }
    let answer = service
        .add_partitions(AddPartitionsRequest {
            transactional_id: txn.transactional_id.clone(),
            producer_id: txn.producer_id,
            producer_epoch: txn.producer_epoch,
            partitions: txn.partitions.clone(),
            tv2: txn.tv2,
        })
        .await;
    vec![txn_code(answer.error, knows_fenced); n]
}

fn partitions(topics: &[AddPartitionsToTxnTopic]) -> Vec<TxnPartition> {
    topics
        .iter()
        .flat_map(|t| {
            let name = string(&t.name.0);
            t.partitions.iter().map(move |p| (name.clone(), *p))
        })
        .collect()
}

fn respond(version: i16, results: Vec<(&Txn, Vec<i16>)>) -> AddPartitionsToTxnResponse {
    let by_topic = |txn: &Txn, codes: &[i16]| -> Vec<AddPartitionsToTxnTopicResult> {
        let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
        for ((topic, p), code) in txn.partitions.iter().zip(codes) {
            let result = AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(*p)
                .with_partition_error_code(*code);
            match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.results_by_partition.push(result),
                None => topics.push(
                    AddPartitionsToTxnTopicResult::default()
                        .with_name(TopicName(str_bytes(topic.clone())))
                        .with_results_by_partition(vec![result]),
                ),
            }
        }
        topics
    };
    if version >= BROKER_VERSION {
        AddPartitionsToTxnResponse::default().with_results_by_transaction(
            results
                .iter()
                .map(|(txn, codes)| {
                    AddPartitionsToTxnResult::default()
                        .with_transactional_id(TransactionalId(str_bytes(
                            txn.transactional_id.clone(),
                        )))
                        .with_topic_results(by_topic(txn, codes))
                })
                .collect(),
        )
    } else {
        let topics = results
            .first()
            .map(|(txn, codes)| by_topic(txn, codes))
            .unwrap_or_default();
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
    }
}
