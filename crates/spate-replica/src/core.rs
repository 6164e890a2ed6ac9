//! [`ReplicaCore`]: the replication protocol of one partition on one node, as a pure state
//! machine (no I/O, no clock, no task): `step(now_ms, event) -> Step { outcome, commands }`.
//! The partition shell feeds it what happened (metadata from the controller, appends, fsyncs,
//! follower fetches, fetch responses, ticks) and carries out the [`Command`]s it returns; the
//! shell asks it, through typed queries, whether to accept an append, answer an `acks=all`
//! producer or serve a fetch.
//!
//! The rules, Kafka's with Spate's durability:
//! - **Leadership** comes only from the controller ([`Event::LeaderAndIsr`]); a state is applied
//!   only if newer (leader epoch greater, or equal with a greater partition epoch).
//! - **High watermark (leader)** = the minimum, over the *maximal* ISR (KIP-497: the committed
//!   ISR plus any member a pending change adds or has not yet removed), of each member's durable
//!   offset: the leader's own fsynced offset (its log end when `fsync_required` is off), and for
//!   a follower the offset of its last fetch, since a follower fsyncs what it appended before it
//!   fetches again. A member not heard from in this leader epoch holds the high watermark back.
//! - **High watermark (follower)** = `min(leader's high watermark, local log end)`.
//! - **ISR**: the leader proposes (one change at a time) to drop members that have not caught
//!   up for `replica_lag_time_max_ms` (Kafka's last-caught-up rule) and to add replicas that
//!   reached the high watermark and the leader's epoch start offset. The controller commits.
//!
//! Invariants (checked by the property test in `core_tests`):
//! - the high watermark never decreases, and never exceeds the local log end (except after a
//!   truncation below it, which is a caller bug reported as
//!   [`Outcome::TruncatedBelowHighWatermark`]);
//! - a proposed ISR is never empty and always holds the leader; at most one proposal is pending.

use spate_types::{LeaderEpoch, NodeId, Offset};
use std::collections::{BTreeMap, BTreeSet};

/// The replica's configuration. `local` never changes over a core's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSettings {
    pub local: NodeId,
    /// `replica.lag.time.max.ms`: an ISR member not caught up for longer is proposed out.
    pub replica_lag_time_max_ms: i64,
    /// `min.insync.replicas`. Not capped by the replica count: a topic asking for more
    /// in-sync copies than it has replicas refuses `acks=all` (NOT_ENOUGH_REPLICAS).
    pub min_insync_replicas: usize,
    /// `acks.all.fsync`: the leader's own durable offset is its fsynced offset (default) or,
    /// in the relaxed mode, its log end.
    pub fsync_required: bool,
}

/// A partition's replication state as the controller committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAndIsr {
    pub leader: Option<NodeId>,
    pub leader_epoch: LeaderEpoch,
    /// Bumped by every leader or ISR change; an ISR proposal names the one it builds on.
    pub partition_epoch: i32,
    pub replicas: Vec<NodeId>,
    pub isr: Vec<NodeId>,
}

impl LeaderAndIsr {
    /// The state before the controller said anything: no leader, epochs below any real one.
    pub fn unknown() -> LeaderAndIsr {
        LeaderAndIsr {
            leader: None,
            leader_epoch: LeaderEpoch(-1),
            partition_epoch: -1,
            replicas: Vec::new(),
            isr: Vec::new(),
        }
    }
}

