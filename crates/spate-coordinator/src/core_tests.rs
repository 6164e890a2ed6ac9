//! The group state machine, one behaviour per test: every transition and timeout.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use super::*;

const SESSION: i32 = 10_000;
const REBALANCE: i32 = 30_000;

fn settings(delay_ms: i64) -> GroupSettings {
    GroupSettings {
        initial_rebalance_delay_ms: delay_ms,
        ..GroupSettings::default()
    }
}

fn coord(delay_ms: i64) -> GroupCoordinator {
    GroupCoordinator::new(settings(delay_ms), "t".into())
}

fn join_req(member: &str, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: SESSION,
        rebalance_timeout_ms: REBALANCE,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
        require_known_member_id: true,
        supports_skip_assignment: false,
    }
}

fn joins(c: &mut GroupCoordinator) -> Vec<(ReplyId, JoinResponse)> {
    c.take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Join(id, r) => Some((id, r)),
            _ => None,
        })
        .collect()
}

fn actions(
    c: &mut GroupCoordinator,
) -> (
    Vec<(ReplyId, JoinResponse)>,
    Vec<(ReplyId, SyncResponse)>,
    usize,
) {
    let mut j = Vec::new();
    let mut s = Vec::new();
    let mut stores = 0;
    for a in c.take_actions() {
        match a {
            Action::Join(id, r) => j.push((id, r)),
            Action::Sync(id, r) => s.push((id, r)),
            Action::Store(_) => stores += 1,
        }
    }
    (j, s, stores)
}

fn state(c: &GroupCoordinator) -> GroupState {
    c.describe_group("g").state
}

/// A new dynamic member: MEMBER_ID_REQUIRED, then the rejoin with its id.
fn first_join(c: &mut GroupCoordinator, now: i64, reply: ReplyId) -> String {
    c.join(now, reply, join_req("", &["range"]));
    let j = joins(c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.error, Some(GroupError::MemberIdRequired));
    let id = j[0].1.member_id.clone();
    assert!(!id.is_empty());
    c.join(now, reply, join_req(&id, &["range"]));
    id
}

fn sync_req(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncRequest {
    SyncRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        assignments: assignments
            .iter()
            .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
            .collect(),
        ..Default::default()
    }
}

fn hb(member: &str, generation: i32) -> HeartbeatRequest {
    HeartbeatRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        instance_id: None,
    }
}

/// One member, stable in generation 1 with assignment "A".
fn stable_one(c: &mut GroupCoordinator) -> String {
    let a = first_join(c, 0, 1);
    let j = joins(c);
    assert_eq!(j[0].1.generation_id, 1);
    c.sync(0, 2, sync_req(&a, 1, &[(&a, "A")]));
    let (_, s, stores) = actions(c);
    assert_eq!(s[0].1.assignment, Bytes::from("A"));
    assert_eq!(stores, 1, "a stable group is stored");
    a
}

#[test]
fn empty_group_id_and_bad_session_timeouts_are_refused() {
    let mut c = coord(0);
    let mut r = join_req("", &["range"]);
    r.group_id = String::new();
    c.join(0, 1, r);
    assert_eq!(joins(&mut c)[0].1.error, Some(GroupError::InvalidGroupId));
    for timeout in [5_999, 1_800_001] {
        let mut r = join_req("", &["range"]);
        r.session_timeout_ms = timeout;
        c.join(0, 1, r);
        assert_eq!(
            joins(&mut c)[0].1.error,
            Some(GroupError::InvalidSessionTimeout)
        );
    }
}

#[test]
fn unknown_member_of_unknown_group_is_refused() {
    let mut c = coord(0);
    c.join(0, 1, join_req("ghost", &["range"]));
    assert_eq!(joins(&mut c)[0].1.error, Some(GroupError::UnknownMemberId));
    assert!(c.heartbeat(0, &hb("ghost", 1)) == Err(GroupError::UnknownMemberId));
}

#[test]
fn single_member_goes_empty_preparing_completing_stable() {
    let mut c = coord(0);
    let a = first_join(&mut c, 0, 1);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    let r = &j[0].1;
    assert_eq!(
        (r.error, r.generation_id, r.leader.as_str()),
        (None, 1, a.as_str())
    );
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1, "the leader gets the member list");
    assert_eq!(r.members[0].metadata, Bytes::from("meta-range"));
    assert_eq!(state(&c), GroupState::CompletingRebalance);
    c.sync(0, 2, sync_req(&a, 1, &[(&a, "A")]));
    let (_, s, _) = actions(&mut c);
    assert_eq!(
        s,
        vec![(
            2,
            SyncResponse {
                error: None,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignment: Bytes::from("A"),
            }
        )]
    );
    assert_eq!(state(&c), GroupState::Stable);
    assert_eq!(c.heartbeat(100, &hb(&a, 1)), Ok(()));
    assert_eq!(
        c.heartbeat(100, &hb(&a, 0)),
        Err(GroupError::IllegalGeneration)
    );
}

#[test]
fn second_member_triggers_rebalance_and_both_get_generation_two() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 10, 3);
    assert!(joins(&mut c).is_empty(), "b waits for a to rejoin");
    assert_eq!(state(&c), GroupState::PreparingRebalance);
    assert_eq!(
        c.heartbeat(20, &hb(&a, 1)),
        Err(GroupError::RebalanceInProgress)
    );
    c.join(30, 4, join_req(&a, &["range"]));
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    for (_, r) in &j {
        assert_eq!(r.generation_id, 2);
        assert_eq!(r.leader, a, "the leader stays the leader");
    }
    let leader = j.iter().find(|(_, r)| r.member_id == a).unwrap();
    let follower = j.iter().find(|(_, r)| r.member_id == b).unwrap();
    assert_eq!(leader.1.members.len(), 2);
    assert!(follower.1.members.is_empty());
    // The follower's sync waits for the leader's.
    c.sync(40, 5, sync_req(&b, 2, &[]));
    assert!(actions(&mut c).1.is_empty());
    c.sync(41, 6, sync_req(&a, 2, &[(&a, "A2"), (&b, "B2")]));
    let (_, s, _) = actions(&mut c);
    let by: BTreeMap<ReplyId, Bytes> = s.into_iter().map(|(id, r)| (id, r.assignment)).collect();
    assert_eq!(by[&5], Bytes::from("B2"));
    assert_eq!(by[&6], Bytes::from("A2"));
}

