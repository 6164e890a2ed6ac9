//! `PartitionLog` on a [`MemoryDisk`]: what survives a power cut (synced data, and nothing that
//! was not), torn tails, a full disk, failing fsyncs and latent corruption (of a sealed
//! segment, and inside the active one).
//! Each test reads as phases; the property test at the end crashes a log at random points.
#![allow(clippy::unwrap_used)]

use crate::batch::testutil::raw_batch;
use crate::batch::BatchHeader;
use crate::*;
use proptest::prelude::*;
use spate_types::disk::create_dir_all_durable;
use spate_types::disk::{Disk, DiskError, DiskFault, DiskOp};
use spate_types::{LeaderEpoch, ManualClock, MemoryDisk, Offset};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const E: LeaderEpoch = LeaderEpoch(4);
const DIR: &str = "/n1/logs/t-0";

/// A disk holding a durable, empty partition directory (as the replica manager leaves it).
fn disk() -> MemoryDisk {
    let d = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    create_dir_all_durable(&d, Path::new(DIR)).unwrap();
    d
}

fn open(d: &MemoryDisk, c: &LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(d.clone()), Path::new(DIR), c.clone(), 0).unwrap()
}

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        ..LogConfig::default()
    }
}

fn plain(count: i32, payload_len: usize) -> Vec<u8> {
    raw_batch(count, (-1, -1, -1), 0, &vec![7u8; payload_len])
}

/// Appends one batch and returns it as stored (offsets and epoch assigned).
fn append(log: &mut PartitionLog, batch: Vec<u8>) -> Vec<u8> {
    let mut b = batch;
    match log.append(&mut b, E, 0).unwrap() {
        AppendOutcome::Appended(_) => b,
        AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
    }
}

/// The flusher's durable path: fsync the sync target outside the lock, then record it.
fn sync(log: &mut PartitionLog) {
    if let Some(t) = log.sync_target() {
        t.sync().unwrap();
        log.mark_flushed(t.offset);
    }
    assert_eq!(log.flushed_offset(), log.log_end_offset());
}

fn header(b: &[u8]) -> BatchHeader {
    BatchHeader::parse(b).unwrap()
}

fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = header(bytes).total_bytes();
        out.push(bytes[..n].to_vec());
        bytes = &bytes[n..];
    }
    out
}

fn read_all(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let plan = log
            .plan_read(next, 1 << 16, log.log_end_offset(), true)
            .unwrap();
        if plan.is_empty() {
            return out;
        }
        for b in split(&plan.load().unwrap()) {
            next = header(&b).next_offset();
            out.push(b);
        }
    }
}

fn end_of(batches: &[Vec<u8>]) -> Offset {
    batches
        .last()
        .map_or(Offset(0), |b| header(b).next_offset())
}

/// The log files of the partition, oldest first.
fn segments(d: &MemoryDisk) -> Vec<PathBuf> {
    d.read_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|e| e.name.ends_with(".log"))
        .map(|e| Path::new(DIR).join(e.name))
        .collect()
}

fn is_log_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "log")
}

