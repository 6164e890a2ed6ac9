//! Members of a consumer group ([`GROUP`]) joining, syncing, heartbeating, committing and
//! leaving under faults, as Kafka's classic group protocol runs them (JoinGroup, SyncGroup,
//! Heartbeat, OffsetCommit with the generation, LeaveGroup).
//!
//! Each member lives one or more lives, chosen by the seed: it starts, joins, and when its life
//! ends it either leaves (LeaveGroup) or vanishes as a crashed process does (the coordinator
//! expires it after its session timeout); a later life joins afresh. The leader of a generation
//! assigns the topic's partitions round-robin over the members. A member commits a value for
//! each partition it owns every half second, taken from one counter shared by all members, so
//! the values grow in the order they are sent.
//!
//! The history checks three things with them (invariant 6): within a generation, no partition
//! is assigned to two members (a coordinator that lost the group's state on failover and
//! counted generations again would break it); no commit sent by a member of a generation older
//! than one already seen is accepted (a zombie, stalled past its session timeout, is fenced);
//! and the value read back at the end for each partition is at least the highest acknowledged
//! one. Before any member starts, an offset is committed to the group as a standalone consumer
//! would: a group with committed offsets is never deleted (an empty group without any is, and
//! a group created again counts its generations from 1, as in Kafka), so within one run the
//! group's generations only move forward.

use super::offsets::Committer;
use super::{
    topic_name, Client, Plan, COMMIT_EVERY, NONE, REQUEST_TIMEOUT_MS, RETRY_BACKOFF, TOPIC,
};
use crate::history::History;
use crate::Rng;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

pub const GROUP: &str = "sim-members";
const SESSION_TIMEOUT_MS: i32 = 6_000;
const REBALANCE_TIMEOUT_MS: i32 = 5_000;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How often the lag monitor fetches the group's committed offsets.
const MONITOR_EVERY: Duration = Duration::from_millis(200);
/// The consumer protocol's assignment and subscription version the members write.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

/// Group error codes a member acts on.
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// How a life ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Leave,
    Vanish,
}

/// One life of a member: from `start` to `end` (simulated time).
#[derive(Clone, Debug)]
pub struct Life {
    pub start: Duration,
    pub end: Duration,
    pub how: End,
    /// When (after `start`) the member stalls, and for how long: it neither heartbeats nor
    /// commits, as a consumer stuck in its processing (or a paused process) does, for longer
    /// than its session timeout; then it commits at once, before it heartbeats.
    pub stall: Option<(Duration, Duration)>,
}

/// The members' lives, chosen from the seed by [`plan`].
pub type Members = Vec<Vec<Life>>;

