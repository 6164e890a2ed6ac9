//! The group coordinator core: Kafka's classic group protocol as a state machine without I/O.
//!
//! Every call takes `now_ms`. Answers that can be given at once are return values; answers
//! that wait (JoinGroup until the rebalance completes, SyncGroup until the leader assigns) and
//! records to persist are queued as [`Action`]s, drained with [`GroupCoordinator::take_actions`].
//! Every [`ReplyId`] passed in is answered exactly once, eventually: a connection writes
//! responses in order, so one unanswered request would stall it.
//!
//! Offsets are applied to memory only through [`GroupCoordinator::apply_record`], the same
//! path the start-up replay of the offsets log takes: a commit is stored first, then applied.

use crate::error::GroupError;
use crate::group::{Group, GroupState, JoinPhase, Member};
use crate::records::{OffsetsRecord, StoredGroup, StoredMember, StoredOffset};
use crate::txn_offsets::PendingTxnOffsets;
use bytes::Bytes;
use std::collections::BTreeMap;

/// Identifies a waiting JoinGroup or SyncGroup request to the runtime.
pub type ReplyId = u64;

/// Broker settings the coordinator obeys (Kafka's names).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i64,
    /// `group.max.size`
    pub max_size: usize,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member is given an id and must rejoin with it (KIP-394).
    pub require_known_member_id: bool,
    /// JoinGroup v9+: a static leader rejoining a stable group may skip the assignment.
    pub supports_skip_assignment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
    pub skip_assignment: bool,
}

