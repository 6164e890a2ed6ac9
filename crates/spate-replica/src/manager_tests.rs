//! The replica manager on a [`MemoryDisk`]: what a power cut leaves of a hosted partition
//! (its directory, its metadata and its fsynced records, nothing unsynced), the directory
//! housekeeping (orphans) done through the disk seam, and how the controller's answers to ISR
//! proposals settle them.

use crate::core::LeaderAndIsr;
use crate::fetcher::FetcherSettings;
use crate::manager::{
    IsrAnswer, IsrProposal, ReplicaManager, ReplicationSettings, PARTITION_METADATA,
};
use crate::partition::FollowerFetch;
use crate::partition::{FlushPolicy, Partition};
use spate_log::LogConfig;
use spate_types::disk::{DiskError, DiskFault, DiskOp};
use spate_types::{Disk, LeaderEpoch, ManualClock, MemoryDisk, NodeId, Offset, TopicPartition};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const LOCAL: NodeId = NodeId(1);
const LOGS: &str = "/n1/logs";
const TOPIC_ID: uuid::Uuid = uuid::Uuid::from_u128(7);

/// A manager on `disk` whose flusher syncs only for `acks=all` (the interval is an hour).
fn manager(disk: &MemoryDisk) -> Arc<ReplicaManager> {
    manager_and_proposals(disk).0
}

/// [`manager`], with the queue its leaders' ISR proposals go to.
fn manager_and_proposals(
    disk: &MemoryDisk,
) -> (
    Arc<ReplicaManager>,
    tokio::sync::mpsc::Receiver<IsrProposal>,
) {
    ReplicaManager::new(
        Arc::new(disk.clone()),
        LOGS,
        FlushPolicy {
            interval: Duration::from_secs(3_600),
            fsync_acks_all: true,
        },
        ReplicationSettings {
            node: LOCAL,
            replica_lag_time_max_ms: 10_000,
            fetch: FetcherSettings::default(),
        },
    )
}

/// The single-replica leader state of a one-node cluster.
fn alone() -> LeaderAndIsr {
    LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
        replicas: vec![LOCAL],
        isr: vec![LOCAL],
    }
}

/// Brings `t-<partition>` to `state` (opening it if needed).
fn try_host(
    manager: &ReplicaManager,
    partition: i32,
    state: LeaderAndIsr,
) -> Result<Arc<Partition>, crate::partition::ReplicaError> {
    manager.ensure(
        TopicPartition::new("t", partition),
        TOPIC_ID,
        LogConfig::default(),
        state,
        BTreeSet::new(),
        0,
    )
}

/// Hosts `t-<partition>` as the single-replica leader, as a one-node cluster does.
fn lead(manager: &ReplicaManager, partition: i32) -> Arc<Partition> {
    try_host(manager, partition, alone()).expect("ensure")
}

/// One v2 batch with a single record holding `value`.
fn batch(value: &str) -> Vec<u8> {
    crate::partition::tests::single_record_batch(None, value.as_bytes())
}

/// Appends one batch and returns it as stored (offset and leader epoch assigned).
fn append(p: &Partition, value: &str, acks_all: bool) -> (Offset, Vec<u8>) {
    let mut b = batch(value);
    let receipt = p.append(&mut b, acks_all, 1_000).expect("append");
    (receipt.last_offset, b)
}

/// Every batch below the high watermark, as a consumer's fetch returns them.
fn committed(p: &Partition) -> Vec<u8> {
    p.read(Offset(0), 1 << 20, true)
        .expect("read")
        .plan
        .load()
        .expect("load")
        .to_vec()
}

#[tokio::test]
async fn a_partition_keeps_its_acks_all_records_across_a_crash_and_loses_the_unsynced_ones() {
    let disk = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    let m = manager(&disk);
    let p = lead(&m, 0);

    tracing::info!("--- three acks=all appends, each acknowledged after its fsync");
    let mut acked = Vec::new();
    for v in ["a", "b", "c"] {
        let (last, stored) = append(&p, v, true);
        p.wait_acks_all(last).await.expect("acks=all");
        acked.extend(stored);
    }
    assert_eq!(p.high_watermark(), Offset(3));
    // Let the flusher go back to sleep (an hour) so that nothing below is synced.
    tokio::time::sleep(Duration::from_millis(100)).await;

    tracing::info!("--- two acks=1 appends, not synced; then a power cut (no await in between)");
    append(&p, "d", false);
    append(&p, "e", false);
    assert_eq!(p.log_end_offset().expect("leo"), Offset(5));
    disk.crash();
    drop((p, m));

    tracing::info!(
        "--- the node restarts: the partition, its metadata and its acks=all records are back"
    );
    let m = manager(&disk);
    let p = lead(&m, 0);
    assert_eq!(p.log_end_offset().expect("leo"), Offset(3));
    assert_eq!(p.high_watermark(), Offset(3));
    assert_eq!(committed(&p), acked);

    tracing::info!("--- and it takes appends again where the synced log ended");
    let (last, _) = append(&p, "f", true);
    assert_eq!(last, Offset(3));
    p.wait_acks_all(last).await.expect("acks=all");
}

