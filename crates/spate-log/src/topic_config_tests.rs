//! Topic configs that change what the leader stores or when the cleaner runs, each edge case
//! as phases: `message.timestamp.type=LogAppendTime` (KIP-32), topic `compression.type`
//! (recompression on append) and `max.compaction.lag.ms` (KIP-354). The clock is the `now_ms`
//! every call takes, so time is manual throughout.
#![allow(clippy::unwrap_used)]

use crate::batch::{check_batch, BatchHeader};
use crate::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{LeaderEpoch, Offset};
use std::path::Path;
use std::sync::Arc;
use tracing::info;

const E: LeaderEpoch = LeaderEpoch(2);
const T0: i64 = 1_700_000_000_000;

fn os() -> Arc<dyn spate_types::Disk> {
    Arc::new(spate_types::OsDisk)
}

/// `(key, value)` of one record.
type Kv<'a> = (Option<&'a str>, Option<&'a str>);

/// A batch encoded by kafka-protocol: record `i` has timestamp `ts + i`, a header `h=i`.
fn batch(kvs: &[Kv], ts: i64, producer: (i64, i16, i32), compression: Compression) -> Vec<u8> {
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
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: i as i64,
            sequence: if producer.0 < 0 {
                i as i32 - 1
            } else {
                producer.2 + i as i32
            },
            timestamp: ts + i as i64,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: [(
                kafka_protocol::protocol::StrBytes::from_static_str("h"),
                Some(Bytes::from(i.to_string())),
            )]
            .into_iter()
            .collect(),
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

fn values(kvs: &[Kv], ts: i64) -> Vec<u8> {
    batch(kvs, ts, (-1, -1, -1), Compression::None)
}

fn lat() -> LogConfig {
    LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, c: LogConfig) -> PartitionLog {
    PartitionLog::open(os(), dir, c, T0).unwrap()
}

fn appended(outcome: AppendOutcome) -> AppendInfo {
    match outcome {
        AppendOutcome::Appended(i) => i,
        AppendOutcome::Duplicate(i) => panic!("unexpected duplicate {i:?}"),
    }
}

/// Every stored batch, read back through a verified read plan.
fn stored(log: &PartitionLog) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let plan = log
            .plan_read(next, 1 << 20, log.log_end_offset(), true)
            .unwrap();
        let mut bytes: &[u8] = &plan.load().unwrap();
        while !bytes.is_empty() {
            let h = BatchHeader::parse(bytes).unwrap();
            out.push(bytes[..h.total_bytes()].to_vec());
            next = h.next_offset();
            bytes = &bytes[h.total_bytes()..];
        }
    }
    out
}

fn header(b: &[u8]) -> BatchHeader {
    check_batch(b, BATCH_BYTES_MAX).unwrap()
}

fn records(b: &[u8]) -> Vec<Record> {
    RecordBatchDecoder::decode(&mut Bytes::copy_from_slice(b))
        .unwrap()
        .records
}

// ---- message.timestamp.type=LogAppendTime ----------------------------------------------------

#[test]
fn log_append_time_stamps_every_batch_with_the_broker_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), lat());
    let now = T0 + 5_000;
    let mut set = [
        values(&[(None, Some("a")), (None, Some("b"))], 10),
        values(&[(None, Some("c"))], 20),
    ]
    .concat();
    let info = appended(log.append(&mut set, E, now).unwrap());
    assert_eq!(
        (info.max_timestamp, info.log_append_time_ms),
        (now, now),
        "AppendInfo reports the append time"
    );
    let batches = stored(&log);
    assert_eq!(batches.len(), 2);
    for (b, create_base) in batches.iter().zip([10, 20]) {
        // check_batch verifies the recomputed CRC.
        let h = header(b);
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, now);
        assert_eq!(
            h.base_timestamp, create_base,
            "the first timestamp is left alone"
        );
    }
    assert_eq!(records(&batches[0])[1].value.as_deref(), Some(&b"b"[..]));
}

