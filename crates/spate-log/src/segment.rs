//! Segments: one log file of record batches plus its sparse offset index and time index, named
//! as Kafka names them (`{base_offset:020}.log`, `.index`, `.timeindex`).
//!
//! Index formats (big endian, appended with plain writes, never preallocated):
//! - offset index: 8-byte entries `(relative base offset of a batch: u32, file position: u32)`,
//!   one whenever `index.interval.bytes` of batches have been written since the last entry.
//!   Keys and positions strictly increase. Lookup: the last entry with key ≤ the target gives
//!   a batch start at or before the batch holding the target.
//! - time index: 12-byte entries `(max timestamp so far: i64, relative offset of the batch that
//!   holds it: u32)`, added with offset index entries when the max timestamp grew, plus a final
//!   entry at roll, so the last entry of a rolled segment is the segment's max timestamp.
//!
//! Invariants: a non-active segment's files were fsynced at roll and are never written again
//! (except an index rebuilt from the log). Its indexes are read lazily on first use and
//! checked for sanity; a bad index is rebuilt from the log rather than trusted.

use crate::batch::{check_batch, BatchHeader, HEADER_BYTES};
use crate::error::LogError;
use spate_types::disk::{self, Disk, DiskFile, OpenMode};
use spate_types::limits::BATCH_BYTES_MAX;
use spate_types::Offset;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
/// An index file larger than this is not one we wrote (segment.index.bytes is an int).
const INDEX_FILE_BYTES_MAX: u64 = i32::MAX as u64;

pub(crate) fn file_name(base: Offset, suffix: &str) -> String {
    format!("{:020}{suffix}", base.0)
}

/// The in-memory form of a segment's two indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<(u32, u32)>,
    pub times: Vec<(i64, u32)>,
}

impl SegmentIndex {
    /// Start of a batch at or before the batch holding relative offset `rel`.
    pub fn position_for(&self, rel: u64) -> u64 {
        let i = self.offsets.partition_point(|e| u64::from(e.0) <= rel);
        if i == 0 {
            0
        } else {
            u64::from(self.offsets[i - 1].1)
        }
    }

    /// The greatest indexed batch start ≤ `pos` (0 if none).
    pub fn batch_start_at_or_before(&self, pos: u64) -> u64 {
        let i = self.offsets.partition_point(|e| u64::from(e.1) <= pos);
        if i == 0 {
            0
        } else {
            u64::from(self.offsets[i - 1].1)
        }
    }

    /// Where to start scanning for the first batch whose max timestamp is ≥ `target`.
    pub fn position_for_timestamp(&self, target: i64) -> u64 {
        let i = self.times.partition_point(|e| e.0 < target);
        if i == 0 {
            0
        } else {
            // Everything up to and including that batch is older than the target.
            self.position_for(u64::from(self.times[i - 1].1) + 1)
        }
    }