#[test]
fn a_crash_keeps_the_synced_records_and_loses_the_rest() {
    let d = disk();
    let c = LogConfig::default();
    let mut log = open(&d, &c);
    tracing::info!("--- three batches, fsynced by the flusher's path");
    let synced: Vec<Vec<u8>> = (0..3).map(|i| append(&mut log, plain(2, 10 + i))).collect();
    sync(&mut log);
    assert_eq!(log.flushed_offset(), Offset(6));

    tracing::info!("--- two more, written but not synced");
    for _ in 0..2 {
        append(&mut log, plain(1, 50));
    }
    assert_eq!(log.log_end_offset(), Offset(8));

    tracing::info!("--- power cut; the reopened log ends where the sync did");
    d.crash();
    drop(log);
    let mut log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(6));
    assert_eq!(read_all(&log), synced);

    tracing::info!("--- appends continue at the synced end and survive the next crash");
    let more = append(&mut log, plain(3, 5));
    assert_eq!(header(&more).base_offset, Offset(6));
    sync(&mut log);
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(9));
    assert_eq!(read_all(&log), [synced, vec![more]].concat());
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_batch() {
    // Keep every possible number of bytes of two unsynced batches: recovery must keep exactly
    // the whole batches among them, and the synced one always.
    let c = LogConfig::default();
    let (b_len, c_len) = (plain(1, 20).len() as u64, plain(2, 30).len() as u64);
    for kept in 0..=b_len + c_len {
        let d = disk();
        let mut log = open(&d, &c);
        let a = append(&mut log, plain(1, 10));
        sync(&mut log);
        let b = append(&mut log, plain(1, 20));
        let cc = append(&mut log, plain(2, 30));
        d.crash_keeping(&mut |path, tail| {
            if is_log_file(path) {
                assert_eq!(tail, b_len + c_len, "the unsynced tail is the two batches");
                kept
            } else {
                tail / 2
            }
        });
        drop(log);
        let mut log = open(&d, &c);
        let expected = match kept {
            k if k < b_len => vec![a.clone()],
            k if k < b_len + c_len => vec![a.clone(), b],
            _ => vec![a.clone(), b, cc],
        };
        assert_eq!(log.log_end_offset(), end_of(&expected), "kept {kept}");
        assert_eq!(read_all(&log), expected, "kept {kept}");
        let next = append(&mut log, plain(1, 1));
        assert_eq!(header(&next).base_offset, end_of(&expected), "kept {kept}");
    }
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing_acknowledged() {
    let d = disk();
    let c = LogConfig::default();
    let mut log = open(&d, &c);
    let acked: Vec<Vec<u8>> = (0..2).map(|_| append(&mut log, plain(1, 40))).collect();

    tracing::info!("--- the disk fills up: the append fails with ENOSPC and changes nothing");
    d.set_capacity(Some(d.used_bytes()));
    let mut b = plain(1, 40);
    match log.append(&mut b, E, 0) {
        Err(LogError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}"),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), Offset(2));
    assert_eq!(read_all(&log), acked);

    tracing::info!("--- an injected ENOSPC fails it the same way");
    d.set_capacity(None);
    d.inject(DiskFault {
        op: DiskOp::Write,
        under: PathBuf::from(DIR),
        error: DiskError::NoSpace,
        times: Some(1),
    });
    let mut b = plain(1, 40);
    assert!(matches!(
        log.append(&mut b, E, 0),
        Err(LogError::Io(e)) if e.kind() == io::ErrorKind::StorageFull
    ));
    assert_eq!(log.log_end_offset(), Offset(2));

    tracing::info!("--- space is back: the same log takes appends again, no reopen needed");
    let after = append(&mut log, plain(1, 40));
    assert_eq!(header(&after).base_offset, Offset(2));
    sync(&mut log);
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(read_all(&log), [acked, vec![after]].concat());
}

#[test]
fn a_full_disk_during_a_segment_roll_fails_the_append_and_the_log_recovers() {
    // Each batch is 161 bytes: the third append rolls the first segment.
    let d = disk();
    let c = cfg(400);
    let mut log = open(&d, &c);
    let acked: Vec<Vec<u8>> = (0..2).map(|_| append(&mut log, plain(1, 100))).collect();
    assert_eq!(segments(&d).len(), 1);

    tracing::info!("--- no byte more fits: the roll fails, and with it the append");
    d.set_capacity(Some(d.used_bytes()));
    let mut b = plain(1, 100);
    assert!(matches!(
        log.append(&mut b, E, 0),
        Err(LogError::Io(e)) if e.kind() == io::ErrorKind::StorageFull
    ));
    assert_eq!(log.log_end_offset(), Offset(2));
    assert_eq!(read_all(&log), acked);

    tracing::info!("--- space is back: the roll and the append go through on the same log");
    d.set_capacity(None);
    let after = append(&mut log, plain(1, 100));
    assert_eq!(header(&after).base_offset, Offset(2));
    assert_eq!(segments(&d).len(), 2, "rolled");
    let all = [acked, vec![after]].concat();
    assert_eq!(read_all(&log), all);
    sync(&mut log);
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(read_all(&log), all);
    let plan = log.plan_read(Offset(1), 1, Offset(3), true).unwrap();
    assert_eq!(
        plan.load().unwrap().to_vec(),
        all[1],
        "the rolled segment serves reads"
    );
}

#[test]
fn a_failed_fsync_is_reported_and_nothing_counts_as_flushed() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, plain(1, 10));
    let eio = |times| DiskFault {
        op: DiskOp::Sync,
        under: PathBuf::from(DIR),
        error: DiskError::Io,
        times: Some(times),
    };

    tracing::info!("--- the flusher's sync target fails with EIO");
    d.inject(eio(1));
    let t = log.sync_target().unwrap();
    let e = t.sync().unwrap_err();
    assert!(e.to_string().contains("os error 5"), "{e}");
    assert_eq!(log.flushed_offset(), Offset(0));

    tracing::info!("--- so does a full flush (shutdown's)");
    d.inject(eio(1));
    match log.flush() {
        Err(LogError::Io(e)) => assert!(e.to_string().contains("os error 5"), "{e}"),
        other => panic!("expected EIO, got {other:?}"),
    }
    assert_eq!(log.flushed_offset(), Offset(0));

    tracing::info!("--- the device answers again");
    sync(&mut log);
    assert_eq!(log.flushed_offset(), Offset(1));
}

