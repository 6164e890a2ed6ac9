//! Opening a partition log: recovery of its segments, indexes and checkpoints.

use super::{
    remove_if_exists, transactions, Active, PartitionLog, GAPS_CHECKPOINT, LOG_START_CHECKPOINT,
};
use crate::compaction;
use crate::config::LogConfig;
use crate::epoch_cache::EpochCache;
use crate::error::LogError;
use crate::fsio;
use crate::producer_state::ProducerStateManager;
use crate::segment::{
    scan, write_index_files, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::txn::UnreplicatedTxns;
use crate::txn_index::{self, TXN_INDEX_SUFFIX};
use spate_types::disk::Disk;
use spate_types::Offset;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

fn parse_base(name: &str, suffix: &str) -> Option<Offset> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse::<i64>().ok().map(Offset)
}

impl PartitionLog {
    /// Opens (creating if absent) the partition log in `dir` on `disk` and recovers it. Every
    /// file of the log is read and written through `disk`, which the log keeps.
    ///
    /// A `dir` this creates is not made durable in its parent: a caller that creates the
    /// directory of a new partition makes it durable first (the replica manager does, with
    /// [`spate_types::disk::create_dir_all_durable`]).
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<PartitionLog, LogError> {
        let d = &*disk;
        d.create_dir_all(dir)?;
        compaction::recover(d, dir)?;
        let mut bases = Vec::new();
        for entry in d.read_dir(dir)? {
            let name = entry.name.as_str();
            if name.ends_with(".tmp") {
                remove_if_exists(d, &dir.join(name))?;
            } else if let Some(base) = parse_base(name, LOG_SUFFIX) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        // Indexes whose log is gone are leftovers of an interrupted deletion.
        for entry in d.read_dir(dir)? {
            let name = entry.name.as_str();
            let base = parse_base(name, INDEX_SUFFIX)
                .or_else(|| parse_base(name, TIME_INDEX_SUFFIX))
                .or_else(|| parse_base(name, TXN_INDEX_SUFFIX));
            if base.is_some_and(|b| bases.binary_search(&b).is_err()) {
                remove_if_exists(d, &dir.join(name))?;
            }
        }
        let checkpointed_start = read_log_start(d, dir)?;
        let cleaner_checkpoint = compaction::read_checkpoint(d, dir)?.unwrap_or_default();
        let gaps_below = fsio::read_offset_checkpoint(d, dir, GAPS_CHECKPOINT)?.unwrap_or_default();

        let mut segments = BTreeMap::new();
        let active_base = match bases.pop() {
            Some(b) => b,
            None => {
                let base = checkpointed_start.unwrap_or_default();
                Segment::create(d, dir, base)?;
                d.sync_dir(dir)?;
                base
            }
        };
        for base in bases {
            let mut seg = Segment::open(d, dir, base)?;
            if seg.index_files_suspect(d, config.index_interval_bytes)? {
                let idx = seg.rebuild_index(d, config.index_interval_bytes, true)?;
                seg.set_index(Some(idx));
            }
            // The replay below rebuilds the indexes of the segments it covers; the others
            // were fsynced at roll, but a tail no entry can fill is cut here whatever its cause.
            txn_index::repair_tail(d, &txn_index::path(dir, base), seg.size)?;
            segments.insert(base, seg);
        }

        // The active segment: scan every batch, truncate at the first bad byte.
        let mut active_seg = Segment::open(d, dir, active_base)?;
        let mut epochs = EpochCache::load(d, dir)?;
        epochs.truncate_from_end(active_base);
        let mut scanned_epochs = Vec::new();
        let mut s = scan(
            &*active_seg.file,
            active_seg.size,
            active_base,
            config.index_interval_bytes,
            true,
            // Only a segment below the cleaner checkpoint can have been compacted (and become
            // active again through truncation); only one below the gaps checkpoint can hold a
            // compacted leader's gaps.
            active_base < cleaner_checkpoint.max(gaps_below),
            |h| {
                if scanned_epochs
                    .last()
                    .is_none_or(|(e, _)| h.partition_leader_epoch > *e)
                {
                    scanned_epochs.push((h.partition_leader_epoch, h.base_offset));
                }
            },
        )?;
        let cut_at_open = s.valid_bytes < active_seg.size;
        if cut_at_open {
            tracing::warn!(
                dir = ?dir,
                segment = active_base.0,
                valid_bytes = s.valid_bytes,
                file_bytes = active_seg.size,
                reason = s.stopped.as_deref().unwrap_or(""),
                "recovery truncated torn or corrupt tail of the active segment"
            );
            active_seg.file.set_len(s.valid_bytes)?;
            active_seg.file.sync_all()?;
            active_seg.size = s.valid_bytes;
        }
        for (e, o) in scanned_epochs {
            epochs.assign(e, o);
        }
        let (oi, ti) = write_index_files(d, dir, active_base, &s.index, false)?;
        let txn_index = transactions::open_active_txn_index(d, dir, active_base)?;
        let log_end = s.next_offset.unwrap_or(active_base);
        let first_base = segments.keys().next().copied().unwrap_or(active_base);
        let log_start = checkpointed_start
            .unwrap_or(first_base)
            .max(first_base)
            .min(log_end);
        segments.insert(active_base, active_seg);
        let size_bytes = segments.values().map(|s| s.size).sum();
        let cleaner_checkpoint = cleaner_checkpoint.min(log_end);
        let gaps_below = gaps_below.min(log_end);

        let mut log = PartitionLog {
            disk,
            dir: dir.to_path_buf(),
            config,
            segments,
            active: Active {
                index: std::mem::take(&mut s.index),
                builder: s.builder,
                offset_index: oi,
                time_index: ti,
                roll_base_ms: Some(now_ms),
                index_files_stale: false,
                batches_end: s.next_offset,
                txn_index,
            },
            log_start,
            log_end,
            flushed: active_base,
            sync_issued: AtomicI64::new(-1),
            epochs,
            producers: ProducerStateManager::default(),
            unreplicated: UnreplicatedTxns::default(),
            log_start_checkpointed: checkpointed_start,
            producer_snapshot_at: None,
            size_bytes,
            cleaner_checkpoint,
            gaps_below,
            generation: 0,
            cut_at_open,
            damaged_at_open: s.damaged,
        };
        // Segments wholly below a checkpointed log start are leftovers of a deletion that a
        // crash interrupted.
        let below: Vec<Offset> = log
            .segments
            .values()
            .filter(|s| !log.is_active(s) && log.segment_end(s) <= log.log_start)
            .map(|s| s.base)
            .collect();
        log.delete_segments(&below)?;
        log.epochs.truncate_from_start(log_start);
        log.reload_producer_state()?;
        tracing::info!(
            dir = ?dir,
            log_start = log.log_start.0,
            log_end = log.log_end.0,
            segments = log.segments.len(),
            producers = log.producers.len(),
            "opened partition log"
        );
        Ok(log)
    }
}

fn read_log_start(disk: &dyn Disk, dir: &Path) -> Result<Option<Offset>, LogError> {
    Ok(fsio::read_offset_checkpoint(
        disk,
        dir,
        LOG_START_CHECKPOINT,
    )?)
}
