//! Tests of the follower write path, [`PartitionLog::append_as_follower`], written as phases:
//! a follower copies a leader's log byte for byte (offsets, epochs, gaps, producer state),
//! refuses appends below its log end, and recovers after a crash exactly what it copied. Then a
//! property test copies random gapped logs in random fetch sizes with crashes and truncations.
#![allow(clippy::unwrap_used)]

use crate::batch::testutil::{fix_crc, raw_batch};
use crate::batch::BatchHeader;
use crate::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use spate_types::{LeaderEpoch, Offset, ProducerId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The operating system's disk: these tests inspect and damage the files with `std::fs`.
fn os() -> Arc<dyn spate_types::Disk> {
    Arc::new(spate_types::OsDisk)
}

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

/// Every batch from the log start, as a consumer would fetch them.
fn read_all(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let plan = log
            .plan_read(next, 4096, log.log_end_offset(), true)
            .unwrap();
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

fn idem(pid: i64, epoch: i16, seq: i32, count: i32) -> Vec<u8> {
    raw_batch(count, (pid, epoch, seq), 0, b"p")
}

/// A batch as a leader stored it: `count` records from `base`, in leader epoch `epoch`.
fn stored(base: i64, count: i32, epoch: i32, payload_len: usize) -> Vec<u8> {
    let mut b = plain(count, base, payload_len);
    set_base_offset(&mut b, Offset(base));
    set_partition_leader_epoch(&mut b, LeaderEpoch(epoch));
    b
}

/// What compaction leaves of a batch of `span` offsets from `base` that kept `count` records:
/// the offset delta still spans them all.
fn holed(base: i64, span: i32, count: i32, epoch: i32) -> Vec<u8> {
    let mut b = stored(base, count, epoch, 8);
    b[23..27].copy_from_slice(&(span - 1).to_be_bytes());
    fix_crc(&mut b);
    b
}

/// Leader-side append: assigns offsets in `epoch`.
fn lead(log: &mut PartitionLog, batches: &[Vec<u8>], epoch: i32) -> Vec<Vec<u8>> {
    let mut set = batches.concat();
    match log.append(&mut set, LeaderEpoch(epoch), 0).unwrap() {
        AppendOutcome::Appended(_) => split(&set),
        AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
    }
}

/// Copies `leader` into `follower` as a fetcher would: from the follower's log end, at most
/// `max_bytes` per fetch, up to the leader's log end.
fn replicate(leader: &PartitionLog, follower: &mut PartitionLog, max_bytes: usize) {
    replicate_with(leader, follower, max_bytes, |follower, bytes| {
        let info = follower.append_as_follower(bytes, 0).unwrap().unwrap();
        assert_eq!(info.bytes, bytes.len());
    });
}

/// [`replicate`], storing each fetch's bytes with `store`.
fn replicate_with(
    leader: &PartitionLog,
    follower: &mut PartitionLog,
    max_bytes: usize,
    mut store: impl FnMut(&mut PartitionLog, &[u8]),
) {
    loop {
        let plan = leader
            .plan_read(
                follower.log_end_offset(),
                max_bytes,
                leader.log_end_offset(),
                true,
            )
            .unwrap();
        if plan.is_empty() {
            break;
        }
        store(follower, &plan.load().unwrap());
    }
}

fn assert_same_log(leader: &PartitionLog, follower: &PartitionLog) {
    assert_eq!(read_all(follower), read_all(leader));
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    for (epoch, _) in leader.leader_epochs() {
        assert_eq!(
            follower.epoch_end_offset(*epoch),
            leader.epoch_end_offset(*epoch)
        );
    }
}

fn keyed(kvs: &[(&str, &str)], producer: (i64, i16, i32)) -> Vec<u8> {
    let records: Vec<Record> = kvs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.0,
            producer_epoch: producer.1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder splits batches where offset - sequence changes.
            sequence: if producer.0 < 0 {
                i as i32 - 1
            } else {
                producer.2 + i as i32
            },
            timestamp: 1_000 + i as i64,
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
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

#[test]
fn a_follower_copies_the_leader_byte_for_byte() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Different segment sizes on each side: segments may differ, offsets and bytes may not.
    let mut leader = open(ld.path(), &cfg(400, 100));
    let mut follower = open(fd.path(), &cfg(700, 0));
    tracing::info!("--- leader writes in epochs 1, 3 and 4, idempotent and plain batches");
    for (epoch, n) in [(1, 4), (3, 3), (4, 2)] {
        for i in 0..n {
            lead(&mut leader, &[plain(2, i, 50)], epoch);
            let seq = leader_seq(&leader, 9);
            lead(&mut leader, &[idem(9, 0, seq, 3)], epoch);
        }
    }
    assert!(files(ld.path(), ".log").len() > 2, "the leader rolled");

    tracing::info!("--- the follower fetches in small pieces; the copy is exact");
    replicate(&leader, &mut follower, 150);
    assert_same_log(&leader, &follower);
    assert!(files(fd.path(), ".log").len() > 1, "the follower rolled");
    assert_eq!(
        follower.epoch_end_offset(LeaderEpoch(2)),
        Some((LeaderEpoch(1), Offset(20)))
    );
    assert_eq!(follower.size_bytes(), leader.size_bytes());
    assert_eq!(
        follower.producer_state().entry(ProducerId(9)),
        leader.producer_state().entry(ProducerId(9))
    );

    tracing::info!("--- nothing left to fetch: an empty record set appends nothing");
    assert_eq!(follower.append_as_follower(&[], 0).unwrap(), None);

    tracing::info!("--- the follower's sync target covers what it appended");
    let t = follower.sync_target().unwrap();
    assert_eq!(t.offset, follower.log_end_offset());
    t.sync().unwrap();
    follower.mark_flushed(t.offset);
    assert_eq!(follower.flushed_offset(), leader.log_end_offset());
    assert!(follower.sync_target().is_none());

    tracing::info!("--- after a clean reopen the follower is still the same log");
    drop(follower);
    let follower = open(fd.path(), &cfg(700, 0));
    assert_same_log(&leader, &follower);
}

/// The next sequence of producer `pid` in `log`.
fn leader_seq(log: &PartitionLog, pid: i64) -> i32 {
    log.producer_state()
        .entry(ProducerId(pid))
        .and_then(|e| e.batches.back())
        .map_or(0, |b| b.last_seq + 1)
}

#[test]
fn append_info_describes_the_copied_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    let set = [stored(0, 3, 1, 0), stored(3, 2, 1, 0)].concat();
    let info = log.append_as_follower(&set, 0).unwrap().unwrap();
    assert_eq!(
        info,
        AppendInfo {
            base_offset: Offset(0),
            last_offset: Offset(4),
            max_timestamp: 3,
            log_append_time_ms: -1,
            batch_count: 2,
            bytes: set.len(),
        }
    );
    assert_eq!(read_all(&log), split(&set));
}

#[test]
fn appends_below_the_log_end_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    log.append_as_follower(&stored(0, 5, 1, 0), 0).unwrap();
    let size = log.size_bytes();
    tracing::info!("--- a batch overlapping the log end");
    let err = log.append_as_follower(&stored(3, 5, 1, 0), 0).unwrap_err();
    assert!(
        matches!(
            err,
            FollowerAppendError::NonMonotonicAppend {
                expected_at_least: Offset(5),
                got: Offset(3)
            }
        ),
        "{err}"
    );
    tracing::info!("--- a set whose second batch goes back: the first is not written either");
    let set = [stored(5, 2, 1, 0), stored(6, 1, 1, 0)].concat();
    let err = log.append_as_follower(&set, 0).unwrap_err();
    assert!(matches!(
        err,
        FollowerAppendError::NonMonotonicAppend {
            expected_at_least: Offset(7),
            got: Offset(6)
        }
    ));
    tracing::info!("--- a corrupt batch");
    let mut bad = stored(5, 1, 1, 10);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        log.append_as_follower(&bad, 0),
        Err(FollowerAppendError::Log(LogError::Batch(
            BatchError::CrcMismatch { .. }
        )))
    ));
    tracing::info!("--- offsets running past i64::MAX");
    let err = log
        .append_as_follower(&stored(i64::MAX - 1, 3, 1, 0), 0)
        .unwrap_err();
    assert!(
        matches!(err, FollowerAppendError::OffsetOverflow { .. }),
        "{err}"
    );
    assert_eq!((log.log_end_offset(), log.size_bytes()), (Offset(5), size));
}