#[test]
fn create_time_keeps_the_producer_timestamps_and_reports_no_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    let original = values(&[(None, Some("a"))], 10);
    let mut set = original.clone();
    let info = appended(log.append(&mut set, E, T0).unwrap());
    assert_eq!((info.max_timestamp, info.log_append_time_ms), (10, -1));
    let b = &stored(&log)[0];
    assert!(!header(b).is_log_append_time());
    assert_eq!(
        b[12 + 4 + 1..],
        original[12 + 4 + 1..],
        "CRC and everything it covers are the producer's"
    );
}

#[test]
fn a_batch_claiming_log_append_time_on_a_create_time_topic_is_stored_as_create_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    let mut claimed = values(&[(None, Some("a"))], 10);
    crate::batch::set_max_timestamp(&mut claimed, true, 10);
    assert!(header(&claimed).is_log_append_time());
    let info = appended(log.append(&mut claimed, E, T0).unwrap());
    assert_eq!(info.log_append_time_ms, -1);
    let h = header(&stored(&log)[0]);
    assert!(!h.is_log_append_time());
    assert_eq!(h.max_timestamp, 10);
}

#[test]
fn the_timestamp_difference_limit_applies_to_create_time_only() {
    let dir = tempfile::tempdir().unwrap();
    let limited = |c: LogConfig| LogConfig {
        message_timestamp_difference_max_ms: 1_000,
        ..c
    };
    let mut log = open(dir.path(), limited(LogConfig::default()));
    let ancient = || values(&[(None, Some("a"))], 0);
    assert!(matches!(
        log.append(&mut ancient(), E, T0),
        Err(LogError::InvalidTimestamp { .. })
    ));
    log.set_config(limited(lat()));
    let info = appended(log.append(&mut ancient(), E, T0).unwrap());
    assert_eq!(info.max_timestamp, T0);
}

#[test]
fn time_index_and_list_offsets_by_timestamp_use_the_append_time() {
    let dir = tempfile::tempdir().unwrap();
    // Each append in its own segment, so both the active and rolled segments are searched.
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 100,
            ..lat()
        },
    );
    // Producer timestamps run backwards against append times, so using the wrong one shows.
    let t1 = T0 + 1_000;
    let t2 = T0 + 2_000;
    let ancient = 5;
    log.append(
        &mut values(&[(None, Some("a")), (None, Some("b"))], T0 + 9_000),
        E,
        t1,
    )
    .unwrap();
    log.append(&mut values(&[(None, Some("c"))], ancient), E, t2)
        .unwrap();
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((Offset(0), t1)));
    assert_eq!(log.offset_for_timestamp(t1).unwrap(), Some((Offset(0), t1)));
    assert_eq!(
        log.offset_for_timestamp(t1 + 1).unwrap(),
        Some((Offset(2), t2))
    );
    assert_eq!(log.offset_for_timestamp(t2 + 1).unwrap(), None);
    assert_eq!(log.max_timestamp_offset().unwrap(), Some((Offset(2), t2)));
    // The same after reopening: the time index is rebuilt from the stored headers.
    drop(log);
    let log = open(dir.path(), lat());
    assert_eq!(
        log.offset_for_timestamp(t1 + 1).unwrap(),
        Some((Offset(2), t2))
    );
}

#[test]
fn time_retention_counts_from_the_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            retention_ms: 5_000,
            ..lat()
        },
    );
    let now = T0 + 10_000;
    // A producer timestamp far in the past would make the segment expire at once.
    log.append(&mut values(&[(None, Some("a"))], 0), E, now)
        .unwrap();
    assert_eq!(
        log.apply_retention(now + 5_000).unwrap().segments_deleted,
        0
    );
    let gone = log.apply_retention(now + 5_001).unwrap();
    assert_eq!(
        (gone.segments_deleted, gone.log_start_offset),
        (1, Offset(1))
    );
}

