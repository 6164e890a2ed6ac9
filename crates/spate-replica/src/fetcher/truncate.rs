//! The truncating phase: OffsetForLeaderEpoch rounds, truncation jobs and where to truncate.

use super::{
    topic_name, until_stopped, DiskOutcome, DiskResult, Item, Job, JobKind, Phase, RoundError,
    Task, Trouble, FETCH_VERSION_MAX, OFFSET_FOR_LEADER_EPOCH_VERSIONS, TOPIC_ID_VERSION,
};
use crate::partition::{FollowerPosition, ReplicaError};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, OffsetForLeaderEpochRequest};
use kafka_protocol::ResponseError;
use spate_client::{ClientError, Connection, Deadline};
use spate_types::{LeaderEpoch, Offset, TopicPartition};
use std::collections::BTreeMap;

impl Task {
    /// OffsetForLeaderEpoch for the truncating partitions, then their truncation; or, from a
    /// leader that takes Fetch v13, straight to fetching (truncation on fetch).
    pub(super) async fn truncate_round(
        &self,
        connection: &mut Connection,
        items: Vec<Item>,
    ) -> Result<(), RoundError> {
        if connection.version_at_most::<FetchRequest>(FETCH_VERSION_MAX)? >= TOPIC_ID_VERSION {
            for item in items {
                self.update(&item, |f| f.phase = Phase::Fetching);
            }
            return Ok(());
        }
        let mut asks = Vec::new();
        for item in items {
            match item.partition.follower_position() {
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
                Ok(position) => match position.last_epoch {
                    // An empty log, or one written before leader epochs: nothing to compare.
                    None => {
                        self.update(&item, |f| f.phase = Phase::Fetching);
                    }
                    Some(last_epoch) => asks.push((item, position, last_epoch)),
                },
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        let range = OFFSET_FOR_LEADER_EPOCH_VERSIONS;
        let version = connection.version_at_most::<OffsetForLeaderEpochRequest>(range.max)?;
        if version < range.min {
            return Err(RoundError::Client(ClientError::Unsupported {
                addr: connection.addr().to_owned(),
                api_key: ApiKey::OffsetForLeaderEpoch,
                client: range,
                broker: connection.broker_versions(ApiKey::OffsetForLeaderEpoch),
            }));
        }
        let mut topics: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
        for (item, _, last_epoch) in &asks {
            topics.entry(item.tp.topic.as_str()).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(item.tp.partition)
                    .with_current_leader_epoch(item.leader_epoch.0)
                    .with_leader_epoch(last_epoch.0),
            );
        }
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.local.0))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetForLeaderTopic::default()
                            .with_topic(topic_name(name))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let deadline = Deadline::after_ms(self.settings.request_timeout_ms);
        let response = until_stopped(&self.stop, connection.send_at(&request, version, deadline))
            .await
            .ok_or(RoundError::Stopped)??;
        let mut answers: BTreeMap<TopicPartition, EpochEndOffset> = BTreeMap::new();
        for topic in response.topics {
            let name = topic.topic.0.to_string();
            for answer in topic.partitions {
                answers.insert(TopicPartition::new(name.clone(), answer.partition), answer);
            }
        }
        let mut pending = Vec::new();
        for (item, position, _) in asks {
            let Some(answer) = answers.remove(&item.tp) else {
                let message = "the OffsetForLeaderEpoch response left the partition out";
                self.partition_trouble(&item, Trouble::Missing, &message);
                continue;
            };
            if let Some(error) = ResponseError::try_from_code(answer.error_code) {
                self.leader_error(&item, error);
                continue;
            }
            match self.truncation(&item, &position, answer.leader_epoch, answer.end_offset) {
                Ok(target) => pending.push((item, position, target)),
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
            }
        }
        // Truncations of different partitions run side by side.
        let jobs: Vec<Job> = pending
            .into_iter()
            .map(|(item, position, target)| {
                let then = if target.complete {
                    Phase::Fetching
                } else {
                    Phase::Truncating
                };
                self.truncate_job(item, position, target.offset, false, then)
            })
            .collect();
        self.finish(jobs).await;
        Ok(())
    }

    /// A truncation of `item` to `offset` (or a restart of its log there, `fully`), started on
    /// the blocking pool. `offset` is never past the log end unless `fully`; a truncation at
    /// the log end cuts no record but drops an epoch that starts there with nothing written
    /// in it (see `PartitionLog::truncate_to`).
    pub(super) fn truncate_job(
        &self,
        item: Item,
        position: FollowerPosition,
        offset: Offset,
        fully: bool,
        then: Phase,
    ) -> Job {
        let handle = Some(self.spawn_truncate(&item, offset, fully));
        Job {
            item,
            position,
            kind: JobKind::Truncate { offset, then },
            handle,
        }
    }

    /// Applies a truncation's result: on success the partition moves to `phase`.
    pub(super) fn after_truncation(
        &self,
        item: &Item,
        position: &FollowerPosition,
        offset: Offset,
        result: DiskResult,
        phase: Phase,
    ) {
        match result {
            Ok(DiskOutcome::Done) => {
                if offset < position.log_end {
                    tracing::info!(partition = %item.tp, leader = %self.leader, leader_epoch = %item.leader_epoch, from = %position.log_end, to = %offset, "truncated to the leader's log");
                }
                self.update(item, |f| {
                    f.phase = phase;
                    f.trouble = None;
                });
            }
            Ok(DiskOutcome::NotFollowing) => self.not_following(item),
            Err(e) => self.partition_trouble(item, Trouble::Local, &e),
        }
    }

    /// Where to truncate given the leader's `(epoch, end offset)`, with this log's own end of
    /// that epoch.
    pub(super) fn truncation(
        &self,
        item: &Item,
        position: &FollowerPosition,
        leader_epoch: i32,
        leader_end_offset: i64,
    ) -> Result<Truncation, ReplicaError> {
        let ours = if leader_epoch >= 0 && leader_end_offset >= 0 {
            item.partition.epoch_end_offset(LeaderEpoch(leader_epoch))?
        } else {
            None
        };
        Ok(truncation_target(
            position.log_end,
            item.partition.high_watermark(),
            leader_epoch,
            leader_end_offset,
            ours,
        ))
    }
}

