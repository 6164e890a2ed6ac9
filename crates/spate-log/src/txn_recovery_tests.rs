//! Transactions through crashes, snapshots, truncation, retention and compaction, and damaged
//! or unwritable transaction indexes, as phases on a [`MemoryDisk`] (see `txn_tests` for the
//! helpers). Ends with a property test: random transactional appends, markers, flushes,
//! truncations and power cuts, after which the log's aborted and open transactions and last
//! stable offset must be what a replay of the batches it holds says.
#![allow(clippy::unwrap_used)]

use crate::batch::BatchHeader;
use crate::txn_index::{self, ENTRY_BYTES};
use crate::txn_tests::*;
use crate::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use spate_types::disk::{Disk, DiskError, DiskFault, DiskOp};
use spate_types::{MemoryDisk, Offset, ProducerId};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn recovery_after_a_crash_rebuilds_the_index_and_the_open_transactions() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 2)).unwrap(); // 0-1
    append(&mut log, txn(2, 0, 0, 1)).unwrap(); // 2
    end_txn(&mut log, 1, 0, false); // 3
    append(&mut log, txn(3, 0, 0, 1)).unwrap(); // 4
    let index_before = txn_indexes(&d);
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 3, 2)]);

    tracing::info!("--- the flusher syncs the log file only; the index is not durable");
    sync(&mut log);
    assert_eq!(
        d.durable_len(&txn_index_path(0)),
        Some(0),
        "the active index is not fsynced by the flusher"
    );
    tracing::info!("--- an unsynced marker and a torn index tail are lost in the power cut");
    end_txn(&mut log, 2, 0, false); // 5
    d.crash_keeping(&mut |p, tail| {
        if p.extension().is_some_and(|e| e == "txnindex") {
            tail.min(50)
        } else {
            0
        }
    });
    drop(log);
    let log = open(&d, &c);
    assert_eq!(log.log_end_offset(), Offset(5));
    assert_eq!(
        txn_indexes(&d),
        index_before,
        "rebuilt from the replayed marker"
    );
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 3, 2)]);
    assert_eq!(
        open_txns(&log),
        vec![(Offset(2), ProducerId(2)), (Offset(4), ProducerId(3))],
        "producer 2's abort was lost: its transaction is open again"
    );
    assert_eq!(log.last_stable_offset(Offset(5)), Offset(2));
    assert_eq!(
        d.durable_len(&txn_index_path(0)),
        Some(ENTRY_BYTES as u64),
        "a rebuilt index is fsynced"
    );
    assert_matches_model(&log, "recovered");
}

#[test]
fn recovery_from_a_snapshot_taken_mid_transaction() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    append(&mut log, plain(1)).unwrap(); // 0
    append(&mut log, txn(1, 0, 0, 2)).unwrap(); // 1-2
    tracing::info!("--- a flush writes a snapshot with the transaction open at 1");
    log.flush().unwrap();
    drop(log);
    let mut log = open(&d, &c);
    assert_eq!(open_txns(&log), vec![(Offset(1), ProducerId(1))]);
    assert_eq!(
        log.producer_state()
            .entry(ProducerId(1))
            .unwrap()
            .current_txn_first_offset,
        Some(Offset(1))
    );

    tracing::info!(
        "--- the abort comes after the snapshot; the replay from it finds where it began"
    );
    append(&mut log, txn(1, 0, 2, 1)).unwrap(); // 3
    end_txn(&mut log, 1, 0, false); // 4
    sync(&mut log);
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), vec![aborted(1, 1, 4, 5)]);
    assert_eq!(open_txns(&log), vec![]);
    assert_matches_model(&log, "after the snapshot");

    tracing::info!("--- a snapshot after the abort: the entry below it is durable and kept");
    let mut log = log;
    log.flush().unwrap();
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), vec![aborted(1, 1, 4, 5)]);
}

