//! Log compaction (`cleanup.policy=compact`): keeps the latest record of every key in the
//! rolled segments, as Kafka's log cleaner does.
//!
//! Three phases, so that the partition lock is held only briefly:
//! 1. [`PartitionLog::plan_compaction`](crate::PartitionLog::plan_compaction) (under the lock):
//!    picks the cleanable segments (rolled, below the high watermark, older than
//!    `min.compaction.lag.ms`), checks `min.cleanable.dirty.ratio` (or, below it, whether a
//!    dirty segment's first batch is older than `max.compaction.lag.ms`, KIP-354) and takes
//!    the segments' open files and the aborted transactions that begin in them and end after
//!    them (read from the transaction indexes, the active segment's included). Rolled segment
//!    files are never written again, so reading them later is safe. A compacted topic's active
//!    segment rolls at `max.compaction.lag.ms` too
//!    ([`LogConfig::max_segment_ms`](crate::LogConfig::max_segment_ms)), so no record waits
//!    longer than about that, plus the cleaner's backoff, to become cleanable.
//! 2. [`CompactionPlan::execute`] (no lock, blocking I/O): opens the planned segments'
//!    transaction indexes, builds the key map from the dirty section (offsets from the cleaner
//!    checkpoint on), then rewrites every cleanable segment into `{base}.{end}.log.cleaned`
//!    files (with their indexes), grouping consecutive segments up to `segment.bytes`, and
//!    fsyncs them.
//! 3. [`PartitionLog::commit_compaction`](crate::PartitionLog::commit_compaction) (under the
//!    lock): checks that the segments are still the ones read (truncation, retention or another
//!    compaction abort the pass), renames each cleaned transaction index to
//!    `{base}.{end}.txnindex.swap` and each `.cleaned` log to `{base}.{end}.log.swap`,
//!    fsyncs the directory (the commit point), removes the replaced segments, renames the swap
//!    files and the indexes into place (the log last) and swaps the in-memory segments.
//!    Readers holding the open file of a replaced segment keep reading the old bytes.
//!    [`CompactionCommit::persist`] then (no lock) writes the cleaner checkpoint.
//!
//! Crash safety (`compaction/recovery.rs`): a `{base}.{end}.log.swap` file is complete (it was
//! fsynced before the rename), so recovery rolls it forward: it deletes the segments with base
//! offsets in `[base, end)` and renames the swap file to `{base}.log`. The offset and time
//! indexes are rebuilt from the log; the transaction index cannot be, so recovery renames the
//! cleaned one (its `.txnindex.swap`, or its `.txnindex.cleaned` if that rename was lost; both
//! were fsynced before the commit point) to `{base}.txnindex`, or, finding neither, keeps
//! `{base}.txnindex`, which is then already the cleaned one. Then it deletes every other
//! `*.cleaned` and `.txnindex.swap` file. All groups of a pass share the one commit point, so a
//! marker removed with the last data of its transaction in another group never outlives, nor is
//! outlived by, that removal.
//!
//! What survives a pass, per batch of the rewritten segments (Kafka's `LogCleaner` with its
//! `CleanedTransactionMetadata`; how the pass learns each transaction's outcome, and its
//! limits, are in `compaction/txn.rs`):
//! - Nothing at or past the last stable offset is cleaned: phase 1 plans only segments that
//!   end at or below it, so every transaction with data in them is complete and open
//!   transactions are never touched.
//! - The last batch of every producer id known to the producer state is kept whole (Kafka
//!   does the same), so idempotent producer state (last sequence, epoch) survives compaction.
//!   This holds for a transactional batch too, aborted or not.
//! - A data batch of an ABORTED transaction (one an aborted-transaction entry of its producer
//!   spans, see the transaction indexes in `txn_index`) is removed whole, and its records
//!   never enter the key map, so they can never make an older committed value disappear.
//! - Records of COMMITTED transactions are compacted like any other: they enter the key map,
//!   and are removed once superseded or, as tombstones, expired (below).
//! - A control batch is kept unless it is a COMMIT or ABORT marker such that: no data batch of
//!   its transaction survives the pass before it (all of it was cleaned away, in this pass or
//!   earlier, or it had none); its batch's max timestamp is more than `delete.retention.ms`
//!   before the cleaner's clock; and it lies below the oldest producer state snapshot on disk
//!   (recovery replays from a snapshot; one taken inside a transaction whose marker is gone
//!   would reopen that transaction for ever). Then it is removed.
//! - A segment overlapped by more aborted transactions than
//!   [`CompactionLimits::txn_entries_max`] keeps its transactional batches and markers whole
//!   and none of them enters the key map.
//! - Otherwise a record is kept if it lies at or past the end of the key map's coverage, or if
//!   it has a key, no later record of that key is in the key map, and it is not a tombstone
//!   older than `delete.retention.ms`. Records without a key are removed (Kafka does too;
//!   compacted topics refuse them on append).
//!
//! The cleaned segment's transaction index holds, in order, the entries of the indexes of the
//! segments it replaces whose ABORT marker it keeps: an entry goes only with its marker, which
//! stays while any data of its transaction remains, so `read_committed` fetches still filter
//! every aborted record left. Each entry is copied unchanged (its first offset may now precede
//! the transaction's first surviving record, which filters nothing more).
//!
//! A batch that keeps every record is copied byte for byte; one that keeps none is dropped; one
//! that keeps some is re-encoded by kafka-protocol's encoder with the same compression,
//! partition leader epoch, producer id/epoch, timestamp type (a LogAppendTime batch keeps its
//! append time as max timestamp) and record offsets and timestamps. The encoder derives the batch's base offset from its first surviving record (Kafka keeps the
//! original base offset); record offsets, which are what consumers see, never change.
//!
//! Choices:
//! - Keys are identified by the first 16 bytes of their SHA-256 (Kafka: 16-byte MD5). A
//!   collision (probability about n²/2¹²⁹) could drop a record whose key collides with a later
//!   one; that is Kafka's trade-off too.
//! - The key map holds at most [`CompactionLimits::key_map_entries_max`] keys (about 24 bytes
//!   each plus hash table overhead). If the dirty section has more, the pass cleans up to the
//!   offset where the map filled and the next pass continues from there.
//! - A tombstone's age is its batch's max timestamp (the producer's CreateTime, or the append
//!   time on a LogAppendTime topic) measured against the cleaner's clock; a batch without a
//!   timestamp keeps its tombstones.
//! - A marker's age is measured the same way, from the time the leader wrote it. Kafka
//!   (KIP-534) instead stamps a *delete horizon* (`now + delete.retention.ms`) into a marker's
//!   batch on the first pass that finds it removable and removes it on a later pass past that
//!   horizon, so its window starts when the data became removable. Ours starts earlier, at the
//!   marker's write, which is acceptable: in-sync replicas already hold the marker when it
//!   becomes cleanable (passes stay below the high watermark), so only a reader lagging by
//!   more than `delete.retention.ms` can have read a transaction's data and miss its marker,
//!   the exposure tombstones have here too; and it avoids rewriting every marker once more to
//!   stamp the horizon.
//! - The cleaner checkpoint (`cleaner-offset-checkpoint`) is advisory: losing it or finding it
//!   stale only makes a pass clean more or less; it never affects which offsets exist.

