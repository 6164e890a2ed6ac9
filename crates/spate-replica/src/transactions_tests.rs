//! Transactions through [`Partition`]: markers appended by the leader and replicated, the last
//! stable offset and its watch, `read_committed` reads, aborted transactions, and KIP-890
//! verification guards. One property per test; the leader's high watermark is moved by
//! explicit follower fetches, so every step is deterministic.
#![allow(clippy::unwrap_used)]

use crate::core::LeaderAndIsr;
use crate::health::StorageHealth;
use crate::partition::transactions::VERIFICATION_GUARDS_MAX;
use crate::partition::{FlushPolicy, FollowerFetch, Partition, ReplicaError};
use crate::ReplicaSettings;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_log::{AbortedTxn, LogConfig, LogError, TxnMarker};
use spate_types::{LeaderEpoch, NodeId, Offset, ProducerEpoch, ProducerId, TopicPartition};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const LOCAL: NodeId = NodeId(1);
const OTHER: NodeId = NodeId(2);
const NOW_MS: i64 = 1_000;
const PID: ProducerId = ProducerId(7);
const EPOCH: ProducerEpoch = ProducerEpoch(0);

fn state(leader: NodeId, replicas: &[NodeId], isr: &[NodeId]) -> LeaderAndIsr {
    LeaderAndIsr {
        leader: Some(leader),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
        replicas: replicas.to_vec(),
        isr: isr.to_vec(),
    }
}

/// A partition of "t" on the OS disk in `dir`, in `state`.
fn open_as(dir: &Path, config: LogConfig, state: LeaderAndIsr) -> Arc<Partition> {
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir,
        TopicPartition::new("t", 0),
        uuid::Uuid::from_u128(7),
        config,
        ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 10_000,
            min_insync_replicas: 1,
            fsync_required: true,
        },
        FlushPolicy::default(),
        StorageHealth::default(),
        Arc::new(spate_types::SystemClock),
        NOW_MS,
    )
    .expect("open");
    p.apply(state).expect("apply");
    p
}

/// A leader whose ISR also holds `OTHER`: its high watermark moves only with
/// [`replicate`].
fn leader_with_follower(dir: &Path) -> Arc<Partition> {
    open_as(
        dir,
        LogConfig::default(),
        state(LOCAL, &[LOCAL, OTHER], &[LOCAL, OTHER]),
    )
}