#[test]
fn truncation_below_a_marker_reopens_the_transaction_and_drops_its_index_entry() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 2)).unwrap(); // 0-1
    let m = end_txn(&mut log, 1, 0, false); // 2
    append(&mut log, plain(1)).unwrap(); // 3
    log.flush().unwrap();
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 2, 3)]);

    log.truncate_to(m).unwrap();
    assert_eq!(log.log_end_offset(), Offset(2));
    assert_eq!(open_txns(&log), vec![(Offset(0), ProducerId(1))]);
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(log.last_stable_offset(Offset(2)), Offset(0));
    assert_eq!(
        d.durable_len(&txn_index_path(0)),
        Some(0),
        "the entry is gone durably"
    );

    tracing::info!("--- the new leader's COMMIT takes the offset; a power cut changes nothing");
    log.append_marker(marker(1, 0, 1, true), E, 0).unwrap();
    sync(&mut log);
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(open_txns(&log), vec![]);
    assert_matches_model(&log, "after truncation");
}

#[test]
fn truncation_below_a_transactions_first_offset_removes_it() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, plain(2)).unwrap(); // 0-1
    append(&mut log, txn(1, 0, 0, 1)).unwrap(); // 2
    end_txn(&mut log, 1, 0, true); // 3
    append(&mut log, txn(2, 0, 0, 1)).unwrap(); // 4
    assert_eq!(
        log.last_stable_offset(Offset(3)),
        Offset(2),
        "commit not replicated"
    );
    assert_eq!(
        log.last_stable_offset(Offset(5)),
        Offset(4),
        "producer 2's is open"
    );
    log.truncate_to(Offset(4)).unwrap();
    assert_eq!(open_txns(&log), vec![]);
    assert_eq!(
        log.last_stable_offset(Offset(3)),
        Offset(2),
        "the commit is kept"
    );
    assert_eq!(log.last_stable_offset(Offset(4)), Offset(4));
    log.truncate_to(Offset(2)).unwrap();
    assert_eq!(open_txns(&log), vec![]);
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(Offset(2)), Offset(2));
    tracing::info!("--- emptied entirely: nothing is left either");
    append(&mut log, txn(3, 0, 0, 1)).unwrap();
    log.truncate_fully_and_start_at(Offset(10)).unwrap();
    assert_eq!(open_txns(&log), vec![]);
    assert_eq!(log.first_unstable_offset(), None);
}

#[test]
fn retention_deleting_a_segment_deletes_its_transaction_index() {
    let d = disk();
    // Every batch in its own segment.
    let c = LogConfig {
        retention_bytes: 0,
        ..cfg(100)
    };
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 1)).unwrap(); // 0
    end_txn(&mut log, 1, 0, false); // 1
    append(&mut log, plain(1)).unwrap();
    append(&mut log, plain(1)).unwrap();
    assert!(txn_indexes(&d).contains_key(&format!("{:020}.txnindex", 1)));
    let before = txn_indexes(&d).len();
    let out = log.apply_retention(0).unwrap();
    assert!(out.segments_deleted >= 2, "{out:?}");
    assert!(!txn_indexes(&d).contains_key(&format!("{:020}.txnindex", 1)));
    assert_eq!(txn_indexes(&d).len(), before - out.segments_deleted);
    assert_eq!(all_aborted(&log), vec![]);

    tracing::info!("--- DeleteRecords too");
    append(&mut log, txn(2, 0, 0, 1)).unwrap();
    end_txn(&mut log, 2, 0, false);
    append(&mut log, plain(1)).unwrap();
    let end = log.log_end_offset();
    log.delete_records_before(end).unwrap();
    assert_eq!(txn_indexes(&d).len(), 1, "{:?}", txn_indexes(&d).keys());
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), vec![]);
}

/// A transactional (or plain) batch of keyed records for a compacted topic.
fn keyed(keys: &[&str], producer: (i64, i16, i32), transactional: bool, ts: i64) -> Vec<u8> {
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: producer.0,
            producer_epoch: producer.1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if producer.0 < 0 {
                i as i32 - 1
            } else {
                producer.2 + i as i32
            },
            timestamp: ts,
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from_static(b"value")),
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

fn compact_cfg() -> LogConfig {
    LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    }
}

