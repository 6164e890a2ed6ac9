//! Tests of [`ReplicaCore`]: one rule per test, asserting the exact commands, then a property
//! test that drives random event sequences (with a model controller committing or refusing
//! proposals) and checks the core's invariants after every step.
#![allow(clippy::unwrap_used)]

use crate::core::*;
use proptest::prelude::*;
use spate_types::{LeaderEpoch, NodeId, Offset};

const L: NodeId = NodeId(1); // this node
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);
const D: NodeId = NodeId(4);
const LAG_MS: i64 = 30_000;

fn settings() -> ReplicaSettings {
    ReplicaSettings {
        local: L,
        replica_lag_time_max_ms: LAG_MS,
        min_insync_replicas: 2,
        fsync_required: true,
    }
}

fn state(
    leader: Option<NodeId>,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: &[NodeId],
    isr: &[NodeId],
) -> LeaderAndIsr {
    LeaderAndIsr {
        leader,
        leader_epoch: LeaderEpoch(leader_epoch),
        partition_epoch,
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
    }
}

fn o(n: i64) -> Offset {
    Offset(n)
}

/// Steps and returns the commands, requiring the event to have been applied.
fn run(core: &mut ReplicaCore, now_ms: i64, event: Event) -> Vec<Command> {
    let step = core.step(now_ms, event.clone());
    assert_eq!(step.outcome, Outcome::Applied, "{event:?}");
    step.commands
}

fn fetch(core: &mut ReplicaCore, now_ms: i64, replica: NodeId, offset: i64) -> Vec<Command> {
    run(
        core,
        now_ms,
        Event::FollowerFetch {
            replica,
            fetch_offset: o(offset),
        },
    )
}

fn propose(partition_epoch: i32, isr: &[NodeId]) -> Command {
    Command::ProposeIsr {
        leader_epoch: LeaderEpoch(1),
        partition_epoch,
        isr: isr.to_vec(),
    }
}

/// Leader in epoch 1 (partition epoch 5) of replicas L, B, C, all in the ISR, at time 0; its
/// log ends at 10, all flushed, and the checkpointed high watermark is 10.
fn leader3() -> ReplicaCore {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(10));
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 5, &[L, B, C], &[L, B, C])),
    );
    assert_eq!(
        cmds,
        [Command::BecomeLeader {
            leader_epoch: LeaderEpoch(1),
            epoch_start_offset: o(10)
        }]
    );
    core
}

// ---- construction and roles ----

#[test]
fn a_new_core_is_offline_with_the_checkpointed_high_watermark_clamped_to_the_log_end() {
    let core = ReplicaCore::new(settings(), o(10), o(12), o(20));
    assert_eq!(core.role(), Role::Offline);
    assert_eq!(core.high_watermark(), o(10));
    assert_eq!(core.flushed(), o(10));
    assert_eq!(core.leader_epoch(), LeaderEpoch(-1));
    assert_eq!(core.leader(), None);
    assert!(!core.high_watermark_settled());
}

#[test]
fn becoming_leader_starts_the_epoch_at_the_log_end_with_a_grace_period_for_followers() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(4));
    let cmds = run(
        &mut core,
        7,
        Event::LeaderAndIsr(state(Some(L), 3, 9, &[L, B, C], &[L, B, C])),
    );
    assert_eq!(
        cmds,
        [Command::BecomeLeader {
            leader_epoch: LeaderEpoch(3),
            epoch_start_offset: o(10)
        }]
    );
    assert_eq!(core.role(), Role::Leader);
    assert_eq!(core.epoch_start_offset(), Some(o(10)));
    assert_eq!(
        (core.leader_epoch(), core.partition_epoch()),
        (LeaderEpoch(3), 9)
    );
    assert_eq!(core.followers().keys().copied().collect::<Vec<_>>(), [B, C]);
    for f in core.followers().values() {
        assert_eq!(
            *f,
            FollowerState {
                fetch_offset: None,
                last_fetch_ms: None,
                last_fetch_leader_log_end: None,
                last_caught_up_ms: 7,
            }
        );
    }
}

#[test]
fn becoming_follower_and_going_offline() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(10));
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(B), 2, 2, &[L, B], &[L, B])),
    );
    assert_eq!(
        cmds,
        [Command::BecomeFollower {
            leader: B,
            leader_epoch: LeaderEpoch(2)
        }]
    );
    assert_eq!(core.role(), Role::Follower { leader: B });
    tracing::info!("--- no leader: offline in the new epoch");
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(None, 3, 3, &[L, B], &[L])),
    );
    assert_eq!(
        cmds,
        [Command::Offline {
            leader_epoch: LeaderEpoch(3)
        }]
    );
    tracing::info!("--- reassigned away (same leader epoch): offline too");
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(10));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(B), 2, 2, &[L, B], &[L, B])),
    );
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(B), 2, 3, &[B, C], &[B])),
    );
    assert_eq!(
        cmds,
        [Command::Offline {
            leader_epoch: LeaderEpoch(2)
        }]
    );
    assert_eq!(core.role(), Role::Offline);
}