/// What happened, as the shell reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// From the controller's metadata image. Applied only if newer: leader epoch greater, or
    /// the same leader epoch with a greater partition epoch.
    LeaderAndIsr(LeaderAndIsr),
    /// The local log end offset grew (a leader append or a follower append).
    LogEndChanged { log_end: Offset },
    /// A local fsync covers everything below `flushed`.
    Flushed { flushed: Offset },
    /// Leader side: follower `replica` fetched at `fetch_offset`, i.e. everything below it is
    /// durable on that replica (followers fsync before fetching again). Report only fetches
    /// the leader answered with data or an empty set: not ones refused by
    /// [`ReplicaCore::check_fetch`], out of range, or answered with a diverging epoch.
    FollowerFetch {
        replica: NodeId,
        fetch_offset: Offset,
    },
    /// Follower side: the leader's high watermark from a fetch response (after the fetcher
    /// truncated to the leader, so the local log below the log end matches the leader's).
    LeaderHighWatermark { high_watermark: Offset },
    /// The local log was truncated to `log_end` (a follower after OffsetForLeaderEpoch).
    Truncated { log_end: Offset },
    /// The controller did not apply our ISR proposal: it refused it, or the proposal was never
    /// sent. Never for a failure whose outcome is unknown (a timeout, a lost answer, a stopped
    /// controller): that proposal may have been committed, so a joiner must keep counting in
    /// the maximal ISR until the metadata says (seed 20944). A later tick may propose again.
    IsrChangeRefused,
    /// Time passed: the leader checks follower lag.
    Tick,
    /// `min.insync.replicas`, `replica.lag.time.max.ms` or `acks.all.fsync` changed.
    SettingsChanged(ReplicaSettings),
    /// The brokers that may not join the ISR now (fenced, shutting down, not registered), from
    /// the controller's image. A leader never proposes them (KIP-841): a follower that was in
    /// sync when its broker died looks caught up for a whole lag window, and the controller
    /// refuses it, so the leader would otherwise propose it again at every tick.
    IneligibleReplicas(BTreeSet<NodeId>),
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Accept appends in `leader_epoch` (stamping it on batches); the high watermark may not
    /// be settled yet (see [`ReplicaCore::high_watermark_settled`]).
    BecomeLeader {
        leader_epoch: LeaderEpoch,
        epoch_start_offset: Offset,
    },
    /// Refuse appends, fail `acks=all` waiters with NotLeader, (re)start the fetcher against
    /// `leader`; the fetcher truncates (OffsetForLeaderEpoch) before it appends.
    BecomeFollower {
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    },
    /// No leader, or this node is not a replica: refuse everything, stop the fetcher.
    Offline { leader_epoch: LeaderEpoch },
    /// Publish the new high watermark (wakes long polls and `acks=all` waiters); checkpoint it
    /// lazily.
    HighWatermark(Offset),
    /// Ask the controller (AlterPartition) to set the ISR, built on `partition_epoch`. Answer
    /// with [`Event::LeaderAndIsr`] once committed or [`Event::IsrChangeRefused`].
    ProposeIsr {
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    },
}

/// The result of one [`ReplicaCore::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the shell must carry out the commands"]
pub struct Step {
    pub outcome: Outcome,
    pub commands: Vec<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Nothing changed, and no command was issued.
    Ignored(Ignored),
    /// The log was truncated below the high watermark, which never moves back: a caller bug
    /// (or data lost in the relaxed fsync mode). The log end was updated; the high watermark
    /// was not.
    TruncatedBelowHighWatermark {
        high_watermark: Offset,
        log_end: Offset,
    },
}

/// Why an event changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Older than the applied state, whose epochs these are.
    StaleLeaderAndIsr {
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
    },
    /// The applied state again.
    DuplicateLeaderAndIsr,
    /// Same epochs as the applied state, other content: the controller broke its own rule.
    ConflictingLeaderAndIsr,
    /// A leader-side event on a replica that is not the leader.
    NotLeader,
    /// A follower-side event on a replica that is not a follower.
    NotFollower,
    /// A fetch from a node that is not one of the other replicas.
    UnknownReplica(NodeId),
    /// A follower fetched past the leader's log end (the shell must refuse such fetches).
    FetchOffsetBeyondLogEnd {
        fetch_offset: Offset,
        log_end: Offset,
    },
    /// `LogEndChanged` reported a lower log end than known: truncation is `Truncated`.
    LogEndMovedBackwards { log_end: Offset, reported: Offset },
    /// `IsrChangeRefused` with no proposal pending.
    NoPendingIsrChange,
    /// `SettingsChanged` for another node id.
    SettingsForAnotherNode,
    /// `IneligibleReplicas` with the set already known.
    IneligibleUnchanged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower {
        leader: NodeId,
    },
    /// No leader, not a replica, or no metadata yet.
    Offline,
}

/// Why an append is refused before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefusal {
    #[error("not the leader (leader {leader:?}, epoch {leader_epoch})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
    },
    /// `acks=all` with fewer in-sync replicas than required (Kafka: NOT_ENOUGH_REPLICAS).
    #[error("{isr} in-sync replicas, {required} required")]
    NotEnoughReplicas { isr: usize, required: usize },
}