/// One batch of `count` records; transactional and of `producer` (id, epoch, base sequence)
/// if given.
fn batch(count: usize, producer: Option<(ProducerId, i32)>) -> Vec<u8> {
    let (pid, epoch, sequence) = producer.map_or((-1, -1, -1), |(p, s)| (p.0, EPOCH.0, s));
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if sequence < 0 {
                -1
            } else {
                sequence + i as i32
            },
            timestamp: NOW_MS,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

fn txn(sequence: i32) -> Vec<u8> {
    batch(1, Some((PID, sequence)))
}

fn marker(commit: bool) -> TxnMarker {
    TxnMarker {
        producer_id: PID,
        producer_epoch: EPOCH,
        coordinator_epoch: 0,
        commit,
    }
}

/// The follower `OTHER` fetches at `upto` (it holds everything below durably), and the
/// leader's own fsync covers it too: the high watermark reaches `upto`.
async fn replicate(leader: &Partition, upto: Offset) {
    leader.wait_durable(Offset(upto.0 - 1)).await.unwrap();
    leader
        .read_for_follower(FollowerFetch {
            replica: OTHER,
            current_leader_epoch: None,
            fetch_offset: upto,
            last_fetched_epoch: None,
            max_bytes: 1 << 20,
        })
        .unwrap();
    // The flusher publishes the fsynced offset just before the core takes it in.
    let mut hw = leader.subscribe_high_watermark();
    tokio::time::timeout(Duration::from_secs(10), hw.wait_for(|hw| *hw >= upto))
        .await
        .expect("the high watermark reaches the follower's fetch offset")
        .unwrap();
}

/// What a read of `p` from 0 returns, as bytes.
fn read_all(p: &Partition, committed: bool) -> Bytes {
    let read = if committed {
        p.read_committed(Offset(0), 1 << 20, true)
    } else {
        p.read(Offset(0), 1 << 20, true)
    };
    read.unwrap().plan.load().unwrap()
}

/// The offsets of the batches in `bytes`: (base, last).
fn batches(bytes: &[u8]) -> Vec<(i64, i64)> {
    spate_log::validate_replicated_batches(bytes)
        .unwrap()
        .iter()
        .map(|h| (h.base_offset.0, h.last_offset().0))
        .collect()
}

#[tokio::test]
async fn a_marker_is_refused_off_the_leader_and_below_min_insync_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let follower = open_as(
        dir.path(),
        LogConfig::default(),
        state(OTHER, &[OTHER, LOCAL], &[OTHER, LOCAL]),
    );
    assert!(matches!(
        follower.append_marker(marker(true), NOW_MS),
        Err(ReplicaError::NotLeader {
            leader: Some(OTHER),
            ..
        })
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        min_insync_replicas: 2,
        ..LogConfig::default()
    };
    let alone = open_as(dir.path(), config, state(LOCAL, &[LOCAL, OTHER], &[LOCAL]));
    assert!(matches!(
        alone.append_marker(marker(true), NOW_MS),
        Err(ReplicaError::NotEnoughReplicas {
            isr: 1,
            required: 2,
            ..
        })
    ));
    assert_eq!(
        alone.log_end_offset().unwrap(),
        Offset(0),
        "nothing written"
    );
}

#[tokio::test]
async fn the_last_stable_offset_stops_at_an_open_transaction_until_its_marker_is_replicated() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_follower(dir.path());
    let mut lso = leader.subscribe_last_stable_offset();

    tracing::info!("--- without transactions the last stable offset is the high watermark");
    leader.append(&mut batch(2, None), true, NOW_MS).unwrap();
    replicate(&leader, Offset(2)).await;
    assert_eq!(leader.last_stable_offset(), Offset(2));
    assert!(
        lso.has_changed().unwrap(),
        "published with the high watermark"
    );
    assert_eq!(*lso.borrow_and_update(), Offset(2));

    tracing::info!("--- a transaction opens at 2: the last stable offset stays there");
    leader.append(&mut txn(0), true, NOW_MS).unwrap();
    leader.append(&mut batch(1, None), true, NOW_MS).unwrap();
    replicate(&leader, Offset(4)).await;
    assert_eq!(leader.high_watermark(), Offset(4));
    assert_eq!(leader.last_stable_offset(), Offset(2));
    assert!(!lso.has_changed().unwrap());
    assert_eq!(
        batches(&read_all(&leader, false)),
        [(0, 0), (1, 1), (2, 2), (3, 3)]
    );
    assert_eq!(
        batches(&read_all(&leader, true)),
        [(0, 0), (1, 1)],
        "read_committed stops before the open transaction"
    );
    let past = leader.read_committed(Offset(3), 1 << 20, true).unwrap();
    assert!(
        past.plan.is_empty(),
        "between the last stable offset and the high watermark: empty, not out of range"
    );
    assert_eq!(
        (past.high_watermark, past.last_stable_offset),
        (Offset(4), Offset(2))
    );

    tracing::info!("--- the COMMIT marker at 4, not yet below the high watermark: no change");
    let receipt = leader.append_marker(marker(true), NOW_MS).unwrap();
    assert_eq!(
        (receipt.base_offset, receipt.last_offset),
        (Offset(4), Offset(4))
    );
    assert_eq!(leader.last_stable_offset(), Offset(2));
    assert!(!lso.has_changed().unwrap());

    tracing::info!(
        "--- a follower holding the marker agrees, before and after the high watermark passes it"
    );
    let follower_dir = tempfile::tempdir().unwrap();
    let follower = open_as(
        follower_dir.path(),
        LogConfig::default(),
        state(OTHER, &[OTHER, LOCAL], &[OTHER, LOCAL]),
    );
    let bytes = leader
        .read_to_log_end(Offset(0), 1 << 20)
        .unwrap()
        .plan
        .load()
        .unwrap();
    follower
        .append_from_leader(&bytes, leader.high_watermark(), NOW_MS)
        .unwrap();
    assert_eq!(follower.high_watermark(), Offset(4));
    assert_eq!(follower.last_stable_offset(), Offset(2));

    tracing::info!(
        "--- the marker is replicated: the last stable offset passes it, and is published"
    );
    replicate(&leader, Offset(5)).await;
    assert_eq!(leader.last_stable_offset(), Offset(5));
    assert!(lso.has_changed().unwrap());
    assert_eq!(*lso.borrow_and_update(), Offset(5));
    assert_eq!(batches(&read_all(&leader, true)).last(), Some(&(4, 4)));
    follower
        .append_from_leader(&[], leader.high_watermark(), NOW_MS)
        .unwrap();
    assert_eq!(follower.high_watermark(), Offset(5));
    assert_eq!(follower.last_stable_offset(), Offset(5));
    assert_eq!(*follower.subscribe_last_stable_offset().borrow(), Offset(5));
}

#[tokio::test]
async fn an_aborted_transaction_is_listed_for_read_committed_readers() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_follower(dir.path());
    leader.append(&mut batch(1, None), true, NOW_MS).unwrap();
    leader.append(&mut txn(0), true, NOW_MS).unwrap();
    leader.append(&mut txn(1), true, NOW_MS).unwrap();
    leader.append_marker(marker(false), NOW_MS).unwrap();
    replicate(&leader, Offset(4)).await;
    assert_eq!(leader.last_stable_offset(), Offset(4));
    let aborted = AbortedTxn {
        producer_id: PID,
        first_offset: Offset(1),
        last_offset: Offset(3),
        last_stable_offset: Offset(4),
    };
    assert_eq!(
        leader.aborted_transactions(Offset(0), Offset(4)).unwrap(),
        [aborted]
    );
    assert_eq!(
        leader.aborted_transactions(Offset(0), Offset(1)).unwrap(),
        [],
        "a read that ends before the transaction began"
    );

    tracing::info!("--- a committed transaction lists nothing more");
    leader.append(&mut txn(2), true, NOW_MS).unwrap();
    leader.append_marker(marker(true), NOW_MS).unwrap();
    replicate(&leader, Offset(6)).await;
    assert_eq!(
        leader.aborted_transactions(Offset(4), Offset(6)).unwrap(),
        []
    );
    let producers = leader.producers().unwrap();
    assert_eq!(producers.len(), 1);
    assert_eq!(producers[0].0, PID);
    assert_eq!(producers[0].1.current_txn_first_offset, None);
}

