//! Transaction index files, Kafka's `TransactionIndex`: `{base_offset:020}.txnindex` beside a
//! segment's `.log`, `.index` and `.timeindex`, listing the aborted transactions whose ABORT
//! marker that segment holds, so that a `read_committed` fetch learns which records to drop.
//!
//! Format: 34-byte big-endian entries `(version: i16 = 0, producer_id: i64, first_offset: i64,
//! last_offset: i64, last_stable_offset: i64)` (see [`AbortedTxn`]), appended in marker order,
//! so last offsets strictly increase within a file.
//!
//! Durability, following the rule of the offset index (see [`crate::log`]):
//! - A rolled segment's file was fsynced at roll and is never written again, except by a
//!   rebuild below and by truncation (which rewrites the new active segment's durably).
//! - The active segment's file is not fsynced by the flusher. It is derived data: recovery
//!   replays producer state from the newest snapshot on and rebuilds every entry from that
//!   snapshot's offset on ([`Rebuild`]). Every snapshot is written only after the active file
//!   was fsynced (roll and flush seal it first), so the entries below a snapshot's offset are
//!   durable when recovery trusts them.
//! - A write that fails leaves its entries pending in memory ([`ActiveTxnIndex`]): reads see
//!   them, and the next append, roll or flush writes them again (a roll or flush fails if it
//!   cannot), as the offset index does with its `index_files_stale`.
//!
//! Limits: a segment of `n` bytes holds at most `n / 61` markers, so its file is read only up
//! to that many entries ([`entries_max`]), in chunks of [`CHUNK_ENTRIES`]; an entry that is not
//! plausible for its segment ends the read (reads report it as corruption, rebuilds drop it and
//! the rest). A torn tail or a file longer than its segment allows is cut at open.

use crate::batch::HEADER_BYTES;
use crate::error::LogError;
use crate::txn::AbortedTxn;
use spate_types::disk::{Disk, DiskFile, OpenMode};
use spate_types::{Offset, ProducerId};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";
pub(crate) const ENTRY_BYTES: usize = 34;
const ENTRY_VERSION: i16 = 0;
/// Entries read or compared per I/O: 17 KiB.
pub(crate) const CHUNK_ENTRIES: usize = 512;

/// The most entries the index of a segment of `log_bytes` can hold: one per marker batch, and
/// a batch is at least a header.
pub(crate) fn entries_max(log_bytes: u64) -> u64 {
    log_bytes / HEADER_BYTES as u64
}

fn encode_into(out: &mut Vec<u8>, e: &AbortedTxn) {
    out.extend_from_slice(&ENTRY_VERSION.to_be_bytes());
    out.extend_from_slice(&e.producer_id.0.to_be_bytes());
    out.extend_from_slice(&e.first_offset.0.to_be_bytes());
    out.extend_from_slice(&e.last_offset.0.to_be_bytes());
    out.extend_from_slice(&e.last_stable_offset.0.to_be_bytes());
}

pub(crate) fn encode(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        encode_into(&mut out, e);
    }
    out
}

/// Decodes one entry (`c` is [`ENTRY_BYTES`] long) and its version.
fn decode(c: &[u8]) -> (i16, AbortedTxn) {
    let i64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[at..at + 8]);
        i64::from_be_bytes(b)
    };
    (
        i16::from_be_bytes([c[0], c[1]]),
        AbortedTxn {
            producer_id: ProducerId(i64_at(2)),
            first_offset: Offset(i64_at(10)),
            last_offset: Offset(i64_at(18)),
            last_stable_offset: Offset(i64_at(26)),
        },
    )
}

/// Why an entry cannot be one this log wrote for a segment holding offsets `[base, end)`.
fn implausible(
    version: i16,
    e: &AbortedTxn,
    base: Offset,
    end: Offset,
    prev_last: Option<Offset>,
) -> Option<String> {
    let why = if version != ENTRY_VERSION {
        format!("version {version}")
    } else if e.first_offset.0 < 0 || e.first_offset > e.last_offset {
        format!(
            "first offset {} after last offset {}",
            e.first_offset, e.last_offset
        )
    } else if e.last_offset < base || e.last_offset >= end {
        format!(
            "marker offset {} outside the segment [{base}, {end})",
            e.last_offset
        )
    } else if prev_last.is_some_and(|p| p >= e.last_offset) {
        format!("marker offset {} does not increase", e.last_offset)
    } else if e.last_stable_offset.0 < 0 || e.last_stable_offset > e.last_offset.next() {
        format!("last stable offset {}", e.last_stable_offset)
    } else {
        return None;
    };
    Some(why)
}