/// Where an `acks=all` append stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// The high watermark has not passed it yet.
    Pending,
    /// Durable on every member of the ISR, which has at least the required size.
    Done,
    /// Durable on the ISR, but the ISR shrank below the requirement after the append
    /// (Kafka: NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    NotEnoughReplicasAfterAppend { isr: usize, required: usize },
    /// Leadership moved: the outcome is unknown to this node.
    NotLeader {
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
    },
}

/// Why a fetch is refused (Kafka's checks, in Kafka's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchRefusal {
    /// The request's leader epoch is older than ours (FENCED_LEADER_EPOCH).
    #[error("leader epoch is fenced; current is {current}")]
    FencedLeaderEpoch { current: LeaderEpoch },
    /// The request's leader epoch is newer than ours (UNKNOWN_LEADER_EPOCH).
    #[error("leader epoch is newer than the current {current}")]
    UnknownLeaderEpoch { current: LeaderEpoch },
    /// NOT_LEADER_OR_FOLLOWER, with the hint.
    #[error("not the leader (leader {leader:?}, epoch {leader_epoch})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_epoch: LeaderEpoch,
    },
    /// A replica fetch from a node that is not a replica of the partition.
    #[error("node {replica} is not a replica")]
    NotReplica { replica: NodeId },
    /// A consumer's read at a new leader whose high watermark has not reached its epoch start
    /// yet: it may be below what the previous leader published (KIP-207's
    /// OFFSET_NOT_AVAILABLE; clients retry).
    #[error(
        "the new leader's high watermark {high_watermark} is below its epoch start {epoch_start}"
    )]
    HighWatermarkNotSettled {
        high_watermark: Offset,
        epoch_start: Offset,
    },
}

/// What the leader knows of one follower in the current leader epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerState {
    /// Everything below is durable on the follower; `None` until it fetches in this epoch.
    pub fetch_offset: Option<Offset>,
    pub last_fetch_ms: Option<i64>,
    /// The leader's log end when the follower last fetched.
    pub last_fetch_leader_log_end: Option<Offset>,
    /// The last time the follower was known to have everything the leader had.
    pub last_caught_up_ms: i64,
}

impl FollowerState {
    fn new(now_ms: i64) -> FollowerState {
        FollowerState {
            fetch_offset: None,
            last_fetch_ms: None,
            last_fetch_leader_log_end: None,
            // A grace period: a new leader gives every follower a full lag window.
            last_caught_up_ms: now_ms,
        }
    }
}

/// An ISR change proposed to the controller and not yet answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingIsrChange {
    pub isr: Vec<NodeId>,
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the proposal builds on.
    pub partition_epoch: i32,
    pub proposed_at_ms: i64,
}

/// One partition's replication state on this node. See the module docs.
#[derive(Clone, Debug)]
pub struct ReplicaCore {
    settings: ReplicaSettings,
    state: LeaderAndIsr,
    role: Role,
    log_end: Offset,
    flushed: Offset,
    high_watermark: Offset,
    /// Leader only: the log end when it became leader.
    epoch_start_offset: Option<Offset>,
    /// Leader only: every other replica (and any ISR member outside the replicas).
    followers: BTreeMap<NodeId, FollowerState>,
    /// Leader only.
    pending: Option<PendingIsrChange>,
    /// Follower only: the leader's high watermark from its latest fetch response.
    leader_high_watermark: Option<Offset>,
    /// Replicas whose broker may not join the ISR now: fenced, shutting down or not registered
    /// (KIP-841), as the controller would refuse them.
    ineligible: BTreeSet<NodeId>,
}

impl ReplicaCore {
    /// A replica with no metadata yet ([`Role::Offline`]). The high watermark starts at the
    /// checkpointed one, clamped to the log end.
    pub fn new(
        settings: ReplicaSettings,
        log_end: Offset,
        flushed: Offset,
        checkpointed_high_watermark: Offset,
    ) -> ReplicaCore {
        ReplicaCore {
            settings,
            state: LeaderAndIsr::unknown(),
            role: Role::Offline,
            log_end,
            flushed: flushed.min(log_end),
            high_watermark: checkpointed_high_watermark.min(log_end),
            epoch_start_offset: None,
            followers: BTreeMap::new(),
            pending: None,
            leader_high_watermark: None,
            ineligible: BTreeSet::new(),
        }
    }

