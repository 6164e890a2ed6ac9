//! Idempotent producer state, with Kafka's `ProducerStateManager` semantics.
//!
//! Per producer id we keep the current epoch and the last `PRODUCER_BATCHES_REMEMBERED`
//! batches, enough to recognise any retry of an unacknowledged batch. Every batch of a record
//! set is checked, in order, against the state left by the previous ones before anything is
//! written; the resulting changes are committed only after the write succeeded, so an append
//! is all-or-nothing for producer state too.
//!
//! Transactions (Kafka's `ProducerAppendInfo`): a transactional data batch from a producer
//! with no open transaction opens one at its base offset; a non-transactional batch while one
//! is open is refused ([`LogError::InvalidTxnState`]); a marker closes it
//! ([`crate::txn`]). Open transactions are also indexed by first offset, derived from the
//! entries and kept in step by every change of an entry, for the last stable offset.
//!
//! Persistence: `{offset:020}.snapshot` holds the state covering every batch below `offset`.
//! Snapshots are written at segment roll and flush (the newest two are kept); on open the
//! newest valid one is loaded and the log is replayed from its offset. Fields added since the
//! first format have serde defaults, so older snapshots load.

use crate::batch::{increment_sequence, BatchHeader};
use crate::error::LogError;
use crate::txn::{CompletedTxn, ControlRecord, TxnMarker};
use serde::{Deserialize, Serialize};
use spate_types::disk::{self, Disk};
use spate_types::limits::PRODUCER_BATCHES_REMEMBERED;
use spate_types::{Offset, ProducerEpoch, ProducerId};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::Path;

pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";
const SNAPSHOTS_KEPT: usize = 2;
/// A snapshot larger than this is not one we wrote; it is ignored instead of read.
const SNAPSHOT_BYTES_MAX: u64 = 256 << 20;

/// One remembered batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    /// The batch was stored with LogAppendTime: `max_timestamp` is its append time, which a
    /// retry's Produce response reports. Absent from snapshots written before it existed.
    #[serde(default)]
    pub log_append_time: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: ProducerEpoch,
    /// Oldest first; at most `PRODUCER_BATCHES_REMEMBERED`.
    pub batches: VecDeque<BatchMetadata>,
    /// First offset of the producer's open transaction, `None` if none is open.
    #[serde(default)]
    pub current_txn_first_offset: Option<Offset>,
    /// Epoch of the transaction coordinator that wrote the producer's last marker, -1 if none:
    /// a marker from an older coordinator is refused.
    #[serde(default = "no_coordinator_epoch")]
    pub coordinator_epoch: i32,
    /// Timestamp of the producer's last write (a data batch's max timestamp, a marker's
    /// time), -1 if unknown: DescribeProducers' `last_timestamp`.
    #[serde(default = "no_timestamp")]
    pub last_timestamp: i64,
}

fn no_coordinator_epoch() -> i32 {
    -1
}

fn no_timestamp() -> i64 {
    -1
}

impl Default for ProducerEntry {
    fn default() -> Self {
        ProducerEntry {
            epoch: ProducerEpoch::default(),
            batches: VecDeque::new(),
            current_txn_first_offset: None,
            coordinator_epoch: no_coordinator_epoch(),
            last_timestamp: no_timestamp(),
        }
    }
}

impl ProducerEntry {
    fn record(&mut self, epoch: ProducerEpoch, meta: BatchMetadata) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        if self.batches.len() == PRODUCER_BATCHES_REMEMBERED {
            self.batches.pop_front();
        }
        self.batches.push_back(meta);
        self.last_timestamp = meta.max_timestamp;
    }
}

