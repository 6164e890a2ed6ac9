//! Invariant 2 on the replicas themselves: after a run, every node's copy of every partition
//! is opened off its disk (as a restart would: recovery included) and compared, offset by
//! offset, with the final log the clients read from the leader up to the high watermark. A
//! replica may be shorter (a follower that fell behind) but never different.

use crate::history::History;
use crate::workload::admin::{DELETED_PREFIX, SCRATCH};
use crate::workload::copier::COPY_TOPIC;
use crate::workload::txns::TXN_TOPIC;
use crate::workload::TOPIC;
use crate::{host_name, NodeParts};
use kafka_protocol::records::RecordBatchDecoder;
use spate_log::{LogConfig, PartitionLog};
use spate_types::Offset;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a replica's log holds: offset → value. A copy on a disk with bits flipped at
/// rest (`corrupted`) is read up to its first damaged batch.
fn read_replica(
    parts: &NodeParts,
    node: usize,
    topic: &str,
    partition: i32,
    corrupted: bool,
) -> Result<Option<BTreeMap<i64, String>>, String> {
    let dir = PathBuf::from(format!("/{}/logs/{topic}-{partition}", host_name(node)));
    let disk: Arc<dyn spate_types::Disk> = Arc::new(parts.disk.clone());
    if disk.read_dir(&dir).is_err() {
        return Ok(None);
    }
    let log = PartitionLog::open(disk, &dir, LogConfig::default(), crate::seams::EPOCH_MS)
        .map_err(|e| format!("node {node} cannot open {}: {e}", dir.display()))?;
    let mut out = BTreeMap::new();
    let mut from = log.log_start_offset();
    while from < log.log_end_offset() {
        let read = log
            .plan_read(from, 1 << 20, log.log_end_offset(), true)
            .and_then(|plan| plan.load());
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(spate_log::LogError::Corrupt { .. }) if corrupted => break,
            Err(e) => return Err(format!("node {node} partition {partition} at {from}: {e}")),
        };
        if bytes.is_empty() {
            break;
        }
        let mut buf = bytes;
        let before = from;
        while !buf.is_empty() {
            let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| {
                format!("node {node} partition {partition}: undecodable batch: {e}")
            })?;
            for r in set.records {
                let value = r
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                out.insert(r.offset, value);
                from = Offset(r.offset + 1).max(from);
            }
        }
        if from == before {
            break;
        }
    }
    Ok(Some(out))
}

/// The violations of invariant 2 between the replicas and the final logs: the workload topic's,
/// the transactional topic's and the copy's (markers and aborted records included) if the seed
/// ran them, and,
/// if the seed ran it, the re-created scratch topic's (whose replicas must also hold
/// nothing written before its deletion).
pub fn compare(parts: &[NodeParts], history: &History) -> Vec<String> {
    let mut out = Vec::new();
    for partition in 0..history.partitions() {
        if let Some(final_log) = history.final_log(partition) {
            compare_partition(parts, TOPIC, partition, final_log, history, &mut out);
        }
    }
    for (partition, log, high_watermark) in history.txn_final_logs() {
        compare_partition(
            parts,
            TXN_TOPIC,
            partition,
            (log, high_watermark),
            history,
            &mut out,
        );
    }
    for (partition, log, high_watermark) in history.copy_final_logs() {
        compare_partition(
            parts,
            COPY_TOPIC,
            partition,
            (log, high_watermark),
            history,
            &mut out,
        );
    }
    if let Some(final_log) = history.scratch_log() {
        compare_partition(parts, SCRATCH, 0, final_log, history, &mut out);
        for (i, part) in parts.iter().enumerate() {
            let node = i + 1;
            let corrupted = history.corrupted.contains(&node);
            if let Ok(Some(replica)) = read_replica(part, node, SCRATCH, 0, corrupted) {
                for (offset, value) in &replica {
                    if value.starts_with(DELETED_PREFIX) {
                        out.push(format!(
                            "node {node} holds {value} at {SCRATCH} offset {offset}, written before the topic was deleted"
                        ));
                    }
                }
            }
        }
    }
    out
}

fn compare_partition(
    parts: &[NodeParts],
    topic: &str,
    partition: i32,
    (log, high_watermark): (&[(i64, String)], i64),
    history: &History,
    out: &mut Vec<String>,
) {
    let expected: BTreeMap<i64, &String> = log.iter().map(|(o, v)| (*o, v)).collect();
    for (i, part) in parts.iter().enumerate() {
        let node = i + 1;
        match read_replica(
            part,
            node,
            topic,
            partition,
            history.corrupted.contains(&node),
        ) {
            Ok(None) => {}
            Ok(Some(replica)) => {
                for (offset, value) in replica.range(..high_watermark) {
                    match expected.get(offset) {
                        Some(v) if *v == value => {}
                        other => out.push(format!(
                            "invariant 2: node {node} holds {value} at {topic}-{partition} offset {offset}, the leader {}",
                            other.map_or("nothing".to_owned(), |v| v.to_string())
                        )),
                    }
                }
            }
            Err(e) => out.push(format!("replica unreadable after the run: {e}")),
        }
    }
}
