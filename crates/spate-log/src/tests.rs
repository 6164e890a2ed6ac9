//! Behavioural tests of `PartitionLog`, written as phases, plus property tests of random
//! operation sequences and of crash recovery at any byte.
#![allow(clippy::unwrap_used)]

use crate::batch::testutil::{raw_batch, record_batch};
use crate::batch::BatchHeader;
use crate::*;
use kafka_protocol::records::Compression;
use proptest::prelude::*;
use spate_types::{LeaderEpoch, Offset, ProducerId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The operating system's disk: these tests inspect and damage the files with `std::fs`.
fn os() -> Arc<dyn spate_types::Disk> {
    Arc::new(spate_types::OsDisk)
}

const E: LeaderEpoch = LeaderEpoch(1);

fn cfg(segment_bytes: u64, index_interval_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, c: &LogConfig) -> PartitionLog {
    PartitionLog::open(os(), dir, c.clone(), 0).unwrap()
}

/// Appends and returns the batches as stored (offsets and epoch assigned).
fn append(log: &mut PartitionLog, batches: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut set: Vec<u8> = batches.concat();
    match log.append(&mut set, E, 0).unwrap() {
        AppendOutcome::Appended(_) => {}
        AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
    }
    split(&set)
}

fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = BatchHeader::parse(bytes).unwrap().total_bytes();
        out.push(bytes[..n].to_vec());
        bytes = &bytes[n..];
    }
    out
}

fn header(b: &[u8]) -> BatchHeader {
    BatchHeader::parse(b).unwrap()
}

fn read_all(log: &PartitionLog) -> Vec<Vec<u8>> {
    read_until(log, log.log_end_offset())
}

/// Every batch below `limit` (exclusive).
fn read_until(log: &PartitionLog, limit: Offset) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < limit {
        let plan = log.plan_read(next, 4096, limit, true).unwrap();
        if plan.is_empty() {
            break;
        }
        for b in split(&plan.load().unwrap()) {
            next = header(&b).next_offset();
            out.push(b);
        }
    }
    out
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn plain(count: i32, ts: i64, payload_len: usize) -> Vec<u8> {
    raw_batch(count, (-1, -1, -1), ts, &vec![7u8; payload_len])
}

#[test]
fn append_assigns_offsets_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let a = append(&mut log, &[plain(3, 10, 5), plain(2, 20, 5)]);
    let b = append(&mut log, &[plain(1, 30, 0)]);
    assert_eq!(log.log_end_offset(), Offset(6));
    assert_eq!(header(&a[1]).base_offset, Offset(3));
    assert_eq!(header(&b[0]).base_offset, Offset(5));
    assert_eq!(header(&b[0]).partition_leader_epoch, E);
    assert_eq!(read_all(&log), [a, b].concat());
    assert_eq!(log.epoch_end_offset(E), Some((E, Offset(6))));
}

#[test]
fn invalid_input_is_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        &LogConfig {
            max_message_bytes: 200,
            ..LogConfig::default()
        },
    );
    let mut bad = plain(1, 0, 10);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        log.append(&mut bad, E, 0),
        Err(LogError::Batch(BatchError::CrcMismatch { .. }))
    ));
    let mut big = plain(1, 0, 500);
    assert!(matches!(
        log.append(&mut big, E, 0),
        Err(LogError::Batch(BatchError::TooLarge { .. }))
    ));
    assert_eq!((log.log_end_offset(), log.size_bytes()), (Offset(0), 0));
}

#[test]
fn fetch_inside_a_batch_returns_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &cfg(1 << 20, 0));
    let stored = append(&mut log, &[plain(5, 0, 10), plain(5, 0, 10)]);
    let plan = log.plan_read(Offset(7), 1 << 20, Offset(10), true).unwrap();
    assert_eq!(plan.load().unwrap().to_vec(), stored[1]);
}

