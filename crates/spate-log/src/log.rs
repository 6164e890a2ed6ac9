//! [`PartitionLog`]: one partition's log on local disk.
//!
//! Contract for callers:
//! - Every file is reached through the [`Disk`] given to [`PartitionLog::open`]: the operating
//!   system's in production, a `MemoryDisk` that loses what was not synced in tests. "fsync"
//!   below means that disk's `sync_data`/`sync_all`/`sync_dir`.
//! - Single owner. The caller wraps the log in a mutex; every method is short. The only
//!   fsyncs on the write path happen when a segment rolls.
//! - When [`PartitionLog::append`] returns, the batches are in the OS page cache (they survive
//!   the process being killed) but not necessarily on disk. Durability comes from the flusher:
//!   take a [`SyncTarget`], fsync it outside the lock, then [`PartitionLog::mark_flushed`].
//!   Everything below [`PartitionLog::flushed_offset`] survives power loss.
//! - Reads are planned under the lock ([`PartitionLog::plan_read`]) and executed outside it
//!   ([`ReadPlan::load`]); a plan keeps its segment file open, so retention or truncation
//!   running meanwhile is safe. A batch that fails its CRC is never served.
//! - Recovery scans only the active segment (rolled segments were fsynced at roll), truncates
//!   it at the first torn or corrupt byte, and rebuilds its indexes. So the flusher fsyncs the
//!   active segment's log file only ([`SyncTarget`]), never its index files.
//! - Metadata is either rebuilt by recovery or written when it changes, never per flush:
//!   leader epochs starting in the active segment come back from its batches (the checkpoint
//!   is written at roll, before the segment stops being active, and at truncation); producer
//!   state is the newest snapshot (written at roll) plus a replay of the batches after it; the
//!   log start checkpoint is written by every change of the log start. So a [`SyncTarget`]
//!   alone makes a follower's fetched batches as durable as a leader's appends.
//! - Two write paths: [`PartitionLog::append`] (leader: validates client input, applies the
//!   topic's timestamp type and compression, deduplicates idempotent retries, assigns offsets
//!   and the leader epoch) and
//!   [`PartitionLog::append_as_follower`] (follower: stores the leader's batches byte for byte,
//!   offsets included). Both leave the same segments, indexes, epochs and producer state.
//! - Offsets increase but may have gaps: compaction removes records, and a follower copies a
//!   compacted leader's gaps. The active segment is scanned at recovery for *contiguous*
//!   offsets (which catches a torn tail with a damaged base offset) unless it may legitimately
//!   hold gaps: it lies below the cleaner checkpoint, or below the gaps checkpoint
//!   (`offset-gaps-checkpoint`), which the follower path writes durably *before* it writes the
//!   first gapped batch into an active segment (at most once per segment).
//! - Transactions (`log/transactions.rs`): markers are written by
//!   [`PartitionLog::append_marker`] (leader) or copied (follower); each segment has a
//!   transaction index of its aborts (`.txnindex`, see `txn_index.rs`), rebuilt by recovery
//!   from the newest snapshot on like the active segment's offset index, and fsynced at roll and
//!   before every snapshot (so the flusher's [`SyncTarget`] stays the log file alone).

use crate::batch::{
    decode_records, recompress, set_base_offset, set_max_timestamp, set_partition_leader_epoch,
    validate_batches, validate_replicated_batches, BatchError, BatchHeader,
};
use crate::compaction::{
    self, CleanedGroup, CompactionCommit, CompactionLimits, CompactionOutcome, CompactionPlan,
    CompactionTrigger, PlannedCompaction, PlannedSegment, PreparedCompaction, SkipReason,
};
use crate::config::{LogConfig, TimestampType};
use crate::epoch_cache::EpochCache;
use crate::error::{FollowerAppendError, LogError};
use crate::fsio;
use crate::producer_state::{ProducerStateManager, Staged};
use crate::segment::{
    self, append_index_entries, index_bytes, scan, write_index_files, IndexBuilder, Segment,
    SegmentIndex, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::txn::UnreplicatedTxns;
use crate::txn_index::{self, ActiveTxnIndex, TXN_INDEX_SUFFIX};
use bytes::Bytes;
use spate_types::disk::{Disk, DiskFile};
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{LeaderEpoch, Offset};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

mod transactions;

const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";
/// Segments based below this offset may hold gaps between batches (see the module docs).
const GAPS_CHECKPOINT: &str = "offset-gaps-checkpoint";

/// What an append wrote (or, for a duplicate, what the original write was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    /// The broker time the batches were stamped with (`message.timestamp.type=LogAppendTime`),
    /// -1 if they keep the producer's CreateTime: the Produce response's `log_append_time_ms`.
    pub log_append_time_ms: i64,
    pub batch_count: usize,
    /// Bytes stored.
    pub bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended(AppendInfo),
    /// An idempotent producer's retry of batches already in the log; nothing was written.
    Duplicate(AppendInfo),
}

/// A read to perform outside the caller's lock: whole batches at `position..position+len`.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    file: Option<Arc<dyn DiskFile>>,
    path: PathBuf,
    position: u64,
    length: usize,
}

