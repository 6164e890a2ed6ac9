//! Transactions on the partition log, as phases on a [`MemoryDisk`]: opening, committing and
//! aborting, the last stable offset before and after the high watermark passes a marker, the
//! transaction index across segments and on a follower, and the fencing rules of markers.
//! Crashes, truncation, retention, compaction and damaged indexes are in
//! `txn_recovery_tests`, which shares the helpers here, including [`model`]: what a replay of
//! a log's batches says its aborted and open transactions are.
#![allow(clippy::unwrap_used)]

use crate::batch::testutil::{fix_crc, raw_batch};
use crate::batch::BatchHeader;
use crate::txn::{parse_control_batch, ControlRecord};
use crate::txn_index::{self, ENTRY_BYTES};
use crate::*;
use spate_types::disk::{create_dir_all_durable, Disk};
use spate_types::{LeaderEpoch, ManualClock, MemoryDisk, Offset, ProducerEpoch, ProducerId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const E: LeaderEpoch = LeaderEpoch(2);
pub(crate) const DIR: &str = "/n1/logs/t-0";
const TRANSACTIONAL_BIT: i16 = 1 << 4;

pub(crate) fn disk() -> MemoryDisk {
    let d = MemoryDisk::new(Arc::new(ManualClock::new(1_000)));
    create_dir_all_durable(&d, Path::new(DIR)).unwrap();
    d
}

pub(crate) fn open(d: &MemoryDisk, c: &LogConfig) -> PartitionLog {
    PartitionLog::open(Arc::new(d.clone()), Path::new(DIR), c.clone(), 0).unwrap()
}

pub(crate) fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        ..LogConfig::default()
    }
}

/// A data batch of `count` records from producer `pid` in `epoch` from sequence `seq`.
pub(crate) fn data(pid: i64, epoch: i16, seq: i32, count: i32, transactional: bool) -> Vec<u8> {
    let mut b = raw_batch(count, (pid, epoch, seq), 0, b"v");
    if transactional {
        b[21..23].copy_from_slice(&TRANSACTIONAL_BIT.to_be_bytes());
        fix_crc(&mut b);
    }
    b
}

pub(crate) fn txn(pid: i64, epoch: i16, seq: i32, count: i32) -> Vec<u8> {
    data(pid, epoch, seq, count, true)
}

pub(crate) fn plain(count: i32) -> Vec<u8> {
    raw_batch(count, (-1, -1, -1), 0, b"p")
}

pub(crate) fn append(log: &mut PartitionLog, batch: Vec<u8>) -> Result<AppendInfo, LogError> {
    let mut b = batch;
    match log.append(&mut b, E, 0)? {
        AppendOutcome::Appended(i) => Ok(i),
        AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
    }
}

pub(crate) fn marker(pid: i64, epoch: i16, coordinator_epoch: i32, commit: bool) -> TxnMarker {
    TxnMarker {
        producer_id: ProducerId(pid),
        producer_epoch: ProducerEpoch(epoch),
        coordinator_epoch,
        commit,
    }
}

pub(crate) fn end_txn(log: &mut PartitionLog, pid: i64, epoch: i16, commit: bool) -> Offset {
    log.append_marker(marker(pid, epoch, 0, commit), E, 7)
        .unwrap()
        .base_offset
}

pub(crate) fn aborted(pid: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
    AbortedTxn {
        producer_id: ProducerId(pid),
        first_offset: Offset(first),
        last_offset: Offset(last),
        last_stable_offset: Offset(lso),
    }
}

pub(crate) fn all_aborted(log: &PartitionLog) -> Vec<AbortedTxn> {
    log.aborted_transactions(Offset(0), Offset(i64::MAX))
        .unwrap()
}

pub(crate) fn open_txns(log: &PartitionLog) -> Vec<(Offset, ProducerId)> {
    log.producer_state().open_transactions().collect()
}

pub(crate) fn sync(log: &mut PartitionLog) {
    if let Some(t) = log.sync_target() {
        t.sync().unwrap();
        log.mark_flushed(t.offset);
    }
}

pub(crate) fn txn_index_path(base: i64) -> PathBuf {
    Path::new(DIR).join(format!("{base:020}.txnindex"))
}

/// Every `.txnindex` of the partition with its bytes, by name.
pub(crate) fn txn_indexes(d: &MemoryDisk) -> BTreeMap<String, Vec<u8>> {
    d.read_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|e| e.name.ends_with(".txnindex"))
        .map(|e| {
            let bytes = spate_types::disk::read_bounded(d, &Path::new(DIR).join(&e.name), 1 << 20)
                .unwrap()
                .unwrap();
            (e.name, bytes)
        })
        .collect()
}

