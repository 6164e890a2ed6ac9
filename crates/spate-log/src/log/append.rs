//! The write paths: the leader's [`PartitionLog::append`], the follower's
//! [`PartitionLog::append_as_follower`], the write both share, and segment rolls.

use super::{rel, Active, AppendInfo, AppendOutcome, PartitionLog, GAPS_CHECKPOINT};
use crate::batch::{
    decode_records, recompress, set_base_offset, set_max_timestamp, set_partition_leader_epoch,
    validate_batches, validate_replicated_batches, BatchError, BatchHeader,
};
use crate::config::TimestampType;
use crate::error::{FollowerAppendError, LogError};
use crate::fsio;
use crate::producer_state::Staged;
use crate::segment::{
    append_index_entries, index_bytes, write_index_files, IndexBuilder, Segment, SegmentIndex,
};
use crate::txn_index::ActiveTxnIndex;
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::{LeaderEpoch, Offset};
use std::sync::Arc;

impl PartitionLog {
    /// `message.timestamp.difference.max.ms`: a batch whose first or largest record timestamp
    /// is further from the broker's clock is refused whole (Kafka: INVALID_TIMESTAMP). The
    /// records between are not decompressed to check them one by one.
    fn check_timestamps(&self, headers: &[BatchHeader], now_ms: i64) -> Result<(), LogError> {
        let max_difference = self.config.message_timestamp_difference_max_ms;
        if max_difference == i64::MAX {
            return Ok(());
        }
        for h in headers {
            for timestamp in [h.base_timestamp, h.max_timestamp] {
                if timestamp.abs_diff(now_ms) > max_difference.unsigned_abs() {
                    return Err(LogError::InvalidTimestamp {
                        timestamp,
                        now_ms,
                        max_difference,
                    });
                }
            }
        }
        Ok(())
    }

