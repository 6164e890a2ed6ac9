//! Disk jobs: truncations and appends on the blocking pool, and waiting for a round's jobs.

use super::{
    joined, spawn_disk, DiskJob, DiskOutcome, DiskResult, Item, Job, JobKind, LeaderMarks, Task,
};
use crate::core::Role;
use crate::partition::{FollowerPosition, Partition, ReplicaError};
use bytes::Bytes;
use spate_log::FollowerAppendError;
use spate_types::{Clock, LeaderEpoch, NodeId, Offset};

impl Task {
    /// Waits for every job of the round and applies its result.
    pub(super) async fn finish(&self, jobs: Vec<Job>) {
        for job in jobs {
            let result = match job.handle {
                Some(handle) => joined(handle.await),
                None => Ok(DiskOutcome::Done),
            };
            match job.kind {
                JobKind::Append => self.after_append(&job.item, result),
                JobKind::Truncate { offset, then } => {
                    self.after_truncation(&job.item, &job.position, offset, result, then)
                }
            }
        }
    }

    /// `truncate_to(offset)` (or `truncate_fully(offset)`) on the blocking pool, if the
    /// replica still follows this leader in this epoch.
    pub(super) fn spawn_truncate(&self, item: &Item, offset: Offset, fully: bool) -> DiskJob {
        let partition = item.partition.clone();
        let (leader, epoch) = (self.leader, item.leader_epoch);
        spawn_disk(move || {
            if !following(&partition.follower_position()?, leader, epoch) {
                return Ok(DiskOutcome::NotFollowing);
            }
            let commands = if fully {
                partition.truncate_fully(offset)?
            } else {
                partition.truncate_to(offset)?
            };
            if !commands.is_empty() {
                tracing::debug!(partition = %partition.topic_partition(), ?commands, "commands after truncation (not for the fetcher)");
            }
            Ok(DiskOutcome::Done)
        })
    }

    pub(super) fn spawn_append(&self, item: &Item, records: Bytes, leader: LeaderMarks) -> DiskJob {
        let partition = item.partition.clone();
        let (leader_id, epoch) = (self.leader, item.leader_epoch);
        let clock = self.settings.clock.clone();
        spawn_disk(move || {
            append_from_leader(&partition, leader_id, epoch, &records, leader, &*clock)
        })
    }

    pub(super) fn append(&self, item: &Item, records: &[u8], leader: LeaderMarks) -> DiskResult {
        append_from_leader(
            &item.partition,
            self.leader,
            item.leader_epoch,
            records,
            leader,
            &*self.settings.clock,
        )
    }
}

/// The follower's append of what the leader returned (blocking: it fsyncs), then the leader's
/// log start offset taken in. A log emptied at an offset inside the leader's first batch (a
/// log start set by DeleteRecords falls inside batches) starts over at that batch's base
/// offset, as Kafka's follower does. The time handed to the replica is `clock`'s.
fn append_from_leader(
    partition: &Partition,
    leader: NodeId,
    epoch: LeaderEpoch,
    records: &[u8],
    marks: LeaderMarks,
    clock: &dyn Clock,
) -> DiskResult {
    let high_watermark = marks.high_watermark;
    let position = partition.follower_position()?;
    if !following(&position, leader, epoch) {
        return Ok(DiskOutcome::NotFollowing);
    }
    let commands = match partition.append_from_leader(records, high_watermark, clock.now_ms()) {
        Err(ReplicaError::Diverged {
            source: FollowerAppendError::NonMonotonicAppend { .. },
            ..
        }) if position.log_start == position.log_end
            && first_batch_straddles(records, position.log_end) =>
        {
            let base = Offset(batch_base_offset(records).unwrap_or(position.log_end.0));
            tracing::info!(partition = %partition.topic_partition(), log_start = %position.log_start, batch_base = %base, "the leader's first batch starts below the empty log; starting the log at it");
            partition.truncate_fully(base)?;
            partition.append_from_leader(records, high_watermark, clock.now_ms())?
        }
        other => other?,
    };
    if let Some(log_start) = partition.follow_leader_log_start(marks.log_start)? {
        tracing::info!(partition = %partition.topic_partition(), %log_start, "log start raised to the leader's");
    }
    if !commands.is_empty() {
        tracing::debug!(partition = %partition.topic_partition(), ?commands, "commands after a follower append (not for the fetcher)");
    }
    Ok(DiskOutcome::Done)
}

fn following(position: &FollowerPosition, leader: NodeId, epoch: LeaderEpoch) -> bool {
    position.role == (Role::Follower { leader }) && position.leader_epoch == epoch
}

fn batch_base_offset(records: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = records.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// The first batch holds `offset` without starting at it (base < offset ≤ last).
pub(super) fn first_batch_straddles(records: &[u8], offset: Offset) -> bool {
    // Last offset delta: after base offset (8), length (4), leader epoch (4), magic (1),
    // CRC (4) and attributes (2).
    let (Some(base), Some(delta)) = (
        batch_base_offset(records),
        records
            .get(23..27)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes),
    ) else {
        return false;
    };
    base < offset.0 && base.saturating_add(i64::from(delta)) >= offset.0
}