pub(crate) fn segment_bases(d: &MemoryDisk) -> Vec<i64> {
    d.read_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter_map(|e| e.name.strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect()
}

pub(crate) fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = BatchHeader::parse(bytes).unwrap().total_bytes();
        out.push(bytes[..n].to_vec());
        bytes = &bytes[n..];
    }
    out
}

pub(crate) fn read_all(log: &PartitionLog) -> Vec<Vec<u8>> {
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
            next = BatchHeader::parse(&b).unwrap().next_offset();
            out.push(b);
        }
    }
}

/// What a replay of `batches` from scratch says: the aborted transactions (with their last
/// stable offsets) and the transactions still open, by first offset. Independent of the log's
/// own bookkeeping: the reference the log is checked against.
pub(crate) fn model(batches: &[Vec<u8>]) -> (Vec<AbortedTxn>, Vec<(Offset, ProducerId)>) {
    let mut open: BTreeMap<ProducerId, Offset> = BTreeMap::new();
    let mut aborts = Vec::new();
    for b in batches {
        let h = BatchHeader::parse(b).unwrap();
        if !h.has_producer_id() {
            continue;
        }
        if h.is_control() {
            let ControlRecord::Marker { commit, .. } = parse_control_batch(b, &h) else {
                continue;
            };
            if let Some(first) = open.remove(&h.producer_id) {
                if !commit {
                    let lso = open.values().min().copied().unwrap_or(h.base_offset.next());
                    aborts.push(AbortedTxn {
                        producer_id: h.producer_id,
                        first_offset: first,
                        last_offset: h.base_offset,
                        last_stable_offset: lso,
                    });
                }
            }
        } else if h.is_transactional() {
            open.entry(h.producer_id).or_insert(h.base_offset);
        }
    }
    let mut by_first: Vec<(Offset, ProducerId)> = open.into_iter().map(|(p, o)| (o, p)).collect();
    by_first.sort();
    (aborts, by_first)
}

pub(crate) fn assert_matches_model(log: &PartitionLog, what: &str) {
    let (aborts, open) = model(&read_all(log));
    assert_eq!(all_aborted(log), aborts, "{what}: aborted transactions");
    assert_eq!(open_txns(log), open, "{what}: open transactions");
}

#[test]
fn a_commit_keeps_the_last_stable_offset_down_until_the_high_watermark_passes_its_marker() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, plain(2)).unwrap();
    assert_eq!(log.last_stable_offset(Offset(2)), Offset(2));
    assert_eq!(log.first_unstable_offset(), None);

    tracing::info!("--- producer 1 opens a transaction at offset 2; others write after it");
    append(&mut log, txn(1, 0, 0, 2)).unwrap();
    append(&mut log, plain(1)).unwrap();
    append(&mut log, txn(1, 0, 2, 1)).unwrap();
    let e = log.producer_state().entry(ProducerId(1)).unwrap();
    assert_eq!(e.current_txn_first_offset, Some(Offset(2)));
    assert_eq!(e.coordinator_epoch, -1);
    assert_eq!(log.first_unstable_offset(), Some(Offset(2)));
    for hw in [0, 2, 3, 6] {
        assert_eq!(
            log.last_stable_offset(Offset(hw)),
            Offset(hw.min(2)),
            "hw {hw}"
        );
    }

    tracing::info!("--- COMMIT at 6: the transaction is complete but its marker not replicated");
    let at = log.append_marker(marker(1, 0, 3, true), E, 1_234).unwrap();
    assert_eq!((at.base_offset, at.last_offset), (Offset(6), Offset(6)));
    assert_eq!((at.batch_count, at.max_timestamp), (1, 1_234));
    let e = log.producer_state().entry(ProducerId(1)).unwrap();
    assert_eq!(e.current_txn_first_offset, None);
    assert_eq!((e.coordinator_epoch, e.last_timestamp), (3, 1_234));
    assert_eq!(open_txns(&log), vec![]);
    assert_eq!(
        log.last_stable_offset(Offset(6)),
        Offset(2),
        "marker at the hw"
    );
    assert_eq!(
        log.last_stable_offset(Offset(7)),
        Offset(7),
        "marker below the hw"
    );
    assert_eq!(log.first_unstable_offset(), Some(Offset(2)));

    tracing::info!("--- the high watermark passes the marker: the transaction is forgotten");
    log.on_high_watermark(Offset(7));
    assert_eq!(log.first_unstable_offset(), None);
    assert_eq!(log.last_stable_offset(Offset(6)), Offset(6));
    assert_eq!(all_aborted(&log), vec![], "a commit is not indexed");

    tracing::info!("--- the marker is a control batch as Kafka stores it");
    let batches = read_all(&log);
    let m = batches.last().unwrap();
    let h = validate_replicated_batches(m).unwrap()[0];
    assert!(h.is_control() && h.is_transactional());
    assert_eq!(
        (h.base_offset, h.partition_leader_epoch, h.base_sequence),
        (Offset(6), E, -1)
    );
    assert_eq!(
        parse_control_batch(m, &h),
        ControlRecord::Marker {
            commit: true,
            coordinator_epoch: 3
        }
    );
}