/// How a read of entries ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// Every entry was read.
    Done,
    /// The callback asked to stop.
    Stopped,
    /// Entry number `entry` is not plausible; it and those after it were not passed on.
    Invalid { entry: u64, reason: String },
}

/// Calls `f` with the first `count` entries of `file` in order, [`CHUNK_ENTRIES`] per read,
/// until `f` returns false or an entry is not plausible for a segment holding `[base, end)`.
pub(crate) fn read_entries(
    file: &dyn DiskFile,
    count: u64,
    base: Offset,
    end: Offset,
    mut f: impl FnMut(&AbortedTxn) -> bool,
) -> io::Result<ReadEnd> {
    let mut buf = Vec::new();
    let mut at = 0u64;
    let mut prev_last = None;
    while at < count {
        let n = (count - at).min(CHUNK_ENTRIES as u64) as usize;
        buf.resize(n * ENTRY_BYTES, 0);
        file.read_exact_at(&mut buf, at * ENTRY_BYTES as u64)?;
        for c in buf.chunks_exact(ENTRY_BYTES) {
            let (version, e) = decode(c);
            if let Some(reason) = implausible(version, &e, base, end, prev_last) {
                return Ok(ReadEnd::Invalid { entry: at, reason });
            }
            prev_last = Some(e.last_offset);
            if !f(&e) {
                return Ok(ReadEnd::Stopped);
            }
            at += 1;
        }
    }
    Ok(ReadEnd::Done)
}

/// How many whole entries of a file of `file_bytes` a segment of `log_bytes` may hold.
fn usable_entries(file_bytes: u64, log_bytes: u64) -> u64 {
    (file_bytes / ENTRY_BYTES as u64).min(entries_max(log_bytes))
}

/// The path of the index of the segment at `base` in `dir`.
pub(crate) fn path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(crate::segment::file_name(base, TXN_INDEX_SUFFIX))
}

