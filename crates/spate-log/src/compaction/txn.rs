//! Transactions in a compaction pass (Kafka's `CleanedTransactionMetadata`): which data batches
//! belong to aborted transactions, whether a marker's transaction still has data in the cleaned
//! log, and what the cleaned segments' transaction indexes hold. See the parent module's docs
//! for what a pass keeps; this module is how it knows.
//!
//! - **Outcome of a transactional data batch.** Every transaction with data in the planned
//!   segments is complete (they end at or below the last stable offset), so a batch is aborted
//!   if an aborted-transaction entry of its producer spans it, and committed otherwise. The
//!   entries spanning a segment `[base, end)` are those of its own index (markers in it) plus
//!   those whose marker lies after it and whose first offset is below `end`: read from the later
//!   planned segments' indexes until an entry's last stable offset reaches `end` (every later
//!   transaction began at or after it, as in
//!   [`PartitionLog::aborted_transactions`](crate::PartitionLog::aborted_transactions)), then
//!   from [`CompactionPlan::aborted_after`](super::CompactionPlan), which phase 1 read under the
//!   lock (it may come from the active segment's index). A segment's entries are loaded only
//!   when a pass meets one of its transactional batches or markers.
//! - **Limits.** One segment's entries are held at a time, at most
//!   [`CompactionLimits::txn_entries_max`](super::CompactionLimits::txn_entries_max); a segment
//!   with more *overflows*: its transactional batches and markers are kept whole, none enters
//!   the key map, and its index is copied unchanged (what a pass did before it knew outcomes).
//!   The producers with data kept in a transaction whose marker the pass has not reached are
//!   held up to the same bound; past it every later marker is kept.
//! - **Markers.** A marker is removable when no data batch of its transaction survives the
//!   pass before it (the pass reads every segment from the first one, so it sees all of it),
//!   it is older than `delete.retention.ms`, and it lies below the oldest producer state
//!   snapshot on disk: recovery replays the log from a snapshot, and a snapshot taken inside a
//!   transaction whose marker was removed would leave that transaction open for ever. Only an
//!   ABORT marker of a segment whose entries are loaded is removed, together with its index
//!   entry.

use super::{CompactionStats, PlannedSegment};
use crate::batch::BatchHeader;
use crate::error::LogError;
use crate::txn::{parse_control_batch, AbortedTxn, ControlRecord};
use crate::txn_index::{self, CHUNK_ENTRIES};
use spate_types::disk::{Disk, DiskFile};
use spate_types::{Offset, ProducerId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default of [`CompactionLimits::txn_entries_max`](super::CompactionLimits::txn_entries_max):
/// 256 Ki entries, about 10 MiB.
pub const TXN_ENTRIES_MAX: usize = 1 << 18;

/// How the transaction of a transactional data batch ended, as far as the pass knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxnOutcome {
    Aborted,
    Committed,
    /// The segment overflowed (or the batch has no producer id): kept whole, not in the key map.
    Unknown,
}

/// The planned segments' transaction indexes, opened once per pass, and the aborted
/// transactions that begin in them and end after them.
pub(super) struct TxnIndexes<'a> {
    dir: &'a Path,
    segments: &'a [PlannedSegment],
    /// Per planned segment: its index and how many entries to read, `None` if it has none.
    files: Vec<Option<(Arc<dyn DiskFile>, u64)>>,
    after: &'a [AbortedTxn],
    max: usize,
}