#[test]
fn a_state_naming_this_node_leader_but_not_replica_is_offline() {
    let mut core = ReplicaCore::new(settings(), o(0), o(0), o(0));
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[B, C], &[B, C])),
    );
    assert_eq!(
        cmds,
        [Command::Offline {
            leader_epoch: LeaderEpoch(1)
        }]
    );
}

#[test]
fn stale_duplicate_and_conflicting_states_are_ignored() {
    let mut core = leader3();
    let current = state(Some(L), 1, 5, &[L, B, C], &[L, B, C]);
    let step = core.step(1, Event::LeaderAndIsr(current.clone()));
    assert_eq!(
        step,
        Step {
            outcome: Outcome::Ignored(Ignored::DuplicateLeaderAndIsr),
            commands: vec![]
        }
    );
    let stale = Outcome::Ignored(Ignored::StaleLeaderAndIsr {
        leader_epoch: LeaderEpoch(1),
        partition_epoch: 5,
    });
    for old in [
        state(Some(B), 0, 9, &[L, B, C], &[B]),
        state(Some(L), 1, 4, &[L, B, C], &[L]),
    ] {
        assert_eq!(core.step(1, Event::LeaderAndIsr(old)).outcome, stale);
    }
    let conflicting = state(Some(L), 1, 5, &[L, B, C], &[L]);
    assert_eq!(
        core.step(1, Event::LeaderAndIsr(conflicting)).outcome,
        Outcome::Ignored(Ignored::ConflictingLeaderAndIsr)
    );
    assert_eq!(core.leader_and_isr(), &current);
}

#[test]
fn a_new_leader_epoch_resets_follower_state_and_the_pending_change() {
    let mut core = leader3();
    fetch(&mut core, 100, B, 10);
    run(&mut core, 40_000, Event::Tick);
    assert!(core.pending_isr_change().is_some());
    let cmds = run(
        &mut core,
        50_000,
        Event::LeaderAndIsr(state(Some(L), 2, 7, &[L, B, C], &[L, B, C])),
    );
    assert_eq!(
        cmds,
        [Command::BecomeLeader {
            leader_epoch: LeaderEpoch(2),
            epoch_start_offset: o(10)
        }]
    );
    assert_eq!(core.pending_isr_change(), None);
    assert_eq!(core.followers()[&B], FollowerState::new_for_test(50_000));
}

impl FollowerState {
    fn new_for_test(now_ms: i64) -> FollowerState {
        FollowerState {
            fetch_offset: None,
            last_fetch_ms: None,
            last_fetch_leader_log_end: None,
            last_caught_up_ms: now_ms,
        }
    }
}

#[test]
fn replicas_changing_under_the_same_leader_are_tracked_with_a_grace_period() {
    let mut core = leader3();
    fetch(&mut core, 5, B, 10);
    let cmds = run(
        &mut core,
        9,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, D], &[L, B])),
    );
    assert_eq!(cmds, []);
    assert_eq!(core.followers().keys().copied().collect::<Vec<_>>(), [B, D]);
    assert_eq!(core.followers()[&B].fetch_offset, Some(o(10)), "kept");
    assert_eq!(core.followers()[&D], FollowerState::new_for_test(9));
}

// ---- leader high watermark ----

#[test]
fn a_single_replica_leader_advances_with_its_own_fsyncs() {
    let mut core = ReplicaCore::new(settings(), o(10), o(8), o(3));
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L], &[L])),
    );
    assert_eq!(
        cmds,
        [
            Command::BecomeLeader {
                leader_epoch: LeaderEpoch(1),
                epoch_start_offset: o(10)
            },
            Command::HighWatermark(o(8))
        ]
    );
    assert_eq!(
        run(&mut core, 1, Event::LogEndChanged { log_end: o(15) }),
        []
    );
    assert_eq!(
        run(&mut core, 2, Event::Flushed { flushed: o(15) }),
        [Command::HighWatermark(o(15))]
    );
    tracing::info!("--- a flushed offset past the log end is clamped");
    assert_eq!(run(&mut core, 3, Event::Flushed { flushed: o(99) }), []);
    assert_eq!(core.flushed(), o(15));
}

#[test]
fn the_relaxed_mode_counts_the_leaders_log_end() {
    let mut core = ReplicaCore::new(
        ReplicaSettings {
            fsync_required: false,
            ..settings()
        },
        o(10),
        o(0),
        o(0),
    );
    let cmds = run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L], &[L])),
    );
    assert_eq!(cmds[1], Command::HighWatermark(o(10)));
    assert_eq!(
        run(&mut core, 1, Event::LogEndChanged { log_end: o(12) }),
        [Command::HighWatermark(o(12))]
    );
}

#[test]
fn the_high_watermark_waits_for_every_isr_member() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(0));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L, B, C], &[L, B, C])),
    );
    assert_eq!(fetch(&mut core, 1, B, 10), [], "C has not fetched yet");
    assert_eq!(fetch(&mut core, 2, C, 8), [Command::HighWatermark(o(8))]);
    assert_eq!(fetch(&mut core, 3, C, 10), [Command::HighWatermark(o(10))]);
    tracing::info!("--- followers ahead of the leader's fsync: the leader's fsync bounds it");
    run(&mut core, 4, Event::LogEndChanged { log_end: o(20) });
    fetch(&mut core, 5, B, 20);
    assert_eq!(fetch(&mut core, 6, C, 20), []);
    assert_eq!(
        run(&mut core, 7, Event::Flushed { flushed: o(20) }),
        [Command::HighWatermark(o(20))]
    );
}

