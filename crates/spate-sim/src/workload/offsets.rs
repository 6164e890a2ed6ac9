//! Group offsets: the consumer commits its positions to group [`GROUP`] as a standalone
//! consumer does (generation -1, no member; Kafka accepts that for a group with no members),
//! and the group members of `members.rs` commit to theirs with their generation, through the
//! coordinator FindCoordinator names; at the end they are read back with OffsetFetch. The
//! history checks invariant 6 with them: an acknowledged commit survives.

use super::{topic_name, Client, NONE, REQUEST_TIMEOUT_MS};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use std::collections::BTreeMap;

/// The standalone consumer's group.
pub const GROUP: &str = "sim-group";
/// The last versions of the simple forms (a single coordinator key; one group per fetch).
const FIND_COORDINATOR_VERSION_MAX: i16 = 3;
const OFFSET_COMMIT_VERSION_MAX: i16 = 7;
const OFFSET_FETCH_VERSION_MAX: i16 = 7;

/// FindCoordinator's key types.
const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// A group's (or a transactional id's) coordinator as last found, and the topic whose offsets
/// it commits and fetches.
pub struct Committer {
    key: StrBytes,
    key_type: i8,
    topic: &'static str,
    coordinator: Option<String>,
}

impl Committer {
    /// For `group`'s offsets of the workload topic.
    pub fn new(group: &'static str) -> Committer {
        Committer::for_group(group.to_owned(), super::TOPIC)
    }

    /// For `group`'s offsets of `topic`.
    pub fn for_group(group: String, topic: &'static str) -> Committer {
        Committer {
            key: StrBytes::from_string(group),
            key_type: KEY_GROUP,
            topic,
            coordinator: None,
        }
    }

    /// For the transaction coordinator of `transactional_id` (only [`Committer::coordinator`]
    /// and the failure bookkeeping apply).
    pub fn for_transaction(transactional_id: String) -> Committer {
        Committer {
            key: StrBytes::from_string(transactional_id),
            key_type: KEY_TRANSACTION,
            topic: super::TOPIC,
            coordinator: None,
        }
    }

    pub fn group_id(&self) -> GroupId {
        GroupId(self.key.clone())
    }

    /// The coordinator, looked up when not known.
    pub async fn coordinator(&mut self, client: &mut Client) -> Result<String, String> {
        if let Some(c) = &self.coordinator {
            return Ok(c.clone());
        }
        client.next_bootstrap = client.next_bootstrap % client.nodes + 1;
        let addr = super::node_addr(client.next_bootstrap);
        let request = FindCoordinatorRequest::default()
            .with_key(self.key.clone())
            .with_key_type(self.key_type);
        let response = client
            .call(
                &addr,
                &request,
                FIND_COORDINATOR_VERSION_MAX,
                REQUEST_TIMEOUT_MS,
            )
            .await
            .inspect_err(|_| client.forget(&addr))?;
        if response.error_code != NONE {
            return Err(format!(
                "{addr}: FindCoordinator error {}",
                response.error_code
            ));
        }
        let coordinator = format!("{}:{}", response.host, response.port);
        self.coordinator = Some(coordinator.clone());
        Ok(coordinator)
    }

    /// The coordinator said it is not (or not yet) the group's: look it up again next time.
    pub fn coordinator_lost(&mut self) {
        self.coordinator = None;
    }

    /// On any failure the coordinator is looked up again next time.
    pub fn failed(&mut self, client: &mut Client, coordinator: &str, why: String) -> String {
        client.forget(coordinator);
        self.coordinator = None;
        why
    }

    /// Commits `positions` (partition → next offset to read) as `member` (generation and
    /// member id; -1 and "" for a standalone consumer); `Ok` only when every partition's commit
    /// was acknowledged.
    pub async fn commit(
        &mut self,
        client: &mut Client,
        member: (i32, &str),
        positions: &BTreeMap<i32, i64>,
    ) -> Result<(), String> {
        let coordinator = self.coordinator(client).await?;
        let request = OffsetCommitRequest::default()
            .with_group_id(self.group_id())
            .with_generation_id_or_member_epoch(member.0)
            .with_member_id(StrBytes::from_string(member.1.to_owned()))
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(self.topic))
                .with_partitions(
                    positions
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                        })
                        .collect(),
                )]);
        let response = match client
            .call(
                &coordinator,
                &request,
                OFFSET_COMMIT_VERSION_MAX,
                REQUEST_TIMEOUT_MS,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.failed(client, &coordinator, e)),
        };
        let codes: Vec<i16> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect();
        if codes.len() != positions.len() || codes.iter().any(|c| *c != NONE) {
            return Err(self.failed(
                client,
                &coordinator,
                format!("{coordinator}: OffsetCommit errors {codes:?}"),
            ));
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions` (a partition with none is left out).
    pub async fn fetch(
        &mut self,
        client: &mut Client,
        partitions: i32,
    ) -> Result<BTreeMap<i32, i64>, String> {
        let coordinator = self.coordinator(client).await?;
        let request = OffsetFetchRequest::default()
            .with_group_id(self.group_id())
            .with_require_stable(true)
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(self.topic))
                .with_partition_indexes((0..partitions).collect())]));
        let response = match client
            .call(
                &coordinator,
                &request,
                OFFSET_FETCH_VERSION_MAX,
                REQUEST_TIMEOUT_MS,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.failed(client, &coordinator, e)),
        };
        if response.error_code != NONE {
            return Err(self.failed(
                client,
                &coordinator,
                format!("{coordinator}: OffsetFetch error {}", response.error_code),
            ));
        }
        let mut committed = BTreeMap::new();
        for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
            if p.error_code != NONE {
                return Err(self.failed(
                    client,
                    &coordinator,
                    format!(
                        "{coordinator}: OffsetFetch partition error {}",
                        p.error_code
                    ),
                ));
            }
            if p.committed_offset >= 0 {
                committed.insert(p.partition_index, p.committed_offset);
            }
        }
        Ok(committed)
    }
}
