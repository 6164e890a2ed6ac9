//! The group coordinator core: Kafka's classic group protocol as a state machine without I/O.
//!
//! Every call takes `now_ms`. Answers that can be given at once are return values; answers
//! that wait (JoinGroup until the rebalance completes, SyncGroup until the leader assigns) and
//! records to persist are queued as [`Action`]s, drained with [`GroupCoordinator::take_actions`].
//! Every [`ReplyId`] passed in is answered exactly once, eventually: a connection writes
//! responses in order, so one unanswered request would stall it.
//!
//! Offsets are applied to memory only through [`GroupCoordinator::apply_stored`], the same
//! path the start-up replay of the offsets log takes: a commit is stored first, then applied,
//! and OffsetFetch shows it once it is durable.

use crate::error::GroupError;
use crate::group::{Group, GroupState};
use crate::membership::{
    check_member, join_known, join_new, member_gone, prepare_rebalance, remove_member, sync,
    tick_group, Ctx,
};
use crate::records::OffsetsRecord;
pub use crate::requests::{
    Action, CommitRequest, CommittedOffset, GroupDescription, GroupListing, GroupOffset,
    GroupSettings, HeartbeatRequest, JoinRequest, JoinResponse, JoinedMember, LeaveRequest,
    LeaveResponse, MemberDescription, ReplyId, SyncRequest, SyncResponse,
};
use crate::txn_offsets::PendingTxnOffsets;
use bytes::Bytes;
use std::collections::BTreeMap;

mod offsets;

pub use offsets::Stored;

type Offsets = BTreeMap<(String, i32), CommittedOffset>;
/// Per committed partition, oldest first: (the last offset of a commit's batch, the commit
/// it replaced), while that batch may not be durable yet.
type Unstable = BTreeMap<(String, i32), Vec<(i64, Option<CommittedOffset>)>>;

pub struct GroupCoordinator {
    settings: GroupSettings,
    groups: BTreeMap<String, Group>,
    offsets: BTreeMap<String, Offsets>,
    /// What OffsetFetch shows while a group's newest commits are not durable.
    unstable: BTreeMap<String, Unstable>,
    /// Offsets committed inside transactions not yet ended.
    pending_txn: PendingTxnOffsets,
    /// The next [`CommittedOffset::position`].
    next_position: u64,
    /// Distinguishes member ids issued by this process from those of earlier runs.
    incarnation: String,
    next_member: u64,
    out: Vec<Action>,
}

impl GroupCoordinator {
    pub fn new(settings: GroupSettings, incarnation: String) -> GroupCoordinator {
        GroupCoordinator {
            settings,
            groups: BTreeMap::new(),
            offsets: BTreeMap::new(),
            unstable: BTreeMap::new(),
            pending_txn: PendingTxnOffsets::default(),
            next_position: 0,
            incarnation,
            next_member: 0,
            out: Vec::new(),
        }
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        self.next_member += 1;
        format!("{prefix}-{}-{}", self.incarnation, self.next_member)
    }

    /// Runs `f` on the group with a context; the group is put back afterwards.
    fn with_group<R>(
        &mut self,
        now: i64,
        id: &str,
        f: impl FnOnce(&mut Group, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let group = self.groups.get_mut(id)?;
        let mut ctx = Ctx {
            now,
            settings: &self.settings,
            out: &mut self.out,
        };
        Some(f(group, &mut ctx))
    }

    // ----- membership -----

    /// JoinGroup; the answer comes as [`Action::Join`] (at once or when the rebalance ends).
    pub fn join(&mut self, now: i64, reply: ReplyId, req: JoinRequest) {
        let refuse = |out: &mut Vec<Action>, e: GroupError, req: &JoinRequest| {
            out.push(Action::Join(
                reply,
                JoinResponse::error(e, req.member_id.clone()),
            ));
        };
        if req.group_id.is_empty() {
            return refuse(&mut self.out, GroupError::InvalidGroupId, &req);
        }
        if req.session_timeout_ms < self.settings.min_session_timeout_ms
            || req.session_timeout_ms > self.settings.max_session_timeout_ms
        {
            return refuse(&mut self.out, GroupError::InvalidSessionTimeout, &req);
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                return refuse(&mut self.out, GroupError::UnknownMemberId, &req);
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(req.group_id.clone(), now));
        }
        let new_id = if req.member_id.is_empty() {
            let prefix = req
                .instance_id
                .clone()
                .unwrap_or_else(|| req.client_id.clone());
            Some(self.new_member_id(&prefix))
        } else {
            None
        };
        let group_id = req.group_id.clone();
        self.with_group(now, &group_id, |g, ctx| {
            if g.state == GroupState::Dead {
                return refuse(ctx.out, GroupError::CoordinatorNotAvailable, &req);
            }
            if !g.supports(&req.protocol_type, &req.protocols) {
                return refuse(ctx.out, GroupError::InconsistentGroupProtocol, &req);
            }
            match new_id {
                Some(new_id) => join_new(g, ctx, reply, req, new_id),
                None => join_known(g, ctx, reply, req),
            }
        });
    }