use crate::batch::{check_batch, decode_records, reencode, BatchHeader, HEADER_BYTES};
use crate::error::LogError;
use crate::fsio;
use crate::producer_state::ProducerStateManager;
use crate::segment::{
    file_name, write_index_pair, IndexBuilder, SegmentIndex, INDEX_SUFFIX, LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use crate::txn::AbortedTxn;
use crate::txn_index::TXN_INDEX_SUFFIX;
use kafka_protocol::records::Record;
use sha2::{Digest, Sha256};
use spate_types::disk::{Disk, DiskFile, OpenMode};
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{Offset, ProducerId};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use txn::{SegmentCursor, TxnIndexes, TxnOutcome, TxnPass};

mod recovery;
mod txn;
pub(crate) use recovery::recover;
pub use txn::TXN_ENTRIES_MAX;

/// Default bound of the key map: 1 Mi keys, about 32 MiB (Kafka's `log.cleaner.dedupe.buffer.size`
/// plays this role). Passes run one partition at a time, so this bounds the cleaner's memory.
pub const KEY_MAP_ENTRIES_MAX: usize = 1 << 20;
pub(crate) const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
pub(crate) const SWAP_SUFFIX: &str = ".log.swap";
pub(crate) const TXN_SWAP_SUFFIX: &str = ".txnindex.swap";
/// Every file a pass writes per cleaned group, as `{base}.{end}{suffix}.cleaned`.
const CLEANED_SUFFIXES: [&str; 4] = [
    LOG_SUFFIX,
    INDEX_SUFFIX,
    TIME_INDEX_SUFFIX,
    TXN_INDEX_SUFFIX,
];

/// Resource bounds of one compaction pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionLimits {
    /// Most distinct keys the key map holds (at least 1 is used).
    pub key_map_entries_max: usize,
    /// Most aborted transactions held for one segment, and most producers tracked with
    /// transactional data kept but no marker read yet (at least 1 is used; see
    /// `compaction/txn.rs`).
    pub txn_entries_max: usize,
}