#[test]
fn protocol_choice_is_the_common_most_voted_one_and_inconsistent_is_refused() {
    let mut c = coord(0);
    c.join(0, 1, join_req("", &["cooperative-sticky", "range"]));
    let a = joins(&mut c)[0].1.member_id.clone();
    c.join(0, 1, join_req(&a, &["cooperative-sticky", "range"]));
    assert_eq!(
        joins(&mut c)[0].1.protocol_name.as_deref(),
        Some("cooperative-sticky")
    );
    // A member that shares no protocol is refused; another protocol type too.
    c.join(0, 2, join_req("", &["roundrobin"]));
    assert_eq!(
        joins(&mut c)[0].1.error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut other = join_req("", &["range"]);
    other.protocol_type = "connect".into();
    c.join(0, 3, other);
    assert_eq!(
        joins(&mut c)[0].1.error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let mut none = join_req("", &[]);
    none.group_id = "h".into();
    c.join(0, 4, none);
    assert_eq!(
        joins(&mut c)[0].1.error,
        Some(GroupError::InconsistentGroupProtocol)
    );
}

#[test]
fn initial_delay_waits_for_more_members_then_completes() {
    let mut c = coord(3_000);
    let a = first_join(&mut c, 0, 1);
    assert!(
        joins(&mut c).is_empty(),
        "the first rebalance waits for the delay"
    );
    assert_eq!(c.next_deadline(), Some(3_000));
    c.tick(1_000);
    let b = first_join(&mut c, 1_000, 2);
    c.tick(3_000);
    assert!(joins(&mut c).is_empty(), "a new member extended the delay");
    assert_eq!(c.next_deadline(), Some(6_000));
    c.tick(6_000);
    let j = joins(&mut c);
    assert_eq!(j.len(), 2);
    assert!(j.iter().all(|(_, r)| r.generation_id == 1));
    let _ = (a, b);
}

#[test]
fn initial_delay_is_capped_by_the_rebalance_timeout() {
    let mut c = coord(20_000);
    first_join(&mut c, 0, 1);
    c.tick(20_000 - 1);
    first_join(&mut c, 19_999, 2);
    c.tick(20_000);
    // Remaining is 30000 - 20000 = 10000: one more delay of 10 s at most.
    assert!(joins(&mut c).is_empty());
    assert_eq!(c.next_deadline(), Some(30_000));
    c.tick(30_000);
    assert_eq!(joins(&mut c).len(), 2);
}

#[test]
fn member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 100, 3);
    // a never rejoins; its session would expire at 10000 but it is kept while preparing... only
    // members awaiting a join are kept alive, so a's session expiry removes it first.
    c.tick(SESSION as i64);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.member_id, b);
    assert_eq!(j[0].1.leader, b, "a new leader is chosen");
    assert_eq!(j[0].1.generation_id, 2);
    assert!(!c
        .describe_group("g")
        .members
        .iter()
        .any(|m| m.member_id == a));
}

#[test]
fn rebalance_timeout_completes_the_join_without_stragglers() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    // a keeps heartbeating (REBALANCE_IN_PROGRESS) but never rejoins.
    for t in (5_000..30_000).step_by(5_000) {
        assert_eq!(
            c.heartbeat(t, &hb(&a, 1)),
            Err(GroupError::RebalanceInProgress)
        );
        c.tick(t);
        assert!(joins(&mut c).is_empty());
    }
    c.tick(REBALANCE as i64);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.member_id, b);
    assert_eq!(
        c.heartbeat(30_001, &hb(&a, 1)),
        Err(GroupError::UnknownMemberId)
    );
}

#[test]
fn session_timeout_removes_a_silent_member_and_rebalances_the_rest() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    c.join(0, 4, join_req(&a, &["range"]));
    joins(&mut c);
    c.sync(0, 5, sync_req(&a, 2, &[(&a, "A"), (&b, "B")]));
    c.sync(0, 6, sync_req(&b, 2, &[]));
    actions(&mut c);
    assert_eq!(state(&c), GroupState::Stable);
    // b heartbeats, a goes silent.
    c.tick(5_000);
    assert_eq!(c.heartbeat(5_000, &hb(&b, 2)), Ok(()));
    c.tick(SESSION as i64);
    assert_eq!(state(&c), GroupState::PreparingRebalance);
    assert_eq!(
        c.heartbeat(10_001, &hb(&b, 2)),
        Err(GroupError::RebalanceInProgress)
    );
    c.join(10_002, 7, join_req(&b, &["range"]));
    let j = joins(&mut c);
    assert_eq!(
        (j[0].1.generation_id, j[0].1.leader.as_str()),
        (3, b.as_str())
    );
}

#[test]
fn leave_rebalances_at_once_and_last_leave_empties_the_group() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let r = c.leave(
        5,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![(a.clone(), None), ("nobody".into(), None)],
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(r.members[0].2, None);
    assert_eq!(r.members[1].2, Some(GroupError::UnknownMemberId));
    assert_eq!(state(&c), GroupState::Empty);
    let (_, _, stores) = actions(&mut c);
    assert_eq!(stores, 1, "the empty group is stored");
    assert_eq!(c.heartbeat(6, &hb(&a, 2)), Err(GroupError::UnknownMemberId));
    let unknown = c.leave(
        5,
        &LeaveRequest {
            group_id: "nope".into(),
            members: vec![("x".into(), None)],
        },
    );
    assert_eq!(unknown.error, Some(GroupError::UnknownMemberId));
}

#[test]
fn leave_of_a_member_while_others_wait_completes_their_join() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    assert!(joins(&mut c).is_empty());
    c.leave(
        1,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![(a, None)],
        },
    );
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.member_id, b);
}

