//! Compaction tests: each edge case as phases, then a property test of random keyed appends,
//! rolls and passes against a model of the log.
#![allow(clippy::unwrap_used)]

use crate::batch::BatchHeader;
use crate::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use spate_types::{LeaderEpoch, Offset, ProducerId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The operating system's disk: these tests inspect and damage the files with `std::fs`.
fn os() -> Arc<dyn spate_types::Disk> {
    Arc::new(spate_types::OsDisk)
}

const E: LeaderEpoch = LeaderEpoch(3);
const HOUR: i64 = 3_600_000;
const T0: i64 = 1_700_000_000_000;

/// `(key, value)`; `None` value is a tombstone.
pub(crate) type Kv<'a> = (Option<&'a str>, Option<&'a str>);

/// A compacted topic whose every append goes to a new segment once the previous one holds
/// anything (segment.ms = 1 ms and each append happens 1 ms later), cleaned at any dirty ratio.
fn compact_cfg() -> LogConfig {
    LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: HOUR,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

fn batch(kvs: &[Kv], ts: i64, producer: (i64, i16, i32), compression: Compression) -> Vec<u8> {
    encode_batch(kvs, ts, producer, compression, false)
}

/// One batch of `kvs` from `producer` (id, epoch, base sequence; id -1 for none), record `i`
/// stamped `ts + i`.
pub(crate) fn encode_batch(
    kvs: &[Kv],
    ts: i64,
    producer: (i64, i16, i32),
    compression: Compression,
    transactional: bool,
) -> Vec<u8> {
    let records: Vec<Record> = kvs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
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
            timestamp: ts + i as i64,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.to_vec()
}

fn plain(kvs: &[Kv], ts: i64) -> Vec<u8> {
    batch(kvs, ts, (-1, -1, -1), Compression::None)
}

struct Log {
    log: PartitionLog,
    dir: tempfile::TempDir,
    c: LogConfig,
    /// The clock appends run at; each append advances it by 1 ms, so it rolls.
    now: i64,
}

impl Log {
    fn new(c: LogConfig) -> Log {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(os(), dir.path(), c.clone(), T0).unwrap();
        Log {
            log,
            dir,
            c,
            now: T0,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Appends `set` as one record set (one segment) and returns its base offset.
    fn append(&mut self, set: Vec<u8>) -> Offset {
        self.now += 1;
        let mut set = set;
        match self.log.append(&mut set, E, self.now).unwrap() {
            AppendOutcome::Appended(i) => i.base_offset,
            AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
        }
    }

    fn compact(&mut self, now: i64) -> CompactionOutcome {
        self.log.compact(now, CompactionLimits::default()).unwrap()
    }

    fn reopen(&mut self) {
        let c = self.c.clone();
        // Drop first so that no handle of the old log outlives the reopen.
        let dummy = tempfile::tempdir().unwrap();
        let old = std::mem::replace(
            &mut self.log,
            PartitionLog::open(os(), dummy.path(), c.clone(), T0).unwrap(),
        );
        drop(old);
        self.log = PartitionLog::open(os(), self.dir.path(), c, self.now).unwrap();
    }
}

fn stats(o: CompactionOutcome) -> CompactionStats {
    match o {
        CompactionOutcome::Compacted(s) => s,
        other => panic!("expected a compaction, got {other:?}"),
    }
}

/// Every record in the log: (offset, key, value), read batch by batch from the log start.
fn records(log: &PartitionLog) -> Vec<(i64, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    for b in batches(log) {
        let set = RecordBatchDecoder::decode(&mut Bytes::from(b)).unwrap();
        for r in set.records {
            let s = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
            out.push((r.offset, s(r.key), s(r.value)));
        }
    }
    out
}

fn batches(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    loop {
        let plan = log
            .plan_read(next, 1 << 20, log.log_end_offset(), true)
            .unwrap();
        if plan.is_empty() {
            break;
        }
        let bytes = plan.load().unwrap();
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let h = BatchHeader::parse(rest).unwrap();
            next = h.next_offset();
            out.push(rest[..h.total_bytes()].to_vec());
            rest = &rest[h.total_bytes()..];
        }
    }
    out
}

fn kv(o: i64, k: &str, v: Option<&str>) -> (i64, Option<String>, Option<String>) {
    (o, Some(k.into()), v.map(Into::into))
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

/// The first record at or after `from` that a fetch from `from` returns.
fn first_fetched(log: &PartitionLog, from: i64) -> Option<i64> {
    let plan = log
        .plan_read(Offset(from), 1, log.log_end_offset(), true)
        .unwrap();
    if plan.is_empty() {
        return None;
    }
    let set = RecordBatchDecoder::decode(&mut plan.load().unwrap()).unwrap();
    set.records.iter().map(|r| r.offset).find(|o| *o >= from)
}

#[test]
fn latest_value_per_key_survives_at_its_original_offset() {
    let mut l = Log::new(compact_cfg());
    for (k, v) in [
        ("k1", "a"),
        ("k2", "b"),
        ("k1", "c"),
        ("k3", "d"),
        ("k2", "e"),
    ] {
        l.append(plain(&[(Some(k), Some(v))], T0));
    }
    // Active segment: never cleaned, and its records do not supersede older ones.
    l.append(plain(&[(Some("k1"), Some("f"))], T0));
    let s = stats(l.compact(T0));
    assert_eq!(s.records_removed, 2);
    assert_eq!(s.cleaned_up_to, Offset(5));
    let want = vec![
        kv(2, "k1", Some("c")),
        kv(3, "k3", Some("d")),
        kv(4, "k2", Some("e")),
        kv(5, "k1", Some("f")),
    ];
    assert_eq!(records(&l.log), want);
    assert_eq!(l.log.log_start_offset(), Offset(0));
    assert_eq!(l.log.log_end_offset(), Offset(6));
    // A fetch from any offset, including removed ones, starts at the next survivor.
    let survivors = [2, 3, 4, 5];
    for from in 0..6 {
        let next = survivors.iter().copied().find(|o| *o >= from);
        assert_eq!(first_fetched(&l.log, from), next, "fetch from {from}");
    }
    assert_eq!(
        l.compact(T0),
        CompactionOutcome::Skipped(SkipReason::NothingDirty)
    );
    // Appends continue at the same log end, after reopen too.
    l.reopen();
    assert_eq!(records(&l.log), want);
    assert_eq!(l.append(plain(&[(Some("k9"), Some("z"))], T0)), Offset(6));
}

#[test]
fn partly_cleaned_batches_keep_offsets_and_producer_fields_for_every_codec() {
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        for producer in [(-1i64, -1i16, -1i32), (7, 2, 0)] {
            let mut l = Log::new(compact_cfg());
            let kvs = [
                (Some("a"), Some("1")),
                (Some("b"), Some("2")),
                (Some("c"), Some("3")),
                (Some("a"), Some("4")),
            ];
            l.append(batch(&kvs, T0, producer, compression));
            let next = if producer.0 >= 0 { (7, 2, 4) } else { producer };
            l.append(batch(
                &[(Some("a"), Some("5"))],
                T0 + 100,
                next,
                compression,
            ));
            l.append(plain(&[(Some("x"), Some("active"))], T0));
            let before: Vec<BatchHeader> = batches(&l.log)
                .iter()
                .map(|b| BatchHeader::parse(b).unwrap())
                .collect();
            let s = stats(l.compact(T0));
            assert_eq!(s.records_removed, 2, "{compression:?} {producer:?}");
            assert_eq!(s.batches_rewritten, 1);
            assert_eq!(
                records(&l.log),
                vec![
                    kv(1, "b", Some("2")),
                    kv(2, "c", Some("3")),
                    kv(4, "a", Some("5")),
                    kv(5, "x", Some("active")),
                ],
                "{compression:?} {producer:?}"
            );
            let after: Vec<Vec<u8>> = batches(&l.log);
            let h = BatchHeader::parse(&after[0]).unwrap();
            let o = before[0];
            assert_eq!(
                h.base_offset,
                Offset(1),
                "base offset is the first survivor's"
            );
            assert_eq!(h.last_offset(), Offset(2));
            assert_eq!(h.records_count, 2);
            assert_eq!(h.compression(), o.compression());
            assert_eq!(h.partition_leader_epoch, E);
            assert_eq!(
                (h.producer_id, h.producer_epoch),
                (o.producer_id, o.producer_epoch)
            );
            let want_seq = if producer.0 >= 0 { 1 } else { -1 };
            assert_eq!(h.base_sequence, want_seq, "{compression:?} {producer:?}");
            assert_eq!(h.is_log_append_time(), o.is_log_append_time());
            assert_eq!((h.base_timestamp, h.max_timestamp), (T0 + 1, T0 + 2));
            // The other batches are byte for byte what was appended.
            assert_eq!(BatchHeader::parse(&after[1]).unwrap(), before[1]);
            assert_eq!(BatchHeader::parse(&after[2]).unwrap(), before[2]);
            l.reopen();
            assert_eq!(records(&l.log).len(), 4);
        }
    }
}

#[test]
fn tombstones_are_kept_until_delete_retention_ms_then_removed() {
    let mut l = Log::new(compact_cfg());
    l.append(plain(&[(Some("k"), Some("v"))], T0));
    l.append(plain(&[(Some("k"), None)], T0));
    l.append(plain(&[(Some("other"), Some("o"))], T0));
    l.append(plain(&[(Some("active"), Some("a"))], T0));
    info("--- within delete.retention.ms: the value goes, the tombstone stays");
    stats(l.compact(T0 + HOUR - 1));
    assert_eq!(
        records(&l.log),
        vec![
            kv(1, "k", None),
            kv(2, "other", Some("o")),
            kv(3, "active", Some("a"))
        ]
    );
    info("--- past delete.retention.ms, the next pass (which needs dirty data) drops it");
    l.append(plain(&[(Some("more"), Some("m"))], T0));
    let s = stats(l.compact(T0 + HOUR + 10));
    assert_eq!(s.tombstones_removed, 1);
    assert_eq!(
        records(&l.log),
        vec![
            kv(2, "other", Some("o")),
            kv(3, "active", Some("a")),
            kv(4, "more", Some("m"))
        ]
    );
}

fn info(phase: &str) {
    eprintln!("{phase}");
}

#[test]
fn min_compaction_lag_ms_protects_recent_segments() {
    let c = LogConfig {
        min_compaction_lag_ms: HOUR,
        ..compact_cfg()
    };
    let mut l = Log::new(c);
    l.append(plain(&[(Some("k"), Some("old"))], T0 - 2 * HOUR));
    l.append(plain(&[(Some("k"), Some("old2"))], T0 - 2 * HOUR));
    l.append(plain(&[(Some("k"), Some("new"))], T0));
    l.append(plain(&[(Some("x"), Some("active"))], T0));
    info("--- the segment written at T0 is too young: only the two old ones are cleaned");
    let s = stats(l.compact(T0 + 10));
    assert_eq!(s.cleaned_up_to, Offset(2));
    assert_eq!(
        records(&l.log),
        vec![
            kv(1, "k", Some("old2")),
            kv(2, "k", Some("new")),
            kv(3, "x", Some("active"))
        ]
    );
    info("--- an hour later it is cleanable and supersedes old2");
    stats(l.compact(T0 + HOUR + 10));
    assert_eq!(
        records(&l.log),
        vec![kv(2, "k", Some("new")), kv(3, "x", Some("active"))]
    );
    let mut young = Log::new(LogConfig {
        min_compaction_lag_ms: HOUR,
        ..compact_cfg()
    });
    young.append(plain(&[(Some("k"), Some("v"))], T0));
    young.append(plain(&[(Some("k"), Some("w"))], T0));
    assert_eq!(
        young.compact(T0),
        CompactionOutcome::Skipped(SkipReason::NothingCleanable)
    );
}

#[test]
fn dirty_ratio_below_the_minimum_skips_the_pass() {
    let c = LogConfig {
        min_cleanable_dirty_ratio: 0.5,
        ..compact_cfg()
    };
    let mut l = Log::new(c);
    for i in 0..4 {
        let v = format!("v{i}");
        l.append(plain(&[(Some(&format!("k{i}")), Some(&v))], T0));
    }
    l.append(plain(&[(Some("active"), Some("a"))], T0));
    stats(l.compact(T0));
    info("--- one new dirty segment against four clean ones: ratio 0.2 < 0.5");
    l.append(plain(&[(Some("k0"), Some("new"))], T0));
    assert!(matches!(
        l.compact(T0),
        CompactionOutcome::Skipped(SkipReason::DirtyRatioBelowMinimum { .. })
    ));
    info("--- enough dirty segments: cleaned");
    for i in 1..4 {
        l.append(plain(&[(Some(&format!("k{i}")), Some("new"))], T0));
    }
    stats(l.compact(T0));
    let got = records(&l.log);
    assert_eq!(
        got.iter().filter(|r| r.2.as_deref() == Some("new")).count(),
        4
    );
    // Plus k3's older value (its newest is in the active segment, which supersedes nothing)
    // and the record that was active during the first pass.
    assert_eq!(got.len(), 4 + 2, "{got:?}");
    let plain_log = &mut Log::new(LogConfig::default());
    assert_eq!(
        plain_log.compact(T0),
        CompactionOutcome::Skipped(SkipReason::NotCompacted)
    );
}

#[test]
fn the_active_segment_is_never_touched() {
    let c = LogConfig {
        segment_ms: i64::MAX,
        ..compact_cfg()
    };
    let mut l = Log::new(c);
    for v in ["a", "b", "c"] {
        l.append(plain(&[(Some("k"), Some(v))], T0));
    }
    let active = files(l.path(), ".log").pop().unwrap();
    let bytes = std::fs::read(&active).unwrap();
    assert_eq!(
        l.compact(T0),
        CompactionOutcome::Skipped(SkipReason::NothingCleanable)
    );
    assert_eq!(std::fs::read(&active).unwrap(), bytes);
    assert_eq!(records(&l.log).len(), 3);
}

#[test]
fn reopen_and_index_rebuild_tolerate_offset_gaps() {
    let mut l = Log::new(LogConfig {
        index_interval_bytes: 0,
        ..compact_cfg()
    });
    for i in 0..30 {
        let k = format!("k{}", i % 4);
        let v = format!("v{i}");
        l.append(plain(
            &[(Some(&k), Some(&v)), (Some("fill"), Some(&v))],
            T0 + i,
        ));
    }
    l.append(plain(&[(Some("active"), Some("a"))], T0));
    stats(l.compact(T0));
    let want = records(&l.log);
    assert_eq!(want.len(), 5 + 1);
    info("--- reopen; then again with every index deleted, so they are rebuilt from the log");
    l.reopen();
    assert_eq!(records(&l.log), want);
    for f in files(l.path(), ".index")
        .into_iter()
        .chain(files(l.path(), ".timeindex"))
    {
        std::fs::remove_file(f).unwrap();
    }
    l.reopen();
    assert_eq!(records(&l.log), want);
    for from in 0..l.log.log_end_offset().0 {
        let next = want.iter().map(|r| r.0).find(|o| *o >= from);
        assert_eq!(first_fetched(&l.log, from), next, "fetch from {from}");
    }
    // Timestamp lookups skip the gaps too.
    let (o, _) = l.log.offset_for_timestamp(T0).unwrap().unwrap();
    assert_eq!(o, Offset(want[0].0));
}

#[test]
fn a_crash_before_the_swap_leaves_the_old_log_and_after_it_the_new_one() {
    for crash_after_swap_rename in [false, true] {
        let mut l = Log::new(compact_cfg());
        for v in ["a", "b", "c", "d"] {
            l.append(plain(&[(Some("k"), Some(v)), (Some(v), Some(v))], T0));
        }
        l.append(plain(&[(Some("active"), Some("x"))], T0));
        let before = records(&l.log);
        let PlannedCompaction::Plan(plan) = l
            .log
            .plan_compaction(T0, l.log.log_end_offset(), CompactionLimits::default())
            .unwrap()
        else {
            panic!("nothing to compact")
        };
        let prepared = plan.execute().unwrap();
        let cleaned = files(l.path(), ".log.cleaned");
        assert_eq!(cleaned.len(), 1, "one group");
        if crash_after_swap_rename {
            // The commit point passed; the old segments are still there.
            let name = cleaned[0]
                .to_str()
                .unwrap()
                .replace(".log.cleaned", ".log.swap");
            std::fs::rename(&cleaned[0], name).unwrap();
        }
        // The process dies: nothing runs the drop that would clean up.
        std::mem::forget(prepared);
        l.reopen();
        assert!(files(l.path(), ".cleaned").is_empty());
        assert!(files(l.path(), ".swap").is_empty());
        let got = records(&l.log);
        if crash_after_swap_rename {
            assert_eq!(
                got,
                vec![
                    kv(1, "a", Some("a")),
                    kv(3, "b", Some("b")),
                    kv(5, "c", Some("c")),
                    kv(6, "k", Some("d")),
                    kv(7, "d", Some("d")),
                    kv(8, "active", Some("x")),
                ]
            );
        } else {
            assert_eq!(got, before);
        }
        assert_eq!(l.append(plain(&[(Some("n"), Some("n"))], T0)), Offset(9));
        stats(l.compact(T0));
        assert_eq!(records(&l.log).len(), 7);
    }
}

#[test]
fn a_log_changed_under_the_cleaner_aborts_the_pass() {
    let mut l = Log::new(compact_cfg());
    for v in ["a", "b", "c"] {
        l.append(plain(&[(Some("k"), Some(v))], T0));
    }
    l.append(plain(&[(Some("active"), Some("x"))], T0));
    let PlannedCompaction::Plan(plan) = l
        .log
        .plan_compaction(T0, l.log.log_end_offset(), CompactionLimits::default())
        .unwrap()
    else {
        panic!("nothing to compact")
    };
    let prepared = plan.execute().unwrap();
    l.log.truncate_to(Offset(2)).unwrap();
    let commit = l.log.commit_compaction(prepared).unwrap();
    assert_eq!(commit.persist().unwrap(), CompactionOutcome::Aborted);
    assert!(files(l.path(), ".cleaned").is_empty());
    assert_eq!(
        records(&l.log),
        vec![kv(0, "k", Some("a")), kv(1, "k", Some("b"))]
    );
}

#[test]
fn a_full_key_map_cleans_up_to_where_it_filled() {
    let mut l = Log::new(compact_cfg());
    for round in 0..2 {
        for k in ["a", "b", "c", "d", "e"] {
            let v = format!("{k}{round}");
            l.append(plain(&[(Some(k), Some(&v))], T0));
        }
    }
    l.append(plain(&[(Some("active"), Some("x"))], T0));
    let limits = CompactionLimits {
        key_map_entries_max: 2,
        ..CompactionLimits::default()
    };
    let mut passes = 0;
    loop {
        match l.log.compact(T0, limits).unwrap() {
            CompactionOutcome::Compacted(s) => {
                passes += 1;
                assert!(s.cleaned_up_to <= Offset(10));
            }
            CompactionOutcome::Skipped(SkipReason::NothingDirty) => break,
            other => panic!("{other:?}"),
        }
        assert!(passes < 20);
    }
    assert!(
        passes >= 3,
        "two keys per pass need several passes, got {passes}"
    );
    let got: Vec<String> = records(&l.log).into_iter().filter_map(|r| r.2).collect();
    assert_eq!(got, ["a1", "b1", "c1", "d1", "e1", "x"]);
}

#[test]
fn compacted_topics_refuse_records_without_a_key() {
    let mut l = Log::new(compact_cfg());
    for compression in [Compression::None, Compression::Lz4] {
        let mut b = batch(
            &[(Some("k"), Some("v")), (None, Some("no key"))],
            T0,
            (-1, -1, -1),
            compression,
        );
        let err = l.log.append(&mut b, E, T0).unwrap_err();
        assert!(
            matches!(&err, LogError::Batch(e) if e.kind() == BatchErrorKind::InvalidRecord),
            "{err}"
        );
    }
    assert_eq!(l.log.log_end_offset(), Offset(0));
    l.append(plain(&[(Some("k"), Some("v"))], T0));
    let mut free = Log::new(LogConfig::default());
    free.append(plain(&[(None, Some("fine"))], T0));
}

#[test]
fn the_last_batch_of_each_producer_survives_so_retries_stay_duplicates() {
    let mut l = Log::new(compact_cfg());
    l.append(batch(
        &[(Some("k"), Some("p0"))],
        T0,
        (9, 0, 0),
        Compression::None,
    ));
    l.append(batch(
        &[(Some("k"), Some("p1"))],
        T0,
        (9, 0, 1),
        Compression::None,
    ));
    l.append(plain(&[(Some("k"), Some("plain"))], T0));
    l.append(plain(&[(Some("active"), Some("x"))], T0));
    stats(l.compact(T0));
    // p0 goes; p1 is superseded but is producer 9's last batch.
    assert_eq!(
        records(&l.log),
        vec![
            kv(1, "k", Some("p1")),
            kv(2, "k", Some("plain")),
            kv(3, "active", Some("x"))
        ]
    );
    l.reopen();
    let mut retry = batch(&[(Some("k"), Some("p1"))], T0, (9, 0, 1), Compression::None);
    assert!(matches!(
        l.log.append(&mut retry, E, l.now),
        Ok(AppendOutcome::Duplicate(i)) if i.base_offset == Offset(1)
    ));
    let entry = l.log.producer_state().entry(ProducerId(9)).unwrap();
    assert_eq!(entry.batches.back().unwrap().last_seq, 1);
}

#[test]
fn fully_superseded_segments_and_compact_delete_retention() {
    let mut l = Log::new(LogConfig {
        cleanup_policy: "compact,delete".into(),
        retention_ms: 10 * HOUR,
        // One segment per group, so the first group ends up empty.
        segment_bytes: 100,
        segment_ms: i64::MAX,
        ..compact_cfg()
    });
    l.append(plain(&[(Some("k"), Some("old"))], T0));
    l.append(plain(&[(Some("k"), Some("new"))], T0 + 5 * HOUR));
    l.append(plain(&[(Some("active"), Some("x"))], T0 + 5 * HOUR));
    assert_eq!(files(l.path(), ".log").len(), 3);
    stats(l.compact(T0 + 5 * HOUR));
    let logs = files(l.path(), ".log");
    assert_eq!(
        std::fs::metadata(&logs[0]).unwrap().len(),
        0,
        "emptied segment"
    );
    assert_eq!(
        records(&l.log),
        vec![kv(1, "k", Some("new")), kv(2, "active", Some("x"))]
    );
    l.reopen();
    assert_eq!(records(&l.log).len(), 2);
    info("--- retention deletes the empty segment (and only it) when it reaches it");
    let r = l.log.apply_retention(T0 + 11 * HOUR).unwrap();
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(l.log.log_start_offset(), Offset(1));
    assert_eq!(
        records(&l.log),
        vec![kv(1, "k", Some("new")), kv(2, "active", Some("x"))]
    );
}

#[test]
fn truncation_into_a_compacted_segment_keeps_the_requested_log_end() {
    let mut l = Log::new(compact_cfg());
    l.append(plain(&[(Some("a"), Some("1")), (Some("b"), Some("1"))], T0));
    l.append(plain(&[(Some("b"), Some("2")), (Some("c"), Some("2"))], T0));
    l.append(plain(&[(Some("a"), Some("3"))], T0));
    l.append(plain(&[(Some("active"), Some("x"))], T0));
    stats(l.compact(T0));
    assert_eq!(
        records(&l.log),
        vec![
            kv(2, "b", Some("2")),
            kv(3, "c", Some("2")),
            kv(4, "a", Some("3")),
            kv(5, "active", Some("x"))
        ]
    );
    l.log.truncate_to(Offset(4)).unwrap();
    assert_eq!(l.log.log_end_offset(), Offset(4));
    assert!(l.log.cleaner_checkpoint() <= Offset(4));
    assert_eq!(l.append(plain(&[(Some("n"), Some("n"))], T0)), Offset(4));
    l.reopen();
    assert_eq!(
        records(&l.log),
        vec![
            kv(2, "b", Some("2")),
            kv(3, "c", Some("2")),
            kv(4, "n", Some("n"))
        ]
    );
}

// ---- property test ----

#[derive(Clone, Debug)]
enum Op {
    /// Keys (0..5) and whether the value is a tombstone; one record set, one new segment
    /// unless `same_segment`.
    Append {
        records: Vec<(u8, bool)>,
        same_segment: bool,
        compression: u8,
    },
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((0u8..6, prop::bool::weighted(0.15)), 1..5), any::<bool>(), 0u8..3)
            .prop_map(|(records, same_segment, compression)| Op::Append { records, same_segment, compression }),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random keyed appends, rolls, passes (with a tiny key map) and reopens: every surviving
    /// record sits at its original offset with its original content, the latest record of
    /// every key survives, and a fetch from any offset starts at the first survivor at or
    /// after it.
    #[test]
    fn compaction_keeps_latest_values_at_original_offsets(
        ops in prop::collection::vec(op(), 1..40),
        key_map in 1usize..8,
        segment_bytes in 100u64..2000,
    ) {
        let mut l = Log::new(LogConfig {
            segment_bytes,
            segment_ms: 1000,
            index_interval_bytes: 50,
            delete_retention_ms: i64::MAX,
            ..compact_cfg()
        });
        let limits = CompactionLimits { key_map_entries_max: key_map, ..CompactionLimits::default() };
        // offset -> (key, value) as appended.
        let mut model: BTreeMap<i64, (String, Option<String>)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append { records, same_segment, compression } => {
                    let owned: Vec<(String, Option<String>)> = records
                        .iter()
                        .enumerate()
                        .map(|(i, (k, tomb))| {
                            let v = (!tomb).then(|| format!("{}-{i}", l.log.log_end_offset().0));
                            (format!("key{k}"), v)
                        })
                        .collect();
                    let kvs: Vec<Kv> = owned.iter().map(|(k, v)| (Some(k.as_str()), v.as_deref())).collect();
                    let codec = [Compression::None, Compression::Gzip, Compression::Zstd][compression as usize];
                    let mut set = batch(&kvs, T0, (-1, -1, -1), codec);
                    l.now += if same_segment { 0 } else { 1000 };
                    let AppendOutcome::Appended(info) = l.log.append(&mut set, E, l.now).unwrap() else {
                        panic!("duplicate")
                    };
                    for (i, kv) in owned.into_iter().enumerate() {
                        model.insert(info.base_offset.0 + i as i64, kv);
                    }
                }
                Op::Compact => {
                    let outcome = l.log.compact(T0, limits).unwrap();
                    prop_assert!(!matches!(outcome, CompactionOutcome::Aborted));
                }
                Op::Reopen => l.reopen(),
            }
            let got = records(&l.log);
            // Offsets strictly increase and each survivor is what was appended there.
            for w in got.windows(2) {
                prop_assert!(w[0].0 < w[1].0);
            }
            for (o, k, v) in &got {
                let (mk, mv) = &model[o];
                prop_assert_eq!(k.as_deref(), Some(mk.as_str()));
                prop_assert_eq!(v, mv);
            }
            // The latest record of every key survives.
            let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
            for (o, (k, _)) in &model {
                latest.insert(k, *o);
            }
            let offsets: Vec<i64> = got.iter().map(|r| r.0).collect();
            for (k, o) in &latest {
                prop_assert!(offsets.binary_search(o).is_ok(), "latest {} of {} lost", o, k);
            }
            prop_assert_eq!(l.log.log_end_offset().0, model.keys().next_back().map_or(0, |o| o + 1));
            for from in 0..=l.log.log_end_offset().0 {
                let next = offsets.iter().copied().find(|o| *o >= from);
                prop_assert_eq!(first_fetched(&l.log, from), next, "fetch from {}", from);
            }
        }
    }
}