/// The outcome of checking a record set against producer state.
#[derive(Debug)]
pub(crate) enum Staged {
    /// Write the set, then commit these entries.
    Append(BTreeMap<ProducerId, ProducerEntry>),
    /// Every batch was already written; these are the originals, in order.
    Duplicate(Vec<BatchMetadata>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateManager {
    producers: BTreeMap<ProducerId, ProducerEntry>,
    /// Open transactions by first offset: the entries' `current_txn_first_offset`, inverted.
    /// Changed only with them ([`ProducerStateManager::set`] and `replay`).
    ongoing: BTreeMap<Offset, ProducerId>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    producers: Vec<(ProducerId, ProducerEntry)>,
}

fn metadata(h: &BatchHeader, base_offset: Offset) -> BatchMetadata {
    BatchMetadata {
        first_seq: h.base_sequence,
        last_seq: h.last_sequence(),
        base_offset,
        last_offset: Offset(base_offset.0 + i64::from(h.last_offset_delta)),
        max_timestamp: h.max_timestamp,
        log_append_time: h.is_log_append_time(),
    }
}

impl ProducerStateManager {
    pub fn entry(&self, producer_id: ProducerId) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Every producer id with its state, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&ProducerId, &ProducerEntry)> {
        self.producers.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Open transactions as `(first offset, producer id)`, earliest first.
    pub fn open_transactions(&self) -> impl Iterator<Item = (Offset, ProducerId)> + '_ {
        self.ongoing.iter().map(|(o, p)| (*o, *p))
    }

    /// First offset of the earliest open transaction.
    pub fn first_open_offset(&self) -> Option<Offset> {
        self.ongoing.keys().next().copied()
    }

    /// Replaces a producer's entry, keeping the index of open transactions in step.
    fn set(&mut self, pid: ProducerId, entry: ProducerEntry) {
        let before = self
            .producers
            .get(&pid)
            .and_then(|e| e.current_txn_first_offset);
        update_ongoing(
            &mut self.ongoing,
            pid,
            before,
            entry.current_txn_first_offset,
        );
        self.producers.insert(pid, entry);
    }

    /// Checks each batch (with the base offset it would be written at) in order.
    pub(crate) fn check(&self, batches: &[(BatchHeader, Offset)]) -> Result<Staged, LogError> {
        let mut staged: BTreeMap<ProducerId, ProducerEntry> = BTreeMap::new();
        let mut duplicates = Vec::new();
        let mut fresh = None;
        for (h, base) in batches {
            if !h.has_producer_id() {
                fresh.get_or_insert(h.base_sequence);
                continue;
            }
            let pid = h.producer_id;
            let current = staged.get(&pid).or_else(|| self.producers.get(&pid));
            match check_one(current, h)? {
                Some(original) => duplicates.push((pid, original)),
                None => {
                    fresh.get_or_insert(h.base_sequence);
                    let mut entry = current.cloned().unwrap_or_default();
                    // Kafka's `updateCurrentTxnFirstOffset`: after the epoch and sequence
                    // checks, so that a zombie hears INVALID_PRODUCER_EPOCH first.
                    match (entry.current_txn_first_offset, h.is_transactional()) {
                        (Some(_), false) => {
                            return Err(LogError::InvalidTxnState { producer_id: pid })
                        }
                        (None, true) => entry.current_txn_first_offset = Some(*base),
                        _ => {}
                    }
                    entry.record(h.producer_epoch, metadata(h, *base));
                    staged.insert(pid, entry);
                }
            }
        }
        match (duplicates.first(), fresh) {
            (None, _) => Ok(Staged::Append(staged)),
            (Some(_), None) => Ok(Staged::Duplicate(
                duplicates.into_iter().map(|d| d.1).collect(),
            )),
            // A retry of part of a record set cannot happen (appends are all-or-nothing), so
            // this is a confused client; refusing is safer than acknowledging unwritten data.
            (Some((pid, dup)), Some(_)) => Err(LogError::OutOfOrderSequence {
                producer_id: *pid,
                expected: self
                    .producers
                    .get(pid)
                    .and_then(|e| e.batches.back())
                    .map_or(0, |b| increment_sequence(b.last_seq, 1)),
                got: dup.first_seq,
            }),
        }
    }

    pub(crate) fn commit(&mut self, staged: BTreeMap<ProducerId, ProducerEntry>) {
        for (pid, entry) in staged {
            self.set(pid, entry);
        }
    }

    /// Kafka's `appendEndTxnMarker` checks, for a marker the leader is about to write: its
    /// producer epoch may not be older than the producer's, nor its coordinator epoch older
    /// than that of the producer's last marker. A marker for a producer with no open
    /// transaction passes: the coordinator retries markers, so they must be idempotent.
    pub(crate) fn check_marker(&self, m: &TxnMarker) -> Result<(), LogError> {
        let Some(e) = self.producers.get(&m.producer_id) else {
            return Ok(());
        };
        if m.producer_epoch < e.epoch {
            return Err(LogError::InvalidProducerEpoch);
        }
        if m.coordinator_epoch < e.coordinator_epoch {
            return Err(LogError::TransactionCoordinatorFenced {
                producer_id: m.producer_id,
                coordinator_epoch: m.coordinator_epoch,
                current: e.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Applies a marker written at `offset` (no checks: the leader ran
    /// [`ProducerStateManager::check_marker`], and a follower or recovery takes what the log
    /// holds). The producer's epoch becomes the newer of its own and the marker's (transaction
    /// version 2 bumps it in the marker; the batches remembered for the old epoch go), its
    /// coordinator epoch the marker's, and its open transaction, if any, is returned closed.
    pub(crate) fn apply_marker(
        &mut self,
        m: &TxnMarker,
        offset: Offset,
        timestamp: i64,
    ) -> Option<CompletedTxn> {
        let mut e = self
            .producers
            .get(&m.producer_id)
            .cloned()
            .unwrap_or_default();
        let completed = e.current_txn_first_offset.take().map(|first| CompletedTxn {
            producer_id: m.producer_id,
            first_offset: first,
            last_offset: offset,
            aborted: !m.commit,
        });
        if m.producer_epoch > e.epoch {
            e.epoch = m.producer_epoch;
            e.batches.clear();
        }
        e.coordinator_epoch = m.coordinator_epoch;
        e.last_timestamp = timestamp;
        self.set(m.producer_id, e);
        completed
    }

    /// Applies a batch already in the log (recovery replay, follower appends): no checks.
    /// `control` is the record of a control batch (`None` for data batches). Returns the
    /// transaction a marker closed.
    pub(crate) fn replay(
        &mut self,
        h: &BatchHeader,
        control: Option<ControlRecord>,
    ) -> Option<CompletedTxn> {
        if !h.has_producer_id() {
            return None;
        }
        if h.is_control() {
            let Some(ControlRecord::Marker {
                commit,
                coordinator_epoch,
            }) = control
            else {
                return None;
            };
            let m = TxnMarker {
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                coordinator_epoch,
                commit,
            };
            return self.apply_marker(&m, h.base_offset, h.max_timestamp);
        }
        if h.base_sequence < 0 {
            return None;
        }
        let meta = metadata(h, h.base_offset);
        let entry = self.producers.entry(h.producer_id).or_default();
        let before = entry.current_txn_first_offset;
        match (before, h.is_transactional()) {
            (None, true) => entry.current_txn_first_offset = Some(h.base_offset),
            // A leader refuses this; one that wrote it anyway (an older version) is followed,
            // and the transaction stays open until its marker.
            (Some(first), false) => tracing::warn!(
                producer_id = h.producer_id.0,
                offset = h.base_offset.0,
                txn_first_offset = first.0,
                "non-transactional batch inside an open transaction"
            ),
            _ => {}
        }
        entry.record(h.producer_epoch, meta);
        let after = entry.current_txn_first_offset;
        update_ongoing(&mut self.ongoing, h.producer_id, before, after);
        None
    }

    pub(crate) fn write_snapshot(
        &self,
        disk: &dyn Disk,
        dir: &Path,
        offset: Offset,
    ) -> io::Result<()> {
        let body = SnapshotBody {
            producers: self
                .producers
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        let json = serde_json::to_vec(&body).map_err(io::Error::other)?;
        let mut bytes = format!("{:08x}\n", crc32c::crc32c(&json)).into_bytes();
        bytes.extend_from_slice(&json);
        disk::write_atomic(disk, dir, &snapshot_name(offset), &bytes)?;
        let mut all = list_snapshots(disk, dir)?;
        all.sort_unstable();
        let excess = all.len().saturating_sub(SNAPSHOTS_KEPT);
        for old in &all[..excess] {
            remove_if_exists(disk, &dir.join(snapshot_name(*old)))?;
        }
        Ok(())
    }

    /// Loads the newest valid snapshot at or below `max_offset`, deleting any above it (they
    /// describe data that no longer exists). Returns the state and the offset it covers.
    pub(crate) fn load_latest(
        disk: &dyn Disk,
        dir: &Path,
        max_offset: Offset,
    ) -> io::Result<Option<(Self, Offset)>> {
        Self::delete_snapshots_above(disk, dir, max_offset)?;
        let mut all = list_snapshots(disk, dir)?;
        all.sort_unstable();
        for offset in all.into_iter().rev() {
            let path = dir.join(snapshot_name(offset));
            let parsed = disk::read_bounded(disk, &path, SNAPSHOT_BYTES_MAX)
                .ok()
                .flatten()
                .and_then(|b| parse_snapshot(&b));
            match parsed {
                Some(state) => return Ok(Some((state, offset))),
                None => tracing::warn!(?path, "ignoring unreadable producer state snapshot"),
            }
        }
        Ok(None)
    }

    /// The offset of the oldest snapshot on disk, readable or not: recovery replays the log from
    /// a snapshot's offset, so compaction keeps the transaction markers at or past it.
    pub(crate) fn oldest_snapshot(disk: &dyn Disk, dir: &Path) -> io::Result<Option<Offset>> {
        Ok(list_snapshots(disk, dir)?.into_iter().min())
    }

    /// Deletes snapshots above `offset` (the log was truncated there), durably: a snapshot a
    /// power cut brought back would describe records no longer in the log once it grows past
    /// it again, and answer a retry of one of them as a duplicate (simulator seed 921).
    pub(crate) fn delete_snapshots_above(
        disk: &dyn Disk,
        dir: &Path,
        offset: Offset,
    ) -> io::Result<()> {
        let mut deleted = false;
        for o in list_snapshots(disk, dir)? {
            if o > offset {
                remove_if_exists(disk, &dir.join(snapshot_name(o)))?;
                deleted = true;
            }
        }
        if deleted {
            disk.sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Moves `pid`'s open transaction in the index from first offset `before` to `after`.
fn update_ongoing(
    ongoing: &mut BTreeMap<Offset, ProducerId>,
    pid: ProducerId,
    before: Option<Offset>,
    after: Option<Offset>,
) {
    if before == after {
        return;
    }
    if let Some(b) = before {
        if ongoing.get(&b) == Some(&pid) {
            ongoing.remove(&b);
        }
    }
    if let Some(a) = after {
        ongoing.insert(a, pid);
    }
}

fn check_one(
    current: Option<&ProducerEntry>,
    h: &BatchHeader,
) -> Result<Option<BatchMetadata>, LogError> {
    // Unknown producer: its entry may have been removed with old segments, so any sequence goes.
    let Some(e) = current else { return Ok(None) };
    let got = h.base_sequence;
    let out_of_order = |expected| LogError::OutOfOrderSequence {
        producer_id: h.producer_id,
        expected,
        got,
    };
    if h.producer_epoch < e.epoch {
        return Err(LogError::InvalidProducerEpoch);
    }
    if h.producer_epoch > e.epoch {
        return if got == 0 {
            Ok(None)
        } else {
            Err(out_of_order(0))
        };
    }
    let last_seq = h.last_sequence();
    if let Some(m) = e
        .batches
        .iter()
        .find(|m| m.first_seq == got && m.last_seq == last_seq)
    {
        return Ok(Some(*m));
    }
    // No batch remembered at a known epoch: a marker bumped the epoch (transaction version 2)
    // or recorded it, so the producer starts this epoch at sequence 0 (Kafka's
    // `checkSequence` with no last sequence).
    let expected = e
        .batches
        .back()
        .map_or(0, |last| increment_sequence(last.last_seq, 1));
    if got != expected {
        return Err(out_of_order(expected));
    }
    Ok(None)
}

fn parse_snapshot(bytes: &[u8]) -> Option<ProducerStateManager> {
    let (crc, json) = (bytes.get(..8)?, bytes.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc != crc32c::crc32c(json) {
        return None;
    }
    let body: SnapshotBody = serde_json::from_slice(json).ok()?;
    if body
        .producers
        .iter()
        .any(|(_, e)| e.batches.len() > PRODUCER_BATCHES_REMEMBERED)
    {
        return None;
    }
    let mut state = ProducerStateManager::default();
    for (pid, mut entry) in body.producers {
        if entry.last_timestamp < 0 {
            // A snapshot from before the field: the last batch's timestamp is the best known.
            entry.last_timestamp = entry.batches.back().map_or(-1, |b| b.max_timestamp);
        }
        state.set(pid, entry);
    }
    Some(state)
}

fn snapshot_name(offset: Offset) -> String {
    format!("{:020}{SNAPSHOT_SUFFIX}", offset.0)
}

fn list_snapshots(disk: &dyn Disk, dir: &Path) -> io::Result<Vec<Offset>> {
    let mut out = Vec::new();
    for entry in disk.read_dir(dir)? {
        if let Some(stem) = entry.name.strip_suffix(SNAPSHOT_SUFFIX) {
            if let Ok(o) = stem.parse::<i64>() {
                out.push(Offset(o));
            }
        }
    }
    Ok(out)
}

fn remove_if_exists(disk: &dyn Disk, path: &Path) -> io::Result<()> {
    match disk.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::testutil::raw_batch;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader::parse(&raw_batch(count, (pid, epoch, seq), 0, b"")).unwrap()
    }

    fn append(
        s: &mut ProducerStateManager,
        hs: &[BatchHeader],
        base: i64,
    ) -> Result<Staged, LogError> {
        let mut next = base;
        let with_offsets: Vec<_> = hs
            .iter()
            .map(|h| {
                let b = Offset(next);
                next += i64::from(h.records_count);
                (*h, b)
            })
            .collect();
        let staged = s.check(&with_offsets)?;
        if let Staged::Append(m) = &staged {
            s.commit(m.clone());
        }
        Ok(staged)
    }

    #[test]
    fn in_order_sequences_are_accepted_and_retries_are_duplicates() {
        let mut s = ProducerStateManager::default();
        assert!(matches!(
            append(&mut s, &[header(1, 0, 0, 3)], 0),
            Ok(Staged::Append(_))
        ));
        assert!(matches!(
            append(&mut s, &[header(1, 0, 3, 2)], 3),
            Ok(Staged::Append(_))
        ));
        match append(&mut s, &[header(1, 0, 0, 3)], 5) {
            Ok(Staged::Duplicate(d)) => {
                assert_eq!((d[0].base_offset, d[0].last_offset), (Offset(0), Offset(2)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 0, 0, 1)], 0).unwrap();
        assert!(matches!(
            append(&mut s, &[header(1, 0, 2, 1)], 1),
            Err(LogError::OutOfOrderSequence {
                expected: 1,
                got: 2,
                ..
            })
        ));
    }

    #[test]
    fn stale_epoch_is_fenced_and_bump_needs_sequence_zero() {
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 3, 0, 1)], 0).unwrap();
        assert!(matches!(
            append(&mut s, &[header(1, 2, 1, 1)], 1),
            Err(LogError::InvalidProducerEpoch)
        ));
        assert!(matches!(
            append(&mut s, &[header(1, 4, 5, 1)], 1),
            Err(LogError::OutOfOrderSequence {
                expected: 0,
                got: 5,
                ..
            })
        ));
        append(&mut s, &[header(1, 4, 0, 1)], 1).unwrap();
        assert_eq!(s.entry(ProducerId(1)).unwrap().epoch, ProducerEpoch(4));
    }

    #[test]
    fn unknown_producer_accepts_any_sequence() {
        let mut s = ProducerStateManager::default();
        assert!(append(&mut s, &[header(9, 0, 12345, 1)], 0).is_ok());
    }

    #[test]
    fn sequence_wraps_around() {
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 0, i32::MAX - 1, 2)], 0).unwrap();
        assert!(append(&mut s, &[header(1, 0, 0, 1)], 2).is_ok());
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStateManager::default();
        for i in 0..6 {
            append(&mut s, &[header(1, 0, i, 1)], i64::from(i)).unwrap();
        }
        // The first batch fell out of memory: its retry is now out of order, not a duplicate.
        assert!(matches!(
            append(&mut s, &[header(1, 0, 0, 1)], 6),
            Err(LogError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            append(&mut s, &[header(1, 0, 1, 1)], 6),
            Ok(Staged::Duplicate(_))
        ));
    }

    #[test]
    fn multi_batch_sets_are_all_or_nothing() {
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 0, 0, 1)], 0).unwrap();
        // Second batch builds on the first; third has a gap, so nothing is staged.
        let before = s.clone();
        assert!(append(
            &mut s,
            &[header(1, 0, 1, 2), header(1, 0, 3, 1), header(1, 0, 9, 1)],
            1
        )
        .is_err());
        assert_eq!(s, before);
        assert!(append(&mut s, &[header(1, 0, 1, 2), header(1, 0, 3, 1)], 1).is_ok());
        assert_eq!(
            s.entry(ProducerId(1))
                .unwrap()
                .batches
                .back()
                .unwrap()
                .last_seq,
            3
        );
    }

    #[test]
    fn mixed_duplicate_and_new_batches_are_refused() {
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 0, 0, 1)], 0).unwrap();
        assert!(matches!(
            append(&mut s, &[header(1, 0, 0, 1), header(1, 0, 1, 1)], 1),
            Err(LogError::OutOfOrderSequence { .. })
        ));
    }

