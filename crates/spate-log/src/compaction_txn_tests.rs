//! Compaction of transactional data, as phases on a [`MemoryDisk`] (see `txn_tests` for the
//! shared helpers): aborted batches go, committed records compact like any other, markers go
//! once their data is gone and `delete.retention.ms` has passed, open transactions are never
//! touched, and what a `read_committed` consumer receives is the same before and after a pass,
//! across a reopen and a power cut at every point of the swap. Ends with a property test of
//! random transactional appends, markers, passes and reopens against a model of the log.
#![allow(clippy::unwrap_used)]

use crate::batch::BatchHeader;
use crate::compaction_tests;
use crate::txn::{parse_control_batch, ControlRecord};
use crate::txn_tests::{aborted, disk, marker, read_all, txn_indexes, DIR, E};
use crate::*;
use bytes::Bytes;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder};
use proptest::prelude::*;
use spate_types::disk::{Disk, DiskError, DiskFault, DiskOp};
use spate_types::{MemoryDisk, Offset, ProducerId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

/// A compacted topic whose every append rolls a segment (segment.ms = 1 ms, each append 1 ms
/// later), cleaned at any dirty ratio, with tombstones and markers kept for an hour.
fn cfg() -> LogConfig {
    LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: HOUR,
        ..LogConfig::default()
    }
}

/// One data record as stored: offset, key, value, producer id, transactional.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    offset: i64,
    key: String,
    value: Option<String>,
    pid: i64,
    transactional: bool,
}

/// `(key, value)`; a `None` value is a tombstone.
type Kv<'a> = (&'a str, Option<&'a str>);

fn encode(kvs: &[Kv], producer: (i64, i32), transactional: bool, ts: i64) -> Vec<u8> {
    let kvs: Vec<compaction_tests::Kv> = kvs.iter().map(|(k, v)| (Some(*k), *v)).collect();
    let (pid, seq) = producer;
    let producer = if pid < 0 { (-1, -1, -1) } else { (pid, 0, seq) };
    compaction_tests::encode_batch(&kvs, ts, producer, Compression::None, transactional)
}

/// A compacted partition on a [`MemoryDisk`] with a clock that every append advances by 1 ms
/// (so that each append rolls a segment) and the producers' next sequences.
struct Log {
    d: MemoryDisk,
    log: PartitionLog,
    c: LogConfig,
    now: i64,
    seqs: BTreeMap<i64, i32>,
}

impl Log {
    fn new() -> Log {
        Log::with(cfg())
    }

    fn with(c: LogConfig) -> Log {
        let d = disk();
        let log = PartitionLog::open(Arc::new(d.clone()), Path::new(DIR), c.clone(), T0).unwrap();
        Log {
            d,
            log,
            c,
            now: T0,
            seqs: BTreeMap::new(),
        }
    }

    /// Appends one batch of producer `pid` (transactional or idempotent), or a plain one
    /// (no producer id). Returns its base offset.
    fn data(&mut self, pid: Option<i64>, transactional: bool, kvs: &[Kv]) -> i64 {
        self.now += 1;
        let producer = match pid {
            Some(p) => {
                let seq = self.seqs.entry(p).or_insert(0);
                let at = *seq;
                *seq += kvs.len() as i32;
                (p, at)
            }
            None => (-1, -1),
        };
        let mut b = encode(kvs, producer, transactional, self.now);
        match self.log.append(&mut b, E, self.now).unwrap() {
            AppendOutcome::Appended(i) => i.base_offset.0,
            AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
        }
    }

    fn txn(&mut self, pid: i64, kvs: &[Kv]) -> i64 {
        self.data(Some(pid), true, kvs)
    }

    fn plain(&mut self, k: &str, v: &str) -> i64 {
        self.data(None, false, &[(k, Some(v))])
    }

    /// Whether appends roll a new segment (each is 1 ms after the last) or stay in the active
    /// one.
    fn rolls(&mut self, on: bool) {
        self.c.segment_ms = if on { 1 } else { i64::MAX };
        self.log.set_config(self.c.clone());
    }

    /// Writes `pid`'s COMMIT or ABORT marker now; returns its offset.
    fn end(&mut self, pid: i64, commit: bool) -> i64 {
        self.now += 1;
        self.log
            .append_marker(marker(pid, 0, 0, commit), E, self.now)
            .unwrap()
            .base_offset
            .0
    }

    fn compact_at(&mut self, now: i64) -> CompactionOutcome {
        self.log.compact(now, CompactionLimits::default()).unwrap()
    }

    fn pass(&mut self, now: i64) -> CompactionStats {
        match self.compact_at(now) {
            CompactionOutcome::Compacted(s) => s,
            other => panic!("expected a pass, got {other:?}"),
        }
    }

    fn reopen(&mut self) {
        let fresh = disk();
        let old = std::mem::replace(
            &mut self.log,
            PartitionLog::open(Arc::new(fresh), Path::new(DIR), self.c.clone(), T0).unwrap(),
        );
        drop(old);
        self.log = PartitionLog::open(
            Arc::new(self.d.clone()),
            Path::new(DIR),
            self.c.clone(),
            self.now,
        )
        .unwrap();
    }

    /// A power cut, then an open of what the disk kept.
    fn crash_and_reopen(&mut self) {
        self.d.crash();
        self.reopen();
    }
}

