//! One partition replica: append, read, durability and its flusher task.

use spate_log::{
    AppendOutcome, CompactionLimits, CompactionOutcome, LogConfig, LogError, PartitionLog,
    PlannedCompaction, ReadPlan,
};
use spate_types::{LeaderEpoch, Offset, TopicPartition};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// When the flusher fsyncs.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Unflushed `acks=1` data is fsynced at most this long after it was written
    /// (`log.flush.interval.ms`).
    pub interval: Duration,
    /// `acks=all` waits for the fsync covering its batch (the default). `false` is the relaxed,
    /// opt-in mode (`acks.all.fsync=false`): acknowledged once in the operating system.
    pub fsync_acks_all: bool,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1000),
            fsync_acks_all: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("partition {0} is closed")]
    Closed(TopicPartition),
    #[error("fsync of {tp} failed: {reason}")]
    Storage { tp: TopicPartition, reason: String },
}

/// What a fetch of one partition sees: the bytes to send and the offsets to report.
pub struct PartitionRead {
    pub plan: ReadPlan,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
}

pub struct Partition {
    tp: TopicPartition,
    log: Mutex<Option<PartitionLog>>,
    leader_epoch: LeaderEpoch,
    policy: FlushPolicy,
    high_watermark: watch::Sender<Offset>,
    /// Everything below this offset is fsynced. An error is sticky: after a failed fsync the
    /// partition cannot promise durability any more.
    flushed: watch::Sender<Result<Offset, String>>,
    flush_now: Notify,
    dirty: Notify,
    closing: watch::Sender<bool>,
}