/// A compacted log whose every append rolled a segment: an aborted and a committed transaction,
/// plain overwrites of their keys, another aborted transaction and a last plain batch.
fn compacted_log(d: &MemoryDisk) -> PartitionLog {
    let c = compact_cfg();
    let mut log = open(d, &c);
    let mut now = 10;
    let mut tick = || {
        now += 1;
        now
    };
    let put = |log: &mut PartitionLog, b: Vec<u8>, now: i64| {
        let mut b = b;
        log.append(&mut b, E, now).unwrap();
    };
    put(&mut log, keyed(&["a", "b"], (1, 0, 0), true, 1), tick()); // 0-1
    put(&mut log, keyed(&["a"], (2, 0, 0), true, 1), tick()); // 2
    log.append_marker(marker(1, 0, 0, false), E, tick())
        .unwrap(); // 3
    put(&mut log, keyed(&["c"], (2, 0, 1), true, 1), tick()); // 4
    log.append_marker(marker(2, 0, 0, true), E, tick()).unwrap(); // 5
    put(
        &mut log,
        keyed(&["a", "b", "c"], (-1, -1, -1), false, 2),
        tick(),
    ); // 6-8
    put(
        &mut log,
        keyed(&["a", "b", "c"], (-1, -1, -1), false, 3),
        tick(),
    ); // 9-11
    put(&mut log, keyed(&["d"], (3, 0, 0), true, 4), tick()); // 12
    log.append_marker(marker(3, 0, 0, false), E, tick())
        .unwrap(); // 13
    put(&mut log, keyed(&["e"], (-1, -1, -1), false, 5), tick()); // 14
    log
}

#[test]
fn compaction_keeps_markers_and_transaction_index_entries() {
    let d = disk();
    let mut log = compacted_log(&d);
    let aborts = all_aborted(&log);
    assert_eq!(aborts, vec![aborted(1, 0, 3, 2), aborted(3, 12, 13, 14)]);
    let markers_before: Vec<Vec<u8>> = read_all(&log)
        .into_iter()
        .filter(|b| BatchHeader::parse(b).unwrap().is_control())
        .collect();
    let segments_before = segment_bases(&d).len();
    match log.compact(1_000, CompactionLimits::default()).unwrap() {
        CompactionOutcome::Compacted(s) => assert!(s.records_removed > 0, "{s:?}"),
        other => panic!("expected a pass, got {other:?}"),
    }
    assert!(segment_bases(&d).len() < segments_before);
    let markers_after: Vec<Vec<u8>> = read_all(&log)
        .into_iter()
        .filter(|b| BatchHeader::parse(b).unwrap().is_control())
        .collect();
    assert_eq!(markers_after, markers_before, "markers survive whole");
    assert_eq!(all_aborted(&log), aborts);
    assert!(
        txn_indexes(&d).values().any(|b| b.len() == 2 * ENTRY_BYTES),
        "the cleaned segment carries both entries: {:?}",
        txn_indexes(&d)
    );
    for from in 0..16 {
        for upper in from..17 {
            let want: Vec<AbortedTxn> = aborts
                .iter()
                .filter(|a| a.last_offset.0 >= from && a.first_offset.0 < upper)
                .copied()
                .collect();
            assert_eq!(
                log.aborted_transactions(Offset(from), Offset(upper))
                    .unwrap(),
                want
            );
        }
    }
    drop(log);
    let log = open(&d, &compact_cfg());
    assert_eq!(all_aborted(&log), aborts);
    assert!(d
        .read_dir(Path::new(DIR))
        .unwrap()
        .iter()
        .all(|e| !e.name.ends_with(".cleaned") && !e.name.ends_with(".swap")));
}

#[test]
fn compaction_never_cleans_past_the_first_unstable_offset() {
    let d = disk();
    let c = compact_cfg();
    let mut log = open(&d, &c);
    let mut b = keyed(&["a"], (1, 0, 0), true, 1);
    log.append(&mut b, E, 11).unwrap(); // 0: open transaction
    for (i, ts) in (12..16).enumerate() {
        let mut b = keyed(&["k"], (-1, -1, -1), false, i as i64);
        log.append(&mut b, E, ts).unwrap();
    }
    assert_eq!(log.first_unstable_offset(), Some(Offset(0)));
    assert!(matches!(
        log.compact(1_000, CompactionLimits::default()).unwrap(),
        CompactionOutcome::Skipped(SkipReason::NothingCleanable)
    ));
    log.append_marker(marker(1, 0, 0, true), E, 17).unwrap();
    log.on_high_watermark(log.log_end_offset());
    assert!(matches!(
        log.compact(1_000, CompactionLimits::default()).unwrap(),
        CompactionOutcome::Compacted(_)
    ));
}