#[test]
fn sync_errors_unknown_member_wrong_generation_and_during_rebalance() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    c.sync(1, 10, sync_req("ghost", 1, &[]));
    c.sync(1, 11, sync_req(&a, 7, &[]));
    let mut wrong_protocol = sync_req(&a, 1, &[]);
    wrong_protocol.protocol_name = Some("roundrobin".into());
    c.sync(1, 12, wrong_protocol);
    // A stable member re-syncing gets its assignment again.
    c.sync(1, 13, sync_req(&a, 1, &[]));
    let (_, s, _) = actions(&mut c);
    let by: BTreeMap<ReplyId, SyncResponse> = s.into_iter().collect();
    assert_eq!(by[&10].error, Some(GroupError::UnknownMemberId));
    assert_eq!(by[&11].error, Some(GroupError::IllegalGeneration));
    assert_eq!(by[&12].error, Some(GroupError::InconsistentGroupProtocol));
    assert_eq!(by[&13].assignment, Bytes::from("A"));
    first_join(&mut c, 2, 14);
    c.sync(2, 15, sync_req(&a, 1, &[]));
    let (_, s, _) = actions(&mut c);
    assert_eq!(s[0].1.error, Some(GroupError::RebalanceInProgress));
    c.sync(2, 16, sync_req("x", 1, &[]).clone());
    let mut unknown_group = sync_req("x", 1, &[]);
    unknown_group.group_id = "nope".into();
    c.sync(2, 17, unknown_group);
    let (_, s, _) = actions(&mut c);
    assert!(s
        .iter()
        .all(|(_, r)| r.error == Some(GroupError::UnknownMemberId)));
}

#[test]
fn pending_syncs_are_answered_when_a_rebalance_starts() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    c.join(0, 4, join_req(&a, &["range"]));
    joins(&mut c);
    c.sync(1, 5, sync_req(&b, 2, &[]));
    assert!(actions(&mut c).1.is_empty());
    // A third member arrives before the leader syncs.
    first_join(&mut c, 2, 6);
    let (_, s, _) = actions(&mut c);
    assert_eq!(
        s,
        vec![(5, SyncResponse::error(GroupError::RebalanceInProgress))]
    );
}

#[test]
fn members_that_never_sync_are_removed_after_the_rebalance_timeout() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    c.join(0, 4, join_req(&a, &["range"]));
    joins(&mut c);
    c.sync(1, 5, sync_req(&a, 2, &[(&a, "A"), (&b, "B")]));
    actions(&mut c);
    assert_eq!(state(&c), GroupState::Stable);
    assert_eq!(c.heartbeat(9_000, &hb(&a, 2)), Ok(()));
    assert_eq!(c.heartbeat(9_000, &hb(&b, 2)), Ok(()));
    for t in (9_000..=REBALANCE as i64).step_by(9_000) {
        assert_eq!(c.heartbeat(t, &hb(&a, 2)), Ok(()));
        assert!(c.heartbeat(t, &hb(&b, 2)).is_ok());
        c.tick(t);
    }
    c.tick(REBALANCE as i64);
    assert_eq!(state(&c), GroupState::PreparingRebalance, "b never synced");
    assert_eq!(
        c.heartbeat(30_001, &hb(&b, 2)),
        Err(GroupError::UnknownMemberId)
    );
}

#[test]
fn known_member_rejoin_without_change_in_stable_gets_the_current_generation() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let b = first_join(&mut c, 0, 3);
    c.join(0, 4, join_req(&a, &["range"]));
    joins(&mut c);
    c.sync(1, 5, sync_req(&a, 2, &[(&a, "A"), (&b, "B")]));
    actions(&mut c);
    c.join(2, 6, join_req(&b, &["range"]));
    let j = joins(&mut c);
    assert_eq!((j[0].1.error, j[0].1.generation_id), (None, 2));
    assert_eq!(
        state(&c),
        GroupState::Stable,
        "a follower without changes causes no rebalance"
    );
    // The leader rejoining, or new metadata, does.
    c.join(3, 7, join_req(&a, &["range"]));
    assert_eq!(state(&c), GroupState::PreparingRebalance);
}

#[test]
fn pending_member_that_never_rejoins_expires_and_unblocks_the_join() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    c.join(10, 3, join_req("", &["range"]));
    let pending = joins(&mut c)[0].1.member_id.clone();
    c.join(10, 4, join_req(&a, &["range"]));
    // Forced rebalance by a's metadata? No: a is the leader, so its rejoin starts one; the
    // pending member blocks completion until it expires.
    assert!(joins(&mut c).is_empty());
    c.tick(10 + SESSION as i64);
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.member_id, a);
    c.join(20_000, 5, join_req(&pending, &["range"]));
    assert_eq!(joins(&mut c)[0].1.error, Some(GroupError::UnknownMemberId));
}

#[test]
fn twenty_members_joining_at_once_converge_to_one_generation() {
    let mut c = coord(0);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            c.join(0, i, join_req("", &["range"]));
            joins(&mut c)[0].1.member_id.clone()
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        c.join(1, 100 + i as u64, join_req(id, &["range"]));
    }
    let j = joins(&mut c);
    assert_eq!(j.len(), 20, "every join answered once");
    assert!(j
        .iter()
        .all(|(_, r)| r.error.is_none() && r.generation_id == 1));
    let leaders: std::collections::BTreeSet<_> = j.iter().map(|(_, r)| r.leader.clone()).collect();
    assert_eq!(leaders.len(), 1);
    let ids_set: std::collections::BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids_set.len(), 20, "member ids are unique");
}

fn static_req(member: &str, instance: &str) -> JoinRequest {
    JoinRequest {
        instance_id: Some(instance.into()),
        ..join_req(member, &["range"])
    }
}