#[test]
fn kip74_oversized_first_batch_and_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &cfg(1 << 20, 0));
    let stored = append(
        &mut log,
        &[plain(1, 0, 1000), plain(1, 0, 10), plain(1, 0, 10)],
    );
    let plan = log.plan_read(Offset(0), 100, Offset(3), true).unwrap();
    assert_eq!(
        plan.load().unwrap().to_vec(),
        stored[0],
        "first batch whole even though larger than max_bytes"
    );
    assert!(log
        .plan_read(Offset(0), 100, Offset(3), false)
        .unwrap()
        .is_empty());
    // Whole batches only: room for one and a half small batches returns one.
    let room = stored[1].len() + stored[2].len() / 2;
    let plan = log.plan_read(Offset(1), room, Offset(3), false).unwrap();
    assert_eq!(plan.load().unwrap().to_vec(), stored[1]);
}

#[test]
fn reads_stop_at_the_high_watermark_and_check_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &cfg(1 << 20, 0));
    let stored = append(&mut log, &[plain(2, 0, 1), plain(2, 0, 1), plain(2, 0, 1)]);
    let plan = log.plan_read(Offset(0), 1 << 20, Offset(4), true).unwrap();
    assert_eq!(
        plan.load().unwrap().to_vec(),
        [stored[0].clone(), stored[1].clone()].concat()
    );
    // A batch straddling the high watermark is not served.
    assert_eq!(
        split(
            &log.plan_read(Offset(0), 1 << 20, Offset(3), true)
                .unwrap()
                .load()
                .unwrap()
        ),
        vec![stored[0].clone()]
    );
    assert!(log
        .plan_read(Offset(2), 1 << 20, Offset(3), true)
        .unwrap()
        .is_empty());
    assert!(log
        .plan_read(Offset(4), 1 << 20, Offset(4), true)
        .unwrap()
        .is_empty());
    assert!(
        log.plan_read(Offset(6), 1 << 20, Offset(6), true)
            .unwrap()
            .is_empty(),
        "start == log end"
    );
    assert!(matches!(
        log.plan_read(Offset(7), 10, Offset(7), true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.plan_read(Offset(-1), 10, Offset(7), true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn segments_roll_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(300, 100);
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for i in 0..20 {
        stored.extend(append(&mut log, &[plain(1 + i % 3, i64::from(i), 40)]));
    }
    assert!(files(dir.path(), ".log").len() > 5);
    assert!(
        log.flushed_offset() > Offset(0),
        "a roll fsyncs everything before the new segment"
    );
    assert_eq!(read_all(&log), stored);
    let end = log.log_end_offset();
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(read_all(&log), stored);
}

#[test]
fn segment_ms_rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        segment_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(os(), dir.path(), c, 0).unwrap();
    let mut b = plain(1, 0, 0);
    log.append(&mut b, E, 10).unwrap();
    let mut b = plain(1, 0, 0);
    log.append(&mut b, E, 500).unwrap();
    assert_eq!(files(dir.path(), ".log").len(), 1);
    let mut b = plain(1, 0, 0);
    log.append(&mut b, E, 2000).unwrap();
    assert_eq!(files(dir.path(), ".log").len(), 2);
}

#[test]
fn missing_or_truncated_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(400, 0);
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for i in 0..30 {
        stored.extend(append(&mut log, &[plain(2, i, 20)]));
    }
    drop(log);
    let indexes = files(dir.path(), ".index");
    let time_indexes = files(dir.path(), ".timeindex");
    let original = std::fs::read(&indexes[0]).unwrap();
    assert!(!original.is_empty());
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&indexes[1])
        .unwrap()
        .set_len(0)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&time_indexes[2])
        .unwrap()
        .set_len(5)
        .unwrap();
    // Garbage of the right length is not caught at open but when the index is first used.
    std::fs::write(
        &indexes[3],
        vec![0xffu8; std::fs::read(&indexes[3]).unwrap().len()],
    )
    .unwrap();
    let log = open(dir.path(), &c);
    assert_eq!(
        std::fs::read(&indexes[0]).unwrap(),
        original,
        "rebuilt at open"
    );
    assert!(!std::fs::read(&indexes[1]).unwrap().is_empty());
    assert_eq!(std::fs::metadata(&time_indexes[2]).unwrap().len() % 12, 0);
    assert_eq!(read_all(&log), stored);
    for (i, b) in stored.iter().enumerate() {
        let h = header(b);
        let plan = log
            .plan_read(h.last_offset(), 1, log.log_end_offset(), true)
            .unwrap();
        assert_eq!(&plan.load().unwrap().to_vec(), b, "batch {i}");
    }
}