impl JoinResponse {
    fn error(error: GroupError, member_id: String) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation_id: -1,
            member_id,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncResponse {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub(crate) fn error(error: GroupError) -> SyncResponse {
        SyncResponse {
            error: Some(error),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LeaveRequest {
    pub group_id: String,
    /// (member id, group.instance.id); v3+ may name several.
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveResponse {
    pub error: Option<GroupError>,
    pub members: Vec<(String, Option<String>, Option<GroupError>)>,
}

#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1: a consumer that stores offsets without group membership (`assign()`).
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// (topic, partition, offset, leader epoch, metadata)
    pub offsets: Vec<(String, i32, i64, i32, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Where the record that set it stands in the offsets log, as a count of the offset
    /// records this core applied or staged (live appends and replays both run in log order).
    /// A transactional offset commit whose transaction commits after a plain commit of the
    /// same partition was appended before it does not replace it (Kafka compares the records'
    /// log offsets the same way).
    pub position: u64,
}

/// One committed offset, as the lag metrics read it ([`GroupCoordinator::all_offsets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The group commits its offsets inside transactions
    /// ([`GroupCoordinator::is_exactly_once`]): its consumers read with
    /// `isolation.level=read_committed`, up to the partition's last stable offset.
    pub exactly_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Join(ReplyId, JoinResponse),
    Sync(ReplyId, SyncResponse),
    /// Append to the offsets log (group metadata, or offset tombstones).
    Store(OffsetsRecord),
}

type Offsets = BTreeMap<(String, i32), CommittedOffset>;

pub struct GroupCoordinator {
    settings: GroupSettings,
    groups: BTreeMap<String, Group>,
    offsets: BTreeMap<String, Offsets>,
    /// Offsets committed inside transactions not yet ended.
    pending_txn: PendingTxnOffsets,
    /// The next [`CommittedOffset::position`].
    next_position: u64,
    /// Distinguishes member ids issued by this process from those of earlier runs.
    incarnation: String,
    next_member: u64,
    out: Vec<Action>,
}

/// What one call may touch besides the group.
struct Ctx<'a> {
    now: i64,
    settings: &'a GroupSettings,
    out: &'a mut Vec<Action>,
}

impl GroupCoordinator {
    pub fn new(settings: GroupSettings, incarnation: String) -> GroupCoordinator {
        GroupCoordinator {
            settings,
            groups: BTreeMap::new(),
            offsets: BTreeMap::new(),
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

    /// Validates an OffsetCommit and returns, per partition, the record to store or why not.
    /// Nothing is applied: store the records, then [`GroupCoordinator::apply_record`] them.
    pub fn prepare_commit(
        &mut self,
        now: i64,
        req: &CommitRequest,
    ) -> Result<Vec<Result<OffsetsRecord, GroupError>>, GroupError> {
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        match self.groups.get_mut(&req.group_id) {
            None if req.generation_id < 0 => {
                self.groups
                    .insert(req.group_id.clone(), Group::new(req.group_id.clone(), now));
            }
            None => return Err(GroupError::IllegalGeneration),
            Some(g) => {
                if g.state == GroupState::Dead {
                    return Err(GroupError::CoordinatorNotAvailable);
                }
                if let Some(instance) = &req.instance_id {
                    if g.static_members.get(instance) != Some(&req.member_id) {
                        return Err(GroupError::FencedInstanceId);
                    }
                }
                #[cfg(feature = "planted-bugs")]
                let fenced = !crate::planted::commits_ignore_generation();
                #[cfg(not(feature = "planted-bugs"))]
                let fenced = true;
                if fenced && !(req.generation_id < 0 && g.state == GroupState::Empty) {
                    let Some(m) = g.members.get_mut(&req.member_id) else {
                        return Err(GroupError::UnknownMemberId);
                    };
                    if req.generation_id != g.generation {
                        return Err(GroupError::IllegalGeneration);
                    }
                    if g.state == GroupState::CompletingRebalance {
                        return Err(GroupError::RebalanceInProgress);
                    }
                    m.keep_alive(now);
                }
            }
        }
        Ok(self.offset_records(now, req))
    }

    /// The records of a commit's offsets, or why each cannot be stored.
    fn offset_records(
        &self,
        now: i64,
        req: &CommitRequest,
    ) -> Vec<Result<OffsetsRecord, GroupError>> {
        let max = self.settings.offset_metadata_max_bytes;
        req.offsets
            .iter()
            .map(|(topic, partition, offset, epoch, metadata)| {
                let metadata = metadata.clone().unwrap_or_default();
                if metadata.len() > max {
                    return Err(GroupError::OffsetMetadataTooLarge);
                }
                Ok(OffsetsRecord::Offset {
                    group: req.group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: Some(StoredOffset {
                        offset: *offset,
                        leader_epoch: *epoch,
                        metadata,
                        commit_timestamp_ms: now,
                    }),
                })
            })
            .collect()
    }

    /// Validates a TxnOffsetCommit as Kafka does: a request naming no member (the producer
    /// only knows the group id) is not checked against the group's members; one naming a
    /// member or generation is checked like an OffsetCommit. The records are stored in the
    /// producer's transactional batch, then held with [`GroupCoordinator::stage_txn_offsets`].
    pub fn prepare_txn_commit(
        &mut self,
        now: i64,
        req: &CommitRequest,
    ) -> Result<Vec<Result<OffsetsRecord, GroupError>>, GroupError> {
        if req.generation_id >= 0 || !req.member_id.is_empty() || req.instance_id.is_some() {
            return self.prepare_commit(now, req);
        }
        if req.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(req.group_id.clone(), now));
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        Ok(self.offset_records(now, req))
    }

    /// Holds stored transactional offset records until the producer's transaction ends.
    pub fn stage_txn_offsets(&mut self, producer_id: i64, records: Vec<OffsetsRecord>) {
        let staged: Vec<(u64, OffsetsRecord)> = records
            .into_iter()
            .map(|r| (self.take_position(), r))
            .collect();
        self.pending_txn.stage(producer_id, staged);
    }

    fn take_position(&mut self) -> u64 {
        self.next_position += 1;
        self.next_position
    }

    /// A marker for `producer_id` was written to an offsets partition (the groups for which
    /// `in_partition` holds): a commit applies its pending offsets, an abort drops them. A
    /// group that gets offsets from a commit becomes an exactly-once group
    /// ([`GroupCoordinator::is_exactly_once`]). The replay of an offsets partition ends its
    /// transactions here too, so a coordinator taking over knows the same groups as such.
    pub fn complete_txn(
        &mut self,
        now: i64,
        producer_id: i64,
        commit: bool,
        in_partition: impl Fn(&str) -> bool,
    ) -> usize {
        let applied = self.pending_txn.complete(producer_id, commit, in_partition);
        let count = applied.len();
        for (position, record) in applied {
            let group = record.group().to_owned();
            self.apply_at(now, record, position);
            if let Some(g) = self.groups.get_mut(&group) {
                if !g.exactly_once {
                    tracing::debug!(group = %group, producer_id,
                        "exactly-once group: offsets committed in a transaction");
                }
                g.exactly_once = true;
            }
        }
        count
    }

    /// Whether `group` commits its offsets inside transactions (an exactly-once group, whose
    /// consumers read with `isolation.level=read_committed`): a transactional offset commit of
    /// it was applied at its COMMIT, live or in the replay of the offsets log, since the group
    /// was last created. Sticky until the group goes (deleted, expired or unloaded).
    pub fn is_exactly_once(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.exactly_once)
    }

    /// Whether a transaction has an offset of this partition pending (KIP-447).
    pub fn txn_offset_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending_txn.is_pending(group, topic, partition)
    }

    /// Applies a stored record: a commit after its append, or a record replayed at start.
    pub fn apply_record(&mut self, now: i64, record: OffsetsRecord) {
        let position = self.take_position();
        self.apply_at(now, record, position);
    }

    /// Applies `record`, which stands at `position` in the offsets log: an offset set by a
    /// record further on (a plain commit appended after a transactional one) stays.
    fn apply_at(&mut self, now: i64, record: OffsetsRecord, position: u64) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => match value {
                Some(v) => {
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(group.clone(), now));
                    let offsets = self.offsets.entry(group).or_default();
                    let key = (topic, partition);
                    if offsets.get(&key).is_some_and(|c| c.position > position) {
                        return;
                    }
                    offsets.insert(
                        key,
                        CommittedOffset {
                            offset: v.offset,
                            leader_epoch: v.leader_epoch,
                            metadata: v.metadata,
                            commit_timestamp_ms: v.commit_timestamp_ms,
                            position,
                        },
                    );
                }
                None => {
                    if let Some(offsets) = self.offsets.get_mut(&group) {
                        offsets.remove(&(topic, partition));
                        if offsets.is_empty() {
                            self.offsets.remove(&group);
                        }
                    }
                }
            },
            OffsetsRecord::Group { group, value } => match value {
                Some(v) => {
                    let mut g = restore_group(group.clone(), v, now);
                    // The group record carries membership, not how offsets are committed: a
                    // rebalance after a transactional commit keeps the group exactly-once.
                    g.exactly_once = self.is_exactly_once(&group);
                    self.groups.insert(group, g);
                }
                None => {
                    if self.offsets.contains_key(&group) {
                        self.groups.insert(group.clone(), Group::new(group, now));
                    } else {
                        self.groups.remove(&group);
                    }
                }
            },
        }
    }

    /// OffsetFetch for one group: `None` topics means every committed partition.
    pub fn fetch_offsets(
        &self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        let offsets = self.offsets.get(group);
        match topics {
            None => offsets
                .into_iter()
                .flat_map(|o| o.iter())
                .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                .collect(),
            Some(topics) => topics
                .iter()
                .flat_map(|(t, parts)| {
                    parts.iter().map(move |p| {
                        let c = offsets.and_then(|o| o.get(&(t.clone(), *p))).cloned();
                        (t.clone(), *p, c)
                    })
                })
                .collect(),
        }
    }

    /// Every committed offset, with whether its group is exactly-once, for lag.
    pub fn all_offsets(&self) -> Vec<GroupOffset> {
        self.offsets
            .iter()
            .flat_map(|(g, o)| {
                let exactly_once = self.is_exactly_once(g);
                o.iter().map(move |((t, p), c)| GroupOffset {
                    group: g.clone(),
                    topic: t.clone(),
                    partition: *p,
                    offset: c.offset,
                    exactly_once,
                })
            })
            .collect()
    }

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