#[test]
fn an_idempotent_retry_is_answered_with_the_original_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), lat());
    let idem = || batch(&[(None, Some("a"))], 10, (7, 0, 0), Compression::None);
    let t1 = T0 + 1_000;
    let first = appended(log.append(&mut idem(), E, t1).unwrap());
    assert_eq!(first.log_append_time_ms, t1);
    let retry = |log: &mut PartitionLog, now| match log.append(&mut idem(), E, now).unwrap() {
        AppendOutcome::Duplicate(i) => i,
        other => panic!("expected a duplicate, got {other:?}"),
    };
    let dup = retry(&mut log, t1 + 500);
    assert_eq!(
        (dup.base_offset, dup.max_timestamp, dup.log_append_time_ms),
        (Offset(0), t1, t1)
    );
    info!("--- the topic switches to CreateTime: the retry still reports the original stamp");
    log.set_config(LogConfig::default());
    assert_eq!(retry(&mut log, t1 + 600).log_append_time_ms, t1);
    info!("--- after a reopen the producer state is replayed from the stored batch");
    drop(log);
    let mut log = open(dir.path(), LogConfig::default());
    assert_eq!(retry(&mut log, t1 + 700).log_append_time_ms, t1);
    assert_eq!(log.log_end_offset(), Offset(1));
}

#[test]
fn switching_the_timestamp_type_applies_to_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.append(&mut values(&[(None, Some("a"))], 10), E, T0)
        .unwrap();
    log.set_config(lat());
    log.append(&mut values(&[(None, Some("b"))], 20), E, T0 + 1)
        .unwrap();
    log.set_config(LogConfig::default());
    log.append(&mut values(&[(None, Some("c"))], 30), E, T0 + 2)
        .unwrap();
    let seen: Vec<(bool, i64)> = stored(&log)
        .iter()
        .map(|b| (header(b).is_log_append_time(), header(b).max_timestamp))
        .collect();
    assert_eq!(seen, [(false, 10), (true, T0 + 1), (false, 30)]);
}

#[test]
fn a_follower_copies_log_append_time_batches_unchanged() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open(ld.path(), lat());
    leader
        .append(&mut values(&[(None, Some("a"))], 10), E, T0 + 3)
        .unwrap();
    let bytes = stored(&leader).concat();
    // The follower's own config is CreateTime: it must not restamp what the leader stored.
    let mut follower = open(fd.path(), LogConfig::default());
    let info = follower
        .append_as_follower(&bytes, T0 + 99)
        .unwrap()
        .unwrap();
    assert_eq!(info.log_append_time_ms, T0 + 3);
    assert_eq!(stored(&follower).concat(), bytes);
    assert_eq!(
        follower.offset_for_timestamp(T0).unwrap(),
        Some((Offset(0), T0 + 3))
    );
}

#[test]
fn compaction_keeps_the_append_time_of_a_rewritten_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        ..lat()
    };
    let mut log = open(dir.path(), c);
    let t1 = T0 + 1_000;
    log.append(
        &mut values(&[(Some("k1"), Some("old")), (Some("k2"), Some("keep"))], 10),
        E,
        t1,
    )
    .unwrap();
    log.append(&mut values(&[(Some("k1"), Some("new"))], 20), E, t1 + 1)
        .unwrap();
    // Roll so that both batches are in rolled segments.
    log.append(&mut values(&[(Some("k3"), Some("x"))], 30), E, t1 + 2)
        .unwrap();
    let outcome = log.compact(t1 + 3, CompactionLimits::default()).unwrap();
    assert!(
        matches!(outcome, CompactionOutcome::Compacted(s) if s.batches_rewritten == 1),
        "{outcome:?}"
    );
    let first = &stored(&log)[0];
    let h = header(first);
    assert!(h.is_log_append_time());
    assert_eq!(
        h.max_timestamp, t1,
        "the append time, not the records' CreateTime"
    );
    let kept = records(first);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].key.as_deref(), Some(&b"k2"[..]));
}

// ---- compression.type ------------------------------------------------------------------------

