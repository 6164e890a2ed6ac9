//! What moves the log start up or removes the log: DeleteRecords, retention, segment deletion
//! and the log start checkpoint.

use super::{remove_if_exists, PartitionLog, RetentionOutcome, LOG_START_CHECKPOINT};
use crate::error::LogError;
use crate::fsio;
use crate::segment::{INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::txn_index::TXN_INDEX_SUFFIX;
use spate_types::disk::Disk;
use spate_types::Offset;
use std::io;
use std::path::Path;
use std::sync::Arc;

impl PartitionLog {
    /// DeleteRecords: raises the log start offset to `offset` and deletes segments wholly
    /// below it. Returns the new log start offset (the low watermark).
    pub fn delete_records_before(&mut self, offset: Offset) -> Result<Offset, LogError> {
        if offset > self.log_end || offset.0 < 0 {
            return Err(self.out_of_range(offset));
        }
        if offset <= self.log_start {
            return Ok(self.log_start);
        }
        // Durable before anything acts on it: a failed write leaves the log start where it was,
        // and the follower retries with the next Fetch response.
        write_log_start(&*self.disk, &self.dir, offset)?;
        self.log_start = offset;
        self.log_start_checkpointed = Some(offset);
        let doomed: Vec<Offset> = self
            .segments
            .values()
            .filter(|s| !self.is_active(s) && self.segment_end(s) <= offset)
            .map(|s| s.base)
            .collect();
        self.delete_segments(&doomed)?;
        self.after_log_start_raised()?;
        Ok(self.log_start)
    }

    /// Makes the in-memory log start durable. Every change of the log start writes it at once
    /// (DeleteRecords before it deletes anything), so a crash never brings back records below
    /// a log start this replica reported, and [`PartitionLog::flush`] need not rewrite it.
    pub(super) fn checkpoint_log_start(&mut self) -> io::Result<()> {
        write_log_start(&*self.disk, &self.dir, self.log_start)?;
        self.log_start_checkpointed = Some(self.log_start);
        Ok(())
    }

    fn after_log_start_raised(&mut self) -> Result<(), LogError> {
        self.unreplicated.on_log_start(self.log_start);
        self.epochs.truncate_from_start(self.log_start);
        if self.epochs.is_dirty() {
            self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
        }
        Ok(())
    }

    pub(super) fn delete_segments(&mut self, bases: &[Offset]) -> Result<(u64, usize), LogError> {
        let mut bytes = 0;
        for base in bases {
            if let Some(seg) = self.segments.remove(base) {
                bytes += seg.size;
                self.size_bytes -= seg.size;
                // Open read plans keep their file open; unlinking does not disturb them.
                for suffix in [
                    LOG_SUFFIX,
                    INDEX_SUFFIX,
                    TIME_INDEX_SUFFIX,
                    TXN_INDEX_SUFFIX,
                ] {
                    remove_if_exists(&*self.disk, &seg.path(suffix))?;
                }
                tracing::info!(dir = ?self.dir, segment = base.0, bytes = seg.size, "deleted segment");
            }
        }
        Ok((bytes, bases.len()))
    }

    /// Deletes segments past `retention.ms` (by their largest timestamp) and oldest segments
    /// while the log exceeds `retention.bytes`, if `cleanup.policy` includes `delete`. An
    /// expired active segment is rolled first so that it can go too.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<RetentionOutcome, LogError> {
        let mut outcome = RetentionOutcome {
            log_start_offset: self.log_start,
            ..Default::default()
        };
        if !self.config.deletes() {
            return Ok(outcome);
        }
        let mut doomed: Vec<Offset> = Vec::new();
        if self.config.retention_ms >= 0 {
            let mut expired_active = false;
            for seg in self.segments.values() {
                let max_ts = match self.segment_max_timestamp(seg)? {
                    Some(t) if t >= 0 => t,
                    Some(_) => seg.file.modified_ms()?,
                    // A rolled segment compaction emptied holds nothing to keep.
                    None if !self.is_active(seg) => {
                        doomed.push(seg.base);
                        continue;
                    }
                    None => break,
                };
                if now_ms.saturating_sub(max_ts) <= self.config.retention_ms {
                    break;
                }
                if self.is_active(seg) {
                    expired_active = true;
                } else {
                    doomed.push(seg.base);
                }
            }
            if expired_active {
                doomed.push(self.active_segment().base);
                self.roll()?;
            }
        }
        if self.config.retention_bytes >= 0 {
            let doomed_bytes: u64 = doomed
                .iter()
                .filter_map(|b| self.segments.get(b))
                .map(|s| s.size)
                .sum();
            let mut excess =
                self.size_bytes as i64 - doomed_bytes as i64 - self.config.retention_bytes;
            let candidates: Vec<(Offset, u64, bool)> = self
                .segments
                .values()
                .filter(|s| !doomed.contains(&s.base))
                .map(|s| (s.base, s.size, self.is_active(s)))
                .collect();
            for (base, size, active) in candidates {
                if active || excess - (size as i64) < 0 {
                    break;
                }
                excess -= size as i64;
                doomed.push(base);
            }
        }
        if doomed.is_empty() {
            return Ok(outcome);
        }
        let (bytes, count) = self.delete_segments(&doomed)?;
        let first = self.segments.keys().next().copied().unwrap_or(self.log_end);
        if first > self.log_start {
            self.log_start = first;
            self.checkpoint_log_start()?;
            self.after_log_start_raised()?;
        }
        outcome.segments_deleted = count;
        outcome.bytes_deleted = bytes;
        outcome.log_start_offset = self.log_start;
        Ok(outcome)
    }

    /// Deletes the partition's directory (topic deletion).
    pub fn delete(self) -> Result<(), LogError> {
        let (disk, dir) = (Arc::clone(&self.disk), self.dir.clone());
        drop(self);
        disk.remove_dir_all(&dir)?;
        Ok(())
    }
}

fn write_log_start(disk: &dyn Disk, dir: &Path, offset: Offset) -> io::Result<()> {
    fsio::write_offset_checkpoint(disk, dir, LOG_START_CHECKPOINT, offset)
}
