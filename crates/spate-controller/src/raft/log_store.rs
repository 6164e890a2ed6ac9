//! Durable Raft log and vote: one append-only journal file, `raft-log`, under the controller dir.
//!
//! Every change to the log store is a CRC-framed JSON [`Record`] appended to the journal; opening
//! replays the journal into memory (entries, vote, committed, last purged id). A torn or corrupt
//! tail (a crash mid-append) is cut off at the last intact frame and fsynced away before Raft
//! starts. `purge` rewrites the journal to just the live state with the temp + fsync + rename +
//! fsync-dir dance, which is also what keeps the file from growing without bound: openraft purges
//! after each snapshot (every `snapshot_every_entries` applied entries).
//!
//! Openraft's storage obligations (`RaftLogStorage`, `RaftLogReader`) and how they are met:
//! - **Vote is durable before `save_vote` returns**: the record is written and fdatasynced first,
//!   and only then made visible to readers.
//! - **Appended entries are readable when `append` returns and durable when the callback fires**:
//!   entries go into memory, then the write + fdatasync runs on the blocking pool, then the
//!   callback is invoked, all before `append` returns.
//! - **All writes are serialized**: openraft calls the `&mut self` methods one at a time and each
//!   awaits its own fsync before returning, so no later write can overtake an earlier one; replay
//!   applies records in file order.
//! - **No holes**: `append` refuses an entry that does not follow the last one; `truncate_after`
//!   only removes a suffix and `purge` only a prefix; replay checks contiguity again.
//! - **`save_committed` is implemented** so a restart re-applies the log up to the last commit
//!   right away. Its record is written without an fsync of its own: losing it only makes the
//!   restart re-apply less, and any later fsynced write makes it durable too.
//! - After a failed write the journal refuses further writes (its tail may be torn); openraft
//!   treats the error as fatal, and the next open truncates the torn tail.
//!
//! The journal is read and written through the [`Disk`] seam, positionally: the store keeps the
//! journal's end itself and writes each record there (no `O_APPEND`).

use super::{io_err, Entry, LogId, TypeConfig, Vote};
use crate::fsio;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use serde::{Deserialize, Serialize};
use spate_types::disk::{Disk, DiskFile, OpenMode};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) const JOURNAL_FILE: &str = "raft-log";

/// One change to the log store, as written to the journal.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Vote(Vote),
    Committed(Option<LogId>),
    Entry(Entry),
    TruncateAfter(Option<LogId>),
    Purge(LogId),
}

/// The log store state, rebuilt from the journal at open.
#[derive(Debug, Default)]
struct MemLog {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl MemLog {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(self.last_purged)
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |id| id.index() + 1)
    }

    fn push(&mut self, entry: Entry) -> io::Result<()> {
        let index = entry.index();
        let expected = self.next_index();
        // An empty log may start anywhere past the purged prefix: openraft builds a log from a
        // snapshot that way. After that, entries must follow on.
        let follows = match self.entries.keys().next_back() {
            Some(_) => index == expected,
            None => index >= expected,
        };
        if !follows {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "log entry {index} does not follow the log end (next index {expected}): a hole"
                ),
            ));
        }
        self.entries.insert(index, entry);
        Ok(())
    }

    fn truncate_after(&mut self, last: Option<&LogId>) {
        let from = last.map_or(0, |id| id.index() + 1);
        self.entries.split_off(&from);
    }

    fn purge(&mut self, upto: LogId) {
        self.entries = self.entries.split_off(&(upto.index() + 1));
        if self.last_purged.as_ref().is_none_or(|p| *p < upto) {
            self.last_purged = Some(upto);
        }
    }

    fn replay(&mut self, record: Record) -> io::Result<()> {
        match record {
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
            Record::Entry(e) => self.push(e)?,
            Record::TruncateAfter(last) => self.truncate_after(last.as_ref()),
            Record::Purge(upto) => self.purge(upto),
        }
        Ok(())
    }

    fn range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end_exclusive = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end_exclusive {
            return Vec::new();
        }
        self.entries
            .range(start..end_exclusive)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The journal that reproduces this state, for compaction.
    fn to_records(&self) -> Vec<Record> {
        let mut records = Vec::with_capacity(self.entries.len() + 3);
        records.extend(self.vote.map(Record::Vote));
        records.extend(self.last_purged.map(Record::Purge));
        records.extend(self.entries.values().cloned().map(Record::Entry));
        records.push(Record::Committed(self.committed));
        records
    }
}

/// The open journal file.
#[derive(Debug)]
struct Journal {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    path: PathBuf,
    /// `None` after a failed write.
    file: Option<Arc<dyn DiskFile>>,
    /// The journal's length: where the next record is written.
    end: u64,
}

