//! The transactional verbs of [`Partition`] (Kafka's `Partition` and `ReplicaManager`
//! transaction handling), over the log's transactions (`spate_log::txn`):
//!
//! - [`Partition::append_marker`]: the leader writes a COMMIT or ABORT marker for the
//!   transaction coordinator (WriteTxnMarkers), checked like an `acks=all` append.
//! - The last stable offset (LSO): [`Partition::last_stable_offset`] is the log's for the
//!   published high watermark; `read_committed` consumers read below it
//!   ([`Partition::read_committed`]) and skip the aborted transactions
//!   [`Partition::aborted_transactions`] lists.
//! - KIP-890 part 1 verification guards (Kafka's `VerificationGuard`):
//!   [`Partition::verification_guard`] and [`Partition::append_verified`].
//! - [`Partition::producers`]: the producer state, for DescribeProducers.
//!
//! Invariants:
//! - The published LSO (`subscribe_last_stable_offset`) is recomputed, and the log told of the
//!   high watermark (`PartitionLog::on_high_watermark`, which forgets completed transactions
//!   whose marker it passed), whenever the published high watermark moves or the log is
//!   truncated: both happen in `Partition::step`, under the core lock. Under that lock nothing
//!   else moves the LSO: a data batch or a marker is written at the log end, at or above the
//!   high watermark, so it leaves `min(high watermark, first unstable offset)` as it was. Only
//!   a log start moved by retention or DeleteRecords past an open transaction's first offset
//!   raises it without a notification (a long poll then ends at its `max_wait_ms`).
//! - A verification guard is checked and consumed under the core lock, the lock every leader
//!   append and every marker holds, so no marker can be written between the check and the
//!   append it guards.

