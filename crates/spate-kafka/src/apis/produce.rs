//! Produce: validates and appends record batches, on the partition leader only (the log applies
//! the topic's timestamp type and compression; `log_append_time_ms` answers with the stamp of
//! a LogAppendTime topic, -1 otherwise);
//! `acks=all` answers once the batch is below the high watermark (fsynced on every in-sync
//! replica) with at least `min.insync.replicas` in sync. A refusal from a replica that is not
//! the leader names the leader (KIP-951 `current_leader` and `node_endpoints`, v10+), so
//! clients skip a metadata round trip.
//!
//! Transactional batches (KIP-98) need the request's `transactional_id`. Before a producer's
//! first transactional batch on a partition, the leader asks the transaction coordinator
//! whether the partition is in the producer's ongoing transaction (KIP-890 part 1), or, for a
//! transaction version 2 producer (Produce v12+), has the coordinator add it (part 2). The
//! append then goes ahead only if no marker for that producer was written in between (the
//! partition's verification guard), so a zombie's late write cannot open a transaction the
//! coordinator knows nothing of. The question is asked before the handler returns, which
//! holds the connection's later requests back as Kafka's muted channel does, so a producer's
//! pipelined batches stay in order. `transaction.partition.verification.enable=false` (a
//! dynamic broker config) skips the question for version 1 producers, as Kafka does: their
//! transactional batches go in unchecked.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
use crate::probe;
use bytes::BytesMut;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_controller::MetadataImage;
use spate_log::{BatchError, LogError};
use spate_replica::{AppendReceipt, Partition, ReplicaError};
use spate_types::{NodeId, Offset, TopicPartition};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 3, max: 13 };

/// Produce v13 (KIP-516) names topics by id.
const TOPIC_ID_VERSION: i16 = 13;
/// Produce v10 (KIP-951) carries the new leader beside NOT_LEADER_OR_FOLLOWER.
const LEADER_HINT_VERSION: i16 = 10;
/// Produce v12 (KIP-890 part 2): a transaction version 2 producer, whose partitions the
/// leader adds to its transaction.
const IMPLICIT_ADD_VERSION: i16 = 12;

/// A refused partition: the code, a message, and the leader to try (KIP-951).
/// Why a partition's records were not appended.
struct Refusal {
    code: ResponseError,
    message: Option<String>,
    /// The leader to name beside NOT_LEADER_OR_FOLLOWER (KIP-951).
    hint: Option<(NodeId, spate_types::LeaderEpoch)>,
    /// KIP-467: the records that caused the refusal, by index in the record set; a client
    /// fails these with the error and the others of the batch as collateral.
    records: Vec<i32>,
}