#[test]
fn static_member_restart_keeps_its_assignment_without_rebalance() {
    let mut c = coord(0);
    c.join(0, 1, static_req("", "i-a"));
    let a = joins(&mut c)[0].1.member_id.clone();
    c.join(0, 2, static_req("", "i-b"));
    let b = joins(&mut c)
        .into_iter()
        .find(|(id, _)| *id == 2)
        .map(|(_, r)| r.member_id);
    // The first static member completed generation 1 alone; b's join started generation 2.
    let (j, _, _) = actions(&mut c);
    let _ = (j, b);
    c.join(1, 3, static_req(&a, "i-a"));
    let j = joins(&mut c);
    let b = j
        .iter()
        .find(|(_, r)| r.member_id != a)
        .unwrap()
        .1
        .member_id
        .clone();
    let leader = j[0].1.leader.clone();
    let follower = if leader == a { b.clone() } else { a.clone() };
    let follower_instance = if follower == a { "i-a" } else { "i-b" };
    c.sync(
        2,
        4,
        SyncRequest {
            instance_id: Some(if leader == a { "i-a" } else { "i-b" }.into()),
            ..sync_req(&leader, 2, &[(&a, "A"), (&b, "B")])
        },
    );
    actions(&mut c);
    assert_eq!(state(&c), GroupState::Stable);
    // The follower restarts: unknown member id, same instance id.
    c.join(100, 5, static_req("", follower_instance));
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    let r = &j[0].1;
    assert_eq!((r.error, r.generation_id), (None, 2));
    assert_ne!(
        r.member_id, follower,
        "a new member id replaces the old one"
    );
    assert_eq!(state(&c), GroupState::Stable, "no rebalance");
    c.sync(
        101,
        6,
        SyncRequest {
            instance_id: Some(follower_instance.into()),
            ..sync_req(&r.member_id, 2, &[])
        },
    );
    let (_, s, _) = actions(&mut c);
    let expected = if follower == a { "A" } else { "B" };
    assert_eq!(s[0].1.assignment, Bytes::from(expected));
    // The old incarnation is fenced.
    let mut old = hb(&follower, 2);
    old.instance_id = Some(follower_instance.into());
    assert_eq!(c.heartbeat(102, &old), Err(GroupError::FencedInstanceId));
}

#[test]
fn static_member_leave_by_instance_id_and_fenced_leave() {
    let mut c = coord(0);
    c.join(0, 1, static_req("", "i-a"));
    let a = joins(&mut c)[0].1.member_id.clone();
    let fenced = c.leave(
        1,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![("other".into(), Some("i-a".into()))],
        },
    );
    assert_eq!(fenced.members[0].2, Some(GroupError::FencedInstanceId));
    let ok = c.leave(
        1,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![(String::new(), Some("i-a".into()))],
        },
    );
    assert_eq!(ok.members[0].2, None);
    assert_eq!(state(&c), GroupState::Empty);
    let _ = a;
}

#[test]
fn static_members_that_do_not_rejoin_stay_until_their_session_expires() {
    let mut c = coord(0);
    c.join(0, 1, static_req("", "i-a"));
    let a = joins(&mut c)[0].1.member_id.clone();
    c.sync(
        0,
        2,
        SyncRequest {
            instance_id: Some("i-a".into()),
            ..sync_req(&a, 1, &[(&a, "A")])
        },
    );
    actions(&mut c);
    let b = first_join(&mut c, 1, 3);
    c.tick(REBALANCE as i64 - 1);
    // a's session (10 s) expired first: it is removed then and b completes alone.
    let j = joins(&mut c);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0].1.member_id, b);
}

#[test]
fn group_max_size_is_enforced() {
    let mut c = GroupCoordinator::new(
        GroupSettings {
            max_size: 1,
            initial_rebalance_delay_ms: 0,
            ..Default::default()
        },
        "t".into(),
    );
    first_join(&mut c, 0, 1);
    joins(&mut c);
    c.join(0, 2, join_req("", &["range"]));
    assert_eq!(
        joins(&mut c)[0].1.error,
        Some(GroupError::GroupMaxSizeReached)
    );
}

fn commit_req(member: &str, generation: i32, offset: i64) -> CommitRequest {
    CommitRequest {
        group_id: "g".into(),
        generation_id: generation,
        member_id: member.into(),
        instance_id: None,
        offsets: vec![("t".into(), 0, offset, 3, Some("meta".into()))],
    }
}

fn commit(
    c: &mut GroupCoordinator,
    now: i64,
    req: &CommitRequest,
) -> Result<Vec<Option<GroupError>>, GroupError> {
    let prepared = c.prepare_commit(now, req)?;
    let out = prepared.iter().map(|r| r.as_ref().err().copied()).collect();
    for r in prepared.into_iter().flatten() {
        c.apply_record(now, r);
    }
    Ok(out)
}