#[test]
fn what_only_a_leader_writes_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // max.message.bytes lowered after the leader accepted a large batch.
    let mut log = open(
        dir.path(),
        &LogConfig {
            max_message_bytes: 100,
            ..LogConfig::default()
        },
    );
    let big = stored(0, 1, 1, 1000);
    let mut control = stored(1, 1, 1, 0);
    control[21..23].copy_from_slice(&0x20i16.to_be_bytes());
    fix_crc(&mut control);
    let compacted = holed(2, 10, 3, 1);
    let set = [big, control, compacted].concat();
    log.append_as_follower(&set, 0).unwrap();
    assert_eq!(log.log_end_offset(), Offset(12));
    assert_eq!(read_all(&log), split(&set));
}

#[test]
fn gaps_are_copied_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(1 << 20, 0);
    let mut log = open(dir.path(), &c);
    tracing::info!("--- contiguous batches, then gaps left by the leader's compaction");
    let set = [
        stored(0, 3, 1, 10),
        stored(10, 2, 1, 10),
        holed(12, 8, 2, 2),
        stored(40, 1, 2, 10),
    ]
    .concat();
    log.append_as_follower(&set, 0).unwrap();
    assert_eq!(log.log_end_offset(), Offset(41));
    let want = split(&set);
    assert_eq!(read_all(&log), want);
    tracing::info!("--- a fetch inside a gap gets the next batch, as on the leader");
    let plan = log.plan_read(Offset(5), 1, Offset(41), true).unwrap();
    assert_eq!(plan.load().unwrap().to_vec(), want[1]);
    let plan = log.plan_read(Offset(25), 1, Offset(41), true).unwrap();
    assert_eq!(plan.load().unwrap().to_vec(), want[3]);
    assert_eq!(
        log.leader_epochs(),
        &[(LeaderEpoch(1), Offset(0)), (LeaderEpoch(2), Offset(12))]
    );

    tracing::info!("--- crash (no flush): recovery keeps every gapped batch");
    drop(log);
    let mut log = open(dir.path(), &c);
    assert_eq!(read_all(&log), want);
    assert_eq!(log.log_end_offset(), Offset(41));
    assert_eq!(
        log.epoch_end_offset(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(12)))
    );

    tracing::info!("--- a leader append after the gaps, another crash");
    let more = lead(&mut log, &[plain(2, 0, 0)], 3);
    assert_eq!(header(&more[0]).base_offset, Offset(41));
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(read_all(&log), [want.clone(), more].concat());

    tracing::info!(
        "--- without the gaps checkpoint recovery would cut the segment at the first gap"
    );
    drop(log);
    std::fs::remove_file(dir.path().join("offset-gaps-checkpoint")).unwrap();
    let log = open(dir.path(), &c);
    assert_eq!(log.log_end_offset(), Offset(3));
}

