//! The store path: appending the coordinator's records to `__consumer_offsets` partitions.

use super::task::DurableAt;
use super::{TxnProducer, OFFSETS_TOPIC};
use crate::records::{partition_for, OffsetsRecord};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spate_replica::{Partition, ReplicaError};
use spate_types::Offset;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why records could not be stored.
#[derive(Debug)]
pub(crate) struct StoreError {
    pub(crate) reason: String,
    /// The partition is not (or no longer) led here.
    pub(crate) not_leader: bool,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl StoreError {
    fn other(reason: impl std::fmt::Display) -> StoreError {
        StoreError {
            reason: reason.to_string(),
            not_leader: false,
        }
    }
}

/// Appends records to their groups' partitions, one batch per partition, timestamped `now`
/// (wall clock, epoch ms). Returns, per partition written (by number), the last offset to
/// wait on for durability.
pub(super) fn store(
    partitions: &BTreeMap<i32, Arc<Partition>>,
    count: i32,
    records: &[OffsetsRecord],
    now: i64,
    producer: Option<TxnProducer>,
) -> Result<BTreeMap<i32, DurableAt>, StoreError> {
    if records.is_empty() || count <= 0 {
        return Ok(BTreeMap::new());
    }
    let mut by_partition: BTreeMap<i32, Vec<&OffsetsRecord>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(partition_for(r.group(), count))
            .or_default()
            .push(r);
    }
    let mut written = BTreeMap::new();
    for (index, records) in by_partition {
        let Some(partition) = partitions.get(&index) else {
            return Err(StoreError {
                reason: format!("{OFFSETS_TOPIC}-{index} is not led here"),
                not_leader: true,
            });
        };
        let kvs = records.iter().map(|r| r.encode());
        let last = match producer {
            None => append_records(partition, kvs, now)?,
            Some(producer) => append_transactional(partition, kvs, producer, now)?,
        };
        written.insert(index, (partition.clone(), last));
    }
    Ok(written)
}

/// Appends one uncompressed batch of keyed records (an internal topic's), timestamped `now`
/// (wall clock, epoch ms), as the partition's leader. Returns the last offset written.
pub(crate) fn append_records(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    now: i64,
) -> Result<Offset, StoreError> {
    append_batch(partition, records, None, now)
}

/// Appends the records in a transactional batch of `producer`, as Kafka's coordinator writes
/// a TxnOffsetCommit: the partition's log then holds the producer's transaction open until its
/// marker. Only this coordinator writes the producer to an offsets partition (Produce to it is
/// refused), so the next sequence is the one the log expects of it.
fn append_transactional(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    producer: TxnProducer,
    now: i64,
) -> Result<Offset, StoreError> {
    let sequence = partition
        .with_log(|log| {
            Ok(log
                .producer_state()
                .entry(spate_types::ProducerId(producer.producer_id))
                .filter(|e| e.epoch.0 == producer.producer_epoch)
                .and_then(|e| e.batches.back())
                .map_or(0, |b| spate_log::batch::increment_sequence(b.last_seq, 1)))
        })
        .map_err(|e| StoreError {
            not_leader: matches!(e, ReplicaError::NotLeader { .. }),
            reason: e.to_string(),
        })?;
    append_batch(partition, records, Some((producer, sequence)), now)
}

fn append_batch(
    partition: &Partition,
    records: impl Iterator<Item = (Bytes, Option<Bytes>)>,
    producer: Option<(TxnProducer, i32)>,
    now: i64,
) -> Result<Offset, StoreError> {
    let (producer_id, producer_epoch, first_sequence) = producer
        .map_or((-1, -1, -1), |(p, seq)| {
            (p.producer_id, p.producer_epoch, seq)
        });
    let batch: Vec<Record> = records
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: producer.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Consecutive, from -1 without a producer: the encoder starts a new batch at any
            // record whose offset minus sequence differs from the first's (a constant -1 split
            // every record into its own batch, and a commit was then no longer all or
            // nothing). The batch stores only the first record's sequence.
            sequence: if first_sequence < 0 {
                i as i32 - 1
            } else {
                spate_log::batch::increment_sequence(first_sequence, i as i32)
            },
            timestamp: now,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &batch,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(StoreError::other)?;
    let receipt = partition
        .append(&mut buf, false, now)
        .map_err(|e| StoreError {
            not_leader: matches!(e, ReplicaError::NotLeader { .. }),
            reason: e.to_string(),
        })?;
    Ok(receipt.last_offset)
}