// ----- transitions (free functions so the group and the context borrow apart) -----

fn join_new(g: &mut Group, ctx: &mut Ctx<'_>, reply: ReplyId, req: JoinRequest, new_id: String) {
    if let Some(instance) = req.instance_id.clone() {
        if let Some(old_id) = g.static_members.get(&instance).cloned() {
            return replace_static(g, ctx, reply, req, old_id, new_id);
        }
    }
    if g.members.len() + g.pending.len() >= ctx.settings.max_size {
        ctx.out.push(Action::Join(
            reply,
            JoinResponse::error(GroupError::GroupMaxSizeReached, String::new()),
        ));
        return;
    }
    if req.instance_id.is_none() && req.require_known_member_id {
        g.pending
            .insert(new_id.clone(), ctx.now + i64::from(req.session_timeout_ms));
        ctx.out.push(Action::Join(
            reply,
            JoinResponse::error(GroupError::MemberIdRequired, new_id),
        ));
        return;
    }
    add_member_and_rebalance(g, ctx, reply, req, new_id);
}

fn join_known(g: &mut Group, ctx: &mut Ctx<'_>, reply: ReplyId, req: JoinRequest) {
    let refuse = |ctx: &mut Ctx<'_>, e: GroupError| {
        ctx.out.push(Action::Join(
            reply,
            JoinResponse::error(e, req.member_id.clone()),
        ));
    };
    if g.pending.remove(&req.member_id).is_some() {
        let id = req.member_id.clone();
        return add_member_and_rebalance(g, ctx, reply, req, id);
    }
    if let Err(e) = check_member(g, &req.member_id, req.instance_id.as_deref()) {
        return refuse(ctx, e);
    }
    let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
    let Some(m) = g.members.get_mut(&req.member_id) else {
        return refuse(ctx, GroupError::UnknownMemberId);
    };
    let same = m.same_protocols(&req.protocols);
    match g.state {
        GroupState::PreparingRebalance => {
            update_member(m, ctx, reply, &req);
            try_complete_join(g, ctx);
        }
        GroupState::CompletingRebalance if same => {
            // The member lost the JoinGroup response: send it again.
            m.keep_alive(ctx.now);
            let response = join_response(g, &req.member_id, is_leader);
            ctx.out.push(Action::Join(reply, response));
        }
        GroupState::Stable if same && !is_leader => {
            m.keep_alive(ctx.now);
            let response = join_response(g, &req.member_id, false);
            ctx.out.push(Action::Join(reply, response));
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            update_member(m, ctx, reply, &req);
            prepare_rebalance(g, ctx, "a member rejoined with new metadata");
            try_complete_join(g, ctx);
        }
        GroupState::Empty | GroupState::Dead => refuse(ctx, GroupError::UnknownMemberId),
    }
}