#[test]
fn the_high_watermark_never_moves_back() {
    let mut core = leader3();
    fetch(&mut core, 1, B, 10);
    fetch(&mut core, 1, C, 10);
    assert_eq!(core.high_watermark(), o(10));
    tracing::info!("--- a follower fetching lower (lost unsynced data in relaxed mode)");
    assert_eq!(fetch(&mut core, 2, B, 4), []);
    assert_eq!(core.high_watermark(), o(10));
    tracing::info!("--- a new leader epoch with unknown followers");
    run(
        &mut core,
        3,
        Event::LeaderAndIsr(state(Some(L), 2, 6, &[L, B, C], &[L, B, C])),
    );
    assert_eq!(core.high_watermark(), o(10));
}

#[test]
fn fetches_past_the_log_end_or_from_strangers_are_ignored() {
    let mut core = leader3();
    assert_eq!(
        core.step(
            1,
            Event::FollowerFetch {
                replica: B,
                fetch_offset: o(11)
            }
        ),
        Step {
            outcome: Outcome::Ignored(Ignored::FetchOffsetBeyondLogEnd {
                fetch_offset: o(11),
                log_end: o(10)
            }),
            commands: vec![]
        }
    );
    for stranger in [D, L] {
        assert_eq!(
            core.step(
                1,
                Event::FollowerFetch {
                    replica: stranger,
                    fetch_offset: o(1)
                }
            )
            .outcome,
            Outcome::Ignored(Ignored::UnknownReplica(stranger))
        );
    }
}

#[test]
fn the_new_leaders_high_watermark_settles_at_its_epoch_start() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(6));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L, B], &[L, B])),
    );
    assert!(!core.high_watermark_settled());
    assert_eq!(fetch(&mut core, 1, B, 8), [Command::HighWatermark(o(8))]);
    assert!(!core.high_watermark_settled());
    assert_eq!(fetch(&mut core, 2, B, 10), [Command::HighWatermark(o(10))]);
    assert!(core.high_watermark_settled());
}

/// Found by the simulator (seed 18 on 3 nodes): a consumer read the old leader's high
/// watermark, then the new leader's lower one. Until it settles, consumers get
/// OFFSET_NOT_AVAILABLE (retriable) and followers keep fetching.
#[test]
fn consumers_wait_for_a_new_leaders_high_watermark_to_settle() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(6));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L, B], &[L, B])),
    );
    let unsettled = |hw| {
        Err(FetchRefusal::HighWatermarkNotSettled {
            high_watermark: o(hw),
            epoch_start: o(10),
        })
    };
    assert_eq!(core.check_consumer_read(None), unsettled(6));
    assert_eq!(
        core.check_fetch(Some(B), None),
        Ok(()),
        "followers still fetch"
    );
    fetch(&mut core, 1, B, 8);
    assert_eq!(core.check_consumer_read(Some(LeaderEpoch(1))), unsettled(8));
    assert_eq!(
        core.check_consumer_read(Some(LeaderEpoch(0))),
        Err(FetchRefusal::FencedLeaderEpoch {
            current: LeaderEpoch(1)
        }),
        "the epoch check comes first"
    );
    fetch(&mut core, 2, B, 10);
    assert_eq!(core.check_consumer_read(None), Ok(()));
}

// ---- follower lag and ISR shrink ----

#[test]
fn follower_lag_follows_kafkas_last_caught_up_rule() {
    let mut core = leader3();
    tracing::info!("--- fetching at the log end: caught up now");
    fetch(&mut core, 1_000, B, 10);
    assert_eq!(core.followers()[&B].last_caught_up_ms, 1_000);
    run(&mut core, 1_500, Event::LogEndChanged { log_end: o(20) });
    tracing::info!("--- behind, but at the log end of its previous fetch: caught up then");
    fetch(&mut core, 2_000, B, 10);
    assert_eq!(core.followers()[&B].last_caught_up_ms, 1_000);
    fetch(&mut core, 3_000, B, 20);
    assert_eq!(core.followers()[&B].last_caught_up_ms, 3_000);
    run(&mut core, 3_500, Event::LogEndChanged { log_end: o(30) });
    fetch(&mut core, 4_000, B, 25);
    assert_eq!(
        core.followers()[&B].last_caught_up_ms,
        3_000,
        "25 ≥ 20, the log end at its fetch of 3 000: caught up as of then"
    );
    fetch(&mut core, 5_000, B, 28);
    assert_eq!(
        core.followers()[&B].last_caught_up_ms,
        3_000,
        "28 < 30: not"
    );
    assert_eq!(
        core.followers()[&B],
        FollowerState {
            fetch_offset: Some(o(28)),
            last_fetch_ms: Some(5_000),
            last_fetch_leader_log_end: Some(o(30)),
            last_caught_up_ms: 3_000,
        }
    );
}