    fn encode_offsets(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * OFFSET_ENTRY_BYTES);
        for (r, p) in entries {
            out.extend_from_slice(&r.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    fn encode_times(entries: &[(i64, u32)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
        for (t, r) in entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// Parses and sanity-checks index files against a log of `log_bytes`; `None` if they
    /// cannot be trusted.
    fn decode(offsets: &[u8], times: &[u8], log_bytes: u64) -> Option<SegmentIndex> {
        // (`chunks_exact` rather than `is_multiple_of`, which is newer than our MSRV.)
        if !offsets
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .remainder()
            .is_empty()
            || !times.chunks_exact(TIME_ENTRY_BYTES).remainder().is_empty()
        {
            return None;
        }
        let mut idx = SegmentIndex::default();
        for c in offsets.chunks_exact(OFFSET_ENTRY_BYTES) {
            let r = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let p = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            if u64::from(p) >= log_bytes || idx.offsets.last().is_some_and(|l| l.0 >= r || l.1 >= p)
            {
                return None;
            }
            idx.offsets.push((r, p));
        }
        for c in times.chunks_exact(TIME_ENTRY_BYTES) {
            let mut t = [0u8; 8];
            t.copy_from_slice(&c[..8]);
            let t = i64::from_be_bytes(t);
            let r = u32::from_be_bytes([c[8], c[9], c[10], c[11]]);
            if idx.times.last().is_some_and(|l| l.0 >= t || l.1 > r) {
                return None;
            }
            idx.times.push((t, r));
        }
        // A rolled non-empty segment always ends its time index with its max timestamp.
        if log_bytes > 0 && idx.times.is_empty() {
            return None;
        }
        Some(idx)
    }
}

/// Builds index entries as batches go by; shared by appends, recovery and rebuilds so that all
/// three produce the same index.
#[derive(Clone, Debug)]
pub(crate) struct IndexBuilder {
    interval_bytes: u64,
    bytes_since_entry: u64,
    /// Max timestamp of the segment so far and the relative last offset of its batch.
    pub max_timestamp: Option<(i64, u32)>,
}

impl IndexBuilder {
    pub fn new(interval_bytes: u64) -> Self {
        IndexBuilder {
            interval_bytes,
            bytes_since_entry: 0,
            max_timestamp: None,
        }
    }

    /// Accounts for one batch at `pos`; appends entries to `idx` when due.
    pub fn on_batch(
        &mut self,
        idx: &mut SegmentIndex,
        rel_base: u32,
        rel_last: u32,
        pos: u32,
        size: u64,
        max_ts: i64,
    ) {
        if pos > 0 && self.bytes_since_entry >= self.interval_bytes {
            if idx
                .offsets
                .last()
                .is_none_or(|l| l.0 < rel_base && l.1 < pos)
            {
                idx.offsets.push((rel_base, pos));
            }
            self.push_time_entry(idx);
            self.bytes_since_entry = 0;
        }
        if self.max_timestamp.is_none_or(|(t, _)| max_ts > t) {
            self.max_timestamp = Some((max_ts, rel_last));
        }
        self.bytes_since_entry += size;
    }

    /// Appends the final time entry; called when the segment stops taking writes.
    pub fn finish(&mut self, idx: &mut SegmentIndex) {
        self.push_time_entry(idx);
    }

    fn push_time_entry(&self, idx: &mut SegmentIndex) {
        if let Some((t, r)) = self.max_timestamp {
            if idx.times.last().is_none_or(|l| t > l.0 && r >= l.1) {
                idx.times.push((t, r));
            }
        }
    }
}

/// What a scan of a segment's log found.
pub(crate) struct Scan {
    /// Bytes of well-formed batches from the start of the file.
    pub valid_bytes: u64,
    /// Offset after the last valid batch, `None` if there is none.
    pub next_offset: Option<Offset>,
    pub index: SegmentIndex,
    pub builder: IndexBuilder,
    /// Why the scan stopped before the end of the file.
    pub stopped: Option<String>,
    /// The first batch kept although its CRC fails (see [`scan`]).
    pub damaged: Option<Offset>,
}

/// The base offset of a whole, valid batch at `pos` whose offsets are above those of `h`,
/// the damaged batch before it, if there is one.
fn valid_batch_follows(
    file: &dyn DiskFile,
    size: u64,
    pos: u64,
    h: &BatchHeader,
) -> io::Result<Option<Offset>> {
    if size.saturating_sub(pos) < HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, pos)?;
    let Ok(next) = BatchHeader::parse(&header) else {
        return Ok(None);
    };
    let total = next.total_bytes() as u64;
    if next.batch_length < crate::batch::BATCH_LENGTH_MIN
        || total > BATCH_BYTES_MAX as u64
        || total > size - pos
        || next.base_offset <= h.base_offset
    {
        return Ok(None);
    }
    let mut buf = vec![0u8; total as usize];
    file.read_exact_at(&mut buf, pos)?;
    Ok(check_batch(&buf, BATCH_BYTES_MAX)
        .is_ok()
        .then_some(next.base_offset))
}

/// Reads batches from the start of `file` and stops at the first one that is torn, malformed,
/// (with `verify_crc`) fails its CRC, or whose offsets do not follow the previous one's
/// (contiguously, unless `allow_gaps`: the segment may have been compacted). A whole batch
/// failing its CRC that a valid batch follows is damage at rest, not a torn tail: it is kept,
/// and the first such is [`Scan::damaged`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan(
    file: &dyn DiskFile,
    size: u64,
    base: Offset,
    interval_bytes: u64,
    verify_crc: bool,
    allow_gaps: bool,
    mut on_batch: impl FnMut(&BatchHeader),
) -> io::Result<Scan> {
    let mut s = Scan {
        valid_bytes: 0,
        next_offset: None,
        index: SegmentIndex::default(),
        builder: IndexBuilder::new(interval_bytes),
        stopped: None,
        damaged: None,
    };
    let mut buf = Vec::new();
    let mut header = [0u8; HEADER_BYTES];
    let mut pos = 0u64;
    while pos < size {
        let available = size - pos;
        if available < HEADER_BYTES as u64 {
            s.stopped = Some(format!(
                "{available} trailing bytes, less than a batch header"
            ));
            break;
        }
        file.read_exact_at(&mut header, pos)?;
        let mut h = match BatchHeader::parse(&header) {
            Ok(h) => h,
            Err(e) => {
                s.stopped = Some(e.to_string());
                break;
            }
        };
        let total = h.total_bytes() as u64;
        let framing_ok = h.batch_length >= crate::batch::BATCH_LENGTH_MIN
            && total <= BATCH_BYTES_MAX as u64
            && total <= available
            && h.magic == crate::batch::MAGIC_V2;
        if !framing_ok {
            s.stopped = Some(format!(
                "bad batch framing (length {}, magic {})",
                h.batch_length, h.magic
            ));
            break;
        }
        if verify_crc {
            buf.resize(total as usize, 0);
            file.read_exact_at(&mut buf, pos)?;
            match check_batch(&buf, BATCH_BYTES_MAX) {
                Ok(_) => {}
                // Bits flipped at rest in a whole batch that a whole, valid batch follows: a
                // torn write leaves nothing valid after the damage, so this is no torn tail.
                // Kept, so that recovery does not drop the records after it (which may be
                // committed); reads refuse it, and the replica fetches it again. Its offsets
                // run to the next batch's (its own last offset delta is under the CRC, and
                // may be what rotted), and its timestamps are not indexed.
                Err(e @ crate::batch::BatchError::CrcMismatch { .. }) => {
                    match valid_batch_follows(file, size, pos + total, &h)? {
                        Some(next) => {
                            tracing::error!(position = pos, base_offset = h.base_offset.0, error = %e, "damaged batch inside the segment, followed by valid ones: kept; reads refuse it");
                            s.damaged.get_or_insert(h.base_offset);
                            h = BatchHeader {
                                last_offset_delta: i32::try_from(next.0 - h.base_offset.0 - 1)
                                    .unwrap_or(i32::MAX),
                                max_timestamp: -1,
                                ..h
                            };
                        }
                        None => {
                            s.stopped = Some(e.to_string());
                            break;
                        }
                    }
                }
                Err(e) => {
                    s.stopped = Some(e.to_string());
                    break;
                }
            }
        } else if h.last_offset_delta < 0 {
            s.stopped = Some("negative last offset delta".into());
            break;
        }
        // Appends keep offsets contiguous, which catches a damaged (not CRC-covered) base
        // offset in a torn tail. Compaction leaves gaps (removed records and batches, and a
        // segment whose first records went), so a compacted segment only needs increasing
        // offsets.
        let expected_ok = match (s.next_offset, allow_gaps) {
            (None, false) => h.base_offset == base,
            (Some(next), false) => h.base_offset == next,
            (None, true) => h.base_offset >= base,
            (Some(next), true) => h.base_offset >= next,
        };
        let rel_last = h.last_offset().0 - base.0;
        if !expected_ok || rel_last > i64::from(u32::MAX) || pos + total > u64::from(u32::MAX) {
            s.stopped = Some(format!(
                "batch at offset {} does not continue the log",
                h.base_offset
            ));
            break;
        }
        let rel_base = (h.base_offset.0 - base.0) as u32;
        s.builder.on_batch(
            &mut s.index,
            rel_base,
            rel_last as u32,
            pos as u32,
            total,
            h.max_timestamp,
        );
        on_batch(&h);
        pos += total;
        s.valid_bytes = pos;
        s.next_offset = Some(h.next_offset());
    }
    Ok(s)
}

/// One segment. The active segment's index lives in the log's active state; every other
/// segment's index is loaded on first use into `index`.
pub(crate) struct Segment {
    pub base: Offset,
    pub file: Arc<dyn DiskFile>,
    pub size: u64,
    pub dir: PathBuf,
    index: OnceLock<SegmentIndex>,
}

impl Segment {
    pub fn path(&self, suffix: &str) -> PathBuf {
        self.dir.join(file_name(self.base, suffix))
    }

    /// Creates an empty segment (truncating leftovers of the same name) with empty indexes.
    pub fn create(disk: &dyn Disk, dir: &Path, base: Offset) -> io::Result<(Segment, IndexFiles)> {
        let file = disk.open(&dir.join(file_name(base, LOG_SUFFIX)), OpenMode::Truncate)?;
        let oi = disk.open(&dir.join(file_name(base, INDEX_SUFFIX)), OpenMode::Truncate)?;
        let ti = disk.open(
            &dir.join(file_name(base, TIME_INDEX_SUFFIX)),
            OpenMode::Truncate,
        )?;
        Ok((Segment::from_file(dir, base, file, 0), (oi, ti)))
    }

    pub fn open(disk: &dyn Disk, dir: &Path, base: Offset) -> io::Result<Segment> {
        let file = disk.open(&dir.join(file_name(base, LOG_SUFFIX)), OpenMode::ReadWrite)?;
        let size = file.len()?;
        Ok(Segment::from_file(dir, base, file, size))
    }

    pub(crate) fn from_file(
        dir: &Path,
        base: Offset,
        file: Arc<dyn DiskFile>,
        size: u64,
    ) -> Segment {
        Segment {
            base,
            file,
            size,
            dir: dir.to_path_buf(),
            index: OnceLock::new(),
        }
    }

    /// Whether the index files are missing or visibly shorter than this log needs, checked
    /// from file sizes alone so that start-up reads no index.
    pub fn index_files_suspect(&self, disk: &dyn Disk, interval_bytes: u64) -> io::Result<bool> {
        let len = |suffix| match disk.file_len(&self.path(suffix)) {
            Ok(len) => Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let (Some(oi), Some(ti)) = (len(INDEX_SUFFIX)?, len(TIME_INDEX_SUFFIX)?) else {
            return Ok(true);
        };
        Ok(oi % OFFSET_ENTRY_BYTES as u64 != 0
            || ti % TIME_ENTRY_BYTES as u64 != 0
            || (self.size > 0 && ti == 0)
            || (self.size > interval_bytes && oi == 0))
    }

    /// Replaces the cached index: a segment that stops being active hands over its
    /// in-memory index, and one that becomes active again (truncation) must drop a stale one.
    pub fn set_index(&mut self, idx: Option<SegmentIndex>) {
        self.index = match idx {
            Some(idx) => OnceLock::from(idx),
            None => OnceLock::new(),
        };
    }

    /// The segment's index, loaded (and if need be rebuilt) on first use.
    pub fn index(&self, disk: &dyn Disk, interval_bytes: u64) -> Result<&SegmentIndex, LogError> {
        if let Some(idx) = self.index.get() {
            return Ok(idx);
        }
        let read = |suffix| -> io::Result<Vec<u8>> {
            match disk::read_bounded(disk, &self.path(suffix), INDEX_FILE_BYTES_MAX) {
                Ok(b) => Ok(b.unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        };
        let decoded =
            SegmentIndex::decode(&read(INDEX_SUFFIX)?, &read(TIME_INDEX_SUFFIX)?, self.size);
        let idx = match decoded {
            Some(idx) => idx,
            None => self.rebuild_index(disk, interval_bytes, false)?,
        };
        Ok(self.index.get_or_init(|| idx))
    }

    /// Rebuilds both indexes of a non-active segment from its log and rewrites their files.
    pub fn rebuild_index(
        &self,
        disk: &dyn Disk,
        interval_bytes: u64,
        sync: bool,
    ) -> Result<SegmentIndex, LogError> {
        // Rolled segments may have been compacted.
        let mut s = scan(
            &*self.file,
            self.size,
            self.base,
            interval_bytes,
            false,
            true,
            |_| {},
        )?;
        if let Some(reason) = &s.stopped {
            tracing::warn!(segment = ?self.path(LOG_SUFFIX), valid_bytes = s.valid_bytes, %reason,
                "index rebuild stopped early; reads past this point will report corruption");
        }
        s.builder.finish(&mut s.index);
        write_index_files(disk, &self.dir, self.base, &s.index, sync)?;
        tracing::info!(segment = ?self.path(LOG_SUFFIX), "rebuilt segment indexes");
        Ok(s.index)
    }

    /// Reads and checks the framing of the batch header at `pos`; `None` at the end.
    /// The header of the batch at `pos`, its framing checked (length, magic); the fields under
    /// the CRC (the last offset delta among them) are as stored, possibly damaged: see
    /// `PartitionLog::find_batch`.
    pub fn header_at(&self, pos: u64) -> Result<Option<BatchHeader>, LogError> {
        if pos >= self.size {
            return Ok(None);
        }
        let corrupt = |reason: String| LogError::Corrupt {
            path: self.path(LOG_SUFFIX),
            position: pos,
            reason,
        };
        if self.size - pos < HEADER_BYTES as u64 {
            return Err(corrupt("truncated batch header".into()));
        }
        let mut header = [0u8; HEADER_BYTES];
        self.file.read_exact_at(&mut header, pos)?;
        let h = BatchHeader::parse(&header).map_err(|e| corrupt(e.to_string()))?;
        if h.batch_length < crate::batch::BATCH_LENGTH_MIN
            || h.total_bytes() > BATCH_BYTES_MAX
            || pos + h.total_bytes() as u64 > self.size
            || h.magic != crate::batch::MAGIC_V2
        {
            return Err(corrupt(format!(
                "bad batch framing (length {}, magic {})",
                h.batch_length, h.magic
            )));
        }
        Ok(Some(h))
    }
}

/// An index file pair, open for appends.
pub(crate) type IndexFiles = (Arc<dyn DiskFile>, Arc<dyn DiskFile>);

/// Writes both index files from scratch and returns them open for further appends.
pub(crate) fn write_index_files(
    disk: &dyn Disk,
    dir: &Path,
    base: Offset,
    idx: &SegmentIndex,
    sync: bool,
) -> io::Result<IndexFiles> {
    write_index_pair(
        disk,
        &dir.join(file_name(base, INDEX_SUFFIX)),
        &dir.join(file_name(base, TIME_INDEX_SUFFIX)),
        idx,
        sync,
    )
}

/// Writes an offset index and a time index to the given paths from scratch.
pub(crate) fn write_index_pair(
    disk: &dyn Disk,
    offset_index: &Path,
    time_index: &Path,
    idx: &SegmentIndex,
    sync: bool,
) -> io::Result<IndexFiles> {
    let oi = disk.open(offset_index, OpenMode::Truncate)?;
    oi.write_all_at(&SegmentIndex::encode_offsets(&idx.offsets), 0)?;
    let ti = disk.open(time_index, OpenMode::Truncate)?;
    ti.write_all_at(&SegmentIndex::encode_times(&idx.times), 0)?;
    if sync {
        oi.sync_data()?;
        ti.sync_data()?;
    }
    Ok((oi, ti))
}

/// Appends index entries `from..` of `idx` to the files of the active segment.
pub(crate) fn append_index_entries(
    oi: &dyn DiskFile,
    ti: &dyn DiskFile,
    idx: &SegmentIndex,
    offsets_from: usize,
    times_from: usize,
) -> io::Result<()> {
    if offsets_from < idx.offsets.len() {
        let bytes = SegmentIndex::encode_offsets(&idx.offsets[offsets_from..]);
        oi.write_all_at(&bytes, (offsets_from * OFFSET_ENTRY_BYTES) as u64)?;
    }
    if times_from < idx.times.len() {
        let bytes = SegmentIndex::encode_times(&idx.times[times_from..]);
        ti.write_all_at(&bytes, (times_from * TIME_ENTRY_BYTES) as u64)?;
    }
    Ok(())
}

pub(crate) fn index_bytes(idx: &SegmentIndex) -> (u64, u64) {
    (
        (idx.offsets.len() * OFFSET_ENTRY_BYTES) as u64,
        (idx.times.len() * TIME_ENTRY_BYTES) as u64,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lookups_pick_floor_entries() {
        let idx = SegmentIndex {
            offsets: vec![(10, 100), (20, 200)],
            times: vec![(5, 9), (50, 19), (70, 29)],
        };
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(10), 100);
        assert_eq!(idx.position_for(19), 100);
        assert_eq!(idx.position_for(25), 200);
        assert_eq!(idx.batch_start_at_or_before(150), 100);
        assert_eq!(idx.position_for_timestamp(5), 0);
        assert_eq!(idx.position_for_timestamp(6), 100);
        assert_eq!(idx.position_for_timestamp(60), 200);
    }

    #[test]
    fn decode_rejects_garbage() {
        let good = SegmentIndex {
            offsets: vec![(1, 10)],
            times: vec![(3, 0)],
        };
        let o = SegmentIndex::encode_offsets(&good.offsets);
        let t = SegmentIndex::encode_times(&good.times);
        assert_eq!(SegmentIndex::decode(&o, &t, 100), Some(good));
        assert_eq!(SegmentIndex::decode(&o[..7], &t, 100), None);
        assert_eq!(
            SegmentIndex::decode(&o, &t, 10),
            None,
            "position beyond the log"
        );
        assert_eq!(
            SegmentIndex::decode(&o, &[], 100),
            None,
            "empty time index for a non-empty log"
        );
        let unordered = SegmentIndex::encode_offsets(&[(5, 10), (4, 20)]);
        assert_eq!(SegmentIndex::decode(&unordered, &t, 100), None);
    }
}