/// A restarted static member takes over its instance's membership under a new member id;
/// in a stable group with unchanged metadata it gets its assignment back without a rebalance.
fn replace_static(
    g: &mut Group,
    ctx: &mut Ctx<'_>,
    reply: ReplyId,
    req: JoinRequest,
    old_id: String,
    new_id: String,
) {
    let Some(mut m) = g.members.remove(&old_id) else {
        return;
    };
    if let Some((old_reply, _)) = m.awaiting_join.take() {
        ctx.out.push(Action::Join(
            old_reply,
            JoinResponse::error(GroupError::FencedInstanceId, old_id.clone()),
        ));
    }
    if let Some(old_reply) = m.awaiting_sync.take() {
        ctx.out.push(Action::Sync(
            old_reply,
            SyncResponse::error(GroupError::FencedInstanceId),
        ));
    }
    m.member_id = new_id.clone();
    m.client_id = req.client_id.clone();
    m.client_host = req.client_host.clone();
    m.session_timeout_ms = req.session_timeout_ms;
    m.rebalance_timeout_ms = req.rebalance_timeout_ms;
    m.protocols = req.protocols.clone();
    m.keep_alive(ctx.now);
    if let Some(instance) = &req.instance_id {
        g.static_members.insert(instance.clone(), new_id.clone());
    }
    // Kafka answers with the leader id as it was before the replacement: a client older than
    // JoinGroup v9 that sees another leader id acts as a follower and just syncs, so a
    // restarted static leader gets its assignment back without a rebalance too.
    let previous_leader = g.leader.clone().unwrap_or_default();
    let is_leader = previous_leader == old_id;
    if is_leader {
        g.leader = Some(new_id.clone());
    }
    tracing::debug!(group = %g.id, old = %old_id, new = %new_id, "static member replaced");
    match g.state {
        GroupState::Stable => {
            m.synced = true;
            g.members.insert(new_id.clone(), m);
            if g.select_protocol() == g.protocol {
                store_group(g, ctx);
                let mut response = join_response(g, &new_id, is_leader);
                response.leader = previous_leader;
                response.skip_assignment = is_leader;
                ctx.out.push(Action::Join(reply, response));
            } else {
                if let Some(m) = g.members.get_mut(&new_id) {
                    m.awaiting_join = Some((reply, req.supports_skip_assignment));
                }
                prepare_rebalance(
                    g,
                    ctx,
                    "a static member's rejoin changes the group protocol",
                );
                try_complete_join(g, ctx);
            }
        }
        GroupState::PreparingRebalance => {
            m.awaiting_join = Some((reply, req.supports_skip_assignment));
            g.members.insert(new_id, m);
            try_complete_join(g, ctx);
        }
        _ => {
            // CompletingRebalance: the leader may be assigning to the old member id.
            m.awaiting_join = Some((reply, req.supports_skip_assignment));
            g.members.insert(new_id, m);
            prepare_rebalance(g, ctx, "a static member rejoined during a rebalance");
            try_complete_join(g, ctx);
        }
    }
}

