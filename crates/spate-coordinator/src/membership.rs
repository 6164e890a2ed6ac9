//! The membership transitions of one group (Kafka's classic protocol: join, sync, leave,
//! rebalance, session expiry), as free functions so the group and the coordinator's context
//! borrow apart. [`crate::core::GroupCoordinator`] finds the group and calls them.

use crate::error::GroupError;
use crate::group::{Group, GroupState, JoinPhase, Member};
use crate::records::{OffsetsRecord, StoredGroup, StoredMember};
use crate::requests::{
    Action, GroupSettings, JoinRequest, JoinResponse, JoinedMember, ReplyId, SyncRequest,
    SyncResponse,
};
use bytes::Bytes;
use std::collections::BTreeMap;

/// What one call may touch besides the group.
pub(crate) struct Ctx<'a> {
    pub(crate) now: i64,
    pub(crate) settings: &'a GroupSettings,
    pub(crate) out: &'a mut Vec<Action>,
}

pub(crate) fn join_new(
    g: &mut Group,
    ctx: &mut Ctx<'_>,
    reply: ReplyId,
    req: JoinRequest,
    new_id: String,
) {
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

pub(crate) fn join_known(g: &mut Group, ctx: &mut Ctx<'_>, reply: ReplyId, req: JoinRequest) {
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
pub(crate) fn replace_static(
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

pub(crate) fn add_member_and_rebalance(
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

pub(crate) fn update_member(m: &mut Member, ctx: &mut Ctx<'_>, reply: ReplyId, req: &JoinRequest) {
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
pub(crate) fn check_member(
    g: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), GroupError> {
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

pub(crate) fn join_response(g: &Group, member_id: &str, with_members: bool) -> JoinResponse {
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

pub(crate) fn prepare_rebalance(g: &mut Group, ctx: &mut Ctx<'_>, reason: &str) {
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

pub(crate) fn try_complete_join(g: &mut Group, ctx: &mut Ctx<'_>) {
    if g.state == GroupState::PreparingRebalance
        && g.join_phase == JoinPhase::Rebalance
        && g.all_joined()
    {
        complete_join(g, ctx);
    }
}

pub(crate) fn complete_join(g: &mut Group, ctx: &mut Ctx<'_>) {
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

pub(crate) fn sync(g: &mut Group, ctx: &mut Ctx<'_>, reply: ReplyId, req: SyncRequest) {
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

pub(crate) fn clear_sync_deadline_if_done(g: &mut Group) {
    if g.members.values().all(|m| m.synced) {
        g.sync_deadline_ms = None;
    }
}

/// Removes a member; a request of its still waiting is answered UNKNOWN_MEMBER_ID.
pub(crate) fn remove_member(g: &mut Group, ctx: &mut Ctx<'_>, id: &str) {
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
pub(crate) fn member_gone(g: &mut Group, ctx: &mut Ctx<'_>) {
    match g.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(g, ctx, "a member left")
        }
        _ => {}
    }
    try_complete_join(g, ctx);
}

pub(crate) fn tick_group(g: &mut Group, ctx: &mut Ctx<'_>) {
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

pub(crate) fn store_group(g: &Group, ctx: &mut Ctx<'_>) {
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
pub(crate) fn restore_group(id: String, v: StoredGroup, now: i64) -> Group {
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
