//! A replica's damage: its log may not hold every record it once acknowledged. Two causes:
//!
//! - **A batch failing its CRC (or framing)**, when read or when recovery meets it with valid
//!   batches after it: a latent sector error, bits flipped at rest. Kafka serves such a batch
//!   as it is and leaves the check to clients (librdkafka skips it by default); a replica here
//!   refuses to serve it, and repairs it from a healthy copy.
//! - **Recovery cut the active segment's tail** at open: a torn write, or a last batch damaged
//!   at rest, which recovery cannot tell apart. What was cut may have been acknowledged to the
//!   leader, and committed.
//!
//! Damage runs `from` an offset (the damaged batch, or the new log end) `until` the high
//! watermark this replica knew when it found it: the committed records it may lack.
//!
//! What happens then:
//! 1. The node asks the controller to take it out of the ISR (`LeaveIsr`); a leader's
//!    leadership moves with it to the next live ISR member. The leader forgets what a member
//!    that left had fetched (`ReplicaCore`), so only fetches made after that bring it back.
//! 2. A damaged leader serves nothing (NOT_LEADER_OR_FOLLOWER, OffsetForLeaderEpoch included)
//!    while the ISR has another member, live or fenced (a fenced one comes back holding what
//!    it fsynced), so that no write lands on, and no follower truncates to, a log that may
//!    miss committed records (simulator seed 37). Alone in the ISR it serves only if its log
//!    reaches `until`: all but a damaged batch, or what a power cut left of a tail whose
//!    committed part was fsynced. Otherwise it stays offline: replicas outside the ISR may
//!    hold the records it lacks, and electing one of them is KIP-966's eligible leader
//!    replicas, not built.
//! 3. A damaged follower in the ISR whose damaged batch is still in its log does not fetch
//!    (its fetch offset would claim records it cannot serve) until it is out of the ISR. Out of
//!    it, the fetcher cuts the log below the damage and fetches the rest again. Never in the
//!    ISR: a member below the high watermark could be elected.
//! 4. The damage ends once the damaged part is cut away, the replica has been out of the ISR
//!    since, and its log reaches `until` again (simulator seed 469: a repaired replica's damage
//!    ended at the cut, the leader took it back into the ISR on a fetch from before the cut,
//!    and it was elected below the high watermark).
//!
//! Damage is durable (`damaged` beside the log) until it ends: a node that restarts before
//! its repair, whose recovery then cuts nothing, still knows its log may miss committed
//! records. A partition's only replica forgets its damage (there is no copy to repair from).

use spate_types::disk::{self, Disk};
use spate_types::Offset;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The file beside the log that records the damage.
pub const DAMAGE_FILE: &str = "damaged";
/// A damage record longer than this is not one we wrote.
const DAMAGE_FILE_BYTES_MAX: u64 = 128;

/// What a replica's log may lack (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamageState {
    pub from: Offset,
    /// The high watermark this replica knew when it found the damage.
    pub until: Offset,
    /// The damaged part is no longer in the log (recovery or a truncation cut it).
    pub cut: bool,
    /// The replica has been out of the ISR since the damage was found.
    pub left_isr: bool,
}

impl DamageState {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.from.0, self.until.0, self.cut as u8, self.left_isr as u8
        )
    }

    fn decode(text: &str) -> Option<DamageState> {
        let mut it = text.split_whitespace();
        let mut next = || it.next()?.parse::<i64>().ok();
        let (from, until, cut, left) = (next()?, next()?, next()?, next()?);
        Some(DamageState {
            from: Offset(from),
            until: Offset(until.max(from)),
            cut: cut != 0,
            left_isr: left != 0,
        })
    }
}

