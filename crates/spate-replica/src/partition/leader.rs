//! The leader's write path: appends, and the waits for `acks=all` and for local durability.

use super::{transactions, AppendReceipt, Partition, ReplicaError};
use crate::core::{AckStatus, AppendRefusal, Event, ReplicaCore};
use spate_log::AppendOutcome;
use spate_types::Offset;
use std::sync::MutexGuard;

impl Partition {
    /// The leader's append of a produce request's record set (offsets and the leader epoch are
    /// stamped into the batches). When this returns the bytes are in the operating system
    /// (they survive `kill -9`); [`Partition::wait_acks_all`] waits for the ISR.
    pub fn append(
        &self,
        records: &mut [u8],
        acks_all: bool,
        now_ms: i64,
    ) -> Result<AppendReceipt, ReplicaError> {
        self.append_as_leader(records, acks_all, now_ms, transactions::Verify::No)
    }

    /// [`Partition::append`], checking `verify` (KIP-890, see [`Partition::append_verified`])
    /// under the same locks as the append.
    pub(super) fn append_as_leader(
        &self,
        records: &mut [u8],
        acks_all: bool,
        now_ms: i64,
        verify: transactions::Verify,
    ) -> Result<AppendReceipt, ReplicaError> {
        let core = self.core()?;
        core.check_append(acks_all).map_err(|e| self.refusal(e))?;
        self.check_damage(&core)?;
        let epoch = core.leader_epoch();
        let (outcome, leo, log_start) = self.with_log(|log| {
            let opening = self.check_verification(log, records, verify)?;
            let outcome = log.append(records, epoch, now_ms)?;
            if matches!(outcome, AppendOutcome::Appended(_)) {
                self.verified(&opening);
            }
            Ok((outcome, log.log_end_offset(), log.log_start_offset()))
        })?;
        let (info, duplicate) = match outcome {
            AppendOutcome::Appended(info) => (info, false),
            AppendOutcome::Duplicate(info) => (info, true),
        };
        self.leader_appended(core, leo, !duplicate, acks_all);
        Ok(AppendReceipt {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            duplicate,
            bytes: info.bytes,
            log_start_offset: log_start,
            log_append_time_ms: info.log_append_time_ms,
        })
    }

    /// After a leader's append (of records or a marker): the core and the log end watch learn
    /// the new log end, and if anything was `written` the flusher is told.
    pub(super) fn leader_appended(
        &self,
        mut core: MutexGuard<'_, ReplicaCore>,
        log_end: Offset,
        written: bool,
        acks_all: bool,
    ) {
        self.step(&mut core, Event::LogEndChanged { log_end });
        drop(core);
        self.log_end.send_replace(log_end);
        if !written {
            return;
        }
        if acks_all && self.policy.fsync_acks_all {
            // The producer waits for this fsync: start it now. Its response is awaited only
            // when the connection's writer reaches it (responses go out in request order), and
            // a request for another partition queued ahead must not hold this partition's
            // fsync back until its own fsync is done.
            self.flush_now.notify_one();
        } else {
            self.dirty.notify_one();
        }
    }

    pub(super) fn refusal(&self, e: AppendRefusal) -> ReplicaError {
        match e {
            AppendRefusal::NotLeader {
                leader,
                leader_epoch,
            } => ReplicaError::NotLeader {
                tp: self.tp.clone(),
                leader,
                leader_epoch,
            },
            AppendRefusal::NotEnoughReplicas { isr, required } => ReplicaError::NotEnoughReplicas {
                tp: self.tp.clone(),
                isr,
                required,
            },
        }
    }

    /// Waits until the batch ending at `last_offset` is below the high watermark (durable on
    /// every in-sync replica) with enough in-sync replicas, or until that can no longer
    /// happen here (leadership moved, an fsync failed, the replica was closed: its topic
    /// deleted, or the node stopping). Cancel safe.
    pub async fn wait_acks_all(&self, last_offset: Offset) -> Result<(), ReplicaError> {
        let mut hw = self.high_watermark.subscribe();
        let mut state = self.state_version.subscribe();
        let mut flushed = self.flushed.subscribe();
        let mut closing = self.closing.subscribe();
        self.flush_now.notify_one();
        loop {
            // A closed replica's high watermark never moves again: answer now rather than at
            // the request's timeout (Kafka completes the delayed produce when it stops a
            // replica).
            if *closing.borrow_and_update() {
                return Err(ReplicaError::Closed(self.tp.clone()));
            }
            if let Err(failure) = &*flushed.borrow_and_update() {
                return Err(ReplicaError::Storage {
                    tp: self.tp.clone(),
                    failure: failure.clone(),
                });
            }
            hw.mark_unchanged();
            state.mark_unchanged();
            let status = self.core()?.ack_status(last_offset);
            match status {
                AckStatus::Done => return Ok(()),
                AckStatus::Pending => {}
                AckStatus::NotEnoughReplicasAfterAppend { isr, required } => {
                    return Err(ReplicaError::NotEnoughReplicasAfterAppend {
                        tp: self.tp.clone(),
                        isr,
                        required,
                    })
                }
                AckStatus::NotLeader {
                    leader,
                    leader_epoch,
                } => {
                    return Err(ReplicaError::NotLeader {
                        tp: self.tp.clone(),
                        leader,
                        leader_epoch,
                    })
                }
            }
            // Biased (deterministic under simulation). Every branch leads to the same re-read
            // of all three at the top of the loop, so the order starves nothing; an fsync
            // result and a role change come before the high watermark.
            let closed = tokio::select! {
                biased;
                r = closing.changed() => r.is_err(),
                r = flushed.changed() => r.is_err(),
                r = state.changed() => r.is_err(),
                r = hw.changed() => r.is_err(),
            };
            if closed {
                return Err(ReplicaError::Closed(self.tp.clone()));
            }
        }
    }

    /// Waits until every offset up to and including `last_offset` is fsynced locally (or, in
    /// relaxed mode, returns at once). Cancel safe. Internal topics written by this node's
    /// coordinators use it on a single replica.
    pub async fn wait_durable(&self, last_offset: Offset) -> Result<(), ReplicaError> {
        if !self.policy.fsync_acks_all {
            return Ok(());
        }
        let mut rx = self.flushed.subscribe();
        self.flush_now.notify_one();
        let result = rx
            .wait_for(|flushed| match flushed {
                Ok(offset) => *offset > last_offset,
                Err(_) => true,
            })
            .await;
        match result.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(failure)) => Err(ReplicaError::Storage {
                tp: self.tp.clone(),
                failure: failure.clone(),
            }),
            Err(_) => Err(ReplicaError::Closed(self.tp.clone())),
        }
    }
}