#[test]
fn a_lagging_member_is_proposed_out_after_the_lag_time() {
    let mut core = leader3();
    fetch(&mut core, 25_000, B, 10);
    assert_eq!(
        run(&mut core, LAG_MS, Event::Tick),
        [],
        "C is exactly at the limit"
    );
    assert_eq!(
        run(&mut core, LAG_MS + 1, Event::Tick),
        [propose(5, &[L, B])]
    );
    assert_eq!(
        core.pending_isr_change(),
        Some(&PendingIsrChange {
            isr: vec![L, B],
            leader_epoch: LeaderEpoch(1),
            partition_epoch: 5,
            proposed_at_ms: LAG_MS + 1,
        })
    );
}

#[test]
fn one_isr_change_at_a_time() {
    let mut core = leader3();
    fetch(&mut core, 25_000, B, 10);
    run(&mut core, LAG_MS + 1, Event::Tick);
    assert_eq!(
        run(&mut core, 2 * LAG_MS, Event::Tick),
        [],
        "B lags now too, but C's is pending"
    );
    tracing::info!("--- committed: the next tick proposes B out");
    run(
        &mut core,
        2 * LAG_MS,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, C], &[L, B])),
    );
    assert_eq!(run(&mut core, 2 * LAG_MS, Event::Tick), [propose(6, &[L])]);
}

#[test]
fn the_leader_never_drops_itself_nor_empties_the_isr() {
    let mut core = leader3();
    assert_eq!(run(&mut core, LAG_MS + 1, Event::Tick), [propose(5, &[L])]);
}

#[test]
fn a_pending_removal_still_holds_the_high_watermark() {
    let mut core = leader3();
    run(&mut core, 1, Event::LogEndChanged { log_end: o(20) });
    run(&mut core, 1, Event::Flushed { flushed: o(20) });
    fetch(&mut core, 25_000, B, 20);
    assert_eq!(core.high_watermark(), o(10), "C has not fetched");
    assert_eq!(
        run(&mut core, LAG_MS + 1, Event::Tick),
        [propose(5, &[L, B])]
    );
    assert_eq!(core.maximal_isr(), [L, B, C]);
    assert_eq!(core.high_watermark(), o(10));
    tracing::info!("--- the controller commits the shrink: only now may the high watermark pass C");
    let cmds = run(
        &mut core,
        LAG_MS + 2,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, C], &[L, B])),
    );
    assert_eq!(cmds, [Command::HighWatermark(o(20))]);
    assert_eq!(core.pending_isr_change(), None);
}

// ---- ISR expansion ----

/// Leader of L, B, C with ISR {L, B}, log end 10 (flushed), high watermark 10.
fn leader_with_c_out() -> ReplicaCore {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(10));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 5, &[L, B, C], &[L, B])),
    );
    core
}

#[test]
fn a_replica_that_reaches_the_high_watermark_is_proposed_in() {
    let mut core = leader_with_c_out();
    fetch(&mut core, 1, B, 10);
    assert_eq!(fetch(&mut core, 2, C, 9), []);
    assert_eq!(fetch(&mut core, 3, C, 10), [propose(5, &[L, B, C])]);
    assert_eq!(core.maximal_isr(), [L, B, C]);
}

#[test]
fn expansion_also_needs_the_epoch_start_offset() {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(5));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 5, &[L, B, C], &[L, B])),
    );
    assert_eq!(core.high_watermark(), o(5));
    assert_eq!(
        fetch(&mut core, 1, C, 7),
        [],
        "7 ≥ HW 5 but < epoch start 10"
    );
    assert_eq!(fetch(&mut core, 2, C, 10), [propose(5, &[L, B, C])]);
}

#[test]
fn a_pending_expansion_counts_the_joiner_in_the_high_watermark() {
    let mut core = leader_with_c_out();
    fetch(&mut core, 1, B, 10);
    fetch(&mut core, 2, C, 10);
    run(&mut core, 3, Event::LogEndChanged { log_end: o(20) });
    run(&mut core, 3, Event::Flushed { flushed: o(20) });
    assert_eq!(fetch(&mut core, 4, B, 20), [], "C, joining, is at 10");
    assert_eq!(fetch(&mut core, 5, C, 20), [Command::HighWatermark(o(20))]);
}

#[test]
fn a_refused_change_is_forgotten_and_retried_on_a_later_tick() {
    let mut core = leader_with_c_out();
    fetch(&mut core, 1, B, 10);
    fetch(&mut core, 2, C, 10);
    run(&mut core, 3, Event::LogEndChanged { log_end: o(20) });
    run(&mut core, 3, Event::Flushed { flushed: o(20) });
    fetch(&mut core, 4, B, 20);
    tracing::info!("--- the expansion is refused: C no longer holds the high watermark back");
    assert_eq!(
        run(&mut core, 5, Event::IsrChangeRefused),
        [Command::HighWatermark(o(20))]
    );
    assert_eq!(core.pending_isr_change(), None);
    assert_eq!(
        core.step(5, Event::IsrChangeRefused).outcome,
        Outcome::Ignored(Ignored::NoPendingIsrChange)
    );
    tracing::info!("--- C is below the high watermark now; once it catches up a tick retries");
    assert_eq!(run(&mut core, 6, Event::Tick), []);
    assert_eq!(fetch(&mut core, 7, C, 20), [propose(5, &[L, B, C])]);
    run(&mut core, 8, Event::IsrChangeRefused);
    assert_eq!(run(&mut core, 9, Event::Tick), [propose(5, &[L, B, C])]);
}