pub(crate) struct Damage {
    state: Mutex<Option<DamageState>>,
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

impl Damage {
    /// The damage recorded in `dir`, if any. A record that is not ours reads as damage of the
    /// whole log up to its end: the cautious reading.
    pub(crate) fn open(disk: Arc<dyn Disk>, dir: &Path, log: (Offset, Offset)) -> Damage {
        let path = dir.join(DAMAGE_FILE);
        let state = match disk::read_bounded(&*disk, &path, DAMAGE_FILE_BYTES_MAX) {
            Ok(None) => None,
            Ok(Some(bytes)) => Some(
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(DamageState::decode)
                    .unwrap_or_else(|| whole(log)),
            ),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "unreadable damage record; taking the whole log as damaged");
                Some(whole(log))
            }
        };
        Damage {
            state: Mutex::new(state),
            disk,
            dir: dir.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<DamageState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records damage of `from..until`, `cut` if that part is already gone; true only for the
    /// first damage (the one to report).
    pub(crate) fn record(&self, from: Offset, until: Offset, cut: bool) -> bool {
        let mut d = self.lock();
        let first = d.is_none();
        let next = match *d {
            None => DamageState {
                from,
                until: until.max(from),
                cut,
                left_isr: false,
            },
            Some(s) => DamageState {
                from: s.from.min(from),
                until: s.until.max(until),
                // A new damaged batch below the cut is still in the log.
                cut: s.cut && (cut || from >= s.from),
                left_isr: s.left_isr,
            },
        };
        self.store(&mut d, Some(next));
        first
    }

    pub(crate) fn get(&self) -> Option<DamageState> {
        *self.lock()
    }

    /// The metadata shows this replica out of the ISR.
    pub(crate) fn out_of_isr(&self) {
        let mut d = self.lock();
        if let Some(s) = *d {
            if !s.left_isr {
                self.store(
                    &mut d,
                    Some(DamageState {
                        left_isr: true,
                        ..s
                    }),
                );
            }
        }
    }

    /// The log now ends at `log_end` after a truncation: damage at or past it is cut away.
    pub(crate) fn truncated(&self, log_end: Offset) {
        let mut d = self.lock();
        if let Some(s) = *d {
            if !s.cut && log_end <= s.from {
                self.store(&mut d, Some(DamageState { cut: true, ..s }));
            }
        }
    }

    /// The log reaches `log_end`: true if that ended the damage (see the module docs).
    pub(crate) fn caught_up(&self, log_end: Offset) -> bool {
        let mut d = self.lock();
        match *d {
            Some(s) if s.cut && s.left_isr && log_end >= s.until => {
                self.store(&mut d, None);
                true
            }
            _ => false,
        }
    }

    /// Forgets the damage without a repair: its report could not be queued (the next read
    /// that meets it records and reports it again), or there is no other copy to repair it
    /// from.
    pub(crate) fn forget(&self) {
        let mut d = self.lock();
        self.store(&mut d, None);
    }

    fn store(&self, d: &mut Option<DamageState>, next: Option<DamageState>) {
        if *d == next {
            return;
        }
        *d = next;
        let result = match next {
            Some(s) => {
                disk::write_atomic(&*self.disk, &self.dir, DAMAGE_FILE, s.encode().as_bytes())
            }
            // Not made durable: a record a crash brings back costs one more repair.
            None => match self.disk.remove_file(&self.dir.join(DAMAGE_FILE)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot record the damage durably; a restart before the repair forgets it");
        }
    }
}

/// Damage of a whole log `(start, end)`, nothing cut yet.
fn whole((start, end): (Offset, Offset)) -> DamageState {
    DamageState {
        from: start,
        until: end,
        cut: false,
        left_isr: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_types::{ManualClock, MemoryDisk};

    #[test]
    fn damage_is_durable_merges_and_ends_only_cut_out_of_the_isr_and_caught_up() {
        let disk = MemoryDisk::new(Arc::new(ManualClock::new(0)));
        let dir = Path::new("/n1/logs/t-0");
        disk::create_dir_all_durable(&disk, dir).unwrap();
        let arc: Arc<dyn Disk> = Arc::new(disk.clone());
        let open = || Damage::open(arc.clone(), dir, (Offset(0), Offset(50)));
        let d = open();
        assert_eq!(d.get(), None);
        assert!(
            d.record(Offset(10), Offset(20), false),
            "the first is reported"
        );
        assert!(!d.record(Offset(12), Offset(30), false));
        assert!(!d.record(Offset(7), Offset(25), false));
        let want = DamageState {
            from: Offset(7),
            until: Offset(30),
            cut: false,
            left_isr: false,
        };
        assert_eq!(d.get(), Some(want));
        tracing::info!("--- a power cut keeps it");
        disk.crash();
        let d = open();
        assert_eq!(d.get(), Some(want));
        tracing::info!("--- a cut above the damage leaves it in the log; one at it cuts it");
        d.truncated(Offset(8));
        assert!(!d.get().unwrap().cut);
        d.truncated(Offset(7));
        assert!(d.get().unwrap().cut);
        tracing::info!("--- caught up, but never out of the ISR since: not over");
        assert!(!d.caught_up(Offset(40)));
        d.out_of_isr();
        assert!(!d.caught_up(Offset(29)), "below the high watermark it knew");
        assert_eq!(open().get(), d.get(), "each step is durable");
        assert!(d.caught_up(Offset(30)));
        assert_eq!(d.get(), None);
        assert_eq!(open().get(), None);
        tracing::info!("--- damage below a cut is back in the log");
        assert!(d.record(Offset(40), Offset(45), true));
        assert!(!d.record(Offset(35), Offset(45), false));
        assert!(!d.get().unwrap().cut);
        d.forget();
        assert_eq!(open().get(), None);
        tracing::info!("--- a record that is not ours is the whole log, damaged");
        disk::write_atomic(&*arc, dir, DAMAGE_FILE, b"garbage").unwrap();
        assert_eq!(
            open().get(),
            Some(DamageState {
                from: Offset(0),
                until: Offset(50),
                cut: false,
                left_isr: false
            })
        );
    }
}