    /// A snapshot as written before transactions: no `current_txn_first_offset`,
    /// `coordinator_epoch` or `last_timestamp` (nor `log_append_time`, older still).
    #[test]
    fn a_snapshot_written_before_transactions_loads() {
        let json = br#"{"producers":[[7,{"epoch":2,"batches":[{"first_seq":0,"last_seq":1,"base_offset":0,"last_offset":1,"max_timestamp":55}]}]]}"#;
        let mut bytes = format!("{:08x}\n", crc32c::crc32c(json)).into_bytes();
        bytes.extend_from_slice(json);
        let s = parse_snapshot(&bytes).unwrap();
        let e = s.entry(ProducerId(7)).unwrap();
        assert_eq!(e.epoch, ProducerEpoch(2));
        assert_eq!(e.batches.len(), 1);
        assert_eq!(e.current_txn_first_offset, None);
        assert_eq!(e.coordinator_epoch, -1);
        assert_eq!(e.last_timestamp, 55, "from the last batch");
        assert_eq!(s.first_open_offset(), None);
    }

    #[test]
    fn a_snapshot_taken_mid_transaction_restores_the_open_transactions() {
        let d = spate_types::MemoryDisk::default();
        let dir = Path::new("/p");
        d.create_dir_all(dir).unwrap();
        let mut s = ProducerStateManager::default();
        let mut t = raw_batch(2, (1, 0, 0), 9, b"");
        t[21..23].copy_from_slice(&(1i16 << 4).to_be_bytes());
        crate::batch::testutil::fix_crc(&mut t);
        let t = BatchHeader::parse(&t).unwrap();
        append(&mut s, &[header(2, 0, 0, 1), t], 4).unwrap();
        let m = TxnMarker {
            producer_id: ProducerId(3),
            producer_epoch: ProducerEpoch(1),
            coordinator_epoch: 6,
            commit: true,
        };
        s.apply_marker(&m, Offset(7), 99);
        assert_eq!(s.first_open_offset(), Some(Offset(5)));
        s.write_snapshot(&d, dir, Offset(8)).unwrap();
        let (loaded, _) = ProducerStateManager::load_latest(&d, dir, Offset(8))
            .unwrap()
            .unwrap();
        assert_eq!(loaded, s);
        assert_eq!(
            loaded.open_transactions().collect::<Vec<_>>(),
            vec![(Offset(5), ProducerId(1))]
        );
        let e = loaded.entry(ProducerId(3)).unwrap();
        assert_eq!((e.coordinator_epoch, e.last_timestamp), (6, 99));
    }

