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

use crate::config::LogConfig;
use crate::epoch_cache::EpochCache;
use crate::error::LogError;
use crate::producer_state::ProducerStateManager;
use crate::segment::{IndexBuilder, Segment, SegmentIndex};
use crate::txn::UnreplicatedTxns;
use crate::txn_index::ActiveTxnIndex;
use spate_types::disk::{Disk, DiskFile};
use spate_types::{LeaderEpoch, Offset};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

mod append;
mod compact;
mod flush;
mod open;
mod read;
mod retention;
mod transactions;
mod truncate;

pub use read::ReadPlan;

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

fn remove_if_exists(disk: &dyn Disk, path: &Path) -> io::Result<()> {
    match disk.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rel(base: Offset, offset: Offset) -> u64 {
    (offset.0 - base.0).max(0) as u64
}

impl PartitionLog {
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

    fn out_of_range(&self, requested: Offset) -> LogError {
        LogError::OffsetOutOfRange {
            requested,
            log_start: self.log_start,
            log_end: self.log_end,
        }
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
}