impl Refusal {
    fn new(code: ResponseError, message: Option<String>) -> Refusal {
        Refusal {
            code,
            message,
            hint: None,
            records: Vec::new(),
        }
    }
}

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: ProduceRequest,
) -> Reply<ProduceResponse> {
    let acks = request.acks;
    let refuse_all = if !matches!(acks, -1..=1) {
        Some((
            ResponseError::InvalidRequiredAcks,
            format!("acks must be -1, 0 or 1, was {acks}"),
        ))
    } else {
        None
    };
    let image = broker.image();
    let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
    // A version 2 producer's partitions are added here whatever the setting says.
    let implicit_add = ctx.version() >= IMPLICIT_ADD_VERSION;
    let verifying = implicit_add || broker.txn_verification_in(&image);
    // Verification first (it may wait on the coordinator), then every append at one `now`.
    // The partitions of a request are verified at once: one coordinator round trip for a
    // transaction's first write to many partitions (a Java or kafka-python producer sends a
    // leader's partitions in one request), not one after another.
    let mut guards = std::collections::BTreeMap::new();
    if refuse_all.is_none() && verifying {
        let mut checks = Vec::new();
        for (t, topic) in request.topic_data.iter().enumerate() {
            let name = if ctx.version() >= TOPIC_ID_VERSION {
                image.topic_by_id(topic.topic_id).map(|(n, _)| n.to_owned())
            } else {
                Some(topic.name.0.to_string())
            };
            let Some(name) = name else { continue };
            for (p, data) in topic.partition_data.iter().enumerate() {
                let tp = TopicPartition::new(name.clone(), data.index);
                let topic_id = (ctx.version() >= TOPIC_ID_VERSION).then_some(topic.topic_id);
                let (image, transactional_id) = (&image, transactional_id.as_deref());
                checks.push(async move {
                    let guard = verify(
                        broker,
                        image,
                        &tp,
                        topic_id,
                        data.records.as_deref(),
                        transactional_id,
                        implicit_add,
                    )
                    .await;
                    ((t, p), guard)
                });
            }
        }
        for (at, guard) in futures::future::join_all(checks).await {
            if let Some(guard) = guard {
                guards.insert(at, guard);
            }
        }
    }
    let now = broker.now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut waits: Vec<(usize, usize, Arc<Partition>, Offset)> = Vec::new();
    let mut any_error = false;
    let mut hinted: BTreeSet<NodeId> = BTreeSet::new();
    for (t, topic) in request.topic_data.into_iter().enumerate() {
        let by_id = ctx.version() >= TOPIC_ID_VERSION;
        let name = if by_id {
            image
                .topic_by_id(topic.topic_id)
                .map(|(name, _)| name.to_owned())
        } else {
            Some(topic.name.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for (p, data) in topic.partition_data.into_iter().enumerate() {
            let response = PartitionProduceResponse::default().with_index(data.index);
            let outcome = match (&refuse_all, &name, guards.remove(&(t, p))) {
                (Some((code, message)), _, _) => Err(Refusal::new(*code, Some(message.clone()))),
                (None, None, _) => Err(Refusal::new(ResponseError::UnknownTopicId, None)),
                (None, Some(_), Some(Err(refusal))) => Err(refusal),
                (None, Some(name), guard) => {
                    let tp = TopicPartition::new(name.clone(), data.index);
                    let check = if verifying {
                        Check::Guard(guard.and_then(Result::ok))
                    } else {
                        Check::Off
                    };
                    append(
                        broker,
                        &image,
                        tp,
                        by_id.then_some(topic.topic_id),
                        data.records,
                        acks == -1,
                        now,
                        check,
                    )
                }
            };
            let response = match outcome {
                Ok((partition, receipt)) => {
                    if acks == -1 {
                        waits.push((
                            responses.len(),
                            partitions.len(),
                            partition,
                            receipt.last_offset,
                        ));
                    }
                    // The broker's stamp on a LogAppendTime topic (KIP-32), -1 for CreateTime.
                    response
                        .with_base_offset(receipt.base_offset.0)
                        .with_log_append_time_ms(receipt.log_append_time_ms)
                        .with_log_start_offset(receipt.log_start_offset.0)
                }
                Err(refusal) => {
                    any_error = true;
                    let mut response = response
                        .with_error_code(refusal.code.code())
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_record_errors(
                            refusal
                                .records
                                .iter()
                                .map(|&i| BatchIndexAndErrorMessage::default().with_batch_index(i))
                                .collect(),
                        )
                        .with_error_message(refusal.message.map(StrBytes::from_string));
                    if let (Some((leader, epoch)), true) =
                        (refusal.hint, ctx.version() >= LEADER_HINT_VERSION)
                    {
                        response = response.with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(leader.0))
                                .with_leader_epoch(epoch.0),
                        );
                        hinted.insert(leader);
                    }
                    response
                }
            };
            partitions.push(response);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(partitions),
        );
    }
    let endpoints = hinted
        .iter()
        .filter_map(|id| {
            image.brokers.get(id).map(|e| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id.0))
                    .with_host(StrBytes::from_string(e.host.clone()))
                    .with_port(i32::from(e.port))
                    .with_rack(e.rack.clone().map(StrBytes::from_string))
            })
        })
        .collect();
    let mut response = ProduceResponse::default()
        .with_responses(responses)
        .with_node_endpoints(endpoints);
    match acks {
        0 if any_error => {
            Reply::Close("acks=0 produce failed; closing so the client notices".into())
        }
        0 => Reply::Silent,
        _ if waits.is_empty() => Reply::Now(response),
        _ => {
            let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
            let delayed = probe::delayed_produce();
            Reply::Later(Box::pin(async move {
                let results = tokio::time::timeout(
                    timeout,
                    futures::future::join_all(
                        waits.iter().map(|(_, _, p, last)| p.wait_acks_all(*last)),
                    ),
                )
                .await;
                for (index, (t, p, partition, _)) in waits.iter().enumerate() {
                    let error = match &results {
                        Err(_) => Some((
                            ResponseError::RequestTimedOut,
                            "the in-sync replicas did not all fsync the batch within timeout_ms"
                                .to_owned(),
                        )),
                        Ok(all) => all[index]
                            .as_ref()
                            .err()
                            .map(|e| (errors::replica_error(e), e.to_string())),
                    };
                    if let Some((code, message)) = error {
                        tracing::warn!(partition = %partition.topic_partition(), %message, "acks=all write failed");
                        let r = &mut response.responses[*t].partition_responses[*p];
                        r.error_code = code.code();
                        r.error_message = Some(StrBytes::from_string(message));
                    }
                }
                drop(delayed);
                response
            }))
        }
    }
}

type AppendResult = Result<(Arc<Partition>, AppendReceipt), Refusal>;

/// How many times a version 2 producer's write asks the coordinator when a marker dropped its
/// verification guard during the question (see [`verify`]).
const VERIFY_ASKS_MAX: u32 = 3;

/// What an append checks about KIP-890 verification.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// A transactional batch that opens its producer's transaction on the partition must come
    /// with this guard (`None`: none was issued, so such a batch is refused).
    Guard(Option<u64>),
    /// `transaction.partition.verification.enable=false`: transactional batches go in unchecked.
    Off,
}

