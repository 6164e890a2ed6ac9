//! Offsets committed inside a transaction (TxnOffsetCommit), held until the transaction ends.
//!
//! Kafka's `pendingTransactionalOffsetCommits`: a transactional producer's offset commits are
//! written to `__consumer_offsets` in a transactional batch of its producer id, and become the
//! group's committed offsets only when the COMMIT marker for that producer id is written to
//! the same partition; an ABORT marker drops them. Replaying the log does the same (records of
//! a transactional batch are held, the control batch decides). While a partition's offset is
//! pending, an OffsetFetch asking for stable offsets (KIP-447 `require_stable`) gets
//! UNSTABLE_OFFSET_COMMIT, so a new consumer does not start from an offset about to change.

use crate::records::OffsetsRecord;
use std::collections::BTreeMap;

/// Pending offset records per producer id, in commit order (a later commit of the same
/// partition wins when applied), each with its position in the offsets log
/// ([`crate::core::CommittedOffset::position`]).
#[derive(Debug, Default)]
pub struct PendingTxnOffsets {
    by_producer: BTreeMap<i64, Vec<(u64, OffsetsRecord)>>,
}

impl PendingTxnOffsets {
    /// Holds `records` (offset records) for `producer_id` until its transaction ends.
    pub fn stage(
        &mut self,
        producer_id: i64,
        records: impl IntoIterator<Item = (u64, OffsetsRecord)>,
    ) {
        self.by_producer
            .entry(producer_id)
            .or_default()
            .extend(records);
    }

    /// The transaction of `producer_id` ended on an offsets partition: its records of groups
    /// in that partition (`in_partition`) are returned to apply (commit) or dropped (abort).
    pub fn complete(
        &mut self,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) -> Vec<(u64, OffsetsRecord)> {
        let Some(records) = self.by_producer.remove(&producer_id) else {
            return Vec::new();
        };
        let (ended, kept): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|(_, r)| in_partition(r.group()));
        if !kept.is_empty() {
            self.by_producer.insert(producer_id, kept);
        }
        if commit {
            ended
        } else {
            Vec::new()
        }
    }

    /// Whether a transaction has an offset of this group's partition pending.
    pub fn is_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.by_producer.values().flatten().any(|(_, r)| {
            matches!(r, OffsetsRecord::Offset { group: g, topic: t, partition: p, .. }
                if g == group && t == topic && *p == partition)
        })
    }

    /// Forgets the pending offsets of groups no longer coordinated here.
    pub fn unload(&mut self, unloaded: impl Fn(&str) -> bool) {
        self.by_producer.retain(|_, records| {
            records.retain(|(_, r)| !unloaded(r.group()));
            !records.is_empty()
        });
    }

    /// Producer ids with offsets pending, for tests and diagnostics.
    pub fn producers(&self) -> impl Iterator<Item = i64> + '_ {
        self.by_producer.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::StoredOffset;

    fn offset(group: &str, partition: i32, value: i64) -> OffsetsRecord {
        OffsetsRecord::Offset {
            group: group.to_owned(),
            topic: "t".to_owned(),
            partition,
            value: Some(StoredOffset {
                offset: value,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
            }),
        }
    }

    #[test]
    fn a_commit_applies_a_producers_offsets_of_the_marked_partition_and_an_abort_drops_them() {
        let mut p = PendingTxnOffsets::default();
        p.stage(7, [(1, offset("a", 0, 10)), (2, offset("b", 0, 20))]);
        p.stage(8, [(3, offset("a", 1, 30))]);
        assert!(p.is_pending("a", "t", 0));
        assert!(!p.is_pending("a", "t", 2));
        // Group "a" lives in the marked partition, "b" elsewhere: b stays pending.
        let applied = p.complete(7, true, |g| g == "a");
        assert_eq!(applied, vec![(1, offset("a", 0, 10))]);
        assert!(!p.is_pending("a", "t", 0));
        assert!(p.is_pending("b", "t", 0));
        assert!(
            p.complete(8, false, |_| true).is_empty(),
            "an abort applies nothing"
        );
        assert!(!p.is_pending("a", "t", 1));
        assert!(
            p.complete(99, true, |_| true).is_empty(),
            "unknown producer"
        );
        p.unload(|g| g == "b");
        assert_eq!(p.producers().count(), 0);
    }
}