#[test]
fn a_contiguous_copy_writes_no_gaps_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), &LogConfig::default());
    log.append_as_follower(&[stored(0, 3, 1, 0), stored(3, 3, 1, 0)].concat(), 0)
        .unwrap();
    assert!(!dir.path().join("offset-gaps-checkpoint").exists());
}

#[test]
fn a_gap_at_an_empty_segment_and_gaps_too_wide_for_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig::default();
    let mut log = open(dir.path(), &c);
    tracing::info!("--- an empty log's first batch lies past its base");
    log.append_as_follower(&stored(7, 1, 1, 0), 0).unwrap();
    tracing::info!("--- offsets beyond what a segment can address relative to its base");
    let far = 7 + i64::from(u32::MAX) + 10;
    let set = [
        stored(8, 1, 1, 0),
        stored(far, 2, 1, 0),
        stored(far + 5, 1, 1, 0),
    ]
    .concat();
    log.append_as_follower(&set, 0).unwrap();
    assert_eq!(log.log_end_offset(), Offset(far + 6));
    assert_eq!(
        files(dir.path(), ".log").len(),
        2,
        "rolled at the far batch"
    );
    assert!(files(dir.path(), ".log")[1].ends_with(format!("{far:020}.log")));
    let want = [vec![stored(7, 1, 1, 0)], split(&set)].concat();
    assert_eq!(read_all(&log), want);
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(read_all(&log), want);
    assert_eq!(log.log_end_offset(), Offset(far + 6));
}

