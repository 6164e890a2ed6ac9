//! The log's side of compaction (see [`crate::compaction`]): planning a pass and committing it.

use super::{remove_if_exists, PartitionLog};
use crate::compaction::{
    CleanedGroup, CompactionCommit, CompactionLimits, CompactionOutcome, CompactionPlan,
    CompactionTrigger, PlannedCompaction, PlannedSegment, PreparedCompaction, SkipReason,
};
use crate::error::LogError;
use crate::segment::{self, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::txn_index::{self, TXN_INDEX_SUFFIX};
use spate_types::Offset;
use std::sync::Arc;

impl PartitionLog {
    /// Compaction phase 1 (see [`crate::compaction`]): cheap, under the caller's lock. Only
    /// rolled segments wholly below `high_watermark` and older than `min.compaction.lag.ms`
    /// (by their largest timestamp) are cleanable. A pass is planned when the dirty share of
    /// those reaches `min.cleanable.dirty.ratio`, or, below it, when a dirty one holds a
    /// record older than `max.compaction.lag.ms` ([`CompactionTrigger`]). A planned pass also
    /// reads, from the transaction indexes past the planned segments, the aborted transactions
    /// that begin in them and end after them (as a `read_committed` fetch does).
    pub fn plan_compaction(
        &self,
        now_ms: i64,
        high_watermark: Offset,
        limits: CompactionLimits,
    ) -> Result<PlannedCompaction, LogError> {
        if !self.config.compacts() {
            return Ok(PlannedCompaction::Skip(SkipReason::NotCompacted));
        }
        let lag_ms = self.config.min_compaction_lag_ms;
        // Kafka's `firstUncleanableOffset`: nothing at or past the first unstable offset,
        // whose transaction's outcome is not yet known to every replica.
        let cleanable_below = self.last_stable_offset(high_watermark);
        let mut segments = Vec::new();
        for seg in self.segments.values() {
            let end = self.segment_end(seg);
            if self.is_active(seg) || end > cleanable_below {
                break;
            }
            if lag_ms > 0 {
                let max_ts = match self.segment_max_timestamp(seg)? {
                    Some(t) if t >= 0 => Some(t),
                    Some(_) => Some(seg.file.modified_ms()?),
                    None => None,
                };
                if max_ts.is_some_and(|t| now_ms.saturating_sub(t) < lag_ms) {
                    break;
                }
            }
            segments.push(PlannedSegment {
                base: seg.base,
                end,
                file: Arc::clone(&seg.file),
                size: seg.size,
            });
        }
        let Some(last) = segments.last() else {
            return Ok(PlannedCompaction::Skip(SkipReason::NothingCleanable));
        };
        let first_dirty = self.cleaner_checkpoint.max(segments[0].base);
        if first_dirty >= last.end {
            return Ok(PlannedCompaction::Skip(SkipReason::NothingDirty));
        }
        // Segment granularity, as Kafka: a segment partly past the checkpoint counts as dirty.
        let total_bytes: u64 = segments.iter().map(|s| s.size).sum();
        let dirty_bytes: u64 = segments
            .iter()
            .filter(|s| s.end > first_dirty)
            .map(|s| s.size)
            .sum();
        if dirty_bytes == 0 {
            return Ok(PlannedCompaction::Skip(SkipReason::NothingDirty));
        }
        let trigger =
            if (dirty_bytes as f64) >= self.config.min_cleanable_dirty_ratio * total_bytes as f64 {
                CompactionTrigger::DirtyRatio
            } else {
                let dirty = segments.iter().filter(|s| s.end > first_dirty);
                match self.max_compaction_delay(dirty, now_ms)? {
                    Some(overdue_ms) => CompactionTrigger::MaxCompactionLag { overdue_ms },
                    None => {
                        return Ok(PlannedCompaction::Skip(
                            SkipReason::DirtyRatioBelowMinimum {
                                dirty_bytes,
                                total_bytes,
                            },
                        ))
                    }
                }
            };
        let producer_last = self
            .producers
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, b.last_offset)))
            .collect();
        // At most one per producer (its transactions do not overlap); the read stops once the
        // transactions open at `end` have all ended (see `aborted_transactions`).
        let end = last.end;
        let aborted_after = self.aborted_transactions(end, end)?;
        Ok(PlannedCompaction::Plan(CompactionPlan {
            disk: Arc::clone(&self.disk),
            dir: self.dir.clone(),
            generation: self.generation,
            now_ms,
            delete_retention_ms: self.config.delete_retention_ms,
            segment_bytes: self.config.segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            first_dirty,
            segments,
            producer_last,
            aborted_after,
            key_map_entries_max: limits.key_map_entries_max,
            txn_entries_max: limits.txn_entries_max,
            trigger,
        }))
    }

    /// Kafka's `LogCleanerManager.maxCompactionDelay` (KIP-354): by how much the oldest record
    /// of the `dirty` segments is past `max.compaction.lag.ms`, `None` if it is not. A segment's
    /// age is its first batch's max timestamp (Kafka's first batch timestamp); segments without
    /// a timestamp do not count. One header read per dirty segment, only for a bounded lag.
    fn max_compaction_delay<'a>(
        &self,
        dirty: impl Iterator<Item = &'a PlannedSegment>,
        now_ms: i64,
    ) -> Result<Option<i64>, LogError> {
        let lag_ms = self.config.max_compaction_lag_ms;
        if lag_ms == i64::MAX {
            return Ok(None);
        }
        let mut earliest: Option<i64> = None;
        for planned in dirty {
            let Some(seg) = self.segments.get(&planned.base) else {
                continue;
            };
            if let Some(h) = seg.header_at(0)? {
                if h.max_timestamp > 0 {
                    earliest = Some(earliest.map_or(h.max_timestamp, |e| e.min(h.max_timestamp)));
                }
            }
        }
        let clean_until = now_ms.saturating_sub(lag_ms.max(0));
        Ok(earliest
            .filter(|t| *t < clean_until)
            .map(|t| clean_until - t))
    }

    /// Compaction phase 3: swaps the cleaned files in, under the caller's lock. Costs renames,
    /// unlinks and one directory fsync (the commit point). Aborts, removing the cleaned files,
    /// if any segment changed since phase 1.
    pub fn commit_compaction(
        &mut self,
        mut prepared: PreparedCompaction,
    ) -> Result<CompactionCommit, LogError> {
        let unchanged = prepared.dir == self.dir
            && prepared.generation == self.generation
            && prepared.groups.iter().flat_map(|g| &g.originals).all(|o| {
                self.segments.get(&o.base).is_some_and(|s| {
                    Arc::ptr_eq(&s.file, &o.file) && s.size == o.size && !self.is_active(s)
                })
            });
        if !unchanged {
            prepared.remove_files();
            tracing::info!(dir = ?self.dir, "log changed during compaction; pass aborted");
            return Ok(CompactionCommit {
                outcome: CompactionOutcome::Aborted,
                checkpoint: None,
            });
        }
        let groups = std::mem::take(&mut prepared.groups);
        for g in &groups {
            // The transaction index cannot be rebuilt from the log: it is rolled forward with
            // the swap by recovery (see `compaction::recover`).
            self.disk.rename(
                &CleanedGroup::cleaned_path(&self.dir, g.base, g.end, TXN_INDEX_SUFFIX),
                &g.txn_swap_path(&self.dir),
            )?;
            self.disk.rename(
                &CleanedGroup::cleaned_path(&self.dir, g.base, g.end, LOG_SUFFIX),
                &g.swap_path(&self.dir),
            )?;
        }
        // Commit point: from here recovery rolls every swap forward.
        self.disk.sync_dir(&self.dir)?;
        self.generation += 1;
        let cleaned_path =
            |g: &CleanedGroup, suffix| CleanedGroup::cleaned_path(&self.dir, g.base, g.end, suffix);
        for g in groups {
            for o in &g.originals {
                if let Some(seg) = self.segments.remove(&o.base) {
                    self.size_bytes -= seg.size;
                }
                for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
                    remove_if_exists(
                        &*self.disk,
                        &self.dir.join(segment::file_name(o.base, suffix)),
                    )?;
                }
                if o.base != g.base {
                    remove_if_exists(
                        &*self.disk,
                        &self.dir.join(segment::file_name(o.base, LOG_SUFFIX)),
                    )?;
                }
            }
            // Before the log's rename: recovery takes a swap file without its transaction
            // index swap to mean this rename happened.
            self.disk.rename(
                &g.txn_swap_path(&self.dir),
                &txn_index::path(&self.dir, g.base),
            )?;
            self.disk.rename(
                &cleaned_path(&g, INDEX_SUFFIX),
                &self.dir.join(segment::file_name(g.base, INDEX_SUFFIX)),
            )?;
            self.disk.rename(
                &cleaned_path(&g, TIME_INDEX_SUFFIX),
                &self.dir.join(segment::file_name(g.base, TIME_INDEX_SUFFIX)),
            )?;
            self.disk.rename(
                &g.swap_path(&self.dir),
                &self.dir.join(segment::file_name(g.base, LOG_SUFFIX)),
            )?;
            let mut seg = Segment::from_file(&self.dir, g.base, g.file, g.size);
            seg.set_index(Some(g.index));
            self.size_bytes += g.size;
            self.segments.insert(g.base, seg);
        }
        self.cleaner_checkpoint = prepared.cleaned_up_to;
        let stats = prepared.stats;
        tracing::info!(
            dir = ?self.dir,
            segments_before = stats.segments_before,
            segments_after = stats.segments_after,
            bytes_before = stats.bytes_before,
            bytes_after = stats.bytes_after,
            records_removed = stats.records_removed,
            aborted_batches_removed = stats.aborted_batches_removed,
            markers_removed = stats.markers_removed,
            cleaned_up_to = stats.cleaned_up_to.0,
            "compacted log"
        );
        Ok(CompactionCommit {
            outcome: CompactionOutcome::Compacted(stats),
            checkpoint: Some((
                Arc::clone(&self.disk),
                self.dir.clone(),
                prepared.cleaned_up_to,
            )),
        })
    }

    /// All three compaction phases with `&mut self` held throughout, for callers that own the
    /// log outright (tests, tools). Cleans up to the log end offset.
    pub fn compact(
        &mut self,
        now_ms: i64,
        limits: CompactionLimits,
    ) -> Result<CompactionOutcome, LogError> {
        let plan = match self.plan_compaction(now_ms, self.log_end, limits)? {
            PlannedCompaction::Plan(p) => p,
            PlannedCompaction::Skip(reason) => return Ok(CompactionOutcome::Skipped(reason)),
        };
        let prepared = plan.execute()?;
        self.commit_compaction(prepared)?.persist()
    }

    /// Compaction's first dirty offset (see [`crate::compaction`]).
    pub fn cleaner_checkpoint(&self) -> Offset {
        self.cleaner_checkpoint
    }
}