#[test]
fn an_abort_is_indexed_with_its_last_stable_offset() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 0, 0, 3)).unwrap();
    append(&mut log, plain(1)).unwrap();
    let last = end_txn(&mut log, 1, 0, false);
    assert_eq!(last, Offset(4));
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 4, 5)]);
    tracing::info!("--- ranges: the marker must be at or after `from`, the start before `upper`");
    assert_eq!(
        log.aborted_transactions(Offset(4), Offset(5))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        log.aborted_transactions(Offset(5), Offset(9)).unwrap(),
        vec![]
    );
    assert_eq!(
        log.aborted_transactions(Offset(0), Offset(0)).unwrap(),
        vec![]
    );
    assert_eq!(
        log.aborted_transactions(Offset(0), Offset(1))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        txn_indexes(&d)[&format!("{:020}.txnindex", 0)],
        txn_index::encode(&[aborted(1, 0, 4, 5)])
    );
}

#[test]
fn interleaved_transactions_bound_the_lso_by_the_earliest_open_one() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 0, 0, 1)).unwrap(); // 0
    append(&mut log, txn(2, 0, 0, 1)).unwrap(); // 1
    append(&mut log, txn(1, 0, 1, 1)).unwrap(); // 2
    assert_eq!(
        open_txns(&log),
        vec![(Offset(0), ProducerId(1)), (Offset(1), ProducerId(2))]
    );
    assert_eq!(log.last_stable_offset(Offset(3)), Offset(0));

    tracing::info!("--- producer 1 aborts at 3: producer 2's transaction still bounds the LSO");
    end_txn(&mut log, 1, 0, false);
    assert_eq!(all_aborted(&log), vec![aborted(1, 0, 3, 1)]);
    log.on_high_watermark(Offset(4));
    assert_eq!(log.last_stable_offset(Offset(4)), Offset(1));
    assert_eq!(log.first_unstable_offset(), Some(Offset(1)));

    tracing::info!("--- producer 1 starts again after producer 2; producer 2 commits");
    append(&mut log, txn(1, 0, 2, 1)).unwrap(); // 4
    end_txn(&mut log, 2, 0, true); // 5
    log.on_high_watermark(Offset(6));
    assert_eq!(log.last_stable_offset(Offset(6)), Offset(4));
    end_txn(&mut log, 1, 0, false); // 6
    assert_eq!(
        all_aborted(&log),
        vec![aborted(1, 0, 3, 1), aborted(1, 4, 6, 7)]
    );
    log.on_high_watermark(Offset(7));
    assert_eq!(log.last_stable_offset(Offset(7)), Offset(7));
    assert_matches_model(&log, "end");
}

/// A pseudo-random transactional workload of three producers (`seed` picks it): the batches
/// it writes through `log`.
pub(crate) fn workload(log: &mut PartitionLog, seed: u64, ops: usize) {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut seq = [0i32; 3];
    let mut open = [false; 3];
    for _ in 0..ops {
        let r = next();
        let p = (r % 3) as usize;
        match (r >> 8) % 5 {
            0 | 1 => {
                let count = 1 + ((r >> 16) % 3) as i32;
                append(log, txn(p as i64, 0, seq[p], count)).unwrap();
                seq[p] += count;
                open[p] = true;
            }
            2 => {
                append(log, plain(1)).unwrap();
            }
            _ => {
                // Markers without an open transaction happen too (retries).
                log.append_marker(marker(p as i64, 0, 0, r >> 20 & 1 == 0), E, 0)
                    .unwrap();
                open[p] = false;
            }
        }
    }
}