/// Two or three members, each with one or two lives within `span`; the last life lasts to the
/// end of `span` and leaves then. A life may stall once, 7-10 s (past the session timeout).
pub fn plan(rng: &mut Rng, span: (Duration, Duration)) -> Members {
    let total = span.1.saturating_sub(span.0).as_millis() as u64;
    let stall = |rng: &mut Rng, length: Duration| {
        rng.chance(0.4).then(|| {
            let at = rng.millis(0, (length.as_millis() as u64).max(1));
            (at, rng.millis(7_000, 10_000))
        })
    };
    (0..2 + rng.below(2))
        .map(|_| {
            let start = span.0 + rng.millis(0, total / 4);
            if rng.chance(0.5) {
                return vec![Life {
                    start,
                    end: span.1,
                    how: End::Leave,
                    stall: stall(rng, span.1.saturating_sub(start)),
                }];
            }
            let end = start + rng.millis(2_000, total / 2);
            let restart = (end + rng.millis(0, 8_000)).min(span.1);
            vec![
                Life {
                    start,
                    end,
                    how: if rng.chance(0.5) {
                        End::Leave
                    } else {
                        End::Vanish
                    },
                    stall: stall(rng, end - start),
                },
                Life {
                    start: restart,
                    end: span.1,
                    how: End::Leave,
                    stall: stall(rng, span.1.saturating_sub(restart)),
                },
            ]
        })
        .collect()
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// What JoinGroup gave this member.
struct Joined {
    generation: i32,
    member_id: String,
    /// The other members and this one, when this one leads.
    members: Option<Vec<String>>,
}

/// A member's connection to the group: its coordinator and its member id.
struct Member {
    name: String,
    client: Client,
    committer: Committer,
    member_id: String,
}

impl Member {
    /// Sends a group request to the coordinator; a transport failure forgets it.
    async fn call<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        timeout_ms: u64,
    ) -> Result<R::Response, String> {
        let coordinator = self.committer.coordinator(&mut self.client).await?;
        match self
            .client
            .call(&coordinator, request, i16::MAX, timeout_ms)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => Err(self.committer.failed(&mut self.client, &coordinator, e)),
        }
    }

    /// A refusal's code; one that is not about the group's membership (NOT_COORDINATOR,
    /// COORDINATOR_LOAD_IN_PROGRESS, ...) also has the coordinator looked up again.
    fn refused(&mut self, code: i16) -> Option<i16> {
        if !matches!(
            code,
            ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS | MEMBER_ID_REQUIRED
        ) {
            self.committer.coordinator_lost();
        }
        Some(code)
    }

    async fn join(&mut self) -> Result<Joined, Option<i16>> {
        let mut metadata = BytesMut::new();
        metadata.put_i16(CONSUMER_PROTOCOL_VERSION);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str(TOPIC)])
            .encode(&mut metadata, CONSUMER_PROTOCOL_VERSION)
            .map_err(|_| None)?;
        let request = JoinGroupRequest::default()
            .with_group_id(self.committer.group_id())
            .with_session_timeout_ms(SESSION_TIMEOUT_MS)
            .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(metadata.freeze())]);
        let timeout = REQUEST_TIMEOUT_MS + REBALANCE_TIMEOUT_MS as u64;
        let r = self.call(&request, timeout).await.map_err(|_| None)?;
        if r.error_code == MEMBER_ID_REQUIRED || r.error_code == NONE {
            self.member_id = r.member_id.to_string();
        }
        if r.error_code != NONE {
            return Err(self.refused(r.error_code));
        }
        let members = (r.leader.as_str() == r.member_id.as_str()).then(|| {
            r.members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect::<Vec<_>>()
        });
        Ok(Joined {
            generation: r.generation_id,
            member_id: r.member_id.to_string(),
            members,
        })
    }

    /// SyncGroup: the leader hands out `assignments`; every member gets its partitions.
    async fn sync(
        &mut self,
        generation: i32,
        assignments: Vec<SyncGroupRequestAssignment>,
    ) -> Result<Vec<i32>, Option<i16>> {
        let request = SyncGroupRequest::default()
            .with_group_id(self.committer.group_id())
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range")))
            .with_assignments(assignments);
        let timeout = REQUEST_TIMEOUT_MS + REBALANCE_TIMEOUT_MS as u64;
        let r = self.call(&request, timeout).await.map_err(|_| None)?;
        if r.error_code != NONE {
            return Err(self.refused(r.error_code));
        }
        Ok(decode_assignment(&r.assignment))
    }

    async fn heartbeat(&mut self, generation: i32) -> Result<(), Option<i16>> {
        let request = HeartbeatRequest::default()
            .with_group_id(self.committer.group_id())
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()));
        let r = self
            .call(&request, REQUEST_TIMEOUT_MS)
            .await
            .map_err(|_| None)?;
        if r.error_code != NONE {
            return Err(self.refused(r.error_code));
        }
        Ok(())
    }

    /// One LeaveGroup attempt (a member that cannot reach its coordinator is expired instead).
    async fn leave(&mut self) {
        let request = LeaveGroupRequest::default()
            .with_group_id(self.committer.group_id())
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))]);
        let _ = self.call(&request, REQUEST_TIMEOUT_MS).await;
    }
}