fn decode(batch: &[u8]) -> Vec<Record> {
    RecordBatchDecoder::decode(&mut Bytes::copy_from_slice(batch))
        .unwrap()
        .records
}

fn rec(r: &Record) -> Rec {
    let s = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8(b.to_vec()).unwrap());
    Rec {
        offset: r.offset,
        key: s(&r.key).unwrap(),
        value: s(&r.value),
        pid: r.producer_id,
        transactional: r.transactional,
    }
}

/// Every data record in the log, in order (what a `read_uncommitted` consumer receives).
fn stored(log: &PartitionLog) -> Vec<Rec> {
    read_all(log)
        .iter()
        .filter(|b| !BatchHeader::parse(b).unwrap().is_control())
        .flat_map(|b| decode(b).iter().map(rec).collect::<Vec<_>>())
        .collect()
}

/// Every marker in the log: (offset, producer id, commit).
fn markers(log: &PartitionLog) -> Vec<(i64, i64, bool)> {
    read_all(log)
        .iter()
        .filter_map(|b| {
            let h = BatchHeader::parse(b).unwrap();
            match h.is_control().then(|| parse_control_batch(b, &h)) {
                Some(ControlRecord::Marker { commit, .. }) => {
                    Some((h.base_offset.0, h.producer_id.0, commit))
                }
                _ => None,
            }
        })
        .collect()
}

/// What a `read_committed` consumer fetching `[from, upper)` (below the last stable offset)
/// receives: the batches there, filtered with the aborted transactions the log lists for the
/// range as Kafka's consumer filters them (a producer's transactional batches are dropped from
/// its aborted transaction's first offset until its ABORT marker).
fn fetch_committed(log: &PartitionLog, from: i64, upper: i64) -> Vec<Rec> {
    let lso = log.last_stable_offset(log.log_end_offset()).0;
    let upper = upper.min(lso);
    let mut aborts = log
        .aborted_transactions(Offset(from), Offset(upper))
        .unwrap();
    aborts.sort_by_key(|a| a.first_offset);
    let mut aborts = aborts.into_iter().peekable();
    let mut aborting = BTreeSet::new();
    let mut out = Vec::new();
    for b in read_all(log) {
        let h = BatchHeader::parse(&b).unwrap();
        if h.last_offset().0 < from {
            continue;
        }
        if h.base_offset.0 >= upper {
            break;
        }
        while let Some(a) = aborts.next_if(|a| a.first_offset <= h.last_offset()) {
            aborting.insert(a.producer_id);
        }
        if h.is_control() {
            if let ControlRecord::Marker { commit: false, .. } = parse_control_batch(&b, &h) {
                aborting.remove(&h.producer_id);
            }
            continue;
        }
        if h.is_transactional() && aborting.contains(&h.producer_id) {
            continue;
        }
        out.extend(
            decode(&b)
                .iter()
                .map(rec)
                .filter(|r| r.offset >= from && r.offset < upper),
        );
    }
    out
}

fn read_committed(log: &PartitionLog) -> Vec<Rec> {
    fetch_committed(log, 0, i64::MAX)
}

fn all_aborted(log: &PartitionLog) -> Vec<AbortedTxn> {
    crate::txn_tests::all_aborted(log)
}

fn offsets(recs: &[Rec]) -> Vec<i64> {
    recs.iter().map(|r| r.offset).collect()
}

fn dir_names(d: &MemoryDisk) -> Vec<String> {
    d.read_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

fn no_leftovers(d: &MemoryDisk) {
    let names = dir_names(d);
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".cleaned") && !n.ends_with(".swap")),
        "{names:?}"
    );
}

#[test]
fn aborted_batches_go_and_committed_data_interleaved_with_them_stays() {
    let mut l = Log::new();
    l.txn(1, &[("a", Some("p1-aborted"))]); // 0
    l.txn(2, &[("b", Some("p2-committed"))]); // 1
    l.txn(1, &[("c", Some("p1-aborted")), ("d", Some("p1-aborted"))]); // 2-3
    l.txn(2, &[("e", Some("p2-committed"))]); // 4
    assert_eq!(l.end(1, false), 5);
    assert_eq!(l.end(2, true), 6);
    // Producer 1's last batch (kept whole for its idempotent state) is in a later transaction.
    l.txn(1, &[("f", Some("p1-committed"))]); // 7
    l.end(1, true); // 8
    l.plain("g", "plain"); // 9
    l.plain("h", "plain"); // 10
    l.plain("active", "x"); // 11
    let committed = read_committed(&l.log);
    assert_eq!(offsets(&committed), vec![1, 4, 7, 9, 10, 11]);
    let aborts = vec![aborted(1, 0, 5, 1)];
    assert_eq!(all_aborted(&l.log), aborts);

    tracing::info!("--- a pass removes both aborted batches and nothing else");
    let s = l.pass(l.now);
    assert_eq!(s.aborted_batches_removed, 2);
    assert_eq!(s.records_removed, 3);
    assert_eq!(s.markers_removed, 0, "young markers stay");
    assert_eq!(
        stored(&l.log),
        committed,
        "only aborted records were removed"
    );
    assert_eq!(read_committed(&l.log), committed);
    assert_eq!(
        markers(&l.log),
        vec![(5, 1, false), (6, 2, true), (8, 1, true)]
    );
    assert_eq!(
        all_aborted(&l.log),
        aborts,
        "the marker stays, so its entry does"
    );
    assert_eq!(l.log.log_end_offset(), Offset(12));

    tracing::info!("--- reopened: the same, and producer 1's retry is still a duplicate");
    l.reopen();
    assert_eq!(stored(&l.log), committed);
    assert_eq!(all_aborted(&l.log), aborts);
    assert_eq!(l.log.producer_state().open_transactions().count(), 0);
    let mut retry = encode(&[("f", Some("p1-committed"))], (1, 3), true, l.now);
    assert!(matches!(
        l.log.append(&mut retry, E, l.now),
        Ok(AppendOutcome::Duplicate(i)) if i.base_offset == Offset(7)
    ));
}