fn add_member_and_rebalance(
    g: &mut Group,
    ctx: &mut Ctx<'_>,
    reply: ReplyId,
    req: JoinRequest,
    member_id: String,
) {
    if g.members.is_empty() {
        g.protocol_type = Some(req.protocol_type.clone());
    }
    let mut member = Member {
        member_id: member_id.clone(),
        instance_id: req.instance_id.clone(),
        client_id: req.client_id.clone(),
        client_host: req.client_host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        protocols: req.protocols.clone(),
        assignment: Bytes::new(),
        awaiting_join: Some((reply, req.supports_skip_assignment)),
        awaiting_sync: None,
        synced: false,
        session_deadline_ms: 0,
    };
    member.keep_alive(ctx.now);
    if let Some(instance) = &req.instance_id {
        g.static_members.insert(instance.clone(), member_id.clone());
    }
    g.members.insert(member_id, member);
    g.new_member_added = true;
    if g.state != GroupState::PreparingRebalance {
        prepare_rebalance(g, ctx, "a new member joined");
    }
    try_complete_join(g, ctx);
}

fn update_member(m: &mut Member, ctx: &mut Ctx<'_>, reply: ReplyId, req: &JoinRequest) {
    if let Some((old, _)) = m.awaiting_join.take() {
        ctx.out.push(Action::Join(
            old,
            JoinResponse::error(GroupError::RebalanceInProgress, m.member_id.clone()),
        ));
    }
    m.protocols = req.protocols.clone();
    m.client_id = req.client_id.clone();
    m.client_host = req.client_host.clone();
    m.session_timeout_ms = req.session_timeout_ms;
    m.rebalance_timeout_ms = req.rebalance_timeout_ms;
    m.awaiting_join = Some((reply, req.supports_skip_assignment));
    m.keep_alive(ctx.now);
}

/// The member may act for the group (Kafka's static-member fencing and unknown-member check).
fn check_member(g: &Group, member_id: &str, instance_id: Option<&str>) -> Result<(), GroupError> {
    if g.state == GroupState::Dead {
        return Err(GroupError::CoordinatorNotAvailable);
    }
    if let Some(instance) = instance_id {
        match g.static_members.get(instance) {
            Some(id) if id != member_id => return Err(GroupError::FencedInstanceId),
            Some(_) => {}
            None => return Err(GroupError::UnknownMemberId),
        }
    }
    if !g.members.contains_key(member_id) {
        return Err(GroupError::UnknownMemberId);
    }
    Ok(())
}