/// Where to truncate and whether truncation is then complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncation {
    pub offset: Offset,
    /// False when the leader answered with an epoch this log does not have: the log is cut to
    /// where its largest epoch below that one ends, and the leader is asked again.
    pub complete: bool,
}

/// Kafka's `getOffsetTruncationState`: where a follower whose log ends at `log_end` truncates,
/// given the leader's answer `(leader_epoch, leader_end_offset)` (to OffsetForLeaderEpoch for
/// its latest epoch, or a diverging epoch in a Fetch response), and `ours`, this log's own
/// largest epoch ≤ the leader's and where it ends ([`Partition::epoch_end_offset`](crate::Partition::epoch_end_offset)).
///
/// The result never exceeds `log_end`.
pub(crate) fn truncation_target(
    log_end: Offset,
    high_watermark: Offset,
    leader_epoch: i32,
    leader_end_offset: i64,
    ours: Option<(LeaderEpoch, Offset)>,
) -> Truncation {
    let done = |offset: Offset| Truncation {
        offset: offset.min(log_end),
        complete: true,
    };
    if leader_end_offset < 0 {
        // UNDEFINED: the leader knows no epoch as old as ours. Kafka keeps what is committed.
        return done(high_watermark);
    }
    let leader_end = Offset(leader_end_offset);
    if leader_epoch < 0 {
        return done(leader_end);
    }
    match ours {
        // This log does not have the leader's epoch: keep what precedes our next epoch and
        // ask again (KIP-279), unless that cuts nothing (a leader breaking the protocol).
        Some((epoch, end)) if epoch.0 != leader_epoch && end < log_end => Truncation {
            offset: end,
            complete: false,
        },
        Some((epoch, end)) if epoch.0 == leader_epoch => done(end.min(leader_end)),
        _ => done(leader_end),
    }
}