use super::{AppendReceipt, Partition, PartitionRead, ReplicaError};
use spate_log::{AbortedTxn, BatchHeader, LogError, PartitionLog, ProducerEntry, TxnMarker};
use spate_types::{Offset, ProducerEpoch, ProducerId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{MutexGuard, PoisonError};
use tokio::sync::watch;

/// Producers a partition remembers a verification guard for. Beyond it the oldest guard is
/// dropped: that producer's verified append then fails with INVALID_TXN_STATE and its client
/// retries (verifying again), which is safe; unbounded guards from producers that verify and
/// never write would not be.
pub(crate) const VERIFICATION_GUARDS_MAX: usize = 10_000;

/// Guard tokens, unique in the process (across partitions and their reopenings, so that a
/// guard handed out by a replica that was since closed and reopened never matches a new one).
/// Only compared for equality: their values change no decision, so a simulation stays
/// reproducible.
static NEXT_GUARD: AtomicU64 = AtomicU64::new(1);

/// What a leader append checks about KIP-890 verification.
#[derive(Clone, Copy, Debug)]
pub(super) enum Verify {
    /// Nothing (internal topics' writers, non-transactional producers).
    No,
    /// A transactional batch that starts a transaction must come with this guard, the one
    /// [`Partition::verification_guard`] last handed out for its producer.
    Guard(Option<u64>),
}

/// The verification guard of each producer that was verified and has not started its
/// transaction yet, bounded by [`VERIFICATION_GUARDS_MAX`] (the oldest is dropped first).
#[derive(Debug, Default)]
pub(super) struct VerificationGuards {
    by_producer: BTreeMap<ProducerId, u64>,
    /// The same guards by token: tokens grow, so the first is the oldest.
    by_token: BTreeMap<u64, ProducerId>,
}

impl VerificationGuards {
    /// A fresh guard for `producer_id`, replacing its older one.
    fn issue(&mut self, producer_id: ProducerId) -> u64 {
        self.forget(producer_id);
        if self.by_producer.len() >= VERIFICATION_GUARDS_MAX {
            if let Some((_, oldest)) = self.by_token.pop_first() {
                self.by_producer.remove(&oldest);
            }
        }
        let token = NEXT_GUARD.fetch_add(1, Ordering::Relaxed);
        self.by_producer.insert(producer_id, token);
        self.by_token.insert(token, producer_id);
        debug_assert_eq!(self.by_producer.len(), self.by_token.len());
        token
    }

    fn forget(&mut self, producer_id: ProducerId) {
        if let Some(token) = self.by_producer.remove(&producer_id) {
            self.by_token.remove(&token);
        }
    }

    /// Whether `guard` is the one remembered for `producer_id` (no guard never is).
    fn holds(&self, producer_id: ProducerId, guard: Option<u64>) -> bool {
        guard.is_some() && self.by_producer.get(&producer_id).copied() == guard
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_producer.len()
    }
}

/// Whether `producer_id` has a transaction open in `log`.
fn has_open_transaction(log: &PartitionLog, producer_id: ProducerId) -> bool {
    log.producer_state()
        .entry(producer_id)
        .is_some_and(|e| e.current_txn_first_offset.is_some())
}

impl Partition {
    /// The guard map. A panic while it was held cannot leave it worse than stale (each change
    /// keeps both maps in step before anything can panic), so a poisoned lock is taken over.
    fn guards(&self) -> MutexGuard<'_, VerificationGuards> {
        self.guards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The leader writes a transaction marker (Kafka's WriteTxnMarkers append): refused as an
    /// `acks=all` append is (not the leader, fewer in-sync replicas than
    /// `min.insync.replicas`, a damaged replica) and as
    /// [`PartitionLog::append_marker`] refuses (an older producer or coordinator epoch).
    /// Written, it is handled like an `acks=all` append (its fsync starts at once); the caller
    /// waits for it with [`Partition::wait_acks_all`] on the receipt's last offset. A written
    /// marker also drops the producer's verification guard: a transactional write verified
    /// before it belongs to the transaction it ended (KIP-890's zombie write).
    pub fn append_marker(
        &self,
        marker: TxnMarker,
        now_ms: i64,
    ) -> Result<AppendReceipt, ReplicaError> {
        let core = self.core()?;
        core.check_append(true).map_err(|e| self.refusal(e))?;
        self.check_damage(&core)?;
        let epoch = core.leader_epoch();
        let (info, log_end, log_start) = self.with_log(|log| {
            let info = log.append_marker(marker, epoch, now_ms)?;
            Ok((info, log.log_end_offset(), log.log_start_offset()))
        })?;
        // Still under the core lock: no verified append can pass between the marker and this.
        self.guards().forget(marker.producer_id);
        self.leader_appended(core, log_end, true, true);
        Ok(AppendReceipt {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            duplicate: false,
            bytes: info.bytes,
            log_start_offset: log_start,
            log_append_time_ms: info.log_append_time_ms,
        })
    }

    /// KIP-890 part 1 (Kafka's `maybeStartTransactionVerification`): `None` if `producer_id`
    /// has a transaction open in this log at an epoch of at least `producer_epoch` (its writes
    /// need no verification), else a fresh guard, remembered for the producer in place of any
    /// older one, which [`Partition::append_verified`] checks. The caller asks the transaction
    /// coordinator whether the partition is in the producer's transaction between the two.
    pub fn verification_guard(
        &self,
        producer_id: ProducerId,
        producer_epoch: ProducerEpoch,
    ) -> Result<Option<u64>, ReplicaError> {
        // The core lock orders this with markers and appends (see the module docs).
        let _core = self.core()?;
        let open = self.with_log(|log| {
            Ok(log
                .producer_state()
                .entry(producer_id)
                .is_some_and(|e| e.current_txn_first_offset.is_some() && e.epoch >= producer_epoch))
        })?;
        if open {
            return Ok(None);
        }
        Ok(Some(self.guards().issue(producer_id)))
    }

    /// Whether `guard` is still the one remembered for `producer_id`: no marker for the
    /// producer was written here since [`Partition::verification_guard`] handed it out.
    pub fn holds_verification_guard(&self, producer_id: ProducerId, guard: u64) -> bool {
        self.guards().holds(producer_id, Some(guard))
    }

    /// [`Partition::append`] for a transactional producer's records (KIP-890 part 1): a
    /// transactional batch of a producer with no transaction open in this log must come with
    /// `guard`, the guard [`Partition::verification_guard`] last handed out for the producer
    /// and still remembered (no marker for it since, not dropped by the bound), else nothing
    /// is written and the append fails with [`LogError::InvalidTxnState`]. A successful append
    /// that opened the transaction consumes the guard.
    pub fn append_verified(
        &self,
        records: &mut [u8],
        acks_all: bool,
        now_ms: i64,
        guard: Option<u64>,
    ) -> Result<AppendReceipt, ReplicaError> {
        self.append_as_leader(records, acks_all, now_ms, Verify::Guard(guard))
    }

    /// Checks `records` against `verify` before they are appended to `log` (under the core
    /// and log locks). Returns the producers whose transaction they open, whose guards the
    /// append consumes. Batches it cannot frame are left to the log's validation, which
    /// refuses the whole record set then.
    pub(super) fn check_verification(
        &self,
        log: &PartitionLog,
        records: &[u8],
        verify: Verify,
    ) -> Result<Vec<ProducerId>, LogError> {
        let Verify::Guard(guard) = verify else {
            return Ok(Vec::new());
        };
        let mut opening = Vec::new();
        let mut pos = 0;
        while let Some(Ok(h)) = records.get(pos..).map(BatchHeader::parse) {
            // At least the 12-byte log overhead: the walk always advances.
            pos += h.total_bytes();
            let pid = h.producer_id;
            if !h.is_transactional()
                || h.is_control()
                || !h.has_producer_id()
                || opening.contains(&pid)
                || has_open_transaction(log, pid)
            {
                continue;
            }
            if !self.guards().holds(pid, guard) {
                tracing::debug!(partition = %self.tp, producer_id = pid.0, "transactional write without a valid verification guard");
                return Err(LogError::InvalidTxnState { producer_id: pid });
            }
            opening.push(pid);
        }
        Ok(opening)
    }

    /// The append that `opening` was checked for was written: their guards are consumed.
    pub(super) fn verified(&self, opening: &[ProducerId]) {
        if opening.is_empty() {
            return;
        }
        let mut guards = self.guards();
        for pid in opening {
            guards.forget(*pid);
        }
    }

    /// The last stable offset (Kafka's LSO): the log's for the published high watermark. The
    /// last published value if the replica is closed.
    pub fn last_stable_offset(&self) -> Offset {
        let hw = self.high_watermark();
        self.with_log(|log| Ok(log.last_stable_offset(hw)))
            .unwrap_or_else(|_| *self.last_stable_offset.borrow())
    }

    /// Changes when the last stable offset moves (for `read_committed` consumer fetches in
    /// long poll).
    pub fn subscribe_last_stable_offset(&self) -> watch::Receiver<Offset> {
        self.last_stable_offset.subscribe()
    }

    /// Called by `step` when the published high watermark moved or the log was truncated: the
    /// log forgets the completed transactions the high watermark passed, and the last stable
    /// offset is republished.
    pub(super) fn refresh_last_stable_offset(&self) {
        let hw = self.high_watermark();
        let lso = self.with_log(|log| {
            log.on_high_watermark(hw);
            Ok(log.last_stable_offset(hw))
        });
        match lso {
            Ok(lso) => {
                self.last_stable_offset.send_if_modified(|current| {
                    let moved = *current != lso;
                    *current = lso;
                    moved
                });
            }
            Err(e) => {
                tracing::debug!(partition = %self.tp, error = %e, "no log to compute the last stable offset of");
            }
        }
    }

    /// Plans a `read_committed` consumer's read from `start`: as [`Partition::read`], but up to
    /// the last stable offset instead of the high watermark. A start between the two reads
    /// nothing (it is not out of range).
    pub fn read_committed(
        &self,
        start: Offset,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<PartitionRead, ReplicaError> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            let last_stable_offset = log.last_stable_offset(high_watermark);
            let last_stable_offset =
                if crate::planted::last_stable_offset_ignores_open_transactions() {
                    high_watermark
                } else {
                    last_stable_offset
                };
            let plan = log.plan_read(start, max_bytes, last_stable_offset, min_one_batch)?;
            Ok(PartitionRead {
                plan,
                high_watermark,
                last_stable_offset,
                log_start_offset: log.log_start_offset(),
                log_end_offset: log.log_end_offset(),
                diverging_epoch: None,
            })
        })
    }

    /// The aborted transactions a `read_committed` read of `[from, upper)` must skip (see
    /// [`PartitionLog::aborted_transactions`]). Reads transaction index files under the log
    /// lock; they are small (one 34-byte entry per abort) and read a chunk at a time.
    pub fn aborted_transactions(
        &self,
        from: Offset,
        upper: Offset,
    ) -> Result<Vec<AbortedTxn>, ReplicaError> {
        self.with_log(|log| log.aborted_transactions(from, upper))
    }

    /// Every producer this log knows, with its state, by id (DescribeProducers). Not checked
    /// for leadership: the caller checks it first.
    pub fn producers(&self) -> Result<Vec<(ProducerId, ProducerEntry)>, ReplicaError> {
        self.with_log(|log| {
            Ok(log
                .producer_state()
                .iter()
                .map(|(pid, entry)| (*pid, entry.clone()))
                .collect())
        })
    }

    /// How many verification guards this partition remembers.
    #[cfg(test)]
    pub(crate) fn verification_guards(&self) -> usize {
        self.guards().len()
    }
}
