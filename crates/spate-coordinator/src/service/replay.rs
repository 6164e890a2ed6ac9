//! Replaying an offsets partition: its records and transaction markers, in log order.

use crate::records::OffsetsRecord;
use bytes::Bytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use spate_log::BatchHeader;
use spate_replica::Partition;

/// Bytes read per step when replaying an offsets partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// What replaying an offsets partition finds, in log order.
pub(super) enum Replayed {
    /// A record to apply.
    Record(OffsetsRecord),
    /// A record of a producer's transaction (TxnOffsetCommit), held until its marker.
    Transactional(i64, OffsetsRecord),
    /// A producer's transaction ended here: commit (true) or abort.
    Marker(i64, bool),
}

/// Feeds everything of the offsets partition, in offset order, to `apply`.
pub(super) fn replay(partition: &Partition, mut apply: impl FnMut(Replayed)) -> Result<(), String> {
    replay_records(partition, |header, record| {
        if header.is_control() {
            if let Some(commit) = record.key.as_deref().and_then(control_commit) {
                apply(Replayed::Marker(header.producer_id.0, commit));
            }
            return;
        }
        let Some(key) = record.key else { return };
        match OffsetsRecord::decode(&key, record.value.as_deref()) {
            Ok(r) if header.is_transactional() => {
                apply(Replayed::Transactional(header.producer_id.0, r))
            }
            Ok(r) => apply(Replayed::Record(r)),
            Err(e) => {
                tracing::warn!(offset = record.offset, error = %e, "skipping offsets record")
            }
        }
    })
}

/// A transaction marker's key (Kafka's control record key: version, type 0 = ABORT,
/// 1 = COMMIT): whether it commits. `None` for another control record.
fn control_commit(key: &[u8]) -> Option<bool> {
    match key {
        [0, 0, 0, 0] => Some(false),
        [0, 0, 0, 1] => Some(true),
        _ => None,
    }
}

/// Feeds every record of the partition (control records included), in offset order, with
/// its batch's header, to `apply`.
pub(crate) fn replay_records(
    partition: &Partition,
    mut apply: impl FnMut(&BatchHeader, Record),
) -> Result<(), String> {
    let mut next = partition.log_start_offset().map_err(|e| e.to_string())?;
    let end = partition.log_end_offset().map_err(|e| e.to_string())?;
    while next < end {
        let read = partition
            .read_to_log_end(next, REPLAY_READ_BYTES)
            .map_err(|e| e.to_string())?;
        if read.plan.is_empty() {
            break;
        }
        let bytes = read.plan.load().map_err(|e| e.to_string())?;
        let mut pos = 0;
        while pos < bytes.len() {
            let header = BatchHeader::parse(&bytes[pos..]).map_err(|e| e.to_string())?;
            let len = header.total_bytes();
            let mut one: Bytes = bytes.slice(pos..pos + len);
            pos += len;
            next = next.max(header.next_offset());
            let set = RecordBatchDecoder::decode(&mut one).map_err(|e| e.to_string())?;
            for record in set.records {
                apply(&header, record);
            }
        }
    }
    Ok(())
}
