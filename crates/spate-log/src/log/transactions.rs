//! The transactional verbs of [`PartitionLog`] (Kafka's `UnifiedLog` transaction handling):
//! writing markers, the last stable offset, the aborted transactions a `read_committed` fetch
//! needs, and the producer state replay that rebuilds open transactions and transaction indexes
//! at open and after truncation.
//!
//! Invariants:
//! - The producer state's open transactions, the log's [`UnreplicatedTxns`] and the active
//!   segment's transaction index change together, after the batch that changes them is written
//!   (leader: [`PartitionLog::append_marker`]; follower and recovery: the same replay), so
//!   leader and follower hold the same state and byte-identical `.txnindex` files.
//! - After [`PartitionLog::reload_producer_state`] every segment's transaction index holds
//!   exactly the aborts of its markers from the replay start on (those below it were durable
//!   when the snapshot it starts from was written; see [`crate::txn_index`]).

use super::{rel, PartitionLog};
use crate::batch::{set_base_offset, BatchError, BatchHeader};
use crate::error::LogError;
use crate::log::AppendInfo;
use crate::producer_state::ProducerStateManager;
use crate::segment::Segment;
use crate::txn::{
    encode_marker, parse_control_batch, AbortedTxn, CompletedTxn, ControlRecord, TxnMarker,
    CONTROL_BATCH_BYTES_MAX,
};
use crate::txn_index::{self, ActiveTxnIndex, ReadEnd, Rebuild};
use spate_types::disk::Disk;
use spate_types::{LeaderEpoch, Offset};
use std::io;
use std::path::Path;

/// Opens the index of a segment about to become active (at open, or at truncation), creating
/// it durably if it is missing (a segment from before transaction indexes existed). Its
/// entries are counted by the replay that follows, which rebuilds it.
pub(super) fn open_active_txn_index(
    disk: &dyn Disk,
    dir: &Path,
    base: Offset,
) -> io::Result<ActiveTxnIndex> {
    let path = txn_index::path(dir, base);
    let missing = match disk.file_len(&path) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(e),
    };
    let file = disk.open(&path, spate_types::OpenMode::ReadWrite)?;
    if missing {
        disk.sync_dir(dir)?;
    }
    Ok(ActiveTxnIndex::new(file, path, 0))
}

/// The index entry of an abort, given the producer state right after it: the last stable
/// offset is the first offset of the earliest transaction still open (Kafka's
/// `lastStableOffset(completedTxn)`).
fn aborted_entry(state: &ProducerStateManager, c: &CompletedTxn) -> AbortedTxn {
    AbortedTxn {
        producer_id: c.producer_id,
        first_offset: c.first_offset,
        last_offset: c.last_offset,
        last_stable_offset: state
            .first_open_offset()
            .unwrap_or_else(|| c.last_offset.next()),
    }
}

impl PartitionLog {
    /// Writes a transaction marker (WriteTxnMarkers; Kafka's `appendAsLeader` with origin
    /// COORDINATOR): one control batch ending `marker.producer_id`'s transaction in this
    /// partition with COMMIT or ABORT, at the log end, in `leader_epoch`, stamped `now_ms`.
    ///
    /// Refused with [`LogError::InvalidProducerEpoch`] if the marker's producer epoch is older
    /// than the producer's, with [`LogError::TransactionCoordinatorFenced`] if its coordinator
    /// epoch is older than that of the producer's last marker, and as an invalid record if it
    /// has no producer id; nothing is written then. A marker for a producer with no open transaction is written (the coordinator
    /// retries markers) and only records the epochs.
    ///
    /// Once written: the producer's epoch becomes the newer of its own and the marker's, its
    /// coordinator epoch the marker's, its open transaction closes, and an ABORT of an open
    /// transaction adds an entry to the active segment's transaction index. Segment rolls,
    /// offset and time index entries, sync targets, durability and producer snapshots are as
    /// for [`PartitionLog::append`].
    pub fn append_marker(
        &mut self,
        marker: TxnMarker,
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        if marker.producer_id.0 < 0 {
            // Replay ignores batches without a producer id; the leader must not differ.
            return Err(BatchError::TransactionalWithoutProducerId.into());
        }
        self.producers.check_marker(&marker)?;
        let mut batch = encode_marker(&marker, leader_epoch, now_ms)?;
        let base = self.log_end;
        if self.should_roll(0, batch.len() as u64, 1, base.next(), now_ms) {
            self.roll()?;
        }
        let base = self.log_end;
        set_base_offset(&mut batch, base);
        let h = BatchHeader::parse(&batch)?;
        self.write_placed(&batch, &[(h, base)], now_ms)?;
        self.epochs.assign(leader_epoch, base);
        let completed = self.producers.apply_marker(&marker, base, now_ms);
        self.on_completed(completed);
        Ok(AppendInfo {
            base_offset: base,
            last_offset: base,
            max_timestamp: now_ms,
            log_append_time_ms: -1,
            batch_count: 1,
            bytes: batch.len(),
        })
    }