/// Found by the simulator (seed 7 on 3 nodes): a follower whose fetches stopped (its request
/// lost in a partition) still held the high watermark by its last fetch offset, so every tick
/// proposed it in and the next one proposed it out again, and `acks=all` writes failed for
/// lack of in-sync replicas. As in Kafka, only a fetch brings a follower in; a tick only
/// retries a join the shrink rule would keep.
#[test]
fn a_tick_never_proposes_in_a_follower_the_lag_rule_would_remove() {
    let mut core = leader_with_c_out();
    fetch(&mut core, 1, B, 10);
    fetch(&mut core, 2, C, 9);
    tracing::info!("--- C reaches the high watermark, then stops fetching; the join is refused");
    assert_eq!(fetch(&mut core, 3, C, 10), [propose(5, &[L, B, C])]);
    run(&mut core, 4, Event::IsrChangeRefused);
    fetch(&mut core, LAG_MS, B, 10);
    assert_eq!(
        run(&mut core, LAG_MS + 4, Event::Tick),
        [],
        "C last caught up at 3: it would be removed at once"
    );
    assert_eq!(run(&mut core, 2 * LAG_MS, Event::Tick), []);
    tracing::info!("--- C fetches again: it joins");
    assert_eq!(
        fetch(&mut core, 2 * LAG_MS + 1, C, 10),
        [propose(5, &[L, B, C])]
    );
}

#[test]
fn a_replica_whose_broker_is_ineligible_is_never_proposed_in() {
    // C was in sync when its broker died; the controller fenced it (taking it out of the ISR)
    // and refuses it back while fenced. Without KIP-841's check the leader, still seeing C at
    // the log end, proposed it at every tick (seen as a refusal every 250 ms in a cluster).
    let mut core = leader_with_c_out();
    fetch(&mut core, 1, B, 10);
    run(
        &mut core,
        2,
        Event::IneligibleReplicas(std::collections::BTreeSet::from([C])),
    );
    assert_eq!(fetch(&mut core, 3, C, 10), [], "caught up but fenced");
    assert_eq!(run(&mut core, 4, Event::Tick), []);
    assert_eq!(core.pending_isr_change(), None);
    assert_eq!(
        core.step(
            5,
            Event::IneligibleReplicas(std::collections::BTreeSet::from([C]))
        )
        .outcome,
        Outcome::Ignored(Ignored::IneligibleUnchanged)
    );
    // Unfenced (it registered again and caught up with its registration): the next tick or
    // fetch proposes it.
    run(
        &mut core,
        6,
        Event::IneligibleReplicas(std::collections::BTreeSet::new()),
    );
    assert_eq!(run(&mut core, 7, Event::Tick), [propose(5, &[L, B, C])]);
}

// ---- follower high watermark and truncation ----

/// A follower of B in epoch 2 with log end 10 and high watermark 4.
fn follower() -> ReplicaCore {
    let mut core = ReplicaCore::new(settings(), o(10), o(10), o(4));
    run(
        &mut core,
        0,
        Event::LeaderAndIsr(state(Some(B), 2, 2, &[L, B], &[L, B])),
    );
    core
}

#[test]
fn a_followers_high_watermark_is_the_leaders_capped_by_its_log_end() {
    let mut core = follower();
    let hw = |h| Event::LeaderHighWatermark {
        high_watermark: o(h),
    };
    assert_eq!(run(&mut core, 1, hw(8)), [Command::HighWatermark(o(8))]);
    assert_eq!(run(&mut core, 2, hw(15)), [Command::HighWatermark(o(10))]);
    assert_eq!(
        run(&mut core, 3, Event::LogEndChanged { log_end: o(12) }),
        [Command::HighWatermark(o(12))]
    );
    assert_eq!(run(&mut core, 4, hw(3)), [], "never back");
    assert_eq!(core.high_watermark(), o(12));
}

#[test]
fn truncation_below_the_high_watermark_is_reported_and_the_high_watermark_kept() {
    let mut core = follower();
    assert_eq!(run(&mut core, 1, Event::Truncated { log_end: o(4) }), []);
    assert_eq!(core.log_end(), o(4));
    let step = core.step(2, Event::Truncated { log_end: o(2) });
    assert_eq!(
        step,
        Step {
            outcome: Outcome::TruncatedBelowHighWatermark {
                high_watermark: o(4),
                log_end: o(2)
            },
            commands: vec![]
        }
    );
    assert_eq!(
        (core.high_watermark(), core.log_end(), core.flushed()),
        (o(4), o(2), o(2))
    );
}