#[test]
fn an_aborted_record_never_removes_an_older_committed_value_of_its_key() {
    let mut l = Log::new();
    l.plain("k", "committed-plain"); // 0
    l.txn(3, &[("j", Some("committed-txn"))]); // 1
    l.end(3, true); // 2
    l.txn(3, &[("q", Some("q"))]); // 3: producer 3's last batch, so 1 is not kept for it
    l.end(3, true); // 4
    l.txn(1, &[("k", Some("aborted")), ("j", None)]); // 5-6: a value and a tombstone
    l.end(1, false); // 7
    l.txn(1, &[("other", Some("o"))]); // 8
    l.end(1, true); // 9
    let last = [("k", Some("aborted-last")), ("j", Some("aborted-last"))];
    l.txn(2, &last); // 10-11: producer 2's last batch: kept whole, never in the key map
    l.end(2, false); // 12
    l.plain("x", "x"); // 13
    l.plain("active", "x"); // 14
    let committed = read_committed(&l.log);
    assert_eq!(offsets(&committed), vec![0, 1, 3, 8, 13, 14]);

    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.aborted_batches_removed, 1);
    assert_eq!(s.records_removed, 2);
    assert_eq!(s.tombstones_removed, 0);
    assert_eq!(
        s.markers_removed, 1,
        "producer 1's ABORT: its data is gone, it is old"
    );
    assert_eq!(
        offsets(&stored(&l.log)),
        vec![0, 1, 3, 8, 10, 11, 13, 14],
        "producer 2's last batch stays whole"
    );
    assert_eq!(
        read_committed(&l.log),
        committed,
        "k and j keep their values"
    );
    assert_eq!(
        all_aborted(&l.log),
        vec![aborted(2, 10, 12, 13)],
        "producer 1's entry went with its marker; producer 2's data remains, so its entry does"
    );
    assert_eq!(
        markers(&l.log),
        vec![(2, 3, true), (4, 3, true), (9, 1, true), (12, 2, false)]
    );

    tracing::info!("--- another pass, and a reopen: the committed values are still there");
    l.plain("y", "y"); // 15
    l.pass(l.now + 2 * HOUR);
    l.reopen();
    let got = read_committed(&l.log);
    assert_eq!(offsets(&got), vec![0, 1, 3, 8, 13, 14, 15]);
    let value = |k: &str| got.iter().find(|r| r.key == k).unwrap().value.clone();
    assert_eq!(value("k").as_deref(), Some("committed-plain"));
    assert_eq!(value("j").as_deref(), Some("committed-txn"));
}

#[test]
fn committed_transactional_records_compact_like_any_other() {
    let mut l = Log::new();
    l.txn(1, &[("k", Some("t1")), ("x", Some("t1"))]); // 0-1
    l.end(1, true); // 2
    l.txn(1, &[("k", Some("t2")), ("z", Some("t2"))]); // 3-4
    l.end(1, true); // 5
    l.plain("z", "plain"); // 6
    l.txn(1, &[("y", Some("t3"))]); // 7
    l.end(1, true); // 8
    l.plain("p", "p"); // 9
    l.plain("active", "a"); // 10
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.records_removed, 2, "k@0 and z@4 are superseded");
    assert_eq!(s.batches_rewritten, 2);
    assert_eq!(s.aborted_batches_removed, 0);
    assert_eq!(
        s.markers_removed, 0,
        "old, but part of each transaction's data remains"
    );
    assert_eq!(
        markers(&l.log),
        vec![(2, 1, true), (5, 1, true), (8, 1, true)]
    );
    let got = stored(&l.log);
    assert_eq!(offsets(&got), vec![1, 3, 6, 7, 9, 10]);
    assert_eq!(got[1].value.as_deref(), Some("t2"));
    tracing::info!("--- the rewritten batches stay transactional batches of producer 1");
    for b in read_all(&l.log) {
        let h = BatchHeader::parse(&b).unwrap();
        if h.base_offset == Offset(1) || h.base_offset == Offset(3) {
            assert!(h.is_transactional() && !h.is_control(), "{h:?}");
            assert_eq!(h.producer_id, ProducerId(1));
            assert_eq!(h.records_count, 1);
        }
    }
    assert_eq!(read_committed(&l.log), got);

    tracing::info!("--- a later committed value supersedes a transactional one in the next pass");
    l.txn(1, &[("x", Some("t4"))]); // 11
    l.end(1, true); // 12
    l.plain("q", "q"); // 13
    l.plain("active2", "a"); // 14
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!((s.records_removed, s.markers_removed), (1, 1), "{s:?}");
    let got = stored(&l.log);
    assert_eq!(
        offsets(&got),
        vec![3, 6, 7, 9, 10, 11, 13, 14],
        "x@1 superseded"
    );
    assert_eq!(
        markers(&l.log),
        vec![(5, 1, true), (8, 1, true), (12, 1, true)],
        "the first transaction has no data left: its COMMIT goes"
    );
    l.reopen();
    assert_eq!(stored(&l.log), got);
}

