//! One partition replica on this node: the shell around [`ReplicaCore`] that owns the log,
//! carries out the core's decisions, and answers the front end's named verbs (append, wait for
//! `acks=all`, read for a consumer or a follower, append from the leader, truncate).
//!
//! Locking: the core and the log each sit behind a short-held mutex, never held across an
//! `.await`, an fsync or a disk read. Where both are needed the core is locked first, so an
//! append is checked (leader, epoch, ISR) and written under one view of the replication state.
//!
//! Durability: one flusher task per partition group-commits fsyncs. The high watermark is the
//! core's: the minimum durable offset over the ISR, so a consumer only reads what survives a
//! power loss on every in-sync replica. It is published through a `watch` (long polls and
//! `acks=all` waiters wake on it) and checkpointed to `high-watermark` in the partition
//! directory by [`Partition::checkpoint_high_watermark`] (the replica manager's tick), so it
//! restarts no higher than it was published.
//!
//! Transactions (markers, the last stable offset, KIP-890 verification guards, the reads of
//! `read_committed` consumers) are in `partition/transactions.rs`.

use crate::core::{Command, Event, LeaderAndIsr, Outcome, ReplicaCore, ReplicaSettings, Role};
use crate::health::StorageHealth;
use durability::{checkpoint_or, flusher};
use spate_log::{
    CompactionLimits, CompactionOutcome, FollowerAppendError, LogConfig, LogError, PartitionLog,
    PlannedCompaction, ReadPlan,
};
use spate_types::disk::Disk;
use spate_types::{Clock, LeaderEpoch, NodeId, Offset, TopicPartition};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

mod durability;
mod follower;
mod leader;
mod read;
pub(crate) mod transactions;

/// The file holding the last checkpointed high watermark (decimal, one line).
pub const HIGH_WATERMARK_FILE: &str = "high-watermark";
/// A high watermark checkpoint longer than this is not one we wrote.
const HIGH_WATERMARK_FILE_BYTES_MAX: u64 = 64;

/// When the flusher fsyncs.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Unflushed `acks=1` data is fsynced at most this long after it was written
    /// (`log.flush.interval.ms`).
    pub interval: Duration,
    /// `acks=all` waits for the fsync covering its batch on every in-sync replica (the
    /// default). `false` is the relaxed, opt-in mode (`acks.all.fsync=false`).
    pub fsync_acks_all: bool,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1000),
            fsync_acks_all: true,
        }
    }
}

/// Why an fsync failed; sticky: after it the partition cannot promise durability any more.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlushFailure(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("partition {0} is closed")]
    Closed(TopicPartition),
    #[error("fsync of {tp} failed: {failure}")]
    Storage {
        tp: TopicPartition,
        failure: FlushFailure,
    },
    /// This replica is not the leader (Kafka: NOT_LEADER_OR_FOLLOWER, with the hint).
    #[error("{tp}: not the leader (leader {leader:?}, epoch {leader_epoch})")]
    NotLeader {
        tp: TopicPartition,
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
    },
    /// `acks=all` while the ISR is smaller than `min.insync.replicas` (nothing written).
    #[error("{tp}: {isr} in-sync replicas, min.insync.replicas requires {required}")]
    NotEnoughReplicas {
        tp: TopicPartition,
        isr: usize,
        required: usize,
    },
    /// Written and durable on the ISR, but the ISR shrank below `min.insync.replicas`.
    #[error("{tp}: written, but the ISR shrank to {isr} (min.insync.replicas {required})")]
    NotEnoughReplicasAfterAppend {
        tp: TopicPartition,
        isr: usize,
        required: usize,
    },
    /// A fetch carried a leader epoch older (fenced) or newer (unknown) than this replica's.
    #[error("{tp}: fetch in leader epoch {requested}, current is {current}")]
    FencedLeaderEpoch {
        tp: TopicPartition,
        requested: LeaderEpoch,
        current: LeaderEpoch,
    },
    #[error("{tp}: fetch in leader epoch {requested}, newer than the current {current}")]
    UnknownLeaderEpoch {
        tp: TopicPartition,
        requested: LeaderEpoch,
        current: LeaderEpoch,
    },
    /// A damaged replica (see `damage.rs`): as a leader while the ISR has another member, or
    /// while its log is below the high watermark it knew, it serves nothing
    /// (NOT_LEADER_OR_FOLLOWER), so that no write lands on, and no follower truncates to, a
    /// log that may miss committed records; as a follower in the ISR it does not fetch past
    /// its damaged batch.
    #[error("{tp}: this replica's log is damaged from offset {from}; leadership is moving")]
    Damaged { tp: TopicPartition, from: Offset },
    /// A replica fetch from a node that is not a replica of this partition.
    #[error("{tp}: node {replica} is not a replica")]
    NotReplica { tp: TopicPartition, replica: NodeId },
    /// A consumer read at a new leader whose high watermark has not settled (Kafka:
    /// OFFSET_NOT_AVAILABLE, retriable).
    #[error("{tp}: the new leader's high watermark {high_watermark} has not reached its epoch start {epoch_start}")]
    HighWatermarkNotSettled {
        tp: TopicPartition,
        high_watermark: Offset,
        epoch_start: Offset,
    },
    /// The leader sent batches that do not follow this replica's log (a bug or a missed
    /// truncation); nothing was written.
    #[error("{tp}: {source}")]
    Diverged {
        tp: TopicPartition,
        #[source]
        source: FollowerAppendError,
    },
}

/// What a fetch of one partition sees: the bytes to send and the offsets to report.
pub struct PartitionRead {
    pub plan: ReadPlan,
    pub high_watermark: Offset,
    /// The log's last stable offset for `high_watermark` (Fetch reports it in both isolation
    /// levels; a `read_committed` read stops at it).
    pub last_stable_offset: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
    /// For a follower whose log diverged from this leader's (KIP-595): the largest epoch ≤ its
    /// last fetched epoch and where it ends here. Nothing is read then, and the fetch does not
    /// count as the follower's progress.
    pub diverging_epoch: Option<(LeaderEpoch, Offset)>,
}

/// One partition of a follower's Fetch request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerFetch {
    pub replica: NodeId,
    pub current_leader_epoch: Option<LeaderEpoch>,
    /// Everything below is durable on the follower.
    pub fetch_offset: Offset,
    /// The epoch of the follower's last batch (Fetch v12+; `None` before, or for an empty log).
    pub last_fetched_epoch: Option<LeaderEpoch>,
    pub max_bytes: usize,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// A retried idempotent batch: acknowledged with its original offsets, not written again.
    pub duplicate: bool,
    pub bytes: usize,
    pub log_start_offset: Offset,
    /// The broker time a LogAppendTime topic stamped the batches with, -1 for CreateTime
    /// (the Produce response's `log_append_time_ms`).
    pub log_append_time_ms: i64,
}

/// A follower's view of its own log, for OffsetForLeaderEpoch and Fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerPosition {
    pub log_end: Offset,
    pub log_start: Offset,
    /// The latest leader epoch among the batches in the local log.
    pub last_epoch: Option<LeaderEpoch>,
    /// The leader epoch this replica follows in.
    pub leader_epoch: LeaderEpoch,
    pub role: Role,
}

