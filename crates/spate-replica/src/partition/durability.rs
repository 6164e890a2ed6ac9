//! Durability: the flusher task and its fsyncs, fsync and I/O failures, and the high watermark
//! checkpoint.

use super::{
    FlushFailure, Partition, ReplicaError, HIGH_WATERMARK_FILE, HIGH_WATERMARK_FILE_BYTES_MAX,
};
use crate::core::Event;
use spate_types::disk::{self, Disk};
use spate_types::{Offset, TopicPartition};
use std::path::Path;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

impl Partition {
    /// Asks the flusher to fsync now: a consumer is waiting for records past the high
    /// watermark that `acks=0/1` producers wrote (they become visible once durable).
    pub fn flush_soon(&self) {
        self.flush_now.notify_one();
    }

    /// An I/O error in a truncation (which deletes segments, cuts a file, syncs it and rewrites
    /// indexes) may leave the log half cut, on disk and in memory: the node halts and recovers
    /// from what its disk holds, as a failed fsync does (Kafka takes the log directory
    /// offline). A follower's append that fails to write (a full disk) changes nothing and is
    /// retried; a diverged batch or a closed replica leaves the log as it was.
    pub(super) fn io_failed(&self, error: &ReplicaError, what: &str) {
        if let ReplicaError::Log(spate_log::LogError::Io(e)) = error {
            tracing::error!(partition = %self.tp, error = %e, "{what} failed on an I/O error");
            self.health
                .fail(format!("{what} of partition {} failed: {e}", self.tp));
        }
    }

    /// A failed fsync: sticky for this partition (its `acks=all` waiters fail, its fetcher
    /// stops), and reported to the node, which stops (see
    /// [`StorageHealth`](crate::health::StorageHealth)).
    pub(super) fn fsync_failed(&self, failure: &FlushFailure, what: &str) {
        tracing::error!(partition = %self.tp, %failure, "{what}");
        let _ = self.flushed.send_replace(Err(failure.clone()));
        self.health
            .fail(format!("fsync of partition {} failed: {failure}", self.tp));
    }

    /// Raises the published flushed offset to `offset` (never lowers it, never clears a
    /// failure).
    pub(super) fn publish_flushed(&self, offset: Offset) {
        self.flushed.send_if_modified(|flushed| match flushed {
            Ok(current) if offset > *current => {
                *current = offset;
                true
            }
            _ => false,
        });
    }

    /// Writes the published high watermark to `high-watermark` if it moved since the last
    /// checkpoint (temp + fsync + rename + fsync dir). Blocking.
    pub fn checkpoint_high_watermark(&self) -> std::io::Result<()> {
        if !self.checkpoint_due.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let hw = self.high_watermark();
        let result = disk::write_atomic(
            &*self.disk,
            &self.dir,
            HIGH_WATERMARK_FILE,
            format!("{}\n", hw.0).as_bytes(),
        );
        if result.is_err() {
            self.checkpoint_due.store(true, Ordering::Relaxed);
        }
        result
    }

    /// One flush pass: fsyncs what was written so far, outside the lock, then publishes the
    /// log's flushed offset and tells the core. The log may also have become durable further
    /// without this pass (a segment roll fsyncs the outgoing segment), so the offset is always
    /// read back from the log rather than taken from the sync target.
    async fn flush_once(&self) -> Result<(), FlushFailure> {
        let failure = |e: &dyn std::fmt::Display| FlushFailure(e.to_string());
        let target = match self.lock() {
            Ok(guard) => guard.as_ref().and_then(|log| log.sync_target()),
            Err(e) => return Err(failure(&e)),
        };
        if let Some(target) = target {
            let offset = target.offset;
            spate_types::exec::blocking(move || target.sync())
                .await
                .map_err(|e| failure(&e))?
                .map_err(|e| failure(&e))?;
            if let Ok(mut guard) = self.lock() {
                if let Some(log) = guard.as_mut() {
                    log.mark_flushed(offset);
                }
            }
        }
        let flushed = match self.lock() {
            Ok(guard) => guard.as_ref().map(|log| log.flushed_offset()),
            Err(e) => return Err(failure(&e)),
        };
        if let Some(offset) = flushed {
            self.publish_flushed(offset);
            if let Ok(mut core) = self.core() {
                // Commands from a flush are only high watermark moves, handled in `step`.
                let _ = self.step(&mut core, Event::Flushed { flushed: offset });
            }
        }
        Ok(())
    }
}

/// The checkpointed high watermark, `None` when absent or unreadable (with a warning).
pub(super) fn checkpoint_or(disk: &dyn Disk, dir: &Path, tp: &TopicPartition) -> Option<Offset> {
    read_high_watermark(disk, dir).unwrap_or_else(|e| {
        tracing::warn!(partition = %tp, error = %e, "unreadable high watermark checkpoint; starting from the log start");
        None
    })
}

/// Reads the high watermark checkpoint, if there is one.
fn read_high_watermark(disk: &dyn Disk, dir: &Path) -> std::io::Result<Option<Offset>> {
    read_offset_file(disk, dir, HIGH_WATERMARK_FILE)
}

/// An offset written by `disk::write_atomic` as text in `dir/name`; `None` if there is no file.
fn read_offset_file(disk: &dyn Disk, dir: &Path, name: &str) -> std::io::Result<Option<Offset>> {
    let invalid = |e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    };
    let path = dir.join(name);
    let Some(bytes) = disk::read_bounded(disk, &path, HIGH_WATERMARK_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    std::str::from_utf8(&bytes)
        .map_err(|e| invalid(&e))?
        .trim()
        .parse::<i64>()
        .map(|v| Some(Offset(v)))
        .map_err(|e| invalid(&e))
}

/// The flusher: fsyncs at once when an `acks=all` producer waits, otherwise within the flush
/// interval of the first unflushed write. Sleeps (no CPU) while nothing is dirty.
pub(super) async fn flusher(
    partition: std::sync::Weak<Partition>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let Some(p) = partition.upgrade() else { return };
        let interval = p.policy.interval;
        // Wait for either an urgent flush request or the first dirty write.
        // Both selects are biased (deterministic under simulation): closing first, as it ends
        // the loop. An urgent request is taken before a dirty write: either way the pass
        // fsyncs everything written, so a dirty write it passes over is flushed by it.
        let urgent = tokio::select! {
            biased;
            _ = closing.changed() => return,
            _ = p.flush_now.notified() => true,
            _ = p.dirty.notified() => false,
        };
        if !urgent {
            tokio::select! {
                biased;
                _ = closing.changed() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = p.flush_now.notified() => {}
            }
        }
        if let Err(failure) = p.flush_once().await {
            p.fsync_failed(
                &failure,
                "fsync failed; acks=all writes to this partition fail",
            );
            return;
        }
        drop(p);
    }
}