#[test]
fn a_marker_stays_while_its_data_remains_or_it_is_young_then_goes() {
    let mut l = Log::new();
    l.txn(1, &[("k", Some("v1"))]); // 0
    l.end(1, true); // 1: a COMMIT whose data will be superseded
    l.txn(2, &[("a", Some("aborted"))]); // 2
    l.end(2, false); // 3: an ABORT whose data goes in the first pass
    l.txn(2, &[("b", Some("kept"))]); // 4
    l.end(2, true); // 5: a COMMIT whose data stays
    l.plain("k", "v2"); // 6
    l.txn(1, &[("c", Some("kept"))]); // 7
    l.end(1, true); // 8
    l.plain("p", "p"); // 9
    l.plain("active", "a"); // 10

    tracing::info!("--- first pass, every marker younger than delete.retention.ms: all stay");
    let s = l.pass(l.now + HOUR - 100);
    assert_eq!((s.aborted_batches_removed, s.markers_removed), (1, 0));
    assert_eq!(s.batches_dropped, 1, "k@0");
    assert_eq!(offsets(&stored(&l.log)), vec![4, 6, 7, 9, 10]);
    assert_eq!(
        markers(&l.log),
        vec![(1, 1, true), (3, 2, false), (5, 2, true), (8, 1, true)]
    );
    assert_eq!(all_aborted(&l.log), vec![aborted(2, 2, 3, 4)]);

    tracing::info!("--- an hour later, a marker without any transaction (a coordinator retry)");
    l.now += HOUR;
    let young = l.end(4, true); // 11
    l.plain("q", "q"); // 12
    l.plain("active2", "a"); // 13
    tracing::info!("--- past delete.retention.ms for the first markers, not for the retry");
    let s = l.pass(l.now + 200);
    assert_eq!(s.markers_removed, 2, "{s:?}");
    assert_eq!(
        markers(&l.log),
        vec![(5, 2, true), (8, 1, true), (young, 4, true)],
        "data remains behind 5 and 8; the retry is young"
    );
    assert_eq!(
        all_aborted(&l.log),
        vec![],
        "the entry went with its marker"
    );
    assert!(
        txn_indexes(&l.d).values().all(|b| b.is_empty()),
        "{:?}",
        txn_indexes(&l.d)
    );
    assert_eq!(
        offsets(&read_committed(&l.log)),
        vec![4, 6, 7, 9, 10, 12, 13]
    );

    tracing::info!("--- later still the retry goes too; after a power cut nothing is open");
    l.plain("r", "r");
    l.plain("active3", "a");
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.markers_removed, 1);
    assert_eq!(markers(&l.log), vec![(5, 2, true), (8, 1, true)]);
    l.log.flush().unwrap();
    l.crash_and_reopen();
    assert_eq!(markers(&l.log), vec![(5, 2, true), (8, 1, true)]);
    assert_eq!(l.log.producer_state().open_transactions().count(), 0);
    let end = l.log.log_end_offset();
    assert_eq!(l.log.last_stable_offset(end), end);
}

#[test]
fn a_marker_that_recovery_from_a_snapshot_would_replay_is_kept() {
    let mut l = Log::new();
    l.txn(1, &[("a", Some("aborted"))]); // 0
    l.end(1, false); // 1: rolls; the snapshot at 1 holds the transaction open
    l.rolls(false);
    l.data(Some(1), false, &[("b", Some("idempotent"))]); // 2: producer 1's last batch
    l.rolls(true);
    l.plain("active", "a"); // 3: a snapshot at 3; the two kept are at 1 and 3
    let snapshot = |o: i64| Path::new(DIR).join(format!("{o:020}.snapshot"));
    assert!(l.d.file_len(&snapshot(1)).is_ok());

    tracing::info!("--- the data goes; the old marker stays: recovery from 1 would replay it");
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!((s.aborted_batches_removed, s.markers_removed), (1, 0));
    assert_eq!(markers(&l.log), vec![(1, 1, false)]);
    assert_eq!(offsets(&stored(&l.log)), vec![2, 3]);
    assert_eq!(all_aborted(&l.log), vec![aborted(1, 0, 1, 2)]);

    tracing::info!("--- the newest snapshot rots: recovery replays from 1 and meets the marker");
    l.d.corrupt(&snapshot(3), 20, 0x55).unwrap();
    l.reopen();
    assert_eq!(l.log.producer_state().open_transactions().count(), 0);
    let end = l.log.log_end_offset();
    assert_eq!(l.log.last_stable_offset(end), end);

    tracing::info!("--- once every snapshot is past it, the marker goes");
    l.plain("p", "p");
    l.plain("q", "q");
    l.plain("active2", "a");
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.markers_removed, 1, "{s:?}");
    assert_eq!(markers(&l.log), vec![]);
    assert_eq!(all_aborted(&l.log), vec![]);
    l.crash_and_reopen();
    assert_eq!(l.log.producer_state().open_transactions().count(), 0);
}