#[test]
fn a_plausible_but_wrong_index_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(1000, 0);
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for _ in 0..8 {
        stored.extend(append(&mut log, &[plain(2, 0, 40)]));
    }
    append(&mut log, &[plain(1, 0, 900)]); // roll the first segment
    drop(log);
    // Monotonic, in-bounds entries that map each offset to a later batch than the real one.
    let index = &files(dir.path(), ".index")[0];
    let mut lie = Vec::new();
    for (rel, pos) in [(0u32, 101u32), (2, 202), (4, 303)] {
        lie.extend_from_slice(&rel.to_be_bytes());
        lie.extend_from_slice(&pos.to_be_bytes());
    }
    std::fs::write(index, lie).unwrap();
    let log = open(dir.path(), &c);
    for (i, b) in stored.iter().enumerate() {
        let plan = log
            .plan_read(header(b).base_offset, 1, log.log_end_offset(), true)
            .unwrap();
        assert_eq!(&plan.load().unwrap().to_vec(), b, "batch {i}");
    }
}

#[test]
fn recovery_truncates_torn_tail_and_corrupt_batches() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig::default();
    let mut log = open(dir.path(), &c);
    let stored = append(
        &mut log,
        &[plain(1, 0, 30), plain(1, 0, 30), plain(1, 0, 30)],
    );
    drop(log);
    let seg = &files(dir.path(), ".log")[0];
    let full = std::fs::read(seg).unwrap();
    std::fs::write(seg, &full[..full.len() - 5]).unwrap();
    let log = open(dir.path(), &c);
    assert_eq!(read_all(&log), stored[..2].to_vec());
    drop(log);
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[stored[0].len() + 40] ^= 0xff; // inside the CRC-covered part of batch 2
    std::fs::write(seg, &bytes).unwrap();
    let mut log = open(dir.path(), &c);
    assert_eq!(read_all(&log), stored[..1].to_vec());
    assert_eq!(log.log_end_offset(), Offset(1));
    let more = append(&mut log, &[plain(1, 0, 1)]);
    assert_eq!(header(&more[0]).base_offset, Offset(1));
}

#[test]
fn corrupt_batch_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &cfg(200, 0));
    for _ in 0..5 {
        append(&mut log, &[plain(1, 0, 100)]);
    }
    let plan = log
        .plan_read(Offset(0), 1 << 20, log.log_end_offset(), true)
        .unwrap();
    let seg = &files(dir.path(), ".log")[0];
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[70] ^= 1;
    std::fs::write(seg, &bytes).unwrap();
    assert!(matches!(plan.load(), Err(LogError::Corrupt { .. })));
}

#[test]
fn offset_for_timestamp_finds_the_exact_record() {
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), &cfg(400, 0));
        append(
            &mut log,
            &[record_batch(&[100, 105, 110], (-1, -1, -1), compression)],
        );
        append(
            &mut log,
            &[record_batch(
                &[200, 150, 300, 250],
                (-1, -1, -1),
                compression,
            )],
        );
        append(&mut log, &[record_batch(&[400], (-1, -1, -1), compression)]);
        let at = |t| log.offset_for_timestamp(t).unwrap();
        assert_eq!(at(0), Some((Offset(0), 100)), "{compression:?}");
        assert_eq!(at(104), Some((Offset(1), 105)));
        assert_eq!(at(110), Some((Offset(2), 110)));
        assert_eq!(at(151), Some((Offset(3), 200)));
        assert_eq!(at(260), Some((Offset(5), 300)));
        assert_eq!(at(301), Some((Offset(7), 400)));
        assert_eq!(at(401), None);
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((Offset(7), 400)));
    }
}

