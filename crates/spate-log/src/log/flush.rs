//! Durability: sync targets for the flusher, and the full flush.

use super::{PartitionLog, SyncTarget};
use crate::error::LogError;
use crate::segment::write_index_files;
use spate_types::Offset;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl PartitionLog {
    /// Files to fsync for everything written so far; `None` if all is flushed.
    ///
    /// Only the active segment's log file: its index files are derived data that recovery
    /// rebuilds from a scan of that segment at every open, and a roll fsyncs them before the
    /// segment stops being active. Leaving them out saves two serial fdatasyncs per
    /// group-commit round (each ~0.4 ms here even with nothing new in them), which an
    /// `acks=all` producer waits for.
    pub fn sync_target(&self) -> Option<SyncTarget> {
        if self.log_end <= self.flushed {
            return None;
        }
        self.sync_issued
            .fetch_max(self.log_end.0, Ordering::Relaxed);
        Some(SyncTarget {
            files: vec![Arc::clone(&self.active_segment().file)],
            offset: self.log_end,
        })
    }

    /// Records that a [`SyncTarget`] up to `offset` was fsynced. Ignored if a truncation
    /// happened since the target was taken (the offsets may now name different data).
    pub fn mark_flushed(&mut self, offset: Offset) {
        let issued = Offset(self.sync_issued.load(Ordering::Relaxed));
        if issued.0 < 0 {
            return;
        }
        self.flushed = self.flushed.max(offset.min(issued).min(self.log_end));
    }

    /// Everything below this offset is fsynced.
    pub fn flushed_offset(&self) -> Offset {
        self.flushed
    }

    /// fsyncs the active segment and its index files, then writes what changed since it was
    /// last written: a producer snapshot at the log end, the leader epoch checkpoint, the log
    /// start checkpoint (shutdown, and the open of a recovered log). None of those writes is
    /// needed for durability (see the module docs); they spare the next open a replay.
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.active.index_files_stale {
            let (oi, ti) = write_index_files(
                &*self.disk,
                &self.dir,
                self.active_segment().base,
                &self.active.index,
                false,
            )?;
            self.active.offset_index = oi;
            self.active.time_index = ti;
            self.active.index_files_stale = false;
        }
        self.active_segment().file.sync_data()?;
        self.active.offset_index.sync_data()?;
        self.active.time_index.sync_data()?;
        // Before the snapshot below: recovery trusts the entries under a snapshot's offset.
        self.active.txn_index.seal()?;
        self.flushed = self.log_end;
        if self.producer_snapshot_at != Some(self.log_end) {
            self.producers
                .write_snapshot(&*self.disk, &self.dir, self.log_end)?;
            self.producer_snapshot_at = Some(self.log_end);
        }
        if self.epochs.is_dirty() {
            self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
        }
        if self.log_start_checkpointed != Some(self.log_start) {
            self.checkpoint_log_start()?;
        }
        Ok(())
    }
}
