//! Produce: validates and appends record batches, on the partition leader only (the log applies
//! the topic's timestamp type and compression; `log_append_time_ms` answers with the stamp of
//! a LogAppendTime topic, -1 otherwise);
//! `acks=all` answers once the batch is below the high watermark (fsynced on every in-sync
//! replica) with at least `min.insync.replicas` in sync. A refusal from a replica that is not
//! the leader names the leader (KIP-951 `current_leader` and `node_endpoints`, v10+), so
//! clients skip a metadata round trip.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors;
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
    } else if request.transactional_id.is_some() {
        Some((
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported by this broker yet".to_owned(),
        ))
    } else {
        None
    };
    let image = broker.image();
    let now = broker.now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut waits: Vec<(usize, usize, Arc<Partition>, Offset)> = Vec::new();
    let mut any_error = false;
    let mut hinted: BTreeSet<NodeId> = BTreeSet::new();
    for topic in request.topic_data {
        let by_id = ctx.version() >= TOPIC_ID_VERSION;
        let name = if by_id {
            image
                .topic_by_id(topic.topic_id)
                .map(|(name, _)| name.to_owned())
        } else {
            Some(topic.name.0.to_string())
        };
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let response = PartitionProduceResponse::default().with_index(data.index);
            let outcome = match (&refuse_all, &name) {
                (Some((code, message)), _) => Err(Refusal::new(*code, Some(message.clone()))),
                (None, None) => Err(Refusal::new(ResponseError::UnknownTopicId, None)),
                (None, Some(name)) => {
                    let tp = TopicPartition::new(name.clone(), data.index);
                    append(
                        broker,
                        &image,
                        tp,
                        by_id.then_some(topic.topic_id),
                        data.records,
                        acks == -1,
                        now,
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
                response
            }))
        }
    }
}

type AppendResult = Result<(Arc<Partition>, AppendReceipt), Refusal>;

fn append(
    broker: &Broker,
    image: &MetadataImage,
    tp: TopicPartition,
    topic_id: Option<uuid::Uuid>,
    records: Option<bytes::Bytes>,
    acks_all: bool,
    now: i64,
) -> AppendResult {
    if tp.topic == spate_coordinator::OFFSETS_TOPIC {
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
    match partition.append(&mut buf, acks_all, now) {
        Ok(receipt) => {
            if receipt.duplicate {
                tracing::debug!(partition = %tp, base_offset = %receipt.base_offset, "duplicate batch acknowledged");
            } else {
                crate::probe::produced(receipt.bytes);
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