    /// Applies one event and returns what it changed and what the shell must do.
    ///
    /// # Panics
    /// Only on a bug in the core itself (the high watermark moving back).
    pub fn step(&mut self, now_ms: i64, event: Event) -> Step {
        let hw_before = self.high_watermark;
        let mut commands = Vec::new();
        let outcome = match event {
            Event::LeaderAndIsr(state) => self.on_leader_and_isr(now_ms, state, &mut commands),
            Event::LogEndChanged { log_end } => {
                if log_end < self.log_end {
                    Outcome::Ignored(Ignored::LogEndMovedBackwards {
                        log_end: self.log_end,
                        reported: log_end,
                    })
                } else {
                    self.log_end = log_end;
                    self.advance_high_watermark(&mut commands);
                    Outcome::Applied
                }
            }
            Event::Flushed { flushed } => {
                self.flushed = self.flushed.max(flushed.min(self.log_end));
                self.advance_high_watermark(&mut commands);
                Outcome::Applied
            }
            Event::FollowerFetch {
                replica,
                fetch_offset,
            } => self.on_follower_fetch(now_ms, replica, fetch_offset, &mut commands),
            Event::LeaderHighWatermark { high_watermark } => {
                if !matches!(self.role, Role::Follower { .. }) {
                    Outcome::Ignored(Ignored::NotFollower)
                } else {
                    let known = self.leader_high_watermark.unwrap_or(high_watermark);
                    self.leader_high_watermark = Some(known.max(high_watermark));
                    self.advance_high_watermark(&mut commands);
                    Outcome::Applied
                }
            }
            Event::Truncated { log_end } => {
                self.log_end = log_end;
                self.flushed = self.flushed.min(log_end);
                self.advance_high_watermark(&mut commands);
                if log_end < self.high_watermark {
                    Outcome::TruncatedBelowHighWatermark {
                        high_watermark: self.high_watermark,
                        log_end,
                    }
                } else {
                    Outcome::Applied
                }
            }
            Event::IsrChangeRefused => {
                if self.pending.take().is_some() {
                    // A refused expansion no longer counts in the maximal ISR.
                    self.advance_high_watermark(&mut commands);
                    Outcome::Applied
                } else {
                    Outcome::Ignored(Ignored::NoPendingIsrChange)
                }
            }
            Event::Tick => {
                self.on_tick(now_ms, &mut commands);
                Outcome::Applied
            }
            Event::IneligibleReplicas(brokers) => {
                if brokers == self.ineligible {
                    Outcome::Ignored(Ignored::IneligibleUnchanged)
                } else {
                    self.ineligible = brokers;
                    Outcome::Applied
                }
            }
            Event::SettingsChanged(settings) => {
                if settings.local != self.settings.local {
                    Outcome::Ignored(Ignored::SettingsForAnotherNode)
                } else {
                    self.settings = settings;
                    self.advance_high_watermark(&mut commands);
                    Outcome::Applied
                }
            }
        };
        assert!(
            self.high_watermark >= hw_before,
            "high watermark regressed: {hw_before} -> {}",
            self.high_watermark
        );
        debug_assert!(self.pending.is_none() || self.role == Role::Leader);
        debug_assert!(
            !matches!(outcome, Outcome::Ignored(_)) || commands.is_empty(),
            "an ignored event issued commands: {commands:?}"
        );
        Step { outcome, commands }
    }

