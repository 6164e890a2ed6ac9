//! Fetch against a real leader replica: `read_committed` against `read_uncommitted` around
//! open, aborted and committed transactions, and the long poll of a `read_committed` consumer.
//! The helpers are shared with the ListOffsets and DescribeProducers tests.
#![allow(clippy::unwrap_used)]

use super::*;
use bytes::BytesMut;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_log::{LogConfig, TxnMarker};
use spate_replica::{
    FetcherSettings, FlushPolicy, LeaderAndIsr, ReplicaSettings, ReplicationSettings, StorageHealth,
};
use spate_types::{ProducerEpoch, ProducerId as Pid};
use std::path::Path;

const LOCAL: NodeId = NodeId(1);
/// The wall-clock time appends happen at; the batches' own timestamps are below it.
pub(crate) const NOW_MS: i64 = 10_000;
/// The transactional producer of these tests.
pub(crate) const TXN_PID: i64 = 7;

/// The single-replica leader of "t"-0 in `dir` (its high watermark follows its fsyncs).
pub(crate) fn leader(dir: &Path) -> Arc<Partition> {
    let p = Partition::open(
        Arc::new(spate_types::OsDisk),
        dir,
        TopicPartition::new("t", 0),
        Uuid::from_u128(7),
        LogConfig::default(),
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
    .unwrap();
    p.apply(LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
        replicas: vec![LOCAL],
        isr: vec![LOCAL],
    })
    .unwrap();
    p
}

/// One batch of `count` records stamped `timestamp_ms`: plain if `producer` is `None`, else
/// of producer `(id, base sequence)` in epoch 0, transactional if `transactional`.
pub(crate) fn batch(
    count: usize,
    producer: Option<(i64, i32)>,
    transactional: bool,
    timestamp_ms: i64,
) -> Vec<u8> {
    let (pid, epoch, sequence) = producer.map_or((-1, -1, -1), |(p, s)| (p, 0, s));
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional,
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
            timestamp: timestamp_ms,
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

/// A transactional batch of `count` records of [`TXN_PID`] from `sequence`.
pub(crate) fn txn(count: usize, sequence: i32, timestamp_ms: i64) -> Vec<u8> {
    batch(count, Some((TXN_PID, sequence)), true, timestamp_ms)
}

/// Appends `records` with `acks=all` and waits until they are below the high watermark.
pub(crate) async fn produce(p: &Partition, mut records: Vec<u8>) {
    let receipt = p.append(&mut records, true, NOW_MS).unwrap();
    p.wait_acks_all(receipt.last_offset).await.unwrap();
}

/// Ends `producer`'s transaction with a marker (coordinator epoch 0) and waits until the
/// marker is below the high watermark. Returns the marker's offset.
pub(crate) async fn end_txn(p: &Partition, producer: i64, commit: bool) -> i64 {
    let marker = TxnMarker {
        producer_id: Pid(producer),
        producer_epoch: ProducerEpoch(0),
        coordinator_epoch: 0,
        commit,
    };
    let receipt = p.append_marker(marker, NOW_MS).unwrap();
    p.wait_acks_all(receipt.last_offset).await.unwrap();
    receipt.last_offset.0
}

fn replicas(dir: &Path) -> Arc<ReplicaManager> {
    ReplicaManager::new(
        Arc::new(spate_types::OsDisk),
        dir,
        FlushPolicy::default(),
        ReplicationSettings {
            node: LOCAL,
            replica_lag_time_max_ms: 10_000,
            fetch: FetcherSettings::default(),
        },
    )
    .0
}

/// A consumer's fetch of `p` from `offset`, at most `max_bytes`.
fn plan(p: &Arc<Partition>, offset: i64, max_bytes: usize, read_committed: bool) -> Plan {
    let topic = p.topic_partition().topic.clone();
    Plan {
        topics: vec![(TopicName(StrBytes::from_string(topic)), Uuid::nil())],
        wanted: vec![Wanted {
            topic_index: 0,
            partition_index: 0,
            fetch_offset: offset,
            partition_max_bytes: i32::try_from(max_bytes).unwrap(),
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            partition: Ok(Arc::clone(p)),
        }],
        max_bytes,
        replica: None,
        replicas: replicas(Path::new("/nonexistent-logs-dir")),
        version: 16,
        read_committed,
    }
}

/// The one partition of a response.
fn answer(response: &FetchResponse) -> &PartitionData {
    &response.responses[0].partitions[0]
}

fn fetch(p: &Arc<Partition>, offset: i64, read_committed: bool) -> PartitionData {
    let (response, _, _) = read_all(&plan(p, offset, 1 << 20, read_committed));
    answer(&response).clone()
}

/// The `(base, last)` offsets of the batches in a partition answer.
fn batches(data: &PartitionData) -> Vec<(i64, i64)> {
    let bytes = data.records.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(Ok(h)) = bytes.get(pos..).map(BatchHeader::parse) {
        pos += h.total_bytes();
        out.push((h.base_offset.0, h.last_offset().0));
    }
    assert_eq!(pos, bytes.len(), "whole batches");
    out
}

fn aborted(data: &PartitionData) -> Option<Vec<(i64, i64)>> {
    data.aborted_transactions.as_ref().map(|a| {
        a.iter()
            .map(|t| (t.producer_id.0, t.first_offset))
            .collect()
    })
}

#[tokio::test]
async fn read_committed_stops_at_an_open_transaction_and_read_uncommitted_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = leader(dir.path());
    produce(&p, batch(1, None, false, 1_000)).await;
    produce(&p, txn(2, 0, 2_000)).await;
    produce(&p, batch(1, None, false, 3_000)).await;

    let uncommitted = fetch(&p, 0, false);
    assert_eq!(uncommitted.error_code, 0);
    assert_eq!(batches(&uncommitted), [(0, 0), (1, 2), (3, 3)]);
    assert_eq!(
        (uncommitted.high_watermark, uncommitted.last_stable_offset),
        (4, 1)
    );
    assert_eq!(aborted(&uncommitted), None, "null for read_uncommitted");

    let committed = fetch(&p, 0, true);
    assert_eq!(committed.error_code, 0);
    assert_eq!(batches(&committed), [(0, 0)], "up to the open transaction");
    assert_eq!(
        (committed.high_watermark, committed.last_stable_offset),
        (4, 1)
    );
    assert_eq!(aborted(&committed), Some(vec![]));

    tracing::info!(
        "--- between the last stable offset and the high watermark: empty, not out of range"
    );
    let past = fetch(&p, 3, true);
    assert_eq!(past.error_code, 0);
    assert_eq!(batches(&past), []);
    assert_eq!(past.last_stable_offset, 1);
    assert_eq!(
        fetch(&p, 5, true).error_code,
        ResponseError::OffsetOutOfRange.code(),
        "past the log end it is"
    );
}