#[test]
fn truncate_then_reappend_from_the_new_leader() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(300, 0);
    let mut leader = open(ld.path(), &c);
    let mut follower = open(fd.path(), &c);
    for _ in 0..4 {
        lead(&mut leader, &[plain(2, 0, 60)], 1);
    }
    replicate(&leader, &mut follower, 1 << 20);
    tracing::info!("--- the follower holds uncommitted epoch-2 data the new leader does not have");
    follower
        .append_as_follower(&[stored(8, 3, 2, 60), stored(11, 1, 2, 0)].concat(), 0)
        .unwrap();
    tracing::info!("--- the new leader (epoch 3) wrote other data at 8");
    for _ in 0..3 {
        lead(&mut leader, &[plain(1, 0, 30)], 3);
    }
    tracing::info!("--- OffsetForLeaderEpoch(2) on the leader says epoch 1 ends at 8: truncate");
    let (_, end) = leader.epoch_end_offset(LeaderEpoch(2)).unwrap();
    assert_eq!(end, Offset(8));
    follower.truncate_to(end).unwrap();
    assert_eq!(follower.log_end_offset(), Offset(8));
    assert_eq!(
        follower.epoch_end_offset(LeaderEpoch(1)),
        Some((LeaderEpoch(1), Offset(8)))
    );
    assert_eq!(follower.epoch_end_offset(LeaderEpoch(2)), None);
    replicate(&leader, &mut follower, 100);
    assert_same_log(&leader, &follower);
    drop(follower);
    assert_same_log(&leader, &open(fd.path(), &c));
}

#[test]
fn a_torn_tail_after_a_crash_recovers_a_prefix_of_the_copy() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(1 << 20, 0);
    let mut leader = open(ld.path(), &c);
    let mut follower = open(fd.path(), &c);
    for i in 0..5 {
        lead(&mut leader, &[plain(2, i, 40)], 1);
    }
    replicate(&leader, &mut follower, 1 << 20);
    drop(follower);
    let active = files(fd.path(), ".log").pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let mut follower = open(fd.path(), &c);
    let all = read_all(&leader);
    assert_eq!(read_all(&follower), all[..4].to_vec());
    tracing::info!("--- the fetcher resumes at the recovered log end");
    replicate(&leader, &mut follower, 1 << 20);
    assert_same_log(&leader, &follower);
}

#[test]
fn producer_state_carries_over_to_a_promoted_follower() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = LogConfig::default();
    let mut leader = open(ld.path(), &c);
    let mut follower = open(fd.path(), &c);
    lead(&mut leader, &[plain(2, 0, 0)], 1);
    lead(&mut leader, &[idem(7, 0, 0, 3)], 1);
    lead(&mut leader, &[idem(7, 0, 3, 2)], 1);
    replicate(&leader, &mut follower, 1 << 20);
    for reopen in [false, true] {
        if reopen {
            drop(follower);
            follower = open(fd.path(), &c);
        }
        tracing::info!(
            "--- promoted, the follower recognises the producer's retry (reopen {reopen})"
        );
        let mut retry = idem(7, 0, 3, 2);
        match follower.append(&mut retry, LeaderEpoch(2), 0).unwrap() {
            AppendOutcome::Duplicate(i) => {
                assert_eq!((i.base_offset, i.last_offset), (Offset(5), Offset(6)))
            }
            other => panic!("reopen {reopen}: {other:?}"),
        }
        let mut gap = idem(7, 0, 9, 1);
        assert!(matches!(
            follower.append(&mut gap, LeaderEpoch(2), 0),
            Err(LogError::OutOfOrderSequence { expected: 5, .. })
        ));
    }
    tracing::info!("--- and takes the producer's next batch in its own epoch");
    let next = lead(&mut follower, &[idem(7, 0, 5, 1)], 2);
    assert_eq!(header(&next[0]).base_offset, Offset(7));
    assert_eq!(
        follower.leader_epochs(),
        &[(LeaderEpoch(1), Offset(0)), (LeaderEpoch(2), Offset(7))]
    );
}

