//! Reads: consumers' (and their checks), the leader's coordinators', and followers' fetches,
//! and the leader's answer to OffsetForLeaderEpoch.

use super::{FollowerFetch, Partition, PartitionRead, ReplicaError};
use crate::core::{Command, Event, FetchRefusal};
use spate_log::ReadPlan;
use spate_types::{LeaderEpoch, Offset};

impl Partition {
    fn fetch_refusal(&self, e: FetchRefusal, requested: Option<LeaderEpoch>) -> ReplicaError {
        let tp = self.tp.clone();
        match e {
            FetchRefusal::FencedLeaderEpoch { current } => ReplicaError::FencedLeaderEpoch {
                tp,
                requested: requested.unwrap_or(LeaderEpoch(-1)),
                current,
            },
            FetchRefusal::UnknownLeaderEpoch { current } => ReplicaError::UnknownLeaderEpoch {
                tp,
                requested: requested.unwrap_or(LeaderEpoch(-1)),
                current,
            },
            FetchRefusal::NotLeader {
                leader,
                leader_epoch,
            } => ReplicaError::NotLeader {
                tp,
                leader,
                leader_epoch,
            },
            FetchRefusal::NotReplica { replica } => ReplicaError::NotReplica { tp, replica },
            FetchRefusal::HighWatermarkNotSettled {
                high_watermark,
                epoch_start,
            } => ReplicaError::HighWatermarkNotSettled {
                tp,
                high_watermark,
                epoch_start,
            },
        }
    }

    /// Checks a consumer may read here (the leader, in the epoch it names, if any), and that
    /// the leader is not damaged: this also answers OffsetForLeaderEpoch, by which a follower
    /// truncates to the leader's log.
    pub fn check_consumer(
        &self,
        current_leader_epoch: Option<LeaderEpoch>,
    ) -> Result<(), ReplicaError> {
        let core = self.core()?;
        self.check_damage(&core)?;
        core.check_fetch(None, current_leader_epoch)
            .map_err(|e| self.fetch_refusal(e, current_leader_epoch))
    }

    /// Checks a consumer may read records or offsets here: [`Partition::check_consumer`],
    /// and the high watermark settled (a new leader's may be below what the previous leader
    /// published until its followers catch up; KIP-207).
    pub fn check_consumer_read(
        &self,
        current_leader_epoch: Option<LeaderEpoch>,
    ) -> Result<(), ReplicaError> {
        let core = self.core()?;
        self.check_damage(&core)?;
        core.check_consumer_read(current_leader_epoch)
            .map_err(|e| self.fetch_refusal(e, current_leader_epoch))
    }

    /// Plans a consumer's read of committed data (below the high watermark) from `start`. The
    /// disk read itself happens in [`ReadPlan::load`], outside the partition lock.
    pub fn read(
        &self,
        start: Offset,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<PartitionRead, ReplicaError> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            let plan = log.plan_read(start, max_bytes, high_watermark, min_one_batch)?;
            Ok(PartitionRead {
                plan,
                high_watermark,
                last_stable_offset: log.last_stable_offset(high_watermark),
                log_start_offset: log.log_start_offset(),
                log_end_offset: log.log_end_offset(),
                diverging_epoch: None,
            })
        })
    }

    /// Plans a read of everything from `start` up to the log end, committed or not: for the
    /// leader's own coordinators loading a partition they now lead (as its leader, its log is
    /// the partition's truth). Never for clients.
    pub fn read_to_log_end(
        &self,
        start: Offset,
        max_bytes: usize,
    ) -> Result<PartitionRead, ReplicaError> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            let end = log.log_end_offset();
            let plan = log.plan_read(start, max_bytes, end, true)?;
            Ok(PartitionRead {
                plan,
                high_watermark,
                last_stable_offset: log.last_stable_offset(high_watermark),
                log_start_offset: log.log_start_offset(),
                log_end_offset: end,
                diverging_epoch: None,
            })
        })
    }

    /// A follower's fetch at `fetch_offset` (everything below is durable on it): records the
    /// follower's progress (which may move the high watermark or propose an ISR change) and
    /// plans a read up to the log end. A fetch offset past the log end is out of range. A
    /// follower whose last fetched epoch shows its log diverged from this one (Kafka's
    /// `validateFetchOffsetAndMaybeGetDivergingEpoch`) gets the diverging epoch, no records,
    /// and no progress: its offsets count only once its log agrees with this one.
    pub fn read_for_follower(
        &self,
        fetch: FollowerFetch,
    ) -> Result<(PartitionRead, Vec<Command>), ReplicaError> {
        let mut core = self.core()?;
        core.check_fetch(Some(fetch.replica), fetch.current_leader_epoch)
            .map_err(|e| self.fetch_refusal(e, fetch.current_leader_epoch))?;
        self.check_damage(&core)?;
        let (plan, log_start_offset, log_end_offset, diverging_epoch) = self.with_log(|log| {
            let end = log.log_end_offset();
            let diverging = fetch
                .last_fetched_epoch
                .and_then(|last| log.epoch_end_offset(last).map(|e| (last, e)))
                .and_then(|(last, (epoch, epoch_end))| {
                    (epoch < last || epoch_end < fetch.fetch_offset).then_some((epoch, epoch_end))
                });
            let plan = if diverging.is_some() {
                ReadPlan::empty()
            } else {
                log.plan_read(fetch.fetch_offset, fetch.max_bytes, end, true)?
            };
            Ok((plan, log.log_start_offset(), end, diverging))
        })?;
        let commands = if diverging_epoch.is_some() {
            Vec::new()
        } else {
            self.step(
                &mut core,
                Event::FollowerFetch {
                    replica: fetch.replica,
                    fetch_offset: fetch.fetch_offset,
                },
            )
        };
        Ok((
            PartitionRead {
                plan,
                high_watermark: core.high_watermark(),
                // As published by the step above (followers do not read it).
                last_stable_offset: *self.last_stable_offset.borrow(),
                log_start_offset,
                log_end_offset,
                diverging_epoch,
            },
            commands,
        ))
    }

    /// KIP-101 OffsetForLeaderEpoch, answered by the leader: the largest epoch ≤ `epoch` in
    /// this log and the offset where it ended (the log end for the current epoch).
    pub fn epoch_end_offset(
        &self,
        epoch: LeaderEpoch,
    ) -> Result<Option<(LeaderEpoch, Offset)>, ReplicaError> {
        self.with_log(|log| Ok(log.epoch_end_offset(epoch)))
    }
}