#[test]
fn an_open_transaction_past_the_last_stable_offset_is_untouched() {
    let mut l = Log::new();
    l.plain("k", "v0"); // 0
    l.txn(1, &[("k", Some("open-1"))]); // 1: opens producer 1's transaction
    l.plain("k", "v2"); // 2
    l.txn(1, &[("k", Some("open-3"))]); // 3
    l.plain("active", "a"); // 4
    let lso = l.log.last_stable_offset(l.log.log_end_offset());
    assert_eq!(lso, Offset(1));
    let after_lso = |log: &PartitionLog| -> Vec<Vec<u8>> {
        read_all(log)
            .into_iter()
            .filter(|b| BatchHeader::parse(b).unwrap().base_offset >= Offset(1))
            .collect()
    };
    let before = after_lso(&l.log);
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.cleaned_up_to, Offset(1), "{s:?}");
    assert_eq!(
        s.records_removed, 0,
        "k@0 is not superseded by anything cleanable"
    );
    assert_eq!(after_lso(&l.log), before, "byte for byte");
    assert_eq!(
        l.log
            .producer_state()
            .open_transactions()
            .collect::<Vec<_>>(),
        vec![(Offset(1), ProducerId(1))]
    );

    tracing::info!("--- aborted: the first batch goes, the last one (producer 1's last) stays");
    l.end(1, false); // 5
    l.plain("x", "x"); // 6
    l.plain("active2", "a"); // 7
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(s.aborted_batches_removed, 1);
    let got = stored(&l.log);
    assert_eq!(offsets(&got), vec![2, 3, 4, 6, 7]);
    assert_eq!(
        read_committed(&l.log)
            .iter()
            .filter(|r| r.key == "k")
            .map(|r| r.value.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["v2"],
        "v0 superseded by v2; the aborted values hidden"
    );
}

#[test]
fn an_abort_whose_marker_is_in_the_active_segment_is_known_to_the_pass() {
    let mut l = Log::new();
    l.plain("k", "old"); // 0
    l.txn(1, &[("k", Some("aborted"))]); // 1
    l.txn(1, &[("z", Some("aborted-last"))]); // 2: producer 1's last batch
    l.end(1, false); // 3: rolls; the active segment holds the marker
    let planned = match l
        .log
        .plan_compaction(l.now, l.log.log_end_offset(), CompactionLimits::default())
        .unwrap()
    {
        PlannedCompaction::Plan(p) => p,
        PlannedCompaction::Skip(r) => panic!("{r:?}"),
    };
    assert_eq!(planned.aborted_after, vec![aborted(1, 1, 3, 4)]);
    drop(planned);
    let s = l.pass(l.now);
    assert_eq!(s.aborted_batches_removed, 1);
    assert_eq!(s.cleaned_up_to, Offset(3));
    let got = stored(&l.log);
    assert_eq!(offsets(&got), vec![0, 2]);
    assert_eq!(
        got[0].value.as_deref(),
        Some("old"),
        "k@1 never entered the key map"
    );
    assert_eq!(offsets(&read_committed(&l.log)), vec![0]);
    assert_eq!(all_aborted(&l.log), vec![aborted(1, 1, 3, 4)]);
}

#[test]
fn read_committed_fetches_are_the_same_after_a_pass_and_after_a_reopen() {
    let mut l = Log::new();
    // Interleaved transactions of two producers with plain data between them; some keys
    // repeat so that a pass also removes superseded records.
    l.txn(1, &[("a", Some("1")), ("b", Some("1"))]); // 0-1
    l.txn(2, &[("c", Some("2"))]); // 2
    l.plain("d", "plain"); // 3
    l.txn(1, &[("e", Some("1"))]); // 4
    l.end(2, false); // 5
    l.txn(2, &[("a", Some("2"))]); // 6
    l.end(1, true); // 7
    l.txn(1, &[("c", Some("1"))]); // 8
    l.end(2, true); // 9
    l.end(1, false); // 10
    l.txn(1, &[("f", Some("1"))]); // 11
    l.end(1, true); // 12
    l.txn(2, &[("g", Some("2"))]); // 13
    l.end(2, true); // 14
    l.plain("p", "p"); // 15
    l.plain("active", "a"); // 16
    let end = l.log.log_end_offset().0;
    let before: BTreeMap<(i64, i64), Vec<Rec>> = (0..end)
        .flat_map(|from| (from..=end).map(move |upper| (from, upper)))
        .map(|(f, u)| ((f, u), fetch_committed(&l.log, f, u)))
        .collect();
    let check = |log: &PartitionLog, what: &str| {
        for ((from, upper), want) in &before {
            let got = fetch_committed(log, *from, *upper);
            // Compaction only removes records; what is left is what was there.
            let want: Vec<Rec> = want
                .iter()
                .filter(|r| stored(log).contains(r))
                .cloned()
                .collect();
            assert_eq!(got, want, "{what}: fetch [{from}, {upper})");
        }
    };
    let s = l.pass(l.now);
    assert_eq!(s.aborted_batches_removed, 2, "{s:?}");
    assert!(s.records_removed > 2, "a@0 is superseded by a@6: {s:?}");
    check(&l.log, "after the pass");
    let kept = read_committed(&l.log);
    assert_eq!(offsets(&kept), vec![1, 3, 4, 6, 11, 13, 15, 16]);
    let aborts = all_aborted(&l.log);
    assert_eq!(aborts, vec![aborted(2, 2, 5, 0), aborted(1, 8, 10, 11)]);
    l.reopen();
    check(&l.log, "after a reopen");
    assert_eq!(all_aborted(&l.log), aborts);
    l.crash_and_reopen();
    check(&l.log, "after a power cut");
    assert_eq!(all_aborted(&l.log), aborts);
    no_leftovers(&l.d);
}

