//! TxnOffsetCommit: a transactional producer commits a consumer group's offsets inside its
//! transaction (`send_offsets_to_transaction`). The group coordinator first checks with the
//! transaction coordinator that the group's offsets partition is in the producer's ongoing
//! transaction (KIP-890: a producer fenced or aborted meanwhile cannot commit; from v5 it
//! adds the partition instead, for a transaction version 2 producer), then stores
//! the offsets in a transactional batch of the producer; they become the group's committed
//! offsets when the COMMIT marker reaches the offsets partition, and are dropped on ABORT.
//! `transaction.partition.verification.enable=false` skips the check for version 1 producers,
//! as it does for Produce.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_error;
use crate::groups::{coordinator, opt_string, string};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_coordinator::{CommitRequest, GroupError, TxnProducer, OFFSETS_TOPIC};
use spate_types::TopicPartition;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

/// v3 (KIP-588) clients know PRODUCER_FENCED.
const FENCED_VERSION: i16 = 3;
/// v5 (KIP-890 part 2): a transaction version 2 producer does not send AddOffsetsToTxn; the
/// group coordinator adds the offsets partition to its transaction.
const IMPLICIT_ADD_VERSION: i16 = 5;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: TxnOffsetCommitRequest,
) -> Reply<TxnOffsetCommitResponse> {
    let image = broker.image();
    let mut slots: Vec<(usize, i32, Result<usize, ResponseError>)> = Vec::new();
    let mut offsets = Vec::new();
    for (t, topic) in request.topics.iter().enumerate() {
        let name = string(&topic.name.0);
        let count = image
            .topics
            .get(&name)
            .map_or(0, |t| t.partitions.len() as i32);
        for p in &topic.partitions {
            let slot = if (0..count).contains(&p.partition_index) {
                offsets.push((
                    name.clone(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    opt_string(&p.committed_metadata),
                ));
                Ok(offsets.len() - 1)
            } else {
                Err(ResponseError::UnknownTopicOrPartition)
            };
            slots.push((t, p.partition_index, slot));
        }
    }
    let names: Vec<_> = request.topics.iter().map(|t| t.name.clone()).collect();
    let group = string(&request.group_id.0);
    let commit = CommitRequest {
        group_id: group.clone(),
        generation_id: request.generation_id,
        member_id: string(&request.member_id),
        instance_id: opt_string(&request.group_instance_id),
        offsets,
    };
    let producer = TxnProducer {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    let transactional_id = string(&request.transactional_id.0);
    let coordinator = match coordinator(broker).await {
        Ok(c) => c.clone(),
        Err(e) => return Reply::Now(respond(&names, &slots, |_| Err(e.code))),
    };
    let knows_fenced = ctx.version() >= FENCED_VERSION;
    let add = ctx.version() >= IMPLICIT_ADD_VERSION;
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let all = |code: ResponseError| respond(&names, &slots, |_| Err(code));
        tracing::debug!(%group, %transactional_id, producer_id = producer.producer_id, "TxnOffsetCommit received");
        if let Err(e) = coordinator.check_group(&group) {
            tracing::debug!(%group, error = %e, "TxnOffsetCommit refused");
            return all(group_error(&e));
        }
        let image = broker.image();
        // A version 2 producer's offsets partition is added here whatever the setting says.
        if add || broker.txn_verification_in(&image) {
            let count = image
                .topics
                .get(OFFSETS_TOPIC)
                .map_or(0, |t| t.partitions.len() as i32);
            let offsets_tp = TopicPartition::new(
                OFFSETS_TOPIC,
                spate_coordinator::partition_for(&group, count),
            );
            let verified = crate::txns::verify(
                &broker,
                &transactional_id,
                producer.producer_id,
                producer.producer_epoch,
                &offsets_tp,
                add,
            )
            .await;
            tracing::debug!(%group, %transactional_id, ?verified, "TxnOffsetCommit verified");
            if let Err(code) = verified {
                let code = match code {
                    ResponseError::ProducerFenced if !knows_fenced => {
                        ResponseError::InvalidProducerEpoch
                    }
                    // The coordinator moving or busy: the producer retries.
                    ResponseError::NotEnoughReplicas => ResponseError::CoordinatorLoadInProgress,
                    other => other,
                };
                return all(code);
            }
        }
        let outcome = coordinator.txn_commit(commit, producer).await;
        tracing::debug!(%group, results = ?outcome.results, "TxnOffsetCommit stored");
        let mut results = match outcome.results {
            Err(e) => return all(group_error(&e)),
            Ok(results) => results,
        };
        if let Some((partition, offset)) = outcome.durable {
            if let Err(e) = partition.wait_acks_all(offset).await {
                tracing::warn!(error = %e, "transactional offset commit not durable on the in-sync replicas");
                let error = match e {
                    spate_replica::ReplicaError::NotLeader { .. } => GroupError::NotCoordinator,
                    _ => GroupError::CoordinatorNotAvailable,
                };
                results.iter_mut().for_each(|r| *r = Some(error));
            }
        }
        respond(&names, &slots, |i| {
            match results.get(i).copied().flatten() {
                None => Ok(()),
                Some(e) => Err(group_error(&e)),
            }
        })
    }))
}

fn respond(
    names: &[kafka_protocol::messages::TopicName],
    slots: &[(usize, i32, Result<usize, ResponseError>)],
    result: impl Fn(usize) -> Result<(), ResponseError>,
) -> TxnOffsetCommitResponse {
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = names
        .iter()
        .map(|n| TxnOffsetCommitResponseTopic::default().with_name(n.clone()))
        .collect();
    for (t, partition, slot) in slots {
        let code = match slot {
            Err(code) => code.code(),
            Ok(i) => result(*i).err().map_or(0, |c| c.code()),
        };
        topics[*t].partitions.push(
            TxnOffsetCommitResponsePartition::default()
                .with_partition_index(*partition)
                .with_error_code(code),
        );
    }
    TxnOffsetCommitResponse::default().with_topics(topics)
}