#[test]
fn a_crash_after_the_compaction_commit_point_rolls_the_transaction_index_forward() {
    let d = disk();
    let c = compact_cfg();
    let mut log = compacted_log(&d);
    let aborts = all_aborted(&log);
    let plan = match log
        .plan_compaction(1_000, log.log_end_offset(), CompactionLimits::default())
        .unwrap()
    {
        PlannedCompaction::Plan(p) => p,
        PlannedCompaction::Skip(r) => panic!("{r:?}"),
    };
    let prepared = plan.execute().unwrap();
    tracing::info!(
        "--- renaming the transaction index swap into place fails after the commit point"
    );
    let swap = d
        .read_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .find(|e| e.name.ends_with(".txnindex.cleaned"))
        .map(|e| {
            e.name
                .replace(".cleaned", "")
                .replace(".txnindex", ".txnindex.swap")
        })
        .unwrap();
    d.inject(DiskFault {
        op: DiskOp::Metadata,
        under: Path::new(DIR).join(&swap),
        error: DiskError::Io,
        times: Some(1),
    });
    assert!(log.commit_compaction(prepared).is_err());
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), aborts);
    assert!(d
        .read_dir(Path::new(DIR))
        .unwrap()
        .iter()
        .all(|e| !e.name.ends_with(".cleaned") && !e.name.ends_with(".swap")));
}

#[test]
fn swap_recovery_keeps_a_transaction_index_already_renamed_into_place() {
    // The state a crash leaves when the renames after the commit point reached the disk up to
    // the transaction index's, not the log's (possible on a real file system).
    let d = disk();
    let dir = Path::new(DIR);
    let write = |name: &str, bytes: &[u8]| {
        let f = d
            .open(&dir.join(name), spate_types::OpenMode::Truncate)
            .unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f.sync_data().unwrap();
    };
    let new_entries = txn_index::encode(&[aborted(1, 0, 3, 4)]);
    let name = |base: i64, suffix: &str| format!("{base:020}{suffix}");
    write(&name(0, ".txnindex"), &new_entries);
    write(&name(5, ".log"), b"old");
    write(
        &name(5, ".txnindex"),
        &txn_index::encode(&[aborted(2, 5, 6, 7)]),
    );
    write(&format!("{:020}.{:020}.log.swap", 0, 10), b"new");
    d.sync_dir(dir).unwrap();
    crate::compaction::recover(&d, dir).unwrap();
    assert_eq!(
        txn_indexes(&d),
        BTreeMap::from([(name(0, ".txnindex"), new_entries)])
    );

    tracing::info!("--- and, the other way, a cleaned index whose swap rename was lost");
    let cleaned = txn_index::encode(&[aborted(3, 10, 12, 13)]);
    write(&name(10, ".log"), b"old");
    write(&format!("{:020}.{:020}.txnindex.cleaned", 10, 20), &cleaned);
    write(&format!("{:020}.{:020}.log.swap", 10, 20), b"new");
    write(&format!("{:020}.{:020}.txnindex.swap", 30, 40), b"leftover");
    crate::compaction::recover(&d, dir).unwrap();
    let got = txn_indexes(&d);
    assert_eq!(got[&name(10, ".txnindex")], cleaned);
    assert!(d
        .read_dir(dir)
        .unwrap()
        .iter()
        .all(|e| !e.name.ends_with(".cleaned") && !e.name.ends_with(".swap")));
}