impl ReadPlan {
    /// A plan that reads nothing.
    pub fn empty() -> ReadPlan {
        ReadPlan {
            file: None,
            path: PathBuf::new(),
            position: 0,
            length: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads the planned bytes and verifies every batch's framing and CRC. A damaged batch
    /// ends the read: the whole batches before it are returned, and a read starting at it
    /// fails with [`LogError::Corrupt`], so a consumer gets everything up to the damage and
    /// the damage is reported where it is.
    pub fn load(&self) -> Result<Bytes, LogError> {
        let Some(file) = &self.file else {
            return Ok(Bytes::new());
        };
        let mut buf = vec![0u8; self.length];
        file.read_exact_at(&mut buf, self.position)?;
        let mut pos = 0;
        while pos < buf.len() {
            match crate::batch::check_batch(&buf[pos..], BATCH_BYTES_MAX) {
                Ok(h) => pos += h.total_bytes(),
                Err(_) if pos > 0 => {
                    buf.truncate(pos);
                    break;
                }
                Err(e) => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: self.position,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Bytes::from(buf))
    }
}

/// Files to fsync so that everything below `offset` is durable.
#[derive(Clone, Debug)]
pub struct SyncTarget {
    pub files: Vec<Arc<dyn DiskFile>>,
    pub offset: Offset,
}

impl SyncTarget {
    /// fsyncs the files. Safe while appends continue on the same files.
    pub fn sync(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: Offset,
}

/// State of the segment taking writes.
struct Active {
    index: SegmentIndex,
    builder: IndexBuilder,
    offset_index: Arc<dyn DiskFile>,
    time_index: Arc<dyn DiskFile>,
    /// When the segment's age started counting, for `segment.ms`.
    roll_base_ms: Option<i64>,
    /// An index write failed; the files are rewritten from memory at the next roll or flush.
    index_files_stale: bool,
    /// Offset after the segment's last batch, `None` while it holds none: where the recovery
    /// scan expects the next batch unless the segment may hold gaps.
    batches_end: Option<Offset>,
    /// The segment's transaction index.
    txn_index: ActiveTxnIndex,
}

/// One partition's log. See the module docs for the contract.
pub struct PartitionLog {
    /// Where every file of the log lives (see [`spate_types::disk`]).
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: LogConfig,
    /// By base offset; never empty; the last one is active.
    segments: BTreeMap<Offset, Segment>,
    active: Active,
    log_start: Offset,
    log_end: Offset,
    flushed: Offset,
    /// Highest offset handed out in a [`SyncTarget`] since the last truncation, -1 if none.
    sync_issued: AtomicI64,
    epochs: EpochCache,
    producers: ProducerStateManager,
    /// Completed transactions whose marker is not yet below the high watermark.
    unreplicated: UnreplicatedTxns,
    size_bytes: u64,
    /// The log start in [`LOG_START_CHECKPOINT`] as this process last read or wrote it.
    log_start_checkpointed: Option<Offset>,
    /// The offset of the newest producer snapshot on disk that this process loaded or wrote,
    /// `None` if there is none: [`PartitionLog::flush`] writes one only if this is not the log
    /// end.
    producer_snapshot_at: Option<Offset>,
    /// Compaction's first dirty offset: everything below it was compacted at least once.
    cleaner_checkpoint: Offset,
    /// Segments based below this offset may hold gaps written by the follower path; durable in
    /// [`GAPS_CHECKPOINT`] before any such gap is written.
    gaps_below: Offset,
    /// Bumped by every change that can make a compaction plan stale in ways a segment's file
    /// identity does not show (truncation rewrites a segment in place) and by each swap.
    generation: u64,
    /// Recovery cut the active segment's tail (torn, or damaged at rest) at the last open.
    cut_at_open: bool,
    /// The first batch recovery kept in the active segment although its CRC fails.
    damaged_at_open: Option<Offset>,
}

fn parse_base(name: &str, suffix: &str) -> Option<Offset> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse::<i64>().ok().map(Offset)
}

fn remove_if_exists(disk: &dyn Disk, path: &Path) -> io::Result<()> {
    match disk.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A stored last offset delta no healthy batch has: negative, or reaching past the end of
/// the batch's segment.
fn delta_damaged(h: &BatchHeader, segment_end: Offset) -> bool {
    h.last_offset_delta < 0 || h.last_offset() >= segment_end
}

fn rel(base: Offset, offset: Offset) -> u64 {
    (offset.0 - base.0).max(0) as u64
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

    fn active_segment(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a partition log always has an active segment")
    }

    fn is_active(&self, seg: &Segment) -> bool {
        seg.base == self.active_segment().base
    }

    fn index_of<'a>(&'a self, seg: &'a Segment) -> Result<&'a SegmentIndex, LogError> {
        if self.is_active(seg) {
            Ok(&self.active.index)
        } else {
            seg.index(&*self.disk, self.config.index_interval_bytes)
        }
    }

    /// Largest timestamp in a segment, `None` if it holds no batch.
    fn segment_max_timestamp(&self, seg: &Segment) -> Result<Option<i64>, LogError> {
        if seg.size == 0 {
            return Ok(None);
        }
        if self.is_active(seg) {
            return Ok(self.active.builder.max_timestamp.map(|t| t.0));
        }
        Ok(self.index_of(seg)?.times.last().map(|t| t.0))
    }

    /// Offset after the last batch of `seg`.
    fn segment_end(&self, seg: &Segment) -> Offset {
        self.segments
            .range(Offset(seg.base.0.saturating_add(1))..)
            .next()
            .map_or(self.log_end, |(b, _)| *b)
    }

    /// Position and header of the first batch in `seg` whose last offset is ≥ `target`.
    fn find_batch(
        &self,
        seg: &Segment,
        idx: &SegmentIndex,
        target: Offset,
    ) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let start = idx.position_for(rel(seg.base, target));
        let mut pos = start;
        while let Some(h) = seg.header_at(pos)? {
            if pos == start && start > 0 && h.base_offset > target {
                // The index points past the target: it cannot be trusted, the log can.
                tracing::warn!(segment = ?seg.path(LOG_SUFFIX), target = target.0,
                    "offset index entry overshoots its target; scanning the segment instead");
                return self.find_batch(seg, &SegmentIndex::default(), target);
            }
            if delta_damaged(&h, self.segment_end(seg)) {
                // Its last offset delta rotted (it is under the batch's CRC, which only a load
                // checks): its offsets run to the next batch's (seeds 180, 2644).
                let next = pos + h.total_bytes() as u64;
                let end = seg
                    .header_at(next)?
                    .map_or(self.segment_end(seg), |n| n.base_offset);
                if target < end {
                    return Ok(Some((pos, h)));
                }
            } else if h.last_offset() >= target {
                return Ok(Some((pos, h)));
            }
            pos += h.total_bytes() as u64;
        }
        Ok(None)
    }

    /// End of the last whole batch at or before `limit`, scanning from batch start `from`.
    fn last_boundary(
        &self,
        seg: &Segment,
        idx: &SegmentIndex,
        from: u64,
        limit: u64,
    ) -> Result<u64, LogError> {
        let mut pos = from.max(idx.batch_start_at_or_before(limit));
        while let Some(h) = seg.header_at(pos)? {
            let end = pos + h.total_bytes() as u64;
            if end > limit {
                break;
            }
            pos = end;
        }
        Ok(pos)
    }

    /// `message.timestamp.difference.max.ms`: a batch whose first or largest record timestamp
    /// is further from the broker's clock is refused whole (Kafka: INVALID_TIMESTAMP). The
    /// records between are not decompressed to check them one by one.
    fn check_timestamps(&self, headers: &[BatchHeader], now_ms: i64) -> Result<(), LogError> {
        let max_difference = self.config.message_timestamp_difference_max_ms;
        if max_difference == i64::MAX {
            return Ok(());
        }
        for h in headers {
            for timestamp in [h.base_timestamp, h.max_timestamp] {
                if timestamp.abs_diff(now_ms) > max_difference.unsigned_abs() {
                    return Err(LogError::InvalidTimestamp {
                        timestamp,
                        now_ms,
                        max_difference,
                    });
                }
            }
        }
        Ok(())
    }

    /// Validates, checks producer state, assigns offsets and leader epoch in place, and writes
    /// a produce request's record set. See the module docs for what "written" means.
    ///
    /// With a topic `compression.type` other than `producer`, every batch in another codec is
    /// first re-encoded in the topic's (`batch::recompress`; control batches never are) and
    /// `max.message.bytes` applies to the result too. The set is then no longer the caller's
    /// buffer: the append builds it in a buffer of its own and writes that, leaving `records`
    /// as scratch. Otherwise (the common case) the set is rewritten and written in place, with
    /// no copy. [`AppendInfo::bytes`] is what was stored either way.
    ///
    /// Before offsets are assigned the batches get the topic's timestamp type (Kafka's
    /// `LogValidator`): with `message.timestamp.type=LogAppendTime` every batch's
    /// timestamp-type bit is set and its max timestamp becomes `now_ms` (CRC recomputed); with
    /// CreateTime a batch claiming LogAppendTime has the bit cleared, and
    /// `message.timestamp.difference.max.ms` applies. An idempotent retry is answered with the
    /// original append's offsets and timestamps.
    pub fn append(
        &mut self,
        records: &mut [u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendOutcome, LogError> {
        let mut headers = validate_batches(records, self.config.max_message_bytes)?;
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        if !log_append_time {
            self.check_timestamps(&headers, now_ms)?;
        }
        if self.config.compacts() {
            check_keys(records, &headers)?;
        }
        // The common case (the producer's codec is kept) stays in place; only a recompressed
        // set lives in a new buffer, which is what gets stored.
        let mut recompressed: Vec<u8>;
        let records: &mut [u8] = match self.config.compression_type.codec() {
            Some(codec) if headers.iter().any(|h| needs_recompression(h, codec)) => {
                let max = self.config.max_message_bytes.min(BATCH_BYTES_MAX);
                (recompressed, headers) = recompress_set(records, &headers, codec, max)?;
                &mut recompressed
            }
            _ => records,
        };
        stamp_timestamp_type(records, &mut headers, log_append_time, now_ms);
        let mut next = self.log_end;
        let mut placed = Vec::with_capacity(headers.len());
        for h in &headers {
            placed.push((*h, next));
            next = Offset(next.0 + i64::from(h.last_offset_delta) + 1);
        }
        let max_timestamp = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1);
        let staged = match self.producers.check(&placed)? {
            Staged::Duplicate(originals) => {
                let info = AppendInfo {
                    base_offset: originals.first().map_or(self.log_end, |m| m.base_offset),
                    last_offset: originals.last().map_or(self.log_end, |m| m.last_offset),
                    max_timestamp: originals
                        .iter()
                        .map(|m| m.max_timestamp)
                        .max()
                        .unwrap_or(-1),
                    // What the original append answered, whatever the topic's type is now.
                    log_append_time_ms: originals
                        .iter()
                        .filter(|m| m.log_append_time)
                        .map(|m| m.max_timestamp)
                        .max()
                        .unwrap_or(-1),
                    batch_count: originals.len(),
                    bytes: records.len(),
                };
                return Ok(AppendOutcome::Duplicate(info));
            }
            Staged::Append(staged) => staged,
        };
        if self.should_roll(0, records.len() as u64, headers.len(), next, now_ms) {
            self.roll()?;
        }

        let mut pos = 0;
        for (h, base) in &placed {
            set_base_offset(&mut records[pos..], *base);
            set_partition_leader_epoch(&mut records[pos..], leader_epoch);
            pos += h.total_bytes();
        }
        let base_offset = self.log_end;
        self.write_placed(records, &placed, now_ms)?;
        self.epochs.assign(leader_epoch, base_offset);
        self.producers.commit(staged);
        Ok(AppendOutcome::Appended(AppendInfo {
            base_offset,
            last_offset: Offset(next.0 - 1),
            max_timestamp,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            batch_count: headers.len(),
            bytes: records.len(),
        }))
    }

    /// Appends record batches fetched from the partition leader exactly as they are (Kafka's
    /// `appendAsFollower`): offsets, leader epochs and bytes unchanged. Returns `None` for an
    /// empty record set.
    ///
    /// - Each batch must start at or past the log end and past the batch before it. Gaps are
    ///   fine (the leader's compaction removed those offsets); a batch below is refused with
    ///   [`FollowerAppendError::NonMonotonicAppend`] before anything is written: the fetcher
    ///   must truncate first.
    /// - Batches are checked for framing, magic and CRC up to the hard batch size limit
    ///   ([`validate_replicated_batches`]); timestamps, keys and sequences are not: the leader
    ///   checked them, and a follower must accept whatever its leader accepted.
    /// - The leader epoch cache learns each batch's `partitionLeaderEpoch`. Producer state is
    ///   updated as recovery rebuilds it, with no duplicate refusal, so that this replica
    ///   recognises idempotent retries if it becomes leader.
    /// - Segment rolls, index entries, size accounting, sync targets and durability are those
    ///   of [`PartitionLog::append`]. A batch that needs a new segment starts it at its own base
    ///   offset. The first gap written into an active segment first makes the gaps checkpoint
    ///   cover that segment (one small durable write), so that recovery keeps it.
    ///
    /// On an I/O error a prefix of whole batches may have been written; the log end offset
    /// says where the fetcher resumes.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, FollowerAppendError> {
        if records.is_empty() {
            return Ok(None);
        }
        let headers = validate_replicated_batches(records)?;
        let mut expected = self.log_end;
        for h in &headers {
            if h.base_offset < expected {
                return Err(FollowerAppendError::NonMonotonicAppend {
                    expected_at_least: expected,
                    got: h.base_offset,
                });
            }
            expected = match h
                .base_offset
                .0
                .checked_add(i64::from(h.last_offset_delta) + 1)
            {
                Some(next) => Offset(next),
                None => {
                    return Err(FollowerAppendError::OffsetOverflow {
                        base_offset: h.base_offset,
                        last_offset_delta: h.last_offset_delta,
                    })
                }
            };
        }
        // Batches go to the active segment in runs, one write each; a roll ends a run.
        let (mut run_first, mut run_pos, mut run_bytes) = (0, 0, 0u64);
        let mut pos = 0;
        for (i, h) in headers.iter().enumerate() {
            let size = h.total_bytes() as u64;
            let seg = self.active_segment();
            let roll = if run_bytes == 0 && seg.size == 0 {
                // An empty segment takes any batch whose offsets fit relative to its base.
                rel(seg.base, h.next_offset()) > u64::from(u32::MAX)
            } else {
                self.should_roll(run_bytes, size, i - run_first + 1, h.next_offset(), now_ms)
            };
            if roll {
                self.write_follower_run(&records[run_pos..pos], &headers[run_first..i], now_ms)?;
                self.roll_at(h.base_offset)?;
                (run_first, run_pos, run_bytes) = (i, pos, 0);
            }
            run_bytes += size;
            pos += h.total_bytes();
        }
        self.write_follower_run(&records[run_pos..], &headers[run_first..], now_ms)?;
        let (first, last) = (headers[0], headers[headers.len() - 1]);
        Ok(Some(AppendInfo {
            base_offset: first.base_offset,
            last_offset: last.last_offset(),
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            log_append_time_ms: headers
                .iter()
                .filter(|h| h.is_log_append_time())
                .map(|h| h.max_timestamp)
                .max()
                .unwrap_or(-1),
            batch_count: headers.len(),
            bytes: records.len(),
        }))
    }

    /// Writes one run of leader batches (`headers` describe `bytes`) into the active segment.
    fn write_follower_run(
        &mut self,
        bytes: &[u8],
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<(), LogError> {
        if headers.is_empty() {
            return Ok(());
        }
        let placed: Vec<(BatchHeader, Offset)> =
            headers.iter().map(|h| (*h, h.base_offset)).collect();
        self.write_placed(bytes, &placed, now_ms)?;
        self.apply_replicated(bytes, headers);
        Ok(())
    }

    /// Writes whole batches (`placed`: each header with the base offset it is stored at, in
    /// order, matching `bytes`) at the end of the active segment, adds their index entries and
    /// moves the log end past the last one. All or nothing: on error nothing is accounted and
    /// the file is cut back.
    fn write_placed(
        &mut self,
        bytes: &[u8],
        placed: &[(BatchHeader, Offset)],
        now_ms: i64,
    ) -> Result<(), LogError> {
        let Some((last_h, last_base)) = placed.last() else {
            return Ok(());
        };
        let next = Offset(last_base.0 + i64::from(last_h.last_offset_delta) + 1);
        let (seg_base, seg_pos) = {
            let seg = self.active_segment();
            (seg.base, seg.size)
        };
        debug_assert!(placed.iter().all(|(_, b)| *b >= seg_base));
        // The recovery scan expects the segment's first batch at its base and each next one
        // right after the last. A follower copying a compacted leader, or any append after a
        // truncation into a gap, breaks that: make the segment's gaps legitimate first, durably,
        // or recovery would cut the segment at the gap.
        let mut expected = self.active.batches_end.unwrap_or(seg_base);
        let gapped = placed.iter().any(|(h, base)| {
            let gap = *base != expected;
            expected = Offset(base.0 + i64::from(h.last_offset_delta) + 1);
            gap
        });
        if gapped && seg_base >= self.cleaner_checkpoint.max(self.gaps_below) {
            let mark = seg_base.next();
            fsio::write_offset_checkpoint(&*self.disk, &self.dir, GAPS_CHECKPOINT, mark)?;
            self.gaps_below = mark;
            tracing::debug!(dir = ?self.dir, segment = seg_base.0, "active segment may hold offset gaps");
        }
        let file = Arc::clone(&self.active_segment().file);
        if let Err(e) = file.write_all_at(bytes, seg_pos) {
            // Leave no partial batch behind for the next append to follow.
            let _ = file.set_len(seg_pos);
            return Err(e.into());
        }

        let (offsets_before, times_before) = (
            self.active.index.offsets.len(),
            self.active.index.times.len(),
        );
        let mut batch_pos = seg_pos;
        for (h, base) in placed {
            let size = h.total_bytes() as u64;
            let last = Offset(base.0 + i64::from(h.last_offset_delta));
            self.active.builder.on_batch(
                &mut self.active.index,
                rel(seg_base, *base) as u32,
                rel(seg_base, last) as u32,
                batch_pos as u32,
                size,
                h.max_timestamp,
            );
            batch_pos += size;
        }
        if let Err(e) = append_index_entries(
            &*self.active.offset_index,
            &*self.active.time_index,
            &self.active.index,
            offsets_before,
            times_before,
        ) {
            // The batches are written; failing the append now would invite a duplicate retry.
            tracing::warn!(dir = ?self.dir, error = %e, "index write failed; will rewrite the index files");
            self.active.index_files_stale = true;
        }
        if let Some(seg) = self.segments.get_mut(&seg_base) {
            seg.size += bytes.len() as u64;
        }
        self.size_bytes += bytes.len() as u64;
        self.log_end = next;
        self.active.batches_end = Some(next);
        self.active.roll_base_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Whether `bytes` more, in `batches` batches ending before `next`, need a new segment.
    /// `pending` bytes (in batches counted in `batches`) are about to be written to the active
    /// segment ahead of them. An empty segment never rolls.
    fn should_roll(
        &self,
        pending: u64,
        bytes: u64,
        batches: usize,
        next: Offset,
        now_ms: i64,
    ) -> bool {
        let seg = self.active_segment();
        let used = seg.size + pending;
        if used == 0 {
            return false;
        }
        let (oi, ti) = index_bytes(&self.active.index);
        let c = &self.config;
        used + bytes > c.segment_bytes
            || self
                .active
                .roll_base_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= c.max_segment_ms())
            || oi + 8 * batches as u64 > c.segment_index_bytes
            || ti + 12 * batches as u64 > c.segment_index_bytes
            || rel(seg.base, next) > u64::from(u32::MAX)
            || used + bytes > u64::from(u32::MAX)
    }

    /// Closes the active segment (fsyncing its files) and starts a new one at the log end.
    fn roll(&mut self) -> Result<(), LogError> {
        self.roll_at(self.log_end)
    }

    /// Closes the active segment (fsyncing its files) and starts a new one at `new_base`, at
    /// or past the log end. A follower rolls past the log end when the leader's next batch
    /// lies beyond a compaction gap: the log end moves to `new_base` at once, since no offset
    /// in between exists (recovery would say the same of the empty new segment).
    /// Makes the active segment's log, index files and the epochs below it durable before
    /// it stops being active; `times_before` is how many time entries its file held.
    fn seal_active(&mut self, base: Offset, times_before: usize) -> Result<(), LogError> {
        let index = &self.active.index;
        if self.active.index_files_stale {
            write_index_files(&*self.disk, &self.dir, base, index, false)?;
        } else {
            append_index_entries(
                &*self.active.offset_index,
                &*self.active.time_index,
                index,
                index.offsets.len(),
                times_before,
            )?;
        }
        self.active_segment().file.sync_data()?;
        self.active.offset_index.sync_data()?;
        self.active.time_index.sync_data()?;
        // The roll writes a producer snapshot at the new segment's base: the transaction
        // index entries below it must be durable first (see `crate::txn_index`).
        self.active.txn_index.seal()?;
        // Recovery rebuilds only the active segment's epochs (from its batches); every epoch
        // starting below it must be in the checkpoint before the segment stops being active.
        if self.epochs.is_dirty() {
            self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
        }
        Ok(())
    }

    fn roll_at(&mut self, new_base: Offset) -> Result<(), LogError> {
        assert!(
            new_base >= self.log_end && new_base > self.active_segment().base,
            "roll to {new_base} behind the log end {} or the active segment {}",
            self.log_end,
            self.active_segment().base
        );
        let old_base = self.active_segment().base;
        let times_before = self.active.index.times.len();
        // Idempotent: a retried roll does not add the final time entry twice.
        self.active.builder.finish(&mut self.active.index);
        let sealed = self.seal_active(old_base, times_before).and_then(|()| {
            let created = Segment::create(&*self.disk, &self.dir, new_base)?;
            let txn_index = ActiveTxnIndex::create(&*self.disk, &self.dir, new_base)?;
            self.disk.sync_dir(&self.dir)?;
            Ok((created, txn_index))
        });
        let ((seg, (oi, ti)), txn_index) = match sealed {
            Ok(created) => created,
            Err(e) => {
                // The active segment stays active with its whole index; the index files may
                // hold part of this attempt's writes, so the next roll or flush rewrites them.
                self.active.index_files_stale = true;
                return Err(e);
            }
        };
        let index = std::mem::take(&mut self.active.index);
        if let Some(old) = self.segments.get_mut(&old_base) {
            old.set_index(Some(index));
        }
        self.segments.insert(new_base, seg);
        self.active = Active {
            index: SegmentIndex::default(),
            builder: IndexBuilder::new(self.config.index_interval_bytes),
            offset_index: oi,
            time_index: ti,
            roll_base_ms: None,
            index_files_stale: false,
            batches_end: None,
            txn_index,
        };
        self.log_end = new_base;
        self.flushed = self.flushed.max(new_base);
        self.producers
            .write_snapshot(&*self.disk, &self.dir, new_base)?;
        self.producer_snapshot_at = Some(new_base);
        tracing::debug!(dir = ?self.dir, segment = new_base.0, "rolled segment");
        Ok(())
    }

    /// Plans a fetch from `start`: whole batches from the one holding `start`, at most
    /// `max_bytes` of them (but the first whole batch regardless when `min_one_batch`, as
    /// KIP-74 requires), and none whose last offset is at or beyond `max_offset_exclusive`.
    pub fn plan_read(
        &self,
        start: Offset,
        max_bytes: usize,
        max_offset_exclusive: Offset,
        min_one_batch: bool,
    ) -> Result<ReadPlan, LogError> {
        if start < self.log_start || start > self.log_end {
            return Err(self.out_of_range(start));
        }
        let max = max_offset_exclusive.min(self.log_end);
        if start >= max {
            return Ok(ReadPlan::empty());
        }
        let first = self
            .segments
            .range(..=start)
            .next_back()
            .map_or(Offset(i64::MIN), |(b, _)| *b);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let idx = self.index_of(seg)?;
            let Some((pos, h)) = self.find_batch(seg, idx, start)? else {
                continue;
            };
            if delta_damaged(&h, self.segment_end(seg)) {
                // Its last offset delta rotted (see `find_batch`): refused, as a load of it
                // would be, so that the damage is found and repaired, not read around.
                return Err(LogError::Corrupt {
                    path: seg.path(LOG_SUFFIX),
                    position: pos,
                    reason: format!(
                        "batch at offset {} claims offsets up to {}, past the segment's end",
                        h.base_offset,
                        h.last_offset()
                    ),
                });
            }
            if h.last_offset() >= max {
                return Ok(ReadPlan::empty());
            }
            let hw_limit = if max < self.segment_end(seg) {
                self.find_batch(seg, idx, max)?.map_or(seg.size, |(p, _)| p)
            } else {
                seg.size
            };
            let first_bytes = h.total_bytes();
            let end = if first_bytes > max_bytes {
                if !min_one_batch {
                    return Ok(ReadPlan::empty());
                }
                pos + first_bytes as u64
            } else {
                let limit = hw_limit.min(pos.saturating_add(max_bytes as u64));
                self.last_boundary(seg, idx, pos, limit)?
            };
            return Ok(ReadPlan {
                file: Some(Arc::clone(&seg.file)),
                path: seg.path(LOG_SUFFIX),
                position: pos,
                length: (end - pos) as usize,
            });
        }
        Ok(ReadPlan::empty())
    }

    fn out_of_range(&self, requested: Offset) -> LogError {
        LogError::OffsetOutOfRange {
            requested,
            log_start: self.log_start,
            log_end: self.log_end,
        }
    }

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

    /// The base offset of the batch stored at byte `position` of the segment file `path` (as
    /// [`LogError::Corrupt`] names a damaged one), if that file is a segment of this log and
    /// the offset there is plausible for it (the base offset is outside the batch's CRC).
    pub fn batch_offset_at(&self, path: &Path, position: u64) -> Option<Offset> {
        let seg = self
            .segments
            .values()
            .find(|s| s.path(LOG_SUFFIX) == path)?;
        let mut base = [0u8; 8];
        seg.file.read_exact_at(&mut base, position).ok()?;
        let offset = Offset(i64::from_be_bytes(base));
        (offset >= seg.base && offset < self.segment_end(seg)).then_some(offset)
    }

    /// Whether recovery cut the active segment's tail when this log was opened: a torn write,
    /// or a batch damaged at rest, which recovery cannot tell apart (see [`PartitionLog::open`]).
    /// Records a replica had acknowledged to its leader may have gone with it.
    pub fn cut_at_open(&self) -> bool {
        self.cut_at_open
    }

    /// The first batch of the active segment that recovery kept although its CRC fails: a
    /// valid batch followed it, so it was damaged at rest, not torn by a crash. Reads refuse
    /// it.
    pub fn damaged_at_open(&self) -> Option<Offset> {
        self.damaged_at_open
    }

    pub fn log_start_offset(&self) -> Offset {
        self.log_start
    }

    pub fn log_end_offset(&self) -> Offset {
        self.log_end
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration; segment sizes and ages apply from the next append.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// Leader epoch cache entries `(epoch, start offset)`, oldest first.
    pub fn leader_epochs(&self) -> &[(LeaderEpoch, Offset)] {
        self.epochs.entries()
    }

    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producers
    }

    /// ListOffsets by timestamp: the earliest offset at or above the log start whose record
    /// timestamp is ≥ `target_ms`, with that timestamp.
    pub fn offset_for_timestamp(&self, target_ms: i64) -> Result<Option<(Offset, i64)>, LogError> {
        for seg in self.segments.values() {
            if self.segment_end(seg) <= self.log_start {
                continue;
            }
            match self.segment_max_timestamp(seg)? {
                Some(t) if t >= target_ms => {}
                _ => continue,
            }
            let idx = self.index_of(seg)?;
            let mut pos = idx.position_for_timestamp(target_ms);
            while let Some(h) = seg.header_at(pos)? {
                if h.last_offset() >= self.log_start && h.max_timestamp >= target_ms {
                    if let Some(found) = self.find_record(seg, pos, &h, target_ms)? {
                        return Ok(Some(found));
                    }
                }
                pos += h.total_bytes() as u64;
            }
        }
        Ok(None)
    }

    /// Decodes the batch at `pos` and returns its first record at or above the log start with
    /// a timestamp ≥ `target_ms`.
    fn find_record(
        &self,
        seg: &Segment,
        pos: u64,
        h: &BatchHeader,
        target_ms: i64,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            path: seg.path(LOG_SUFFIX),
            position: pos,
            reason,
        };
        let mut buf = vec![0u8; h.total_bytes()];
        seg.file.read_exact_at(&mut buf, pos)?;
        let set = decode_records(&buf, h).map_err(|e| corrupt(e.to_string()))?;
        // A LogAppendTime batch's records all carry its append time (the decoder reports the
        // producer's CreateTime from the record deltas).
        let timestamp_of = |r: &kafka_protocol::records::Record| {
            if h.is_log_append_time() {
                h.max_timestamp
            } else {
                r.timestamp
            }
        };
        Ok(set
            .records
            .iter()
            .find(|r| timestamp_of(r) >= target_ms && r.offset >= self.log_start.0)
            .map(|r| (Offset(r.offset), timestamp_of(r))))
    }

    /// ListOffsets -3 (KIP-734): the offset and timestamp of the record with the largest
    /// timestamp (the earliest such record if several share it).
    pub fn max_timestamp_offset(&self) -> Result<Option<(Offset, i64)>, LogError> {
        let mut max = None;
        for seg in self.segments.values() {
            if self.segment_end(seg) <= self.log_start {
                continue;
            }
            if let Some(t) = self.segment_max_timestamp(seg)? {
                max = Some(max.map_or(t, |m: i64| m.max(t)));
            }
        }
        match max {
            Some(t) => self.offset_for_timestamp(t),
            None => Ok(None),
        }
    }

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
    fn checkpoint_log_start(&mut self) -> io::Result<()> {
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

    fn delete_segments(&mut self, bases: &[Offset]) -> Result<(u64, usize), LogError> {
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

    /// A leader's new `epoch` starts at the log end, before anything is written in it (Kafka's
    /// `maybeAssignEpochStartOffset`). Ignored unless newer than every epoch the log knows.
    pub fn assign_leader_epoch(&mut self, epoch: LeaderEpoch) {
        self.epochs.assign(epoch, self.log_end);
    }

    /// KIP-101 OffsetForLeaderEpoch: the largest epoch ≤ `epoch` this log knows and the
    /// offset where it ended. `None` if the log knows no epoch ≤ ... or `epoch` is newer than any.
    pub fn epoch_end_offset(&self, epoch: LeaderEpoch) -> Option<(LeaderEpoch, Offset)> {
        self.epochs.end_offset_for(epoch, self.log_end)
    }

    /// Deletes the partition's directory (topic deletion).
    pub fn delete(self) -> Result<(), LogError> {
        let (disk, dir) = (Arc::clone(&self.disk), self.dir.clone());
        drop(self);
        disk.remove_dir_all(&dir)?;
        Ok(())
    }
}

fn needs_recompression(h: &BatchHeader, codec: i16) -> bool {
    !h.is_control() && h.compression() != codec
}

/// The record set with every batch not in `codec` recompressed (see [`crate::batch::recompress`])
/// and the others copied, with the new headers. A recompressed batch larger than `max_bytes`
/// (`max.message.bytes`) is refused, as Kafka does.
fn recompress_set(
    records: &[u8],
    headers: &[BatchHeader],
    codec: i16,
    max_bytes: usize,
) -> Result<(Vec<u8>, Vec<BatchHeader>), BatchError> {
    let mut out = Vec::with_capacity(records.len());
    let mut out_headers = Vec::with_capacity(headers.len());
    let mut pos = 0;
    for h in headers {
        let end = pos + h.total_bytes();
        let batch = &records[pos..end];
        if needs_recompression(h, codec) {
            let encoded = recompress(batch, h, codec)?;
            if encoded.len() > max_bytes {
                return Err(BatchError::TooLarge {
                    size: encoded.len(),
                    max: max_bytes,
                });
            }
            out_headers.push(BatchHeader::parse(&encoded)?);
            out.extend_from_slice(&encoded);
        } else {
            out_headers.push(*h);
            out.extend_from_slice(batch);
        }
        pos = end;
    }
    Ok((out, out_headers))
}

/// Gives every batch of a validated record set the topic's timestamp type (see
/// [`PartitionLog::append`]), keeping `headers` in step with the bytes. Control batches are
/// left alone (clients cannot send them; the rule is Kafka's).
fn stamp_timestamp_type(
    records: &mut [u8],
    headers: &mut [BatchHeader],
    log_append_time: bool,
    now_ms: i64,
) {
    let mut pos = 0;
    for h in headers.iter_mut() {
        let end = pos + h.total_bytes();
        if !h.is_control() && (log_append_time || h.is_log_append_time()) {
            let max_timestamp = if log_append_time {
                now_ms
            } else {
                h.max_timestamp
            };
            set_max_timestamp(&mut records[pos..end], log_append_time, max_timestamp);
            *h = BatchHeader::parse(&records[pos..end]).expect("the batch was just validated");
        }
        pos = end;
    }
}

/// Compacted topics refuse records without a key (Kafka: INVALID_RECORD), checked record by
/// record, which for a compressed batch means decompressing it.
fn check_keys(records: &[u8], headers: &[BatchHeader]) -> Result<(), BatchError> {
    let mut pos = 0;
    let mut index = 0i32;
    let mut keyless = Vec::new();
    for h in headers {
        let end = pos + h.total_bytes();
        let set = decode_records(&records[pos..end], h)?;
        for r in &set.records {
            if r.key.is_none() {
                keyless.push(index);
            }
            index = index.saturating_add(1);
        }
        pos = end;
    }
    if keyless.is_empty() {
        Ok(())
    } else {
        Err(BatchError::MissingKey { records: keyless })
    }
}

fn read_log_start(disk: &dyn Disk, dir: &Path) -> Result<Option<Offset>, LogError> {
    Ok(fsio::read_offset_checkpoint(
        disk,
        dir,
        LOG_START_CHECKPOINT,
    )?)
}

fn write_log_start(disk: &dyn Disk, dir: &Path, offset: Offset) -> io::Result<()> {
    fsio::write_offset_checkpoint(disk, dir, LOG_START_CHECKPOINT, offset)
}
