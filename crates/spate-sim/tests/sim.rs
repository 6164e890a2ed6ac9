//! The simulator's own guarantees: one seed replays one run byte for byte, the seeds that once
//! found bugs pass, 5-node clusters run, and the checkers catch a bug planted on purpose.
//!
//! Seeds run through the `spate-sim` binary, each in a fresh process, exactly as a user
//! replays one (a seed's run depends on Tokio's process-wide task numbering, so only a seed
//! alone in its process replays the same way every time).

use std::process::Command;

/// Runs `spate-sim --seed S --nodes N` and returns whether it passed and its output.
fn replay(seed: u64, nodes: u64) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spate-sim"))
        .args(["--seed", &seed.to_string(), "--nodes", &nodes.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .expect("run spate-sim");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

fn assert_passes(seed: u64, nodes: u64) -> String {
    let (passed, output) = replay(seed, nodes);
    assert!(passed, "seed {seed} on {nodes} nodes failed:\n{output}");
    assert!(
        output.starts_with(&format!("seed {seed}: PASS (")),
        "{output}"
    );
    assert!(
        !output.contains(" (0 acknowledged"),
        "nothing acknowledged: {output}"
    );
    output
}

#[test]
fn one_seed_replays_the_same_run_byte_for_byte() {
    let first = assert_passes(5, 3);
    let second = assert_passes(5, 3);
    assert!(first.contains("trace hash "), "{first}");
    assert_eq!(first, second, "the same seed, the same trace hash");
    let other = assert_passes(6, 3);
    let hash = |s: &str| s.split("trace hash ").nth(1).map(str::to_owned);
    assert_ne!(hash(&first), hash(&other), "another seed, another run");
}

/// Every seed that found a bug, kept once the bug was fixed (docs/testing.md says what each
/// found): 1, a node restarted while its disk still failed fsyncs could not start; 2, a failed
/// fsync left the node leading with a sticky failure; 7, a follower whose fetches stopped
/// flapped in and out of the ISR; 18, a consumer saw a new leader's high watermark below the
/// old one's; 155, a stale leader's OUT_OF_ORDER_SEQUENCE made the producer take a new id;
/// 189, a consumer read a deposed leader that had not heard of its successor; 128, a step
/// back of the leader's wall clock kept a dead follower in the ISR; 1086, a restarted node
/// waited 15 s for a registration answer lost on a dead connection; 454, a node whose metadata
/// log failed while it started waited forever to be unfenced; 20944, a leader took a lost
/// answer to its ISR expansion for a refusal and acknowledged a write the joiner lacked; 116,
/// a node cut off from the controller answered TOPIC_ALREADY_EXISTS for a deleted topic; 2491,
/// a partition that failed to open on a full disk was swept as an orphan and came back empty;
/// 6100, a DeleteTopics that outlived its client resolved the name of the re-created topic;
/// 17, 56, 71, a coordinator that took over counted a generation again with other members (a
/// SyncGroup was answered before the group's record was replicated); 180, an empty group
/// without offsets was deleted and started again at generation 1 (the harness now keeps it);
/// 594, a member was handed an assignment the coordinator had failed to store; 1378, a
/// follower kept an epoch it had led in without writing, and every Fetch diverged; 6198, a
/// follower's truncation failed on an I/O error and was retried forever; 37, a node whose
/// recovery cut committed records at a batch damaged at rest led alone in the ISR, and both
/// followers truncated to it; 469, a repaired replica taken back into the ISR on a fetch from
/// before its cut; 921, a deleted producer snapshot brought back by a power cut; 1180, a rotted
/// last offset delta made recovery cut committed records; 2644, a negative one made the log
/// impossible to open; 538 (the checker's bug), a transaction failed during a partition that
/// had begun more than 3 s before, which the spurious-failure check took for no fault at all.
#[test]
fn the_seeds_that_found_bugs_pass() {
    for seed in [
        1, 2, 7, 17, 18, 37, 56, 71, 116, 128, 155, 180, 189, 454, 469, 594, 921, 1086, 1180, 1378,
        2491, 2644, 6100, 6198, 20944, 10, 55, 538,
    ] {
        assert_passes(seed, 3);
    }
}

#[test]
fn five_node_clusters_run_and_pass() {
    for seed in [1, 2] {
        assert_passes(seed, 5);
    }
}

/// The first seed of `1..=seeds` whose violations include one containing `violation`, with
/// a planted bug switched on by `plant` for the run (a thread-local of this test's thread,
/// where the simulation runs: in this process, since nextest gives each test its own, the seeds
/// before the finding one are always the same).
fn first_seed_finding(plant: fn(bool), seeds: u64, violation: &str) -> Option<u64> {
    plant(true);
    let found = (1..=seeds).find_map(|seed| {
        spate_sim::run(&spate_sim::Options::new(seed, 3))
            .violations
            .into_iter()
            .find(|v| v.contains(violation))
            .map(|v| (seed, v))
    });
    plant(false);
    eprintln!("the planted bug was found: {found:?}");
    found.map(|(seed, _)| seed)
}

/// The checkers can fail: with the leader acknowledging acks=all writes on its own fsync (the
/// followers ignored), a leader that dies before its followers fetched loses acknowledged
/// records (the final log holds another record at their offset, or none), and the simulator
/// finds it within a few seeds.
#[test]
fn a_planted_bug_is_found_within_a_few_seeds() {
    const SEEDS: u64 = 20;
    let plant = spate_replica::planted::set_high_watermark_ignores_followers;
    assert!(
        first_seed_finding(plant, SEEDS, "invariant 1").is_some(),
        "no seed of 1..={SEEDS} found acknowledged writes lost"
    );
}

/// The group checker can fail: with OffsetCommit taking a commit whatever its generation (and
/// from a member the group no longer has), a member that stalled past its session timeout
/// commits after the others moved on to a newer generation, and the simulator finds it within
/// a few dozen seeds.
#[test]
fn a_planted_zombie_commit_is_found_within_a_few_dozen_seeds() {
    const SEEDS: u64 = 60;
    let plant = spate_coordinator::planted::set_commits_ignore_generation;
    assert!(
        first_seed_finding(plant, SEEDS, "invariant 6").is_some(),
        "no seed of 1..={SEEDS} found a commit taken from an older generation"
    );
}

/// The transaction checker can fail: with `read_committed` fetches reading to the high
/// watermark (open transactions not held back), the consumer reads records before their
/// transaction's commit was asked for, and the simulator finds it within a few seeds (about
/// half the seeds run transactional producers).
#[test]
fn a_planted_read_of_open_transactions_is_found_within_a_few_seeds() {
    const SEEDS: u64 = 20;
    let plant = spate_replica::planted::set_last_stable_offset_ignores_open_transactions;
    assert!(
        first_seed_finding(plant, SEEDS, "transactions:").is_some(),
        "no seed of 1..={SEEDS} found a read of an open transaction"
    );
}

/// The spurious-failure check can fail: with a partition leader asking the coordinator only
/// once to verify a transaction version 2 write (so a write that reaches the leader before the
/// previous transaction's marker is refused when the marker drops its guard), healthy producers
/// writing transactions back to back abort some, with no fault anywhere, and the simulator
/// finds it within a few dozen seeds (a quarter of the seeds run a version 2 producer).
#[test]
fn a_planted_spurious_abort_is_found_within_a_few_dozen_seeds() {
    const SEEDS: u64 = 40;
    let plant = spate_kafka::planted::set_verification_asks_once;
    assert!(
        first_seed_finding(plant, SEEDS, "transactions: spurious failure").is_some(),
        "no seed of 1..={SEEDS} found a transaction failing with no fault around"
    );
}

/// The exactly-once copier's check can fail by itself: with `read_committed` fetches reading to
/// the high watermark, the copier copies records of transactions still open, some of which
/// then abort, so the copy holds records the input never committed; the simulator finds it
/// within a few dozen seeds (about a third of the seeds run the copier).
#[test]
fn a_planted_copy_of_open_transactions_is_found_within_a_few_dozen_seeds() {
    const SEEDS: u64 = 40;
    let plant = spate_replica::planted::set_last_stable_offset_ignores_open_transactions;
    assert!(
        first_seed_finding(plant, SEEDS, "exactly-once copy:").is_some(),
        "no seed of 1..={SEEDS} found a copy of a record the input never committed"
    );
}

/// The fetched-offsets check can fail: with OffsetFetch showing a commit as soon as it is
/// appended, before it is durable (the coordinator's behaviour before the fix), the members'
/// lag monitor is shown an offset that a failover then takes back, and a later fetch shows
/// less; the simulator finds it within a few dozen seeds (about half run group members).
#[test]
fn a_planted_fetch_of_a_commit_not_durable_is_found_within_a_few_dozen_seeds() {
    const SEEDS: u64 = 40;
    let plant = spate_coordinator::planted::set_fetch_shows_undurable_commits;
    assert!(
        first_seed_finding(plant, SEEDS, "committed offset was fetched as").is_some(),
        "no seed of 1..={SEEDS} found a fetched commit taken back"
    );
}