#[test]
fn a_torn_or_oversized_transaction_index_is_handled() {
    let d = disk();
    // Every batch in its own segment.
    let c = cfg(100);
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 1)).unwrap(); // 0
    end_txn(&mut log, 1, 0, false); // 1
    append(&mut log, plain(1)).unwrap(); // 2
    append(&mut log, txn(2, 0, 0, 1)).unwrap(); // 3
    end_txn(&mut log, 2, 0, false); // 4: the active segment
    log.flush().unwrap();
    let aborts = all_aborted(&log);
    assert_eq!(aborts.len(), 2);
    let active_base = *segment_bases(&d).last().unwrap();
    drop(log);

    tracing::info!("--- a torn tail on a rolled index and garbage after the active one");
    let rolled = txn_index_path(1);
    let f = d.open(&rolled, spate_types::OpenMode::ReadWrite).unwrap();
    f.write_all_at(&[9; 17], ENTRY_BYTES as u64).unwrap();
    let f = d
        .open(
            &txn_index_path(active_base),
            spate_types::OpenMode::ReadWrite,
        )
        .unwrap();
    f.write_all_at(&[0xee; 100], ENTRY_BYTES as u64).unwrap();
    let log = open(&d, &c);
    assert_eq!(d.file_len(&rolled).unwrap(), ENTRY_BYTES as u64, "cut");
    assert_eq!(
        d.file_len(&txn_index_path(active_base)).unwrap(),
        ENTRY_BYTES as u64
    );
    assert_eq!(all_aborted(&log), aborts);
    drop(log);

    tracing::info!("--- a rolled index of absurd size: cut to what its segment can hold");
    let f = d.open(&rolled, spate_types::OpenMode::ReadWrite).unwrap();
    f.set_len(8 << 20).unwrap();
    let log = open(&d, &c);
    assert_eq!(
        d.file_len(&rolled).unwrap(),
        ENTRY_BYTES as u64,
        "one marker, one entry"
    );
    assert_eq!(all_aborted(&log), aborts);

    tracing::info!("--- a rotted entry is no plausible one: reported, not served");
    d.corrupt(&rolled, 0, 0x01).unwrap();
    assert!(matches!(
        log.aborted_transactions(Offset(0), Offset(10)),
        Err(LogError::Corrupt { .. })
    ));
    assert_eq!(
        log.aborted_transactions(Offset(2), Offset(10)).unwrap(),
        vec![aborts[1]],
        "later segments still answer"
    );
}

#[test]
fn a_failed_transaction_index_write_is_retried_and_read_meanwhile() {
    let d = disk();
    let c = cfg(1 << 20);
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 1)).unwrap();
    d.inject(DiskFault {
        op: DiskOp::Write,
        under: txn_index_path(0),
        error: DiskError::NoSpace,
        times: Some(1),
    });
    end_txn(&mut log, 1, 0, false);
    assert_eq!(
        d.file_len(&txn_index_path(0)).unwrap(),
        0,
        "the write failed"
    );
    assert_eq!(
        all_aborted(&log),
        vec![aborted(1, 0, 1, 2)],
        "pending, read"
    );
    log.flush().unwrap();
    d.crash();
    drop(log);
    let log = open(&d, &c);
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 1, 2)]);
    assert_eq!(d.durable_len(&txn_index_path(0)), Some(ENTRY_BYTES as u64));
}

#[test]
fn a_roll_fails_rather_than_seal_an_index_it_cannot_write() {
    let d = disk();
    // The marker fits beside the first batch; the next batch rolls.
    let c = cfg(150);
    let mut log = open(&d, &c);
    append(&mut log, txn(1, 0, 0, 1)).unwrap(); // 0
    d.inject(DiskFault {
        op: DiskOp::Write,
        under: txn_index_path(0),
        error: DiskError::Io,
        times: Some(2),
    });
    // Fits the segment: the entry's write fails and stays pending.
    log.append_marker(marker(1, 0, 0, false), E, 0).unwrap(); // 1
    assert!(
        append(&mut log, plain(1)).is_err(),
        "the roll's sealing write fails"
    );
    assert_eq!(segment_bases(&d), vec![0]);
    append(&mut log, plain(1)).unwrap();
    assert_eq!(segment_bases(&d), vec![0, 2]);
    assert_eq!(d.durable_len(&txn_index_path(0)), Some(ENTRY_BYTES as u64));
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 1, 2)]);
}

