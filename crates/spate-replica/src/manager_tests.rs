//! The replica manager on a [`MemoryDisk`]: what a power cut leaves of a hosted partition
//! (its directory, its metadata and its fsynced records, nothing unsynced) and the directory
//! housekeeping (orphans) done through the disk seam.

use crate::core::LeaderAndIsr;
use crate::fetcher::FetcherSettings;
use crate::manager::{ReplicaManager, ReplicationSettings, PARTITION_METADATA};
use crate::partition::{FlushPolicy, Partition};
use spate_log::LogConfig;
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
    let (manager, _proposals) = ReplicaManager::new(
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
    );
    manager
}

/// Hosts `t-<partition>` as the single-replica leader, as a one-node cluster does.
fn lead(manager: &ReplicaManager, partition: i32) -> Arc<Partition> {
    let state = LeaderAndIsr {
        leader: Some(LOCAL),
        leader_epoch: LeaderEpoch(0),
        partition_epoch: 0,
        replicas: vec![LOCAL],
        isr: vec![LOCAL],
    };
    manager
        .ensure(
            TopicPartition::new("t", partition),
            TOPIC_ID,
            LogConfig::default(),
            state,
            BTreeSet::new(),
            0,
        )
        .expect("ensure")
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
    m.remove_orphans();
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