fn join_response(g: &Group, member_id: &str, with_members: bool) -> JoinResponse {
    let protocol = g.protocol.clone().unwrap_or_default();
    JoinResponse {
        error: None,
        generation_id: g.generation,
        protocol_type: g.protocol_type.clone(),
        protocol_name: g.protocol.clone(),
        leader: g.leader.clone().unwrap_or_default(),
        member_id: member_id.to_owned(),
        members: if with_members {
            g.members
                .values()
                .map(|m| JoinedMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&protocol),
                })
                .collect()
        } else {
            Vec::new()
        },
        skip_assignment: false,
    }
}

fn prepare_rebalance(g: &mut Group, ctx: &mut Ctx<'_>, reason: &str) {
    if g.state == GroupState::CompletingRebalance {
        for m in g.members.values_mut() {
            if let Some(reply) = m.awaiting_sync.take() {
                ctx.out.push(Action::Sync(
                    reply,
                    SyncResponse::error(GroupError::RebalanceInProgress),
                ));
            }
        }
    }
    let was_empty = g.state == GroupState::Empty;
    g.transition(GroupState::PreparingRebalance, ctx.now);
    g.sync_deadline_ms = None;
    let timeout = g.rebalance_timeout_ms();
    let delay = ctx.settings.initial_rebalance_delay_ms;
    if was_empty && delay > 0 {
        let first = delay.min(timeout);
        g.join_phase = JoinPhase::InitialDelay {
            remaining_ms: (timeout - first).max(0),
        };
        g.new_member_added = false;
        g.join_deadline_ms = Some(ctx.now + first);
    } else {
        g.join_phase = JoinPhase::Rebalance;
        g.join_deadline_ms = Some(ctx.now + timeout);
    }
    tracing::debug!(group = %g.id, generation = g.generation, reason, "preparing rebalance");
}

fn try_complete_join(g: &mut Group, ctx: &mut Ctx<'_>) {
    if g.state == GroupState::PreparingRebalance
        && g.join_phase == JoinPhase::Rebalance
        && g.all_joined()
    {
        complete_join(g, ctx);
    }
}

fn complete_join(g: &mut Group, ctx: &mut Ctx<'_>) {
    // Dynamic members that did not rejoin in time leave; static members stay until their
    // session times out.
    let gone: Vec<String> = g
        .members
        .values()
        .filter(|m| m.awaiting_join.is_none() && m.instance_id.is_none())
        .map(|m| m.member_id.clone())
        .collect();
    for id in gone {
        remove_member(g, ctx, &id);
    }
    g.join_deadline_ms = None;
    g.join_phase = JoinPhase::Rebalance;
    g.generation += 1;
    if g.members.is_empty() {
        g.protocol = None;
        g.leader = None;
        g.transition(GroupState::Empty, ctx.now);
        store_group(g, ctx);
        tracing::info!(group = %g.id, generation = g.generation, "group is empty");
        return;
    }
    g.protocol = g.select_protocol();
    if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
        g.leader = g
            .members
            .values()
            .find(|m| m.awaiting_join.is_some())
            .or_else(|| g.members.values().next())
            .map(|m| m.member_id.clone());
    }
    g.transition(GroupState::CompletingRebalance, ctx.now);
    let leader = g.leader.clone();
    let ids: Vec<String> = g.members.keys().cloned().collect();
    for id in ids {
        let is_leader = leader.as_deref() == Some(id.as_str());
        let response = join_response(g, &id, is_leader);
        if let Some(m) = g.members.get_mut(&id) {
            m.synced = false;
            if let Some((reply, _)) = m.awaiting_join.take() {
                m.keep_alive(ctx.now);
                ctx.out.push(Action::Join(reply, response));
            }
        }
    }
    g.sync_deadline_ms = Some(ctx.now + g.rebalance_timeout_ms());
    tracing::info!(group = %g.id, generation = g.generation, members = g.members.len(),
        protocol = g.protocol.as_deref().unwrap_or(""), "rebalance: join complete");
}