#[test]
fn commits_are_checked_against_membership_and_generation() {
    let mut c = coord(0);
    // A group that does not exist accepts only generation -1 (an assign() consumer).
    assert_eq!(
        commit(&mut c, 0, &commit_req("x", 1, 5)),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(commit(&mut c, 0, &commit_req("", -1, 5)), Ok(vec![None]));
    assert_eq!(
        c.fetch_offsets("g", None, None)[0]
            .2
            .as_ref()
            .unwrap()
            .offset,
        5
    );
    let a = stable_one(&mut c);
    assert_eq!(
        commit(&mut c, 1, &commit_req("ghost", 1, 6)),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        commit(&mut c, 1, &commit_req(&a, 0, 6)),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(commit(&mut c, 1, &commit_req(&a, 1, 7)), Ok(vec![None]));
    let f = c.fetch_offsets("g", Some(&[("t".into(), vec![0, 1])]), None);
    assert_eq!(
        f[0].2.clone().map(|c| CommittedOffset { position: 0, ..c }),
        Some(CommittedOffset {
            offset: 7,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp_ms: 1,
            position: 0,
        })
    );
    assert_eq!(f[1].2, None, "an uncommitted partition has no offset");
    // Commits during CompletingRebalance are refused; during PreparingRebalance allowed.
    first_join(&mut c, 2, 9);
    assert_eq!(commit(&mut c, 2, &commit_req(&a, 1, 8)), Ok(vec![None]));
    c.join(2, 10, join_req(&a, &["range"]));
    joins(&mut c);
    assert_eq!(
        commit(&mut c, 3, &commit_req(&a, 2, 9)),
        Err(GroupError::RebalanceInProgress)
    );
    let mut big = commit_req("", -1, 1);
    big.group_id = "h".into();
    big.offsets[0].4 = Some("x".repeat(4097));
    assert_eq!(
        commit(&mut c, 0, &big),
        Ok(vec![Some(GroupError::OffsetMetadataTooLarge)])
    );
    let mut empty = commit_req("", -1, 1);
    empty.group_id = String::new();
    assert_eq!(commit(&mut c, 0, &empty), Err(GroupError::InvalidGroupId));
}

#[test]
fn delete_group_refuses_non_empty_and_removes_offsets() {
    let mut c = coord(0);
    assert_eq!(c.delete_group("g"), Err(GroupError::GroupIdNotFound));
    let a = stable_one(&mut c);
    commit(&mut c, 1, &commit_req(&a, 1, 4)).unwrap();
    assert_eq!(c.delete_group("g"), Err(GroupError::NonEmptyGroup));
    c.leave(
        2,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![(a, None)],
        },
    );
    actions(&mut c);
    assert_eq!(c.delete_group("g"), Ok(()));
    let (_, _, stores) = actions(&mut c);
    assert_eq!(stores, 2, "an offset tombstone and a group tombstone");
    assert!(c.fetch_offsets("g", None, None).is_empty());
    assert_eq!(c.describe_group("g").state, GroupState::Dead);
    assert!(c.list_groups(&[], &[]).is_empty());
}

#[test]
fn offset_delete_refuses_subscribed_topics() {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Encodable;
    let mut c = coord(0);
    let mut sub = bytes::BytesMut::new();
    sub.extend_from_slice(&0i16.to_be_bytes());
    ConsumerProtocolSubscription::default()
        .with_topics(vec![kafka_protocol::protocol::StrBytes::from_static_str(
            "t",
        )])
        .encode(&mut sub, 0)
        .unwrap();
    let mut r = join_req("", &["range"]);
    r.protocols[0].1 = sub.freeze();
    c.join(0, 1, r.clone());
    let a = joins(&mut c)[0].1.member_id.clone();
    r.member_id = a.clone();
    c.join(0, 2, r);
    joins(&mut c);
    c.sync(0, 3, sync_req(&a, 1, &[]));
    let mut req = commit_req(&a, 1, 1);
    req.offsets.push(("u".into(), 0, 2, -1, None));
    commit(&mut c, 0, &req).unwrap();
    let r = c
        .delete_offsets("g", &[("t".into(), 0), ("u".into(), 0)])
        .unwrap();
    assert_eq!(r, vec![Some(GroupError::GroupSubscribedToTopic), None]);
    assert_eq!(c.fetch_offsets("g", None, None).len(), 1);
    assert_eq!(
        c.delete_offsets("nope", &[]),
        Err(GroupError::GroupIdNotFound)
    );
}

#[test]
fn empty_group_offsets_expire_after_retention_and_the_group_goes() {
    let mut c = GroupCoordinator::new(
        GroupSettings {
            offsets_retention_ms: 1_000,
            initial_rebalance_delay_ms: 0,
            ..Default::default()
        },
        "t".into(),
    );
    let a = stable_one(&mut c);
    commit(&mut c, 0, &commit_req(&a, 1, 4)).unwrap();
    assert_eq!(
        c.expire_offsets(10_000),
        0,
        "a stable group's offsets never expire"
    );
    c.leave(
        20_000,
        &LeaveRequest {
            group_id: "g".into(),
            members: vec![(a, None)],
        },
    );
    actions(&mut c);
    assert_eq!(
        c.expire_offsets(20_999),
        0,
        "retention counts from when the group became empty"
    );
    assert_eq!(c.expire_offsets(21_000), 1);
    assert_eq!(c.describe_group("g").state, GroupState::Dead);
    // Standalone commits expire by commit time.
    commit(
        &mut c,
        30_000,
        &CommitRequest {
            group_id: "s".into(),
            ..commit_req("", -1, 1)
        },
    )
    .unwrap();
    assert_eq!(c.expire_offsets(30_999), 0);
    assert_eq!(c.expire_offsets(31_000), 1);
}

#[test]
fn offsets_of_deleted_topics_are_removed() {
    let mut c = coord(0);
    let mut req = commit_req("", -1, 1);
    req.offsets.push(("gone".into(), 0, 2, -1, None));
    commit(&mut c, 0, &req).unwrap();
    assert_eq!(c.remove_topics(|t| t == "t"), 1);
    let left = c.fetch_offsets("g", None, None);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "t");
}

#[test]
fn stored_records_replay_to_the_same_state() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    let mut records = Vec::new();
    // Re-run the stable transition to capture its group record.
    c.sync(1, 9, sync_req(&a, 1, &[]));
    actions(&mut c);
    let prepared = c.prepare_commit(2, &commit_req(&a, 1, 11)).unwrap();
    records.extend(prepared.into_iter().flatten());
    first_join(&mut c, 3, 10);
    c.join(3, 11, join_req(&a, &["range"]));
    let j = joins(&mut c);
    let b = j
        .iter()
        .find(|(_, r)| r.member_id != a)
        .unwrap()
        .1
        .member_id
        .clone();
    c.sync(4, 12, sync_req(&a, 2, &[(&a, "A"), (&b, "B")]));
    for action in c.take_actions() {
        if let Action::Store(r) = action {
            records.push(r);
        }
    }
    let mut restored = coord(0);
    for r in records {
        let (k, v) = r.encode();
        restored.apply_record(100, OffsetsRecord::decode(&k, v.as_deref()).unwrap());
    }
    let d = restored.describe_group("g");
    assert_eq!(d.state, GroupState::Stable);
    assert_eq!(d.members.len(), 2);
    assert_eq!(
        restored.fetch_offsets("g", None, None)[0]
            .2
            .as_ref()
            .unwrap()
            .offset,
        11
    );
    // Restored members heartbeat in the stored generation; silent ones expire.
    assert_eq!(restored.heartbeat(101, &hb(&a, 2)), Ok(()));
    restored.tick(100 + SESSION as i64);
    let d = restored.describe_group("g");
    assert_eq!(d.members.len(), 1, "b never came back");
    assert_eq!(d.state, GroupState::PreparingRebalance);
}

#[test]
fn list_groups_filters_by_state_and_type() {
    let mut c = coord(0);
    stable_one(&mut c);
    commit(
        &mut c,
        0,
        &CommitRequest {
            group_id: "s".into(),
            ..commit_req("", -1, 1)
        },
    )
    .unwrap();
    let all = c.list_groups(&[], &[]);
    assert_eq!(all.len(), 2);
    let stable = c.list_groups(&["stable".into()], &[]);
    assert_eq!(stable.len(), 1);
    assert_eq!(stable[0].protocol_type, "consumer");
    assert_eq!(c.list_groups(&["Empty".into()], &[])[0].group_id, "s");
    assert_eq!(c.list_groups(&[], &["consumer".into()]).len(), 1);
    assert_eq!(c.list_groups(&[], &["classic".into()]).len(), 2);
}

