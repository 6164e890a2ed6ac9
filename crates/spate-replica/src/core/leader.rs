//! The leader side: follower tracking, ISR proposals, the leader's high watermark, and the
//! checks of appends, `acks=all` answers and fetches.

use super::{
    AckStatus, AppendRefusal, Command, FetchRefusal, FollowerState, Ignored, Outcome,
    PendingIsrChange, ReplicaCore, Role,
};
use spate_types::{LeaderEpoch, NodeId, Offset};

impl ReplicaCore {
    /// Tracks exactly the other replicas and ISR members; a newcomer starts with a grace
    /// period.
    pub(super) fn sync_followers(&mut self, now_ms: i64) {
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

    pub(super) fn on_follower_fetch(
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

    pub(super) fn on_tick(&mut self, now_ms: i64, commands: &mut Vec<Command>) {
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

    /// The minimum durable offset over the maximal ISR (the leader always counts), or `None`
    /// while a member has not fetched in this epoch.
    pub(super) fn leader_high_watermark_candidate(&self) -> Option<Offset> {
        let local = self.settings.local;
        let own = if self.settings.fsync_required {
            self.flushed
        } else {
            self.log_end
        };
        let mut hw = own.min(self.log_end);
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
}