/// The partitions of `members`' assignment encoded for SyncGroup: round-robin over the members
/// in member id order.
fn assign(members: &[String], partitions: i32) -> Vec<SyncGroupRequestAssignment> {
    let mut sorted = members.to_vec();
    sorted.sort();
    let mut owned: BTreeMap<&str, Vec<i32>> = sorted.iter().map(|m| (m.as_str(), vec![])).collect();
    for p in 0..partitions {
        let m = &sorted[usize::try_from(p).unwrap_or(0) % sorted.len().max(1)];
        owned.entry(m.as_str()).or_default().push(p);
    }
    owned
        .into_iter()
        .map(|(member, partitions)| {
            let mut buf = BytesMut::new();
            buf.put_i16(CONSUMER_PROTOCOL_VERSION);
            // A small assignment always encodes.
            let _ = ConsumerProtocolAssignment::default()
                .with_assigned_partitions(vec![TopicPartition::default()
                    .with_topic(topic_name(TOPIC))
                    .with_partitions(partitions)])
                .encode(&mut buf, CONSUMER_PROTOCOL_VERSION);
            SyncGroupRequestAssignment::default()
                .with_member_id(StrBytes::from_string(member.to_owned()))
                .with_assignment(buf.freeze())
        })
        .collect()
}

/// This member's partitions of the workload topic in a SyncGroup answer (none when it cannot
/// be read: the history then sees an empty assignment).
fn decode_assignment(bytes: &Bytes) -> Vec<i32> {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = bytes::Buf::get_i16(&mut buf);
    let Ok(a) =
        ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, CONSUMER_PROTOCOL_VERSION))
    else {
        return Vec::new();
    };
    let mut partitions: Vec<i32> = a
        .assigned_partitions
        .iter()
        .filter(|t| t.topic.0.as_str() == TOPIC)
        .flat_map(|t| t.partitions.iter().copied())
        .collect();
    partitions.sort_unstable();
    partitions
}