#[test]
fn a_compacted_leader_is_copied_exactly() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Every append rolls (segment.ms = 1, each append 1 ms later), any dirty ratio compacts.
    let c = LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    };
    let mut leader = PartitionLog::open(os(), ld.path(), c.clone(), 0).unwrap();
    let sets = [
        keyed(&[("a", "1"), ("b", "1"), ("c", "1")], (-1, -1, -1)),
        keyed(&[("a", "2"), ("d", "1")], (-1, -1, -1)),
        keyed(&[("b", "2"), ("e", "1"), ("a", "3")], (-1, -1, -1)),
        keyed(&[("f", "1")], (-1, -1, -1)),
    ];
    for (i, set) in sets.iter().enumerate() {
        let mut set = set.clone();
        leader
            .append(&mut set, LeaderEpoch(1), i as i64 + 1)
            .unwrap();
    }
    match leader.compact(100, CompactionLimits::default()).unwrap() {
        CompactionOutcome::Compacted(_) => {}
        other => panic!("{other:?}"),
    }
    let leader_batches = read_all(&leader);
    let bases: Vec<i64> = leader_batches
        .iter()
        .map(|b| header(b).base_offset.0)
        .collect();
    assert_eq!(bases, [2, 4, 5, 8], "compaction left gaps at 0-1 and 3");
    tracing::info!("--- a follower starting from scratch copies the compacted log");
    let mut follower = open(fd.path(), &LogConfig::default());
    replicate(&leader, &mut follower, 1 << 20);
    let check = |follower: &PartitionLog| {
        assert_eq!(read_all(follower), leader_batches);
        assert_eq!(follower.log_end_offset(), Offset(9));
        // Its first epoch starts at the first batch it holds (Kafka's follower does the same);
        // the epoch's end, which is what OffsetForLeaderEpoch answers, is the leader's.
        assert_eq!(follower.leader_epochs(), &[(LeaderEpoch(1), Offset(2))]);
        assert_eq!(
            follower.epoch_end_offset(LeaderEpoch(1)),
            leader.epoch_end_offset(LeaderEpoch(1))
        );
    };
    check(&follower);
    drop(follower);
    check(&open(fd.path(), &LogConfig::default()));
}