/// Opens a rolled segment's index for reading with the number of entries to read; `None` if
/// there is no file or it holds no entry (an older segment, or one without aborts).
pub(crate) fn open_rolled(
    disk: &dyn Disk,
    path: &Path,
    log_bytes: u64,
) -> io::Result<Option<(Arc<dyn DiskFile>, u64)>> {
    // A stat first: most segments have no aborts, and a read_committed fetch looks at every
    // segment from its offset on until a search completes.
    let len = match disk.file_len(path) {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let count = usable_entries(len, log_bytes);
    if count == 0 {
        return Ok(None);
    }
    match disk.open(path, OpenMode::Read) {
        Ok(f) => Ok(Some((f, count))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Cuts a torn tail (a partial entry) or a length no segment of `log_bytes` could need from a
/// rolled segment's index, durably. Costs one stat when there is nothing to cut.
pub(crate) fn repair_tail(disk: &dyn Disk, path: &Path, log_bytes: u64) -> io::Result<()> {
    let len = match disk.file_len(path) {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let keep = usable_entries(len, log_bytes) * ENTRY_BYTES as u64;
    if keep != len {
        tracing::warn!(
            ?path,
            file_bytes = len,
            kept_bytes = keep,
            "cutting a torn or oversized transaction index"
        );
        let f = disk.open(path, OpenMode::ReadWrite)?;
        f.set_len(keep)?;
        f.sync_data()?;
    }
    Ok(())
}

/// The active segment's index: entries in the file, and entries whose write failed.
#[derive(Debug)]
pub(crate) struct ActiveTxnIndex {
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    /// Entries written to the file (its first `written * 34` bytes).
    written: u64,
    /// Entries after those whose write failed, oldest first: written again by the next
    /// append, roll or flush. Grows only while writes fail.
    pending: Vec<AbortedTxn>,
}

impl ActiveTxnIndex {
    /// The index of a new, empty segment.
    pub fn create(disk: &dyn Disk, dir: &Path, base: Offset) -> io::Result<ActiveTxnIndex> {
        let path = path(dir, base);
        let file = disk.open(&path, OpenMode::Truncate)?;
        Ok(ActiveTxnIndex::new(file, path, 0))
    }

    /// An index whose file holds exactly `written` entries (rebuilt or checked by the caller).
    pub fn new(file: Arc<dyn DiskFile>, path: PathBuf, written: u64) -> ActiveTxnIndex {
        ActiveTxnIndex {
            file,
            path,
            written,
            pending: Vec::new(),
        }
    }

    /// Adds an entry. A failed write is logged and left pending (see the module docs): the
    /// marker it belongs to is already in the log, so failing the append would invite a
    /// retry of a marker that is not needed.
    pub fn append(&mut self, e: AbortedTxn) {
        self.pending.push(e);
        if let Err(error) = self.write_pending() {
            tracing::warn!(path = ?self.path, %error, pending = self.pending.len(),
                "transaction index write failed; will retry");
        }
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&encode(&self.pending), self.written * ENTRY_BYTES as u64)?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is pending, cuts anything a failed write left past the entries, and
    /// fsyncs: after this every entry is durable (roll, flush, before a snapshot).
    pub fn seal(&mut self) -> io::Result<()> {
        self.write_pending()?;
        let len = self.written * ENTRY_BYTES as u64;
        if self.file.len()? != len {
            self.file.set_len(len)?;
        }
        self.file.sync_data()
    }

    /// Entries, written and pending.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// [`read_entries`] over the written entries, then the pending ones.
    pub fn read(
        &self,
        base: Offset,
        end: Offset,
        mut f: impl FnMut(&AbortedTxn) -> bool,
    ) -> io::Result<ReadEnd> {
        let mut last = None;
        let end_of_file = read_entries(&*self.file, self.written, base, end, |e| {
            last = Some(e.last_offset);
            f(e)
        })?;
        if end_of_file != ReadEnd::Done {
            return Ok(end_of_file);
        }
        for (i, e) in self.pending.iter().enumerate() {
            if let Some(reason) = implausible(ENTRY_VERSION, e, base, end, last) {
                return Ok(ReadEnd::Invalid {
                    entry: self.written + i as u64,
                    reason,
                });
            }
            last = Some(e.last_offset);
            if !f(e) {
                return Ok(ReadEnd::Stopped);
            }
        }
        Ok(ReadEnd::Done)
    }
}

/// Recovery's rewrite of one segment's index from offset `from` on: keeps the file's entries
/// below `from`, then takes the entries replayed from the log ([`Rebuild::push`]). The file is
/// written only where it differs, cut to its entries, and fsynced only if it changed, so an
/// open that finds it right writes nothing. Memory is one chunk, whatever the sizes.
pub(crate) struct Rebuild {
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    /// Entries decided so far: the kept ones, then the replayed ones pushed.
    at: u64,
    /// Entries the file held that this rebuild may compare with.
    file_entries: u64,
    chunk: Vec<AbortedTxn>,
    changed: bool,
    /// The file did not exist: its name is durable only after the directory is fsynced.
    pub created: bool,
}

impl Rebuild {
    /// Opens (creating) the index of the segment at `base` holding `[base, end)` in
    /// `log_bytes`, and keeps its plausible entries whose marker is below `from`.
    pub fn start(
        disk: &dyn Disk,
        dir: &Path,
        base: Offset,
        end: Offset,
        log_bytes: u64,
        from: Offset,
    ) -> io::Result<Rebuild> {
        let path = path(dir, base);
        let created = match disk.file_len(&path) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let file = disk.open(&path, OpenMode::ReadWrite)?;
        let file_entries = usable_entries(file.len()?, log_bytes);
        let mut kept = 0u64;
        let ended = read_entries(&*file, file_entries, base, end, |e| {
            if e.last_offset >= from {
                return false;
            }
            kept += 1;
            true
        })?;
        if let ReadEnd::Invalid { entry, reason } = ended {
            // Past the log end after a crash, or damage: rebuilt from the log from here on if
            // the replay covers them, dropped otherwise.
            tracing::info!(?path, entry, %reason, "transaction index ends early");
        }
        Ok(Rebuild {
            file,
            path,
            at: kept,
            file_entries,
            chunk: Vec::new(),
            changed: false,
            created,
        })
    }

    /// Appends a replayed entry.
    pub fn push(&mut self, e: AbortedTxn) -> io::Result<()> {
        self.chunk.push(e);
        if self.chunk.len() >= CHUNK_ENTRIES {
            self.write_chunk()?;
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let bytes = encode(&self.chunk);
        let pos = self.at * ENTRY_BYTES as u64;
        let n = self.chunk.len() as u64;
        let same = self.at + n <= self.file_entries && {
            let mut old = vec![0u8; bytes.len()];
            self.file.read_exact_at(&mut old, pos)?;
            old == bytes
        };
        if !same {
            self.file.write_all_at(&bytes, pos)?;
            self.changed = true;
        }
        self.at += n;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the rest, cuts the file to its entries and fsyncs it if anything changed.
    /// Returns the index as the active segment's, should this segment be the active one.
    pub fn finish(mut self) -> io::Result<ActiveTxnIndex> {
        self.write_chunk()?;
        let len = self.at * ENTRY_BYTES as u64;
        if self.file.len()? != len {
            self.file.set_len(len)?;
            self.changed = true;
        }
        if self.changed {
            tracing::info!(path = ?self.path, entries = self.at, "rebuilt transaction index");
            self.file.sync_data()?;
        }
        Ok(ActiveTxnIndex::new(self.file, self.path, self.at))
    }
}

/// Appends the first `count` entries of `file`, a rolled segment's index holding `[base, end)`
/// (at `src`, named in errors), to `out` at entry `*out_at`, [`CHUNK_ENTRIES`] per write, for
/// compaction, which carries them into the cleaned segment. An implausible entry fails the
/// pass: the cleaner never copies corruption.
pub(crate) fn copy_entries(
    file: &dyn DiskFile,
    count: u64,
    src: &Path,
    base: Offset,
    end: Offset,
    out: &dyn DiskFile,
    out_at: &mut u64,
) -> Result<(), LogError> {
    let mut chunk = Vec::with_capacity(CHUNK_ENTRIES);
    let mut failed = None;
    let ended = read_entries(file, count, base, end, |e| {
        chunk.push(*e);
        if chunk.len() == CHUNK_ENTRIES {
            if let Err(e) = write_at(out, &chunk, out_at) {
                failed = Some(e);
                return false;
            }
            chunk.clear();
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    check_read(ended, src)?;
    write_at(out, &chunk, out_at)?;
    Ok(())
}

/// Writes `entries` to `out` at entry `*at` and advances `*at` past them.
pub(crate) fn write_at(out: &dyn DiskFile, entries: &[AbortedTxn], at: &mut u64) -> io::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    out.write_all_at(&encode(entries), *at * ENTRY_BYTES as u64)?;
    *at += entries.len() as u64;
    Ok(())
}

/// A read of the index at `path` that met an implausible entry, as [`LogError::Corrupt`].
pub(crate) fn check_read(ended: ReadEnd, path: &Path) -> Result<(), LogError> {
    match ended {
        ReadEnd::Invalid { entry, reason } => Err(LogError::Corrupt {
            path: path.to_path_buf(),
            position: entry * ENTRY_BYTES as u64,
            reason: format!("transaction index entry: {reason}"),
        }),
        ReadEnd::Done | ReadEnd::Stopped => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use spate_types::MemoryDisk;

    fn txn(pid: i64, first: i64, last: i64, lso: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id: ProducerId(pid),
            first_offset: Offset(first),
            last_offset: Offset(last),
            last_stable_offset: Offset(lso),
        }
    }

    #[test]
    fn entries_are_34_big_endian_bytes_as_kafka_writes_them() {
        let bytes = encode(&[txn(0x0102, 3, 9, 10)]);
        assert_eq!(bytes.len(), ENTRY_BYTES);
        assert_eq!(&bytes[..2], &[0, 0], "version 0");
        assert_eq!(&bytes[2..10], &0x0102i64.to_be_bytes());
        assert_eq!(&bytes[10..18], &3i64.to_be_bytes());
        assert_eq!(&bytes[18..26], &9i64.to_be_bytes());
        assert_eq!(&bytes[26..34], &10i64.to_be_bytes());
        assert_eq!(decode(&bytes), (0, txn(0x0102, 3, 9, 10)));
    }

    #[test]
    fn implausible_entries_end_a_read() {
        let d = MemoryDisk::default();
        d.create_dir_all(Path::new("/p")).unwrap();
        let f = d.open(Path::new("/p/x"), OpenMode::Truncate).unwrap();
        let good = [txn(1, 0, 5, 6), txn(2, 3, 8, 9)];
        for (bad, what) in [
            (txn(3, 9, 8, 9), "first after last"),
            (txn(3, 6, 8, 9), "marker not increasing"),
            (txn(3, 6, 100, 9), "marker past the segment"),
            (txn(3, 6, 9, 11), "last stable offset past the marker"),
        ] {
            let mut bytes = encode(&good);
            bytes.extend(encode(&[bad]));
            f.set_len(0).unwrap();
            f.write_all_at(&bytes, 0).unwrap();
            let mut seen = Vec::new();
            let end = read_entries(&*f, 3, Offset(0), Offset(50), |e| {
                seen.push(*e);
                true
            })
            .unwrap();
            assert!(matches!(end, ReadEnd::Invalid { entry: 2, .. }), "{what}");
            assert_eq!(seen, good, "{what}");
        }
        let mut bytes = encode(&good);
        bytes[34] = 0x7f;
        f.write_all_at(&bytes, 0).unwrap();
        assert!(matches!(
            read_entries(&*f, 2, Offset(0), Offset(50), |_| true).unwrap(),
            ReadEnd::Invalid { entry: 1, .. }
        ));
    }

    #[test]
    fn a_rebuild_keeps_entries_below_from_and_writes_nothing_when_the_file_is_right() {
        let d = MemoryDisk::default();
        let dir = Path::new("/p");
        d.create_dir_all(dir).unwrap();
        let p = path(dir, Offset(0));
        let entries = [txn(1, 0, 5, 6), txn(2, 3, 8, 9), txn(3, 9, 12, 13)];
        let f = d.open(&p, OpenMode::Truncate).unwrap();
        f.write_all_at(&encode(&entries), 0).unwrap();
        f.write_all_at(&[1, 2, 3], (3 * ENTRY_BYTES) as u64)
            .unwrap();
        f.sync_data().unwrap();

        tracing::info!("--- from 8: the first entry stays, the replay brings the others back");
        let mut r = Rebuild::start(&d, dir, Offset(0), Offset(20), 10_000, Offset(8)).unwrap();
        assert!(!r.created);
        r.push(entries[1]).unwrap();
        r.push(entries[2]).unwrap();
        let active = r.finish().unwrap();
        assert_eq!(active.len(), 3);
        assert_eq!(
            d.file_len(&p).unwrap(),
            3 * ENTRY_BYTES as u64,
            "torn tail cut"
        );

        tracing::info!("--- the same rebuild again changes nothing");
        let before = d.durable_len(&p);
        let mut r = Rebuild::start(&d, dir, Offset(0), Offset(20), 10_000, Offset(8)).unwrap();
        r.push(entries[1]).unwrap();
        r.push(entries[2]).unwrap();
        r.finish().unwrap();
        assert_eq!(d.durable_len(&p), before);

        tracing::info!("--- from 0 with nothing replayed: emptied, durably");
        Rebuild::start(&d, dir, Offset(0), Offset(20), 10_000, Offset(0))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(d.durable_len(&p), Some(0));
    }

    #[test]
    fn an_absurdly_long_index_is_read_only_as_far_as_its_segment_allows() {
        let d = MemoryDisk::default();
        let dir = Path::new("/p");
        d.create_dir_all(dir).unwrap();
        let p = path(dir, Offset(0));
        let f = d.open(&p, OpenMode::Truncate).unwrap();
        // 10 MB of garbage beside a 200-byte segment (3 batches at most).
        f.set_len(10_000_000).unwrap();
        let (_, count) = open_rolled(&d, &p, 200).unwrap().unwrap();
        assert_eq!(count, 3);
        repair_tail(&d, &p, 200).unwrap();
        assert_eq!(d.file_len(&p).unwrap(), 3 * ENTRY_BYTES as u64);
    }
}