#[derive(Clone, Debug)]
enum Op {
    Data {
        pid: i64,
        transactional: bool,
        records: i32,
    },
    Plain,
    Marker {
        pid: i64,
        commit: bool,
    },
    Sync,
    Flush,
    Truncate {
        back: i64,
    },
    Crash {
        tear_per_256: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0i64..3, prop::bool::weighted(0.8), 1i32..3)
            .prop_map(|(pid, transactional, records)| Op::Data { pid, transactional, records }),
        2 => Just(Op::Plain),
        4 => (0i64..3, prop::bool::ANY).prop_map(|(pid, commit)| Op::Marker { pid, commit }),
        2 => Just(Op::Sync),
        1 => Just(Op::Flush),
        1 => (1i64..6).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..=256).prop_map(|tear_per_256| Op::Crash { tear_per_256 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens (rolls, flushes, truncation, power cuts that tear every unsynced
    /// tail), the log's aborted transactions, last stable offsets and open transactions are
    /// what a replay of the batches it holds says, and what it flushed survives.
    #[test]
    fn transactions_survive_crashes_truncation_and_rolls(
        ops in prop::collection::vec(op(), 1..50),
        segment_bytes in 200u64..700,
    ) {
        let d = disk();
        let c = cfg(segment_bytes);
        let mut log = open(&d, &c);
        for op in ops.into_iter().chain([Op::Crash { tear_per_256: 100 }]) {
            match op {
                Op::Data { pid, transactional, records } => {
                    let e = log.producer_state().entry(ProducerId(pid));
                    let (epoch, seq) = e.map_or((0, 0), |e| {
                        (e.epoch.0, e.batches.back().map_or(0, |b| b.last_seq + 1))
                    });
                    let open = e.is_some_and(|e| e.current_txn_first_offset.is_some());
                    let got = append(&mut log, data(pid, epoch, seq, records, transactional));
                    if open && !transactional {
                        let refused = matches!(got, Err(LogError::InvalidTxnState { .. }));
                        prop_assert!(refused, "{:?}", got);
                    } else {
                        prop_assert!(got.is_ok(), "{got:?}");
                    }
                }
                Op::Plain => {
                    append(&mut log, plain(1)).unwrap();
                }
                Op::Marker { pid, commit } => {
                    let e = log.producer_state().entry(ProducerId(pid));
                    let epoch = e.map_or(0, |e| e.epoch.0);
                    log.append_marker(marker(pid, epoch, 0, commit), E, 0).unwrap();
                }
                Op::Sync => sync(&mut log),
                Op::Flush => log.flush().unwrap(),
                Op::Truncate { back } => {
                    let to = Offset((log.log_end_offset().0 - back).max(0));
                    log.truncate_to(to).unwrap();
                }
                Op::Crash { tear_per_256 } => {
                    let flushed = log.flushed_offset();
                    d.crash_keeping(&mut |_, tail| tail * tear_per_256 / 256);
                    drop(log);
                    log = open(&d, &c);
                    prop_assert!(log.log_end_offset() >= flushed);
                }
            }
            let batches = read_all(&log);
            let (aborts, open) = model(&batches);
            prop_assert_eq!(all_aborted(&log), aborts.clone());
            prop_assert_eq!(open_txns(&log), open.clone());
            let end = log.log_end_offset();
            // Every marker is in the log's unreplicated set or not; with the high watermark
            // at the log end only open transactions bound the last stable offset.
            log.on_high_watermark(end);
            let first_open = open.first().map_or(end, |(o, _)| *o);
            prop_assert_eq!(log.last_stable_offset(end), first_open.min(end));
            for from in [0, end.0 / 3, end.0 / 2] {
                let upper = Offset(from + 3);
                let want: Vec<AbortedTxn> = aborts
                    .iter()
                    .filter(|a| a.last_offset.0 >= from && a.first_offset < upper)
                    .copied()
                    .collect();
                prop_assert_eq!(log.aborted_transactions(Offset(from), upper).unwrap(), want);
            }
        }
    }
}
