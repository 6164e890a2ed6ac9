//! The follower side: its log position, truncation to the leader's log, appends of the
//! leader's batches, and the leader's log start taken in.

use super::{FlushFailure, FollowerPosition, Partition, ReplicaError};
use crate::core::{Command, Event, ReplicaCore, Role};
use spate_log::{FollowerAppendError, LogError, PartitionLog};
use spate_types::Offset;

impl Partition {
    /// Only a follower's log may be changed from the leader's: a replica that became leader
    /// (or went offline) meanwhile refuses, under the core lock, so a late fetcher round can
    /// never truncate or extend a leader's log.
    fn check_follower(&self, core: &ReplicaCore) -> Result<(), ReplicaError> {
        if matches!(core.role(), Role::Follower { .. }) {
            return Ok(());
        }
        Err(ReplicaError::NotLeader {
            tp: self.tp.clone(),
            leader: core.leader(),
            leader_epoch: core.leader_epoch(),
        })
    }

    /// This follower's log position, for its fetcher. Its log end is the next fetch offset,
    /// which the leader counts as durable here: after a failed fsync (when fsync is required)
    /// it is refused with [`ReplicaError::Storage`], so the replica stops fetching.
    pub fn follower_position(&self) -> Result<FollowerPosition, ReplicaError> {
        if self.policy.fsync_acks_all {
            if let Err(failure) = &*self.flushed.borrow() {
                return Err(ReplicaError::Storage {
                    tp: self.tp.clone(),
                    failure: failure.clone(),
                });
            }
        }
        let core = self.core()?;
        if let Some(d) = self.damage.get().filter(|d| !d.cut) {
            if core.isr().contains(&core.settings().local) {
                // Its fetch offset would claim the damaged batch (see `damage.rs`).
                return Err(ReplicaError::Damaged {
                    tp: self.tp.clone(),
                    from: d.from,
                });
            }
        }
        let (log_end, log_start, last_epoch) = self.with_log(|log| {
            Ok((
                log.log_end_offset(),
                log.log_start_offset(),
                log.leader_epochs().last().map(|(e, _)| *e),
            ))
        })?;
        Ok(FollowerPosition {
            log_end,
            log_start,
            last_epoch,
            leader_epoch: core.leader_epoch(),
            role: core.role(),
        })
    }

    /// A follower truncating to the leader's log (after OffsetForLeaderEpoch). Blocking disk
    /// work: run it on the blocking pool.
    pub fn truncate_to(&self, offset: Offset) -> Result<Vec<Command>, ReplicaError> {
        let (commands, log_end) = self.truncate_with(|log| log.truncate_to(offset))?;
        // Truncation may drop what was flushed.
        self.flushed.send_if_modified(|f| match f {
            Ok(offset) if *offset > log_end => {
                *offset = log_end;
                true
            }
            _ => false,
        });
        Ok(commands)
    }

    /// Empties the log and restarts it at `offset` (the leader's log start moved past this
    /// follower's log end).
    pub fn truncate_fully(&self, offset: Offset) -> Result<Vec<Command>, ReplicaError> {
        let (commands, log_end) =
            self.truncate_with(|log| log.truncate_fully_and_start_at(offset))?;
        let _ = self.flushed.send_replace(Ok(log_end));
        Ok(commands)
    }

    /// A follower's truncation: `cut` under the core lock (a leader's log is never cut), then
    /// the core, the log end's watchers and the damage record learn the new log end.
    fn truncate_with(
        &self,
        cut: impl FnOnce(&mut PartitionLog) -> Result<(), LogError>,
    ) -> Result<(Vec<Command>, Offset), ReplicaError> {
        let mut core = self.core()?;
        self.check_follower(&core)?;
        let log_end = self
            .with_log(|log| {
                cut(log)?;
                Ok(log.log_end_offset())
            })
            .inspect_err(|e| self.io_failed(e, "truncation"))?;
        let commands = self.step(&mut core, Event::Truncated { log_end });
        drop(core);
        self.log_end.send_replace(log_end);
        self.damage_cut(log_end);
        Ok((commands, log_end))
    }