    fn on_leader_and_isr(
        &mut self,
        now_ms: i64,
        state: LeaderAndIsr,
        commands: &mut Vec<Command>,
    ) -> Outcome {
        let current = (self.state.leader_epoch, self.state.partition_epoch);
        match (state.leader_epoch, state.partition_epoch).cmp(&current) {
            std::cmp::Ordering::Less => {
                return Outcome::Ignored(Ignored::StaleLeaderAndIsr {
                    leader_epoch: current.0,
                    partition_epoch: current.1,
                })
            }
            std::cmp::Ordering::Equal if state == self.state => {
                return Outcome::Ignored(Ignored::DuplicateLeaderAndIsr)
            }
            std::cmp::Ordering::Equal => return Outcome::Ignored(Ignored::ConflictingLeaderAndIsr),
            std::cmp::Ordering::Greater => {}
        }
        let new_leader_epoch = state.leader_epoch > self.state.leader_epoch;
        let old_isr = std::mem::replace(&mut self.state, state).isr;
        // Committed or superseded: either way the controller has answered.
        self.pending = None;
        let role = self.role_in_state();
        let leader_epoch = self.state.leader_epoch;
        if new_leader_epoch || role != self.role {
            self.role = role;
            self.followers.clear();
            self.epoch_start_offset = None;
            self.leader_high_watermark = None;
            match role {
                Role::Leader => {
                    let epoch_start_offset = self.log_end;
                    self.epoch_start_offset = Some(epoch_start_offset);
                    self.sync_followers(now_ms);
                    commands.push(Command::BecomeLeader {
                        leader_epoch,
                        epoch_start_offset,
                    });
                }
                Role::Follower { leader } => commands.push(Command::BecomeFollower {
                    leader,
                    leader_epoch,
                }),
                Role::Offline => commands.push(Command::Offline { leader_epoch }),
            }
        } else if role == Role::Leader {
            // Same leadership; the ISR or the replicas changed. A member that left forgets
            // what it fetched: it may have left because its log lost records it had fetched
            // (damage at rest, see `damage.rs`), so only a fetch made after its removal may
            // bring it back.
            for gone in old_isr.iter().filter(|r| !self.state.isr.contains(r)) {
                if let Some(f) = self.followers.get_mut(gone) {
                    *f = FollowerState::new(now_ms);
                }
            }
            self.sync_followers(now_ms);
        }
        self.advance_high_watermark(commands);
        Outcome::Applied
    }

    /// The role the applied state gives this node.
    fn role_in_state(&self) -> Role {
        let local = self.settings.local;
        match self.state.leader {
            _ if !self.state.replicas.contains(&local) => Role::Offline,
            Some(leader) if leader == local => Role::Leader,
            Some(leader) => Role::Follower { leader },
            None => Role::Offline,
        }
    }

    /// Tracks exactly the other replicas and ISR members; a newcomer starts with a grace
    /// period.
    fn sync_followers(&mut self, now_ms: i64) {
        let local = self.settings.local;
        let wanted: Vec<NodeId> = self
            .state
            .replicas
            .iter()
            .chain(&self.state.isr)
            .copied()
            .filter(|r| *r != local)
            .collect();
        self.followers.retain(|r, _| wanted.contains(r));
        for r in wanted {
            self.followers
                .entry(r)
                .or_insert_with(|| FollowerState::new(now_ms));
        }
    }

    fn on_follower_fetch(
        &mut self,
        now_ms: i64,
        replica: NodeId,
        fetch_offset: Offset,
        commands: &mut Vec<Command>,
    ) -> Outcome {
        if self.role != Role::Leader {
            return Outcome::Ignored(Ignored::NotLeader);
        }
        if fetch_offset > self.log_end {
            return Outcome::Ignored(Ignored::FetchOffsetBeyondLogEnd {
                fetch_offset,
                log_end: self.log_end,
            });
        }
        let log_end = self.log_end;
        let Some(f) = self.followers.get_mut(&replica) else {
            return Outcome::Ignored(Ignored::UnknownReplica(replica));
        };
        // Kafka's rule: caught up now if it asked for the log end; caught up as of its
        // previous fetch if it now asks for at least what the log end was then.
        if fetch_offset >= log_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if let (Some(end), Some(at)) = (f.last_fetch_leader_log_end, f.last_fetch_ms) {
            if fetch_offset >= end {
                f.last_caught_up_ms = f.last_caught_up_ms.max(at);
            }
        }
        f.last_fetch_leader_log_end = Some(log_end);
        f.last_fetch_ms = Some(now_ms);
        f.fetch_offset = Some(fetch_offset);
        self.advance_high_watermark(commands);
        if self.pending.is_none()
            && !self.state.isr.contains(&replica)
            && self.may_join_isr(replica)
        {
            let mut isr = self.state.isr.clone();
            isr.push(replica);
            self.propose_isr(now_ms, isr, commands);
        }
        Outcome::Applied
    }

    /// Kafka's `isFollowerInSync`: the follower holds the high watermark and everything the
    /// leader wrote before its epoch, and its broker is eligible (KIP-841).
    fn may_join_isr(&self, replica: NodeId) -> bool {
        let fetch_offset = self.followers.get(&replica).and_then(|f| f.fetch_offset);
        match (fetch_offset, self.epoch_start_offset) {
            (Some(o), Some(start)) => {
                o >= self.high_watermark
                    && o >= start
                    && self.state.replicas.contains(&replica)
                    && !self.ineligible.contains(&replica)
            }
            _ => false,
        }
    }

