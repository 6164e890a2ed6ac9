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

mod leader;
mod types;

pub use types::{
    AckStatus, AppendRefusal, Command, Event, FetchRefusal, FollowerState, Ignored, LeaderAndIsr,
    Outcome, PendingIsrChange, ReplicaSettings, Role, Step,
};

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
