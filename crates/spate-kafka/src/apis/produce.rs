//! Produce: validates and appends record batches as received; `acks=all` answers after the
//! fsync that covers the batch (group-committed by the partition's flusher).

use super::{Reply, RequestContext};
use crate::broker::{now_ms, Broker};
use crate::errors;
use bytes::BytesMut;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_log::AppendOutcome;
use spate_replica::Partition;
use spate_types::{Offset, TopicPartition};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 3, max: 13 };

/// Produce v13 (KIP-516) names topics by id.
const TOPIC_ID_VERSION: i16 = 13;

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
    let now = now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut waits: Vec<(usize, usize, Arc<Partition>, Offset)> = Vec::new();
    let mut any_error = false;
    for topic in request.topic_data {
        let name = if ctx.version() >= TOPIC_ID_VERSION {
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
                (Some((code, message)), _) => Err((*code, Some(message.clone()))),
                (None, None) => Err((ResponseError::UnknownTopicId, None)),
                (None, Some(name)) => {
                    let tp = TopicPartition::new(name.clone(), data.index);
                    enough_replicas(broker, &image, &tp, acks)
                        .and_then(|()| append(broker, tp, data.records, now))
                }
            };
            let response = match outcome {
                Ok((partition, base_offset, last_offset, log_start)) => {
                    if acks == -1 {
                        waits.push((responses.len(), partitions.len(), partition, last_offset));
                    }
                    response
                        .with_base_offset(base_offset.0)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(log_start.0)
                }
                Err((code, message)) => {
                    any_error = true;
                    response
                        .with_error_code(code.code())
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(message.map(StrBytes::from_string))
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
    let mut response = ProduceResponse::default().with_responses(responses);
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
                        waits.iter().map(|(_, _, p, last)| p.wait_durable(*last)),
                    ),
                )
                .await;
                for (index, (t, p, partition, _)) in waits.iter().enumerate() {
                    let error = match &results {
                        Err(_) => Some((
                            ResponseError::RequestTimedOut,
                            "fsync did not complete within timeout_ms".to_owned(),
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

/// `acks=all` needs at least `min.insync.replicas` in-sync replicas (Kafka:
/// NOT_ENOUGH_REPLICAS, nothing written); `acks=0/1` are not affected.
fn enough_replicas(
    broker: &Broker,
    image: &spate_controller::MetadataImage,
    tp: &TopicPartition,
    acks: i16,
) -> Result<(), (ResponseError, Option<String>)> {
    if acks != -1 {
        return Ok(());
    }
    let Some(partition) = broker.replicas.get(tp) else {
        return Ok(());
    };
    let required = partition
        .with_log(|log| Ok(log.config().min_insync_replicas))
        .unwrap_or(1);
    let in_sync = image
        .topics
        .get(&tp.topic)
        .and_then(|t| t.partitions.get(tp.partition as usize))
        .map_or(0, |p| p.isr.len());
    if (in_sync as i64) < i64::from(required) {
        return Err((
            ResponseError::NotEnoughReplicas,
            Some(format!(
                "{in_sync} in-sync replicas, min.insync.replicas is {required}"
            )),
        ));
    }
    Ok(())
}

type AppendResult =
    Result<(Arc<Partition>, Offset, Offset, Offset), (ResponseError, Option<String>)>;

fn append(
    broker: &Broker,
    tp: TopicPartition,
    records: Option<bytes::Bytes>,
    now: i64,
) -> AppendResult {
    if tp.topic == spate_coordinator::OFFSETS_TOPIC {
        return Err((
            ResponseError::InvalidTopicException,
            Some(format!("cannot append to internal topic {}", tp.topic)),
        ));
    }
    let Some(partition) = broker.replicas.get(&tp) else {
        return Err((ResponseError::UnknownTopicOrPartition, None));
    };
    let Some(records) = records else {
        return Err((
            ResponseError::CorruptMessage,
            Some("record set is null".into()),
        ));
    };
    // Offsets and the leader epoch are written into the batch header before it is stored.
    let mut buf = BytesMut::from(&records[..]);
    match partition.append(&mut buf, now) {
        Ok(outcome) => {
            let info = match outcome {
                AppendOutcome::Appended(info) => {
                    crate::probe::produced(buf.len());
                    info
                }
                AppendOutcome::Duplicate(info) => {
                    tracing::debug!(partition = %tp, base_offset = %info.base_offset, "duplicate batch acknowledged");
                    info
                }
            };
            let log_start = partition.log_start_offset().unwrap_or(Offset(0));
            Ok((partition, info.base_offset, info.last_offset, log_start))
        }
        Err(e) => {
            let code = errors::replica_error(&e);
            if code == ResponseError::KafkaStorageError {
                tracing::error!(partition = %tp, error = %e, "append failed");
            } else {
                tracing::debug!(partition = %tp, error = %e, "append rejected");
            }
            Err((code, Some(e.to_string())))
        }
    }
}