#[tokio::test]
async fn orphan_partitions_are_removed_through_the_disk() {
    let disk = MemoryDisk::default();
    let m = manager(&disk);
    for partition in [0, 1] {
        let p = lead(&m, partition);
        let (last, _) = append(&p, "x", true);
        p.wait_acks_all(last).await.expect("acks=all");
    }
    let failures = m.close_all().await;
    assert!(failures.is_empty(), "{failures:?}");
    drop(m);

    tracing::info!("--- restarted hosting t-0 only: t-1's directory is an orphan");
    let m = manager(&disk);
    lead(&m, 0);
    m.remove_orphans(&BTreeSet::from([TopicPartition::new("t", 0)]));
    let logs = disk.read_dir(Path::new(LOGS)).expect("ls");
    let names: Vec<&str> = logs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["t-0"]);
    assert!(disk
        .file_len(&Path::new(LOGS).join("t-0").join(PARTITION_METADATA))
        .is_ok());

    tracing::info!(
        "--- deleting a hosted partition removes its directory; an absent one is a no-op"
    );
    m.delete(&TopicPartition::new("t", 0))
        .expect("delete hosted");
    m.delete(&TopicPartition::new("t", 9))
        .expect("delete absent");
    assert!(disk.read_dir(Path::new(LOGS)).expect("ls").is_empty());
}

/// Found by the simulator (seed 2491 on 3 nodes): a node restarted on a full disk failed to
/// open an assigned partition (its recovery could not write a producer snapshot); the start-up
/// orphan sweep, which went by the partitions that had opened, deleted its directory; the node
/// then opened it empty and, still in the ISR, was elected leader, and every acknowledged
/// record of the partition was lost. The sweep now goes by the metadata, and a partition that
/// cannot open halts the node so that a restart tries again.
#[tokio::test]
async fn an_assigned_partition_that_fails_to_open_keeps_its_data_and_halts_the_node() {
    let disk = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    let m = manager(&disk);
    let p = lead(&m, 0);
    let mut acked = Vec::new();
    for v in ["a", "b"] {
        let (last, stored) = append(&p, v, true);
        p.wait_acks_all(last).await.expect("acks=all");
        acked.extend(stored);
    }
    assert!(m.close_all().await.is_empty());
    drop((p, m));

    tracing::info!("--- restarted while the partition's files cannot be read");
    let dir = Path::new(LOGS).join("t-0");
    disk.inject(DiskFault {
        op: DiskOp::Read,
        under: dir.clone(),
        error: DiskError::Io,
        times: None,
    });
    let m = manager(&disk);
    let tp = TopicPartition::new("t", 0);
    assert!(
        try_host(&m, 0, alone()).is_err(),
        "the partition cannot open"
    );
    assert!(
        m.health().failure().is_some_and(|f| f.contains("t-0")),
        "the node halts: {:?}",
        m.health().failure()
    );
    m.remove_orphans(&BTreeSet::from([tp]));
    assert!(
        disk.file_len(&dir.join(PARTITION_METADATA)).is_ok(),
        "an assigned partition's directory is not an orphan"
    );
    drop(m);

    tracing::info!("--- the disk is readable again: the next start recovers everything");
    disk.clear_faults();
    let m = manager(&disk);
    let p = lead(&m, 0);
    assert_eq!(p.log_end_offset().expect("leo"), Offset(2));
    assert_eq!(committed(&p), acked);
    assert_eq!(m.health().failure(), None);
}

const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

/// `t-0` led here in epoch 0, replicas {1, B, C}, with C out of the ISR at `partition_epoch`.
fn leader_and_isr(partition_epoch: i32, isr: &[NodeId]) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(0),
        partition_epoch,
        replicas: vec![LOCAL, B, C],
        isr: isr.to_vec(),
    }
}

fn ensure(manager: &ReplicaManager, state: LeaderAndIsr) -> Arc<Partition> {
    try_host(manager, 0, state).expect("ensure")
}

/// A follower's fetch at `offset` (everything below it durable there).
fn follower_fetch(manager: &ReplicaManager, p: &Arc<Partition>, replica: NodeId, offset: i64) {
    manager
        .read_for_follower(
            p,
            FollowerFetch {
                replica,
                current_leader_epoch: Some(LeaderEpoch(0)),
                fetch_offset: Offset(offset),
                last_fetched_epoch: None,
                max_bytes: 1 << 20,
            },
        )
        .expect("follower read");
}

/// Leads `t-0` with ISR {1, B}, writes two durable records that B holds, and lets C catch up
/// to the high watermark: the leader proposes C in, and the proposal is returned.
async fn an_expansion_pending(
    manager: &ReplicaManager,
    proposals: &mut tokio::sync::mpsc::Receiver<IsrProposal>,
) -> (Arc<Partition>, IsrProposal) {
    let p = ensure(manager, leader_and_isr(0, &[LOCAL, B]));
    for v in ["a", "b"] {
        let (last, _) = append(&p, v, true);
        p.wait_durable(last).await.expect("fsync");
    }
    follower_fetch(manager, &p, B, 2);
    assert_eq!(p.high_watermark(), Offset(2));
    follower_fetch(manager, &p, C, 2);
    let proposal = proposals.try_recv().expect("C proposed in");
    assert_eq!(proposal.isr, [LOCAL, B, C]);
    assert_eq!(proposal.partition_epoch, 0);
    (p, proposal)
}