#[test]
fn every_waiting_request_is_answered_once() {
    // A duplicate JoinGroup from the same member answers the first one.
    let mut c = coord(0);
    let a = stable_one(&mut c);
    first_join(&mut c, 0, 3);
    c.join(0, 4, join_req(&a, &["range"]));
    let _ = joins(&mut c);
    c.join(0, 5, join_req(&a, &["range"]));
    let j = joins(&mut c);
    assert_eq!(j.iter().filter(|(id, _)| *id == 5).count(), 1);
}

#[test]
fn static_leader_restart_in_stable_keeps_the_group_stable() {
    let mut c = coord(0);
    c.join(0, 1, static_req("", "i-a"));
    let a = joins(&mut c)[0].1.member_id.clone();
    let sync = |m: &str| SyncRequest {
        instance_id: Some("i-a".into()),
        ..sync_req(m, 1, &[(m, "A")])
    };
    c.sync(0, 2, sync(&a));
    actions(&mut c);
    c.join(5, 3, static_req("", "i-a"));
    let j = joins(&mut c);
    let r = &j[0].1;
    assert_eq!(state(&c), GroupState::Stable);
    assert_eq!(r.generation_id, 1);
    assert_ne!(r.member_id, a);
    // The old leader id: a pre-v9 client acts as a follower and just syncs.
    assert_eq!(r.leader, a);
    assert!(r.skip_assignment);
    let new = r.member_id.clone();
    c.sync(
        6,
        4,
        SyncRequest {
            instance_id: Some("i-a".into()),
            ..sync_req(&new, 1, &[])
        },
    );
    assert_eq!(actions(&mut c).1[0].1.assignment, Bytes::from("A"));
    // A static rejoin that changes the chosen protocol rebalances.
    let mut other = static_req("", "i-a");
    other.protocols = vec![
        ("roundrobin".into(), Bytes::new()),
        ("range".into(), Bytes::new()),
    ];
    c.join(7, 5, other);
    assert_eq!(state(&c), GroupState::CompletingRebalance);
    assert_eq!(
        joins(&mut c)[0].1.protocol_name.as_deref(),
        Some("roundrobin")
    );
}

#[test]
fn unloading_a_partition_answers_waiting_requests_not_coordinator_and_forgets_its_groups() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    // A second member starts a rebalance; its join waits for the first member to rejoin.
    let b = first_join(&mut c, 10, 3);
    let (j, _, _) = actions(&mut c);
    assert!(j.is_empty(), "the join waits: {j:?}");
    assert!(!a.is_empty());
    let unloaded = c.unload_groups(|g| g == "g");
    assert_eq!(unloaded, 1);
    let (j, s, stores) = actions(&mut c);
    assert_eq!(
        stores, 0,
        "nothing is written: the new leader holds the records"
    );
    assert!(s.is_empty());
    let waiting: Vec<_> = j.iter().map(|(id, r)| (*id, r.error)).collect();
    assert_eq!(
        waiting.len(),
        1,
        "the waiting join answered exactly once: {waiting:?}"
    );
    assert!(waiting
        .iter()
        .all(|(_, e)| *e == Some(GroupError::NotCoordinator)));
    assert_eq!(state(&c), GroupState::Dead, "the group is gone from memory");
    assert!(c.fetch_offsets("g", None, None).is_empty());
    assert!(!b.is_empty());
    // Groups of other partitions stay.
    assert_eq!(c.unload_groups(|_| false), 0);
}

/// An assignment the coordinator could not store is not kept: the group rebalances (Kafka's
/// `resetAndPropagateAssignmentError`), so a later SyncGroup or heartbeat of this generation
/// never hands out an assignment a coordinator taking over would not know of (simulator seed
/// 594: a full disk refused the record, and a member syncing a moment later got it anyway).
#[test]
fn an_assignment_that_could_not_be_stored_is_dropped_and_the_group_rebalances() {
    let mut c = coord(0);
    let a = stable_one(&mut c);
    c.assignment_not_stored(0, "g");
    assert_eq!(state(&c), GroupState::PreparingRebalance);
    c.sync(1, 3, sync_req(&a, 1, &[]));
    let (_, s, _) = actions(&mut c);
    assert_eq!(s[0].1.error, Some(GroupError::RebalanceInProgress));
    assert_eq!(
        c.heartbeat(1, &hb(&a, 1)),
        Err(GroupError::RebalanceInProgress)
    );
    assert!(c.describe_group("g").members[0].assignment.is_empty());
    // The member rejoins: a new generation, stored afresh.
    c.join(2, 4, join_req(&a, &["range"]));
    let j = joins(&mut c);
    assert_eq!(j[0].1.generation_id, 2);
}

// ----- exactly-once groups (offsets committed in transactions) -----

/// A TxnOffsetCommit of `group` at `offset` by `producer`, as the service runs it: prepared
/// (no member named: the producer knows only the group id), stored in the producer's
/// transactional batch, then held until the transaction ends. Returns the stored records.
fn txn_commit(
    c: &mut GroupCoordinator,
    now: i64,
    producer: i64,
    group: &str,
    offset: i64,
) -> Vec<OffsetsRecord> {
    let req = CommitRequest {
        group_id: group.into(),
        ..commit_req("", -1, offset)
    };
    let records: Vec<OffsetsRecord> = c
        .prepare_txn_commit(now, &req)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(records.len(), 1);
    c.stage_txn_offsets(producer, records.clone());
    records
}

/// `(group, offset, exactly_once)` of every committed offset, as the lag metrics read them.
fn lag_inputs(c: &GroupCoordinator) -> Vec<(String, i64, bool)> {
    c.all_offsets()
        .into_iter()
        .map(|o| (o.group, o.offset, o.exactly_once))
        .collect()
}

