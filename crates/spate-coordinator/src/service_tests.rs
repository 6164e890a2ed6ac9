//! The coordinator task with a real offsets partition: what it answers, and when.

use crate::core::{GroupSettings, JoinRequest, SyncRequest};
use crate::service::{Coordinator, OFFSETS_TOPIC};
use bytes::Bytes;
use spate_log::LogConfig;
use spate_replica::{
    FlushPolicy, FollowerFetch, LeaderAndIsr, Partition, ReplicaSettings, StorageHealth,
};
use spate_types::{LeaderEpoch, NodeId, Offset, Seams, TopicPartition};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

const LOCAL: NodeId = NodeId(1);
const FOLLOWER: NodeId = NodeId(2);

/// `__consumer_offsets-0` led here, with a follower in its ISR that has fetched nothing: the
/// high watermark moves only when the test has the follower fetch.
fn offsets_partition(dir: &std::path::Path) -> Arc<Partition> {
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir,
        TopicPartition::new(OFFSETS_TOPIC, 0),
        uuid::Uuid::from_u128(50),
        LogConfig::default(),
        ReplicaSettings {
            local: LOCAL,
            replica_lag_time_max_ms: 60_000,
            min_insync_replicas: 1,
            fsync_required: true,
        },
        FlushPolicy::default(),
        StorageHealth::default(),
        Arc::new(spate_types::SystemClock),
        0,
    )
    .expect("open");
    p.apply(LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(1),
        partition_epoch: 1,
        replicas: vec![LOCAL, FOLLOWER],
        isr: vec![LOCAL, FOLLOWER],
    })
    .expect("leader");
    p
}

/// Polls `f` once: its output if ready.
async fn poll_once<F: Future>(f: &mut Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// As Kafka's coordinator does, a SyncGroup that hands out an assignment is answered only once
/// the group's record (its generation, members and assignment) is durable on every in-sync
/// replica. Answered earlier, a coordinator taking over after a failure could load an older
/// generation and count the same generation again with other members: two members would own
/// one partition in "one" generation (found by the simulator's group members).
#[tokio::test]
async fn a_sync_hands_out_its_assignment_only_once_the_group_record_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = offsets_partition(dir.path());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let coordinator = Coordinator::start_with_seams(
        GroupSettings {
            initial_rebalance_delay_ms: 0,
            ..GroupSettings::default()
        },
        1,
        Duration::from_secs(600),
        stopped,
        Seams::system(),
    );
    coordinator
        .own(BTreeMap::from([(0, partition.clone())]))
        .await;
    let joined = coordinator
        .join(JoinRequest {
            group_id: "g".into(),
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            ..JoinRequest::default()
        })
        .await;
    assert_eq!(joined.error, None);
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    let end_before = partition.log_end_offset().expect("log end");

    let sync = coordinator.sync(SyncRequest {
        group_id: "g".into(),
        generation_id: joined.generation_id,
        member_id: joined.member_id.clone(),
        assignments: vec![(joined.member_id.clone(), Bytes::from_static(b"a"))],
        ..SyncRequest::default()
    });
    let mut sync = std::pin::pin!(sync);
    assert!(poll_once(&mut sync).await.is_none(), "queued, not answered");
    // The task handles commands in order, and answers (or holds) a command's requests before
    // the next: once this query is answered, the sync has been handled.
    coordinator.query(|_, _| ()).await.expect("query");
    let end = partition.log_end_offset().expect("log end");
    assert!(end > end_before, "the group record is in the leader's log");
    assert_eq!(partition.high_watermark(), Offset(0));
    assert!(
        poll_once(&mut sync).await.is_none(),
        "no assignment before the group record is on the follower"
    );

    partition
        .read_for_follower(FollowerFetch {
            replica: FOLLOWER,
            current_leader_epoch: Some(LeaderEpoch(1)),
            fetch_offset: end,
            last_fetched_epoch: None,
            max_bytes: 1 << 20,
        })
        .expect("follower fetch");
    let answer = sync.await;
    assert_eq!(answer.error, None);
    assert_eq!(answer.assignment, Bytes::from_static(b"a"));
    assert_eq!(partition.high_watermark(), end);
}

