//! Replication truncation: cutting the log end back, or emptying the log and restarting it.

use super::{transactions, Active, PartitionLog, GAPS_CHECKPOINT};
use crate::error::LogError;
use crate::fsio;
use crate::producer_state::ProducerStateManager;
use crate::segment::{scan, write_index_files, IndexBuilder, Segment, SegmentIndex};
use crate::txn::UnreplicatedTxns;
use crate::txn_index::ActiveTxnIndex;
use spate_types::disk::DiskFile;
use spate_types::Offset;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl PartitionLog {
    /// Drops everything at and after `offset` (replication truncation). If `offset` falls
    /// inside a batch the whole batch goes, and the log end becomes that batch's base offset.
    /// Truncating to at or below the log start empties the log and restarts it at `offset`.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<(), LogError> {
        if offset >= self.log_end {
            // Nothing to cut, but an epoch may start at the log end with nothing written in
            // it: this replica led in it and was deposed before writing. Kept, it would be
            // its latest epoch, which the new leader never had, and every Fetch would report
            // a divergence that truncating cannot cure. Kafka drops it here too.
            self.epochs.truncate_from_end(self.log_end);
            if self.epochs.is_dirty() {
                self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
            }
            return Ok(());
        }
        self.sync_issued.store(-1, Ordering::Relaxed);
        self.generation += 1;
        if offset <= self.log_start {
            self.reset_at(offset)?;
        } else {
            let doomed: Vec<Offset> = self
                .segments
                .range(offset..)
                .map(|(b, _)| *b)
                .filter(|b| *b > self.log_start)
                .collect();
            // The segment that will be active is the last one not doomed (the one holding the
            // log start never is). Find the cut with its own index before anything changes.
            let (base, cut, new_end) = {
                let seg = self
                    .segments
                    .values()
                    .rev()
                    .find(|s| !doomed.contains(&s.base))
                    .expect("the segment holding the log start survives truncation");
                let idx = self.index_of(seg)?;
                match self.find_batch(seg, idx, offset)? {
                    // The batch holding `offset` goes whole.
                    Some((p, h)) if h.base_offset < offset => (seg.base, p, h.base_offset),
                    // Compaction may have left a gap before `offset`; the log still ends there.
                    Some((p, _)) => (seg.base, p, offset),
                    None => (seg.base, seg.size, offset),
                }
            };
            self.delete_segments(&doomed)?;
            let seg = self.segments.get_mut(&base).expect("active segment exists");
            seg.file.set_len(cut)?;
            seg.file.sync_all()?;
            seg.set_index(None);
            self.size_bytes -= seg.size - cut;
            seg.size = cut;
            let seg = self.active_segment();
            let scanned = scan(
                &*seg.file,
                seg.size,
                base,
                self.config.index_interval_bytes,
                false,
                base < self.cleaner_checkpoint.max(self.gaps_below),
                |_| {},
            )?;
            let (oi, ti) = write_index_files(&*self.disk, &self.dir, base, &scanned.index, true)?;
            // Rebuilt, durably, by the producer state reload below.
            let txn = transactions::open_active_txn_index(&*self.disk, &self.dir, base)?;
            self.log_end = new_end.max(scanned.next_offset.unwrap_or(base));
            self.active = self.fresh_active(
                oi,
                ti,
                txn,
                scanned.index,
                scanned.builder,
                scanned.next_offset,
            );
            self.flushed = self.flushed.min(self.log_end);
            if self.log_end < self.log_start {
                // The cut batch also held the log start; keep log start ≤ log end.
                self.log_start = self.log_end;
                self.checkpoint_log_start()?;
            }
        }
        self.after_truncation()?;
        tracing::info!(dir = ?self.dir, log_end = self.log_end.0, "truncated log");
        Ok(())
    }

    /// Empties the log and restarts it at `offset`, which may lie past the log end (Kafka's
    /// `truncateFullyAndStartAt`): for a follower whose log end is below the leader's log
    /// start. Leader epochs and producer state go with the data.
    pub fn truncate_fully_and_start_at(&mut self, offset: Offset) -> Result<(), LogError> {
        if offset.0 < 0 {
            return Err(self.out_of_range(offset));
        }
        self.sync_issued.store(-1, Ordering::Relaxed);
        self.generation += 1;
        self.reset_at(offset)?;
        self.epochs.clear();
        ProducerStateManager::delete_snapshots_above(&*self.disk, &self.dir, Offset(-1))?;
        self.after_truncation()?;
        tracing::info!(dir = ?self.dir, log_start = offset.0, "emptied log");
        Ok(())
    }

    /// Deletes every segment and starts an empty one at `offset` (log start = log end).
    fn reset_at(&mut self, offset: Offset) -> Result<(), LogError> {
        let all: Vec<Offset> = self.segments.keys().copied().collect();
        self.delete_segments(&all)?;
        self.unreplicated = UnreplicatedTxns::default();
        let (seg, (oi, ti)) = Segment::create(&*self.disk, &self.dir, offset)?;
        let txn = ActiveTxnIndex::create(&*self.disk, &self.dir, offset)?;
        self.disk.sync_dir(&self.dir)?;
        self.segments.insert(offset, seg);
        self.active = self.fresh_active(
            oi,
            ti,
            txn,
            SegmentIndex::default(),
            IndexBuilder::new(self.config.index_interval_bytes),
            None,
        );
        self.log_start = offset;
        self.log_end = offset;
        self.flushed = offset;
        self.checkpoint_log_start()?;
        Ok(())
    }

    /// What every truncation ends with: checkpoints, epochs, producer state, transactions and
    /// transaction indexes cut to the new log end.
    fn after_truncation(&mut self) -> Result<(), LogError> {
        // A transaction whose marker went is open again: the reload finds its data and no
        // marker. The reload adds back the completions it replays.
        self.unreplicated.truncate_to(self.log_end);
        self.cleaner_checkpoint = self.cleaner_checkpoint.min(self.log_end);
        if self.gaps_below > self.log_end {
            // A segment the checkpoint covered may be gone; new ones must not inherit it.
            self.gaps_below = self.log_end;
            fsio::write_offset_checkpoint(
                &*self.disk,
                &self.dir,
                GAPS_CHECKPOINT,
                self.gaps_below,
            )?;
        }
        self.epochs.truncate_from_end(self.log_end);
        self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
        ProducerStateManager::delete_snapshots_above(&*self.disk, &self.dir, self.log_end)?;
        self.reload_producer_state()
    }

    fn fresh_active(
        &self,
        oi: Arc<dyn DiskFile>,
        ti: Arc<dyn DiskFile>,
        txn_index: ActiveTxnIndex,
        index: SegmentIndex,
        builder: IndexBuilder,
        batches_end: Option<Offset>,
    ) -> Active {
        Active {
            index,
            builder,
            offset_index: oi,
            time_index: ti,
            roll_base_ms: None,
            index_files_stale: false,
            batches_end,
            txn_index,
        }
    }
}
