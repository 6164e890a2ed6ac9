//! The fetching phase: one Fetch round, and what its answers call for.

use super::{
    topic_name, until_stopped, DiskOutcome, DiskResult, Item, Job, JobKind, LeaderMarks, Phase,
    RoundError, Task, Trouble, BATCH_LENGTH_END, FETCH_VERSION_MAX, LAST_FETCHED_EPOCH_VERSION,
    TOPIC_ID_VERSION,
};
use crate::partition::{FollowerPosition, ReplicaError};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use kafka_protocol::ResponseError;
use spate_client::{Connection, Deadline};
use spate_types::{Offset, TopicPartition};
use std::collections::BTreeMap;

impl Task {
    /// One Fetch for the fetching partitions, then the appends and truncations it calls for;
    /// returns when all of them are done, so the next Fetch reports durable offsets.
    pub(super) async fn fetch_round(
        &self,
        connection: &mut Connection,
        items: Vec<Item>,
    ) -> Result<(), RoundError> {
        let version = connection.version_at_most::<FetchRequest>(FETCH_VERSION_MAX)?;
        let mut asked: BTreeMap<TopicPartition, (Item, FollowerPosition)> = BTreeMap::new();
        let mut repairs = Vec::new();
        for item in items {
            match item.partition.follower_position() {
                // A damaged batch out of the ISR: cut it away first (see `damage.rs`).
                Ok(position) => match item.partition.repair_offset() {
                    Some(offset) => {
                        tracing::info!(partition = %item.tp, %offset, "truncating below the damaged batch");
                        repairs.push(self.truncate_job(
                            item,
                            position,
                            offset,
                            false,
                            Phase::Fetching,
                        ));
                    }
                    None => {
                        asked.insert(item.tp.clone(), (item, position));
                    }
                },
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
            }
        }
        if !repairs.is_empty() {
            self.finish(repairs).await;
        }
        if asked.is_empty() {
            return Ok(());
        }
        // By id from v13, so that only the replica of this very topic answers; the response
        // names topics the same way.
        let by_id = version >= TOPIC_ID_VERSION;
        let mut topics: BTreeMap<(&str, uuid::Uuid), Vec<FetchPartition>> = BTreeMap::new();
        for (item, position) in asked.values() {
            let last_fetched_epoch = match position.last_epoch {
                Some(epoch) if version >= LAST_FETCHED_EPOCH_VERSION => epoch.0,
                _ => -1,
            };
            let topic_id = item.partition.topic_id();
            topics
                .entry((item.tp.topic.as_str(), topic_id))
                .or_default()
                .push(
                    FetchPartition::default()
                        .with_partition(item.tp.partition)
                        .with_current_leader_epoch(item.leader_epoch.0)
                        .with_fetch_offset(position.log_end.0)
                        .with_last_fetched_epoch(last_fetched_epoch)
                        .with_log_start_offset(position.log_start.0)
                        .with_partition_max_bytes(self.settings.partition_max_bytes),
                );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(self.local.0))
            .with_max_wait_ms(self.settings.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(self.settings.response_max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|((name, topic_id), partitions)| {
                        let topic = FetchTopic::default().with_partitions(partitions);
                        if by_id {
                            topic.with_topic_id(topic_id)
                        } else {
                            topic.with_topic(topic_name(name))
                        }
                    })
                    .collect(),
            );
        let names: BTreeMap<uuid::Uuid, String> = asked
            .values()
            .map(|(item, _)| (item.partition.topic_id(), item.tp.topic.clone()))
            .collect();
        let wait_ms = u64::try_from(self.settings.max_wait_ms).unwrap_or(0);
        let deadline = Deadline::after_ms(wait_ms.saturating_add(self.settings.request_timeout_ms));
        let response = until_stopped(&self.stop, connection.send_at(&request, version, deadline))
            .await
            .ok_or(RoundError::Stopped)??;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(RoundError::Leader(error));
        }
        let mut jobs = Vec::new();
        for topic in response.responses {
            let name = if by_id {
                // An id not asked for: its partitions are not looked at.
                let Some(name) = names.get(&topic.topic_id) else {
                    continue;
                };
                name.clone()
            } else {
                topic.topic.0.to_string()
            };
            for data in topic.partitions {
                let tp = TopicPartition::new(name.clone(), data.partition_index);
                // Not asked for, or already seen in this response.
                let Some((item, position)) = asked.remove(&tp) else {
                    continue;
                };
                if !self.is_current(&item) {
                    continue;
                }
                if let Some(error) = ResponseError::try_from_code(data.error_code) {
                    if error == ResponseError::OffsetOutOfRange {
                        self.out_of_range(item, position, data.log_start_offset, &mut jobs);
                    } else {
                        self.leader_error(&item, error);
                    }
                    continue;
                }
                let diverging = &data.diverging_epoch;
                if diverging.epoch >= 0 {
                    let (epoch, end_offset) = (diverging.epoch, diverging.end_offset);
                    // Our latest epoch is newer than the leader's answer: cut to its end, even
                    // if no record goes (an epoch we led in without writing).
                    let newer = position.last_epoch.is_some_and(|e| e.0 > epoch);
                    match self.truncation(&item, &position, epoch, end_offset) {
                        Ok(target) if target.offset < position.log_end || newer => {
                            tracing::debug!(partition = %item.tp, epoch, end_offset, "the leader reports a diverging epoch");
                            // Kafka stays fetching: the next request's last fetched epoch
                            // tells the leader whether the logs agree now.
                            jobs.push(self.truncate_job(
                                item,
                                position,
                                target.offset,
                                false,
                                Phase::Fetching,
                            ));
                        }
                        Ok(_) => {
                            // Nothing to cut: only a leader breaking the protocol says so.
                            // Wait rather than ask again at once.
                            let message = format!("the leader reports diverging epoch {epoch} ending at {end_offset}, but the log agrees with it");
                            self.partition_trouble(&item, Trouble::Diverging, &message);
                        }
                        Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
                    }
                    continue;
                }
                let records = data.records.unwrap_or_default();
                let whole = whole_batches_len(&records);
                if whole < records.len() {
                    tracing::trace!(partition = %item.tp, dropped = records.len() - whole, "partial batch at the end of a fetch response");
                }
                let records = records.slice(..whole);
                let marks = LeaderMarks {
                    high_watermark: Offset(data.high_watermark),
                    log_start: Offset(data.log_start_offset),
                };
                if records.is_empty() && marks.log_start <= position.log_start {
                    // Nothing to write, no fsync, no log start to move: take the leader's high
                    // watermark in here rather than on the blocking pool, so idle partitions
                    // cost one lock.
                    let result = self.append(&item, &records, marks);
                    self.after_append(&item, result);
                } else {
                    let handle = self.spawn_append(&item, records, marks);
                    jobs.push(Job {
                        item,
                        position,
                        kind: JobKind::Append,
                        handle: Some(handle),
                    });
                }
            }
        }
        for (item, _) in asked.values() {
            let message = "the Fetch response left the partition out";
            self.partition_trouble(item, Trouble::Missing, &message);
        }
        self.finish(jobs).await;
        Ok(())
    }

    /// OFFSET_OUT_OF_RANGE: below the leader's log start the log starts over there (Kafka's
    /// `truncateFullyAndStartAt`); past its log end the logs diverged: truncate again.
    fn out_of_range(
        &self,
        item: Item,
        position: FollowerPosition,
        leader_log_start: i64,
        jobs: &mut Vec<Job>,
    ) {
        if leader_log_start >= 0 && position.log_end.0 < leader_log_start {
            let offset = Offset(leader_log_start);
            tracing::info!(partition = %item.tp, leader = %self.leader, log_end = %position.log_end, leader_log_start = %offset, "behind the leader's log start; starting the log over there");
            jobs.push(self.truncate_job(item, position, offset, true, Phase::Fetching));
        } else {
            let message = format!(
                "fetch offset {} is out of range on the leader; truncating again",
                position.log_end
            );
            self.partition_trouble(
                &item,
                Trouble::Leader(ResponseError::OffsetOutOfRange.code()),
                &message,
            );
            self.update(&item, |f| f.phase = Phase::Truncating);
        }
    }

    pub(super) fn after_append(&self, item: &Item, result: DiskResult) {
        match result {
            Ok(DiskOutcome::Done) => {
                self.update(item, |f| {
                    if f.trouble.take().is_some() {
                        tracing::info!(partition = %item.tp, "fetching again");
                    }
                });
            }
            Ok(DiskOutcome::NotFollowing) => self.not_following(item),
            Err(ReplicaError::Diverged { source, .. }) => {
                tracing::info!(partition = %item.tp, leader = %self.leader, error = %source, "the leader's batches do not follow the local log; truncating again");
                self.update(item, |f| f.phase = Phase::Truncating);
            }
            Err(e) => self.partition_trouble(item, Trouble::Local, &e),
        }
    }
}

/// The length of the whole batches at the start of `records`: a leader cuts a response at its
/// byte limit, possibly inside a batch, which is fetched again in full next time. A negative
/// length counts as whole so that validation refuses it rather than it being dropped here.
pub(crate) fn whole_batches_len(records: &[u8]) -> usize {
    let mut pos = 0usize;
    while let Some(header) = records.get(pos..pos + BATCH_LENGTH_END) {
        let length = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let Ok(length) = usize::try_from(length) else {
            return records.len();
        };
        let end = pos + BATCH_LENGTH_END + length;
        if end > records.len() {
            break;
        }
        pos = end;
    }
    pos
}