impl Partition {
    /// Opens (recovering if needed) the log in `dir` and starts the flusher task.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn open(
        dir: &Path,
        tp: TopicPartition,
        config: LogConfig,
        leader_epoch: LeaderEpoch,
        policy: FlushPolicy,
        now_ms: i64,
    ) -> Result<Arc<Partition>, ReplicaError> {
        let log = PartitionLog::open(dir, config, now_ms)?;
        let leo = log.log_end_offset();
        let flushed = log.flushed_offset();
        let partition = Arc::new(Partition {
            tp,
            log: Mutex::new(Some(log)),
            leader_epoch,
            policy,
            high_watermark: watch::Sender::new(leo),
            flushed: watch::Sender::new(Ok(flushed)),
            flush_now: Notify::new(),
            dirty: Notify::new(),
            closing: watch::Sender::new(false),
        });
        tokio::spawn(flusher(
            Arc::downgrade(&partition),
            partition.closing.subscribe(),
        ));
        Ok(partition)
    }

    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<PartitionLog>>, ReplicaError> {
        // A poisoned lock means a bug panicked mid-update; the log's own invariants are
        // checked on reopen, so surfacing it as closed is the safe answer.
        self.log
            .lock()
            .map_err(|_| ReplicaError::Closed(self.tp.clone()))
    }

    /// Runs `f` on the open log.
    pub fn with_log<R>(
        &self,
        f: impl FnOnce(&mut PartitionLog) -> Result<R, LogError>,
    ) -> Result<R, ReplicaError> {
        let mut guard = self.lock()?;
        let log = guard
            .as_mut()
            .ok_or_else(|| ReplicaError::Closed(self.tp.clone()))?;
        Ok(f(log)?)
    }

    /// Appends a produce request's record set. When this returns the bytes are in the
    /// operating system (they survive `kill -9`); call [`Partition::wait_durable`] for fsync.
    pub fn append(&self, records: &mut [u8], now_ms: i64) -> Result<AppendOutcome, ReplicaError> {
        let (outcome, leo) = self.with_log(|log| {
            let outcome = log.append(records, self.leader_epoch, now_ms)?;
            Ok((outcome, log.log_end_offset()))
        })?;
        // Single replica: the high watermark is the log end offset.
        self.high_watermark.send_if_modified(|hw| {
            let moved = leo > *hw;
            if moved {
                *hw = leo;
            }
            moved
        });
        self.dirty.notify_one();
        Ok(outcome)
    }

    /// Waits until every offset up to and including `last_offset` is fsynced (or, in relaxed
    /// mode, returns at once). Cancel safe.
    pub async fn wait_durable(&self, last_offset: Offset) -> Result<(), ReplicaError> {
        if !self.policy.fsync_acks_all {
            return Ok(());
        }
        let mut rx = self.flushed.subscribe();
        self.flush_now.notify_one();
        let result = rx
            .wait_for(|flushed| match flushed {
                Ok(offset) => *offset > last_offset,
                Err(_) => true,
            })
            .await;
        match result.as_deref() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(ReplicaError::Storage {
                tp: self.tp.clone(),
                reason: reason.clone(),
            }),
            Err(_) => Err(ReplicaError::Closed(self.tp.clone())),
        }
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// Changes when the high watermark moves (for fetches waiting in long poll).
    pub fn subscribe_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// Plans a read of committed data (below the high watermark) from `start`. The disk read
    /// itself happens in [`ReadPlan::load`], outside the partition lock.
    pub fn read(
        &self,
        start: Offset,
        max_bytes: usize,
        min_one_batch: bool,
    ) -> Result<PartitionRead, ReplicaError> {
        let high_watermark = self.high_watermark();
        self.with_log(|log| {
            let plan = log.plan_read(start, max_bytes, high_watermark, min_one_batch)?;
            Ok(PartitionRead {
                plan,
                high_watermark,
                log_start_offset: log.log_start_offset(),
            })
        })
    }

    pub fn log_start_offset(&self) -> Result<Offset, ReplicaError> {
        self.with_log(|log| Ok(log.log_start_offset()))
    }

    pub fn set_config(&self, config: LogConfig) -> Result<(), ReplicaError> {
        self.with_log(|log| {
            log.set_config(config);
            Ok(())
        })
    }

    /// One compaction pass (see `spate_log::compaction`). Blocking: run it on a blocking
    /// thread. The lock is held only to plan (index lookups) and to swap the cleaned files in
    /// (renames and one directory fsync); reading, deduplicating and writing the cleaned
    /// segments happen without it, so produce and fetch continue meanwhile. Only committed
    /// data (below the high watermark) is compacted.
    pub fn compact(
        &self,
        now_ms: i64,
        limits: CompactionLimits,
    ) -> Result<CompactionOutcome, ReplicaError> {
        let high_watermark = self.high_watermark();
        let plan = match self.with_log(|log| log.plan_compaction(now_ms, high_watermark, limits))? {
            PlannedCompaction::Plan(plan) => plan,
            PlannedCompaction::Skip(reason) => return Ok(CompactionOutcome::Skipped(reason)),
        };
        let prepared = plan.execute()?;
        let commit = self.with_log(|log| log.commit_compaction(prepared))?;
        Ok(commit.persist()?)
    }

    /// Fsyncs everything and stops the flusher; later calls get [`ReplicaError::Closed`].
    pub fn close(&self) -> Result<Option<PartitionLog>, ReplicaError> {
        let mut guard = self.lock()?;
        let taken = guard.take();
        drop(guard);
        let _ = self.closing.send(true);
        if let Some(mut log) = taken {
            log.flush()?;
            let flushed = log.flushed_offset();
            let _ = self.flushed.send_replace(Ok(flushed));
            return Ok(Some(log));
        }
        Ok(None)
    }

    /// One flush pass: fsyncs what was written so far, outside the lock, then publishes the
    /// log's flushed offset. The log may also have become durable further without this pass
    /// (a segment roll fsyncs the outgoing segment, e.g. when retention rolls an expired active
    /// segment), so the offset is always read back from the log rather than taken from the
    /// sync target.
    async fn flush_once(&self) -> Result<(), String> {
        let target = match self.lock() {
            Ok(guard) => guard.as_ref().and_then(|log| log.sync_target()),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(target) = target {
            let offset = target.offset;
            tokio::task::spawn_blocking(move || target.sync())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if let Ok(mut guard) = self.lock() {
                if let Some(log) = guard.as_mut() {
                    log.mark_flushed(offset);
                }
            }
        }
        let flushed = match self.lock() {
            Ok(guard) => guard.as_ref().map(|log| log.flushed_offset()),
            Err(e) => return Err(e.to_string()),
        };
        if let Some(offset) = flushed {
            self.flushed.send_if_modified(|flushed| match flushed {
                Ok(current) if offset > *current => {
                    *current = offset;
                    true
                }
                _ => false,
            });
        }
        Ok(())
    }
}

