//! The core's vocabulary: its settings, the controller's state, events, commands, outcomes,
//! refusals, and what the leader knows of its followers.

use spate_types::{LeaderEpoch, NodeId, Offset};
use std::collections::BTreeSet;

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
    /// [`ReplicaCore::check_fetch`](crate::core::ReplicaCore::check_fetch), out of range, or
    /// answered with a diverging epoch.
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
    /// be settled yet (see
    /// [`ReplicaCore::high_watermark_settled`](crate::core::ReplicaCore::high_watermark_settled)).
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

/// The result of one [`ReplicaCore::step`](crate::core::ReplicaCore::step).
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
    pub(super) fn new(now_ms: i64) -> FollowerState {
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