impl Journal {
    fn file(&self) -> io::Result<&Arc<dyn DiskFile>> {
        self.file.as_ref().ok_or_else(|| {
            io::Error::other("the raft log journal failed an earlier write; restart the controller")
        })
    }

    fn append(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        let file = self.file()?;
        let result =
            file.write_all_at(buf, self.end)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                self.end += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }

    /// Replaces the journal with `buf` atomically and reopens it for appending.
    fn rewrite(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file()?;
        self.file = None;
        fsio::write_atomic(&*self.disk, &self.path, buf)?;
        let file = self.disk.open(&self.path, OpenMode::ReadWrite)?;
        let end = buf.len() as u64;
        let len = file.len()?;
        if len != end {
            return Err(io::Error::other(format!(
                "{}: {len} bytes after rewriting it with {end}",
                self.path.display()
            )));
        }
        self.file = Some(file);
        self.end = end;
        self.disk.sync_dir(&self.dir)
    }
}

fn encode(records: &[Record]) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for record in records {
        let payload =
            serde_json::to_vec(record).map_err(|e| io_err("encoding a raft log record", e))?;
        fsio::encode_frame(&payload, &mut buf)?;
    }
    Ok(buf)
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| io::Error::other("raft log store lock poisoned by an earlier panic"))
}

/// What opening found, for the operator's log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub(crate) records: usize,
    pub(crate) torn_tail_bytes: u64,
}

/// The Raft log store handed to openraft.
#[derive(Debug)]
pub(crate) struct LogStore {
    mem: Arc<Mutex<MemLog>>,
    journal: Arc<Mutex<Journal>>,
}

/// Read-only view used by openraft's replication tasks.
#[derive(Debug, Clone)]
pub(crate) struct LogReader {
    mem: Arc<Mutex<MemLog>>,
}

