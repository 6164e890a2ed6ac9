//! Committed offsets: validating commits, staging transactional ones, applying stored
//! records, and reading them back.

use super::GroupCoordinator;
use crate::error::GroupError;
use crate::group::{Group, GroupState};
use crate::membership::restore_group;
use crate::records::{OffsetsRecord, StoredOffset};
use crate::requests::{CommitRequest, CommittedOffset, GroupOffset};

/// Where a record was appended to its offsets partition, and that partition's high watermark
/// then: the record is durable once the high watermark passes `last_offset`.
#[derive(Clone, Copy, Debug)]
pub struct Stored {
    /// The last offset of the record's batch.
    pub last_offset: i64,
    pub high_watermark: i64,
}

impl GroupCoordinator {
    /// Validates an OffsetCommit and returns, per partition, the record to store or why not.
    /// Nothing is applied: store the records, then [`GroupCoordinator::apply_record`] them.
    pub fn prepare_commit(
        &mut self,
        now: i64,
        req: &CommitRequest,
    ) -> Result<Vec<Result<OffsetsRecord, GroupError>>, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        match self.groups.get_mut(&req.group_id) {
            None if req.generation_id < 0 => {
                self.groups
                    .insert(req.group_id.clone(), Group::new(req.group_id.clone(), now));
            }
            None => return Err(GroupError::IllegalGeneration),
            Some(g) => {
                if g.state == GroupState::Dead {
                    return Err(GroupError::CoordinatorNotAvailable);
                }
                if let Some(instance) = &req.instance_id {
                    if g.static_members.get(instance) != Some(&req.member_id) {
                        return Err(GroupError::FencedInstanceId);
                    }
                }
                let fenced = !crate::planted::commits_ignore_generation();
                if fenced && !(req.generation_id < 0 && g.state == GroupState::Empty) {
                    let Some(m) = g.members.get_mut(&req.member_id) else {
                        return Err(GroupError::UnknownMemberId);
                    };
                    if req.generation_id != g.generation {
                        return Err(GroupError::IllegalGeneration);
                    }
                    if g.state == GroupState::CompletingRebalance {
                        return Err(GroupError::RebalanceInProgress);
                    }
                    m.keep_alive(now);
                }
            }
        }
        Ok(self.offset_records(now, req))
    }

    /// The records of a commit's offsets, or why each cannot be stored.
    fn offset_records(
        &self,
        now: i64,
        req: &CommitRequest,
    ) -> Vec<Result<OffsetsRecord, GroupError>> {
        let max = self.settings.offset_metadata_max_bytes;
        req.offsets
            .iter()
            .map(|(topic, partition, offset, epoch, metadata)| {
                let metadata = metadata.clone().unwrap_or_default();
                if metadata.len() > max {
                    return Err(GroupError::OffsetMetadataTooLarge);
                }
                Ok(OffsetsRecord::Offset {
                    group: req.group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: Some(StoredOffset {
                        offset: *offset,
                        leader_epoch: *epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    }),
                })
            })
            .collect()
    }

    /// Validates a TxnOffsetCommit as Kafka does: a request naming no member (the producer
    /// only knows the group id) is not checked against the group's members; one naming a
    /// member or generation is checked like an OffsetCommit. The records are stored in the
    /// producer's transactional batch, then held with [`GroupCoordinator::stage_txn_offsets`].
    pub fn prepare_txn_commit(
        &mut self,
        now: i64,
        req: &CommitRequest,
    ) -> Result<Vec<Result<OffsetsRecord, GroupError>>, GroupError> {
        if req.generation_id >= 0 || !req.member_id.is_empty() || req.instance_id.is_some() {
            return self.prepare_commit(now, req);
        }
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(req.group_id.clone(), now));
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        Ok(self.offset_records(now, req))
    }

    /// Holds stored transactional offset records until the producer's transaction ends.
    pub fn stage_txn_offsets(&mut self, producer_id: i64, records: Vec<OffsetsRecord>) {
        let staged: Vec<(u64, OffsetsRecord)> = records
            .into_iter()
            .map(|r| (self.take_position(), r))
            .collect();
        self.pending_txn.stage(producer_id, staged);
    }

    fn take_position(&mut self) -> u64 {
        self.next_position += 1;
        self.next_position
    }

    /// A marker for `producer_id` was written to an offsets partition (the groups for which
    /// `in_partition` holds): a commit applies its pending offsets, an abort drops them. A
    /// group that gets offsets from a commit becomes an exactly-once group
    /// ([`GroupCoordinator::is_exactly_once`]). The replay of an offsets partition ends its
    /// transactions here too, so a coordinator taking over knows the same groups as such.
    pub fn complete_txn(
        &mut self,
        now: i64,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) -> usize {
        let applied = self.pending_txn.complete(producer_id, commit, in_partition);
        let count = applied.len();
        for (position, record) in applied {
            let group = record.group().to_owned();
            self.apply_at(now, record, position, None);
            if let Some(g) = self.groups.get_mut(&group) {
                if !g.exactly_once {
                    tracing::debug!(group = %group, producer_id,
                        "exactly-once group: offsets committed in a transaction");
                }
                g.exactly_once = true;
            }
        }
        count
    }

    /// Whether `group` commits its offsets inside transactions (an exactly-once group, whose
    /// consumers read with `isolation.level=read_committed`): a transactional offset commit of
    /// it was applied at its COMMIT, live or in the replay of the offsets log, since the group
    /// was last created. Sticky until the group goes (deleted, expired or unloaded).
    pub fn is_exactly_once(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.exactly_once)
    }

    /// Whether a transaction has an offset of this partition pending (KIP-447).
    pub fn txn_offset_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.is_pending(group, topic, partition)
    }

    /// Applies a stored record known to be durable.
    pub fn apply_record(&mut self, now: i64, record: OffsetsRecord) {
        self.apply_stored(now, record, None);
    }

    /// Applies a stored record: a commit after its append, or a record replayed at start.
    /// With `stored`, the record may not be durable yet: until the offsets partition's high
    /// watermark passes it, OffsetFetch shows the commit it replaced
    /// ([`GroupCoordinator::fetch_offsets`]).
    pub fn apply_stored(&mut self, now: i64, record: OffsetsRecord, stored: Option<Stored>) {
        let position = self.take_position();
        self.apply_at(now, record, position, stored);
    }

    /// Applies `record`, which stands at `position` in the offsets log: an offset set by a
    /// record further on (a plain commit appended after a transactional one) stays.
    fn apply_at(&mut self, now: i64, record: OffsetsRecord, position: u64, stored: Option<Stored>) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(group.clone(), now));
                    let offsets = self.offsets.entry(group.clone()).or_default();
                    let key = (topic, partition);
                    if offsets.get(&key).is_some_and(|c| c.position > position) {
                        return;
                    }
                    let replaced = offsets.insert(
                        key.clone(),
                        CommittedOffset {
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata,
                            commit_timestamp_ms: v.commit_timestamp_ms,
                            position,
                        },
                    );
                    match stored {
                        Some(Stored {
                            last_offset,
                            high_watermark,
                        }) => {
                            let earlier = self
                                .unstable
                                .entry(group)
                                .or_default()
                                .entry(key)
                                .or_default();
                            if replaced.is_none() {
                                // A fresh key: what an earlier life of it replaced is gone.
                                earlier.clear();
                            }
                            earlier.retain(|(last, _)| *last >= high_watermark);
                            earlier.push((last_offset, replaced));
                        }
                        // Durable, and the newest: nothing older is shown any more.
                        None => {
                            if let Some(unstable) = self.unstable.get_mut(&group) {
                                unstable.remove(&key);
                            }
                        }
                    }
                }
                None => {
                    if let Some(unstable) = self.unstable.get_mut(&group) {
                        unstable.remove(&(topic.clone(), partition));
                    }
                    if let Some(offsets) = self.offsets.get_mut(&group) {
                        offsets.remove(&(topic, partition));
                        if offsets.is_empty() {
                            self.offsets.remove(&group);
                        }
                    }
                }
            },
            OffsetsRecord::Group { group, value } => match value {
                Some(v) => {
                    let mut g = restore_group(group.clone(), v, now);
                    // The group record carries membership, not how offsets are committed: a
                    // rebalance after a transactional commit keeps the group exactly-once.
                    g.exactly_once = self.is_exactly_once(&group);
                    self.groups.insert(group, g);
                }
                None => {
                    if self.offsets.contains_key(&group) {
                        self.groups.insert(group.clone(), Group::new(group, now));
                    } else {
                        self.groups.remove(&group);
                    }
                }
            },
        }
    }

    /// OffsetFetch for one group: `None` topics means every committed partition.
    pub fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
        high_watermark: Option<i64>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let offsets = self.offsets.get(group);
        let visible = |key: &(String, i32)| self.durable_offset(group, key, high_watermark);
        match topics {
            None => offsets
                .into_iter()
                .flat_map(|o| o.keys())
                .filter_map(|key| visible(key).map(|c| (key.0.clone(), key.1, Some(c))))
                .collect(),
            Some(topics) => topics
                .iter()
                .flat_map(|(t, parts)| {
                    parts.iter().map(move |p| {
                        let key = (t.clone(), *p);
                        let c = visible(&key);
                        (key.0, key.1, c)
                    })
                })
                .collect(),
        }
    }

    /// How many replaced commits are kept for readers, in all.
    #[cfg(test)]
    pub fn unstable_entries(&self) -> usize {
        self.unstable
            .values()
            .flat_map(|u| u.values())
            .map(Vec::len)
            .sum()
    }

    /// The newest commit of `key` below `high_watermark` (the group's offsets partition's, as
    /// its leader knows it; `None`: every applied commit counts): a commit a failover could
    /// still take back is not shown, the one it replaced is (Kafka serves the offsets of
    /// commits whose append completed).
    fn durable_offset(
        &self,
        group: &str,
        key: &(String, i32),
        high_watermark: Option<i64>,
    ) -> Option<CommittedOffset> {
        let current = self.offsets.get(group)?.get(key)?;
        let high_watermark =
            high_watermark.filter(|_| !crate::planted::fetch_shows_undurable_commits());
        let earlier = high_watermark.and_then(|hw| {
            let unstable = self.unstable.get(group)?.get(key)?;
            // Oldest first: (last offset of a commit's batch, the commit it replaced).
            let first_unstable = unstable.iter().position(|(last, _)| *last >= hw)?;
            Some(unstable[first_unstable].1.clone())
        });
        match earlier {
            Some(earlier) => earlier,
            None => Some(current.clone()),
        }
    }

    /// Every committed offset, with whether its group is exactly-once, for lag.
    pub fn all_offsets(&self) -> Vec<GroupOffset> {
        self.offsets
            .iter()
            .flat_map(|(g, o)| {
                let exactly_once = self.is_exactly_once(g);
                o.iter().map(move |((t, p), c)| GroupOffset {
                    group: g.clone(),
                    topic: t.clone(),
                    partition: *p,
                    offset: c.offset,
                    exactly_once,
                })
            })
            .collect()
    }
}