    /// SyncGroup; the answer comes as [`Action::Sync`].
    pub fn sync(&mut self, now: i64, reply: ReplyId, req: SyncRequest) {
        let answered = self.with_group(now, &req.group_id.clone(), |g, ctx| {
            sync(g, ctx, reply, req)
        });
        if answered.is_none() {
            self.out.push(Action::Sync(
                reply,
                SyncResponse::error(GroupError::UnknownMemberId),
            ));
        }
    }

    pub fn heartbeat(&mut self, now: i64, req: &HeartbeatRequest) -> Result<(), GroupError> {
        let g = self
            .groups
            .get_mut(&req.group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        check_member(g, &req.member_id, req.instance_id.as_deref())?;
        if g.state == GroupState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        if req.generation_id != g.generation {
            return Err(GroupError::IllegalGeneration);
        }
        if let Some(m) = g.members.get_mut(&req.member_id) {
            m.keep_alive(now);
        }
        if g.state == GroupState::PreparingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    pub fn leave(&mut self, now: i64, req: &LeaveRequest) -> LeaveResponse {
        let result = self.with_group(now, &req.group_id, |g, ctx| {
            if g.state == GroupState::Dead {
                return Err(GroupError::CoordinatorNotAvailable);
            }
            let mut results = Vec::with_capacity(req.members.len());
            let mut removed = false;
            for (member_id, instance_id) in &req.members {
                let target = match instance_id {
                    Some(instance) => match g.static_members.get(instance) {
                        Some(id) if !member_id.is_empty() && id != member_id => {
                            Err(GroupError::FencedInstanceId)
                        }
                        Some(id) => Ok(id.clone()),
                        None => Err(GroupError::UnknownMemberId),
                    },
                    None if g.pending.remove(member_id).is_some() => {
                        removed = true;
                        Ok(String::new())
                    }
                    None if g.members.contains_key(member_id) => Ok(member_id.clone()),
                    None => Err(GroupError::UnknownMemberId),
                };
                let error = match target {
                    Ok(id) => {
                        if !id.is_empty() {
                            remove_member(g, ctx, &id);
                            removed = true;
                        }
                        None
                    }
                    Err(e) => Some(e),
                };
                results.push((member_id.clone(), instance_id.clone(), error));
            }
            if removed {
                tracing::debug!(group = %g.id, "members left");
                member_gone(g, ctx);
            }
            Ok(results)
        });
        match result {
            Some(Ok(members)) => LeaveResponse {
                error: None,
                members,
            },
            Some(Err(e)) => LeaveResponse {
                error: Some(e),
                members: Vec::new(),
            },
            None => LeaveResponse {
                error: Some(GroupError::UnknownMemberId),
                members: req
                    .members
                    .iter()
                    .map(|(m, i)| (m.clone(), i.clone(), Some(GroupError::UnknownMemberId)))
                    .collect(),
            },
        }
    }

    /// Session, join, sync and pending-member deadlines that have passed.
    pub fn tick(&mut self, now: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.with_group(now, &id, tick_group);
        }
    }

    /// One group's deadlines that have passed, run before a request for that group is
    /// handled: Kafka's timers fire at the deadline, so a request arriving after it must see
    /// their effect (a member past its session timeout is gone) even when the task's own
    /// timer has not fired yet. A no-op when nothing is due or the group is unknown.
    pub fn tick_group(&mut self, now: i64, id: &str) {
        self.with_group(now, id, tick_group);
    }

    /// The group's record (its new generation's assignment) could not be stored: as Kafka does
    /// (`resetAndPropagateAssignmentError`, then `maybePrepareRebalance`), the assignment is
    /// not kept and the group rebalances, so no member is handed an assignment that a
    /// coordinator taking over would not know of. Members learn it from their next request.
    pub fn assignment_not_stored(&mut self, now: i64, id: &str) {
        self.with_group(now, id, |g, ctx| {
            if matches!(
                g.state,
                GroupState::Stable | GroupState::CompletingRebalance
            ) {
                for m in g.members.values_mut() {
                    m.assignment = Bytes::new();
                }
                prepare_rebalance(g, ctx, "the group's assignment could not be stored");
            }
        });
    }

    /// The earliest time [`GroupCoordinator::tick`] has work, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        for g in self.groups.values() {
            g.pending.values().copied().for_each(&mut consider);
            g.join_deadline_ms.into_iter().for_each(&mut consider);
            g.sync_deadline_ms.into_iter().for_each(&mut consider);
            for m in g.members.values() {
                if m.awaiting_join.is_none() && m.awaiting_sync.is_none() {
                    consider(m.session_deadline_ms);
                }
            }
        }
        next
    }

    // ----- offsets -----

    pub fn list_groups(&self, states: &[String], types: &[String]) -> Vec<GroupListing> {
        self.groups
            .values()
            .filter(|g| g.state != GroupState::Dead)
            .filter(|g| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .filter(|g| {
                let t = g.protocol_type.as_deref().unwrap_or("");
                // KIP-848: "classic" names the group type, not the protocol type.
                types.is_empty()
                    || types.iter().any(|s| s.eq_ignore_ascii_case("classic"))
                    || types.iter().any(|s| s == t)
            })
            .map(|g| GroupListing {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect()
    }

    /// DescribeGroups: an unknown group is described as Dead, as Kafka does.
    pub fn describe_group(&self, id: &str) -> GroupDescription {
        let Some(g) = self.groups.get(id) else {
            return GroupDescription {
                group_id: id.to_owned(),
                state: GroupState::Dead,
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        GroupDescription {
            group_id: g.id.clone(),
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata_for(&protocol),
                    // Kafka shows assignments only once they are the group's current ones.
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    /// Forgets every group (and its committed offsets) that `unloaded` selects: this node no
    /// longer leads their `__consumer_offsets` partition. Waiting JoinGroup and SyncGroup
    /// requests are answered NOT_COORDINATOR (each exactly once); nothing is stored, since
    /// the partition's new leader holds the records. Returns how many groups went.
    pub fn unload_groups(&mut self, unloaded: impl Fn(&str) -> bool) -> usize {
        let gone: Vec<String> = self
            .groups
            .keys()
            .chain(self.offsets.keys())
            .filter(|g| unloaded(g))
            .cloned()
            .collect();
        self.pending_txn.unload(&unloaded);
        let mut count = 0;
        for id in gone {
            self.offsets.remove(&id);
            self.unstable.remove(&id);
            let Some(group) = self.groups.remove(&id) else {
                continue;
            };
            count += 1;
            for (member_id, member) in group.members {
                if let Some((reply, _)) = member.awaiting_join {
                    self.out.push(Action::Join(
                        reply,
                        JoinResponse::error(GroupError::NotCoordinator, member_id.clone()),
                    ));
                }
                if let Some(reply) = member.awaiting_sync {
                    self.out.push(Action::Sync(
                        reply,
                        SyncResponse::error(GroupError::NotCoordinator),
                    ));
                }
            }
        }
        count
    }

    /// DeleteGroups for one group: refused while it has members.
    pub fn delete_group(&mut self, id: &str) -> Result<(), GroupError> {
        if id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let Some(g) = self.groups.get(id) else {
            return Err(GroupError::GroupIdNotFound);
        };
        match g.state {
            GroupState::Dead => return Err(GroupError::GroupIdNotFound),
            GroupState::Empty => {}
            _ => return Err(GroupError::NonEmptyGroup),
        }
        self.groups.remove(id);
        self.unstable.remove(id);
        for ((topic, partition), _) in self.offsets.remove(id).unwrap_or_default() {
            self.out.push(Action::Store(OffsetsRecord::Offset {
                group: id.to_owned(),
                topic,
                partition,
                value: None,
            }));
        }
        self.out.push(Action::Store(OffsetsRecord::Group {
            group: id.to_owned(),
            value: None,
        }));
        Ok(())
    }

    /// OffsetDelete: refused per partition while members subscribe to its topic.
    pub fn delete_offsets(
        &mut self,
        id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Option<GroupError>>, GroupError> {
        let Some(g) = self.groups.get(id) else {
            return Err(GroupError::GroupIdNotFound);
        };
        if g.state == GroupState::Dead {
            return Err(GroupError::GroupIdNotFound);
        }
        let subscribed = if g.state == GroupState::Empty {
            Some(Default::default())
        } else {
            g.subscribed_topics()
        };
        let Some(subscribed) = subscribed else {
            return Err(GroupError::NonEmptyGroup);
        };
        let mut results = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            if subscribed.contains(topic) {
                results.push(Some(GroupError::GroupSubscribedToTopic));
                continue;
            }
            let removed = self
                .offsets
                .get_mut(id)
                .and_then(|o| o.remove(&(topic.clone(), *partition)));
            if removed.is_some() {
                self.out.push(Action::Store(OffsetsRecord::Offset {
                    group: id.to_owned(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: None,
                }));
            }
            results.push(None);
        }
        if self.offsets.get(id).is_some_and(|o| o.is_empty()) {
            self.offsets.remove(id);
        }
        Ok(results)
    }

    /// Offsets retention (KIP-211): an empty group's offsets expire
    /// `offsets.retention.minutes` after it became empty; a group that never had members
    /// (offsets stored by `assign()` consumers) expires each offset that long after its
    /// commit. An empty group left without offsets is removed.
    pub fn expire_offsets(&mut self, now: i64) -> usize {
        let retention = self.settings.offsets_retention_ms;
        let mut expired = 0;
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let Some(g) = self.groups.get(&id) else {
                continue;
            };
            if g.state != GroupState::Empty {
                continue;
            }
            let standalone = g.protocol_type.is_none();
            let empty_since = g.state_since_ms;
            if let Some(offsets) = self.offsets.get_mut(&id) {
                let stale: Vec<(String, i32)> = offsets
                    .iter()
                    .filter(|(_, c)| {
                        let base = if standalone {
                            c.commit_timestamp_ms
                        } else {
                            empty_since
                        };
                        base.saturating_add(retention) <= now
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for (topic, partition) in stale {
                    offsets.remove(&(topic.clone(), partition));
                    expired += 1;
                    self.out.push(Action::Store(OffsetsRecord::Offset {
                        group: id.clone(),
                        topic,
                        partition,
                        value: None,
                    }));
                }
                if offsets.is_empty() {
                    self.offsets.remove(&id);
                }
            }
            if !self.offsets.contains_key(&id) {
                self.groups.remove(&id);
                self.unstable.remove(&id);
                self.out.push(Action::Store(OffsetsRecord::Group {
                    group: id.clone(),
                    value: None,
                }));
            }
        }
        expired
    }

    /// Removes the committed offsets of topics that no longer exist.
    pub fn remove_topics(&mut self, exists: impl Fn(&str) -> bool) -> usize {
        let mut removed = 0;
        for (group, offsets) in self.offsets.iter_mut() {
            let gone: Vec<(String, i32)> = offsets
                .keys()
                .filter(|(t, _)| !exists(t))
                .cloned()
                .collect();
            for (topic, partition) in gone {
                offsets.remove(&(topic.clone(), partition));
                removed += 1;
                self.out.push(Action::Store(OffsetsRecord::Offset {
                    group: group.clone(),
                    topic,
                    partition,
                    value: None,
                }));
            }
        }
        self.offsets.retain(|_, o| !o.is_empty());
        removed
    }

    /// Members per group, for metrics.
    pub fn member_counts(&self) -> Vec<(String, usize, GroupState)> {
        self.groups
            .values()
            .map(|g| (g.id.clone(), g.members.len(), g.state))
            .collect()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