#[test]
fn latent_corruption_in_a_sealed_segment_is_reported_by_reads_not_recovery() {
    // 161-byte batches in 200-byte segments: one batch per segment.
    let d = disk();
    let c = cfg(200);
    let mut log = open(&d, &c);
    let stored: Vec<Vec<u8>> = (0..3).map(|_| append(&mut log, plain(1, 100))).collect();
    log.flush().unwrap();
    let sealed = segments(&d)[0].clone();
    assert_eq!(segments(&d).len(), 3);

    tracing::info!("--- a bit rots in the CRC-covered payload of the first, sealed, segment");
    d.corrupt(&sealed, stored[0].len() as u64 - 1, 0x10)
        .unwrap();
    let corrupt_read = |log: &PartitionLog| {
        let plan = log.plan_read(Offset(0), 1 << 16, Offset(3), true).unwrap();
        match plan.load() {
            Err(LogError::Corrupt { path, position, .. }) => {
                assert_eq!((path, position), (sealed.clone(), 0));
            }
            other => panic!("expected a CRC failure, got {other:?}"),
        }
    };
    corrupt_read(&log);

    tracing::info!("--- recovery only scans the active segment: the log opens whole");
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (Offset(0), Offset(3))
    );
    corrupt_read(&log);
    tracing::info!("--- the other segments still read");
    for (i, b) in stored.iter().enumerate().skip(1) {
        let plan = log
            .plan_read(Offset(i as i64), 1 << 16, Offset(3), true)
            .unwrap();
        assert_eq!(&plan.load().unwrap().to_vec(), b);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        records: i32,
        payload: usize,
    },
    Sync,
    /// A power cut keeping `tear_per_256`/256 of every unsynced appended tail.
    Crash {
        tear_per_256: u64,
    },
}

#[test]
fn latent_corruption_inside_the_active_segment_is_kept_by_recovery_and_refused_by_reads() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    let stored: Vec<Vec<u8>> = (0..4).map(|_| append(&mut log, plain(1, 100))).collect();
    sync(&mut log);
    let active = segments(&d)[0].clone();
    assert_eq!(segments(&d).len(), 1);
    let end_of_batch = |i: usize| stored[..=i].iter().map(Vec::len).sum::<usize>() as u64;

    tracing::info!("--- a bit rots in batch 1's CRC-covered payload; valid batches follow it");
    d.corrupt(&active, end_of_batch(1) - 1, 0x10).unwrap();
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(
        log.log_end_offset(),
        Offset(4),
        "not cut as a torn tail: the batches after it may be committed"
    );
    assert!(!log.cut_at_open());
    assert_eq!(log.damaged_at_open(), Some(Offset(1)));
    let read = |log: &PartitionLog, o: i64| {
        log.plan_read(Offset(o), 1 << 16, Offset(4), true)
            .unwrap()
            .load()
    };
    assert_eq!(
        read(&log, 0).unwrap().to_vec(),
        stored[0],
        "a read stops before it"
    );
    assert!(matches!(read(&log, 1), Err(LogError::Corrupt { .. })));
    assert_eq!(
        read(&log, 2).unwrap().to_vec(),
        [&stored[2][..], &stored[3]].concat()
    );

    tracing::info!(
        "--- damage in the last batch looks like a torn write: cut there, as Kafka does"
    );
    d.corrupt(&active, end_of_batch(3) - 1, 0x10).unwrap();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(3));
    assert!(log.cut_at_open());
    assert_eq!(log.damaged_at_open(), Some(Offset(1)));
}