/// Where a power cut interrupts a pass's commit.
#[derive(Clone, Copy, Debug)]
enum CutAt {
    /// After phase 2: the cleaned files exist, nothing is renamed.
    BeforeCommit,
    /// Renaming the cleaned log to its swap name fails (before the commit point).
    SwapRename,
    /// The directory fsync of the commit point fails.
    CommitPoint,
    /// Renaming the transaction index swap into place fails (after the commit point).
    TxnIndexRename,
    /// Renaming the log swap into place fails (the last rename).
    LogRename,
    /// The commit returned; the checkpoint (and the fsync making the renames durable) never ran.
    BeforePersist,
}

fn cleaned_name(d: &MemoryDisk, suffix: &str) -> PathBuf {
    let name = dir_names(d)
        .into_iter()
        .find(|n| n.ends_with(suffix))
        .unwrap();
    Path::new(DIR).join(name)
}

#[test]
fn a_power_cut_at_every_point_of_the_swap_leaves_the_old_or_the_new_log() {
    for cut in [
        CutAt::BeforeCommit,
        CutAt::SwapRename,
        CutAt::CommitPoint,
        CutAt::TxnIndexRename,
        CutAt::LogRename,
        CutAt::BeforePersist,
    ] {
        let mut l = Log::new();
        l.txn(1, &[("a", Some("aborted"))]); // 0
        l.txn(2, &[("b", Some("committed"))]); // 1
        l.end(1, false); // 2
        l.txn(1, &[("c", Some("committed"))]); // 3
        l.end(1, true); // 4
        l.txn(3, &[("d", Some("aborted"))]); // 5
        l.end(3, false); // 6
        l.txn(3, &[("e", Some("committed"))]); // 7
        l.end(3, true); // 8
        l.end(2, true); // 9
        l.plain("p", "p"); // 10
        l.plain("active", "a"); // 11
        l.log.flush().unwrap();
        let committed = read_committed(&l.log);
        let old_stored = stored(&l.log);
        let old_aborts = all_aborted(&l.log);
        assert_eq!(old_aborts, vec![aborted(1, 0, 2, 1), aborted(3, 5, 6, 1)]);
        let now = l.now + 2 * HOUR;
        let PlannedCompaction::Plan(plan) = l
            .log
            .plan_compaction(now, l.log.log_end_offset(), CompactionLimits::default())
            .unwrap()
        else {
            panic!("nothing to compact")
        };
        let prepared = plan.execute().unwrap();
        let fault = |under: PathBuf, op| DiskFault {
            op,
            under,
            error: DiskError::Io,
            times: Some(1),
        };
        let new_log = match cut {
            CutAt::BeforeCommit => {
                std::mem::forget(prepared);
                false
            }
            CutAt::SwapRename => {
                l.d.inject(fault(cleaned_name(&l.d, ".log.cleaned"), DiskOp::Metadata));
                assert!(l.log.commit_compaction(prepared).is_err());
                false
            }
            CutAt::CommitPoint => {
                l.d.inject(fault(PathBuf::from(DIR), DiskOp::Sync));
                assert!(l.log.commit_compaction(prepared).is_err());
                false
            }
            CutAt::TxnIndexRename | CutAt::LogRename => {
                let cleaned = cleaned_name(&l.d, ".log.cleaned");
                let stem = cleaned
                    .to_str()
                    .unwrap()
                    .strip_suffix(".log.cleaned")
                    .unwrap();
                let swap = match cut {
                    CutAt::TxnIndexRename => format!("{stem}.txnindex.swap"),
                    _ => format!("{stem}.log.swap"),
                };
                l.d.inject(fault(PathBuf::from(swap), DiskOp::Metadata));
                assert!(l.log.commit_compaction(prepared).is_err());
                true
            }
            CutAt::BeforePersist => {
                let commit = l.log.commit_compaction(prepared).unwrap();
                assert!(matches!(commit.outcome(), CompactionOutcome::Compacted(_)));
                std::mem::forget(commit);
                true
            }
        };
        l.d.clear_faults();
        l.crash_and_reopen();
        no_leftovers(&l.d);
        assert_eq!(read_committed(&l.log), committed, "{cut:?}");
        if new_log {
            assert_eq!(
                offsets(&stored(&l.log)),
                vec![1, 3, 7, 10, 11],
                "{cut:?}: aborted data gone"
            );
            assert_eq!(
                markers(&l.log),
                vec![(4, 1, true), (8, 3, true), (9, 2, true)],
                "{cut:?}: the ABORT markers went with their data"
            );
            assert_eq!(all_aborted(&l.log), vec![], "{cut:?}");
        } else {
            assert_eq!(stored(&l.log), old_stored, "{cut:?}");
            assert_eq!(all_aborted(&l.log), old_aborts, "{cut:?}");
        }
        assert_eq!(l.log.producer_state().open_transactions().count(), 0);
        tracing::info!("--- {cut:?}: the next pass finishes the job");
        l.plain("q", "q");
        l.plain("active2", "a");
        l.pass(l.now + 2 * HOUR);
        assert_eq!(all_aborted(&l.log), vec![], "{cut:?}");
        assert!(markers(&l.log).iter().all(|m| m.2), "{cut:?}");
        assert!(txn_indexes(&l.d).values().all(|b| b.is_empty()), "{cut:?}");
    }
}