impl LogStore {
    /// Opens (creating if needed) the journal in `dir` of `disk`, dropping a torn tail.
    pub(crate) fn open(disk: Arc<dyn Disk>, dir: &Path) -> io::Result<(LogStore, Recovery)> {
        let path = dir.join(JOURNAL_FILE);
        let file = disk.open(&path, OpenMode::ReadWrite)?;
        // Read whole, as replay needs it; compaction (`purge`) is what bounds its size.
        let buf = file.read_all(u64::MAX)?;
        let (frames, intact) = fsio::decode_frames(&buf);
        let mut mem = MemLog::default();
        for (i, payload) in frames.iter().enumerate() {
            let record: Record = serde_json::from_slice(payload).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: record {i} has a valid CRC but cannot be decoded: {e}",
                        path.display()
                    ),
                )
            })?;
            mem.replay(record)?;
        }
        let torn_tail_bytes = (buf.len() - intact) as u64;
        if torn_tail_bytes > 0 {
            file.set_len(intact as u64)?;
            file.sync_all()?;
        }
        disk.sync_dir(dir)?;
        let recovery = Recovery {
            records: frames.len(),
            torn_tail_bytes,
        };
        let journal = Journal {
            disk,
            dir: dir.to_owned(),
            path,
            file: Some(file),
            end: intact as u64,
        };
        Ok((
            LogStore {
                mem: Arc::new(Mutex::new(mem)),
                journal: Arc::new(Mutex::new(journal)),
            },
            recovery,
        ))
    }

    async fn write(&self, records: Vec<Record>, sync: bool) -> io::Result<()> {
        let buf = encode(&records)?;
        let journal = self.journal.clone();
        spate_types::exec::blocking(move || lock(&journal)?.append(&buf, sync))
            .await
            .map_err(|e| io_err("raft log write task", e))?
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(lock(&self.mem)?.range(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.mem)?.vote)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(lock(&self.mem)?.range(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.mem)?.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = lock(&self.mem)?;
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write(vec![Record::Vote(*vote)], true).await?;
        lock(&self.mem)?.vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write(vec![Record::Committed(committed)], false)
            .await?;
        lock(&self.mem)?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(lock(&self.mem)?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records = {
            let mut mem = lock(&self.mem)?;
            for entry in &entries {
                mem.push(entry.clone())?;
            }
            entries.into_iter().map(Record::Entry).collect()
        };
        match self.write(records, true).await {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        lock(&self.mem)?.truncate_after(last_log_id.as_ref());
        self.write(vec![Record::TruncateAfter(last_log_id)], true)
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let buf = {
            let mut mem = lock(&self.mem)?;
            mem.purge(log_id);
            encode(&mem.to_records())?
        };
        let journal = self.journal.clone();
        spate_types::exec::blocking(move || lock(&journal)?.rewrite(&buf))
            .await
            .map_err(|e| io_err("raft log compaction task", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};
    use spate_types::disk::{DiskError, DiskFault, DiskOp, MemoryDisk, OsDisk};

    fn ents(range: std::ops::Range<u64>) -> Vec<Entry> {
        range.map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect()
    }

    fn os() -> Arc<dyn Disk> {
        Arc::new(OsDisk)
    }

    /// A memory disk with the empty directory `/ctl` made durable.
    fn memory() -> (MemoryDisk, PathBuf) {
        let disk = MemoryDisk::default();
        let dir = PathBuf::from("/ctl");
        spate_types::disk::create_dir_all_durable(&disk, &dir).expect("mkdir");
        (disk, dir)
    }

    fn open_on(disk: &MemoryDisk, dir: &Path) -> (LogStore, Recovery) {
        LogStore::open(Arc::new(disk.clone()), dir).expect("open")
    }

    async fn append(store: &mut LogStore, range: std::ops::Range<u64>) -> io::Result<()> {
        store.append(ents(range), IOFlushed::noop()).await
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(..)
            .await
            .expect("entries")
            .iter()
            .map(|e| e.index())
            .collect()
    }

    async fn state(
        store: &mut LogStore,
    ) -> (LogState<TypeConfig>, Option<Vote>, Option<LogId>, Vec<u64>) {
        let log_state = store.get_log_state().await.expect("log state");
        let vote = store.read_vote().await.expect("vote");
        let committed = store.read_committed().await.expect("committed");
        (log_state, vote, committed, indexes(store).await)
    }

    /// Every kind of record, then a reopen (after `crash`, which may lose only what was never
    /// synced: here, nothing, since the last write is an fsynced append).
    async fn every_operation_survives_reopen_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        crash: impl FnOnce(),
    ) {
        let mut store = LogStore::open(disk.clone(), dir).expect("open").0;
        append(&mut store, 0..10).await.expect("append");
        let vote = Vote::new_committed(1, 1);
        store.save_vote(&vote).await.expect("vote");
        store
            .save_committed(Some(log_id::<TypeConfig>(1, 1, 6)))
            .await
            .expect("committed");
        store
            .truncate_after(Some(log_id::<TypeConfig>(1, 1, 7)))
            .await
            .expect("truncate");
        store
            .purge(log_id::<TypeConfig>(1, 1, 3))
            .await
            .expect("purge");
        append(&mut store, 8..12).await.expect("append after purge");
        let before = state(&mut store).await;
        assert_eq!(before.3, (4..12).collect::<Vec<_>>());
        assert_eq!(
            before.0.last_purged_log_id,
            Some(log_id::<TypeConfig>(1, 1, 3))
        );
        assert_eq!(before.1, Some(vote));
        assert_eq!(before.2, Some(log_id::<TypeConfig>(1, 1, 6)));
        drop(store);
        crash();

        let (mut store, recovery) = LogStore::open(disk, dir).expect("reopen");
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(state(&mut store).await, before);
    }

    #[tokio::test]
    async fn every_operation_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        every_operation_survives_reopen_on(os(), dir.path(), || {}).await;
    }

    #[tokio::test]
    async fn every_operation_survives_a_crash_of_a_memory_disk() {
        let (disk, dir) = memory();
        let crashed = disk.clone();
        every_operation_survives_reopen_on(Arc::new(disk), &dir, move || crashed.crash()).await;
    }

    #[tokio::test]
    async fn holes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(os(), dir.path()).expect("open").0;
        append(&mut store, 0..3).await.expect("append");
        let err = append(&mut store, 4..5).await.expect_err("hole");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            indexes(&mut store).await,
            vec![0, 1, 2],
            "refused entries are not visible"
        );
    }

    #[tokio::test]
    async fn every_torn_prefix_reopens_to_a_prefix_of_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(os(), dir.path()).expect("open").0;
        for i in 0..5 {
            append(&mut store, i..i + 1).await.expect("append");
        }
        drop(store);
        let path = dir.path().join(JOURNAL_FILE);
        let full = std::fs::read(&path).expect("read");
        let mut last_len = 0;
        for cut in (0..=full.len()).rev() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let (mut store, recovery) = LogStore::open(os(), dir.path()).expect("reopen torn");
            let indexes = indexes(&mut store).await;
            assert_eq!(
                indexes,
                (0..indexes.len() as u64).collect::<Vec<_>>(),
                "cut at {cut}"
            );
            assert_eq!(
                std::fs::metadata(&path).expect("meta").len(),
                cut as u64 - recovery.torn_tail_bytes
            );
            if cut == full.len() {
                assert_eq!(indexes.len(), 5);
            }
            assert!(indexes.len() <= 5);
            last_len = indexes.len();
        }
        assert_eq!(last_len, 0);
    }

    #[tokio::test]
    async fn a_crash_keeps_synced_records_and_loses_unsynced_ones() {
        let (disk, dir) = memory();
        let (mut store, _) = open_on(&disk, &dir);
        let vote = Vote::new_committed(1, 1);
        store.save_vote(&vote).await.expect("vote");
        append(&mut store, 0..3).await.expect("append");

        tracing::info!("--- a commit mark is written without an fsync of its own");
        store
            .save_committed(Some(log_id::<TypeConfig>(1, 1, 2)))
            .await
            .expect("committed");
        assert!(disk.file_len(&dir.join(JOURNAL_FILE)).expect("len") > 0);
        disk.crash();

        tracing::info!("--- reopen: the fsynced vote and entries are back, the commit mark is not");
        let (mut store, recovery) = open_on(&disk, &dir);
        assert_eq!(
            recovery.torn_tail_bytes, 0,
            "a whole record was lost, not torn"
        );
        assert_eq!(recovery.records, 4);
        let (_, got_vote, committed, indexes) = state(&mut store).await;
        assert_eq!(got_vote, Some(vote));
        assert_eq!(indexes, vec![0, 1, 2]);
        assert_eq!(committed, None, "the unsynced commit mark was lost");

        tracing::info!("--- the next fsynced write makes an earlier unsynced one durable too");
        store
            .save_committed(Some(log_id::<TypeConfig>(1, 1, 2)))
            .await
            .expect("committed");
        append(&mut store, 3..4).await.expect("append");
        disk.crash();
        let (mut store, _) = open_on(&disk, &dir);
        let (_, _, committed, indexes) = state(&mut store).await;
        assert_eq!(indexes, vec![0, 1, 2, 3]);
        assert_eq!(committed, Some(log_id::<TypeConfig>(1, 1, 2)));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_later_appends_land_after_the_intact_records() {
        let (disk, dir) = memory();
        let (mut store, _) = open_on(&disk, &dir);
        append(&mut store, 0..3).await.expect("append");
        let synced_len = disk.file_len(&dir.join(JOURNAL_FILE)).expect("len");
        store
            .save_committed(Some(log_id::<TypeConfig>(1, 1, 2)))
            .await
            .expect("committed");
        let mut unsynced = 0;
        disk.crash_keeping(&mut |path, tail| {
            assert_eq!(path, dir.join(JOURNAL_FILE));
            unsynced = tail;
            tail / 2
        });
        assert!(unsynced > 1, "the commit mark was an unsynced tail");

        tracing::info!("--- reopen drops the half-written frame and fsyncs the cut");
        let (mut store, recovery) = open_on(&disk, &dir);
        assert_eq!(recovery.torn_tail_bytes, unsynced / 2);
        assert_eq!(recovery.records, 3);
        assert_eq!(indexes(&mut store).await, vec![0, 1, 2]);
        assert_eq!(
            disk.file_len(&dir.join(JOURNAL_FILE)).expect("len"),
            synced_len
        );

        tracing::info!("--- appends after the cut are written where it was, and survive a crash");
        append(&mut store, 3..5)
            .await
            .expect("append after the cut");
        disk.crash();
        let (mut store, recovery) = open_on(&disk, &dir);
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(indexes(&mut store).await, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_the_append_and_every_later_write() {
        let (disk, dir) = memory();
        let (mut store, _) = open_on(&disk, &dir);
        append(&mut store, 0..2).await.expect("append");

        tracing::info!("--- the fsync of the next append fails with EIO");
        disk.inject(DiskFault {
            op: DiskOp::Sync,
            under: dir.clone(),
            error: DiskError::Io,
            times: Some(1),
        });
        let err = append(&mut store, 2..3).await.expect_err("EIO");
        assert!(err.to_string().contains("os error 5"), "{err}");

        tracing::info!("--- the fault fired once, yet the journal refuses every later write");
        let err = append(&mut store, 3..4).await.expect_err("refused");
        assert!(err.to_string().contains("failed an earlier write"), "{err}");
        let err = store
            .save_vote(&Vote::new_committed(1, 1))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("failed an earlier write"), "{err}");
        assert_eq!(store.read_vote().await.expect("vote"), None);
        let err = store
            .purge(log_id::<TypeConfig>(1, 1, 0))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("failed an earlier write"), "{err}");

        tracing::info!("--- after a crash, a reopen has the records fsynced before the failure");
        disk.crash();
        let (mut store, recovery) = open_on(&disk, &dir);
        assert_eq!(recovery.torn_tail_bytes, 0);
        assert_eq!(indexes(&mut store).await, vec![0, 1]);
        append(&mut store, 2..3).await.expect("append after reopen");
        assert_eq!(indexes(&mut store).await, vec![0, 1, 2]);
    }
}