#[tokio::test]
async fn a_verified_write_opens_the_transaction_and_consumes_its_guard() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_follower(dir.path());
    let guard = leader.verification_guard(PID, EPOCH).unwrap();
    assert!(guard.is_some(), "no transaction open: verification needed");
    assert_eq!(leader.verification_guards(), 1);
    leader
        .append_verified(&mut txn(0), true, NOW_MS, guard)
        .unwrap();
    assert_eq!(leader.verification_guards(), 0, "consumed");

    tracing::info!("--- the transaction is open at this epoch: no verification needed");
    assert_eq!(leader.verification_guard(PID, EPOCH).unwrap(), None);
    assert_eq!(leader.verification_guards(), 0);
    leader
        .append_verified(&mut txn(1), true, NOW_MS, None)
        .unwrap();
    tracing::info!("--- a newer producer epoch is verified");
    assert!(leader
        .verification_guard(PID, ProducerEpoch(1))
        .unwrap()
        .is_some());

    tracing::info!("--- a non-transactional batch needs none");
    leader
        .append_verified(&mut batch(1, None), true, NOW_MS, None)
        .unwrap();
    assert_eq!(leader.log_end_offset().unwrap(), Offset(3));
}

#[tokio::test]
async fn a_marker_between_verification_and_the_write_refuses_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_follower(dir.path());

    tracing::info!("--- verified, then a marker (the coordinator retrying an earlier one)");
    let guard = leader.verification_guard(PID, EPOCH).unwrap();
    leader.append_marker(marker(false), NOW_MS).unwrap();
    let end = leader.log_end_offset().unwrap();
    let refused = leader.append_verified(&mut txn(0), true, NOW_MS, guard);
    assert!(
        matches!(
            refused,
            Err(ReplicaError::Log(LogError::InvalidTxnState { producer_id })) if producer_id == PID
        ),
        "{refused:?}"
    );
    assert_eq!(leader.log_end_offset().unwrap(), end, "nothing written");

    tracing::info!(
        "--- the zombie: verified while its transaction was open, written after its marker"
    );
    let guard = leader.verification_guard(PID, EPOCH).unwrap();
    leader
        .append_verified(&mut txn(0), true, NOW_MS, guard)
        .unwrap();
    assert_eq!(leader.verification_guard(PID, EPOCH).unwrap(), None);
    leader.append_marker(marker(true), NOW_MS).unwrap();
    let end = leader.log_end_offset().unwrap();
    assert!(matches!(
        leader.append_verified(&mut txn(1), true, NOW_MS, None),
        Err(ReplicaError::Log(LogError::InvalidTxnState { .. }))
    ));
    assert_eq!(leader.log_end_offset().unwrap(), end, "nothing written");

    tracing::info!("--- a stale guard is refused; the unverified append stays as it was");
    let stale = leader.verification_guard(PID, EPOCH).unwrap();
    let fresh = leader.verification_guard(PID, EPOCH).unwrap();
    assert_ne!(stale, fresh);
    assert!(matches!(
        leader.append_verified(&mut txn(1), true, NOW_MS, stale),
        Err(ReplicaError::Log(LogError::InvalidTxnState { .. }))
    ));
    leader.append(&mut txn(1), true, NOW_MS).unwrap();
}

#[tokio::test]
async fn verification_guards_are_bounded_and_the_oldest_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let leader = leader_with_follower(dir.path());
    let count = i64::try_from(VERIFICATION_GUARDS_MAX).unwrap() + 1;
    let mut guards = Vec::new();
    for pid in 0..count {
        guards.push(leader.verification_guard(ProducerId(pid), EPOCH).unwrap());
    }
    assert_eq!(leader.verification_guards(), VERIFICATION_GUARDS_MAX);
    let write = |pid: i64, guard: Option<u64>| {
        let mut b = batch(1, Some((ProducerId(pid), 0)));
        leader.append_verified(&mut b, false, NOW_MS, guard)
    };
    assert!(
        matches!(
            write(0, guards[0]),
            Err(ReplicaError::Log(LogError::InvalidTxnState { .. }))
        ),
        "the oldest guard was dropped"
    );
    write(1, guards[1]).unwrap();
    write(count - 1, guards[guards.len() - 1]).unwrap();
    assert_eq!(leader.verification_guards(), VERIFICATION_GUARDS_MAX - 2);
}