#[test]
fn a_group_becomes_exactly_once_when_its_transactional_offsets_commit_not_when_they_abort() {
    let mut c = coord(0);
    commit(
        &mut c,
        0,
        &CommitRequest {
            group_id: "plain".into(),
            ..commit_req("", -1, 4)
        },
    )
    .unwrap();
    txn_commit(&mut c, 1, 7, "g", 5);
    assert!(!c.is_exactly_once("g"), "pending: nothing decided yet");
    assert_eq!(lag_inputs(&c), vec![("plain".into(), 4, false)]);

    assert_eq!(c.complete_txn(2, 7, false, |_| true), 0);
    assert!(!c.is_exactly_once("g"), "an abort commits nothing");
    assert_eq!(lag_inputs(&c), vec![("plain".into(), 4, false)]);

    txn_commit(&mut c, 3, 8, "g", 6);
    txn_commit(&mut c, 3, 8, "elsewhere", 1);
    // The marker is on g's offsets partition only: the other group's offsets stay pending.
    assert_eq!(c.complete_txn(4, 8, true, |g| g == "g"), 1);
    assert!(c.is_exactly_once("g"));
    assert!(!c.is_exactly_once("elsewhere"));
    assert!(c.txn_offset_pending("elsewhere", "t", 0));
    assert_eq!(
        lag_inputs(&c),
        vec![("g".into(), 6, true), ("plain".into(), 4, false)]
    );

    tracing::info!("--- a plain commit of the group later does not make it plain again");
    commit(
        &mut c,
        5,
        &CommitRequest {
            group_id: "g".into(),
            ..commit_req("", -1, 9)
        },
    )
    .unwrap();
    assert_eq!(lag_inputs(&c)[0], ("g".into(), 9, true));
    // A rebalance of the group (a new group record) keeps it too.
    let a = {
        let mut r = join_req("", &["range"]);
        r.require_known_member_id = false;
        c.join(6, 1, r);
        joins(&mut c)[0].1.member_id.clone()
    };
    c.sync(6, 2, sync_req(&a, 1, &[(&a, "A")]));
    actions(&mut c);
    assert_eq!(state(&c), GroupState::Stable);
    assert!(c.is_exactly_once("g"));
}

/// The coordinator taking over an offsets partition replays its log through the same calls
/// as `service::task::own`: plain records applied, transactional ones held, markers ending them. It
/// must find the same exactly-once groups, whatever group records follow the commit.
#[test]
fn replaying_a_committed_transactional_offset_commit_makes_the_group_exactly_once_again() {
    enum Logged {
        Record(OffsetsRecord),
        Transactional(i64, OffsetsRecord),
        Marker(i64, bool),
    }
    let mut c = coord(0);
    let mut log = Vec::new();
    for r in txn_commit(&mut c, 0, 7, "g", 5) {
        log.push(Logged::Transactional(7, r));
    }
    for r in txn_commit(&mut c, 0, 8, "aborted", 3) {
        log.push(Logged::Transactional(8, r));
    }
    log.push(Logged::Marker(7, true));
    log.push(Logged::Marker(8, false));
    c.complete_txn(1, 7, true, |_| true);
    c.complete_txn(1, 8, false, |_| true);
    // The group's consumers rebalance after the commit: group records follow it in the log.
    let a = {
        let mut r = join_req("", &["range"]);
        r.require_known_member_id = false;
        c.join(2, 1, r);
        joins(&mut c)[0].1.member_id.clone()
    };
    c.sync(2, 2, sync_req(&a, 1, &[(&a, "A")]));
    for action in c.take_actions() {
        if let Action::Store(r) = action {
            log.push(Logged::Record(r));
        }
    }
    assert!(c.is_exactly_once("g"));

    let mut restored = coord(0);
    for entry in log {
        let decoded = |r: OffsetsRecord| {
            let (k, v) = r.encode();
            OffsetsRecord::decode(&k, v.as_deref()).unwrap()
        };
        match entry {
            Logged::Record(r) => restored.apply_record(100, decoded(r)),
            Logged::Transactional(producer, r) => {
                restored.stage_txn_offsets(producer, vec![decoded(r)])
            }
            Logged::Marker(producer, commit) => {
                restored.complete_txn(100, producer, commit, |_| true);
            }
        }
    }
    assert_eq!(restored.describe_group("g").state, GroupState::Stable);
    assert!(restored.is_exactly_once("g"), "survives the group record");
    assert!(!restored.is_exactly_once("aborted"));
    assert_eq!(lag_inputs(&restored), lag_inputs(&c));
    assert_eq!(lag_inputs(&restored), vec![("g".into(), 5, true)]);
}

#[test]
fn the_exactly_once_mark_goes_with_the_group_deleted_expired_or_unloaded() {
    let mut c = GroupCoordinator::new(
        GroupSettings {
            offsets_retention_ms: 1_000,
            initial_rebalance_delay_ms: 0,
            ..Default::default()
        },
        "t".into(),
    );
    let exactly_once = |c: &mut GroupCoordinator, now: i64| {
        txn_commit(c, now, 7, "g", 5);
        c.complete_txn(now, 7, true, |_| true);
        assert!(c.is_exactly_once("g"));
    };

    tracing::info!("--- deleted: the mark goes, live and in a replay of what was stored");
    exactly_once(&mut c, 0);
    let mut stored = txn_commit(&mut c, 0, 9, "g", 6);
    c.complete_txn(0, 9, true, |_| true);
    assert_eq!(c.delete_group("g"), Ok(()));
    assert!(!c.is_exactly_once("g"));
    for action in c.take_actions() {
        if let Action::Store(r) = action {
            stored.push(r);
        }
    }
    let mut restored = coord(0);
    let mut records = stored.into_iter();
    restored.stage_txn_offsets(9, records.next().into_iter().collect());
    restored.complete_txn(1, 9, true, |_| true);
    assert!(restored.is_exactly_once("g"));
    for r in records {
        restored.apply_record(1, r);
    }
    assert!(!restored.is_exactly_once("g"), "the tombstones clear it");
    assert!(restored.all_offsets().is_empty());
    // Committing plainly to a group of the same id later makes a plain group.
    commit(&mut c, 1, &commit_req("", -1, 2)).unwrap();
    assert_eq!(lag_inputs(&c), vec![("g".into(), 2, false)]);
    assert_eq!(c.delete_group("g"), Ok(()));

    tracing::info!("--- expired: an empty group's offsets and the group go, the mark with them");
    exactly_once(&mut c, 10_000);
    assert_eq!(c.expire_offsets(11_000), 1);
    assert_eq!(c.describe_group("g").state, GroupState::Dead);
    assert!(!c.is_exactly_once("g"));
    commit(&mut c, 12_000, &commit_req("", -1, 2)).unwrap();
    assert!(!c.is_exactly_once("g"));
    assert_eq!(c.delete_group("g"), Ok(()));

    tracing::info!("--- unloaded: forgotten with the group; the next leader replays it");
    exactly_once(&mut c, 20_000);
    assert_eq!(c.unload_groups(|g| g == "g"), 1);
    assert!(!c.is_exactly_once("g"));
    assert!(c.all_offsets().is_empty());
}