#[test]
fn offset_for_timestamp_uses_rolled_segments_and_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(150, 0);
    let mut log = open(dir.path(), &c);
    for i in 0..10 {
        append(
            &mut log,
            &[record_batch(
                &[i * 10, i * 10 + 5],
                (-1, -1, -1),
                Compression::None,
            )],
        );
    }
    drop(log);
    let mut log = open(dir.path(), &c);
    assert_eq!(log.offset_for_timestamp(42).unwrap(), Some((Offset(9), 45)));
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((Offset(19), 95)));
    log.delete_records_before(Offset(11)).unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((Offset(11), 55)));
}

#[test]
fn retention_by_time_rolls_and_deletes_expired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        segment_bytes: 200,
        retention_ms: 1000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &c);
    for ts in [100, 200, 300] {
        append(&mut log, &[plain(1, ts, 100)]);
    }
    assert_eq!(files(dir.path(), ".log").len(), 3);
    let out = log.apply_retention(1250).unwrap();
    assert_eq!((out.segments_deleted, out.log_start_offset), (2, Offset(2)));
    assert_eq!(log.log_start_offset(), Offset(2));
    // Everything expired: the active segment is rolled and deleted too.
    let out = log.apply_retention(10_000).unwrap();
    assert_eq!(out.segments_deleted, 1);
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.size_bytes()
        ),
        (Offset(3), Offset(3), 0)
    );
    assert!(log
        .plan_read(Offset(3), 100, Offset(3), true)
        .unwrap()
        .is_empty());
    assert!(matches!(
        log.plan_read(Offset(0), 100, Offset(3), true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(3), Offset(3))
    );
}

#[test]
fn retention_by_size_keeps_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        segment_bytes: 200,
        retention_ms: -1,
        retention_bytes: 350,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for _ in 0..5 {
        stored.extend(append(&mut log, &[plain(1, 0, 100)]));
    }
    let out = log.apply_retention(0).unwrap();
    // Kafka deletes a segment only if the log stays at or above retention.bytes without it.
    assert_eq!(out.segments_deleted, 2);
    assert_eq!(log.size_bytes(), 3 * 161);
    assert_eq!(read_all(&log), stored[2..].to_vec());
    let compact_only = LogConfig {
        cleanup_policy: "compact".into(),
        retention_bytes: 0,
        ..c
    };
    log.set_config(compact_only);
    assert_eq!(log.apply_retention(0).unwrap().segments_deleted, 0);
}

#[test]
fn reads_planned_before_deletion_still_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        &LogConfig {
            segment_bytes: 200,
            retention_bytes: 0,
            ..LogConfig::default()
        },
    );
    let stored = append(&mut log, &[plain(1, 0, 100)]);
    append(&mut log, &[plain(1, 0, 100)]);
    let plan = log.plan_read(Offset(0), 1000, Offset(2), true).unwrap();
    assert_eq!(log.apply_retention(0).unwrap().segments_deleted, 1);
    assert_eq!(plan.load().unwrap().to_vec(), stored[0]);
}