#[test]
fn truncating_fully_restarts_the_log_past_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(200, 0);
    let mut log = open(dir.path(), &c);
    let mut i = idem(3, 0, 0, 1);
    set_base_offset(&mut i, Offset(2));
    set_partition_leader_epoch(&mut i, LeaderEpoch(1));
    log.append_as_follower(&[stored(0, 2, 1, 100), i].concat(), 0)
        .unwrap();
    assert!(log.producer_state().entry(ProducerId(3)).is_some());
    tracing::info!("--- the leader's log start (500) is past our log end (3): start over there");
    log.truncate_fully_and_start_at(Offset(500)).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(500), Offset(500))
    );
    assert!(log.leader_epochs().is_empty());
    assert!(log.producer_state().is_empty());
    assert!(read_all(&log).is_empty());
    log.append_as_follower(&stored(500, 1, 2, 0), 0).unwrap();
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(500), Offset(501))
    );
    assert_eq!(log.leader_epochs(), &[(LeaderEpoch(2), Offset(500))]);
    assert!(log.producer_state().is_empty());
    assert!(matches!(
        open(tempfile::tempdir().unwrap().path(), &c).truncate_fully_and_start_at(Offset(-1)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn truncating_into_a_gap_between_segments_then_appending_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig::default();
    let mut log = open(dir.path(), &c);
    let far = i64::from(u32::MAX) + 100;
    log.append_as_follower(&[stored(0, 2, 1, 0), stored(far, 1, 1, 0)].concat(), 0)
        .unwrap();
    assert_eq!(files(dir.path(), ".log").len(), 2);
    tracing::info!("--- truncation inside the gap ends the log there, past segment 0's last batch");
    log.truncate_to(Offset(50)).unwrap();
    assert_eq!(log.log_end_offset(), Offset(50));
    let more = lead(&mut log, &[plain(1, 0, 0)], 2);
    assert_eq!(header(&more[0]).base_offset, Offset(50));
    drop(log);
    let log = open(dir.path(), &c);
    assert_eq!(log.log_end_offset(), Offset(51));
    assert_eq!(read_all(&log), vec![stored(0, 2, 1, 0), more[0].clone()]);
}

/// One fetch round as the replica shell runs it when fsync is required: append, fsync the sync
/// target (outside the lock there), mark it flushed. Never `flush()`.
fn append_and_sync(follower: &mut PartitionLog, bytes: &[u8]) {
    follower.append_as_follower(bytes, 0).unwrap();
    if let Some(target) = follower.sync_target() {
        target.sync().unwrap();
        follower.mark_flushed(target.offset);
    }
    assert_eq!(follower.flushed_offset(), follower.log_end_offset());
}

/// [`replicate`], one [`append_and_sync`] per fetch.
fn replicate_synced(leader: &PartitionLog, follower: &mut PartitionLog, max_bytes: usize) {
    replicate_with(leader, follower, max_bytes, append_and_sync);
}

const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";
const LOG_START_CHECKPOINT: &str = "log-start-offset-checkpoint";

fn checkpointed_epochs(dir: &Path) -> Vec<(i32, i64)> {
    std::fs::read_to_string(dir.join(EPOCH_CHECKPOINT))
        .unwrap()
        .lines()
        .skip(2)
        .map(|l| {
            let mut parts = l.split_whitespace().map(|p| p.parse::<i64>().unwrap());
            (parts.next().unwrap() as i32, parts.next().unwrap())
        })
        .collect()
}

fn base_of(path: &Path) -> i64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

#[test]
fn flush_writes_only_the_metadata_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = LogConfig::default();
    let mut log = open(d, &c);
    log.append_as_follower(&stored(0, 2, 1, 10), 0).unwrap();
    log.flush().unwrap();
    for name in [EPOCH_CHECKPOINT, LOG_START_CHECKPOINT] {
        assert!(d.join(name).exists(), "{name} written at the first flush");
    }
    assert_eq!(files(d, ".snapshot").len(), 1);
    let remove_all = || {
        for p in files(d, ".snapshot") {
            std::fs::remove_file(p).unwrap();
        }
        for name in [EPOCH_CHECKPOINT, LOG_START_CHECKPOINT] {
            std::fs::remove_file(d.join(name)).unwrap();
        }
    };
    remove_all();

    tracing::info!("--- nothing changed: a flush writes no file");
    log.flush().unwrap();
    assert!(files(d, ".snapshot").is_empty());
    assert!(!d.join(EPOCH_CHECKPOINT).exists());
    assert!(!d.join(LOG_START_CHECKPOINT).exists());

    tracing::info!("--- more data in the same epoch: only the producer snapshot at the new end");
    log.append_as_follower(&stored(2, 1, 1, 10), 0).unwrap();
    log.flush().unwrap();
    assert_eq!(files(d, ".snapshot").len(), 1);
    assert!(!d.join(EPOCH_CHECKPOINT).exists());
    assert!(!d.join(LOG_START_CHECKPOINT).exists());

    tracing::info!("--- a new epoch: the epoch checkpoint too");
    log.append_as_follower(&stored(3, 1, 5, 10), 0).unwrap();
    log.flush().unwrap();
    assert_eq!(checkpointed_epochs(d), vec![(1, 0), (5, 3)]);
    assert!(!d.join(LOG_START_CHECKPOINT).exists());

    tracing::info!("--- DeleteRecords writes the log start at once, not at the next flush");
    log.delete_records_before(Offset(2)).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join(LOG_START_CHECKPOINT)).unwrap(),
        "2\n"
    );
}

