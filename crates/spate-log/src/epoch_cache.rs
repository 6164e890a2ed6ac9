//! Leader epoch cache (KIP-101): the first offset written in each leader epoch.
//!
//! Invariants: epochs strictly increase and start offsets do not decrease along the list. The
//! checkpoint file uses Kafka's `leader-epoch-checkpoint` text format (version, count, then
//! `epoch offset` lines). It is rewritten durably when it changed: at roll (before the segment
//! stops being active), at truncation, when the log start moves and at flush; an epoch that
//! starts in the active segment and is not yet checkpointed is recovered from the batches'
//! `partitionLeaderEpoch` during the recovery scan.

use spate_types::disk::{self, Disk};
use spate_types::{LeaderEpoch, Offset};
use std::io;
use std::path::Path;

pub(crate) const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// More entries than this in a checkpoint means the file is not ours.
const ENTRIES_MAX: usize = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(LeaderEpoch, Offset)>,
    dirty: bool,
}

impl EpochCache {
    pub fn entries(&self) -> &[(LeaderEpoch, Offset)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `start`; ignored unless `epoch` is newer than the latest.
    pub fn assign(&mut self, epoch: LeaderEpoch, start: Offset) {
        if epoch.0 < 0 || self.latest_epoch().is_some_and(|l| epoch <= l) {
            return;
        }
        self.entries.push((epoch, start));
        self.dirty = true;
    }

    /// Drops epochs that start at or after `end` (the log was truncated to `end`).
    pub fn truncate_from_end(&mut self, end: Offset) {
        let before = self.entries.len();
        self.entries.retain(|e| e.1 < end);
        self.dirty |= before != self.entries.len();
    }

    /// Forgets every epoch (the log was emptied).
    pub(crate) fn clear(&mut self) {
        self.dirty |= !self.entries.is_empty();
        self.entries.clear();
    }

    /// Drops epochs wholly below the new log start and moves the one spanning it up to it.
    pub fn truncate_from_start(&mut self, start: Offset) {
        let keep_from = self.entries.iter().rposition(|e| e.1 <= start);
        if let Some(i) = keep_from {
            if i > 0 || self.entries[i].1 != start {
                self.entries.drain(..i);
                self.entries[0].1 = start;
                self.dirty = true;
            }
        }
    }

    /// KIP-101 `OffsetForLeaderEpoch`: the largest epoch ≤ `epoch` and the offset at which it
    /// ended (the next epoch's start, or the log end offset for the latest epoch).
    pub fn end_offset_for(
        &self,
        epoch: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let latest = self.latest_epoch()?;
        if epoch == latest {
            return Some((latest, log_end));
        }
        let higher = self.entries.iter().position(|e| e.0 > epoch)?;
        let start_of_higher = self.entries[higher].1;
        if higher == 0 {
            // Older than anything we know: Kafka answers with the requested epoch.
            return Some((epoch, start_of_higher));
        }
        Some((self.entries[higher - 1].0, start_of_higher))
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub(crate) fn write_checkpoint(&mut self, disk: &dyn Disk, dir: &Path) -> io::Result<()> {
        let mut s = format!("0\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            s.push_str(&format!("{} {}\n", e.0, o.0));
        }
        disk::write_atomic(disk, dir, CHECKPOINT_FILE, s.as_bytes())?;
        self.dirty = false;
        Ok(())
    }

    /// Loads the checkpoint; a missing or malformed file yields an empty cache (with a warning
    /// for malformed), which recovery then refills from the active segment.
    pub(crate) fn load(disk: &dyn Disk, dir: &Path) -> io::Result<EpochCache> {
        let path = dir.join(CHECKPOINT_FILE);
        let Some(bytes) = disk::read_bounded(disk, &path, 64 << 20)? else {
            return Ok(EpochCache::default());
        };
        match parse_checkpoint(&bytes) {
            Some(entries) => Ok(EpochCache {
                entries,
                dirty: false,
            }),
            None => {
                tracing::warn!(?path, "ignoring malformed leader epoch checkpoint");
                Ok(EpochCache {
                    entries: Vec::new(),
                    dirty: true,
                })
            }
        }
    }
}

fn parse_checkpoint(bytes: &[u8]) -> Option<Vec<(LeaderEpoch, Offset)>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    if count > ENTRIES_MAX {
        return None;
    }
    let mut entries: Vec<(LeaderEpoch, Offset)> = Vec::with_capacity(count);
    for _ in 0..count {
        let mut parts = lines.next()?.split_whitespace();
        let epoch = LeaderEpoch(parts.next()?.parse().ok()?);
        let offset = Offset(parts.next()?.parse().ok()?);
        if entries.last().is_some_and(|l| l.0 >= epoch || l.1 > offset) {
            return None;
        }
        entries.push((epoch, offset));
    }
    Some(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for (e, o) in pairs {
            c.assign(LeaderEpoch(*e), Offset(*o));
        }
        c
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 10), (5, 20)]);
        let eo = |e| c.end_offset_for(LeaderEpoch(e), Offset(30));
        assert_eq!(eo(5), Some((LeaderEpoch(5), Offset(30))));
        assert_eq!(eo(4), Some((LeaderEpoch(3), Offset(20))));
        assert_eq!(eo(3), Some((LeaderEpoch(3), Offset(20))));
        assert_eq!(eo(1), Some((LeaderEpoch(1), Offset(10))));
        assert_eq!(eo(0), Some((LeaderEpoch(0), Offset(0))));
        assert_eq!(eo(6), None);
        assert_eq!(
            EpochCache::default().end_offset_for(LeaderEpoch(1), Offset(0)),
            None
        );
    }

    #[test]
    fn stale_epochs_are_not_assigned_and_truncation_works() {
        let mut c = cache(&[(2, 0), (1, 5), (2, 6), (4, 10)]);
        assert_eq!(
            c.entries(),
            &[(LeaderEpoch(2), Offset(0)), (LeaderEpoch(4), Offset(10))]
        );
        c.truncate_from_end(Offset(10));
        assert_eq!(c.entries(), &[(LeaderEpoch(2), Offset(0))]);
        let mut c = cache(&[(1, 0), (2, 5), (3, 10)]);
        c.truncate_from_start(Offset(7));
        assert_eq!(
            c.entries(),
            &[(LeaderEpoch(2), Offset(7)), (LeaderEpoch(3), Offset(10))]
        );
    }

    #[test]
    fn checkpoint_round_trips_and_garbage_is_ignored() {
        let d = spate_types::MemoryDisk::default();
        let dir = Path::new("/p");
        d.create_dir_all(dir).unwrap();
        let mut c = cache(&[(1, 0), (7, 42)]);
        c.write_checkpoint(&d, dir).unwrap();
        assert_eq!(EpochCache::load(&d, dir).unwrap().entries(), c.entries());
        disk::write_atomic(&d, dir, CHECKPOINT_FILE, b"0\n99999999999\n1 2\n").unwrap();
        assert!(EpochCache::load(&d, dir).unwrap().entries().is_empty());
    }
}