fn sync(g: &mut Group, ctx: &mut Ctx<'_>, reply: ReplyId, req: SyncRequest) {
    let refuse = |ctx: &mut Ctx<'_>, e: GroupError| {
        ctx.out.push(Action::Sync(reply, SyncResponse::error(e)));
    };
    if let Err(e) = check_member(g, &req.member_id, req.instance_id.as_deref()) {
        return refuse(ctx, e);
    }
    if req.generation_id != g.generation {
        return refuse(ctx, GroupError::IllegalGeneration);
    }
    if req
        .protocol_type
        .as_ref()
        .is_some_and(|t| Some(t) != g.protocol_type.as_ref())
        || req
            .protocol_name
            .as_ref()
            .is_some_and(|p| Some(p) != g.protocol.as_ref())
    {
        return refuse(ctx, GroupError::InconsistentGroupProtocol);
    }
    let is_leader = g.leader.as_deref() == Some(req.member_id.as_str());
    match g.state {
        GroupState::Empty | GroupState::Dead => refuse(ctx, GroupError::UnknownMemberId),
        GroupState::PreparingRebalance => refuse(ctx, GroupError::RebalanceInProgress),
        GroupState::CompletingRebalance => {
            if let Some(m) = g.members.get_mut(&req.member_id) {
                if let Some(old) = m.awaiting_sync.replace(reply) {
                    ctx.out.push(Action::Sync(
                        old,
                        SyncResponse::error(GroupError::RebalanceInProgress),
                    ));
                }
                m.synced = true;
                m.keep_alive(ctx.now);
            }
            if is_leader {
                let mut assignments: BTreeMap<String, Bytes> =
                    req.assignments.into_iter().collect();
                for m in g.members.values_mut() {
                    m.assignment = assignments.remove(&m.member_id).unwrap_or_default();
                }
                g.transition(GroupState::Stable, ctx.now);
                store_group(g, ctx);
                let (protocol_type, protocol_name) = (g.protocol_type.clone(), g.protocol.clone());
                for m in g.members.values_mut() {
                    if let Some(r) = m.awaiting_sync.take() {
                        m.keep_alive(ctx.now);
                        ctx.out.push(Action::Sync(
                            r,
                            SyncResponse {
                                error: None,
                                protocol_type: protocol_type.clone(),
                                protocol_name: protocol_name.clone(),
                                assignment: m.assignment.clone(),
                            },
                        ));
                    }
                }
                tracing::info!(group = %g.id, generation = g.generation, "group is stable");
            }
            clear_sync_deadline_if_done(g);
        }
        GroupState::Stable => {
            let (protocol_type, protocol_name) = (g.protocol_type.clone(), g.protocol.clone());
            if let Some(m) = g.members.get_mut(&req.member_id) {
                m.synced = true;
                m.keep_alive(ctx.now);
                ctx.out.push(Action::Sync(
                    reply,
                    SyncResponse {
                        error: None,
                        protocol_type,
                        protocol_name,
                        assignment: m.assignment.clone(),
                    },
                ));
            }
            clear_sync_deadline_if_done(g);
        }
    }
}

fn clear_sync_deadline_if_done(g: &mut Group) {
    if g.members.values().all(|m| m.synced) {
        g.sync_deadline_ms = None;
    }
}

/// Removes a member; a request of its still waiting is answered UNKNOWN_MEMBER_ID.
fn remove_member(g: &mut Group, ctx: &mut Ctx<'_>, id: &str) {
    let Some(mut m) = g.members.remove(id) else {
        return;
    };
    if let Some(instance) = &m.instance_id {
        if g.static_members.get(instance).map(String::as_str) == Some(id) {
            g.static_members.remove(instance);
        }
    }
    if let Some((reply, _)) = m.awaiting_join.take() {
        ctx.out.push(Action::Join(
            reply,
            JoinResponse::error(GroupError::UnknownMemberId, id.to_owned()),
        ));
    }
    if let Some(reply) = m.awaiting_sync.take() {
        ctx.out.push(Action::Sync(
            reply,
            SyncResponse::error(GroupError::UnknownMemberId),
        ));
    }
    if g.leader.as_deref() == Some(id) {
        g.leader = None;
    }
}