impl Default for CompactionLimits {
    fn default() -> Self {
        CompactionLimits {
            key_map_entries_max: KEY_MAP_ENTRIES_MAX,
            txn_entries_max: TXN_ENTRIES_MAX,
        }
    }
}

/// Why a pass did nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SkipReason {
    /// `cleanup.policy` does not include `compact`.
    NotCompacted,
    /// No rolled segment is old enough (`min.compaction.lag.ms`) and below the high watermark.
    NothingCleanable,
    /// Everything cleanable is below the cleaner checkpoint.
    NothingDirty,
    /// `dirty_bytes / total_bytes` is below `min.cleanable.dirty.ratio`.
    DirtyRatioBelowMinimum { dirty_bytes: u64, total_bytes: u64 },
}

/// Why a pass was planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionTrigger {
    /// The dirty share of the cleanable segments reached `min.cleanable.dirty.ratio`.
    DirtyRatio,
    /// Below that ratio, a dirty segment holds a record `overdue_ms` past
    /// `max.compaction.lag.ms` (KIP-354; Kafka's "max compaction delay").
    MaxCompactionLag { overdue_ms: i64 },
}

/// What a pass changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Data records removed: superseded, expired tombstones, and those of aborted transactions.
    pub records_removed: u64,
    pub tombstones_removed: u64,
    pub batches_rewritten: u64,
    /// Data batches that lost every record to a later value or tombstone expiry.
    pub batches_dropped: u64,
    /// Data batches of aborted transactions removed whole.
    pub aborted_batches_removed: u64,
    /// Transaction markers (COMMIT and ABORT control batches) removed.
    pub markers_removed: u64,
    /// The new cleaner checkpoint: everything below it has been compacted once.
    pub cleaned_up_to: Offset,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CompactionOutcome {
    Skipped(SkipReason),
    /// The log changed while the pass ran outside the lock (truncation, retention, another
    /// pass); nothing was swapped and the cleaned files were removed.
    Aborted,
    Compacted(CompactionStats),
}

/// The result of phase 1.
pub enum PlannedCompaction {
    Plan(CompactionPlan),
    Skip(SkipReason),
}

/// A rolled segment as phase 1 saw it.
#[derive(Clone, Debug)]
pub(crate) struct PlannedSegment {
    pub base: Offset,
    /// Offset after the segment (the next segment's base).
    pub end: Offset,
    pub file: Arc<dyn DiskFile>,
    pub size: u64,
}

/// Phase 1's output: everything phase 2 needs, with no reference to the log.
pub struct CompactionPlan {
    /// The log's disk: phase 2 reads and writes through it.
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) dir: PathBuf,
    pub(crate) generation: u64,
    pub(crate) now_ms: i64,
    pub(crate) delete_retention_ms: i64,
    pub(crate) segment_bytes: u64,
    pub(crate) index_interval_bytes: u64,
    pub(crate) first_dirty: Offset,
    pub(crate) segments: Vec<PlannedSegment>,
    /// Last offset of the last batch of every producer id in the producer state.
    pub(crate) producer_last: BTreeMap<ProducerId, Offset>,
    /// The aborted transactions whose first offset is below the end of `segments` and whose
    /// marker is at or past it, in marker order (read under the lock: they may be in the
    /// active segment's index).
    pub(crate) aborted_after: Vec<AbortedTxn>,
    pub(crate) key_map_entries_max: usize,
    pub(crate) txn_entries_max: usize,
    pub(crate) trigger: CompactionTrigger,
}