#[test]
fn role_specific_events_in_the_wrong_role_are_ignored() {
    let mut core = follower();
    assert_eq!(
        core.step(
            1,
            Event::FollowerFetch {
                replica: B,
                fetch_offset: o(1)
            }
        )
        .outcome,
        Outcome::Ignored(Ignored::NotLeader)
    );
    let mut core = leader3();
    assert_eq!(
        core.step(
            1,
            Event::LeaderHighWatermark {
                high_watermark: o(1)
            }
        )
        .outcome,
        Outcome::Ignored(Ignored::NotFollower)
    );
    assert_eq!(
        core.step(1, Event::LogEndChanged { log_end: o(9) }).outcome,
        Outcome::Ignored(Ignored::LogEndMovedBackwards {
            log_end: o(10),
            reported: o(9)
        })
    );
    assert_eq!(
        core.step(
            1,
            Event::SettingsChanged(ReplicaSettings {
                local: D,
                ..settings()
            })
        )
        .outcome,
        Outcome::Ignored(Ignored::SettingsForAnotherNode)
    );
}

// ---- queries ----

#[test]
fn appends_need_leadership_and_for_acks_all_enough_in_sync_replicas() {
    let core = follower();
    let not_leader = AppendRefusal::NotLeader {
        leader: Some(B),
        leader_epoch: LeaderEpoch(2),
    };
    assert_eq!(core.check_append(false), Err(not_leader));
    assert_eq!(core.check_append(true), Err(not_leader));
    let mut core = leader3();
    assert_eq!(core.check_append(true), Ok(()));
    run(
        &mut core,
        1,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, C], &[L])),
    );
    assert_eq!(
        core.check_append(true),
        Err(AppendRefusal::NotEnoughReplicas {
            isr: 1,
            required: 2
        })
    );
    assert_eq!(core.check_append(false), Ok(()));
    tracing::info!("--- min.insync.replicas above the replica count refuses acks=all");
    // The user asked for that many durable copies; fewer replicas cannot give them (Kafka
    // answers NOT_ENOUGH_REPLICAS too; the end-to-end suite checks it with real clients).
    let mut single = ReplicaCore::new(settings(), o(0), o(0), o(0));
    run(
        &mut single,
        0,
        Event::LeaderAndIsr(state(Some(L), 1, 1, &[L], &[L])),
    );
    assert_eq!(single.required_isr(), 2);
    assert_eq!(
        single.check_append(true),
        Err(AppendRefusal::NotEnoughReplicas {
            isr: 1,
            required: 2
        })
    );
    assert_eq!(single.check_append(false), Ok(()));
}

#[test]
fn ack_status_follows_kafka() {
    let mut core = leader3();
    run(&mut core, 1, Event::LogEndChanged { log_end: o(20) });
    run(&mut core, 1, Event::Flushed { flushed: o(20) });
    assert_eq!(core.ack_status(o(9)), AckStatus::Done);
    assert_eq!(core.ack_status(o(10)), AckStatus::Pending);
    fetch(&mut core, 2, B, 20);
    fetch(&mut core, 2, C, 15);
    assert_eq!(core.ack_status(o(14)), AckStatus::Done);
    assert_eq!(core.ack_status(o(15)), AckStatus::Pending);
    tracing::info!("--- the ISR shrinks to one: durable on it, but too few replicas");
    run(
        &mut core,
        3,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, C], &[L])),
    );
    assert_eq!(core.high_watermark(), o(20));
    assert_eq!(
        core.ack_status(o(19)),
        AckStatus::NotEnoughReplicasAfterAppend {
            isr: 1,
            required: 2
        }
    );
    tracing::info!("--- leadership moves: the outcome is not ours to tell");
    run(
        &mut core,
        4,
        Event::LeaderAndIsr(state(Some(B), 2, 7, &[L, B, C], &[L, B])),
    );
    assert_eq!(
        core.ack_status(o(19)),
        AckStatus::NotLeader {
            leader: Some(B),
            leader_epoch: LeaderEpoch(2)
        }
    );
}

#[test]
fn fetch_checks_follow_kafkas_order() {
    let core = leader3();
    let e = |n| Some(LeaderEpoch(n));
    assert_eq!(core.check_fetch(None, None), Ok(()));
    assert_eq!(core.check_fetch(Some(B), e(1)), Ok(()));
    assert_eq!(
        core.check_fetch(Some(B), e(0)),
        Err(FetchRefusal::FencedLeaderEpoch {
            current: LeaderEpoch(1)
        })
    );
    assert_eq!(
        core.check_fetch(None, e(2)),
        Err(FetchRefusal::UnknownLeaderEpoch {
            current: LeaderEpoch(1)
        })
    );
    assert_eq!(
        core.check_fetch(Some(D), e(1)),
        Err(FetchRefusal::NotReplica { replica: D })
    );
    assert_eq!(
        core.check_fetch(Some(L), None),
        Err(FetchRefusal::NotReplica { replica: L })
    );
    let core = follower();
    assert_eq!(
        core.check_fetch(None, e(2)),
        Err(FetchRefusal::NotLeader {
            leader: Some(B),
            leader_epoch: LeaderEpoch(2)
        })
    );
    assert_eq!(
        core.check_fetch(None, e(1)),
        Err(FetchRefusal::FencedLeaderEpoch {
            current: LeaderEpoch(2)
        }),
        "the epoch is checked first"
    );
}