    /// Records a transaction a marker just written closed.
    fn on_completed(&mut self, completed: Option<CompletedTxn>) {
        let Some(c) = completed else { return };
        self.unreplicated.add(c);
        if c.aborted {
            let entry = aborted_entry(&self.producers, &c);
            self.active.txn_index.append(entry);
        }
    }

    /// Applies batches a follower just wrote (`headers` describe `bytes`) to the leader epoch
    /// cache and producer state, as recovery's replay does, markers included.
    pub(super) fn apply_replicated(&mut self, bytes: &[u8], headers: &[BatchHeader]) {
        let mut pos = 0;
        for h in headers {
            let end = pos + h.total_bytes();
            self.epochs.assign(h.partition_leader_epoch, h.base_offset);
            let control = (h.is_control() && h.has_producer_id())
                .then(|| parse_control_batch(&bytes[pos..end], h));
            let completed = self.producers.replay(h, control);
            self.on_completed(completed);
            pos = end;
        }
    }

    /// The control record of the control batch `h` at `pos` of `seg`, read whole if it is no
    /// larger than a marker can be.
    fn read_control(seg: &Segment, pos: u64, h: &BatchHeader) -> Result<ControlRecord, LogError> {
        if h.total_bytes() > CONTROL_BATCH_BYTES_MAX {
            tracing::warn!(
                segment = seg.base.0,
                offset = h.base_offset.0,
                bytes = h.total_bytes(),
                "skipping a control batch too large to be a transaction marker"
            );
            return Ok(ControlRecord::Unknown);
        }
        let mut buf = vec![0u8; h.total_bytes()];
        seg.file.read_exact_at(&mut buf, pos)?;
        Ok(parse_control_batch(&buf, h))
    }

