//! OffsetCommit: offsets are appended to `__consumer_offsets` and answered after the fsync
//! that covers them. Partitions of unknown topics are refused one by one.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_error;
use crate::groups::{coordinator, opt_string, string};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::protocol::VersionRange;
use kafka_protocol::ResponseError;
use spate_coordinator::{CommitRequest, GroupError};
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 2, max: 9 };

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    _ctx: &RequestContext,
    request: OffsetCommitRequest,
) -> Reply<OffsetCommitResponse> {
    let image = broker.image();
    // Per partition, in request order: a refusal now, or an index into the commit.
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
    let commit = CommitRequest {
        group_id: string(&request.group_id.0),
        generation_id: request.generation_id_or_member_epoch,
        member_id: string(&request.member_id),
        instance_id: opt_string(&request.group_instance_id),
        offsets,
    };
    let coordinator = match coordinator(broker).await {
        Ok(c) => c.clone(),
        Err(e) => return Reply::Now(respond(&names, &slots, |_| Err(e.code))),
    };
    Reply::Later(Box::pin(async move {
        let outcome = coordinator.commit(commit).await;
        let mut results = match outcome.results {
            Err(e) => {
                let code = group_error(&e);
                return respond(&names, &slots, |_| Err(code));
            }
            Ok(results) => results,
        };
        if let Some((partition, offset)) = outcome.durable {
            if let Err(e) = partition.wait_acks_all(offset).await {
                tracing::warn!(error = %e, "offset commit not durable on the in-sync replicas");
                // Leadership of the offsets partition moved: the client finds the new
                // coordinator and commits again.
                let error = match e {
                    spate_replica::ReplicaError::NotLeader { .. } => GroupError::NotCoordinator,
                    spate_replica::ReplicaError::NotEnoughReplicasAfterAppend { .. }
                    | spate_replica::ReplicaError::NotEnoughReplicas { .. } => {
                        GroupError::CoordinatorNotAvailable
                    }
                    _ => GroupError::StorageError,
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
) -> OffsetCommitResponse {
    let mut topics: Vec<OffsetCommitResponseTopic> = names
        .iter()
        .map(|n| OffsetCommitResponseTopic::default().with_name(n.clone()))
        .collect();
    for (t, partition, slot) in slots {
        let code = match slot {
            Err(code) => code.code(),
            Ok(i) => result(*i).err().map_or(0, |c| c.code()),
        };
        topics[*t].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(*partition)
                .with_error_code(code),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}