    #[test]
    fn snapshot_round_trips_and_corrupt_snapshots_fall_back() {
        let d = spate_types::MemoryDisk::default();
        let dir = Path::new("/p");
        d.create_dir_all(dir).unwrap();
        let mut s = ProducerStateManager::default();
        append(&mut s, &[header(1, 0, 0, 1), header(2, 1, 7, 2)], 0).unwrap();
        s.write_snapshot(&d, dir, Offset(3)).unwrap();
        append(&mut s, &[header(1, 0, 1, 1)], 3).unwrap();
        s.write_snapshot(&d, dir, Offset(4)).unwrap();
        s.write_snapshot(&d, dir, Offset(5)).unwrap();
        assert_eq!(list_snapshots(&d, dir).unwrap().len(), 2);
        let (loaded, at) = ProducerStateManager::load_latest(&d, dir, Offset(10))
            .unwrap()
            .unwrap();
        assert_eq!((loaded, at), (s.clone(), Offset(5)));
        disk::write_atomic(&d, dir, &snapshot_name(Offset(5)), b"garbage").unwrap();
        let (_, at) = ProducerStateManager::load_latest(&d, dir, Offset(10))
            .unwrap()
            .unwrap();
        assert_eq!(at, Offset(4));
        // Snapshots beyond the log end describe lost data and are dropped.
        assert!(ProducerStateManager::load_latest(&d, dir, Offset(3))
            .unwrap()
            .is_none());
    }
}
