//! Transactions as the partition log sees them (Kafka's `ProducerStateManager` transaction
//! bookkeeping, `EndTransactionMarker` and `ControlRecordType`).
//!
//! A transactional producer's data batches (the transactional attribute bit) open a transaction
//! at the first one's offset; a *marker*, a control batch written by the leader on the
//! transaction coordinator's behalf ([`PartitionLog::append_marker`](crate::PartitionLog::append_marker)),
//! ends it with COMMIT or ABORT. The open transaction of each producer lives in its
//! [`ProducerEntry`](crate::ProducerEntry) (`current_txn_first_offset`) and in the producer
//! state's index of open transactions by first offset; this module holds what is shared by the
//! leader and follower paths and recovery:
//!
//! - the marker's wire form: one control record whose key is `(version: i16 = 0, type: i16)`
//!   (0 ABORT, 1 COMMIT) and whose value is `(version: i16 = 0, coordinator_epoch: i32)`,
//!   in a batch with the control and transactional bits, the producer id and epoch, base
//!   sequence -1 (`encode_marker`, `parse_control_batch`);
//! - [`AbortedTxn`], the entry of a segment's transaction index (`txn_index.rs`);
//! - `UnreplicatedTxns`: completed transactions whose marker is not yet below the high
//!   watermark (Kafka's `unreplicatedTxns`), which keep the last stable offset down until the
//!   marker is replicated.
//!
//! Invariants: parsing never panics on stored bytes (a malformed control record is an
//! `ControlRecord::Unknown`, logged and skipped); control batches are read whole only up to
//! `CONTROL_BATCH_BYTES_MAX`.

use crate::batch::{check_batch, decode_records, BatchError, BatchHeader};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId};
use std::collections::BTreeMap;

/// A control batch larger than this is not a transaction marker (one of ours is 78 bytes);
/// recovery reads no more of it and treats it as an unknown control record.
pub(crate) const CONTROL_BATCH_BYTES_MAX: usize = 4096;

/// Control record types (Kafka's `ControlRecordType`).
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;
/// Key: version (i16) + type (i16). Value: version (i16) + coordinator epoch (i32).
const CONTROL_KEY_BYTES: usize = 4;
const MARKER_VALUE_BYTES: usize = 6;

/// What the transaction coordinator asks a partition leader to write (WriteTxnMarkers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: ProducerId,
    /// The producer epoch the transaction ends in; with transaction version 2 the coordinator
    /// bumps it here, fencing the producer's older epoch.
    pub producer_epoch: ProducerEpoch,
    /// The coordinator's epoch: a marker from an older coordinator is refused.
    pub coordinator_epoch: i32,
    /// COMMIT if true, ABORT if false.
    pub commit: bool,
}

/// One aborted transaction, as a segment's transaction index records it (Kafka's
/// `AbortedTxn`): consumers in `read_committed` drop this producer's records from
/// `first_offset` up to the ABORT marker at `last_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: ProducerId,
    pub first_offset: Offset,
    /// The ABORT marker's offset.
    pub last_offset: Offset,
    /// The partition's first unstable offset right after the abort: the first offset of the
    /// earliest transaction still open then, or `last_offset + 1` if none was. Lets a search
    /// stop early (see [`PartitionLog::aborted_transactions`](crate::PartitionLog::aborted_transactions)).
    pub last_stable_offset: Offset,
}

/// A transaction a marker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub producer_id: ProducerId,
    pub first_offset: Offset,
    /// The marker's offset.
    pub last_offset: Offset,
    pub aborted: bool,
}

/// The record of a control batch, as far as producer state cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlRecord {
    Marker {
        commit: bool,
        coordinator_epoch: i32,
    },
    /// Another control type (e.g. KRaft's LEADER_CHANGE), or a malformed record: skipped.
    Unknown,
}

/// Builds the control batch of `marker` (base offset 0: the caller places it), stamped
/// `timestamp_ms`, in `leader_epoch`.
pub(crate) fn encode_marker(
    marker: &TxnMarker,
    leader_epoch: LeaderEpoch,
    timestamp_ms: i64,
) -> Result<Vec<u8>, BatchError> {
    let kind = if marker.commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut key = Vec::with_capacity(CONTROL_KEY_BYTES);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(MARKER_VALUE_BYTES);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: leader_epoch.0,
        producer_id: marker.producer_id.0,
        producer_epoch: marker.producer_epoch.0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        // Base sequence -1: markers carry no sequence (Kafka's `RecordBatch.NO_SEQUENCE`).
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        std::iter::once(&record),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| BatchError::MalformedRecords(format!("encoding a transaction marker: {e}")))?;
    let buf = Vec::from(buf);
    let h = check_batch(&buf, BATCH_BYTES_MAX)?;
    // The encoder wrote one batch of one record with the bits asked for, or this is a bug.
    assert!(
        h.total_bytes() == buf.len()
            && h.records_count == 1
            && h.is_control()
            && h.is_transactional()
            && h.base_sequence == -1,
        "the marker encoder wrote an unexpected batch: {h:?}"
    );
    Ok(buf)
}

