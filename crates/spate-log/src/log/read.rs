//! Reads: fetch planning ([`ReadPlan`]), batch lookup by offset and ListOffsets by timestamp.

use super::{rel, PartitionLog};
use crate::batch::{decode_records, BatchHeader};
use crate::error::LogError;
use crate::segment::{Segment, SegmentIndex, LOG_SUFFIX};
use bytes::Bytes;
use spate_types::disk::DiskFile;
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::Offset;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A read to perform outside the caller's lock: whole batches at `position..position+len`.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    file: Option<Arc<dyn DiskFile>>,
    path: PathBuf,
    position: u64,
    length: usize,
}

impl ReadPlan {
    /// A plan that reads nothing.
    pub fn empty() -> ReadPlan {
        ReadPlan {
            file: None,
            path: PathBuf::new(),
            position: 0,
            length: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads the planned bytes and verifies every batch's framing and CRC. A damaged batch
    /// ends the read: the whole batches before it are returned, and a read starting at it
    /// fails with [`LogError::Corrupt`], so a consumer gets everything up to the damage and
    /// the damage is reported where it is.
    pub fn load(&self) -> Result<Bytes, LogError> {
        let Some(file) = &self.file else {
            return Ok(Bytes::new());
        };
        let mut buf = vec![0u8; self.length];
        file.read_exact_at(&mut buf, self.position)?;
        let mut pos = 0;
        while pos < buf.len() {
            match crate::batch::check_batch(&buf[pos..], BATCH_BYTES_MAX) {
                Ok(h) => pos += h.total_bytes(),
                Err(_) if pos > 0 => {
                    buf.truncate(pos);
                    break;
                }
                Err(e) => {
                    return Err(LogError::Corrupt {
                        path: self.path.clone(),
                        position: self.position,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Bytes::from(buf))
    }
}

/// A stored last offset delta no healthy batch has: negative, or reaching past the end of
/// the batch's segment.
fn delta_damaged(h: &BatchHeader, segment_end: Offset) -> bool {
    h.last_offset_delta < 0 || h.last_offset() >= segment_end
}

impl PartitionLog {
    /// Position and header of the first batch in `seg` whose last offset is ≥ `target`.
    pub(super) fn find_batch(
        &self,
        seg: &Segment,
        idx: &SegmentIndex,
        target: Offset,
    ) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let start = idx.position_for(rel(seg.base, target));
        let mut pos = start;
        while let Some(h) = seg.header_at(pos)? {
            if pos == start && start > 0 && h.base_offset > target {
                // The index points past the target: it cannot be trusted, the log can.
                tracing::warn!(segment = ?seg.path(LOG_SUFFIX), target = target.0,
                    "offset index entry overshoots its target; scanning the segment instead");
                return self.find_batch(seg, &SegmentIndex::default(), target);
            }
            if delta_damaged(&h, self.segment_end(seg)) {
                // Its last offset delta rotted (it is under the batch's CRC, which only a load
                // checks): its offsets run to the next batch's (seeds 180, 2644).
                let next = pos + h.total_bytes() as u64;
                let end = seg
                    .header_at(next)?
                    .map_or(self.segment_end(seg), |n| n.base_offset);
                if target < end {
                    return Ok(Some((pos, h)));
                }
            } else if h.last_offset() >= target {
                return Ok(Some((pos, h)));
            }
            pos += h.total_bytes() as u64;
        }
        Ok(None)
    }

    /// End of the last whole batch at or before `limit`, scanning from batch start `from`.
    fn last_boundary(
        &self,
        seg: &Segment,
        idx: &SegmentIndex,
        from: u64,
        limit: u64,
    ) -> Result<u64, LogError> {
        let mut pos = from.max(idx.batch_start_at_or_before(limit));
        while let Some(h) = seg.header_at(pos)? {
            let end = pos + h.total_bytes() as u64;
            if end > limit {
                break;
            }
            pos = end;
        }
        Ok(pos)
    }

    /// Plans a fetch from `start`: whole batches from the one holding `start`, at most
    /// `max_bytes` of them (but the first whole batch regardless when `min_one_batch`, as
    /// KIP-74 requires), and none whose last offset is at or beyond `max_offset_exclusive`.
    pub fn plan_read(
        &self,
        start: Offset,
        max_bytes: usize,
        max_offset_exclusive: Offset,
        min_one_batch: bool,
    ) -> Result<ReadPlan, LogError> {
        if start < self.log_start || start > self.log_end {
            return Err(self.out_of_range(start));
        }
        let max = max_offset_exclusive.min(self.log_end);
        if start >= max {
            return Ok(ReadPlan::empty());
        }
        let first = self
            .segments
            .range(..=start)
            .next_back()
            .map_or(Offset(i64::MIN), |(b, _)| *b);
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let idx = self.index_of(seg)?;
            let Some((pos, h)) = self.find_batch(seg, idx, start)? else {
                continue;
            };
            if delta_damaged(&h, self.segment_end(seg)) {
                // Its last offset delta rotted (see `find_batch`): refused, as a load of it
                // would be, so that the damage is found and repaired, not read around.
                return Err(LogError::Corrupt {
                    path: seg.path(LOG_SUFFIX),
                    position: pos,
                    reason: format!(
                        "batch at offset {} claims offsets up to {}, past the segment's end",
                        h.base_offset,
                        h.last_offset()
                    ),
                });
            }
            if h.last_offset() >= max {
                return Ok(ReadPlan::empty());
            }
            let hw_limit = if max < self.segment_end(seg) {
                self.find_batch(seg, idx, max)?.map_or(seg.size, |(p, _)| p)
            } else {
                seg.size
            };
            let first_bytes = h.total_bytes();
            let end = if first_bytes > max_bytes {
                if !min_one_batch {
                    return Ok(ReadPlan::empty());
                }
                pos + first_bytes as u64
            } else {
                let limit = hw_limit.min(pos.saturating_add(max_bytes as u64));
                self.last_boundary(seg, idx, pos, limit)?
            };
            return Ok(ReadPlan {
                file: Some(Arc::clone(&seg.file)),
                path: seg.path(LOG_SUFFIX),
                position: pos,
                length: (end - pos) as usize,
            });
        }
        Ok(ReadPlan::empty())
    }

    /// The base offset of the batch stored at byte `position` of the segment file `path` (as
    /// [`LogError::Corrupt`] names a damaged one), if that file is a segment of this log and
    /// the offset there is plausible for it (the base offset is outside the batch's CRC).
    pub fn batch_offset_at(&self, path: &Path, position: u64) -> Option<Offset> {
        let seg = self
            .segments
            .values()
            .find(|s| s.path(LOG_SUFFIX) == path)?;
        let mut base = [0u8; 8];
        seg.file.read_exact_at(&mut base, position).ok()?;
        let offset = Offset(i64::from_be_bytes(base));
        (offset >= seg.base && offset < self.segment_end(seg)).then_some(offset)
    }

    /// ListOffsets by timestamp: the earliest offset at or above the log start whose record
    /// timestamp is ≥ `target_ms`, with that timestamp.
    pub fn offset_for_timestamp(&self, target_ms: i64) -> Result<Option<(Offset, i64)>, LogError> {
        for seg in self.segments.values() {
            if self.segment_end(seg) <= self.log_start {
                continue;
            }
            match self.segment_max_timestamp(seg)? {
                Some(t) if t >= target_ms => {}
                _ => continue,
            }
            let idx = self.index_of(seg)?;
            let mut pos = idx.position_for_timestamp(target_ms);
            while let Some(h) = seg.header_at(pos)? {
                if h.last_offset() >= self.log_start && h.max_timestamp >= target_ms {
                    if let Some(found) = self.find_record(seg, pos, &h, target_ms)? {
                        return Ok(Some(found));
                    }
                }
                pos += h.total_bytes() as u64;
            }
        }
        Ok(None)
    }

    /// Decodes the batch at `pos` and returns its first record at or above the log start with
    /// a timestamp ≥ `target_ms`.
    fn find_record(
        &self,
        seg: &Segment,
        pos: u64,
        h: &BatchHeader,
        target_ms: i64,
    ) -> Result<Option<(Offset, i64)>, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            path: seg.path(LOG_SUFFIX),
            position: pos,
            reason,
        };
        let mut buf = vec![0u8; h.total_bytes()];
        seg.file.read_exact_at(&mut buf, pos)?;
        let set = decode_records(&buf, h).map_err(|e| corrupt(e.to_string()))?;
        // A LogAppendTime batch's records all carry its append time (the decoder reports the
        // producer's CreateTime from the record deltas).
        let timestamp_of = |r: &kafka_protocol::records::Record| {
            if h.is_log_append_time() {
                h.max_timestamp
            } else {
                r.timestamp
            }
        };
        Ok(set
            .records
            .iter()
            .find(|r| timestamp_of(r) >= target_ms && r.offset >= self.log_start.0)
            .map(|r| (Offset(r.offset), timestamp_of(r))))
    }

    /// ListOffsets -3 (KIP-734): the offset and timestamp of the record with the largest
    /// timestamp (the earliest such record if several share it).
    pub fn max_timestamp_offset(&self) -> Result<Option<(Offset, i64)>, LogError> {
        let mut max = None;
        for seg in self.segments.values() {
            if self.segment_end(seg) <= self.log_start {
                continue;
            }
            if let Some(t) = self.segment_max_timestamp(seg)? {
                max = Some(max.map_or(t, |m: i64| m.max(t)));
            }
        }
        match max {
            Some(t) => self.offset_for_timestamp(t),
            None => Ok(None),
        }
    }
}