pub struct Partition {
    tp: TopicPartition,
    topic_id: uuid::Uuid,
    /// The disk the log and the high watermark checkpoint live on.
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    core: Mutex<ReplicaCore>,
    log: Mutex<Option<PartitionLog>>,
    policy: FlushPolicy,
    high_watermark: watch::Sender<Offset>,
    /// The last stable offset, republished whenever the high watermark moves or the log is
    /// truncated (wakes `read_committed` long polls; see `partition/transactions.rs`).
    last_stable_offset: watch::Sender<Offset>,
    /// KIP-890 verification guards by producer (see `partition/transactions.rs`). Locked after
    /// the core and the log, never held while taking either.
    guards: Mutex<transactions::VerificationGuards>,
    /// The local log end (wakes replica fetches parked in long poll).
    log_end: watch::Sender<Offset>,
    /// Bumped on every role or ISR change (wakes `acks=all` waiters that must re-check).
    state_version: watch::Sender<u64>,
    flushed: watch::Sender<Result<Offset, FlushFailure>>,
    /// Told of a failed fsync (the node stops; see [`StorageHealth`]).
    health: StorageHealth,
    /// The node's clock: its monotonic side times the replica core (follower lag, ISR
    /// proposals), so a step of the wall clock (NTP, an operator) neither drops every follower
    /// from the ISR nor keeps a dead one in it.
    clock: Arc<dyn Clock>,
    flush_now: Notify,
    dirty: Notify,
    closing: watch::Sender<bool>,
    /// The published high watermark has moved since the last checkpoint.
    checkpoint_due: AtomicBool,
    /// What this replica's log may lack (see `damage.rs`).
    damage: crate::damage::Damage,
}