/// For a record set of transactional batches: `None` if no verification is needed (not
/// transactional, or the producer's transaction is already open on the partition; the append
/// itself refuses what is wrong), else the guard the append must present, or the refusal.
async fn verify(
    broker: &Arc<Broker>,
    image: &MetadataImage,
    tp: &TopicPartition,
    topic_id: Option<uuid::Uuid>,
    records: Option<&[u8]>,
    transactional_id: Option<&str>,
    add: bool,
) -> Option<Result<u64, Refusal>> {
    let header = spate_log::BatchHeader::parse(records?).ok()?;
    if !header.is_transactional() {
        return None;
    }
    let Some(transactional_id) = transactional_id else {
        // Kafka refuses transactional records without a transactional id this way.
        return Some(Err(Refusal::new(
            ResponseError::TransactionalIdAuthorizationFailed,
            Some("transactional records need the request's transactional_id".to_owned()),
        )));
    };
    if !header.has_producer_id() {
        // The append refuses it (INVALID_RECORD).
        return None;
    }
    let partition = broker.hosted(image, tp, topic_id).ok()?;
    let mut asked = 0;
    let verified = loop {
        let guard = match partition.verification_guard(header.producer_id, header.producer_epoch) {
            Ok(None) | Err(_) => return None,
            Ok(Some(guard)) => guard,
        };
        asked += 1;
        let answer = crate::txns::verify(
            broker,
            transactional_id,
            header.producer_id.0,
            header.producer_epoch.0,
            tp,
            add,
        )
        .await;
        // A version 2 producer's first write of a transaction to a partition of its previous
        // one can get here before that transaction's marker does: the coordinator holds the
        // add until the markers are written, and the marker dropped the guard meanwhile. The
        // partition is in the new transaction by then, so a fresh guard is answered at once
        // (Kafka's leaders retry CONCURRENT_TRANSACTIONS with a fresh guard the same way).
        let dropped =
            add && answer.is_ok() && !partition.holds_verification_guard(header.producer_id, guard);
        if !dropped || asked == VERIFY_ASKS_MAX || crate::planted::verification_asks_once() {
            break answer.map(|()| guard);
        }
        tracing::debug!(partition = %tp, %transactional_id, "a marker dropped the verification guard; asking again");
    };
    Some(verified.map_err(|code| {
            tracing::debug!(partition = %tp, %transactional_id, ?code, "transactional write not verified");
            // Produce has no PRODUCER_FENCED: a fenced producer hears of its epoch.
            let code = match code {
                ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
                other => other,
            };
            Refusal::new(
                code,
                Some("the partition is not in the producer's ongoing transaction".to_owned()),
            )
    }))
}

#[allow(clippy::too_many_arguments)]
fn append(
    broker: &Broker,
    image: &MetadataImage,
    tp: TopicPartition,
    topic_id: Option<uuid::Uuid>,
    records: Option<bytes::Bytes>,
    acks_all: bool,
    now: i64,
    check: Check,
) -> AppendResult {
    if tp.topic == spate_coordinator::OFFSETS_TOPIC
        || tp.topic == spate_coordinator::txn::TRANSACTION_STATE_TOPIC
    {
        return Err(Refusal::new(
            ResponseError::InvalidTopicException,
            Some(format!("cannot append to internal topic {}", tp.topic)),
        ));
    }
    let partition = broker
        .hosted(image, &tp, topic_id)
        .map_err(|code| Refusal::new(code, None))?;
    let Some(records) = records else {
        return Err(Refusal::new(
            ResponseError::CorruptMessage,
            Some("record set is null".into()),
        ));
    };
    // Offsets and the leader epoch are written into the batch header before it is stored.
    let mut buf = BytesMut::from(&records[..]);
    let appended = match check {
        Check::Guard(guard) => partition.append_verified(&mut buf, acks_all, now, guard),
        Check::Off => partition.append(&mut buf, acks_all, now),
    };
    match appended {
        Ok(receipt) => {
            if receipt.duplicate {
                tracing::debug!(partition = %tp, base_offset = %receipt.base_offset, "duplicate batch acknowledged");
            } else {
                probe::produced(receipt.bytes);
            }
            Ok((partition, receipt))
        }
        Err(e) => {
            let code = errors::replica_error(&e);
            match &e {
                ReplicaError::Log(_) | ReplicaError::Storage { .. }
                    if code == ResponseError::KafkaStorageError =>
                {
                    tracing::error!(partition = %tp, error = %e, "append failed")
                }
                _ => tracing::debug!(partition = %tp, error = %e, "append refused"),
            }
            let records = match &e {
                ReplicaError::Log(LogError::Batch(BatchError::MissingKey { records })) => {
                    records.clone()
                }
                _ => Vec::new(),
            };
            Err(Refusal {
                code,
                message: Some(e.to_string()),
                hint: errors::leader_hint(&e),
                records,
            })
        }
    }
}