#[test]
fn a_follower_synced_per_fetch_recovers_epochs_producers_and_log_start_after_a_crash() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(300, 0);
    let mut leader = open(ld.path(), &c);
    let mut follower = open(fd.path(), &c);
    tracing::info!("--- epochs 1 and 2 and an idempotent producer, across rolled segments");
    lead(&mut leader, &[plain(2, 0, 60)], 1);
    lead(&mut leader, &[idem(7, 0, 0, 3)], 1);
    lead(&mut leader, &[plain(2, 0, 60)], 2);
    lead(&mut leader, &[idem(7, 0, 3, 2)], 2);
    lead(&mut leader, &[plain(2, 0, 120)], 2);
    lead(&mut leader, &[plain(2, 0, 60)], 2);
    replicate_synced(&leader, &mut follower, 150);
    assert!(files(fd.path(), ".log").len() > 1, "segments rolled");

    tracing::info!("--- DeleteRecords reaches the follower");
    assert_eq!(
        follower.delete_records_before(Offset(6)).unwrap(),
        Offset(6)
    );

    tracing::info!("--- epoch 4 starts in the active segment, with the producer's next batch");
    lead(&mut leader, &[idem(7, 0, 5, 1)], 4);
    lead(&mut leader, &[plain(1, 0, 10)], 4);
    replicate_synced(&leader, &mut follower, 150);
    let active_base = base_of(&files(fd.path(), ".log").pop().unwrap());
    let (last_epoch, last_start) = *follower.leader_epochs().last().unwrap();
    assert_eq!(last_epoch, LeaderEpoch(4));
    assert!(
        last_start.0 >= active_base,
        "epoch 4 starts in the active segment"
    );
    assert!(
        checkpointed_epochs(fd.path()).iter().all(|(e, _)| *e != 4),
        "no checkpoint per fetch: epoch 4 must come back from the batches"
    );
    assert!(
        files(fd.path(), ".snapshot")
            .iter()
            .all(|p| base_of(p) <= active_base),
        "no producer snapshot per fetch"
    );

    tracing::info!("--- crash: drop without flush, reopen");
    let epochs = follower.leader_epochs().to_vec();
    let held = read_all(&follower);
    let log_end = follower.log_end_offset();
    drop(follower);
    let mut follower = open(fd.path(), &c);
    assert_eq!(follower.log_start_offset(), Offset(6));
    assert_eq!(follower.log_end_offset(), log_end);
    assert_eq!(read_all(&follower), held);
    assert_eq!(follower.leader_epochs(), &epochs[..]);
    for (epoch, _) in &epochs {
        assert_eq!(
            follower.epoch_end_offset(*epoch),
            leader.epoch_end_offset(*epoch)
        );
    }

    tracing::info!("--- promoted, it recognises the producer's retry and its next sequence");
    let mut retry = idem(7, 0, 5, 1);
    assert!(matches!(
        follower.append(&mut retry, LeaderEpoch(5), 0).unwrap(),
        AppendOutcome::Duplicate(_)
    ));
    let mut gap = idem(7, 0, 9, 1);
    assert!(matches!(
        follower.append(&mut gap, LeaderEpoch(5), 0),
        Err(LogError::OutOfOrderSequence { expected: 6, .. })
    ));
}

#[test]
fn a_truncated_follower_synced_per_fetch_recovers_its_new_epochs_after_a_crash() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(300, 0);
    let mut leader = open(ld.path(), &c);
    let mut follower = open(fd.path(), &c);
    for _ in 0..4 {
        lead(&mut leader, &[plain(2, 0, 60)], 1);
    }
    replicate_synced(&leader, &mut follower, 1 << 20);
    tracing::info!("--- uncommitted epoch-2 data the new leader does not have, then truncation");
    append_and_sync(&mut follower, &stored(8, 3, 2, 60));
    follower.truncate_to(Offset(8)).unwrap();
    tracing::info!("--- the epoch-3 leader's data is fetched into the active segment; crash");
    for _ in 0..2 {
        lead(&mut leader, &[plain(1, 0, 30)], 3);
    }
    replicate_synced(&leader, &mut follower, 1 << 20);
    drop(follower);
    let follower = open(fd.path(), &c);
    assert_same_log(&leader, &follower);
    assert_eq!(
        follower.epoch_end_offset(LeaderEpoch(2)),
        Some((LeaderEpoch(1), Offset(8)))
    );
}

// ---- property test ----

#[derive(Clone, Debug)]
enum Op {
    /// Fetch at most this many bytes from the model leader.
    Fetch(usize),
    /// Fetch, then fsync as the replica shell does per fetch (sync target, no `flush()`).
    FetchAndSync(usize),
    /// Drop without flushing, cut the active segment anywhere past its flushed batches (a
    /// torn write), and reopen.
    Crash(u64),
    /// Flush everything, then crash.
    FlushAndCrash,
    /// Truncate to any offset below the log end (inside a batch, or a gap), as after a leader
    /// change, and fetch again from there.
    Truncate(usize),
}

/// The epoch cache `batches` (in log order) describe: each epoch's first batch.
fn epochs_of(batches: &[Vec<u8>]) -> Vec<(LeaderEpoch, Offset)> {
    let mut epochs: Vec<(LeaderEpoch, Offset)> = Vec::new();
    for b in batches {
        let h = header(b);
        if epochs
            .last()
            .is_none_or(|(e, _)| h.partition_leader_epoch > *e)
        {
            epochs.push((h.partition_leader_epoch, h.base_offset));
        }
    }
    epochs
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..600).prop_map(Op::Fetch),
        2 => (1usize..600).prop_map(Op::FetchAndSync),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::FlushAndCrash),
        1 => any::<usize>().prop_map(Op::Truncate),
    ]
}