#[test]
fn a_segment_with_too_many_aborts_keeps_its_transactions_whole() {
    let mut l = Log::new();
    l.rolls(false);
    l.plain("k", "old"); // 0
    l.txn(1, &[("k", Some("aborted"))]); // 1
    l.txn(2, &[("k", Some("aborted"))]); // 2
    l.end(1, false); // 3
    l.end(2, false); // 4
    l.txn(1, &[("x", Some("x"))]); // 5
    l.txn(2, &[("y", Some("y"))]); // 6
    l.end(1, true); // 7
    l.end(2, true); // 8
    l.rolls(true);
    l.plain("p", "p"); // 9
    l.plain("q", "q"); // 10
    l.plain("active", "a"); // 11
    let before = stored(&l.log);
    let committed = read_committed(&l.log);
    assert_eq!(offsets(&committed), vec![0, 5, 6, 9, 10, 11]);
    let aborts = all_aborted(&l.log);
    assert_eq!(aborts.len(), 2);

    tracing::info!("--- two aborts in one segment, room for one: the segment keeps them whole");
    let limits = CompactionLimits {
        txn_entries_max: 1,
        ..CompactionLimits::default()
    };
    let s = match l.log.compact(l.now + 2 * HOUR, limits).unwrap() {
        CompactionOutcome::Compacted(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (s.aborted_batches_removed, s.markers_removed),
        (0, 0),
        "{s:?}"
    );
    assert_eq!(stored(&l.log), before);
    assert_eq!(read_committed(&l.log), committed);
    assert_eq!(all_aborted(&l.log), aborts, "its index is copied whole");

    tracing::info!("--- with room for both, the next pass removes them and their markers");
    l.plain("r", "r");
    let s = l.pass(l.now + 2 * HOUR);
    assert_eq!(
        (s.aborted_batches_removed, s.markers_removed),
        (2, 2),
        "{s:?}"
    );
    assert_eq!(offsets(&stored(&l.log)), vec![0, 5, 6, 9, 10, 11, 12]);
    assert_eq!(
        stored(&l.log)[0].value.as_deref(),
        Some("old"),
        "no aborted k ever superseded it"
    );
    assert_eq!(all_aborted(&l.log), vec![]);
}

// ---- property test ----

#[derive(Clone, Debug)]
enum Op {
    /// A transactional batch of producer `pid` with these keys (0..4).
    Txn {
        pid: i64,
        keys: Vec<u8>,
    },
    Plain {
        key: u8,
    },
    /// `pid`'s COMMIT or ABORT marker (written whether or not it has a transaction open).
    End {
        pid: i64,
        commit: bool,
    },
    /// A pass now, or two hours (past `delete.retention.ms`) later.
    Compact {
        late: bool,
    },
    /// Whether appends roll segments.
    Rolls {
        on: bool,
    },
    Reopen,
    /// A flush, then a power cut.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0i64..3, prop::collection::vec(0u8..4, 1..3))
            .prop_map(|(pid, keys)| Op::Txn { pid, keys }),
        3 => (0u8..4).prop_map(|key| Op::Plain { key }),
        4 => (0i64..3, prop::bool::weighted(0.6)).prop_map(|(pid, commit)| Op::End { pid, commit }),
        3 => prop::bool::ANY.prop_map(|late| Op::Compact { late }),
        1 => prop::bool::weighted(0.7).prop_map(|on| Op::Rolls { on }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Open,
    Committed,
    Aborted,
}

/// A transaction as appended: producer, first offset, marker offset, outcome.
#[derive(Clone, Debug)]
struct ModelTxn {
    pid: i64,
    first: i64,
    marker: Option<i64>,
    outcome: Outcome,
}

/// Every record as appended (offset to key, value, transaction index or `None` if plain) and
/// every transaction.
#[derive(Default)]
struct Model {
    records: BTreeMap<i64, (String, String, Option<usize>)>,
    txns: Vec<ModelTxn>,
    open: BTreeMap<i64, usize>,
}

impl Model {
    fn visible(&self, offset: i64) -> bool {
        match self.records[&offset].2 {
            None => true,
            Some(t) => self.txns[t].outcome == Outcome::Committed,
        }
    }
}

/// Checks the log against the model (see the property test).
fn check(log: &PartitionLog, m: &Model) -> Result<(), TestCaseError> {
    let got = stored(log);
    let lso = log.last_stable_offset(log.log_end_offset()).0;
    for r in &got {
        let (k, v, _) = &m.records[&r.offset];
        prop_assert_eq!(
            (&r.key, r.value.as_ref()),
            (k, Some(v)),
            "record {}",
            r.offset
        );
    }
    let present: BTreeSet<i64> = offsets(&got).into_iter().collect();
    // The latest visible record of every key, and every record of an open transaction, stay.
    let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
    for (o, (k, _, t)) in &m.records {
        if m.visible(*o) {
            latest.insert(k, *o);
        }
        if t.is_some_and(|t| m.txns[t].outcome == Outcome::Open) {
            prop_assert!(present.contains(o), "open transaction's record {} lost", o);
        }
    }
    for (k, o) in &latest {
        prop_assert!(present.contains(o), "latest {} of {} lost", o, k);
    }
    // A read_committed consumer gets exactly the committed and plain records left.
    let want: Vec<i64> = got
        .iter()
        .map(|r| r.offset)
        .filter(|o| *o < lso && m.visible(*o))
        .collect();
    prop_assert_eq!(offsets(&read_committed(log)), want);
    // Open transactions are what was appended.
    let open: Vec<(Offset, ProducerId)> = log.producer_state().open_transactions().collect();
    let mut want_open: Vec<(Offset, ProducerId)> = m
        .open
        .values()
        .map(|t| (Offset(m.txns[*t].first), ProducerId(m.txns[*t].pid)))
        .collect();
    want_open.sort();
    prop_assert_eq!(open, want_open);
    // Index entries: of aborted transactions, as written; one for each with data left; and a
    // transaction with data left keeps its marker.
    let aborts = all_aborted(log);
    let marks: BTreeSet<i64> = markers(log).iter().map(|m| m.0).collect();
    for a in &aborts {
        let t = m.txns.iter().find(|t| t.marker == Some(a.last_offset.0));
        prop_assert!(
            t.is_some_and(|t| t.outcome == Outcome::Aborted
                && t.pid == a.producer_id.0
                && t.first == a.first_offset.0),
            "entry {:?}",
            a
        );
    }
    for (i, t) in m.txns.iter().enumerate() {
        let has_data = m
            .records
            .iter()
            .any(|(o, (_, _, tx))| *tx == Some(i) && present.contains(o));
        if let (true, Some(marker)) = (has_data, t.marker) {
            prop_assert!(marks.contains(&marker), "marker {} of {:?} lost", marker, t);
            if t.outcome == Outcome::Aborted {
                prop_assert!(
                    aborts.iter().any(|a| a.last_offset.0 == marker),
                    "entry of {:?} lost",
                    t
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random transactional and plain appends, markers, passes (some past
    /// `delete.retention.ms`, with a small or the default transaction limit, over one or
    /// several cleaned groups), rolls, reopens and power cuts: every record left is the one appended at its offset; the latest
    /// committed or plain record of every key and every record of an open transaction stay;
    /// a `read_committed` consumer gets exactly the committed and plain records left; the open
    /// transactions are the ones appended; every index entry is an aborted transaction as
    /// appended, and a transaction with data left keeps its marker and, if aborted, its entry.
    #[test]
    fn passes_keep_what_read_committed_consumers_see(
        ops in prop::collection::vec(op(), 1..50),
        txn_entries_max in prop::sample::select(vec![1usize, 2, TXN_ENTRIES_MAX]),
        segment_bytes in prop::sample::select(vec![400u64, 1 << 30]),
    ) {
        // Small segments also split a pass into several cleaned groups.
        let mut l = Log::with(LogConfig { segment_bytes, ..cfg() });
        let mut m = Model::default();
        let limits = CompactionLimits { txn_entries_max, ..CompactionLimits::default() };
        for op in ops {
            match op {
                Op::Txn { pid, keys } => {
                    let owned: Vec<(String, String)> = keys
                        .iter()
                        .enumerate()
                        .map(|(i, k)| {
                            (format!("k{k}"), format!("{}", l.log.log_end_offset().0 + i as i64))
                        })
                        .collect();
                    let kvs: Vec<Kv> =
                        owned.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))).collect();
                    let base = l.txn(pid, &kvs);
                    let t = *m.open.entry(pid).or_insert_with(|| {
                        let outcome = Outcome::Open;
                        m.txns.push(ModelTxn { pid, first: base, marker: None, outcome });
                        m.txns.len() - 1
                    });
                    for (i, (k, v)) in owned.into_iter().enumerate() {
                        m.records.insert(base + i as i64, (k, v, Some(t)));
                    }
                }
                Op::Plain { key } => {
                    let v = format!("{}", l.log.log_end_offset().0);
                    let o = l.plain(&format!("k{key}"), &v);
                    m.records.insert(o, (format!("k{key}"), v, None));
                }
                Op::End { pid, commit } => {
                    let o = l.end(pid, commit);
                    if let Some(t) = m.open.remove(&pid) {
                        m.txns[t].marker = Some(o);
                        m.txns[t].outcome =
                            if commit { Outcome::Committed } else { Outcome::Aborted };
                    }
                }
                Op::Compact { late } => {
                    let now = l.now + if late { 2 * HOUR } else { 0 };
                    let outcome = l.log.compact(now, limits).unwrap();
                    prop_assert!(!matches!(outcome, CompactionOutcome::Aborted));
                }
                Op::Rolls { on } => l.rolls(on),
                Op::Reopen => l.reopen(),
                Op::Crash => {
                    l.log.flush().unwrap();
                    l.crash_and_reopen();
                    no_leftovers(&l.d);
                }
            }
            check(&l.log, &m)?;
        }
    }
}
