//! Idempotent producer state, with Kafka's `ProducerStateManager` semantics.
//!
//! Per producer id we keep the current epoch and the last `PRODUCER_BATCHES_REMEMBERED`
//! batches, enough to recognise any retry of an unacknowledged batch. Every batch of a record
//! set is checked, in order, against the state left by the previous ones before anything is
//! written; the resulting changes are committed only after the write succeeded, so an append
//! is all-or-nothing for producer state too.
//!
//! Persistence: `{offset:020}.snapshot` holds the state covering every batch below `offset`.
//! Snapshots are written at segment roll and flush (the newest two are kept); on open the
//! newest valid one is loaded and the log is replayed from its offset.

use crate::batch::{increment_sequence, BatchHeader};
use crate::error::LogError;
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: ProducerEpoch,
    /// Oldest first; at most `PRODUCER_BATCHES_REMEMBERED`.
    pub batches: VecDeque<BatchMetadata>,
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
        self.producers.extend(staged);
    }

    /// Applies a batch already in the log (recovery replay): no checks.
    pub(crate) fn replay(&mut self, h: &BatchHeader) {
        if h.has_producer_id() && !h.is_control() && h.base_sequence >= 0 {
            let meta = metadata(h, h.base_offset);
            self.producers
                .entry(h.producer_id)
                .or_default()
                .record(h.producer_epoch, meta);
        }
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
    if let Some(last) = e.batches.back() {
        let expected = increment_sequence(last.last_seq, 1);
        if got != expected {
            return Err(out_of_order(expected));
        }
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
    Some(ProducerStateManager {
        producers: body.producers.into_iter().collect(),
    })
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
