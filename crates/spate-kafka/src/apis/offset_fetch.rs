//! OffsetFetch: committed offsets of one group (v0-7) or several (v8+); a partition without a
//! commit answers offset -1, and null topics means every committed partition. With
//! `require_stable` (v7+, KIP-447) a partition whose offset a transaction is about to commit
//! answers UNSTABLE_OFFSET_COMMIT, which consumers retry, rather than an offset about to change.

use super::{Reply, RequestContext};
use crate::broker::Broker;
use crate::errors::group_error;
use crate::groups::{coordinator, str_bytes, string};
use crate::topics::topic_name;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::VersionRange;
use spate_coordinator::{CommittedOffset, GroupError};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const VERSIONS: VersionRange = VersionRange { min: 1, max: 9 };

/// v8 (KIP-709) fetches for several groups at once.
const BATCHED_VERSION: i16 = 8;

/// Per partition: its committed offset, and whether a transaction holds one pending.
type Fetched = Vec<(String, i32, Option<CommittedOffset>, bool)>;
/// Requested partitions by topic; `None` means all committed.
type Wanted = Option<Vec<(String, Vec<i32>)>>;
type ByTopic = Vec<(String, Vec<(i32, Option<CommittedOffset>, bool)>)>;

pub(crate) async fn handle(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: OffsetFetchRequest,
) -> Reply<OffsetFetchResponse> {
    let batched = ctx.version() >= BATCHED_VERSION;
    let groups: Vec<(GroupId, Wanted)> = if batched {
        request
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (string(&t.name.0), t.partition_indexes.clone()))
                        .collect()
                });
                (g.group_id.clone(), topics)
            })
            .collect()
    } else {
        let topics = request.topics.as_ref().map(|ts| {
            ts.iter()
                .map(|t| (string(&t.name.0), t.partition_indexes.clone()))
                .collect()
        });
        vec![(request.group_id.clone(), topics)]
    };
    let coordinator = match coordinator(broker).await {
        Ok(c) => c,
        Err(e) => {
            let code = e.code.code();
            return Reply::Now(if batched {
                OffsetFetchResponse::default().with_groups(
                    groups
                        .into_iter()
                        .map(|(id, _)| {
                            OffsetFetchResponseGroup::default()
                                .with_group_id(id)
                                .with_error_code(code)
                        })
                        .collect(),
                )
            } else {
                OffsetFetchResponse::default().with_error_code(code)
            });
        }
    };
    let mut answers = Vec::with_capacity(groups.len());
    for (id, topics) in groups {
        let group = string(&id.0);
        // NOT_COORDINATOR (the group's partition moved) must reach the client: an empty answer
        // would read as "nothing committed" and reset the consumer.
        let require_stable = request.require_stable;
        // A coordinator that just took the group over answers once the log it loaded is
        // durable (COORDINATOR_LOAD_IN_PROGRESS until then, which clients retry): it then
        // never shows a commit a failover could take back, nor hides one that is durable.
        let fetched = coordinator
            .query_group(&string(&id.0), move |core, _, readable_at| {
                let Some(high_watermark) = readable_at else {
                    return Err(GroupError::CoordinatorLoadInProgress);
                };
                Ok(core
                    .fetch_offsets(&group, topics.as_deref(), Some(high_watermark))
                    .into_iter()
                    .map(|(t, p, c)| {
                        let unstable = require_stable && core.txn_offset_pending(&group, &t, p);
                        (t, p, c, unstable)
                    })
                    .collect::<Fetched>())
            })
            .await
            .and_then(|fetched| fetched);
        answers.push((id, fetched));
    }
    if batched {
        let groups = answers
            .into_iter()
            .map(|(id, fetched)| match fetched {
                Ok(fetched) => OffsetFetchResponseGroup::default()
                    .with_group_id(id)
                    .with_topics(response_topics!(
                        fetched,
                        OffsetFetchResponseTopics,
                        OffsetFetchResponsePartitions
                    )),
                Err(e) => OffsetFetchResponseGroup::default()
                    .with_group_id(id)
                    .with_error_code(group_error(&e).code()),
            })
            .collect();
        return Reply::Now(OffsetFetchResponse::default().with_groups(groups));
    }
    let fetched = match answers.pop().map(|(_, f)| f) {
        Some(Ok(fetched)) => fetched,
        Some(Err(e)) => {
            return Reply::Now(
                OffsetFetchResponse::default().with_error_code(group_error(&e).code()),
            )
        }
        None => Vec::new(),
    };
    Reply::Now(OffsetFetchResponse::default().with_topics(response_topics!(
        fetched,
        OffsetFetchResponseTopic,
        OffsetFetchResponsePartition
    )))
}

/// The response's topics; v8+ and older versions use distinct types with the same fields.
macro_rules! response_topics {
    ($fetched:expr, $topic:ident, $partition:ident) => {
        by_topic($fetched)
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|(p, c, unstable)| {
                        let (offset, epoch, metadata) = fields(if unstable { None } else { c });
                        let code = if unstable {
                            kafka_protocol::ResponseError::UnstableOffsetCommit.code()
                        } else {
                            0
                        };
                        $partition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(epoch)
                            .with_metadata(Some(str_bytes(metadata)))
                            .with_error_code(code)
                    })
                    .collect();
                $topic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(partitions)
            })
            .collect()
    };
}
use response_topics;

/// Groups results by topic, keeping the request's order of topics.
fn by_topic(fetched: Fetched) -> ByTopic {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<(i32, Option<CommittedOffset>, bool)>> = BTreeMap::new();
    for (topic, partition, c, unstable) in fetched {
        if !map.contains_key(&topic) {
            order.push(topic.clone());
        }
        map.entry(topic).or_default().push((partition, c, unstable));
    }
    order
        .into_iter()
        .map(|t| {
            let parts = map.remove(&t).unwrap_or_default();
            (t, parts)
        })
        .collect()
}

/// (offset, leader epoch, metadata): -1, -1, "" for a partition without a commit.
fn fields(c: Option<CommittedOffset>) -> (i64, i32, String) {
    c.map_or((-1, -1, String::new()), |c| {
        (c.offset, c.leader_epoch, c.metadata)
    })
}