/// After members left or expired: the remaining members must rebalance.
fn member_gone(g: &mut Group, ctx: &mut Ctx<'_>) {
    match g.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(g, ctx, "a member left")
        }
        _ => {}
    }
    try_complete_join(g, ctx);
}

fn tick_group(g: &mut Group, ctx: &mut Ctx<'_>) {
    let now = ctx.now;
    let before = g.pending.len();
    g.pending.retain(|_, deadline| *deadline > now);
    let mut changed = g.pending.len() != before;

    let expired: Vec<String> = g
        .members
        .values()
        .filter(|m| {
            m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.session_deadline_ms <= now
        })
        .map(|m| m.member_id.clone())
        .collect();
    for id in &expired {
        tracing::info!(group = %g.id, member = %id, "member session expired");
        remove_member(g, ctx, id);
    }
    changed |= !expired.is_empty();

    if g.sync_deadline_ms.is_some_and(|d| d <= now) {
        g.sync_deadline_ms = None;
        if matches!(
            g.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) {
            let unsynced: Vec<String> = g
                .members
                .values()
                .filter(|m| !m.synced)
                .map(|m| m.member_id.clone())
                .collect();
            for id in &unsynced {
                tracing::info!(group = %g.id, member = %id, "member did not sync in time");
                remove_member(g, ctx, id);
            }
            changed |= !unsynced.is_empty();
        }
    }
    if changed {
        member_gone(g, ctx);
    }

    if g.state == GroupState::PreparingRebalance && g.join_deadline_ms.is_some_and(|d| d <= now) {
        match g.join_phase {
            JoinPhase::InitialDelay { remaining_ms } if g.new_member_added && remaining_ms > 0 => {
                let delay = ctx.settings.initial_rebalance_delay_ms.min(remaining_ms);
                g.join_phase = JoinPhase::InitialDelay {
                    remaining_ms: remaining_ms - delay,
                };
                g.new_member_added = false;
                g.join_deadline_ms = Some(now + delay);
            }
            _ => complete_join(g, ctx),
        }
    }
}

fn store_group(g: &Group, ctx: &mut Ctx<'_>) {
    let protocol = g.protocol.clone().unwrap_or_default();
    ctx.out.push(Action::Store(OffsetsRecord::Group {
        group: g.id.clone(),
        value: Some(StoredGroup {
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            generation: g.generation,
            protocol: g.protocol.clone(),
            leader: g.leader.clone(),
            state_timestamp_ms: g.state_since_ms,
            members: g
                .members
                .values()
                .map(|m| StoredMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }),
    }));
}

/// A group as stored: Stable with its members (who must heartbeat within their session
/// timeout from now), or Empty.
fn restore_group(id: String, v: StoredGroup, now: i64) -> Group {
    let mut g = Group::new(id, now);
    g.generation = v.generation;
    g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
    g.protocol = v.protocol.clone();
    g.leader = v.leader;
    g.state_since_ms = if v.state_timestamp_ms > 0 {
        v.state_timestamp_ms
    } else {
        now
    };
    let protocol = v.protocol.unwrap_or_default();
    for sm in v.members {
        let mut m = Member {
            member_id: sm.member_id.clone(),
            instance_id: sm.instance_id.clone(),
            client_id: sm.client_id,
            client_host: sm.client_host,
            session_timeout_ms: sm.session_timeout_ms,
            rebalance_timeout_ms: sm.rebalance_timeout_ms,
            protocols: vec![(protocol.clone(), sm.subscription)],
            assignment: sm.assignment,
            awaiting_join: None,
            awaiting_sync: None,
            synced: true,
            session_deadline_ms: 0,
        };
        m.keep_alive(now);
        if let Some(instance) = sm.instance_id {
            g.static_members.insert(instance, sm.member_id.clone());
        }
        g.members.insert(sm.member_id, m);
    }
    g.state = if g.members.is_empty() {
        GroupState::Empty
    } else {
        GroupState::Stable
    };
    g
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