/// A leader log: batches with random sizes, epochs that only grow and random gaps.
fn leader_batches() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        (1i32..4, 0usize..120, 0i64..4, 0i32..2, any::<bool>()),
        1..30,
    )
    .prop_map(|specs| {
        let (mut next, mut epoch) = (0i64, 1i32);
        specs
            .into_iter()
            .map(|(count, len, gap, bump, hole)| {
                next += if gap == 3 { 7 } else { 0 };
                epoch += bump;
                let b = if hole && count > 1 {
                    holed(next, count + 2, count, epoch)
                } else {
                    stored(next, count, epoch, len)
                };
                next = header(&b).next_offset().0;
                b
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random fetch sizes, crashes and truncations while copying a gapped leader log: the
    /// follower always holds a prefix of the leader's batches (everything flushed at least),
    /// and in the end exactly the leader's batches, offsets and epochs.
    #[test]
    fn a_follower_converges_on_the_leader_through_crashes(
        batches in leader_batches(),
        ops in prop::collection::vec(op(), 1..30),
        seg in 150u64..800,
        interval in 0u64..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(seg, interval);
        let mut log = open(dir.path(), &c);
        let leader_end = header(batches.last().unwrap()).next_offset();
        let fetch = |log: &mut PartitionLog, max: usize| {
            let from = log.log_end_offset();
            let mut set = Vec::new();
            for b in batches.iter().filter(|b| header(b).base_offset >= from) {
                if !set.is_empty() && set.len() + b.len() > max {
                    break;
                }
                set.extend_from_slice(b);
            }
            log.append_as_follower(&set, 0).unwrap();
        };
        for op in ops {
            match op {
                Op::Fetch(max) => fetch(&mut log, max),
                Op::FetchAndSync(max) => {
                    fetch(&mut log, max);
                    if let Some(target) = log.sync_target() {
                        target.sync().unwrap();
                        log.mark_flushed(target.offset);
                    }
                }
                Op::Crash(cut) => {
                    let flushed = log.flushed_offset();
                    let held = read_all(&log);
                    drop(log);
                    let active = files(dir.path(), ".log").pop().unwrap();
                    let active_base: i64 = active.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                    let flushed_bytes: u64 = held
                        .iter()
                        .filter(|b| header(b).base_offset.0 >= active_base && header(b).last_offset() < flushed)
                        .map(|b| b.len() as u64)
                        .sum();
                    let f = std::fs::OpenOptions::new().write(true).open(&active).unwrap();
                    let len = f.metadata().unwrap().len();
                    f.set_len(flushed_bytes + cut % (len - flushed_bytes + 1)).unwrap();
                    drop(f);
                    log = open(dir.path(), &c);
                    let durable = held.iter().filter(|b| header(b).last_offset() < flushed).count();
                    prop_assert!(read_all(&log).len() >= durable);
                }
                Op::FlushAndCrash => {
                    log.flush().unwrap();
                    let held = read_all(&log);
                    drop(log);
                    log = open(dir.path(), &c);
                    // (A log end that a truncation left inside a gap, past the last batch, is
                    // not kept: recovery ends the log after its last batch.)
                    prop_assert_eq!(read_all(&log), held);
                }
                Op::Truncate(i) => {
                    let end = log.log_end_offset().0;
                    if end > 0 {
                        log.truncate_to(Offset((i % end as usize) as i64)).unwrap();
                    }
                }
            }
            let got = read_all(&log);
            prop_assert_eq!(&got[..], &batches[..got.len()]);
            let held_end = got.last().map_or(Offset(0), |b| header(b).next_offset());
            prop_assert!(log.log_end_offset() >= held_end);
            // Whatever crashed, the epoch cache is the one the held batches describe.
            prop_assert_eq!(log.leader_epochs(), &epochs_of(&got)[..]);
        }
        while log.log_end_offset() < leader_end {
            fetch(&mut log, 1 << 20);
        }
        prop_assert_eq!(read_all(&log), batches.clone());
        prop_assert_eq!(log.leader_epochs(), &epochs_of(&batches)[..]);
        drop(log);
        let log = open(dir.path(), &c);
        prop_assert_eq!(read_all(&log), batches);
    }
}