fn with_codec(t: CompressionType) -> LogConfig {
    LogConfig {
        compression_type: t,
        ..LogConfig::default()
    }
}

const CODECS: [(Compression, i16); 5] = [
    (Compression::None, 0),
    (Compression::Gzip, 1),
    (Compression::Snappy, 2),
    (Compression::Lz4, 3),
    (Compression::Zstd, 4),
];

/// What a consumer sees of a record: offset, timestamp, key, value, headers.
type Seen = (
    i64,
    i64,
    Option<Bytes>,
    Option<Bytes>,
    Vec<(String, Option<Bytes>)>,
);

fn seen(r: &Record) -> Seen {
    (
        r.offset,
        r.timestamp,
        r.key.clone(),
        r.value.clone(),
        r.headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn kvs() -> Vec<Kv<'static>> {
    vec![
        (
            Some("k0"),
            Some("a fairly compressible value, a fairly compressible value"),
        ),
        (None, None),
        (Some(""), Some("")),
        (
            Some("k3"),
            Some("a fairly compressible value, a fairly compressible value"),
        ),
    ]
}

#[test]
fn a_topic_codec_recompresses_batches_of_every_other_codec() {
    for (target, target_id) in CODECS {
        let topic = [
            CompressionType::Uncompressed,
            CompressionType::Gzip,
            CompressionType::Snappy,
            CompressionType::Lz4,
            CompressionType::Zstd,
        ][target_id as usize];
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), with_codec(topic));
        let mut expected = Vec::new();
        let mut base = 0;
        for (source, _) in CODECS {
            let mut b = batch(&kvs(), 1_000, (-1, -1, -1), source);
            let sent: Vec<_> = records(&b).iter().map(seen).collect();
            let info = appended(log.append(&mut b, E, T0).unwrap());
            assert_eq!(info.base_offset, Offset(base), "{source:?} -> {target:?}");
            assert_eq!(info.last_offset, Offset(base + 3));
            expected.push((sent, base));
            base += 4;
        }
        let batches = stored(&log);
        assert_eq!(batches.len(), CODECS.len());
        let sizes: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(
            log.size_bytes(),
            sizes as u64,
            "the log accounts the stored bytes"
        );
        for (b, (sent, base)) in batches.iter().zip(expected) {
            let h = header(b);
            assert_eq!(h.compression(), target_id, "stored in {target:?}");
            assert_eq!(h.base_offset, Offset(base));
            assert_eq!((h.records_count, h.last_offset_delta), (4, 3));
            assert_eq!(h.partition_leader_epoch, E);
            let got: Vec<_> = records(b).iter().map(seen).collect();
            let want: Vec<_> = sent
                .into_iter()
                .map(|(o, t, k, v, hs)| (o + base, t, k, v, hs))
                .collect();
            assert_eq!(got, want, "records intact through {target:?}");
        }
        info!("--- recovery rescans the recompressed batches");
        drop(log);
        let log = open(dir.path(), with_codec(topic));
        assert_eq!(log.log_end_offset(), Offset(base));
        assert_eq!(stored(&log), batches);
    }
}

#[test]
fn a_batch_already_in_the_topic_codec_is_stored_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), with_codec(CompressionType::Gzip));
    let original = batch(&kvs(), 1_000, (-1, -1, -1), Compression::Gzip);
    log.append(&mut original.clone(), E, T0).unwrap();
    let b = &stored(&log)[0];
    assert_eq!(
        b[17..],
        original[17..],
        "CRC and everything it covers unchanged"
    );
    info!("--- `producer` keeps every codec");
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), with_codec(CompressionType::Producer));
    for (source, id) in CODECS {
        let mut b = batch(&kvs(), 1_000, (-1, -1, -1), source);
        log.append(&mut b, E, T0).unwrap();
        assert_eq!(header(stored(&log).last().unwrap()).compression(), id);
    }
}