#[test]
fn delete_records_raises_log_start_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(200, 0);
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for _ in 0..4 {
        stored.extend(append(&mut log, &[plain(2, 0, 100)]));
    }
    assert!(matches!(
        log.delete_records_before(Offset(9)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.delete_records_before(Offset(5)).unwrap(), Offset(5));
    assert_eq!(
        log.delete_records_before(Offset(1)).unwrap(),
        Offset(5),
        "never lowers"
    );
    assert_eq!(files(dir.path(), ".log").len(), 2);
    assert_eq!(
        read_all(&log),
        stored[2..].to_vec(),
        "the batch holding the log start is served whole"
    );
    drop(log);
    let mut log = open(dir.path(), &c);
    assert_eq!(log.log_start_offset(), Offset(5));
    assert_eq!(log.delete_records_before(Offset(8)).unwrap(), Offset(8));
    assert_eq!(log.log_end_offset(), Offset(8));
    assert!(read_all(&log).is_empty());
}

#[test]
fn truncate_to_drops_the_tail_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(250, 0);
    let mut log = open(dir.path(), &c);
    let mut stored = Vec::new();
    for epoch in 1..=4 {
        for _ in 0..2 {
            let mut b = plain(2, 0, 60);
            log.append(&mut b, LeaderEpoch(epoch), 0).unwrap();
            stored.push(b);
        }
    }
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(2)),
        Some((LeaderEpoch(2), Offset(8)))
    );
    log.truncate_to(Offset(9)).unwrap(); // inside the batch 8..9: it goes whole
    assert_eq!(log.log_end_offset(), Offset(8));
    assert_eq!(read_all(&log), stored[..4].to_vec());
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(2)),
        Some((LeaderEpoch(2), Offset(8)))
    );
    assert_eq!(log.epoch_end_offset(LeaderEpoch(3)), None);
    let again = append(&mut log, &[plain(1, 0, 1)]);
    assert_eq!(header(&again[0]).base_offset, Offset(8));
    drop(log);
    let mut log = open(dir.path(), &c);
    assert_eq!(log.log_end_offset(), Offset(9));
    log.truncate_to(Offset(0)).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(0), Offset(0))
    );
    assert_eq!(log.epoch_end_offset(E), None);
}

/// An epoch this replica led in without writing starts at the log end (assigned when it
/// became leader). Truncating to the log end cuts no record but drops that epoch, which the
/// leader that followed never had (Kafka's `truncateTo` does the same): kept, it stays this
/// log's latest epoch and every Fetch would report a divergence truncation cannot cure. The
/// checkpoint goes with it, so a restart does not bring it back.
#[test]
fn truncating_to_the_log_end_drops_an_epoch_with_nothing_written_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig::default();
    let mut log = open(dir.path(), &c);
    for _ in 0..2 {
        log.append(&mut plain(2, 0, 0), LeaderEpoch(1), 0).unwrap();
    }
    log.assign_leader_epoch(LeaderEpoch(3));
    log.flush().unwrap();
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(3)),
        Some((LeaderEpoch(3), Offset(4)))
    );
    log.truncate_to(Offset(4)).unwrap();
    assert_eq!(log.log_end_offset(), Offset(4), "no record cut");
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(3)),
        None,
        "epoch 3 is newer than any this log knows"
    );
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(4))),
        "epoch 1 is the latest again"
    );
    assert_eq!(read_all(&log).len(), 2);
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(3)),
        None,
        "not back after a restart"
    );
}

#[test]
fn truncating_inside_the_batch_holding_the_log_start_keeps_start_le_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    append(&mut log, &[plain(3, 0, 0), plain(2, 0, 0)]);
    log.delete_records_before(Offset(1)).unwrap();
    log.truncate_to(Offset(2)).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(0), Offset(0))
    );
    let again = append(&mut log, &[plain(1, 0, 0)]);
    assert_eq!(header(&again[0]).base_offset, Offset(0));
}

#[test]
fn leftover_segments_below_the_checkpointed_log_start_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(100, 0);
    let mut log = open(dir.path(), &c);
    for _ in 0..3 {
        append(&mut log, &[plain(1, 0, 50)]);
    }
    drop(log);
    std::fs::write(dir.path().join("log-start-offset-checkpoint"), "2\n").unwrap();
    let log = open(dir.path(), &c);
    assert_eq!(log.log_start_offset(), Offset(2));
    assert_eq!(files(dir.path(), ".log").len(), 1);
}

fn idem(pid: i64, epoch: i16, seq: i32, count: i32) -> Vec<u8> {
    raw_batch(count, (pid, epoch, seq), 0, b"p")
}