/// Found by simulator seed 1180: the flipped bit was in the batch's last offset delta, which
/// the CRC covers, so the batch after it did not seem to continue it, and recovery cut there.
#[test]
fn a_batch_whose_last_offset_delta_rotted_is_kept_up_to_the_next_batch() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    let stored: Vec<Vec<u8>> = (0..3).map(|_| append(&mut log, plain(2, 100))).collect();
    sync(&mut log);
    let active = segments(&d)[0].clone();
    // Byte 26 of a batch is the last of its last offset delta (1 here, for 2 records).
    d.corrupt(&active, stored[0].len() as u64 + 26, 0x40)
        .unwrap();
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(6));
    assert!(!log.cut_at_open());
    assert_eq!(log.damaged_at_open(), Some(Offset(2)));
    let read = |o: i64| {
        log.plan_read(Offset(o), 1 << 16, Offset(6), true)
            .and_then(|plan| plan.load())
    };
    // Its stored header claims offsets past the log end: reads inside it are refused as
    // damaged (so that the replica repairs it), reads past it find the next batch (seed 180).
    assert_eq!(
        read(0).unwrap().to_vec(),
        stored[0],
        "a read stops before it"
    );
    assert!(matches!(read(2), Err(LogError::Corrupt { .. })));
    assert!(matches!(read(3), Err(LogError::Corrupt { .. })));
    assert_eq!(read(4).unwrap().to_vec(), stored[2]);
    drop(log);

    tracing::info!("--- its sign bit flipped instead (seed 2644): the log opens, reads the same");
    d.corrupt(&active, stored[0].len() as u64 + 26, 0x40)
        .unwrap();
    d.corrupt(&active, stored[0].len() as u64 + 23, 0x80)
        .unwrap();
    let log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(6));
    assert_eq!(log.damaged_at_open(), Some(Offset(2)));
    let read = |o: i64| {
        log.plan_read(Offset(o), 1 << 16, Offset(6), true)
            .and_then(|plan| plan.load())
    };
    assert_eq!(read(0).unwrap().to_vec(), stored[0]);
    assert!(matches!(read(2), Err(LogError::Corrupt { .. })));
    assert!(matches!(read(3), Err(LogError::Corrupt { .. })));
    assert_eq!(read(4).unwrap().to_vec(), stored[2]);
}