impl Partition {
    /// Opens (recovering if needed) the log in `dir` on `disk`, starts the flusher task, and
    /// starts as an offline replica: [`Partition::apply`] makes it a leader or follower.
    ///
    /// Must be called inside a Tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        tp: TopicPartition,
        topic_id: uuid::Uuid,
        config: LogConfig,
        settings: ReplicaSettings,
        policy: FlushPolicy,
        health: StorageHealth,
        clock: Arc<dyn Clock>,
        now_ms: i64,
    ) -> Result<Arc<Partition>, ReplicaError> {
        let mut log = PartitionLog::open(Arc::clone(&disk), dir, config, now_ms)?;
        // What recovery kept (a kill -9 leaves it in the page cache) is made durable before it
        // counts toward the high watermark.
        if log.flushed_offset() < log.log_end_offset() {
            log.flush()?;
        }
        let leo = log.log_end_offset();
        let flushed = log.flushed_offset();
        let checkpoint = checkpoint_or(&*disk, dir, &tp);
        let start = checkpoint.unwrap_or(log.log_start_offset());
        // The topic's config is the one source of `min.insync.replicas`.
        let settings = ReplicaSettings {
            min_insync_replicas: usize::try_from(log.config().min_insync_replicas.max(1))
                .unwrap_or(1),
            ..settings
        };
        // Damage recovery found: a kept damaged batch, or a cut tail (see `damage.rs`); the
        // committed records it may lack run up to the checkpointed high watermark.
        let committed = checkpoint;
        let damaged = match (log.damaged_at_open(), log.cut_at_open()) {
            (Some(batch), _) => Some((batch, false)),
            (None, true) => Some((log.log_end_offset(), true)),
            (None, false) => None,
        };
        let core = ReplicaCore::new(settings, leo, flushed, start.max(log.log_start_offset()));
        let hw = core.high_watermark();
        // Transactions recovery saw complete below it no longer hold the last stable offset.
        log.on_high_watermark(hw);
        let lso = log.last_stable_offset(hw);
        let damage = crate::damage::Damage::open(
            Arc::clone(&disk),
            dir,
            (log.log_start_offset(), log.log_end_offset()),
        );
        let partition = Arc::new(Partition {
            tp,
            topic_id,
            disk,
            dir: dir.to_owned(),
            core: Mutex::new(core),
            log: Mutex::new(Some(log)),
            policy,
            high_watermark: watch::Sender::new(hw),
            last_stable_offset: watch::Sender::new(lso),
            guards: Mutex::new(transactions::VerificationGuards::default()),
            log_end: watch::Sender::new(leo),
            state_version: watch::Sender::new(0),
            flushed: watch::Sender::new(Ok(flushed)),
            health,
            clock,
            flush_now: Notify::new(),
            dirty: Notify::new(),
            closing: watch::Sender::new(false),
            checkpoint_due: AtomicBool::new(false),
            damage,
        });
        if let Some((from, cut)) = damaged {
            tracing::warn!(partition = %partition.tp, %from, cut, "recovery cut the log's tail or kept a damaged batch: leaving the ISR before leading");
            partition
                .damage
                .record(from, committed.unwrap_or(from).max(from), cut);
        }
        tokio::spawn(flusher(
            Arc::downgrade(&partition),
            partition.closing.subscribe(),
        ));
        Ok(partition)
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn topic_id(&self) -> uuid::Uuid {
        self.topic_id
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<PartitionLog>>, ReplicaError> {
        // A poisoned lock means a bug panicked mid-update; the log's own invariants are
        // checked on reopen, so surfacing it as closed is the safe answer.
        self.log
            .lock()
            .map_err(|_| ReplicaError::Closed(self.tp.clone()))
    }

    fn core(&self) -> Result<MutexGuard<'_, ReplicaCore>, ReplicaError> {
        self.core
            .lock()
            .map_err(|_| ReplicaError::Closed(self.tp.clone()))
    }

    /// Runs `f` on the open log (retention, compaction planning, offset lookups).
    pub fn with_log<R>(
        &self,
        f: impl FnOnce(&mut PartitionLog) -> Result<R, LogError>,
    ) -> Result<R, ReplicaError> {
        let mut guard = self.lock()?;
        let log = guard
            .as_mut()
            .ok_or_else(|| ReplicaError::Closed(self.tp.clone()))?;
        Ok(f(log)?)
    }

    /// Feeds one event to the core and carries out the commands that concern this shell
    /// (publishing the high watermark, waking waiters). The rest (fetcher start/stop, ISR
    /// proposals) are returned for the replica manager.
    /// Steps the core at the clock's monotonic time (never the wall clock a caller passes for
    /// the log's timestamps).
    fn step(&self, core: &mut ReplicaCore, event: Event) -> Vec<Command> {
        let now = i64::try_from(self.clock.monotonic_ms()).unwrap_or(i64::MAX);
        // A truncation may reopen a transaction whose marker it cut off.
        let mut lso_due = matches!(event, Event::Truncated { .. });
        let step = core.step(now, event);
        if let Outcome::TruncatedBelowHighWatermark {
            high_watermark,
            log_end,
        } = step.outcome
        {
            tracing::error!(partition = %self.tp, %high_watermark, %log_end, "log truncated below the high watermark");
        }
        let mut out = Vec::new();
        for command in step.commands {
            match command {
                Command::HighWatermark(hw) => {
                    lso_due |= self.high_watermark.send_if_modified(|current| {
                        let moved = hw > *current;
                        if moved {
                            *current = hw;
                        }
                        moved
                    });
                    self.checkpoint_due.store(true, Ordering::Relaxed);
                }
                Command::BecomeLeader { leader_epoch, .. } => {
                    // The new epoch starts at the log end before anything is written in it
                    // (Kafka's `maybeAssignEpochStartOffset`), so that a follower asking where
                    // its own latest epoch ends here gets an answer, not UNDEFINED (which it
                    // takes for "truncate to your high watermark", possibly below what the
                    // leader has committed).
                    if let Err(e) = self.with_log(|log| {
                        log.assign_leader_epoch(leader_epoch);
                        Ok(())
                    }) {
                        tracing::debug!(partition = %self.tp, error = %e, "no log to start the leader epoch in");
                    }
                    self.state_version.send_modify(|v| *v += 1);
                    out.push(command);
                }
                Command::BecomeFollower { .. } | Command::Offline { .. } => {
                    self.state_version.send_modify(|v| *v += 1);
                    out.push(command);
                }
                Command::ProposeIsr { .. } => out.push(command),
            }
        }
        if lso_due {
            self.refresh_last_stable_offset();
        }
        out
    }

    /// Applies the controller's leader and ISR for this partition.
    pub fn apply(&self, state: LeaderAndIsr) -> Result<Vec<Command>, ReplicaError> {
        let mut core = self.core()?;
        let before = (core.partition_epoch(), core.leader_epoch());
        let commands = self.step(&mut core, Event::LeaderAndIsr(state));
        if before != (core.partition_epoch(), core.leader_epoch()) {
            // ISR changes alter `acks=all` outcomes even without a role change.
            self.state_version.send_modify(|v| *v += 1);
        }
        if !core.isr().contains(&core.settings().local) && core.partition_epoch() >= 0 {
            self.damage.out_of_isr();
            self.damage_caught_up(core.log_end());
        }
        Ok(commands)
    }

    /// New topic config: the log's, and the core's `min.insync.replicas`.
    pub fn set_config(&self, config: LogConfig) -> Result<Vec<Command>, ReplicaError> {
        let min_insync = usize::try_from(config.min_insync_replicas.max(1)).unwrap_or(1);
        self.with_log(|log| {
            log.set_config(config);
            Ok(())
        })?;
        let mut core = self.core()?;
        if core.settings().min_insync_replicas == min_insync {
            return Ok(Vec::new());
        }
        let settings = ReplicaSettings {
            min_insync_replicas: min_insync,
            ..core.settings().clone()
        };
        let commands = self.step(&mut core, Event::SettingsChanged(settings));
        self.state_version.send_modify(|v| *v += 1);
        Ok(commands)
    }

    /// Time passed: the leader checks follower lag (ISR shrink proposals come back).
    pub fn tick(&self) -> Result<Vec<Command>, ReplicaError> {
        let mut core = self.core()?;
        Ok(self.step(&mut core, Event::Tick))
    }

    /// The brokers that may not join the ISR now (fenced, shutting down, not registered).
    pub fn set_ineligible(&self, brokers: BTreeSet<NodeId>) -> Result<Vec<Command>, ReplicaError> {
        let mut core = self.core()?;
        Ok(self.step(&mut core, Event::IneligibleReplicas(brokers)))
    }

    /// The controller did not apply the pending ISR proposal (see [`Event::IsrChangeRefused`]).
    pub fn isr_change_refused(&self) -> Result<Vec<Command>, ReplicaError> {
        let mut core = self.core()?;
        Ok(self.step(&mut core, Event::IsrChangeRefused))
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.core()
            .map(|c| c.leader_epoch())
            .unwrap_or(LeaderEpoch(-1))
    }

    pub fn role(&self) -> Role {
        self.core().map(|c| c.role()).unwrap_or(Role::Offline)
    }

    /// The ISR change this leader has proposed and the controller not yet answered.
    pub fn pending_isr_change(&self) -> Option<crate::core::PendingIsrChange> {
        self.core()
            .ok()
            .and_then(|c| c.pending_isr_change().cloned())
    }

    /// The current leader and ISR as this replica applied them.
    pub fn leader_and_isr(&self) -> Option<LeaderAndIsr> {
        self.core().ok().map(|c| c.leader_and_isr().clone())
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// Changes when the high watermark moves (for consumer fetches in long poll).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// Changes when the local log end moves (for follower fetches in long poll).
    pub fn subscribe_log_end(&self) -> watch::Receiver<Offset> {
        self.log_end.subscribe()
    }

    /// A read from `start` failed with `error`. A corrupt batch (its CRC or framing fails)
    /// is damage, from that batch on (or from `start`), up to the high watermark: true the
    /// first time (report it to the controller, see `damage.rs`). Any other error is not.
    pub fn read_failed(&self, start: Offset, error: &ReplicaError) -> bool {
        let ReplicaError::Log(LogError::Corrupt { path, position, .. }) = error else {
            return false;
        };
        // The damaged batch itself where its stored base offset is plausible, else the read's
        // start (the batch holding it and everything after are suspect).
        let from = self
            .with_log(|log| Ok(log.batch_offset_at(path, *position)))
            .ok()
            .flatten()
            .filter(|o| *o >= start)
            .unwrap_or(start);
        tracing::error!(partition = %self.tp, %from, %error, "damaged batch in the local log: it is not served, and is fetched again from a healthy replica");
        self.damage
            .record(from, self.high_watermark().max(from), false)
    }

    /// Where this replica's damage starts, if it has any.
    pub fn damaged_from(&self) -> Option<Offset> {
        self.damage.get().map(|d| d.from)
    }

    /// The report of this replica's damage could not be queued: forget it, so that the next
    /// read meeting the batch reports it again.
    pub fn forget_damage(&self) {
        self.damage.forget();
    }

    /// A damaged leader serves nothing while the ISR has another member
    /// ([`ReplicaError::Damaged`]), eligible to lead now or not (a fenced one comes back, and
    /// then leadership moves to it: found by simulator seed 37, where a restarted node whose
    /// recovery had cut committed records led while the other ISR member was fenced, and both
    /// followers truncated to it). Alone in the ISR it serves only if its log reaches the high
    /// watermark it knew: all but a damaged batch, or what a power cut left of a tail whose
    /// committed part was fsynced.
    fn check_damage(&self, core: &ReplicaCore) -> Result<(), ReplicaError> {
        let Some(d) = self.damage.get() else {
            return Ok(());
        };
        let local = core.settings().local;
        let others = core.isr().iter().any(|r| *r != local);
        if core.role() == Role::Leader && (others || core.log_end() < d.until) {
            return Err(ReplicaError::Damaged {
                tp: self.tp.clone(),
                from: d.from,
            });
        }
        Ok(())
    }

    /// Whether another ISR member is eligible to lead in this damaged replica's place (the
    /// controller would take it out of the ISR now).
    pub fn damage_movable(&self) -> bool {
        self.core().is_ok_and(|core| another_can_lead(&core))
    }

    /// Where a follower out of the ISR cuts its log to drop its damage before fetching again
    /// (never while in the ISR: see `damage.rs`).
    pub fn repair_offset(&self) -> Option<Offset> {
        let d = self.damage.get().filter(|d| !d.cut)?;
        let core = self.core().ok()?;
        let out_of_isr = !core.isr().contains(&core.settings().local);
        (matches!(core.role(), Role::Follower { .. }) && out_of_isr)
            .then(|| d.from.min(core.log_end()))
    }

    pub fn log_end_offset(&self) -> Result<Offset, ReplicaError> {
        self.with_log(|log| Ok(log.log_end_offset()))
    }

    fn damage_cut(&self, log_end: Offset) {
        if self
            .damage
            .get()
            .is_some_and(|d| !d.cut && log_end <= d.from)
        {
            tracing::info!(partition = %self.tp, %log_end, "damaged batch cut away; fetching it again from the leader");
        }
        self.damage.truncated(log_end);
        self.damage_caught_up(log_end);
    }

    fn damage_caught_up(&self, log_end: Offset) {
        if self.damage.caught_up(log_end) {
            tracing::info!(partition = %self.tp, %log_end, "damage repaired: the log holds every record it had acknowledged");
        }
    }

    pub fn log_start_offset(&self) -> Result<Offset, ReplicaError> {
        self.with_log(|log| Ok(log.log_start_offset()))
    }

    /// One compaction pass (see `spate_log::compaction`). Blocking: run it on a blocking
    /// thread. The lock is held only to plan (index lookups) and to swap the cleaned files in
    /// (renames and one directory fsync); reading, deduplicating and writing the cleaned
    /// segments happen without it, so produce and fetch continue meanwhile. Only committed
    /// data (below the high watermark) is compacted.
    pub fn compact(
        &self,
        now_ms: i64,
        limits: CompactionLimits,
    ) -> Result<CompactionOutcome, ReplicaError> {
        let high_watermark = self.high_watermark();
        let plan = match self.with_log(|log| log.plan_compaction(now_ms, high_watermark, limits))? {
            PlannedCompaction::Plan(plan) => plan,
            PlannedCompaction::Skip(reason) => return Ok(CompactionOutcome::Skipped(reason)),
        };
        let prepared = plan.execute()?;
        let commit = self.with_log(|log| log.commit_compaction(prepared))?;
        Ok(commit.persist()?)
    }

    /// Fsyncs everything, checkpoints the high watermark and stops the flusher; later calls
    /// get [`ReplicaError::Closed`].
    pub fn close(&self) -> Result<Option<PartitionLog>, ReplicaError> {
        let mut guard = self.lock()?;
        let taken = guard.take();
        drop(guard);
        // `send_replace`: the value must change even when nothing listens (the flusher may be
        // gone), so that a later `wait_acks_all` sees it.
        self.closing.send_replace(true);
        if let Some(mut log) = taken {
            log.flush()?;
            let flushed = log.flushed_offset();
            let _ = self.flushed.send_replace(Ok(flushed));
            self.checkpoint_due.store(true, Ordering::Relaxed);
            if let Err(e) = self.checkpoint_high_watermark() {
                tracing::warn!(partition = %self.tp, error = %e, "high watermark checkpoint failed at close");
            }
            return Ok(Some(log));
        }
        Ok(None)
    }
}

/// Whether an ISR member other than this replica is eligible (unfenced, not shutting down).
fn another_can_lead(core: &ReplicaCore) -> bool {
    let local = core.settings().local;
    core.isr()
        .iter()
        .any(|r| *r != local && !core.ineligible().contains(r))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::Command;

    /// One uncompressed v2 batch with a single record holding `value`.
    fn batch(value: &[u8], timestamp_ms: i64) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        }
        let mut record = Vec::new();
        record.push(0); // attributes
        varint(&mut record, 0); // timestamp delta
        varint(&mut record, 0); // offset delta
        varint(&mut record, -1); // null key
        varint(&mut record, value.len() as i64);
        record.extend_from_slice(value);
        varint(&mut record, 0); // headers
        let mut records = Vec::new();
        varint(&mut records, record.len() as i64);
        records.extend_from_slice(&record);

        let mut after_crc = Vec::new();
        after_crc.extend_from_slice(&0i16.to_be_bytes()); // attributes
        after_crc.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        after_crc.extend_from_slice(&timestamp_ms.to_be_bytes());
        after_crc.extend_from_slice(&timestamp_ms.to_be_bytes());
        after_crc.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        after_crc.extend_from_slice(&(-1i16).to_be_bytes());
        after_crc.extend_from_slice(&(-1i32).to_be_bytes());
        after_crc.extend_from_slice(&1i32.to_be_bytes()); // records count
        after_crc.extend_from_slice(&records);
        let mut out = Vec::new();
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((4 + 1 + 4 + after_crc.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&after_crc).to_be_bytes());
        out.extend_from_slice(&after_crc);
        out
    }

    const LOCAL: NodeId = NodeId(1);
    const OTHER: NodeId = NodeId(2);

    fn settings() -> ReplicaSettings {
        ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 10_000,
            min_insync_replicas: 1,
            fsync_required: true,
        }
    }

    fn state(leader: NodeId, epoch: i32, replicas: &[NodeId], isr: &[NodeId]) -> LeaderAndIsr {
        LeaderAndIsr {
            leader: Some(leader),
            leader_epoch: LeaderEpoch(epoch),
            partition_epoch: epoch,
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
        }
    }

    /// A partition of "t" on the OS disk with these settings, not yet given a role.
    fn open_on(
        dir: &Path,
        config: LogConfig,
        policy: FlushPolicy,
        clock: Arc<dyn Clock>,
        now_ms: i64,
    ) -> Arc<Partition> {
        Partition::open(
            Arc::new(spate_types::OsDisk),
            dir,
            TopicPartition::new("t", 0),
            uuid::Uuid::from_u128(7),
            config,
            settings(),
            policy,
            StorageHealth::default(),
            clock,
            now_ms,
        )
        .expect("open")
    }

    fn open_as(dir: &Path, config: LogConfig, state: LeaderAndIsr) -> Arc<Partition> {
        let p = open_on(
            dir,
            config,
            FlushPolicy::default(),
            Arc::new(spate_types::SystemClock),
            0,
        );
        p.apply(state).expect("apply");
        p
    }

    /// A single-replica leader, as a one-node cluster has.
    fn open(dir: &Path, config: LogConfig) -> Arc<Partition> {
        open_as(dir, config, state(LOCAL, 0, &[LOCAL], &[LOCAL]))
    }

    /// Found by the simulator (seed 128 of a 10 000-seed run, 3 nodes): the leader's wall
    /// clock stepped back 6 minutes, and a follower that had died stayed in the ISR (its lag
    /// was measured on the wall clock), so acks=all writes failed until the end. Follower lag
    /// is measured on the monotonic clock: a wall clock step backward keeps nobody in, a step
    /// forward takes nobody out.
    #[tokio::test]
    async fn follower_lag_ignores_steps_of_the_wall_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(spate_types::ManualClock::new(1_700_000_000_000));
        let p = open_on(
            dir.path(),
            LogConfig::default(),
            FlushPolicy::default(),
            clock.clone(),
            clock.now_ms(),
        );
        p.apply(state(LOCAL, 1, &[LOCAL, OTHER], &[LOCAL, OTHER]))
            .expect("apply");
        let proposals = |commands: Vec<Command>| {
            commands
                .into_iter()
                .filter(|c| matches!(c, Command::ProposeIsr { .. }))
                .count()
        };
        tracing::info!("--- a step forward of an hour: the follower has not lagged");
        clock.set_now_ms(clock.now_ms() + 3_600_000);
        assert_eq!(proposals(p.tick().expect("tick")), 0);
        tracing::info!("--- a step back of an hour, then the lag time passes: it is out");
        clock.set_now_ms(clock.now_ms() - 2 * 3_600_000);
        clock.advance(Duration::from_millis(10_001));
        assert_eq!(proposals(p.tick().expect("tick")), 1);
    }

    #[tokio::test]
    async fn acks_all_waiters_share_fsyncs_and_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), LogConfig::default());
        let mut waits = Vec::new();
        for i in 0..20 {
            let mut b = batch(format!("v{i}").as_bytes(), 1_000);
            let receipt = p.append(&mut b, true, 1_000).expect("append");
            assert!(!receipt.duplicate);
            waits.push(receipt.last_offset);
        }
        let all = join_in_order(waits.iter().map(|o| p.wait_acks_all(*o)).collect()).await;
        assert!(all.iter().all(Result::is_ok), "{all:?}");
        assert!(p.with_log(|l| Ok(l.flushed_offset())).expect("log") >= Offset(20));
        assert_eq!(
            p.high_watermark(),
            Offset(20),
            "single replica: the fsynced log end"
        );
    }

    #[tokio::test]
    async fn an_acks_all_append_is_fsynced_before_anyone_waits_for_it() {
        // A connection awaits its responses in request order, so the wait for this append may
        // start only after an earlier request's fsync on another partition. Its own fsync must
        // not wait for that: it starts at the append. The flush interval is far beyond the
        // test's timeout, so only that start makes the data durable here.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open_on(
            dir.path(),
            LogConfig::default(),
            FlushPolicy {
                interval: Duration::from_secs(3_600),
                fsync_acks_all: true,
            },
            Arc::new(spate_types::SystemClock),
            0,
        );
        p.apply(state(LOCAL, 0, &[LOCAL], &[LOCAL])).expect("apply");
        let mut hw = p.subscribe_high_watermark();

        p.append(&mut batch(b"one", 1_000), false, 1_000)
            .expect("append acks=1");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            p.high_watermark(),
            Offset(0),
            "acks=1 data waits for the flush interval"
        );

        let receipt = p
            .append(&mut batch(b"all", 1_000), true, 1_000)
            .expect("append acks=all");
        tokio::time::timeout(
            Duration::from_secs(10),
            hw.wait_for(|hw| *hw > receipt.last_offset),
        )
        .await
        .expect("fsynced without a waiter asking for it")
        .expect("open");
        assert!(p.with_log(|l| Ok(l.flushed_offset())).expect("log") >= Offset(2));
        p.wait_acks_all(receipt.last_offset)
            .await
            .expect("already durable");
    }

    #[tokio::test]
    async fn acks_all_waiter_completes_when_retention_rolls_its_segment() {
        // Retention rolls an expired active segment, which fsyncs it: the waiter for an
        // offset in it must be released even though no sync target remains afterwards.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            retention_ms: 10,
            ..LogConfig::default()
        };
        let p = open(dir.path(), config);
        let mut b = batch(b"old", 1_000);
        let info = p.append(&mut b, true, 1_000).expect("append");
        p.with_log(|log| log.apply_retention(1_000_000))
            .expect("retention");
        tokio::time::timeout(Duration::from_secs(10), p.wait_durable(info.last_offset))
            .await
            .expect("waiter released, not stuck until timeout")
            .expect("durable");
    }

    #[tokio::test]
    async fn closed_partition_refuses_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), LogConfig::default());
        p.close().expect("close");
        let mut b = batch(b"late", 1_000);
        assert!(matches!(
            p.append(&mut b, true, 1_000),
            Err(ReplicaError::Closed(_))
        ));
    }

    /// One uncompressed single-record batch with a key.
    fn keyed(key: &[u8], value: &[u8]) -> Vec<u8> {
        single_record_batch(Some(key), value)
    }

    /// One uncompressed v2 batch holding one record (timestamp 1 000).
    pub(crate) fn single_record_batch(key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_000,
            key: key.map(bytes::Bytes::copy_from_slice),
            value: Some(bytes::Bytes::copy_from_slice(value)),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    #[tokio::test]
    async fn compaction_runs_beside_appends_and_keeps_reads_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            cleanup_policy: "compact".into(),
            segment_ms: 1,
            min_cleanable_dirty_ratio: 0.0,
            ..LogConfig::default()
        };
        let p = open(dir.path(), config);
        for (i, v) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            let now = 1_000 + i as i64 * 10;
            p.append(&mut keyed(b"k", *v), false, now).expect("append");
        }
        p.wait_acks_all(Offset(3))
            .await
            .expect("durable: compaction stays below the HW");
        // A read planned before the pass still loads the old bytes after it.
        let before = p.read(Offset(0), 1 << 20, true).expect("read");
        let p2 = p.clone();
        let outcome =
            tokio::task::spawn_blocking(move || p2.compact(2_000, CompactionLimits::default()))
                .await
                .expect("join")
                .expect("compact");
        assert!(matches!(outcome, CompactionOutcome::Compacted(s) if s.records_removed == 2));
        assert!(!before.plan.load().expect("old plan").is_empty());
        p.append(&mut keyed(b"k", b"e"), false, 3_000)
            .expect("append after");
        let read = p.read(Offset(0), 1 << 20, true).expect("read");
        let batches = spate_log::validate_batches(&read.plan.load().expect("load"), 1 << 20);
        let first = batches.expect("batches")[0];
        assert_eq!(
            first.base_offset,
            Offset(2),
            "offsets 0 and 1 were superseded"
        );
        p.wait_acks_all(Offset(4)).await.expect("durable");
        assert_eq!(p.high_watermark(), Offset(5));
    }

    /// A leader in epoch 3 with a follower in its ISR, holding one acks=all batch ("a") the
    /// follower has not fetched.
    fn leader_with_one_batch(dir: &Path) -> (Arc<Partition>, AppendReceipt) {
        let p = open_as(
            dir,
            LogConfig::default(),
            state(LOCAL, 3, &[LOCAL, OTHER], &[LOCAL, OTHER]),
        );
        let receipt = p
            .append(&mut batch(b"a", 1_000), true, 1_000)
            .expect("append");
        (p, receipt)
    }

    /// A new leader's epoch starts at its log end before it writes anything (Kafka's
    /// `maybeAssignEpochStartOffset`): a follower asking where an epoch this leader never wrote
    /// in ends gets the leader's log end at its election, not UNDEFINED, which would have the
    /// follower truncate to its own high watermark, possibly below what is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_leader_answers_for_epochs_before_its_own_without_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), LogConfig::default());
        for value in [b"a", b"b"] {
            p.append(&mut batch(value, 1_000), false, 1_000)
                .expect("append");
        }
        assert_eq!(
            p.epoch_end_offset(LeaderEpoch(1)).expect("log"),
            None,
            "epoch 1 is newer than any this log knows"
        );
        p.apply(state(LOCAL, 2, &[LOCAL], &[LOCAL]))
            .expect("leader in epoch 2");
        assert_eq!(
            p.epoch_end_offset(LeaderEpoch(1)).expect("log"),
            Some((LeaderEpoch(0), Offset(2))),
            "epoch 1 is not here: epoch 0 ends where epoch 2 starts"
        );
        assert_eq!(
            p.epoch_end_offset(LeaderEpoch(2)).expect("log"),
            Some((LeaderEpoch(2), Offset(2)))
        );
        p.append(&mut batch(b"c", 1_000), false, 1_000)
            .expect("append in epoch 2");
        assert_eq!(
            p.epoch_end_offset(LeaderEpoch(0)).expect("log"),
            Some((LeaderEpoch(0), Offset(2))),
            "the first write of epoch 2 leaves its start where it was"
        );
    }

    /// A deleted topic's replica is closed: an acks=all write waiting on it is answered then, not
    /// at its request's timeout (a client's flush of a write to a topic deleted and created
    /// again stalled that way), and a wait that starts after the close ends at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_all_waiters_end_when_the_replica_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, receipt) = leader_with_one_batch(dir.path());
        p.wait_durable(receipt.last_offset)
            .await
            .expect("leader fsync");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_acks_all(Offset(0)).await })
        };
        assert!(!waiter.is_finished(), "the follower holds the batch back");
        p.close().expect("close");
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("answered when the replica closes")
            .expect("join");
        assert!(
            matches!(answered, Err(ReplicaError::Closed(_))),
            "{answered:?}"
        );
        assert!(matches!(
            p.wait_acks_all(Offset(0)).await,
            Err(ReplicaError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn acks_all_waits_for_the_follower_to_fetch_past_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, receipt) = leader_with_one_batch(dir.path());
        assert_eq!(receipt.last_offset, Offset(0));
        p.wait_durable(receipt.last_offset)
            .await
            .expect("leader fsync");
        assert_eq!(p.high_watermark(), Offset(0), "the follower holds it back");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_acks_all(Offset(0)).await })
        };
        // A fetch at offset 0 says the follower has nothing yet: the batch is served.
        let (read, _) = p
            .read_for_follower(FollowerFetch {
                replica: OTHER,
                current_leader_epoch: Some(LeaderEpoch(3)),
                fetch_offset: Offset(0),
                last_fetched_epoch: None,
                max_bytes: 1 << 20,
            })
            .expect("follower read");
        assert!(
            !read.plan.load().expect("load").is_empty(),
            "reads past the HW"
        );
        assert_eq!(p.high_watermark(), Offset(0));
        assert!(!waiter.is_finished());
        // Its next fetch at 1 says offset 0 is durable there: the HW passes it, acks=all done.
        p.read_for_follower(FollowerFetch {
            replica: OTHER,
            current_leader_epoch: Some(LeaderEpoch(3)),
            fetch_offset: Offset(1),
            last_fetched_epoch: None,
            max_bytes: 1 << 20,
        })
        .expect("follower read");
        assert_eq!(p.high_watermark(), Offset(1));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released")
            .expect("join")
            .expect("acked");
        // A leader's log is never truncated from a (late) fetcher round.
        assert!(matches!(
            p.truncate_to(Offset(0)),
            Err(ReplicaError::NotLeader { .. })
        ));
        assert_eq!(p.high_watermark(), Offset(1));
        // Stale and foreign fetches are refused.
        assert!(matches!(
            p.read_for_follower(FollowerFetch {
                replica: OTHER,
                current_leader_epoch: Some(LeaderEpoch(2)),
                fetch_offset: Offset(1),
                last_fetched_epoch: None,
                max_bytes: 1
            },),
            Err(ReplicaError::FencedLeaderEpoch { .. })
        ));
        assert!(matches!(
            p.read_for_follower(FollowerFetch {
                replica: NodeId(9),
                current_leader_epoch: Some(LeaderEpoch(3)),
                fetch_offset: Offset(1),
                last_fetched_epoch: None,
                max_bytes: 1
            },),
            Err(ReplicaError::NotReplica { .. })
        ));
    }

    #[tokio::test]
    async fn a_follower_whose_log_diverged_gets_the_diverging_epoch_and_no_credit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open_as(
            dir.path(),
            LogConfig::default(),
            state(LOCAL, 1, &[LOCAL, OTHER], &[LOCAL, OTHER]),
        );
        // Epoch 1 holds offsets 0..2, epoch 3 starts at 2.
        for (i, v) in [b"a", b"b"].into_iter().enumerate() {
            p.append(&mut batch(v, 1_000), true, 1_000 + i as i64)
                .expect("append");
        }
        p.apply(state(LOCAL, 3, &[LOCAL, OTHER], &[LOCAL, OTHER]))
            .expect("new epoch");
        p.append(&mut batch(b"c", 1_200), true, 1_200)
            .expect("append");
        p.wait_durable(Offset(2)).await.expect("leader fsync");
        let fetch = |offset: i64, last: Option<i32>| FollowerFetch {
            replica: OTHER,
            current_leader_epoch: Some(LeaderEpoch(3)),
            fetch_offset: Offset(offset),
            last_fetched_epoch: last.map(LeaderEpoch),
            max_bytes: 1 << 20,
        };
        // The follower has epoch 1 up to offset 3, but epoch 1 ended at 2 here.
        let (read, commands) = p.read_for_follower(fetch(3, Some(1))).expect("read");
        assert_eq!(read.diverging_epoch, Some((LeaderEpoch(1), Offset(2))));
        assert!(read.plan.is_empty(), "no records for a diverged log");
        assert!(commands.is_empty());
        assert_eq!(p.high_watermark(), Offset(0), "its offset 3 earned nothing");
        // An epoch this leader never had (2): the largest below it is 1, which ended at 2.
        let (read, _) = p.read_for_follower(fetch(2, Some(2))).expect("read");
        assert_eq!(read.diverging_epoch, Some((LeaderEpoch(1), Offset(2))));
        // Logs that agree: records served, progress counted.
        let (read, _) = p.read_for_follower(fetch(2, Some(1))).expect("read");
        assert_eq!(read.diverging_epoch, None);
        assert!(!read.plan.is_empty());
        let (read, _) = p.read_for_follower(fetch(3, Some(3))).expect("read");
        assert_eq!(read.diverging_epoch, None);
        assert_eq!(p.high_watermark(), Offset(3), "{:?}", read.high_watermark);
    }

    #[tokio::test]
    async fn losing_leadership_fails_waiters_and_refuses_appends_with_the_new_leader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, receipt) = leader_with_one_batch(dir.path());
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_acks_all(receipt.last_offset).await })
        };
        let commands = p
            .apply(state(OTHER, 4, &[LOCAL, OTHER], &[OTHER]))
            .expect("apply");
        assert_eq!(
            commands,
            vec![Command::BecomeFollower {
                leader: OTHER,
                leader_epoch: LeaderEpoch(4)
            }]
        );
        let result = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released")
            .expect("join");
        assert!(
            matches!(
                result,
                Err(ReplicaError::NotLeader {
                    leader: Some(OTHER),
                    ..
                })
            ),
            "{result:?}"
        );
        assert!(matches!(
            p.append(&mut batch(b"b", 1_000), false, 2_000),
            Err(ReplicaError::NotLeader {
                leader: Some(OTHER),
                leader_epoch: LeaderEpoch(4),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn acks_all_needs_min_insync_replicas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            min_insync_replicas: 2,
            ..LogConfig::default()
        };
        let p = open_as(
            dir.path(),
            config,
            state(LOCAL, 1, &[LOCAL, OTHER], &[LOCAL]),
        );
        assert!(matches!(
            p.append(&mut batch(b"a", 1_000), true, 1_000),
            Err(ReplicaError::NotEnoughReplicas {
                isr: 1,
                required: 2,
                ..
            })
        ));
        assert_eq!(
            p.with_log(|l| Ok(l.log_end_offset())).expect("log"),
            Offset(0),
            "nothing written"
        );
        p.append(&mut batch(b"a", 1_000), false, 1_000)
            .expect("acks=1 is not affected");
    }

    /// A single-replica leader in `dir` holding three acknowledged batches, and those batches
    /// as a fetch returns them.
    async fn leader_with_three_batches(dir: &Path) -> (Arc<Partition>, bytes::Bytes) {
        let leader = open(dir, LogConfig::default());
        for v in [b"a", b"b", b"c"] {
            leader
                .append(&mut batch(v, 1_000), true, 1_000)
                .expect("append");
        }
        leader.wait_acks_all(Offset(2)).await.expect("durable");
        let bytes = everything(&leader);
        (leader, bytes)
    }

    #[tokio::test]
    async fn a_follower_stores_the_leaders_batches_and_takes_in_its_high_watermark() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let (_leader, bytes) = leader_with_three_batches(leader_dir.path()).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let f = open_as(
            dir.path(),
            LogConfig::default(),
            state(OTHER, 0, &[OTHER, LOCAL], &[OTHER, LOCAL]),
        );
        assert!(matches!(
            f.append(&mut batch(b"x", 1_000), false, 1_000),
            Err(ReplicaError::NotLeader { .. })
        ));
        f.append_from_leader(&bytes, Offset(2), 1_000)
            .expect("follower append");
        let position = f.follower_position().expect("position");
        assert_eq!(position.log_end, Offset(3));
        assert_eq!(position.last_epoch, Some(LeaderEpoch(0)));
        assert_eq!(
            f.high_watermark(),
            Offset(2),
            "the leader's, capped by the log end"
        );
        assert!(
            f.with_log(|l| Ok(l.flushed_offset())).expect("log") >= Offset(3),
            "fsynced before the next fetch"
        );
        // Truncation to the leader's end offset.
        f.truncate_to(Offset(2)).expect("truncate");
        assert_eq!(f.follower_position().expect("position").log_end, Offset(2));

        // The high watermark is checkpointed at close and comes back at open.
        f.close().expect("close");
        drop(f);
        let reopened = open_as(
            dir.path(),
            LogConfig::default(),
            state(OTHER, 0, &[OTHER, LOCAL], &[OTHER, LOCAL]),
        );
        assert_eq!(reopened.high_watermark(), Offset(2));
    }

    #[tokio::test]
    async fn a_damaged_batch_is_refused_reported_once_and_cut_only_out_of_the_isr() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let (leader, bytes) = leader_with_three_batches(leader_dir.path()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let in_isr = state(OTHER, 0, &[OTHER, LOCAL], &[OTHER, LOCAL]);
        let f = open_as(dir.path(), LogConfig::default(), in_isr.clone());
        f.append_from_leader(&bytes, Offset(3), 1_000)
            .expect("follower append");
        // A bit flipped at rest in the last batch's records (its CRC covers them).
        let segment = dir.path().join(format!("{:020}.log", 0));
        let mut stored = std::fs::read(&segment).expect("segment");
        *stored.last_mut().expect("bytes") ^= 0x40;
        std::fs::write(&segment, stored).expect("write");

        // A read stops before the damaged batch; one starting at it is refused.
        let before = f.read(Offset(0), 1 << 20, true).expect("plan");
        assert_eq!(
            before.plan.load().expect("the batches before it").len(),
            bytes.len() - split_last(&bytes)
        );
        let read = f.read(Offset(2), 1 << 20, true).expect("plan");
        let error = read.plan.load().map_err(ReplicaError::Log).unwrap_err();
        assert!(matches!(error, ReplicaError::Log(LogError::Corrupt { .. })));
        let not_damage = ReplicaError::Closed(TopicPartition::new("t", 0));
        assert!(
            !f.read_failed(Offset(2), &not_damage),
            "only corruption is damage"
        );
        assert_eq!(f.damaged_from(), None);
        assert!(f.read_failed(Offset(2), &error), "the first is reported");
        assert!(!f.read_failed(Offset(2), &error), "once");
        assert_eq!(f.damaged_from(), Some(Offset(2)));

        // In the ISR it keeps its log: it could be elected, and must hold every committed
        // record it can. Nor does it fetch: its fetch offset would claim the damaged batch.
        assert_eq!(f.repair_offset(), None);
        assert!(matches!(
            f.follower_position(),
            Err(ReplicaError::Damaged { .. })
        ));
        // Out of the ISR it cuts the damaged batch away, and the cut clears the damage.
        let mut out = state(OTHER, 0, &[OTHER, LOCAL], &[OTHER]);
        out.partition_epoch = 1;
        f.apply(out).expect("apply");
        assert_eq!(f.repair_offset(), Some(Offset(2)));
        f.truncate_to(Offset(2)).expect("truncate");
        assert_eq!(f.repair_offset(), None, "cut");
        assert_eq!(
            f.damaged_from(),
            Some(Offset(2)),
            "until it holds the committed records again"
        );
        assert_eq!(f.follower_position().expect("position").log_end, Offset(2));
        // Fetched again from the leader, the batch reads clean, and the damage is over.
        let read = leader.read(Offset(2), 1 << 20, true).expect("plan");
        f.append_from_leader(&read.plan.load().expect("leader's copy"), Offset(3), 1_000)
            .expect("refetch");
        assert_eq!(f.damaged_from(), None);
        let again = f.read(Offset(0), 1 << 20, true).expect("plan");
        assert_eq!(again.plan.load().expect("clean"), bytes);

        // A leader never cuts its own log: it waits for the controller to move leadership.
        assert!(leader.read_failed(Offset(1), &error));
        assert_eq!(leader.repair_offset(), None);
    }

    #[tokio::test]
    async fn a_replica_whose_recovery_cut_its_tail_serves_as_leader_only_alone_in_the_isr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leading = state(LOCAL, 0, &[LOCAL, OTHER], &[LOCAL, OTHER]);
        let p = open_as(dir.path(), LogConfig::default(), leading.clone());
        for v in [b"a", b"b"] {
            p.append(&mut batch(v, 1_000), false, 1_000)
                .expect("append");
        }
        p.wait_durable(Offset(1)).await.expect("durable");
        p.close().expect("close");
        drop(p);
        assert_eq!(
            open_as(dir.path(), LogConfig::default(), leading.clone()).damaged_from(),
            None,
            "a clean reopen cuts nothing"
        );
        // A torn write after the last batch: recovery cuts it.
        let segment = dir.path().join(format!("{:020}.log", 0));
        let mut stored = std::fs::read(&segment).expect("segment");
        stored.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0]);
        std::fs::write(&segment, stored).expect("write");
        let p = open_as(dir.path(), LogConfig::default(), leading.clone());
        assert_eq!(p.damaged_from(), Some(Offset(2)));
        assert!(p.damage_movable(), "the other member is eligible");
        let damaged = |r: Result<(), ReplicaError>| matches!(r, Err(ReplicaError::Damaged { .. }));
        assert!(damaged(
            p.append(&mut batch(b"x", 1_000), false, 1_000).map(|_| ())
        ));
        assert!(damaged(p.check_consumer_read(None)));
        assert!(
            damaged(p.check_consumer(None)),
            "nor does it answer OffsetForLeaderEpoch, by which followers truncate"
        );
        let fetch = FollowerFetch {
            replica: OTHER,
            current_leader_epoch: None,
            fetch_offset: Offset(2),
            last_fetched_epoch: None,
            max_bytes: 1 << 20,
        };
        assert!(damaged(p.read_for_follower(fetch).map(|_| ())));

        // A fenced member still holds what it fsynced: leadership waits for it.
        p.set_ineligible([OTHER].into()).expect("ineligible");
        assert!(!p.damage_movable(), "the controller would refuse now");
        assert!(damaged(
            p.append(&mut batch(b"x", 1_000), false, 1_000).map(|_| ())
        ));
        p.set_ineligible(BTreeSet::new()).expect("eligible");
        // Alone in the ISR it serves: what was committed since is fsynced here.
        let mut alone = state(LOCAL, 0, &[LOCAL, OTHER], &[LOCAL]);
        alone.partition_epoch = 1;
        p.apply(alone).expect("apply");
        assert!(!p.damage_movable());
        p.append(&mut batch(b"x", 1_000), false, 1_000)
            .expect("the only member takes writes");
        p.close().expect("close");
        drop(p);

        // The damage outlives a restart whose recovery cuts nothing.
        let mut again = leading.clone();
        again.leader_epoch = LeaderEpoch(1);
        let p = open_as(dir.path(), LogConfig::default(), again);
        assert_eq!(p.damaged_from(), Some(Offset(2)));
        assert!(damaged(
            p.append(&mut batch(b"y", 1_000), false, 1_000).map(|_| ())
        ));
        // Out of the ISR, with nothing left to cut and every record it knew committed, it is
        // over, for good.
        let mut out = state(OTHER, 2, &[LOCAL, OTHER], &[OTHER]);
        out.partition_epoch = 3;
        p.apply(out.clone()).expect("apply");
        assert_eq!(p.repair_offset(), None);
        assert_eq!(p.damaged_from(), None);
        p.close().expect("close");
        drop(p);
        assert_eq!(
            open_as(dir.path(), LogConfig::default(), out).damaged_from(),
            None
        );
    }

    /// The length of the last batch in `bytes` (whole v2 batches).
    fn split_last(bytes: &[u8]) -> usize {
        let mut pos = 0;
        let mut last = 0;
        while pos + 12 <= bytes.len() {
            let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
            last = 12 + len;
            pos += last;
        }
        last
    }

    /// Every record batch of `p` up to its high watermark, as a fetch returns them.
    fn everything(p: &Partition) -> bytes::Bytes {
        p.read(Offset(0), 1 << 20, true)
            .expect("read")
            .plan
            .load()
            .expect("load")
    }

    /// Files in `dir` whose name ends with `suffix`.
    fn named(dir: &Path, suffix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_follower_fetch_fsyncs_its_records_and_writes_no_checkpoint() {
        tracing::info!("--- the leader writes in epochs 0 and 2");
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let leader = open(leader_dir.path(), LogConfig::default());
        for v in [b"a", b"b"] {
            leader
                .append(&mut batch(v, 1_000), true, 1_000)
                .expect("append");
        }
        leader
            .apply(state(LOCAL, 2, &[LOCAL], &[LOCAL]))
            .expect("apply");
        leader
            .append(&mut batch(b"c", 1_000), true, 1_000)
            .expect("append");
        leader.wait_acks_all(Offset(2)).await.expect("durable");
        let bytes = everything(&leader);

        tracing::info!(
            "--- one fetch round on the follower: records fsynced, no checkpoint written"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let f = open_as(
            dir.path(),
            LogConfig::default(),
            state(OTHER, 2, &[OTHER, LOCAL], &[OTHER, LOCAL]),
        );
        f.append_from_leader(&bytes, Offset(3), 1_000)
            .expect("follower append");
        assert_eq!(
            f.with_log(|l| Ok(l.flushed_offset())).expect("log"),
            Offset(3)
        );
        assert!(matches!(*f.flushed.borrow(), Ok(Offset(3))), "published");
        assert_eq!(f.high_watermark(), Offset(3));
        for suffix in ["checkpoint", ".snapshot"] {
            assert_eq!(named(dir.path(), suffix), Vec::<String>::new(), "{suffix}");
        }

        tracing::info!("--- crash (no close, no flush): the log reopens with its data and epochs");
        drop(f);
        let log = PartitionLog::open(
            Arc::new(spate_types::OsDisk),
            dir.path(),
            LogConfig::default(),
            0,
        )
        .expect("reopen");
        assert_eq!(log.log_end_offset(), Offset(3));
        assert_eq!(
            log.leader_epochs(),
            &[(LeaderEpoch(0), Offset(0)), (LeaderEpoch(2), Offset(2))]
        );
        let plan = log
            .plan_read(Offset(0), 1 << 20, Offset(3), true)
            .expect("plan");
        assert_eq!(plan.load().expect("load"), bytes);
    }

    #[tokio::test]
    async fn a_follower_whose_fsync_failed_stops_fetching() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = open_as(
            dir.path(),
            LogConfig::default(),
            state(OTHER, 0, &[OTHER, LOCAL], &[OTHER, LOCAL]),
        );
        assert!(f.follower_position().is_ok());
        tracing::info!(
            "--- an fsync failed: the log end may not be durable, so it is not a fetch offset"
        );
        let _ = f.flushed.send_replace(Err(FlushFailure("EIO".to_owned())));
        assert!(matches!(
            f.follower_position(),
            Err(ReplicaError::Storage { .. })
        ));
    }

    async fn join_in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::with_capacity(futures.len());
        for f in futures {
            out.push(f.await);
        }
        out
    }
}
