//! A replica's damage: its log may not hold every record it once acknowledged. Two causes:
//!
//! - **A batch failing its CRC (or framing) when read**: a latent sector error, bits flipped at
//!   rest. Kafka serves such a batch as it is and leaves the check to clients (librdkafka skips
//!   it by default); a replica here refuses to serve it, and repairs it from a healthy copy.
//!   The damage starts at the read's start offset (the batch holding it and everything after
//!   is suspect).
//! - **Recovery cut the active segment's tail** at open: a torn write, or a batch damaged at
//!   rest, which recovery cannot tell apart. What was cut may have been acknowledged to the
//!   leader, and committed. The damage starts at the new log end.
//!
//! What happens then:
//! 1. The node asks the controller to take it out of the ISR (`LeaveIsr`); a leader's
//!    leadership moves with it to the next live ISR member. While the ISR has another member
//!    (live or fenced: a fenced one comes back holding what it fsynced), a damaged leader
//!    serves nothing (NOT_LEADER_OR_FOLLOWER, OffsetForLeaderEpoch included), so that no write
//!    lands on, and no follower truncates to, a log that may miss committed records. As the
//!    last live member it stays (the controller refuses) and asks again once another member
//!    can take over. Alone in the ISR it serves all but a damaged batch: every record
//!    committed since the others left was fsynced here. (Unless damage at rest cut it: then
//!    replicas outside the ISR may hold records it lacks; electing one of them is KIP-966's
//!    eligible leader replicas, not built.)
//! 2. Out of the ISR, as a follower, the fetcher truncates the log to the damage (never while
//!    in the ISR: a member below the high watermark could be elected and lose committed
//!    records) and fetches the rest again from the leader. The truncation clears the damage;
//!    the replica rejoins the ISR once caught up, as any follower does.
//!
//! Damage is durable (`damaged`, the offset it starts at, beside the log) until it is cut
//! away: a node that restarts before its repair, whose recovery then cuts nothing, still knows
//! its log may miss committed records.

use spate_types::disk::{self, Disk};
use spate_types::Offset;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The file beside the log that holds where the damage starts.
pub const DAMAGE_FILE: &str = "damaged";

pub(crate) struct Damage {
    from: Mutex<Option<Offset>>,
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

impl Damage {
    /// The damage recorded in `dir`, if any (an unreadable record counts as damage from the
    /// log start: the cautious reading).
    pub(crate) fn open(disk: Arc<dyn Disk>, dir: &Path, log_start: Offset) -> Damage {
        let from = crate::partition::read_offset_file(&*disk, dir, DAMAGE_FILE).unwrap_or_else(|e| {
            tracing::warn!(dir = %dir.display(), error = %e, "unreadable damage record; taking the whole log as damaged");
            Some(log_start)
        });
        Damage {
            from: Mutex::new(from),
            disk,
            dir: dir.to_owned(),
        }
    }

    /// Records damage from `from` on, durably; true only for the first (the one to report).
    pub(crate) fn record(&self, from: Offset) -> bool {
        let mut d = self.from.lock().unwrap_or_else(PoisonError::into_inner);
        let first = d.is_none();
        let next = d.map_or(from, |x| x.min(from));
        if *d != Some(next) {
            if let Err(e) = disk::write_atomic(
                &*self.disk,
                &self.dir,
                DAMAGE_FILE,
                format!("{}\n", next.0).as_bytes(),
            ) {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot record the damage durably; a restart before the repair forgets it");
            }
        }
        *d = Some(next);
        first
    }

    /// Where the damage starts, if any.
    pub(crate) fn from(&self) -> Option<Offset> {
        *self.from.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log now ends at `log_end`: damage at or past it was cut away. True if that
    /// cleared it.
    pub(crate) fn truncated(&self, log_end: Offset) -> bool {
        let mut d = self.from.lock().unwrap_or_else(PoisonError::into_inner);
        if d.is_some_and(|x| log_end <= x) {
            *d = None;
            self.remove_record();
            return true;
        }
        false
    }

    /// Forgets the damage without a repair: its report could not be queued (the next read
    /// that meets it records and reports it again), or there is no other copy to repair it
    /// from.
    pub(crate) fn forget(&self) {
        *self.from.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.remove_record();
    }

    fn remove_record(&self) {
        // Not made durable: a record a crash brings back costs one more truncation to a
        // point the log already holds, and a fetch of what follows.
        match self.disk.remove_file(&self.dir.join(DAMAGE_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the damage record")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_types::{ManualClock, MemoryDisk};

    #[test]
    fn the_first_record_reports_the_lowest_start_is_kept_durably_and_a_cut_at_or_below_clears_it() {
        let disk = MemoryDisk::new(Arc::new(ManualClock::new(0)));
        let dir = Path::new("/n1/logs/t-0");
        disk::create_dir_all_durable(&disk, dir).unwrap();
        let arc: Arc<dyn Disk> = Arc::new(disk.clone());
        let d = Damage::open(arc.clone(), dir, Offset(0));
        assert_eq!(d.from(), None);
        assert!(d.record(Offset(10)));
        assert!(!d.record(Offset(12)));
        assert!(!d.record(Offset(7)));
        assert_eq!(d.from(), Some(Offset(7)));
        // A power cut keeps it.
        disk.crash();
        assert_eq!(
            Damage::open(arc.clone(), dir, Offset(0)).from(),
            Some(Offset(7))
        );
        // A cut above the damage leaves it.
        let d = Damage::open(arc.clone(), dir, Offset(0));
        assert!(!d.truncated(Offset(8)));
        assert_eq!(d.from(), Some(Offset(7)));
        assert!(d.truncated(Offset(7)));
        assert_eq!(d.from(), None);
        assert_eq!(Damage::open(arc.clone(), dir, Offset(0)).from(), None);
        assert!(d.record(Offset(3)));
        d.forget();
        assert_eq!(Damage::open(arc.clone(), dir, Offset(0)).from(), None);
        // A record that is not ours reads as damage from the log start.
        disk::write_atomic(&*arc, dir, DAMAGE_FILE, b"garbage").unwrap();
        assert_eq!(Damage::open(arc, dir, Offset(5)).from(), Some(Offset(5)));
    }
}
