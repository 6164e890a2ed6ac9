//! A replica's damaged batch: a batch of the local log whose CRC (or framing) failed when it
//! was read, a latent sector error or bits flipped at rest. Kafka serves such a batch as it is
//! and leaves the check to clients (librdkafka skips it by default); a replica here refuses to
//! serve it, and repairs it from a healthy copy:
//!
//! 1. The first failed read records where the damage starts (the read's start offset: the
//!    batch holding it and everything after is suspect) and reports the partition once.
//! 2. The node asks the controller to take it out of the ISR (`LeaveIsr`); a leader's
//!    leadership moves with it to the next live ISR member. The controller refuses while this
//!    replica is the last live ISR member: the node asks again later, and meanwhile the
//!    replica keeps its log (every other copy may miss committed records) and answers
//!    KAFKA_STORAGE_ERROR for the damaged batch.
//! 3. Out of the ISR, as a follower, the fetcher truncates the log to the damage (never while
//!    in the ISR: a member below the high watermark could be elected and lose committed
//!    records) and fetches the rest again from the leader. The truncation clears the damage.
//!
//! Damage is kept in memory only: after a restart the batch is still damaged on disk, and the
//! next read finds it again.

use spate_types::Offset;
use std::sync::{Mutex, PoisonError};

#[derive(Debug, Default)]
pub(crate) struct Damage(Mutex<Option<Offset>>);

impl Damage {
    /// Records damage from `from` on; true only for the first (the one to report).
    pub(crate) fn record(&self, from: Offset) -> bool {
        let mut d = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let first = d.is_none();
        *d = Some(d.map_or(from, |x| x.min(from)));
        first
    }

    /// Where the damage starts, if any.
    pub(crate) fn from(&self) -> Option<Offset> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log now ends at `log_end`: damage at or past it was cut away. True if that
    /// cleared it.
    pub(crate) fn truncated(&self, log_end: Offset) -> bool {
        let mut d = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if d.is_some_and(|x| log_end <= x) {
            *d = None;
            return true;
        }
        false
    }

    /// Forgets the damage without a repair (its report could not be queued; the next read
    /// that meets it records and reports it again).
    pub(crate) fn forget(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_reports_the_lowest_start_is_kept_and_a_cut_at_or_below_clears_it() {
        let d = Damage::default();
        assert_eq!(d.from(), None);
        assert!(d.record(Offset(10)));
        assert!(!d.record(Offset(12)));
        assert!(!d.record(Offset(7)));
        assert_eq!(d.from(), Some(Offset(7)));
        // A cut above the damage leaves it.
        assert!(!d.truncated(Offset(8)));
        assert_eq!(d.from(), Some(Offset(7)));
        assert!(d.truncated(Offset(7)));
        assert_eq!(d.from(), None);
        assert!(d.record(Offset(3)));
        d.forget();
        assert_eq!(d.from(), None);
    }
}