    /// Loads the newest producer snapshot at or below the log end and replays the batches
    /// after it, markers included; rebuilds the transaction index of every segment from the
    /// replay start on (see the module docs) and adds the transactions the replay saw complete
    /// to the unreplicated ones.
    pub(super) fn reload_producer_state(&mut self) -> Result<(), LogError> {
        let (mut state, from) =
            match ProducerStateManager::load_latest(&*self.disk, &self.dir, self.log_end)? {
                Some((state, at)) => {
                    self.producer_snapshot_at = Some(at);
                    (state, at.max(self.log_start))
                }
                None => {
                    self.producer_snapshot_at = None;
                    (ProducerStateManager::default(), self.log_start)
                }
            };
        let mut completed = Vec::new();
        let mut active_index = None;
        let mut created = false;
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(Offset(i64::MIN), |(b, _)| *b);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let end = self.segment_end(seg);
            let mut rebuild =
                Rebuild::start(&*self.disk, &self.dir, seg.base, end, seg.size, from)?;
            let idx = self.index_of(seg)?;
            let mut pos = idx.position_for(rel(seg.base, from));
            while let Some(h) = seg.header_at(pos)? {
                if h.last_offset() >= from {
                    let control = if h.is_control() && h.has_producer_id() {
                        Some(Self::read_control(seg, pos, &h)?)
                    } else {
                        None
                    };
                    if let Some(c) = state.replay(&h, control) {
                        completed.push(c);
                        if c.aborted {
                            rebuild.push(aborted_entry(&state, &c))?;
                        }
                    }
                }
                pos += h.total_bytes() as u64;
            }
            created |= rebuild.created;
            let rebuilt = rebuild.finish()?;
            if self.is_active(seg) {
                active_index = Some(rebuilt);
            }
        }
        if created {
            self.disk.sync_dir(&self.dir)?;
        }
        self.producers = state;
        for c in completed {
            self.unreplicated.add(c);
        }
        self.active.txn_index =
            active_index.expect("the replay covers the active segment: it holds the log end");
        Ok(())
    }

    /// Every aborted transaction whose ABORT marker is at or after `from` and whose first
    /// offset is before `upper` (Kafka's `collectAbortedTransactions`): what a `read_committed`
    /// fetch of `[from, upper)` must skip. Reads the transaction indexes of the segment
    /// holding `from` and the ones after it, and stops at the first entry whose last stable
    /// offset is at or past `upper`: every transaction aborted after it began at or after
    /// that offset. A rolled segment's index is read `txn_index::CHUNK_ENTRIES` entries at a
    /// time and only as far as its segment's size allows; an implausible entry is reported as
    /// [`LogError::Corrupt`] rather than served (a missing abort would show a consumer
    /// aborted records).
    pub fn aborted_transactions(
        &self,
        from: Offset,
        upper: Offset,
    ) -> Result<Vec<AbortedTxn>, LogError> {
        let mut out = Vec::new();
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(Offset(i64::MIN), |(b, _)| *b);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let end = self.segment_end(seg);
            let mut complete = false;
            let collect = |e: &AbortedTxn| {
                if e.last_offset >= from && e.first_offset < upper {
                    out.push(*e);
                }
                complete = e.last_stable_offset >= upper;
                !complete
            };
            let path = txn_index::path(&self.dir, seg.base);
            let ended = if self.is_active(seg) {
                self.active.txn_index.read(seg.base, end, collect)?
            } else {
                match txn_index::open_rolled(&*self.disk, &path, seg.size)? {
                    Some((file, count)) => {
                        txn_index::read_entries(&*file, count, seg.base, end, collect)?
                    }
                    None => ReadEnd::Done,
                }
            };
            txn_index::check_read(ended, &path)?;
            if complete {
                break;
            }
        }
        Ok(out)
    }

    /// The first offset of the earliest transaction that is open, or complete with its marker
    /// not yet below the high watermark as last told ([`PartitionLog::on_high_watermark`]);
    /// never below the log start (Kafka's `firstUnstableOffset`). `None` if there is none.
    pub fn first_unstable_offset(&self) -> Option<Offset> {
        let first = [
            self.producers.first_open_offset(),
            self.unreplicated.first(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(first.max(self.log_start))
    }

    /// The last stable offset for `high_watermark`: the high watermark, or the first offset of
    /// an open transaction, or of a completed one whose marker is at or above the high
    /// watermark, whichever is lowest (an open transaction whose start retention or
    /// DeleteRecords removed counts from the log start). `read_committed` consumers read
    /// below it.
    pub fn last_stable_offset(&self, high_watermark: Offset) -> Offset {
        let unstable = [
            self.producers.first_open_offset(),
            self.unreplicated.first_unreplicated_at(high_watermark),
        ]
        .into_iter()
        .flatten()
        .min();
        match unstable {
            Some(o) => high_watermark.min(o.max(self.log_start)),
            None => high_watermark,
        }
    }

    /// The high watermark moved to `hw`: completed transactions whose marker is below it no
    /// longer bound the last stable offset and are forgotten (bounded memory).
    pub fn on_high_watermark(&mut self, hw: Offset) {
        self.unreplicated.on_high_watermark(hw);
    }
}