/// Commits offset 0 of partition 0 to the group (generation -1, as a standalone consumer does),
/// retrying until acknowledged, then runs every member through its lives.
pub(super) async fn run_all(
    plan: Rc<Plan>,
    partitions: Rc<Cell<i32>>,
    history: Rc<RefCell<History>>,
) {
    let mut client = Client::new("sim-members-anchor".into(), plan.nodes);
    let mut committer = Committer::new(GROUP);
    let anchor = BTreeMap::from([(0, 0)]);
    loop {
        history.borrow_mut().commit_sent(GROUP, &anchor);
        if committer
            .commit(&mut client, (-1, ""), &anchor)
            .await
            .is_ok()
        {
            history.borrow_mut().commit_acked(GROUP, &anchor);
            break;
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
    let counter = Rc::new(Cell::new(0));
    let mut tasks = vec![tokio::task::spawn_local(monitor(
        plan.clone(),
        partitions.clone(),
        history.clone(),
    ))];
    for (id, lives) in plan.members.iter().enumerate() {
        tasks.push(tokio::task::spawn_local(run(
            plan.clone(),
            id,
            lives.clone(),
            partitions.clone(),
            counter.clone(),
            history.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A lag monitor (as `kafka-consumer-groups --describe` or Burrow runs): fetches the group's
/// committed offsets every [`MONITOR_EVERY`] while the members live, for the history to check
/// that no offset it was shown is taken back.
async fn monitor(plan: Rc<Plan>, partitions: Rc<Cell<i32>>, history: Rc<RefCell<History>>) {
    let mut client = Client::new("sim-members-monitor".into(), plan.nodes);
    let mut committer = Committer::new(GROUP);
    while now() < plan.produce_until {
        let asked_at = now();
        if let Ok(committed) = committer.fetch(&mut client, partitions.get()).await {
            history
                .borrow_mut()
                .member_offsets_fetched(asked_at, committed);
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}

/// One member through all its lives.
async fn run(
    plan: Rc<Plan>,
    id: usize,
    lives: Vec<Life>,
    partitions: Rc<Cell<i32>>,
    counter: Rc<Cell<i64>>,
    history: Rc<RefCell<History>>,
) {
    for (n, life) in lives.into_iter().enumerate() {
        if let Some(wait) = life.start.checked_sub(now()) {
            tokio::time::sleep(wait).await;
        }
        let name = format!("sim-member-{id}.{n}");
        let mut member = Member {
            client: Client::new(name.clone(), plan.nodes),
            committer: Committer::new(GROUP),
            member_id: String::new(),
            name,
        };
        live(&mut member, &life, &partitions, &counter, &history).await;
        if life.how == End::Leave {
            member.leave().await;
        }
        history.borrow_mut().event(format!(
            "{} ({}) {}",
            member.name,
            member.member_id,
            if life.how == End::Leave {
                "left"
            } else {
                "vanished"
            }
        ));
    }
}

/// Joins, syncs and stays in the group (heartbeats, commits) until the life ends, rejoining
/// whenever the coordinator says so.
async fn live(
    member: &mut Member,
    life: &Life,
    partitions: &Rc<Cell<i32>>,
    counter: &Rc<Cell<i64>>,
    history: &Rc<RefCell<History>>,
) {
    let mut stall = life
        .stall
        .map(|(after, length)| (life.start + after, length));
    'join: while now() < life.end {
        let joined = match member.join().await {
            Ok(j) => j,
            Err(code) => {
                if code == Some(UNKNOWN_MEMBER_ID) {
                    member.member_id.clear();
                }
                if code != Some(MEMBER_ID_REQUIRED) {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                continue;
            }
        };
        let assignments = joined
            .members
            .as_ref()
            .map(|m| assign(m, partitions.get()))
            .unwrap_or_default();
        let mine = match member.sync(joined.generation, assignments).await {
            Ok(p) => p,
            Err(code) => {
                if code == Some(UNKNOWN_MEMBER_ID) {
                    member.member_id.clear();
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        };
        history
            .borrow_mut()
            .group_synced(joined.generation, &joined.member_id, &mine);
        // As a consumer does on assignment: where to start from.
        if !mine.is_empty() {
            let asked_at = now();
            if let Ok(committed) = member
                .committer
                .fetch(&mut member.client, partitions.get())
                .await
            {
                history
                    .borrow_mut()
                    .member_offsets_fetched(asked_at, committed);
            }
        }
        let mut next_commit = now();
        while now() < life.end {
            if now() >= next_commit && !mine.is_empty() {
                next_commit = now() + COMMIT_EVERY;
                counter.set(counter.get() + 1);
                let positions: BTreeMap<i32, i64> =
                    mine.iter().map(|p| (*p, counter.get())).collect();
                let sent_at = now();
                history.borrow_mut().commit_sent(GROUP, &positions);
                let outcome = member
                    .committer
                    .commit(
                        &mut member.client,
                        (joined.generation, &joined.member_id),
                        &positions,
                    )
                    .await;
                if outcome.is_ok() {
                    history.borrow_mut().member_commit_acked(
                        GROUP,
                        joined.generation,
                        sent_at,
                        &positions,
                    );
                }
            }
            if let Some((at, length)) = stall.filter(|(at, _)| now() >= *at) {
                stall = None;
                history.borrow_mut().event(format!(
                    "{} stalls for {:.3}s from {:.3}",
                    member.name,
                    length.as_secs_f64(),
                    at.as_secs_f64()
                ));
                tokio::time::sleep(length).await;
                next_commit = now();
                continue;
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            match member.heartbeat(joined.generation).await {
                Ok(()) | Err(None) => {}
                Err(Some(UNKNOWN_MEMBER_ID)) => {
                    member.member_id.clear();
                    continue 'join;
                }
                Err(Some(ILLEGAL_GENERATION | REBALANCE_IN_PROGRESS)) => continue 'join,
                Err(Some(_)) => tokio::time::sleep(RETRY_BACKOFF).await,
            }
        }
    }
}