#[test]
fn settings_changes_apply_at_once() {
    let mut core = leader3();
    run(&mut core, 1, Event::LogEndChanged { log_end: o(20) });
    fetch(&mut core, 1, B, 20);
    fetch(&mut core, 1, C, 20);
    assert_eq!(
        core.high_watermark(),
        o(10),
        "the leader has not fsynced 10..20"
    );
    let relaxed = ReplicaSettings {
        fsync_required: false,
        min_insync_replicas: 3,
        ..settings()
    };
    assert_eq!(
        run(&mut core, 2, Event::SettingsChanged(relaxed.clone())),
        [Command::HighWatermark(o(20))]
    );
    assert_eq!(core.settings(), &relaxed);
    assert_eq!(core.required_isr(), 3);
}

// ---- property test ----

/// One random thing that can happen to the replica on node 1 of nodes 1..=4.
#[derive(Clone, Debug)]
enum Op {
    /// The controller commits a new state: a new leader epoch or only a new ISR/replicas.
    /// `leader` 0..=2 picks this node (made a replica if need be), 3 and 4 another replica,
    /// 5 none.
    Controller {
        new_leader_epoch: bool,
        leader: u8,
        replicas: u8,
        isr: u8,
    },
    /// The controller re-sends an old state.
    Stale,
    /// The controller answers the pending proposal.
    Answer {
        commit: bool,
    },
    Append(u8),
    Flush(u8),
    Fetch {
        replica: u8,
        behind: u8,
    },
    LeaderHighWatermark(u8),
    /// Truncate to somewhere at or above the high watermark.
    Truncate(u8),
    Tick(u16),
    /// The brokers (a mask over B, C, D) that may not join the ISR now.
    Ineligible(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<bool>(), 0u8..6, 1u8..16, any::<u8>()).prop_map(|(new_leader_epoch, leader, replicas, isr)| Op::Controller { new_leader_epoch, leader, replicas, isr }),
        1 => Just(Op::Stale),
        3 => any::<bool>().prop_map(|commit| Op::Answer { commit }),
        4 => (0u8..6).prop_map(Op::Append),
        3 => any::<u8>().prop_map(Op::Flush),
        8 => (1u8..=4, 0u8..8).prop_map(|(replica, behind)| Op::Fetch { replica, behind }),
        2 => any::<u8>().prop_map(Op::LeaderHighWatermark),
        1 => any::<u8>().prop_map(Op::Truncate),
        3 => (0u16..20_000).prop_map(Op::Tick),
        1 => (0u8..8).prop_map(Op::Ineligible),
    ]
}