impl<'a> TxnIndexes<'a> {
    /// Opens the indexes of `segments` (one stat each; most have none).
    pub fn open(
        disk: &dyn Disk,
        dir: &'a Path,
        segments: &'a [PlannedSegment],
        after: &'a [AbortedTxn],
        max: usize,
    ) -> Result<TxnIndexes<'a>, LogError> {
        let files = segments
            .iter()
            .map(|s| txn_index::open_rolled(disk, &txn_index::path(dir, s.base), s.size))
            .collect::<Result<_, _>>()?;
        Ok(TxnIndexes {
            dir,
            segments,
            files,
            after,
            max: max.max(1),
        })
    }

    fn path(&self, i: usize) -> PathBuf {
        txn_index::path(self.dir, self.segments[i].base)
    }

    /// The aborted transactions spanning planned segment `i` (see the module docs).
    fn load(&self, i: usize) -> Result<SegmentTxns, LogError> {
        let seg = &self.segments[i];
        let overflow = || {
            tracing::warn!(dir = ?self.dir, segment = seg.base.0, max = self.max,
                "too many aborted transactions span the segment; its transactions are kept whole");
            Ok(SegmentTxns::Overflow)
        };
        let mut own = Vec::new();
        if let Some((file, count)) = &self.files[i] {
            if *count > self.max as u64 {
                return overflow();
            }
            let ended = txn_index::read_entries(&**file, *count, seg.base, seg.end, |e| {
                own.push((*e, false));
                true
            })?;
            txn_index::check_read(ended, &self.path(i))?;
        }
        let mut aborted: BTreeMap<(ProducerId, Offset), Offset> = own
            .iter()
            .map(|(e, _)| ((e.producer_id, e.first_offset), e.last_offset))
            .collect();
        // Adds a spanning entry; true if there is no room for it.
        let mut full = |e: &AbortedTxn| {
            if e.first_offset >= seg.end {
                return false;
            }
            if aborted.len() >= self.max {
                return true;
            }
            aborted.insert((e.producer_id, e.first_offset), e.last_offset);
            false
        };
        let mut overflowed = false;
        let mut complete = false;
        for (j, later) in self.segments.iter().enumerate().skip(i + 1) {
            let Some((file, count)) = &self.files[j] else {
                continue;
            };
            let ended = txn_index::read_entries(&**file, *count, later.base, later.end, |e| {
                overflowed = full(e);
                complete = e.last_stable_offset >= seg.end;
                !complete && !overflowed
            })?;
            txn_index::check_read(ended, &self.path(j))?;
            if complete || overflowed {
                break;
            }
        }
        if !complete && !overflowed {
            overflowed = self.after.iter().any(&mut full);
        }
        if overflowed {
            return overflow();
        }
        Ok(SegmentTxns::Known { aborted, own })
    }
}

/// What a pass knows of the transactions of one segment.
pub(super) enum SegmentTxns {
    Known {
        /// `(producer, first offset)` to marker offset of every aborted transaction spanning
        /// the segment.
        aborted: BTreeMap<(ProducerId, Offset), Offset>,
        /// The segment's own index entries, in order, each with whether its marker was removed.
        own: Vec<(AbortedTxn, bool)>,
    },
    Overflow,
}

/// One planned segment's transactions, loaded when first needed.
pub(super) struct SegmentCursor {
    index: usize,
    txns: Option<SegmentTxns>,
}

impl SegmentCursor {
    pub fn new(index: usize) -> SegmentCursor {
        SegmentCursor { index, txns: None }
    }

    fn txns(&mut self, all: &TxnIndexes) -> Result<&mut SegmentTxns, LogError> {
        match &mut self.txns {
            Some(t) => Ok(t),
            slot => Ok(slot.insert(all.load(self.index)?)),
        }
    }

    /// The outcome of the transactional data batch `h` of this segment.
    pub fn outcome(&mut self, all: &TxnIndexes, h: &BatchHeader) -> Result<TxnOutcome, LogError> {
        if !h.has_producer_id() {
            return Ok(TxnOutcome::Unknown);
        }
        Ok(match self.txns(all)? {
            SegmentTxns::Overflow => TxnOutcome::Unknown,
            SegmentTxns::Known { aborted, .. } => {
                let spanning = aborted
                    .range((h.producer_id, Offset(i64::MIN))..=(h.producer_id, h.base_offset))
                    .next_back()
                    .is_some_and(|(_, last)| *last >= h.base_offset);
                if spanning {
                    TxnOutcome::Aborted
                } else {
                    TxnOutcome::Committed
                }
            }
        })
    }