/// The flusher: fsyncs at once when an `acks=all` producer waits, otherwise within the flush
/// interval of the first unflushed write. Sleeps (no CPU) while nothing is dirty.
async fn flusher(partition: std::sync::Weak<Partition>, mut closing: watch::Receiver<bool>) {
    loop {
        let Some(p) = partition.upgrade() else { return };
        let interval = p.policy.interval;
        // Wait for either an urgent flush request or the first dirty write.
        let urgent = tokio::select! {
            _ = p.flush_now.notified() => true,
            _ = p.dirty.notified() => false,
            _ = closing.changed() => return,
        };
        if !urgent {
            tokio::select! {
                _ = p.flush_now.notified() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = closing.changed() => return,
            }
        }
        if let Err(reason) = p.flush_once().await {
            tracing::error!(partition = %p.tp, %reason, "fsync failed; acks=all writes to this partition will fail");
            let _ = p.flushed.send_replace(Err(reason));
            return;
        }
        drop(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One uncompressed v2 batch with a single record holding `value`.
    fn batch(value: &[u8], timestamp_ms: i64) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        }
        let mut record = Vec::new();
        record.push(0); // attributes
        varint(&mut record, 0); // timestamp delta
        varint(&mut record, 0); // offset delta
        varint(&mut record, -1); // null key
        varint(&mut record, value.len() as i64);
        record.extend_from_slice(value);
        varint(&mut record, 0); // headers
        let mut records = Vec::new();
        varint(&mut records, record.len() as i64);
        records.extend_from_slice(&record);

        let mut after_crc = Vec::new();
        after_crc.extend_from_slice(&0i16.to_be_bytes()); // attributes
        after_crc.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
        after_crc.extend_from_slice(&timestamp_ms.to_be_bytes());
        after_crc.extend_from_slice(&timestamp_ms.to_be_bytes());
        after_crc.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
        after_crc.extend_from_slice(&(-1i16).to_be_bytes());
        after_crc.extend_from_slice(&(-1i32).to_be_bytes());
        after_crc.extend_from_slice(&1i32.to_be_bytes()); // records count
        after_crc.extend_from_slice(&records);
        let mut out = Vec::new();
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((4 + 1 + 4 + after_crc.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(2);
        out.extend_from_slice(&crc32c::crc32c(&after_crc).to_be_bytes());
        out.extend_from_slice(&after_crc);
        out
    }

    fn open(dir: &Path, config: LogConfig) -> Arc<Partition> {
        Partition::open(
            dir,
            TopicPartition::new("t", 0),
            config,
            LeaderEpoch(0),
            FlushPolicy::default(),
            0,
        )
        .expect("open")
    }

    #[tokio::test]
    async fn acks_all_waiters_share_fsyncs_and_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), LogConfig::default());
        let mut waits = Vec::new();
        for i in 0..20 {
            let mut b = batch(format!("v{i}").as_bytes(), 1_000);
            let AppendOutcome::Appended(info) = p.append(&mut b, 1_000).expect("append") else {
                panic!("not a duplicate")
            };
            waits.push(info.last_offset);
        }
        assert_eq!(p.high_watermark(), Offset(20));
        let all = join_in_order(waits.iter().map(|o| p.wait_durable(*o)).collect()).await;
        assert!(all.iter().all(Result::is_ok));
        assert!(p.with_log(|l| Ok(l.flushed_offset())).expect("log") >= Offset(20));
    }

    #[tokio::test]
    async fn acks_all_waiter_completes_when_retention_rolls_its_segment() {
        // Retention rolls an expired active segment, which fsyncs it: the waiter for an
        // offset in it must be released even though no sync target remains afterwards.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            retention_ms: 10,
            ..LogConfig::default()
        };
        let p = open(dir.path(), config);
        let mut b = batch(b"old", 1_000);
        let AppendOutcome::Appended(info) = p.append(&mut b, 1_000).expect("append") else {
            panic!("not a duplicate")
        };
        p.with_log(|log| log.apply_retention(1_000_000))
            .expect("retention");
        tokio::time::timeout(Duration::from_secs(10), p.wait_durable(info.last_offset))
            .await
            .expect("waiter released, not stuck until timeout")
            .expect("durable");
    }

    #[tokio::test]
    async fn closed_partition_refuses_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), LogConfig::default());
        p.close().expect("close");
        let mut b = batch(b"late", 1_000);
        assert!(matches!(
            p.append(&mut b, 1_000),
            Err(ReplicaError::Closed(_))
        ));
    }

    /// One uncompressed single-record batch with a key.
    fn keyed(key: &[u8], value: &[u8]) -> Vec<u8> {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_000,
            key: Some(bytes::Bytes::copy_from_slice(key)),
            value: Some(bytes::Bytes::copy_from_slice(value)),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        buf.to_vec()
    }

    #[tokio::test]
    async fn compaction_runs_beside_appends_and_keeps_reads_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = LogConfig {
            cleanup_policy: "compact".into(),
            segment_ms: 1,
            min_cleanable_dirty_ratio: 0.0,
            ..LogConfig::default()
        };
        let p = open(dir.path(), config);
        for (i, v) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            let now = 1_000 + i as i64 * 10;
            p.append(&mut keyed(b"k", *v), now).expect("append");
        }
        // A read planned before the pass still loads the old bytes after it.
        let before = p.read(Offset(0), 1 << 20, true).expect("read");
        let p2 = p.clone();
        let outcome =
            tokio::task::spawn_blocking(move || p2.compact(2_000, CompactionLimits::default()))
                .await
                .expect("join")
                .expect("compact");
        assert!(matches!(outcome, CompactionOutcome::Compacted(s) if s.records_removed == 2));
        assert!(!before.plan.load().expect("old plan").is_empty());
        p.append(&mut keyed(b"k", b"e"), 3_000)
            .expect("append after");
        let read = p.read(Offset(0), 1 << 20, true).expect("read");
        let batches = spate_log::validate_batches(&read.plan.load().expect("load"), 1 << 20);
        let first = batches.expect("batches")[0];
        assert_eq!(
            first.base_offset,
            Offset(2),
            "offsets 0 and 1 were superseded"
        );
        assert_eq!(p.high_watermark(), Offset(5));
    }

    async fn join_in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut out = Vec::with_capacity(futures.len());
        for f in futures {
            out.push(f.await);
        }
        out
    }
}