#[test]
fn aborted_transactions_over_ranges_spanning_several_segments() {
    let d = disk();
    // About two batches per segment.
    let mut log = open(&d, &cfg(170));
    workload(&mut log, 0x5eed, 160);
    assert!(segment_bases(&d).len() > 30, "{:?}", segment_bases(&d));
    let (aborts, _) = model(&read_all(&log));
    assert!(aborts.len() >= 10, "{} aborts", aborts.len());
    assert_matches_model(&log, "workload");

    tracing::info!("--- each entry is in the index of the segment holding its marker");
    let bases = segment_bases(&d);
    for (name, bytes) in txn_indexes(&d) {
        let base: i64 = name.strip_suffix(".txnindex").unwrap().parse().unwrap();
        let end = bases
            .iter()
            .find(|b| **b > base)
            .map_or(log.log_end_offset().0, |b| *b);
        assert_eq!(bytes.len() % ENTRY_BYTES, 0);
        for e in bytes.chunks(ENTRY_BYTES) {
            let last = i64::from_be_bytes(e[18..26].try_into().unwrap());
            assert!(base <= last && last < end, "{name}: marker {last}");
        }
    }

    tracing::info!("--- every range answers what filtering all aborts gives (Kafka's search)");
    let end = log.log_end_offset().0;
    for from in 0..=end {
        for upper in from..=end + 1 {
            let want: Vec<AbortedTxn> = aborts
                .iter()
                .filter(|a| a.last_offset.0 >= from && a.first_offset.0 < upper)
                .copied()
                .collect();
            assert_eq!(
                log.aborted_transactions(Offset(from), Offset(upper))
                    .unwrap(),
                want,
                "[{from}, {upper})"
            );
        }
    }
}

#[test]
fn a_marker_with_a_stale_producer_epoch_is_refused() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 3, 0, 1)).unwrap();
    assert!(matches!(
        log.append_marker(marker(1, 2, 0, false), E, 0),
        Err(LogError::InvalidProducerEpoch)
    ));
    assert_eq!(log.log_end_offset(), Offset(1), "nothing written");
    assert_eq!(open_txns(&log), vec![(Offset(0), ProducerId(1))]);
    assert_eq!(all_aborted(&log), vec![]);
    tracing::info!("--- a marker without a producer id is no marker");
    assert!(matches!(
        log.append_marker(marker(-1, 0, 0, true), E, 0),
        Err(LogError::Batch(BatchError::TransactionalWithoutProducerId))
    ));
    assert_eq!(log.log_end_offset(), Offset(1));
}

#[test]
fn a_marker_from_a_stale_coordinator_is_refused() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 0, 0, 1)).unwrap();
    log.append_marker(marker(1, 0, 5, true), E, 0).unwrap();
    append(&mut log, txn(1, 0, 1, 1)).unwrap();
    match log.append_marker(marker(1, 0, 4, false), E, 0) {
        Err(LogError::TransactionCoordinatorFenced {
            producer_id,
            coordinator_epoch: 4,
            current: 5,
        }) => assert_eq!(producer_id, ProducerId(1)),
        other => panic!("expected a fenced coordinator, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), Offset(3), "nothing written");
    assert_eq!(open_txns(&log), vec![(Offset(2), ProducerId(1))]);
    tracing::info!("--- the current coordinator's marker goes through");
    log.append_marker(marker(1, 0, 5, false), E, 0).unwrap();
    assert_eq!(all_aborted(&log), vec![aborted(1, 2, 3, 4)]);
}

#[test]
fn a_marker_without_an_open_transaction_is_written_and_idempotent() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    tracing::info!("--- for a producer this partition never saw");
    log.append_marker(marker(9, 4, 2, false), E, 10).unwrap();
    let e = log.producer_state().entry(ProducerId(9)).unwrap().clone();
    assert_eq!(
        (e.epoch, e.coordinator_epoch, e.current_txn_first_offset),
        (ProducerEpoch(4), 2, None)
    );
    assert!(e.batches.is_empty());
    tracing::info!("--- retried, twice, as COMMIT and ABORT: written, no state change, no index");
    log.append_marker(marker(9, 4, 2, false), E, 10).unwrap();
    log.append_marker(marker(9, 4, 2, true), E, 10).unwrap();
    assert_eq!(log.log_end_offset(), Offset(3));
    assert_eq!(log.producer_state().entry(ProducerId(9)), Some(&e));
    assert_eq!(all_aborted(&log), vec![]);
    assert_eq!(log.last_stable_offset(Offset(3)), Offset(3));
    assert_eq!(log.first_unstable_offset(), None);
    tracing::info!("--- the producer's first batch at that epoch must start at sequence 0");
    assert!(matches!(
        append(&mut log, txn(9, 4, 3, 1)),
        Err(LogError::OutOfOrderSequence {
            expected: 0,
            got: 3,
            ..
        })
    ));
    append(&mut log, txn(9, 4, 0, 1)).unwrap();
}