/// Reads the control record of `batch`, which holds exactly the control batch `h` (its CRC is
/// checked here: on the recovery path nothing else has). Anything malformed is logged and
/// answered [`ControlRecord::Unknown`], so that replay skips it instead of failing.
pub(crate) fn parse_control_batch(batch: &[u8], h: &BatchHeader) -> ControlRecord {
    let unknown = |reason: &str| {
        tracing::warn!(
            offset = h.base_offset.0,
            producer_id = h.producer_id.0,
            reason,
            "skipping a malformed control record"
        );
        ControlRecord::Unknown
    };
    if batch.len() > CONTROL_BATCH_BYTES_MAX {
        return unknown("control batch larger than a transaction marker can be");
    }
    if let Err(e) = check_batch(batch, CONTROL_BATCH_BYTES_MAX) {
        return unknown(&e.to_string());
    }
    let set = match decode_records(batch, h) {
        Ok(set) => set,
        Err(e) => return unknown(&e.to_string()),
    };
    let Some(record) = set.records.first() else {
        return unknown("control batch without a record");
    };
    let Some(key) = record
        .key
        .as_deref()
        .filter(|k| k.len() >= CONTROL_KEY_BYTES)
    else {
        return unknown("control record key shorter than 4 bytes");
    };
    // Kafka's `ControlRecordType.parse`: a negative version is invalid; a newer one is read as
    // version 0 (the fields it knows come first).
    if i16::from_be_bytes([key[0], key[1]]) < 0 {
        return unknown("negative control record key version");
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        other => {
            tracing::debug!(
                offset = h.base_offset.0,
                control_type = other,
                "control record of a type producer state ignores"
            );
            return ControlRecord::Unknown;
        }
    };
    let Some(value) = record
        .value
        .as_deref()
        .filter(|v| v.len() >= MARKER_VALUE_BYTES)
    else {
        return unknown("transaction marker value shorter than 6 bytes");
    };
    if i16::from_be_bytes([value[0], value[1]]) < 0 {
        return unknown("negative transaction marker value version");
    }
    ControlRecord::Marker {
        commit,
        coordinator_epoch: i32::from_be_bytes([value[2], value[3], value[4], value[5]]),
    }
}

/// Completed transactions whose marker is at or above the high watermark, by first offset
/// (Kafka's `unreplicatedTxns`). Until the marker is replicated a new leader may not have it,
/// so the transaction still bounds the last stable offset.
///
/// Bounded by [`UnreplicatedTxns::on_high_watermark`], which the replica calls as the high
/// watermark moves, and by truncation and log start changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UnreplicatedTxns {
    by_first: BTreeMap<Offset, CompletedTxn>,
}

impl UnreplicatedTxns {
    pub fn add(&mut self, txn: CompletedTxn) {
        self.by_first.insert(txn.first_offset, txn);
    }

    /// Drops the transactions whose marker is below `hw`.
    pub fn on_high_watermark(&mut self, hw: Offset) {
        self.by_first.retain(|_, t| t.last_offset >= hw);
    }

    /// Drops the transactions whose marker is at or past `end` (truncation removed it: the
    /// transaction is open again, and producer state says so).
    pub fn truncate_to(&mut self, end: Offset) {
        self.by_first.retain(|_, t| t.last_offset < end);
    }

    /// Drops the transactions wholly below the log start (Kafka's
    /// `onLogStartOffsetIncremented`): no fetch can reach them.
    pub fn on_log_start(&mut self, log_start: Offset) {
        self.by_first.retain(|_, t| t.last_offset >= log_start);
    }

    /// The earliest first offset of all of them.
    pub fn first(&self) -> Option<Offset> {
        self.by_first.keys().next().copied()
    }