#[tokio::test]
async fn an_aborted_transaction_is_listed_and_a_committed_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = leader(dir.path());
    produce(&p, batch(1, None, false, 1_000)).await;
    produce(&p, txn(1, 0, 2_000)).await;
    assert_eq!(end_txn(&p, TXN_PID, false).await, 2);
    produce(&p, batch(1, Some((8, 0)), true, 3_000)).await;
    assert_eq!(end_txn(&p, 8, true).await, 4);

    let committed = fetch(&p, 0, true);
    assert_eq!(
        batches(&committed),
        [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)],
        "everything, markers included: the consumer drops the aborted records"
    );
    assert_eq!(committed.last_stable_offset, 5);
    assert_eq!(aborted(&committed), Some(vec![(TXN_PID, 1)]));
    assert_eq!(
        aborted(&fetch(&p, 3, true)),
        Some(vec![]),
        "the committed transaction is not listed"
    );
    assert_eq!(aborted(&fetch(&p, 0, false)), None);

    tracing::info!("--- a read that returns only the first batch lists nothing after it");
    let (response, _, _) = read_all(&plan(&p, 0, 1, true));
    assert_eq!(batches(answer(&response)), [(0, 0)], "KIP-74: one batch");
    assert_eq!(aborted(answer(&response)), Some(vec![]));
}

#[tokio::test]
async fn a_parked_read_committed_fetch_wakes_when_the_last_stable_offset_moves() {
    let dir = tempfile::tempdir().unwrap();
    let p = leader(dir.path());
    produce(&p, txn(1, 0, 2_000)).await;

    tracing::info!("--- parked at the open transaction, with a minute to wait");
    let plan = plan(&p, 0, 1 << 20, true);
    let watches = subscribe(&plan);
    let (first, bytes, errors) = read_all(&plan);
    assert_eq!((bytes, errors), (0, false));
    assert_eq!(answer(&first).last_stable_offset, 0);
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let poll = long_poll(plan, watches, 1, Instant::now() + MAX_WAIT_CAP, shutdown_rx);
    tokio::pin!(poll);
    assert!(futures::poll!(&mut poll).is_pending());

    tracing::info!("--- the high watermark moves, the last stable offset does not: still parked");
    produce(&p, batch(1, None, false, 3_000)).await;
    assert_eq!(
        (p.high_watermark(), p.last_stable_offset()),
        (Offset(2), Offset(0))
    );
    assert!(futures::poll!(&mut poll).is_pending());

    tracing::info!(
        "--- the commit marker is written: its log end wakes the fetch, which finds nothing yet"
    );
    let marker = TxnMarker {
        producer_id: Pid(TXN_PID),
        producer_epoch: ProducerEpoch(0),
        coordinator_epoch: 0,
        commit: true,
    };
    let receipt = p.append_marker(marker, NOW_MS).unwrap();
    // The flusher task has not run (this runtime runs one task at a time and the test has not
    // yielded): the high watermark, and so the last stable offset, are where they were.
    assert_eq!(p.last_stable_offset(), Offset(0));
    assert!(futures::poll!(&mut poll).is_pending());

    tracing::info!("--- the marker passes the high watermark: the fetch answers at once");
    p.wait_acks_all(receipt.last_offset).await.unwrap();
    let std::task::Poll::Ready(response) = futures::poll!(&mut poll) else {
        panic!("woken by the last stable offset, not by its timeout");
    };
    let data = answer(&response);
    assert_eq!(data.last_stable_offset, 3);
    assert_eq!(batches(data), [(0, 0), (1, 1), (2, 2)]);
    assert_eq!(aborted(data), Some(vec![]));
}