#[test]
fn idempotent_retries_are_acknowledged_with_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    append(&mut log, &[plain(2, 0, 0)]);
    append(&mut log, &[idem(7, 0, 0, 3)]);
    let mut retry = idem(7, 0, 0, 3);
    match log.append(&mut retry, E, 0).unwrap() {
        AppendOutcome::Duplicate(i) => {
            assert_eq!((i.base_offset, i.last_offset), (Offset(2), Offset(4)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.log_end_offset(), Offset(5));
    let mut gap = idem(7, 0, 5, 1);
    assert!(matches!(
        log.append(&mut gap, E, 0),
        Err(LogError::OutOfOrderSequence {
            producer_id: ProducerId(7),
            expected: 3,
            got: 5
        })
    ));
    // Multi-batch set: second batch out of order, so the first is not written either.
    let mut set = [idem(7, 0, 3, 1), idem(7, 0, 9, 1)].concat();
    assert!(log.append(&mut set, E, 0).is_err());
    assert_eq!(log.log_end_offset(), Offset(5));
    append(&mut log, &[idem(7, 1, 0, 1)]);
    let mut old_epoch = idem(7, 0, 3, 1);
    assert!(matches!(
        log.append(&mut old_epoch, E, 0),
        Err(LogError::InvalidProducerEpoch)
    ));
}

#[test]
fn producer_state_survives_reopen_with_and_without_snapshots() {
    for (flush, roll) in [(true, false), (false, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let c = if roll {
            cfg(150, 0)
        } else {
            LogConfig::default()
        };
        let mut log = open(dir.path(), &c);
        for seq in 0..4 {
            append(&mut log, &[idem(3, 2, seq * 2, 2)]);
        }
        if flush {
            log.flush().unwrap();
        }
        drop(log);
        let mut log = open(dir.path(), &c);
        let mut retry = idem(3, 2, 6, 2);
        assert!(
            matches!(log.append(&mut retry, E, 0), Ok(AppendOutcome::Duplicate(i)) if i.base_offset == Offset(6)),
            "flush {flush} roll {roll}"
        );
        let mut next = idem(3, 2, 9, 1);
        assert!(matches!(
            log.append(&mut next, E, 0),
            Err(LogError::OutOfOrderSequence { expected: 8, .. })
        ));
        let mut stale = idem(3, 1, 8, 1);
        assert!(matches!(
            log.append(&mut stale, E, 0),
            Err(LogError::InvalidProducerEpoch)
        ));
    }
}

#[test]
fn sync_target_and_mark_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    assert!(log.sync_target().is_none());
    append(&mut log, &[plain(3, 0, 0)]);
    let t = log.sync_target().unwrap();
    append(&mut log, &[plain(1, 0, 0)]); // concurrent with the fsync
    t.sync().unwrap();
    log.mark_flushed(t.offset);
    assert_eq!(log.flushed_offset(), Offset(3));
    let t = log.sync_target().unwrap();
    log.truncate_to(Offset(3)).unwrap();
    append(&mut log, &[plain(2, 0, 0)]);
    t.sync().unwrap();
    log.mark_flushed(t.offset);
    assert_eq!(
        log.flushed_offset(),
        Offset(3),
        "a target from before a truncation is stale"
    );
    log.flush().unwrap();
    assert_eq!(log.flushed_offset(), Offset(5));
    assert!(log.sync_target().is_none());
}

#[test]
fn a_flush_fsyncs_the_log_file_only_and_recovery_rebuilds_the_active_indexes() {
    // Small index interval: every batch gets an index entry.
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(1 << 20, 1);
    let mut log = open(dir.path(), &c);
    let mut written = Vec::new();
    for i in 0..20 {
        written.extend(append(&mut log, &[plain(2, i, 100)]));
    }
    let t = log.sync_target().unwrap();
    assert_eq!(
        t.files.len(),
        1,
        "one fdatasync per round: the active segment's log file"
    );
    t.sync().unwrap();
    log.mark_flushed(t.offset);
    assert_eq!(log.flushed_offset(), Offset(40));
    drop(log);

    // A power loss keeps the fsynced log file but none of the unsynced index bytes.
    for suffix in [".index", ".timeindex"] {
        for f in files(dir.path(), suffix) {
            std::fs::write(&f, b"").unwrap();
        }
    }
    let log = open(dir.path(), &c);
    assert_eq!(log.log_end_offset(), Offset(40));
    assert_eq!(read_all(&log), written);
    // Reads from the middle use the rebuilt index.
    let plan = log.plan_read(Offset(31), 1, Offset(40), true).unwrap();
    assert_eq!(header(&plan.load().unwrap()).base_offset, Offset(30));
    assert!(
        files(dir.path(), ".index")
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() > 0),
        "index files rewritten at open"
    );
}

#[test]
fn delete_removes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("topic-0");
    let mut log = open(&p, &LogConfig::default());
    append(&mut log, &[plain(1, 0, 0)]);
    log.delete().unwrap();
    assert!(!p.exists());
}