fn nodes(mask: u8) -> Vec<NodeId> {
    (1..=4)
        .filter(|n| mask & (1 << (n - 1)) != 0)
        .map(NodeId)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random events: the high watermark never decreases and never passes the log end; every
    /// proposal is non-empty, keeps the leader and is the only one pending.
    #[test]
    fn invariants_hold_under_random_events(
        ops in prop::collection::vec(op(), 1..120),
        fsync_required in any::<bool>(),
        min_insync_replicas in 1usize..4,
        start in (0i64..20, 0i64..20, 0i64..20),
    ) {
        let s = ReplicaSettings { local: L, replica_lag_time_max_ms: 10_000, min_insync_replicas, fsync_required };
        let (log_end, flushed, hw) = start;
        let mut core = ReplicaCore::new(s, o(log_end), o(flushed), o(hw));
        let mut controller = LeaderAndIsr::unknown();
        let mut history: Vec<LeaderAndIsr> = Vec::new();
        let mut now = 0i64;
        let mut published = core.high_watermark();
        let mut ineligible = std::collections::BTreeSet::new();
        for op in ops {
            let event = match op {
                Op::Controller { new_leader_epoch, leader, replicas, isr } => {
                    let mut replicas = nodes(replicas);
                    if leader <= 2 && !replicas.contains(&L) {
                        replicas.insert(0, L);
                    }
                    let others: Vec<NodeId> = replicas.iter().copied().filter(|r| *r != L).collect();
                    let leader = match leader {
                        0..=2 => Some(L),
                        3 | 4 => others.get(usize::from(leader - 3)).copied(),
                        _ => None,
                    };
                    let mut in_sync: Vec<NodeId> = replicas.iter().copied().filter(|r| nodes(isr).contains(r)).collect();
                    if let Some(l) = leader {
                        if !in_sync.contains(&l) { in_sync.insert(0, l); }
                    }
                    if in_sync.is_empty() { in_sync.push(replicas[0]); }
                    let mut next = controller.clone();
                    if new_leader_epoch || controller.leader_epoch.0 < 0 || next.leader != leader {
                        next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
                        next.leader = leader;
                    }
                    next.partition_epoch += 1;
                    next.replicas = replicas;
                    next.isr = in_sync;
                    history.push(controller.clone());
                    controller = next.clone();
                    Event::LeaderAndIsr(next)
                }
                Op::Stale => match history.last() {
                    Some(old) => Event::LeaderAndIsr(old.clone()),
                    None => Event::Tick,
                },
                Op::Answer { commit } => match core.pending_isr_change().cloned() {
                    Some(p) if commit => {
                        let mut next = controller.clone();
                        next.partition_epoch += 1;
                        next.isr = p.isr;
                        history.push(controller.clone());
                        controller = next.clone();
                        Event::LeaderAndIsr(next)
                    }
                    _ => Event::IsrChangeRefused,
                },
                Op::Append(n) => Event::LogEndChanged { log_end: Offset(core.log_end().0 + i64::from(n)) },
                Op::Flush(x) => {
                    let (f, e) = (core.flushed().0, core.log_end().0);
                    Event::Flushed { flushed: Offset(f + i64::from(x) % (e - f + 2)) }
                }
                Op::Fetch { replica, behind } => Event::FollowerFetch {
                    replica: NodeId(i32::from(replica)),
                    // Sometimes one past the log end, which the core must ignore.
                    fetch_offset: Offset((core.log_end().0 + 1 - i64::from(behind)).max(0)),
                },
                Op::LeaderHighWatermark(x) => Event::LeaderHighWatermark { high_watermark: Offset(i64::from(x) % (core.log_end().0 + 5)) },
                Op::Truncate(x) => {
                    let (h, e) = (core.high_watermark().0, core.log_end().0);
                    Event::Truncated { log_end: Offset(h + i64::from(x) % (e - h + 1)) }
                }
                Op::Tick(dt) => {
                    now += i64::from(dt);
                    Event::Tick
                }
                Op::Ineligible(mask) => {
                    ineligible = [B, C, D].into_iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| n).collect();
                    Event::IneligibleReplicas(ineligible.clone())
                }
            };
            let pending_before = core.pending_isr_change().cloned();
            let hw_before = core.high_watermark();
            let step = core.step(now, event.clone());
            let hw = core.high_watermark();
            prop_assert!(hw >= hw_before, "HW regressed {hw_before} -> {hw} on {event:?}");
            prop_assert!(hw <= core.log_end(), "HW {hw} past log end {} after {event:?}", core.log_end());
            let proposals: Vec<&Vec<NodeId>> = step.commands.iter().filter_map(|c| match c {
                Command::ProposeIsr { isr, .. } => Some(isr),
                _ => None,
            }).collect();
            prop_assert!(proposals.len() <= 1, "{:?}", step.commands);
            if let Some(isr) = proposals.first() {
                prop_assert!(pending_before.is_none(), "proposed {isr:?} while {pending_before:?} was pending");
                prop_assert!(!isr.is_empty());
                prop_assert!(isr.contains(&L), "leader dropped from {isr:?}");
                prop_assert_eq!(core.role(), Role::Leader);
                prop_assert!(isr.iter().all(|r| core.replicas().contains(r)));
                let mut sorted = (*isr).clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), isr.len(), "{:?} repeats a replica", isr);
                prop_assert!(
                    isr.iter().all(|r| core.isr().contains(r) || !ineligible.contains(r)),
                    "{:?} adds one of the ineligible {:?}", isr, ineligible
                );
            }
            for c in &step.commands {
                if let Command::HighWatermark(h) = c {
                    prop_assert!(*h > published, "published {h} after {published}");
                    published = *h;
                }
            }
            prop_assert_eq!(published, hw);
            if core.pending_isr_change().is_some() {
                prop_assert_eq!(core.role(), Role::Leader);
            }
            if core.role() == Role::Leader {
                prop_assert!(!core.maximal_isr().is_empty());
                prop_assert!(core.isr().contains(&L));
            }
            if let Outcome::Ignored(_) = step.outcome {
                prop_assert!(step.commands.is_empty());
            }
        }
    }
}

#[test]
fn a_member_the_controller_takes_out_forgets_its_fetches_and_rejoins_only_on_a_new_one() {
    let mut core = leader3();
    fetch(&mut core, 10, B, 10);
    fetch(&mut core, 10, C, 10);
    // C leaves (a damaged replica asked to): what it fetched may be gone from its log.
    run(
        &mut core,
        20,
        Event::LeaderAndIsr(state(Some(L), 1, 6, &[L, B, C], &[L, B])),
    );
    assert_eq!(core.followers()[&C].fetch_offset, None);
    assert!(
        !run(&mut core, 30, Event::Tick)
            .iter()
            .any(|c| matches!(c, Command::ProposeIsr { .. })),
        "no rejoin on the fetch from before it left"
    );
    // Its honest fetch from below the damage does not bring it back either.
    assert!(!fetch(&mut core, 40, C, 4)
        .iter()
        .any(|c| matches!(c, Command::ProposeIsr { .. })));
    // Caught up again, it rejoins.
    assert_eq!(fetch(&mut core, 50, C, 10), [propose(6, &[L, B, C])]);
}