    /// Validates, checks producer state, assigns offsets and leader epoch in place, and writes
    /// a produce request's record set. See the module docs for what "written" means.
    ///
    /// With a topic `compression.type` other than `producer`, every batch in another codec is
    /// first re-encoded in the topic's (`batch::recompress`; control batches never are) and
    /// `max.message.bytes` applies to the result too. The set is then no longer the caller's
    /// buffer: the append builds it in a buffer of its own and writes that, leaving `records`
    /// as scratch. Otherwise (the common case) the set is rewritten and written in place, with
    /// no copy. [`AppendInfo::bytes`] is what was stored either way.
    ///
    /// Before offsets are assigned the batches get the topic's timestamp type (Kafka's
    /// `LogValidator`): with `message.timestamp.type=LogAppendTime` every batch's
    /// timestamp-type bit is set and its max timestamp becomes `now_ms` (CRC recomputed); with
    /// CreateTime a batch claiming LogAppendTime has the bit cleared, and
    /// `message.timestamp.difference.max.ms` applies. An idempotent retry is answered with the
    /// original append's offsets and timestamps.
    pub fn append(
        &mut self,
        records: &mut [u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendOutcome, LogError> {
        let mut headers = validate_batches(records, self.config.max_message_bytes)?;
        let log_append_time = self.config.message_timestamp_type == TimestampType::LogAppendTime;
        if !log_append_time {
            self.check_timestamps(&headers, now_ms)?;
        }
        if self.config.compacts() {
            check_keys(records, &headers)?;
        }
        // The common case (the producer's codec is kept) stays in place; only a recompressed
        // set lives in a new buffer, which is what gets stored.
        let mut recompressed: Vec<u8>;
        let records: &mut [u8] = match self.config.compression_type.codec() {
            Some(codec) if headers.iter().any(|h| needs_recompression(h, codec)) => {
                let max = self.config.max_message_bytes.min(BATCH_BYTES_MAX);
                (recompressed, headers) = recompress_set(records, &headers, codec, max)?;
                &mut recompressed
            }
            _ => records,
        };
        stamp_timestamp_type(records, &mut headers, log_append_time, now_ms);
        let mut next = self.log_end;
        let mut placed = Vec::with_capacity(headers.len());
        for h in &headers {
            placed.push((*h, next));
            next = Offset(next.0 + i64::from(h.last_offset_delta) + 1);
        }
        let max_timestamp = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1);
        let staged = match self.producers.check(&placed)? {
            Staged::Duplicate(originals) => {
                let info = AppendInfo {
                    base_offset: originals.first().map_or(self.log_end, |m| m.base_offset),
                    last_offset: originals.last().map_or(self.log_end, |m| m.last_offset),
                    max_timestamp: originals
                        .iter()
                        .map(|m| m.max_timestamp)
                        .max()
                        .unwrap_or(-1),
                    // What the original append answered, whatever the topic's type is now.
                    log_append_time_ms: originals
                        .iter()
                        .filter(|m| m.log_append_time)
                        .map(|m| m.max_timestamp)
                        .max()
                        .unwrap_or(-1),
                    batch_count: originals.len(),
                    bytes: records.len(),
                };
                return Ok(AppendOutcome::Duplicate(info));
            }
            Staged::Append(staged) => staged,
        };
        if self.should_roll(0, records.len() as u64, headers.len(), next, now_ms) {
            self.roll()?;
        }

        let mut pos = 0;
        for (h, base) in &placed {
            set_base_offset(&mut records[pos..], *base);
            set_partition_leader_epoch(&mut records[pos..], leader_epoch);
            pos += h.total_bytes();
        }
        let base_offset = self.log_end;
        self.write_placed(records, &placed, now_ms)?;
        self.epochs.assign(leader_epoch, base_offset);
        self.producers.commit(staged);
        Ok(AppendOutcome::Appended(AppendInfo {
            base_offset,
            last_offset: Offset(next.0 - 1),
            max_timestamp,
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            batch_count: headers.len(),
            bytes: records.len(),
        }))
    }

    /// Appends record batches fetched from the partition leader exactly as they are (Kafka's
    /// `appendAsFollower`): offsets, leader epochs and bytes unchanged. Returns `None` for an
    /// empty record set.
    ///
    /// - Each batch must start at or past the log end and past the batch before it. Gaps are
    ///   fine (the leader's compaction removed those offsets); a batch below is refused with
    ///   [`FollowerAppendError::NonMonotonicAppend`] before anything is written: the fetcher
    ///   must truncate first.
    /// - Batches are checked for framing, magic and CRC up to the hard batch size limit
    ///   ([`validate_replicated_batches`]); timestamps, keys and sequences are not: the leader
    ///   checked them, and a follower must accept whatever its leader accepted.
    /// - The leader epoch cache learns each batch's `partitionLeaderEpoch`. Producer state is
    ///   updated as recovery rebuilds it, with no duplicate refusal, so that this replica
    ///   recognises idempotent retries if it becomes leader.
    /// - Segment rolls, index entries, size accounting, sync targets and durability are those
    ///   of [`PartitionLog::append`]. A batch that needs a new segment starts it at its own base
    ///   offset. The first gap written into an active segment first makes the gaps checkpoint
    ///   cover that segment (one small durable write), so that recovery keeps it.
    ///
    /// On an I/O error a prefix of whole batches may have been written; the log end offset
    /// says where the fetcher resumes.
    pub fn append_as_follower(
        &mut self,
        records: &[u8],
        now_ms: i64,
    ) -> Result<Option<AppendInfo>, FollowerAppendError> {
        if records.is_empty() {
            return Ok(None);
        }
        let headers = validate_replicated_batches(records)?;
        let mut expected = self.log_end;
        for h in &headers {
            if h.base_offset < expected {
                return Err(FollowerAppendError::NonMonotonicAppend {
                    expected_at_least: expected,
                    got: h.base_offset,
                });
            }
            expected = match h
                .base_offset
                .0
                .checked_add(i64::from(h.last_offset_delta) + 1)
            {
                Some(next) => Offset(next),
                None => {
                    return Err(FollowerAppendError::OffsetOverflow {
                        base_offset: h.base_offset,
                        last_offset_delta: h.last_offset_delta,
                    })
                }
            };
        }
        // Batches go to the active segment in runs, one write each; a roll ends a run.
        let (mut run_first, mut run_pos, mut run_bytes) = (0, 0, 0u64);
        let mut pos = 0;
        for (i, h) in headers.iter().enumerate() {
            let size = h.total_bytes() as u64;
            let seg = self.active_segment();
            let roll = if run_bytes == 0 && seg.size == 0 {
                // An empty segment takes any batch whose offsets fit relative to its base.
                rel(seg.base, h.next_offset()) > u64::from(u32::MAX)
            } else {
                self.should_roll(run_bytes, size, i - run_first + 1, h.next_offset(), now_ms)
            };
            if roll {
                self.write_follower_run(&records[run_pos..pos], &headers[run_first..i], now_ms)?;
                self.roll_at(h.base_offset)?;
                (run_first, run_pos, run_bytes) = (i, pos, 0);
            }
            run_bytes += size;
            pos += h.total_bytes();
        }
        self.write_follower_run(&records[run_pos..], &headers[run_first..], now_ms)?;
        let (first, last) = (headers[0], headers[headers.len() - 1]);
        Ok(Some(AppendInfo {
            base_offset: first.base_offset,
            last_offset: last.last_offset(),
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            log_append_time_ms: headers
                .iter()
                .filter(|h| h.is_log_append_time())
                .map(|h| h.max_timestamp)
                .max()
                .unwrap_or(-1),
            batch_count: headers.len(),
            bytes: records.len(),
        }))
    }

    /// Writes one run of leader batches (`headers` describe `bytes`) into the active segment.
    fn write_follower_run(
        &mut self,
        bytes: &[u8],
        headers: &[BatchHeader],
        now_ms: i64,
    ) -> Result<(), LogError> {
        if headers.is_empty() {
            return Ok(());
        }
        let placed: Vec<(BatchHeader, Offset)> =
            headers.iter().map(|h| (*h, h.base_offset)).collect();
        self.write_placed(bytes, &placed, now_ms)?;
        self.apply_replicated(bytes, headers);
        Ok(())
    }

    /// Writes whole batches (`placed`: each header with the base offset it is stored at, in
    /// order, matching `bytes`) at the end of the active segment, adds their index entries and
    /// moves the log end past the last one. All or nothing: on error nothing is accounted and
    /// the file is cut back.
    pub(super) fn write_placed(
        &mut self,
        bytes: &[u8],
        placed: &[(BatchHeader, Offset)],
        now_ms: i64,
    ) -> Result<(), LogError> {
        let Some((last_h, last_base)) = placed.last() else {
            return Ok(());
        };
        let next = Offset(last_base.0 + i64::from(last_h.last_offset_delta) + 1);
        let (seg_base, seg_pos) = {
            let seg = self.active_segment();
            (seg.base, seg.size)
        };
        debug_assert!(placed.iter().all(|(_, b)| *b >= seg_base));
        // The recovery scan expects the segment's first batch at its base and each next one
        // right after the last. A follower copying a compacted leader, or any append after a
        // truncation into a gap, breaks that: make the segment's gaps legitimate first, durably,
        // or recovery would cut the segment at the gap.
        let mut expected = self.active.batches_end.unwrap_or(seg_base);
        let gapped = placed.iter().any(|(h, base)| {
            let gap = *base != expected;
            expected = Offset(base.0 + i64::from(h.last_offset_delta) + 1);
            gap
        });
        if gapped && seg_base >= self.cleaner_checkpoint.max(self.gaps_below) {
            let mark = seg_base.next();
            fsio::write_offset_checkpoint(&*self.disk, &self.dir, GAPS_CHECKPOINT, mark)?;
            self.gaps_below = mark;
            tracing::debug!(dir = ?self.dir, segment = seg_base.0, "active segment may hold offset gaps");
        }
        let file = Arc::clone(&self.active_segment().file);
        if let Err(e) = file.write_all_at(bytes, seg_pos) {
            // Leave no partial batch behind for the next append to follow.
            let _ = file.set_len(seg_pos);
            return Err(e.into());
        }

        let (offsets_before, times_before) = (
            self.active.index.offsets.len(),
            self.active.index.times.len(),
        );
        let mut batch_pos = seg_pos;
        for (h, base) in placed {
            let size = h.total_bytes() as u64;
            let last = Offset(base.0 + i64::from(h.last_offset_delta));
            self.active.builder.on_batch(
                &mut self.active.index,
                rel(seg_base, *base) as u32,
                rel(seg_base, last) as u32,
                batch_pos as u32,
                size,
                h.max_timestamp,
            );
            batch_pos += size;
        }
        if let Err(e) = append_index_entries(
            &*self.active.offset_index,
            &*self.active.time_index,
            &self.active.index,
            offsets_before,
            times_before,
        ) {
            // The batches are written; failing the append now would invite a duplicate retry.
            tracing::warn!(dir = ?self.dir, error = %e, "index write failed; will rewrite the index files");
            self.active.index_files_stale = true;
        }
        if let Some(seg) = self.segments.get_mut(&seg_base) {
            seg.size += bytes.len() as u64;
        }
        self.size_bytes += bytes.len() as u64;
        self.log_end = next;
        self.active.batches_end = Some(next);
        self.active.roll_base_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Whether `bytes` more, in `batches` batches ending before `next`, need a new segment.
    /// `pending` bytes (in batches counted in `batches`) are about to be written to the active
    /// segment ahead of them. An empty segment never rolls.
    pub(super) fn should_roll(
        &self,
        pending: u64,
        bytes: u64,
        batches: usize,
        next: Offset,
        now_ms: i64,
    ) -> bool {
        let seg = self.active_segment();
        let used = seg.size + pending;
        if used == 0 {
            return false;
        }
        let (oi, ti) = index_bytes(&self.active.index);
        let c = &self.config;
        used + bytes > c.segment_bytes
            || self
                .active
                .roll_base_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= c.max_segment_ms())
            || oi + 8 * batches as u64 > c.segment_index_bytes
            || ti + 12 * batches as u64 > c.segment_index_bytes
            || rel(seg.base, next) > u64::from(u32::MAX)
            || used + bytes > u64::from(u32::MAX)
    }

    /// Closes the active segment (fsyncing its files) and starts a new one at the log end.
    pub(super) fn roll(&mut self) -> Result<(), LogError> {
        self.roll_at(self.log_end)
    }

    /// Makes the active segment's log, index files and the epochs below it durable before
    /// it stops being active; `times_before` is how many time entries its file held.
    fn seal_active(&mut self, base: Offset, times_before: usize) -> Result<(), LogError> {
        let index = &self.active.index;
        if self.active.index_files_stale {
            write_index_files(&*self.disk, &self.dir, base, index, false)?;
        } else {
            append_index_entries(
                &*self.active.offset_index,
                &*self.active.time_index,
                index,
                index.offsets.len(),
                times_before,
            )?;
        }
        self.active_segment().file.sync_data()?;
        self.active.offset_index.sync_data()?;
        self.active.time_index.sync_data()?;
        // The roll writes a producer snapshot at the new segment's base: the transaction
        // index entries below it must be durable first (see `crate::txn_index`).
        self.active.txn_index.seal()?;
        // Recovery rebuilds only the active segment's epochs (from its batches); every epoch
        // starting below it must be in the checkpoint before the segment stops being active.
        if self.epochs.is_dirty() {
            self.epochs.write_checkpoint(&*self.disk, &self.dir)?;
        }
        Ok(())
    }

    /// Closes the active segment (fsyncing its files) and starts a new one at `new_base`, at
    /// or past the log end. A follower rolls past the log end when the leader's next batch
    /// lies beyond a compaction gap: the log end moves to `new_base` at once, since no offset
    /// in between exists (recovery would say the same of the empty new segment).
    fn roll_at(&mut self, new_base: Offset) -> Result<(), LogError> {
        assert!(
            new_base >= self.log_end && new_base > self.active_segment().base,
            "roll to {new_base} behind the log end {} or the active segment {}",
            self.log_end,
            self.active_segment().base
        );
        let old_base = self.active_segment().base;
        let times_before = self.active.index.times.len();
        // Idempotent: a retried roll does not add the final time entry twice.
        self.active.builder.finish(&mut self.active.index);
        let sealed = self.seal_active(old_base, times_before).and_then(|()| {
            let created = Segment::create(&*self.disk, &self.dir, new_base)?;
            let txn_index = ActiveTxnIndex::create(&*self.disk, &self.dir, new_base)?;
            self.disk.sync_dir(&self.dir)?;
            Ok((created, txn_index))
        });
        let ((seg, (oi, ti)), txn_index) = match sealed {
            Ok(created) => created,
            Err(e) => {
                // The active segment stays active with its whole index; the index files may
                // hold part of this attempt's writes, so the next roll or flush rewrites them.
                self.active.index_files_stale = true;
                return Err(e);
            }
        };
        let index = std::mem::take(&mut self.active.index);
        if let Some(old) = self.segments.get_mut(&old_base) {
            old.set_index(Some(index));
        }
        self.segments.insert(new_base, seg);
        self.active = Active {
            index: SegmentIndex::default(),
            builder: IndexBuilder::new(self.config.index_interval_bytes),
            offset_index: oi,
            time_index: ti,
            roll_base_ms: None,
            index_files_stale: false,
            batches_end: None,
            txn_index,
        };
        self.log_end = new_base;
        self.flushed = self.flushed.max(new_base);
        self.producers
            .write_snapshot(&*self.disk, &self.dir, new_base)?;
        self.producer_snapshot_at = Some(new_base);
        tracing::debug!(dir = ?self.dir, segment = new_base.0, "rolled segment");
        Ok(())
    }
}

fn needs_recompression(h: &BatchHeader, codec: i16) -> bool {
    !h.is_control() && h.compression() != codec
}

/// The record set with every batch not in `codec` recompressed (see [`crate::batch::recompress`])
/// and the others copied, with the new headers. A recompressed batch larger than `max_bytes`
/// (`max.message.bytes`) is refused, as Kafka does.
fn recompress_set(
    records: &[u8],
    headers: &[BatchHeader],
    codec: i16,
    max_bytes: usize,
) -> Result<(Vec<u8>, Vec<BatchHeader>), BatchError> {
    let mut out = Vec::with_capacity(records.len());
    let mut out_headers = Vec::with_capacity(headers.len());
    let mut pos = 0;
    for h in headers {
        let end = pos + h.total_bytes();
        let batch = &records[pos..end];
        if needs_recompression(h, codec) {
            let encoded = recompress(batch, h, codec)?;
            if encoded.len() > max_bytes {
                return Err(BatchError::TooLarge {
                    size: encoded.len(),
                    max: max_bytes,
                });
            }
            out_headers.push(BatchHeader::parse(&encoded)?);
            out.extend_from_slice(&encoded);
        } else {
            out_headers.push(*h);
            out.extend_from_slice(batch);
        }
        pos = end;
    }
    Ok((out, out_headers))
}

/// Gives every batch of a validated record set the topic's timestamp type (see
/// [`PartitionLog::append`]), keeping `headers` in step with the bytes. Control batches are
/// left alone (clients cannot send them; the rule is Kafka's).
fn stamp_timestamp_type(
    records: &mut [u8],
    headers: &mut [BatchHeader],
    log_append_time: bool,
    now_ms: i64,
) {
    let mut pos = 0;
    for h in headers.iter_mut() {
        let end = pos + h.total_bytes();
        if !h.is_control() && (log_append_time || h.is_log_append_time()) {
            let max_timestamp = if log_append_time {
                now_ms
            } else {
                h.max_timestamp
            };
            set_max_timestamp(&mut records[pos..end], log_append_time, max_timestamp);
            *h = BatchHeader::parse(&records[pos..end]).expect("the batch was just validated");
        }
        pos = end;
    }
}

/// Compacted topics refuse records without a key (Kafka: INVALID_RECORD), checked record by
/// record, which for a compressed batch means decompressing it.
fn check_keys(records: &[u8], headers: &[BatchHeader]) -> Result<(), BatchError> {
    let mut pos = 0;
    let mut index = 0i32;
    let mut keyless = Vec::new();
    for h in headers {
        let end = pos + h.total_bytes();
        let set = decode_records(&records[pos..end], h)?;
        for r in &set.records {
            if r.key.is_none() {
                keyless.push(index);
            }
            index = index.saturating_add(1);
        }
        pos = end;
    }
    if keyless.is_empty() {
        Ok(())
    } else {
        Err(BatchError::MissingKey { records: keyless })
    }
}