#[test]
fn recompression_keeps_producer_fields_transactional_flag_and_timestamp_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            compression_type: CompressionType::Zstd,
            ..lat()
        },
    );
    let mut b = batch(&kvs(), 1_000, (42, 3, 17), Compression::None);
    // Mark it transactional, as a transactional producer's batch is.
    let attributes = i16::from_be_bytes([b[21], b[22]]) | (1 << 4);
    b[21..23].copy_from_slice(&attributes.to_be_bytes());
    crate::batch::testutil::fix_crc(&mut b);
    let now = T0 + 77;
    let info = appended(log.append(&mut b, E, now).unwrap());
    assert_eq!(info.log_append_time_ms, now);
    let s = &stored(&log)[0];
    let h = header(s);
    assert_eq!(h.compression(), 4);
    assert_eq!(
        (h.producer_id.0, h.producer_epoch.0, h.base_sequence),
        (42, 3, 17)
    );
    assert!(h.is_transactional());
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, now);
    info!("--- a retry of the batch is recognised after recompression");
    let mut retry = batch(&kvs(), 1_000, (42, 3, 17), Compression::None);
    retry[21..23].copy_from_slice(&attributes.to_be_bytes());
    crate::batch::testutil::fix_crc(&mut retry);
    match log.append(&mut retry, E, now + 5).unwrap() {
        AppendOutcome::Duplicate(i) => {
            assert_eq!((i.base_offset, i.log_append_time_ms), (Offset(0), now))
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), Offset(4));
}

#[test]
fn a_batch_without_producer_id_keeps_base_sequence_minus_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), with_codec(CompressionType::Snappy));
    log.append(
        &mut batch(&kvs(), 1_000, (-1, -1, -1), Compression::None),
        E,
        T0,
    )
    .unwrap();
    let h = header(&stored(&log)[0]);
    assert_eq!(
        (h.producer_id.0, h.producer_epoch.0, h.base_sequence),
        (-1, -1, -1)
    );
}

/// A batch of `n` records each with a value of `value_len` zero bytes.
fn zeros(n: usize, value_len: usize, compression: Compression) -> Vec<u8> {
    let value = "\0".repeat(value_len);
    let kvs: Vec<Kv> = (0..n).map(|_| (None, Some(value.as_str()))).collect();
    batch(&kvs, 1_000, (-1, -1, -1), compression)
}

#[test]
fn max_message_bytes_applies_to_the_recompressed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let c = LogConfig {
        max_message_bytes: 2_000,
        ..with_codec(CompressionType::Uncompressed)
    };
    let mut log = open(dir.path(), c);
    let mut small = zeros(10, 1_000, Compression::Gzip);
    assert!(small.len() < 2_000, "the gzip batch itself fits");
    match log.append(&mut small, E, T0) {
        Err(LogError::Batch(BatchError::TooLarge { size, max: 2_000 })) => {
            assert!(size > 10_000, "{size}")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), Offset(0), "nothing written");
    assert_eq!(log.size_bytes(), 0);
    info!("--- as in Kafka, the batch as sent must fit too, even if it would shrink");
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: 2_000,
            ..with_codec(CompressionType::Gzip)
        },
    );
    let mut big = zeros(3, 1_000, Compression::None);
    assert!(matches!(
        log.append(&mut big, E, T0),
        Err(LogError::Batch(BatchError::TooLarge { .. }))
    ));
}

#[test]
fn a_batch_inflating_past_the_hard_batch_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), with_codec(CompressionType::Uncompressed));
    // One value just past the hard limit: a few tens of KiB of zstd.
    let mut bomb = zeros(1, BATCH_BYTES_MAX + 1, Compression::Zstd);
    assert!(bomb.len() < 1 << 20, "{} bytes compressed", bomb.len());
    let err = log.append(&mut bomb, E, T0).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::Batch(BatchError::InflatedTooLarge {
                max: BATCH_BYTES_MAX
            })
        ),
        "{err}"
    );
    assert_eq!(
        BatchError::InflatedTooLarge { max: 1 }.kind(),
        BatchErrorKind::TooLarge
    );
    assert_eq!(log.log_end_offset(), Offset(0));
}