fn assert_send<T: Send>() {}
#[test]
fn partition_log_is_send() {
    assert_send::<PartitionLog>();
    assert_send::<ReadPlan>();
}

// ---- property tests ----

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(i32, usize)>),
    Read(usize),
    Reopen,
    TruncateAtBatch(usize),
    DeleteRecords(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec((1i32..4, 0usize..120), 1..4).prop_map(Op::Append),
        2 => any::<usize>().prop_map(Op::Read),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::TruncateAtBatch),
        1 => any::<usize>().prop_map(Op::DeleteRecords),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random appends, reads, rolls, reopens, truncations and DeleteRecords: reading back
    /// returns exactly the model's batches, in order, with their assigned offsets.
    #[test]
    fn random_operations_match_the_model(ops in prop::collection::vec(op(), 1..40), seg in 120u64..600, interval in 0u64..300) {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(seg, interval);
        let mut log = open(dir.path(), &c);
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut start = Offset(0);
        for op in ops {
            match op {
                Op::Append(spec) => {
                    let batches: Vec<Vec<u8>> = spec.iter().map(|(n, len)| plain(*n, 0, *len)).collect();
                    model.extend(append(&mut log, &batches));
                }
                Op::Read(i) => {
                    let visible: Vec<&Vec<u8>> = model.iter().filter(|b| header(b).last_offset() >= start).collect();
                    if !visible.is_empty() {
                        let b = visible[i % visible.len()];
                        let h = header(b);
                        let from = h.base_offset.max(start);
                        let target = Offset(from.0 + ((i % h.records_count as usize) as i64).min(h.last_offset().0 - from.0));
                        let plan = log.plan_read(target, 1, log.log_end_offset(), true).unwrap();
                        prop_assert_eq!(&plan.load().unwrap().to_vec(), b);
                    }
                }
                Op::Reopen => {
                    drop(log);
                    log = open(dir.path(), &c);
                }
                Op::TruncateAtBatch(i) => {
                    let to = if model.is_empty() { log.log_end_offset() } else { header(&model[i % model.len()]).base_offset };
                    log.truncate_to(to).unwrap();
                    model.retain(|b| header(b).base_offset < to);
                    if to <= start { start = to; model.clear(); }
                }
                Op::DeleteRecords(i) => {
                    let span = log.log_end_offset().0 - start.0;
                    let to = Offset(start.0 + (i as i64).rem_euclid(span + 1));
                    start = log.delete_records_before(to).unwrap();
                    prop_assert_eq!(start, to.max(log.log_start_offset()));
                }
            }
            prop_assert_eq!(log.log_start_offset(), start);
            let end = model.last().map_or(start, |b| header(b).next_offset());
            prop_assert_eq!(log.log_end_offset(), end);
            let visible: Vec<Vec<u8>> = model.iter().filter(|b| header(b).last_offset() >= start).cloned().collect();
            prop_assert_eq!(read_all(&log), visible);
        }
    }

    /// Crash at any byte: after cutting the active segment anywhere at or past what was
    /// flushed, and flipping a byte past it, recovery keeps exactly a prefix of what was
    /// written, including everything flushed, and serves no bad batch.
    #[test]
    fn recovery_after_crash_keeps_a_flushed_prefix(
        sizes in prop::collection::vec((1i32..4, 0usize..150), 2..30),
        flushed_upto in any::<usize>(),
        cut in any::<u64>(),
        flip in prop::option::of((any::<u64>(), 1u8..=255)),
        seg in 200u64..2000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(seg, 64);
        let mut log = open(dir.path(), &c);
        let mut written = Vec::new();
        let flush_at = flushed_upto % sizes.len();
        for (i, (n, len)) in sizes.iter().enumerate() {
            written.extend(append(&mut log, &[plain(*n, 0, *len)]));
            if i == flush_at {
                if let Some(t) = log.sync_target() {
                    t.sync().unwrap();
                    log.mark_flushed(t.offset);
                }
            }
        }
        let flushed = log.flushed_offset();
        let active = files(dir.path(), ".log").pop().unwrap();
        let active_base: i64 = active.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        // Bytes of the active segment that hold flushed batches.
        let flushed_bytes: u64 = written
            .iter()
            .filter(|b| header(b).base_offset.0 >= active_base && header(b).last_offset() < flushed)
            .map(|b| b.len() as u64)
            .sum();
        drop(log);
        let mut bytes = std::fs::read(&active).unwrap();
        let len = flushed_bytes + cut % (bytes.len() as u64 - flushed_bytes + 1);
        bytes.truncate(len as usize);
        if let Some((at, x)) = flip {
            if (bytes.len() as u64) > flushed_bytes {
                let at = flushed_bytes + at % (bytes.len() as u64 - flushed_bytes);
                bytes[at as usize] ^= x;
            }
        }
        std::fs::write(&active, &bytes).unwrap();

        let log = open(dir.path(), &c);
        prop_assert!(log.log_end_offset() >= flushed);
        // A flipped bit in a whole batch that valid batches follow is kept as damage (reads
        // refuse it); anything else bad is cut as a torn tail.
        let limit = log.damaged_at_open().unwrap_or(log.log_end_offset());
        prop_assert!(limit >= flushed, "damage only where the bit flipped");
        let got = read_until(&log, limit);
        prop_assert!(got.len() <= written.len());
        // The leader epoch field is not covered by the CRC (as in Kafka); compare the rest.
        let masked = |b: &Vec<u8>| { let mut b = b.clone(); b[12..16].fill(0); b };
        for (g, w) in got.iter().zip(&written) {
            prop_assert_eq!(masked(g), masked(w));
        }
        let end = got.last().map_or(Offset(0), |b| header(b).next_offset());
        match log.damaged_at_open() {
            Some(damaged) => {
                prop_assert_eq!(damaged, end);
                // Refused when planned (its last offset delta rotted: it claims offsets
                // past its segment) or when loaded (its CRC fails).
                let refused = match log.plan_read(damaged, 4096, log.log_end_offset(), true) {
                    Ok(plan) => matches!(plan.load(), Err(LogError::Corrupt { .. })),
                    Err(e) => matches!(e, LogError::Corrupt { .. }),
                };
                prop_assert!(refused, "a damaged batch is refused");
            }
            None => prop_assert_eq!(log.log_end_offset(), end),
        }
    }
}

#[test]
fn timestamps_too_far_from_the_clock_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        message_timestamp_difference_max_ms: 3_600_000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &c);
    let now = 1_800_000_000_000;
    let two_days = 2 * 86_400_000;
    for ts in [now - two_days, now + two_days] {
        let mut b = plain(1, ts, 10);
        let err = log.append(&mut b, E, now).unwrap_err();
        assert!(
            matches!(err, LogError::InvalidTimestamp { timestamp, .. } if timestamp == ts),
            "{err}"
        );
    }
    assert_eq!(log.log_end_offset(), Offset(0), "nothing written");
    // Within the limit, either side of the clock.
    let mut ok = [plain(1, now - 60_000, 10), plain(1, now + 60_000, 10)].concat();
    assert!(log.append(&mut ok, E, now).is_ok());
    // The default (no limit) accepts any timestamp.
    let free_dir = tempfile::tempdir().unwrap();
    let mut free = open(free_dir.path(), &LogConfig::default());
    assert!(free.append(&mut plain(1, 0, 10), E, now).is_ok());
}