    /// The earliest first offset of those whose marker is at or above `hw`.
    pub fn first_unreplicated_at(&self, hw: Offset) -> Option<Offset> {
        self.by_first
            .values()
            .find(|t| t.last_offset >= hw)
            .map(|t| t.first_offset)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_first.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::testutil::fix_crc;
    use crate::batch::{validate_batches, validate_replicated_batches, BatchError};

    fn marker(commit: bool) -> TxnMarker {
        TxnMarker {
            producer_id: ProducerId(7),
            producer_epoch: ProducerEpoch(3),
            coordinator_epoch: 11,
            commit,
        }
    }

    #[test]
    fn a_marker_is_a_valid_control_batch_with_kafkas_layout() {
        for commit in [false, true] {
            let b = encode_marker(&marker(commit), LeaderEpoch(5), 1234).unwrap();
            let hs = validate_replicated_batches(&b).unwrap();
            assert_eq!(hs.len(), 1);
            let h = hs[0];
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(h.compression(), 0);
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (ProducerId(7), ProducerEpoch(3), -1)
            );
            assert_eq!((h.records_count, h.last_offset_delta), (1, 0));
            assert_eq!((h.base_timestamp, h.max_timestamp), (1234, 1234));
            assert_eq!(h.partition_leader_epoch, LeaderEpoch(5));
            // The record: key (0, type), value (0, coordinator epoch), bytes as Kafka writes.
            let set = decode_records(&b, &h).unwrap();
            let r = &set.records[0];
            assert_eq!(r.key.as_deref().unwrap(), &[0, 0, 0, u8::from(commit)][..]);
            assert_eq!(r.value.as_deref().unwrap(), &[0, 0, 0, 0, 0, 11][..]);
            assert_eq!(
                parse_control_batch(&b, &h),
                ControlRecord::Marker {
                    commit,
                    coordinator_epoch: 11
                }
            );
            // Clients may not send it.
            assert_eq!(validate_batches(&b, 1 << 20), Err(BatchError::ControlBatch));
        }
    }

    /// A control batch whose single record has `key` and `value`.
    fn control_batch(key: Option<&[u8]>, value: Option<&[u8]>) -> Vec<u8> {
        let mut r = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: None,
            headers: Default::default(),
        };
        r.key = key.map(Bytes::copy_from_slice);
        r.value = value.map(Bytes::copy_from_slice);
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            std::iter::once(&r),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn malformed_control_records_are_unknown_not_panics() {
        type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
        let cases: [KeyValue; 7] = [
            (None, Some(&[0, 0, 0, 0, 0, 1])),
            (Some(&[0, 0, 0]), Some(&[0, 0, 0, 0, 0, 1])),
            (Some(&[0xff, 0xff, 0, 1]), Some(&[0, 0, 0, 0, 0, 1])),
            (Some(&[0, 0, 0, 1]), None),
            (Some(&[0, 0, 0, 1]), Some(&[0, 0, 0])),
            (Some(&[0, 0, 0, 1]), Some(&[0x80, 0, 0, 0, 0, 1])),
            // LEADER_CHANGE: a valid control type that is no transaction marker.
            (Some(&[0, 0, 0, 2]), Some(&[0, 0, 0, 0, 0, 1])),
        ];
        for (key, value) in cases {
            let b = control_batch(key, value);
            let h = BatchHeader::parse(&b).unwrap();
            assert_eq!(
                parse_control_batch(&b, &h),
                ControlRecord::Unknown,
                "{key:?} {value:?}"
            );
        }
        tracing::info!("--- a newer key version is read as version 0, as Kafka does");
        let b = control_batch(Some(&[0, 1, 0, 1, 9]), Some(&[0, 0, 0, 0, 0, 4]));
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(
            parse_control_batch(&b, &h),
            ControlRecord::Marker {
                commit: true,
                coordinator_epoch: 4
            }
        );
        tracing::info!("--- a damaged batch, and one too large to be a marker");
        let mut b = encode_marker(&marker(true), LeaderEpoch(0), 0).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(parse_control_batch(&b, &h), ControlRecord::Unknown);
        let big = control_batch(Some(&[0, 0, 0, 1]), Some(&[0u8; 5000]));
        let h = BatchHeader::parse(&big).unwrap();
        assert_eq!(parse_control_batch(&big, &h), ControlRecord::Unknown);
        let mut lying = encode_marker(&marker(true), LeaderEpoch(0), 0).unwrap();
        lying[57..61].copy_from_slice(&1000i32.to_be_bytes());
        fix_crc(&mut lying);
        let h = BatchHeader::parse(&lying).unwrap();
        assert_eq!(parse_control_batch(&lying, &h), ControlRecord::Unknown);
    }

    #[test]
    fn unreplicated_transactions_leave_as_the_high_watermark_passes_their_marker() {
        let mut u = UnreplicatedTxns::default();
        let t = |first, last| CompletedTxn {
            producer_id: ProducerId(first),
            first_offset: Offset(first),
            last_offset: Offset(last),
            aborted: false,
        };
        u.add(t(5, 20));
        u.add(t(10, 12));
        assert_eq!(u.first(), Some(Offset(5)));
        assert_eq!(u.first_unreplicated_at(Offset(15)), Some(Offset(5)));
        assert_eq!(u.first_unreplicated_at(Offset(21)), None);
        u.on_high_watermark(Offset(13));
        assert_eq!(u.len(), 1);
        u.truncate_to(Offset(20));
        assert_eq!(u.first(), None);
    }
}