#[test]
fn a_transactional_offset_commit_ending_after_a_later_plain_commit_does_not_replace_it() {
    let mut c = coord(0);
    let plain = |c: &mut GroupCoordinator, now, offset| {
        commit(
            c,
            now,
            &CommitRequest {
                group_id: "g".into(),
                ..commit_req("", -1, offset)
            },
        )
        .unwrap();
    };
    let committed = |c: &GroupCoordinator| {
        c.fetch_offsets("g", Some(&[("t".into(), vec![0])]), None)[0]
            .2
            .as_ref()
            .map(|o| o.offset)
    };
    // Transactional 5 written, then plain 9, then the transaction commits: 9 was written
    // later in the log and stays (as in Kafka).
    txn_commit(&mut c, 1, 7, "g", 5);
    plain(&mut c, 2, 9);
    assert_eq!(c.complete_txn(3, 7, true, |_| true), 1);
    assert_eq!(committed(&c), Some(9));
    // Plain 10, then transactional 12 written after it: the commit applies 12.
    plain(&mut c, 4, 10);
    txn_commit(&mut c, 5, 8, "g", 12);
    assert_eq!(committed(&c), Some(10), "pending until its marker");
    c.complete_txn(6, 8, true, |_| true);
    assert_eq!(committed(&c), Some(12));
    // The same history replayed into a fresh core gives the same answer.
    let mut r = coord(0);
    txn_commit(&mut r, 1, 7, "g", 5);
    plain(&mut r, 2, 9);
    r.complete_txn(3, 7, true, |_| true);
    assert_eq!(committed(&r), Some(9));
}

/// Commits `offset` as an assign() consumer, its batch ending at `last_offset` of the offsets
/// partition, whose high watermark is `high_watermark` when it is applied.
fn commit_stored(c: &mut GroupCoordinator, offset: i64, last_offset: i64, high_watermark: i64) {
    let prepared = c.prepare_commit(0, &commit_req("", -1, offset)).unwrap();
    for r in prepared.into_iter().flatten() {
        c.apply_stored(
            0,
            r,
            Some(Stored {
                last_offset,
                high_watermark,
            }),
        );
    }
}

fn fetched_at(c: &GroupCoordinator, high_watermark: i64) -> Option<i64> {
    c.fetch_offsets("g", Some(&[("t".into(), vec![0])]), Some(high_watermark))[0]
        .2
        .as_ref()
        .map(|o| o.offset)
}

/// OffsetFetch shows a commit only once its batch is below the offsets partition's high
/// watermark (fsynced on every in-sync replica): one a failover could take back is not shown,
/// the commit it replaced is, and a first commit not durable yet shows as none.
#[test]
fn a_commit_is_fetched_only_once_durable() {
    let mut c = coord(0);
    commit_stored(&mut c, 5, 10, 10);
    assert_eq!(fetched_at(&c, 10), None, "nothing durable yet");
    assert!(c.fetch_offsets("g", None, Some(10)).is_empty());
    assert_eq!(fetched_at(&c, 11), Some(5));
    commit_stored(&mut c, 7, 11, 11);
    commit_stored(&mut c, 9, 12, 11);
    assert_eq!(fetched_at(&c, 11), Some(5), "neither 7 nor 9 durable");
    assert_eq!(fetched_at(&c, 12), Some(7));
    assert_eq!(fetched_at(&c, 13), Some(9));
    assert_eq!(
        c.fetch_offsets("g", None, Some(11))[0]
            .2
            .as_ref()
            .map(|o| o.offset),
        Some(5)
    );
    assert_eq!(
        c.fetch_offsets("g", None, Some(13))[0]
            .2
            .as_ref()
            .map(|o| o.offset),
        Some(9)
    );
    // Without a high watermark (the lag metrics, the tests), the newest commit.
    assert_eq!(
        c.fetch_offsets("g", None, None)[0]
            .2
            .as_ref()
            .map(|o| o.offset),
        Some(9)
    );
}

/// What a commit replaced is kept only while that commit may not be durable: once the high
/// watermark passed it (as seen at a later commit), only the newer commits are tracked.
#[test]
fn what_durable_commits_replaced_is_forgotten() {
    let mut c = coord(0);
    commit_stored(&mut c, 1, 0, 0);
    for (i, offset) in (2..50).enumerate() {
        let last = i as i64 + 1;
        commit_stored(&mut c, offset, last, last);
    }
    assert_eq!(fetched_at(&c, 48), Some(48), "48 durable, 49 not");
    assert_eq!(fetched_at(&c, 49), Some(49));
    assert!(c.unstable_entries() <= 2, "{} kept", c.unstable_entries());
}

/// A partition's offsets deleted and committed again: what its earlier life replaced is not
/// shown while the new commit is not durable.
#[test]
fn a_deleted_offset_does_not_come_back_while_a_new_commit_is_unstable() {
    let mut c = coord(0);
    commit_stored(&mut c, 5, 0, 1);
    commit_stored(&mut c, 6, 1, 1);
    assert_eq!(c.delete_offsets("g", &[("t".into(), 0)]), Ok(vec![None]));
    assert_eq!(fetched_at(&c, 1), None, "deleted");
    commit_stored(&mut c, 8, 3, 2);
    assert_eq!(
        fetched_at(&c, 2),
        None,
        "8 not durable, and nothing before it"
    );
    assert_eq!(fetched_at(&c, 4), Some(8));
}