#[test]
fn records_not_numbered_from_the_base_offset_are_refused_not_renumbered() {
    // Two records with offset deltas 1 and 2: the header (count 2, last delta 1) is valid, but
    // no encoder can reproduce those deltas from the batch's base offset.
    let mut recs = Vec::new();
    for delta in [1u8, 2] {
        // length 7: attributes, timestamp delta 0, offset delta, key -1, value len 1 "x",
        // no headers (zigzag varints).
        recs.extend_from_slice(&[14, 0, 0, delta * 2, 1, 2, b'x', 0]);
    }
    let mut b = crate::batch::testutil::raw_batch(2, (-1, -1, -1), 1_000, &recs);
    let dir = tempfile::tempdir().unwrap();
    let mut producer_codec = open(dir.path(), LogConfig::default());
    producer_codec.append(&mut b.clone(), E, T0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), with_codec(CompressionType::Gzip));
    let err = log.append(&mut b, E, T0).unwrap_err();
    assert!(
        matches!(err, LogError::Batch(BatchError::MalformedRecords(_))),
        "{err}"
    );
    assert_eq!(log.log_end_offset(), Offset(0));
}

#[test]
fn a_follower_stores_the_leaders_codec_whatever_its_own_config() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open(ld.path(), LogConfig::default());
    leader
        .append(
            &mut batch(&kvs(), 1_000, (-1, -1, -1), Compression::Lz4),
            E,
            T0,
        )
        .unwrap();
    let bytes = stored(&leader).concat();
    let mut follower = open(fd.path(), with_codec(CompressionType::Gzip));
    follower.append_as_follower(&bytes, T0).unwrap();
    assert_eq!(stored(&follower).concat(), bytes);
}

#[test]
fn a_compacted_recompressing_topic_still_refuses_keyless_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            cleanup_policy: "compact".into(),
            ..with_codec(CompressionType::Gzip)
        },
    );
    let mut b = batch(
        &[(Some("k"), Some("v")), (None, Some("no key"))],
        1_000,
        (-1, -1, -1),
        Compression::Lz4,
    );
    assert_eq!(
        log.append(&mut b, E, T0).unwrap_err().to_string(),
        LogError::Batch(BatchError::MissingKey { records: vec![1] }).to_string()
    );
}

// ---- max.compaction.lag.ms -------------------------------------------------------------------

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .ends_with(".log")
        })
        .count()
}

#[test]
fn a_compacted_topic_rolls_its_active_segment_at_max_compaction_lag() {
    for (policy, rolls) in [
        ("compact", true),
        ("compact,delete", true),
        ("delete", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = LogConfig {
            cleanup_policy: policy.into(),
            max_compaction_lag_ms: 1_000,
            ..LogConfig::default()
        };
        // The segment's age counts from the open (T0) for a recovered active segment.
        let mut log = open(dir.path(), c);
        let mut append = |now| {
            log.append(&mut values(&[(Some("k"), Some("v"))], now), E, now)
                .unwrap()
        };
        append(T0);
        append(T0 + 999);
        assert_eq!(segment_files(dir.path()), 1, "{policy}: not yet");
        append(T0 + 1_000);
        assert_eq!(
            segment_files(dir.path()),
            if rolls { 2 } else { 1 },
            "{policy}: segment.ms is a week, max.compaction.lag.ms 1 s"
        );
    }
}

/// A compacted log with a large cleaned part and, after it, two small dirty rolled segments
/// whose batches have timestamp `dirty_ts` (the active segment after them holds another).
fn mostly_clean_log(dir: &Path, max_compaction_lag_ms: i64, dirty_ts: i64) -> PartitionLog {
    let mut c = LogConfig {
        cleanup_policy: "compact".into(),
        segment_ms: 1,
        min_cleanable_dirty_ratio: 0.0,
        ..LogConfig::default()
    };
    let mut log = open(dir, c.clone());
    let big = "x".repeat(2_000);
    for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
        let now = T0 + i as i64 + 1;
        log.append(&mut values(&[(Some(key), Some(&big))], now), E, now)
            .unwrap();
    }
    // One more append so that the last big one is in a rolled segment, then clean them all.
    // This one stays dirty (it was active during the pass): it has the dirty timestamp too.
    log.append(&mut values(&[(Some("e"), Some("1"))], dirty_ts), E, T0 + 10)
        .unwrap();
    let first = log.compact(T0 + 10, CompactionLimits::default()).unwrap();
    assert!(
        matches!(first, CompactionOutcome::Compacted(_)),
        "{first:?}"
    );
    info!("--- dirty: a small record superseding `e`, rolled; the ratio is now far below 0.5");
    c.min_cleanable_dirty_ratio = 0.5;
    c.max_compaction_lag_ms = max_compaction_lag_ms;
    log.set_config(c);
    log.append(&mut values(&[(Some("e"), Some("2"))], dirty_ts), E, T0 + 11)
        .unwrap();
    log.append(&mut values(&[(Some("f"), Some("3"))], dirty_ts), E, T0 + 12)
        .unwrap();
    log
}