    /// A follower's append of batches fetched from the leader, stored byte for byte. When
    /// fsync is required the batches are fsynced before this returns, so the follower's next
    /// fetch offset tells the leader they are durable here. Then the leader's high watermark
    /// is taken in. Blocking disk work (the fsync): run it on the blocking pool.
    ///
    /// The fsync is the leader flusher's: the active segment's log file only
    /// ([`PartitionLog::sync_target`](spate_log::PartitionLog::sync_target); a roll during the append already fsynced what it closed),
    /// taken under the log lock and run outside both locks, so consumers and replica fetches
    /// are not held up by it. No checkpoint is written per fetch: recovery rebuilds the active
    /// segment's epochs and producer state from its batches, and the log start is checkpointed
    /// when it moves (see `spate_log::log`). A failed fsync is sticky, as the flusher's: the
    /// partition stops fetching ([`Partition::follower_position`] refuses), since its log end
    /// would otherwise be reported to the leader as durable.
    pub fn append_from_leader(
        &self,
        records: &[u8],
        leader_high_watermark: Offset,
        now_ms: i64,
    ) -> Result<Vec<Command>, ReplicaError> {
        let fsync = self.policy.fsync_acks_all;
        let mut core = self.core()?;
        self.check_follower(&core)?;
        let (appended, log_end, target) = {
            let mut guard = self.lock()?;
            let log = guard
                .as_mut()
                .ok_or_else(|| ReplicaError::Closed(self.tp.clone()))?;
            let appended =
                log.append_as_follower(records, now_ms)
                    .map_err(|source| match source {
                        FollowerAppendError::Log(e) => ReplicaError::Log(e),
                        other => ReplicaError::Diverged {
                            tp: self.tp.clone(),
                            source: other,
                        },
                    })?;
            let target = if appended.is_some() && fsync {
                log.sync_target()
            } else {
                None
            };
            (appended, log.log_end_offset(), target)
        };
        let mut commands = Vec::new();
        if appended.is_some() {
            commands.extend(self.step(&mut core, Event::LogEndChanged { log_end }));
        }
        if let Some(target) = target {
            drop(core);
            let offset = target.offset;
            if let Err(e) = target.sync() {
                let failure = FlushFailure(e.to_string());
                self.fsync_failed(
                    &failure,
                    "fsync of fetched records failed; this replica stops fetching",
                );
                return Err(ReplicaError::Storage {
                    tp: self.tp.clone(),
                    failure,
                });
            }
            core = self.core()?;
            // Ignored if the log was truncated meanwhile; the log's flushed offset says what
            // is durable either way.
            self.with_log(|log| {
                log.mark_flushed(offset);
                Ok(())
            })?;
        }
        if appended.is_some() {
            if fsync {
                let flushed = self.with_log(|log| Ok(log.flushed_offset()))?;
                commands.extend(self.step(&mut core, Event::Flushed { flushed }));
                self.publish_flushed(flushed);
            } else {
                self.dirty.notify_one();
            }
        }
        commands.extend(self.step(
            &mut core,
            Event::LeaderHighWatermark {
                high_watermark: leader_high_watermark,
            },
        ));
        drop(core);
        self.damage_caught_up(log_end);
        self.log_end.send_replace(log_end);
        Ok(commands)
    }

    /// Kafka's follower `maybeIncrementLogStartOffset`: the leader's log start offset (raised
    /// by DeleteRecords) becomes this follower's where it lies inside the local log, so that a
    /// replica elected later never serves records deleted on the old leader. A leader start
    /// past the local log end is left to the next fetch (OFFSET_OUT_OF_RANGE starts the log
    /// over there). Returns the new log start when it moved. Blocking (checkpoint, unlinks).
    pub fn follow_leader_log_start(
        &self,
        leader_log_start: Offset,
    ) -> Result<Option<Offset>, ReplicaError> {
        let core = self.core()?;
        self.check_follower(&core)?;
        self.with_log(|log| {
            if leader_log_start <= log.log_start_offset() || leader_log_start > log.log_end_offset()
            {
                return Ok(None);
            }
            log.delete_records_before(leader_log_start).map(Some)
        })
    }
}