/// Offsets a transaction commits (TxnOffsetCommit) are stored in the producer's transactional
/// batch and become the group's only at its COMMIT marker, which makes it an exactly-once
/// group; an ABORT drops them; and a coordinator loading the partition afterwards gets the
/// same answers from the log alone.
#[tokio::test]
async fn transactional_offsets_count_only_once_their_transaction_commits_and_survive_a_reload() {
    use crate::service::TxnProducer;
    use spate_log::TxnMarker;
    use spate_types::{ProducerEpoch, ProducerId};

    let dir = tempfile::tempdir().expect("tempdir");
    let partition = offsets_partition(dir.path());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let start = |stopped| {
        Coordinator::start_with_seams(
            GroupSettings::default(),
            1,
            Duration::from_secs(600),
            stopped,
            Seams::system(),
        )
    };
    let coordinator = start(stopped.clone());
    coordinator
        .own(BTreeMap::from([(0, partition.clone())]))
        .await;
    let producer = TxnProducer {
        producer_id: 7,
        producer_epoch: 0,
    };
    let commit = |offset: i64| crate::core::CommitRequest {
        group_id: "g".into(),
        generation_id: -1,
        offsets: vec![("t".into(), 0, offset, -1, None)],
        ..Default::default()
    };
    let committed = |c: &Coordinator| {
        let c = c.clone();
        async move {
            c.query(|core, _| {
                let offset = core
                    .fetch_offsets("g", None, None)
                    .first()
                    .and_then(|(_, _, o)| o.clone());
                (
                    offset.map(|o| o.offset),
                    core.txn_offset_pending("g", "t", 0),
                )
            })
            .await
            .expect("query")
        }
    };
    let marker = |commit: bool| {
        partition
            .with_log(|log| {
                log.append_marker(
                    TxnMarker {
                        producer_id: ProducerId(7),
                        producer_epoch: ProducerEpoch(0),
                        coordinator_epoch: 0,
                        commit,
                    },
                    LeaderEpoch(1),
                    0,
                )
            })
            .expect("marker");
    };

    let exactly_once = |c: &Coordinator| {
        let c = c.clone();
        async move {
            c.query(|core, _| core.is_exactly_once("g"))
                .await
                .expect("query")
        }
    };

    let out = coordinator.txn_commit(commit(5), producer).await;
    assert_eq!(out.results, Ok(vec![None]));
    assert_eq!(
        committed(&coordinator).await,
        (None, true),
        "pending until the commit"
    );
    assert!(!exactly_once(&coordinator).await);
    marker(true);
    coordinator.complete_txn(0, 7, true).await;
    assert_eq!(committed(&coordinator).await, (Some(5), false));
    assert!(exactly_once(&coordinator).await);

    coordinator.txn_commit(commit(9), producer).await;
    marker(false);
    coordinator.complete_txn(0, 7, false).await;
    assert_eq!(
        committed(&coordinator).await,
        (Some(5), false),
        "an abort commits nothing"
    );

    // Two more transactions: one committed (its marker written, the coordinator not told
    // before it moves), one still open.
    coordinator.txn_commit(commit(11), producer).await;
    marker(true);
    coordinator.txn_commit(commit(13), producer).await;
    coordinator.own(BTreeMap::new()).await;

    let reloaded = start(stopped);
    reloaded.own(BTreeMap::from([(0, partition.clone())])).await;
    assert_eq!(
        committed(&reloaded).await,
        (Some(11), true),
        "the reload applies the committed transaction and holds the open one"
    );
    assert!(
        exactly_once(&reloaded).await,
        "the replayed commit makes the group exactly-once again"
    );
    reloaded.complete_txn(0, 7, true).await;
    assert_eq!(committed(&reloaded).await, (Some(13), false));
}

/// The records of one internal write (an OffsetCommit of several partitions, a Complete
/// record with the next Ongoing one) go in one batch: appended, replicated and recovered
/// all or nothing. The encoder split them one batch per record before.
#[tokio::test]
async fn the_records_of_one_internal_write_are_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let partition = offsets_partition(dir.path());
    let records = (0..3).map(|i| (Bytes::from(format!("k{i}")), Some(Bytes::from("v"))));
    let last = crate::service::append_records(&partition, records, 0).expect("append");
    assert_eq!(last, Offset(2));
    let mut seen = Vec::new();
    crate::service::replay_records(&partition, |header, record| {
        seen.push((header.base_offset.0, header.producer_id.0, record.key));
    })
    .expect("replay");
    assert_eq!(
        seen,
        (0..3)
            .map(|i| (0, -1, Some(Bytes::from(format!("k{i}")))))
            .collect::<Vec<_>>()
    );
}