/// Found by the simulator (seed 20944 on 3 nodes): the leader proposed a caught-up follower
/// into the ISR, the controller committed it, and the answer was lost (the leader's own
/// metadata log failed). The leader took the error for a refusal, stopped counting the joiner,
/// and acknowledged an `acks=all` write it did not have; the joiner, in the committed ISR,
/// was elected next and the write was lost. An answer that does not say whether the proposal
/// was applied must leave it pending, the joiner still holding the high watermark back.
#[tokio::test]
async fn an_isr_expansion_whose_outcome_is_unknown_still_holds_the_high_watermark_back() {
    let disk = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    let (m, mut proposals) = manager_and_proposals(&disk);
    let tp = TopicPartition::new("t", 0);
    let (p, proposal) = an_expansion_pending(&m, &mut proposals).await;

    tracing::info!("--- the controller's answer is lost: still pending, to be sent again");
    assert!(m.isr_proposal_answered(&tp, &proposal, IsrAnswer::Unknown));
    assert!(p.pending_isr_change().is_some());
    let (last, _) = append(&p, "c", true);
    p.wait_durable(last).await.expect("fsync");
    follower_fetch(&m, &p, B, 3);
    assert_eq!(
        p.high_watermark(),
        Offset(2),
        "C, perhaps in the committed ISR, does not hold offset 2 yet"
    );

    tracing::info!("--- the resend finds the epochs moved (the first send was committed): wait");
    assert!(!m.isr_proposal_answered(&tp, &proposal, IsrAnswer::Stale));
    assert!(p.pending_isr_change().is_some());
    assert_eq!(p.high_watermark(), Offset(2));

    tracing::info!("--- the metadata brings the committed ISR: settled, C still counts");
    ensure(&m, leader_and_isr(1, &[LOCAL, B, C]));
    assert_eq!(p.pending_isr_change(), None);
    assert!(
        !m.isr_proposal_answered(&tp, &proposal, IsrAnswer::Unknown),
        "settled"
    );
    assert_eq!(p.high_watermark(), Offset(2));
    follower_fetch(&m, &p, C, 3);
    assert_eq!(p.high_watermark(), Offset(3));
}

#[tokio::test]
async fn a_refused_isr_expansion_stops_holding_the_high_watermark_back() {
    let disk = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    let (m, mut proposals) = manager_and_proposals(&disk);
    let tp = TopicPartition::new("t", 0);
    let (p, proposal) = an_expansion_pending(&m, &mut proposals).await;
    let (last, _) = append(&p, "c", true);
    p.wait_durable(last).await.expect("fsync");
    follower_fetch(&m, &p, B, 3);
    assert_eq!(p.high_watermark(), Offset(2), "C, joining, is at 2");

    tracing::info!("--- an answer to another proposal settles nothing");
    let older = IsrProposal {
        isr: vec![LOCAL],
        ..proposal.clone()
    };
    assert!(!m.isr_proposal_answered(&tp, &older, IsrAnswer::Refused));
    assert!(p.pending_isr_change().is_some());

    tracing::info!("--- refused: forgotten, and the ISR {{1, B}} alone sets the high watermark");
    assert!(!m.isr_proposal_answered(&tp, &proposal, IsrAnswer::Refused));
    assert_eq!(p.pending_isr_change(), None);
    assert_eq!(p.high_watermark(), Offset(3));
    assert!(
        !m.isr_proposal_answered(&tp, &proposal, IsrAnswer::Unknown),
        "nothing pending"
    );
}

/// A truncation that fails on an I/O error (here the fsync of the cut segment) may leave the
/// log half cut, on disk and in memory: the node halts, as on a failed fsync of an append, and
/// recovers from its disk when restarted (simulator seed 6198: the follower retried the
/// truncation forever, never caught up, and acks=all writes failed until the end).
#[tokio::test]
async fn a_truncation_failing_on_an_io_error_halts_the_node() {
    let disk = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    let m = manager(&disk);
    let p = lead(&m, 0);
    for v in ["a", "b", "c"] {
        let (last, _) = append(&p, v, true);
        p.wait_acks_all(last).await.expect("acks=all");
    }
    p.apply(LeaderAndIsr {
        leader: Some(B),
        leader_epoch: LeaderEpoch(1),
        partition_epoch: 1,
        replicas: vec![LOCAL, B],
        isr: vec![LOCAL, B],
    })
    .expect("a follower of B");
    disk.inject(DiskFault {
        op: DiskOp::Sync,
        under: Path::new(LOGS).join("t-0"),
        error: DiskError::Io,
        times: None,
    });
    assert!(p.truncate_to(Offset(1)).is_err());
    assert!(
        m.health()
            .failure()
            .is_some_and(|f| f.contains("truncation of partition t-0")),
        "the node halts: {:?}",
        m.health().failure()
    );
}