    fn on_tick(&mut self, now_ms: i64, commands: &mut Vec<Command>) {
        if self.role != Role::Leader || self.pending.is_some() {
            return;
        }
        let local = self.settings.local;
        let lag_max = self.settings.replica_lag_time_max_ms;
        let lagging = |r: &NodeId| {
            *r != local
                && self
                    .followers
                    .get(r)
                    .is_some_and(|f| now_ms.saturating_sub(f.last_caught_up_ms) > lag_max)
        };
        if self.state.isr.iter().any(lagging) {
            let isr: Vec<NodeId> = self
                .state
                .isr
                .iter()
                .copied()
                .filter(|r| !lagging(r))
                .collect();
            if !isr.is_empty() {
                self.propose_isr(now_ms, isr, commands);
                return;
            }
        }
        // A follower that caught up while another change was pending, or whose proposal failed;
        // never one the rule above would take out again (its fetches may have stopped at the
        // high watermark: only a fetch brings such a follower in, as in Kafka).
        let joiner = self.state.replicas.iter().copied().find(|r| {
            *r != local && !self.state.isr.contains(r) && !lagging(r) && self.may_join_isr(*r)
        });
        if let Some(r) = joiner {
            let mut isr = self.state.isr.clone();
            isr.push(r);
            self.propose_isr(now_ms, isr, commands);
        }
    }

    fn propose_isr(&mut self, now_ms: i64, isr: Vec<NodeId>, commands: &mut Vec<Command>) {
        assert!(self.pending.is_none(), "an ISR change is already pending");
        assert!(
            !isr.is_empty()
                && (isr.contains(&self.settings.local)
                    || !self.state.isr.contains(&self.settings.local)),
            "proposed ISR {isr:?} is empty or drops the leader"
        );
        self.pending = Some(PendingIsrChange {
            isr: isr.clone(),
            leader_epoch: self.state.leader_epoch,
            partition_epoch: self.state.partition_epoch,
            proposed_at_ms: now_ms,
        });
        commands.push(Command::ProposeIsr {
            leader_epoch: self.state.leader_epoch,
            partition_epoch: self.state.partition_epoch,
            isr,
        });
        // An expansion grows the maximal ISR; the joiner already holds the high watermark.
        self.advance_high_watermark(commands);
    }

    /// Moves the high watermark up to what the role allows, publishing it if it grew.
    fn advance_high_watermark(&mut self, commands: &mut Vec<Command>) {
        let candidate = match self.role {
            Role::Leader => self.leader_high_watermark_candidate(),
            Role::Follower { .. } => self.leader_high_watermark.map(|hw| hw.min(self.log_end)),
            Role::Offline => None,
        };
        if let Some(hw) = candidate {
            if hw > self.high_watermark {
                self.high_watermark = hw;
                commands.push(Command::HighWatermark(hw));
            }
        }
    }

    /// The minimum durable offset over the maximal ISR (the leader always counts), or `None`
    /// while a member has not fetched in this epoch.
    fn leader_high_watermark_candidate(&self) -> Option<Offset> {
        let local = self.settings.local;
        let own = if self.settings.fsync_required {
            self.flushed
        } else {
            self.log_end
        };
        let mut hw = own.min(self.log_end);
        #[cfg(feature = "planted-bugs")]
        if crate::planted::high_watermark_ignores_followers() {
            return Some(hw);
        }
        for member in self.maximal_isr() {
            if member != local {
                hw = hw.min(self.followers.get(&member)?.fetch_offset?);
            }
        }
        Some(hw)
    }

    /// Whether an `acks=all` (or other) append may be written now.
    pub fn check_append(&self, acks_all: bool) -> Result<(), AppendRefusal> {
        if self.role != Role::Leader {
            return Err(AppendRefusal::NotLeader {
                leader: self.state.leader,
                leader_epoch: self.state.leader_epoch,
            });
        }
        let (isr, required) = (self.state.isr.len(), self.required_isr());
        if acks_all && isr < required {
            return Err(AppendRefusal::NotEnoughReplicas { isr, required });
        }
        Ok(())
    }