fn plan(log: &PartitionLog, now: i64) -> Result<CompactionTrigger, SkipReason> {
    match log
        .plan_compaction(now, log.log_end_offset(), CompactionLimits::default())
        .unwrap()
    {
        PlannedCompaction::Plan(p) => Ok(p.trigger()),
        PlannedCompaction::Skip(reason) => Err(reason),
    }
}

#[test]
fn the_cleaner_runs_below_the_dirty_ratio_once_a_dirty_record_passes_max_compaction_lag() {
    let dir = tempfile::tempdir().unwrap();
    let dirty_ts = T0 + 20;
    let lag = 10_000;
    let mut log = mostly_clean_log(dir.path(), lag, dirty_ts);
    assert!(matches!(
        plan(&log, dirty_ts + lag),
        Err(SkipReason::DirtyRatioBelowMinimum { .. })
    ));
    assert_eq!(
        plan(&log, dirty_ts + lag + 1),
        Ok(CompactionTrigger::MaxCompactionLag { overdue_ms: 1 })
    );
    assert_eq!(
        plan(&log, dirty_ts + lag + 500),
        Ok(CompactionTrigger::MaxCompactionLag { overdue_ms: 500 })
    );
    info!("--- the pass removes the superseded `e` and the log is clean again");
    let outcome = log
        .compact(dirty_ts + lag + 1, CompactionLimits::default())
        .unwrap();
    let CompactionOutcome::Compacted(stats) = outcome else {
        panic!("expected a pass, got {outcome:?}");
    };
    assert_eq!(stats.records_removed, 1);
    assert_eq!(
        plan(&log, dirty_ts + lag + 1),
        Err(SkipReason::NothingDirty)
    );
}

#[test]
fn without_max_compaction_lag_the_dirty_ratio_alone_decides() {
    let dir = tempfile::tempdir().unwrap();
    let log = mostly_clean_log(dir.path(), i64::MAX, T0 + 20);
    assert!(matches!(
        plan(&log, i64::MAX),
        Err(SkipReason::DirtyRatioBelowMinimum { .. })
    ));
}

#[test]
fn dirty_segments_without_timestamps_are_never_overdue() {
    let dir = tempfile::tempdir().unwrap();
    // Kafka ignores first batch timestamps <= 0 (no timestamp).
    let log = mostly_clean_log(dir.path(), 1, -1);
    assert!(matches!(
        plan(&log, T0 + 1_000_000),
        Err(SkipReason::DirtyRatioBelowMinimum { .. })
    ));
}

#[test]
fn the_dirty_ratio_still_triggers_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = mostly_clean_log(dir.path(), 10_000, T0 + 20);
    let mut c = log.config().clone();
    c.min_cleanable_dirty_ratio = 0.0;
    log.set_config(c);
    assert_eq!(plan(&log, T0 + 21), Ok(CompactionTrigger::DirtyRatio));
}