    /// Removes the index entry of the ABORT marker at `offset`; false (keep the marker) if this
    /// segment overflowed.
    fn remove_abort(&mut self, all: &TxnIndexes, offset: Offset) -> Result<bool, LogError> {
        Ok(match self.txns(all)? {
            SegmentTxns::Overflow => false,
            SegmentTxns::Known { own, .. } => {
                if let Ok(at) = own.binary_search_by_key(&offset, |(e, _)| e.last_offset) {
                    own[at].1 = true;
                }
                true
            }
        })
    }

    /// Appends this segment's surviving index entries to the cleaned index `out` at entry
    /// `*at`: those whose marker was kept, or the whole index if none was loaded.
    pub fn write_index(
        &self,
        all: &TxnIndexes,
        out: &dyn DiskFile,
        at: &mut u64,
    ) -> Result<(), LogError> {
        match &self.txns {
            Some(SegmentTxns::Known { own, .. }) => {
                let kept: Vec<AbortedTxn> = own
                    .iter()
                    .filter(|(_, removed)| !removed)
                    .map(|(e, _)| *e)
                    .collect();
                for chunk in kept.chunks(CHUNK_ENTRIES) {
                    txn_index::write_at(out, chunk, at)?;
                }
            }
            Some(SegmentTxns::Overflow) | None => {
                if let Some((file, count)) = &all.files[self.index] {
                    let seg = &all.segments[self.index];
                    txn_index::copy_entries(
                        &**file,
                        *count,
                        &all.path(self.index),
                        seg.base,
                        seg.end,
                        out,
                        at,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The transaction state of the clean phase of a pass, across its groups.
pub(super) struct TxnPass {
    now_ms: i64,
    delete_retention_ms: i64,
    /// The oldest producer state snapshot's offset: markers at or past it are kept.
    snapshots_from: Option<Offset>,
    /// Producers with data kept in a transaction whose marker the pass has not reached yet
    /// (Kafka's `ongoingCommittedTxns` and `ongoingAbortedTxns`).
    with_data: BTreeSet<ProducerId>,
    max: usize,
    /// `with_data` was full once: it no longer knows every such producer.
    saturated: bool,
}

impl TxnPass {
    pub fn new(
        now_ms: i64,
        delete_retention_ms: i64,
        snapshots_from: Option<Offset>,
        max: usize,
    ) -> TxnPass {
        TxnPass {
            now_ms,
            delete_retention_ms,
            snapshots_from,
            with_data: BTreeSet::new(),
            max: max.max(1),
            saturated: false,
        }
    }

    /// The transactional data batch `h` survives the pass (whole or in part).
    pub fn data_kept(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() || self.with_data.contains(&h.producer_id) {
            return;
        }
        if self.with_data.len() >= self.max {
            self.saturated = true;
        } else {
            self.with_data.insert(h.producer_id);
        }
    }

    /// Whether the control batch `h` (`bytes`) of `seg` is removed; records the removal of an
    /// ABORT marker's index entry and counts it.
    pub fn remove_marker(
        &mut self,
        h: &BatchHeader,
        bytes: &[u8],
        seg: &mut SegmentCursor,
        all: &TxnIndexes,
        stats: &mut CompactionStats,
    ) -> Result<bool, LogError> {
        if !h.has_producer_id() {
            return Ok(false);
        }
        let ControlRecord::Marker { commit, .. } = parse_control_batch(bytes, h) else {
            // Another control type: kept, as Kafka does.
            return Ok(false);
        };
        let data_remains = self.with_data.remove(&h.producer_id) || self.saturated;
        let expired = h.max_timestamp >= 0
            && self.now_ms.saturating_sub(h.max_timestamp) > self.delete_retention_ms;
        let replayed = self.snapshots_from.is_some_and(|s| h.last_offset() >= s);
        if data_remains || !expired || replayed {
            return Ok(false);
        }
        if !commit && !seg.remove_abort(all, h.base_offset)? {
            return Ok(false);
        }
        stats.markers_removed += 1;
        Ok(true)
    }
}