    /// Where an `acks=all` append whose last offset is `last_offset` stands (Kafka's
    /// `checkEnoughReplicasReachOffset`).
    pub fn ack_status(&self, last_offset: Offset) -> AckStatus {
        if self.role != Role::Leader {
            return AckStatus::NotLeader {
                leader: self.state.leader,
                leader_epoch: self.state.leader_epoch,
            };
        }
        if self.high_watermark <= last_offset {
            return AckStatus::Pending;
        }
        let (isr, required) = (self.maximal_isr().len(), self.required_isr());
        if isr >= required {
            AckStatus::Done
        } else {
            AckStatus::NotEnoughReplicasAfterAppend { isr, required }
        }
    }

    /// Whether to serve a fetch: `replica` for a follower's fetch, `None` for a consumer's;
    /// `current_leader_epoch` as the request carries it (`None` for Kafka's -1).
    pub fn check_fetch(
        &self,
        replica: Option<NodeId>,
        current_leader_epoch: Option<LeaderEpoch>,
    ) -> Result<(), FetchRefusal> {
        let current = self.state.leader_epoch;
        if let Some(epoch) = current_leader_epoch {
            if epoch < current {
                return Err(FetchRefusal::FencedLeaderEpoch { current });
            }
            if epoch > current {
                return Err(FetchRefusal::UnknownLeaderEpoch { current });
            }
        }
        if self.role != Role::Leader {
            return Err(FetchRefusal::NotLeader {
                leader: self.state.leader,
                leader_epoch: current,
            });
        }
        if let Some(r) = replica {
            if r == self.settings.local || !self.state.replicas.contains(&r) {
                return Err(FetchRefusal::NotReplica { replica: r });
            }
        }
        Ok(())
    }

    /// Whether to serve a consumer's read of records or offsets: [`ReplicaCore::check_fetch`]
    /// for a consumer, and the high watermark settled, so a consumer never sees it go back
    /// across a leader change (invariant 3).
    pub fn check_consumer_read(
        &self,
        current_leader_epoch: Option<LeaderEpoch>,
    ) -> Result<(), FetchRefusal> {
        self.check_fetch(None, current_leader_epoch)?;
        if !self.high_watermark_settled() {
            return Err(FetchRefusal::HighWatermarkNotSettled {
                high_watermark: self.high_watermark,
                epoch_start: self.epoch_start_offset.unwrap_or(self.high_watermark),
            });
        }
        Ok(())
    }

    /// `min.insync.replicas`, at least 1.
    pub fn required_isr(&self) -> usize {
        self.settings.min_insync_replicas.max(1)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.state.leader
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.state.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.state.partition_epoch
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.state.replicas
    }

    /// The committed ISR.
    pub fn isr(&self) -> &[NodeId] {
        &self.state.isr
    }

    /// The committed ISR plus any member a pending change would add (a pending removal still
    /// counts): what the high watermark is computed over.
    pub fn maximal_isr(&self) -> Vec<NodeId> {
        let mut isr = self.state.isr.clone();
        if let Some(p) = &self.pending {
            for r in &p.isr {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// The applied controller state.
    pub fn leader_and_isr(&self) -> &LeaderAndIsr {
        &self.state
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn flushed(&self) -> Offset {
        self.flushed
    }

    /// Leader only: the log end when this node became leader in the current epoch.
    pub fn epoch_start_offset(&self) -> Option<Offset> {
        self.epoch_start_offset
    }

    /// Leader only: whether the high watermark reached the epoch start offset. Until then it
    /// may be below what the previous leader published, and a consumer must not be shown it.
    pub fn high_watermark_settled(&self) -> bool {
        self.role == Role::Leader
            && self
                .epoch_start_offset
                .is_some_and(|start| self.high_watermark >= start)
    }

    pub fn pending_isr_change(&self) -> Option<&PendingIsrChange> {
        self.pending.as_ref()
    }

    /// Leader only: what it knows of each follower, by node id.
    pub fn followers(&self) -> &BTreeMap<NodeId, FollowerState> {
        &self.followers
    }

    /// The brokers that may not join the ISR or lead now (see [`Event::IneligibleReplicas`]).
    pub fn ineligible(&self) -> &BTreeSet<NodeId> {
        &self.ineligible
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }
}