impl CompactionPlan {
    /// Why phase 1 planned this pass.
    pub fn trigger(&self) -> CompactionTrigger {
        self.trigger
    }
}

/// One cleaned file replacing consecutive segments `originals`.
pub(crate) struct CleanedGroup {
    pub base: Offset,
    pub end: Offset,
    pub originals: Vec<PlannedSegment>,
    pub file: Arc<dyn DiskFile>,
    pub size: u64,
    pub index: SegmentIndex,
}

impl CleanedGroup {
    pub fn cleaned_path(dir: &Path, base: Offset, end: Offset, suffix: &str) -> PathBuf {
        dir.join(format!(
            "{:020}.{:020}{suffix}{CLEANED_SUFFIX}",
            base.0, end.0
        ))
    }

    pub fn swap_path(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "{:020}.{:020}{SWAP_SUFFIX}",
            self.base.0, self.end.0
        ))
    }

    pub fn txn_swap_path(&self, dir: &Path) -> PathBuf {
        txn_swap_path(dir, self.base, self.end)
    }
}

fn txn_swap_path(dir: &Path, base: Offset, end: Offset) -> PathBuf {
    dir.join(format!("{:020}.{:020}{TXN_SWAP_SUFFIX}", base.0, end.0))
}

/// Phase 2's output. Dropping it without a successful commit removes its cleaned files.
pub struct PreparedCompaction {
    pub(crate) disk: Arc<dyn Disk>,
    pub(crate) dir: PathBuf,
    pub(crate) generation: u64,
    pub(crate) cleaned_up_to: Offset,
    pub(crate) groups: Vec<CleanedGroup>,
    pub(crate) stats: CompactionStats,
}

impl PreparedCompaction {
    pub(crate) fn remove_files(&mut self) {
        for g in self.groups.drain(..) {
            for suffix in CLEANED_SUFFIXES {
                let _ = self.disk.remove_file(&CleanedGroup::cleaned_path(
                    &self.dir, g.base, g.end, suffix,
                ));
            }
        }
    }
}

impl Drop for PreparedCompaction {
    fn drop(&mut self) {
        self.remove_files();
    }
}

/// Phase 3's output: the swap is done; [`CompactionCommit::persist`] records the checkpoint.
#[must_use = "persist() records the cleaner checkpoint"]
pub struct CompactionCommit {
    pub(crate) outcome: CompactionOutcome,
    /// Where to write the cleaner checkpoint, and the offset it records.
    pub(crate) checkpoint: Option<(Arc<dyn Disk>, PathBuf, Offset)>,
}

impl CompactionCommit {
    /// fsyncs the directory (making the final renames durable) and writes the cleaner
    /// checkpoint. Runs without the partition lock; skipping it only makes the next pass
    /// consider more of the log dirty.
    pub fn persist(self) -> Result<CompactionOutcome, LogError> {
        if let Some((disk, dir, offset)) = &self.checkpoint {
            disk.sync_dir(dir)?;
            write_checkpoint(&**disk, dir, *offset)?;
        }
        Ok(self.outcome)
    }

    pub fn outcome(&self) -> CompactionOutcome {
        self.outcome
    }
}

type KeyHash = [u8; 16];

fn key_hash(key: &[u8]) -> KeyHash {
    let digest = Sha256::digest(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Calls `f` with every batch (header and bytes, CRC verified) of a rolled segment file, in
/// order. A torn or corrupt batch fails the pass: the cleaner never copies corruption.
fn for_each_batch(
    path: &Path,
    file: &dyn DiskFile,
    size: u64,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<bool, LogError>,
) -> Result<(), LogError> {
    let corrupt = |position: u64, reason: String| LogError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    };
    let mut header = [0u8; HEADER_BYTES];
    let mut buf = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        if size - pos < HEADER_BYTES as u64 {
            return Err(corrupt(pos, "truncated batch header".into()));
        }
        file.read_exact_at(&mut header, pos)?;
        let h = BatchHeader::parse(&header).map_err(|e| corrupt(pos, e.to_string()))?;
        let total = h.total_bytes() as u64;
        if h.batch_length < crate::batch::BATCH_LENGTH_MIN
            || total > BATCH_BYTES_MAX as u64
            || total > size - pos
        {
            return Err(corrupt(pos, format!("bad batch length {}", h.batch_length)));
        }
        buf.resize(total as usize, 0);
        file.read_exact_at(&mut buf, pos)?;
        check_batch(&buf, BATCH_BYTES_MAX).map_err(|e| corrupt(pos, e.to_string()))?;
        if !f(&h, &buf)? {
            return Ok(());
        }
        pos += total;
    }
    Ok(())
}

