//! One consumer group's state: Kafka's states, members, generation, and deadlines.

use crate::core::ReplyId;
use bytes::Bytes;
use std::collections::BTreeMap;

/// Kafka's classic group states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members; offsets may still be stored.
    Empty,
    /// Members must rejoin; JoinGroup responses wait until all have or the rebalance timeout.
    PreparingRebalance,
    /// JoinGroup answered; waiting for the leader's SyncGroup with the assignment.
    CompletingRebalance,
    /// Assignment distributed; members heartbeat.
    Stable,
    /// Removed; every request is refused until it is recreated.
    Dead,
}

impl GroupState {
    /// The name Kafka uses in ListGroups and DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// A JoinGroup waiting for the rebalance to complete.
    pub awaiting_join: Option<(ReplyId, bool)>,
    /// A SyncGroup waiting for the leader's assignment.
    pub awaiting_sync: Option<ReplyId>,
    /// Sent SyncGroup in the current generation.
    pub synced: bool,
    /// The session expires at this time unless a heartbeat (or join/sync) arrives.
    pub session_deadline_ms: i64,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    pub fn keep_alive(&mut self, now_ms: i64) {
        self.session_deadline_ms = now_ms + i64::from(self.session_timeout_ms);
    }
}

/// How the current rebalance's join phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinPhase {
    /// `group.initial.rebalance.delay.ms` for a group that was empty: each new member extends
    /// the wait by the delay, up to the rebalance timeout (`remaining_ms`).
    InitialDelay { remaining_ms: i64 },
    /// Ends when every member has rejoined, or at the rebalance timeout.
    Rebalance,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, by the deadline for their rejoin.
    pub pending: BTreeMap<String, i64>,
    /// group.instance.id → member id.
    pub static_members: BTreeMap<String, String>,
    pub join_phase: JoinPhase,
    pub join_deadline_ms: Option<i64>,
    pub new_member_added: bool,
    /// Members that have not sent SyncGroup by then are removed.
    pub sync_deadline_ms: Option<i64>,
    /// When the group entered its current state (Empty: when offsets start to expire).
    pub state_since_ms: i64,
    /// The group commits its offsets inside transactions (a TxnOffsetCommit of it was applied
    /// at its transaction's COMMIT): an exactly-once group, whose consumers read with
    /// `isolation.level=read_committed`, so its lag counts up to the last stable offset, not
    /// the high watermark. Set live and by the replay of the offsets log alike (the same
    /// [`crate::core::GroupCoordinator::complete_txn`]), kept when a group record restores
    /// the group, and gone with the group (deleted, expired, unloaded).
    pub exactly_once: bool,
}

impl Group {
    pub fn new(id: String, now_ms: i64) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            static_members: BTreeMap::new(),
            join_phase: JoinPhase::Rebalance,
            join_deadline_ms: None,
            new_member_added: false,
            sync_deadline_ms: None,
            state_since_ms: now_ms,
            exactly_once: false,
        }
    }

    pub fn transition(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_since_ms = now_ms;
    }

    pub fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// The longest rebalance timeout among members: how long a join phase may last.
    pub fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    /// Protocols every member supports, in no particular order.
    fn candidates(&self) -> Vec<&str> {
        let mut iter = self.members.values();
        let Some(first) = iter.next() else {
            return Vec::new();
        };
        let mut names: Vec<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for m in iter {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    /// Whether a member with these protocols may join (Kafka: INCONSISTENT_GROUP_PROTOCOL).
    pub fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self
                .candidates()
                .iter()
                .any(|c| protocols.iter().any(|(p, _)| p == c))
    }

    /// Kafka's vote: each member votes for its most preferred protocol that all support.
    pub fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates();
        let mut votes: Vec<(&str, usize)> = candidates.iter().map(|c| (*c, 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m
                .protocols
                .iter()
                .find(|(p, _)| candidates.contains(&p.as_str()))
            {
                if let Some(v) = votes.iter_mut().find(|(c, _)| *c == name) {
                    v.1 += 1;
                }
            }
        }
        // Ties go to the protocol listed first by the first member.
        let best = votes.iter().map(|(_, n)| *n).max()?;
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(c, _)| c.to_owned())
    }

    /// Topics the members subscribe to, when the group uses the consumer protocol.
    pub fn subscribed_topics(&self) -> Option<std::collections::BTreeSet<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = std::collections::BTreeSet::new();
        for m in self.members.values() {
            let mut metadata = m.metadata_for(protocol);
            if metadata.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([metadata[0], metadata[1]]);
            bytes::Buf::advance(&mut metadata, 2);
            let version = version.clamp(0, 3);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut metadata, version) {
                topics.extend(sub.topics.into_iter().map(|t| t.to_string()));
            }
        }
        Some(topics)
    }
}