/// Found by simulator seed 921: a truncation deleted the producer snapshot above its cut
/// without making the deletion durable. A power cut brought the snapshot back, the log grew
/// past it with other records, and the replica, leader after a restart, loaded it: an
/// idempotent producer's retry of a batch that was no longer in the log was answered as a
/// duplicate, at an offset holding another record, and never written.
#[test]
fn a_producer_snapshot_a_truncation_deleted_stays_deleted_after_a_power_cut() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    append(&mut log, raw_batch(1, (7, 0, 0), 0, b"a"));
    append(&mut log, raw_batch(1, (7, 0, 1), 0, b"b"));
    log.flush().unwrap();
    let snapshot = Path::new(DIR).join(format!("{:020}.snapshot", 2));
    assert!(d
        .read_dir(Path::new(DIR))
        .unwrap()
        .iter()
        .any(|e| Path::new(DIR).join(&e.name) == snapshot));

    tracing::info!("--- truncated below the snapshot, then other records take offsets 1 and 2");
    log.truncate_to(Offset(1)).unwrap();
    append(&mut log, raw_batch(1, (9, 0, 0), 0, b"x"));
    append(&mut log, raw_batch(1, (9, 0, 1), 0, b"y"));
    sync(&mut log);
    d.crash();
    drop(log);

    let mut log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(3));
    assert!(
        !d.read_dir(Path::new(DIR))
            .unwrap()
            .iter()
            .any(|e| Path::new(DIR).join(&e.name) == snapshot),
        "the deleted snapshot is not back"
    );
    let mut retry = raw_batch(1, (7, 0, 1), 0, b"b");
    assert!(
        matches!(
            log.append(&mut retry, E, 0).unwrap(),
            AppendOutcome::Appended(_)
        ),
        "producer 7's batch 1 is not in the log: its retry is written, not answered as a duplicate"
    );
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1i32..4, 0usize..120).prop_map(|(records, payload)| Op::Append { records, payload }),
        2 => Just(Op::Sync),
        1 => (0u64..=256).prop_map(|tear_per_256| Op::Crash { tear_per_256 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// After any crash the log holds a prefix of what was appended, at least everything below
    /// the flushed offset, and ends at its last whole batch; appends continue from there.
    #[test]
    fn a_crash_anywhere_keeps_a_prefix_holding_everything_flushed(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes in 300u64..1500,
    ) {
        let d = disk();
        let c = cfg(segment_bytes);
        let mut log = open(&d, &c);
        let mut written: Vec<Vec<u8>> = Vec::new();
        for op in ops.into_iter().chain([Op::Crash { tear_per_256: 128 }]) {
            match op {
                Op::Append { records, payload } => {
                    let b = append(&mut log, plain(records, payload));
                    prop_assert_eq!(header(&b).base_offset, end_of(&written));
                    written.push(b);
                }
                Op::Sync => sync(&mut log),
                Op::Crash { tear_per_256 } => {
                    let flushed = log.flushed_offset();
                    d.crash_keeping(&mut |_, tail| tail * tear_per_256 / 256);
                    drop(log);
                    log = open(&d, &c);
                    let got = read_all(&log);
                    prop_assert!(got.len() <= written.len());
                    prop_assert_eq!(&got[..], &written[..got.len()]);
                    prop_assert!(end_of(&got) >= flushed, "lost flushed data below {}", flushed);
                    prop_assert_eq!(log.log_end_offset(), end_of(&got));
                    written = got;
                }
            }
        }
    }
}

/// Regression: a roll that failed part way (ENOSPC writing the sealed segment's last time-index
/// entry) dropped the segment's in-memory index, so the retry wrote the final entry over the
/// first one of the `.timeindex` file and left the sealed segment with a one-entry index.
#[test]
fn a_roll_retried_after_a_full_disk_keeps_the_sealed_segments_index() {
    let d = disk();
    let c = LogConfig {
        // 161-byte batches: the fifth rolls the segment.
        segment_bytes: 700,
        index_interval_bytes: 1,
        ..LogConfig::default()
    };
    let mut log = open(&d, &c);
    let mut acked: Vec<Vec<u8>> = (1..=4)
        .map(|ts| append(&mut log, raw_batch(1, (-1, -1, -1), ts * 10, &[7u8; 100])))
        .collect();
    let before = segments(&d).len();

    tracing::info!("--- the roll fails on the full disk, then goes through");
    d.set_capacity(Some(d.used_bytes()));
    let mut b = raw_batch(1, (-1, -1, -1), 50, &[7u8; 100]);
    assert!(matches!(
        log.append(&mut b, E, 0),
        Err(LogError::Io(e)) if e.kind() == io::ErrorKind::StorageFull
    ));
    d.set_capacity(None);
    acked.push(append(
        &mut log,
        raw_batch(1, (-1, -1, -1), 50, &[7u8; 100]),
    ));
    assert_eq!(segments(&d).len(), before + 1, "rolled");

    tracing::info!(
        "--- the sealed segment's index files are what a rebuild from its batches writes"
    );
    let file = |suffix: &str| Path::new(DIR).join(format!("{:020}{suffix}", 0));
    let bytes = |suffix: &str| {
        spate_types::disk::read_bounded(&d, &file(suffix), 1 << 20)
            .unwrap()
            .unwrap()
    };
    let (offsets, times) = (bytes(".index"), bytes(".timeindex"));
    assert!(
        times.len() >= 3 * 12,
        "several time entries: {} bytes",
        times.len()
    );
    drop(log);
    d.remove_file(&file(".index")).unwrap();
    d.remove_file(&file(".timeindex")).unwrap();
    let log = open(&d, &c);
    assert_eq!(read_all(&log), acked);
    assert_eq!(bytes(".index"), offsets, "offset index as rebuilt");
    assert_eq!(bytes(".timeindex"), times, "time index as rebuilt");
}