impl CompactionPlan {
    fn path_of(&self, seg: &PlannedSegment) -> PathBuf {
        self.dir.join(file_name(seg.base, LOG_SUFFIX))
    }

    /// Maps each key's hash to its latest offset in the dirty section, leaving out control
    /// batches and the batches of aborted transactions (and of segments whose transactions
    /// overflowed, see `compaction/txn.rs`). Returns the map and the offset it covers up to
    /// (exclusive): the end of the dirty section, or the offset of the first record whose key
    /// did not fit.
    fn build_key_map(
        &self,
        txns: &TxnIndexes,
    ) -> Result<(HashMap<KeyHash, i64>, Offset), LogError> {
        let max = self.key_map_entries_max.max(1);
        let mut map: HashMap<KeyHash, i64> = HashMap::new();
        let dirty_end = self.segments.last().map_or(self.first_dirty, |s| s.end);
        let mut stopped_at = None;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.end <= self.first_dirty {
                continue;
            }
            let path = self.path_of(seg);
            let mut cursor = SegmentCursor::new(i);
            for_each_batch(&path, &*seg.file, seg.size, |h, bytes| {
                if h.last_offset() < self.first_dirty || h.is_control() {
                    return Ok(true);
                }
                if h.is_transactional() && cursor.outcome(txns, h)? != TxnOutcome::Committed {
                    return Ok(true);
                }
                let set = decode_records(bytes, h).map_err(|e| corrupt(&path, e))?;
                for r in &set.records {
                    if r.offset < self.first_dirty.0 {
                        continue;
                    }
                    let Some(key) = &r.key else { continue };
                    let k = key_hash(key);
                    if map.len() >= max && !map.contains_key(&k) {
                        stopped_at = Some(Offset(r.offset));
                        return Ok(false);
                    }
                    map.insert(k, r.offset);
                }
                Ok(true)
            })?;
            if stopped_at.is_some() {
                break;
            }
        }
        Ok((map, stopped_at.unwrap_or(dirty_end)))
    }

    /// Groups consecutive segments below `map_end` (as ranges of `self.segments`) so that each
    /// cleaned file stays within `segment.bytes` and relative offsets and positions fit the
    /// index's u32s.
    fn groups(&self, map_end: Offset) -> Vec<Range<usize>> {
        let limit = self.segment_bytes.min(u64::from(u32::MAX));
        let mut groups: Vec<Range<usize>> = Vec::new();
        let mut bytes = 0u64;
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.base >= map_end {
                break;
            }
            let fits = groups.last().is_some_and(|g| {
                let span = seg.end.0 - self.segments[g.start].base.0;
                bytes + seg.size <= limit && span <= i64::from(u32::MAX)
            });
            match groups.last_mut() {
                Some(g) if fits => {
                    bytes += seg.size;
                    g.end = i + 1;
                }
                _ => {
                    bytes = seg.size;
                    groups.push(i..i + 1);
                }
            }
        }
        groups
    }

    /// Phase 2: builds the key map and writes the cleaned files. Blocking I/O; call it without
    /// the partition lock (e.g. on `spawn_blocking`).
    pub fn execute(self) -> Result<PreparedCompaction, LogError> {
        let txns = TxnIndexes::open(
            &*self.disk,
            &self.dir,
            &self.segments,
            &self.aborted_after,
            self.txn_entries_max,
        )?;
        let (map, map_end) = self.build_key_map(&txns)?;
        // Listed here rather than under the lock: a snapshot written since phase 1 is at the
        // log end, past every planned segment, and truncation aborts the commit.
        let snapshots_from = ProducerStateManager::oldest_snapshot(&*self.disk, &self.dir)?;
        let mut pass = Pass {
            txns,
            map,
            map_end,
            txn: TxnPass::new(
                self.now_ms,
                self.delete_retention_ms,
                snapshots_from,
                self.txn_entries_max,
            ),
            stats: CompactionStats {
                cleaned_up_to: map_end,
                ..Default::default()
            },
        };
        let mut prepared = PreparedCompaction {
            disk: Arc::clone(&self.disk),
            dir: self.dir.clone(),
            generation: self.generation,
            cleaned_up_to: map_end,
            groups: Vec::new(),
            stats: CompactionStats::default(),
        };
        for range in self.groups(map_end) {
            let group = self.clean_group(range, &mut pass)?;
            prepared.groups.push(group);
        }
        prepared.stats = pass.stats;
        self.disk.sync_dir(&self.dir)?;
        Ok(prepared)
    }

    fn clean_group(&self, range: Range<usize>, pass: &mut Pass) -> Result<CleanedGroup, LogError> {
        let originals = self.segments[range.clone()].to_vec();
        let base = originals[0].base;
        let end = originals[originals.len() - 1].end;
        let path = |suffix| CleanedGroup::cleaned_path(&self.dir, base, end, suffix);
        // Until the group is pushed to the caller's PreparedCompaction, which removes its files
        // when dropped, a failure removes them here.
        let remove_all = || {
            for suffix in CLEANED_SUFFIXES {
                let _ = self.disk.remove_file(&path(suffix));
            }
        };
        let mut write = || -> Result<_, LogError> {
            let out = self.disk.open(&path(LOG_SUFFIX), OpenMode::Truncate)?;
            let txn_out = self
                .disk
                .open(&path(TXN_INDEX_SUFFIX), OpenMode::Truncate)?;
            let (size, index) = self.write_group(&*out, &*txn_out, range.clone(), base, pass)?;
            out.sync_data()?;
            write_index_pair(
                &*self.disk,
                &path(INDEX_SUFFIX),
                &path(TIME_INDEX_SUFFIX),
                &index,
                true,
            )?;
            txn_out.sync_data()?;
            Ok((out, size, index))
        };
        let (out, size, mut index) = write().inspect_err(|_| remove_all())?;
        pass.stats.segments_before += originals.len();
        pass.stats.segments_after += 1;
        pass.stats.bytes_before += originals.iter().map(|s| s.size).sum::<u64>();
        pass.stats.bytes_after += size;
        index.offsets.shrink_to_fit();
        Ok(CleanedGroup {
            base,
            end,
            originals,
            file: out,
            size,
            index,
        })
    }

    /// Writes the surviving batches of the segments in `range` to `out` and the surviving
    /// entries of their transaction indexes to `txn_out`; returns the log's size and index.
    fn write_group(
        &self,
        out: &dyn DiskFile,
        txn_out: &dyn DiskFile,
        range: Range<usize>,
        base: Offset,
        pass: &mut Pass,
    ) -> Result<(u64, SegmentIndex), LogError> {
        let mut index = SegmentIndex::default();
        let mut builder = IndexBuilder::new(self.index_interval_bytes);
        let mut pos = 0u64;
        let mut txn_entries = 0u64;
        for i in range {
            let seg = &self.segments[i];
            let path = self.path_of(seg);
            let mut cursor = SegmentCursor::new(i);
            for_each_batch(&path, &*seg.file, seg.size, |h, bytes| {
                let cleaned = self.clean_batch(h, bytes, &path, &mut cursor, pass)?;
                let written: &[u8] = match &cleaned {
                    Cleaned::Whole => bytes,
                    Cleaned::Dropped => return Ok(true),
                    Cleaned::Rewritten(b) => b,
                };
                let wh =
                    BatchHeader::parse(written).map_err(|e| io::Error::other(e.to_string()))?;
                out.write_all_at(written, pos)?;
                builder.on_batch(
                    &mut index,
                    (wh.base_offset.0 - base.0) as u32,
                    (wh.last_offset().0 - base.0) as u32,
                    pos as u32,
                    written.len() as u64,
                    wh.max_timestamp,
                );
                pos += written.len() as u64;
                Ok(true)
            })?;
            cursor.write_index(&pass.txns, txn_out, &mut txn_entries)?;
        }
        builder.finish(&mut index);
        Ok((pos, index))
    }

    /// Decides what of one batch of the segment `cursor` reads survives.
    fn clean_batch(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        path: &Path,
        cursor: &mut SegmentCursor,
        pass: &mut Pass,
    ) -> Result<Cleaned, LogError> {
        if h.is_control() {
            let removed = pass
                .txn
                .remove_marker(h, bytes, cursor, &pass.txns, &mut pass.stats)?;
            return Ok(if removed {
                Cleaned::Dropped
            } else {
                Cleaned::Whole
            });
        }
        let outcome = if h.is_transactional() {
            Some(cursor.outcome(&pass.txns, h)?)
        } else {
            None
        };
        let producers_last =
            h.has_producer_id() && self.producer_last.get(&h.producer_id) == Some(&h.last_offset());
        if outcome == Some(TxnOutcome::Aborted) && !producers_last {
            pass.stats.aborted_batches_removed += 1;
            pass.stats.records_removed += h.records_count.max(0) as u64;
            return Ok(Cleaned::Dropped);
        }
        let cleaned = if producers_last
            || h.base_offset >= pass.map_end
            || outcome.is_some_and(|o| o != TxnOutcome::Committed)
        {
            Cleaned::Whole
        } else {
            self.clean_records(h, bytes, &pass.map, pass.map_end, &mut pass.stats)
                .map_err(|e| corrupt(path, e))?
        };
        if outcome.is_some() && !matches!(cleaned, Cleaned::Dropped) {
            pass.txn.data_kept(h);
        }
        Ok(cleaned)
    }

    /// Decides which records of a data batch survive by their keys.
    fn clean_records(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        map: &HashMap<KeyHash, i64>,
        map_end: Offset,
        stats: &mut CompactionStats,
    ) -> Result<Cleaned, crate::batch::BatchError> {
        let set = decode_records(bytes, h)?;
        let tombstones_expire = h.max_timestamp >= 0
            && self.now_ms.saturating_sub(h.max_timestamp) > self.delete_retention_ms;
        let keep = |r: &Record| {
            if r.offset >= map_end.0 {
                return true;
            }
            let Some(key) = &r.key else { return false };
            let superseded = map
                .get(&key_hash(key))
                .is_some_and(|latest| *latest > r.offset);
            let expired_tombstone = r.value.is_none() && tombstones_expire;
            !(superseded || expired_tombstone)
        };
        let kept: Vec<&Record> = set.records.iter().filter(|r| keep(r)).collect();
        let removed = set.records.len() - kept.len();
        stats.records_removed += removed as u64;
        stats.tombstones_removed += set
            .records
            .iter()
            .filter(|r| r.value.is_none() && !keep(r))
            .count() as u64;
        if removed == 0 {
            return Ok(Cleaned::Whole);
        }
        if kept.is_empty() {
            stats.batches_dropped += 1;
            return Ok(Cleaned::Dropped);
        }
        let buf = reencode(kept.iter().copied(), set.compression, h)?;
        stats.batches_rewritten += 1;
        Ok(Cleaned::Rewritten(buf))
    }
}

/// The state of the clean phase of a pass, across its groups.
struct Pass<'a> {
    txns: TxnIndexes<'a>,
    map: HashMap<KeyHash, i64>,
    map_end: Offset,
    txn: TxnPass,
    stats: CompactionStats,
}

fn corrupt(path: &Path, e: crate::batch::BatchError) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        reason: e.to_string(),
    }
}

enum Cleaned {
    Whole,
    Dropped,
    Rewritten(Vec<u8>),
}

pub(crate) fn read_checkpoint(disk: &dyn Disk, dir: &Path) -> Result<Option<Offset>, LogError> {
    Ok(fsio::read_offset_checkpoint(disk, dir, CLEANER_CHECKPOINT)?)
}

fn write_checkpoint(disk: &dyn Disk, dir: &Path, offset: Offset) -> io::Result<()> {
    fsio::write_offset_checkpoint(disk, dir, CLEANER_CHECKPOINT, offset)
}