#[test]
fn a_non_transactional_write_while_a_transaction_is_open_is_refused() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 0, 0, 1)).unwrap();
    assert!(matches!(
        append(&mut log, data(1, 0, 1, 1, false)),
        Err(LogError::InvalidTxnState { producer_id }) if producer_id == ProducerId(1)
    ));
    tracing::info!("--- all or nothing: a set whose second batch is refused writes neither");
    let before = log.producer_state().clone();
    let mut set = [txn(1, 0, 1, 1), data(1, 0, 2, 1, false)].concat();
    assert!(matches!(
        log.append(&mut set, E, 0),
        Err(LogError::InvalidTxnState { .. })
    ));
    assert_eq!(log.log_end_offset(), Offset(1));
    assert_eq!(log.producer_state(), &before);
    tracing::info!("--- other producers are not affected; after the commit it may write");
    append(&mut log, data(2, 0, 0, 1, false)).unwrap();
    end_txn(&mut log, 1, 0, true);
    append(&mut log, data(1, 0, 1, 1, false)).unwrap();
    assert_eq!(open_txns(&log), vec![]);
}

#[test]
fn a_data_batch_at_the_old_epoch_after_a_tv2_marker_bumped_it_is_fenced() {
    let d = disk();
    let mut log = open(&d, &LogConfig::default());
    append(&mut log, txn(1, 3, 0, 2)).unwrap();
    log.append_marker(marker(1, 4, 0, true), E, 0).unwrap();
    let e = log.producer_state().entry(ProducerId(1)).unwrap();
    assert_eq!(e.epoch, ProducerEpoch(4));
    assert!(e.batches.is_empty(), "the old epoch's batches go with it");
    assert!(matches!(
        append(&mut log, txn(1, 3, 2, 1)),
        Err(LogError::InvalidProducerEpoch)
    ));
    assert!(matches!(
        append(&mut log, txn(1, 4, 2, 1)),
        Err(LogError::OutOfOrderSequence { expected: 0, .. })
    ));
    append(&mut log, txn(1, 4, 0, 1)).unwrap();
    assert_eq!(open_txns(&log), vec![(Offset(3), ProducerId(1))]);
    tracing::info!("--- a marker at the old epoch is fenced too");
    assert!(matches!(
        log.append_marker(marker(1, 3, 0, false), E, 0),
        Err(LogError::InvalidProducerEpoch)
    ));
}

/// Copies `leader` into `follower` the way the fetcher does, `max_bytes` per fetch.
pub(crate) fn replicate(leader: &PartitionLog, follower: &mut PartitionLog, max_bytes: usize) {
    while follower.log_end_offset() < leader.log_end_offset() {
        let plan = leader
            .plan_read(
                follower.log_end_offset(),
                max_bytes,
                leader.log_end_offset(),
                true,
            )
            .unwrap();
        follower
            .append_as_follower(&plan.load().unwrap(), 0)
            .unwrap();
    }
}

#[test]
fn a_follower_copying_data_and_markers_holds_what_the_leader_holds() {
    for max_bytes in [1, 300, 1 << 16] {
        let (ld, fd) = (disk(), disk());
        let c = cfg(400);
        let mut leader = open(&ld, &c);
        let mut follower = open(&fd, &c);
        workload(&mut leader, 0xabcdef, 80);
        replicate(&leader, &mut follower, max_bytes);
        assert_eq!(
            follower.producer_state(),
            leader.producer_state(),
            "fetch {max_bytes}"
        );
        assert_eq!(all_aborted(&follower), all_aborted(&leader));
        assert!(!all_aborted(&leader).is_empty());
        assert_eq!(segment_bases(&fd), segment_bases(&ld), "fetch {max_bytes}");
        assert_eq!(
            txn_indexes(&fd),
            txn_indexes(&ld),
            "byte-identical .txnindex files"
        );
        for hw in 0..=leader.log_end_offset().0 {
            let hw = Offset(hw);
            assert_eq!(
                follower.last_stable_offset(hw),
                leader.last_stable_offset(hw)
            );
        }
        assert_eq!(
            follower.first_unstable_offset(),
            leader.first_unstable_offset()
        );
        assert_matches_model(&follower, "follower");
    }
}
