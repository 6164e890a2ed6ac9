//! The disk seam: how a component reads, writes and makes durable its files.
//!
//! A component that keeps data on disk holds an `Arc<dyn Disk>` (in [`crate::Seams`]) instead of
//! calling `std::fs` directly. In production that is [`OsDisk`]; tests and the deterministic
//! simulator use [`MemoryDisk`], an in-process file system that remembers what was made durable
//! and what was not, so that a simulated crash loses exactly what a power cut may lose:
//!
//! - file contents written since the file's last `sync_data`/`sync_all` (optionally keeping a
//!   torn prefix of an unsynced tail, [`MemoryDisk::crash_keeping`]);
//! - directory entries (creations, renames, removals) made since the directory's last
//!   [`Disk::sync_dir`] — as on Linux, syncing a new file does not make its name durable.
//!
//! It also injects faults: ENOSPC and EIO on chosen operations under a path
//! ([`MemoryDisk::inject`]), a capacity that makes writes fail with ENOSPC
//! ([`MemoryDisk::set_capacity`]), and latent corruption of stored bytes
//! ([`MemoryDisk::corrupt`]).
//!
//! Files are positional (`read_at`/`write_at`, as `std::os::unix::fs::FileExt`): no shared
//! cursor, so one open file serves concurrent readers and one writer without a lock.
//!
//! Durable-write helpers built on the seam ([`write_atomic`], [`read_bounded`]) are the one
//! place in the tree that replaces small files.

use std::any::Any;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

mod memory;
mod os;

pub use memory::{DiskError, DiskFault, DiskOp, MemoryDisk};
pub use os::OsDisk;

/// How [`Disk::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read only (NotFound if absent).
    Read,
    /// Read and write, created empty if absent, kept as it is if present.
    ReadWrite,
    /// Read and write, created if absent, emptied if present.
    Truncate,
}

/// One entry of [`Disk::read_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The file name (not the whole path).
    pub name: String,
    pub is_dir: bool,
}

/// A held advisory lock ([`Disk::try_lock`]); released when dropped.
pub type DiskLock = Box<dyn Any + Send + Sync>;

/// Files and directories.
pub trait Disk: Send + Sync + fmt::Debug {
    /// Opens the file at `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>>;
    /// The length of the file at `path` (NotFound if absent), without opening it.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// The entries of `dir`, sorted by name. Names that are not UTF-8 are left out (Spate
    /// never writes one).
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Renames a file or directory, replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive advisory lock on `path` (creating the file), as `flock` does:
    /// `Ok(None)` if someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<DiskLock>>;
}

/// An open file. Positional reads and writes; `&self` everywhere so that one `Arc` is shared by
/// readers and the writer.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer (0 at the end) past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`, extending the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    fn len(&self) -> io::Result<u64>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the contents durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the contents and the metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// When the contents last changed, in milliseconds since the Unix epoch.
    fn modified_ms(&self) -> io::Result<i64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset` (UnexpectedEof if the file ends first).
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the whole file, refusing one longer than `max_bytes` rather than allocating for it.
    fn read_all(&self, max_bytes: u64) -> io::Result<Vec<u8>> {
        let len = self.len()?;
        if len > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the file is {len} bytes, more than the {max_bytes} allowed"),
            ));
        }
        let mut buf = vec![0; len as usize];
        self.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// Replaces `dir/name` with `contents` durably: a temp file, fsynced, renamed over the target,
/// and `dir` fsynced, so a crash leaves either the old or the new content, never a mix.
pub fn write_atomic(disk: &dyn Disk, dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let f = disk.open(&tmp, OpenMode::Truncate)?;
        f.write_all_at(contents, 0)?;
        f.sync_all()?;
    }
    disk.rename(&tmp, &dir.join(name))?;
    disk.sync_dir(dir)
}

/// Creates `dir` and its missing parents so that they survive a crash: once the whole path
/// exists, the parent of every directory created here is fsynced, top down (on Linux a new
/// directory's name is durable only once its parent is synced). An existing `dir` costs one
/// lookup and no fsync.
pub fn create_dir_all_durable(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    // Each missing directory's parent, deepest first. The root (no parent) always exists; a
    // relative path's first component lives in `.`.
    let mut parents = Vec::new();
    let mut at = dir;
    while let Some(parent) = at.parent().filter(|_| !at.as_os_str().is_empty()) {
        // `file_len` answers for directories too: the cheapest "does it exist".
        match disk.file_len(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        parents.push(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        });
        at = parent;
    }
    if parents.is_empty() {
        return Ok(());
    }
    disk.create_dir_all(dir)?;
    for parent in parents.iter().rev() {
        disk.sync_dir(parent)?;
    }
    Ok(())
}

/// Reads a small file, refusing one larger than `max_bytes` rather than allocating for it.
/// `Ok(None)` if the file does not exist.
pub fn read_bounded(disk: &dyn Disk, path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match disk.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    f.read_all(max_bytes)
        .map(Some)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::path::PathBuf;

    fn disk() -> MemoryDisk {
        MemoryDisk::new(Arc::new(ManualClock::new(1_000)))
    }

    fn read(d: &dyn Disk, path: &str) -> Option<Vec<u8>> {
        read_bounded(d, Path::new(path), 1 << 20).expect("read")
    }

    /// The same script on both disks gives the same answers.
    #[test]
    fn memory_disk_behaves_as_the_os_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mem = disk();
        for (d, root) in [
            (&OsDisk as &dyn Disk, tmp.path().to_path_buf()),
            (&mem, PathBuf::from("/r")),
        ] {
            d.create_dir_all(&root.join("a/b")).expect("mkdir");
            let f = d
                .open(&root.join("a/b/f"), OpenMode::ReadWrite)
                .expect("open");
            f.write_all_at(b"hello", 0).expect("write");
            f.write_all_at(b"J", 7).expect("write past the end");
            assert_eq!(f.len().expect("len"), 8);
            let mut buf = [9u8; 8];
            f.read_exact_at(&mut buf, 0).expect("read");
            assert_eq!(&buf, b"hello\0\0J");
            assert_eq!(f.read_at(&mut buf, 8).expect("read at end"), 0);
            let err = f.read_exact_at(&mut buf, 4).expect_err("short");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            f.set_len(2).expect("cut");
            assert_eq!(d.file_len(&root.join("a/b/f")).expect("len"), 2);
            d.rename(&root.join("a/b/f"), &root.join("a/g"))
                .expect("rename");
            let names: Vec<_> = d.read_dir(&root.join("a")).expect("ls");
            assert_eq!(
                names,
                vec![
                    DirEntry {
                        name: "b".into(),
                        is_dir: true
                    },
                    DirEntry {
                        name: "g".into(),
                        is_dir: false
                    },
                ]
            );
            // The open file follows the rename.
            f.write_all_at(b"!", 2).expect("write");
            assert_eq!(
                read(d, root.join("a/g").to_str().expect("utf8")).as_deref(),
                Some(&b"he!"[..])
            );
            let no_dir = d.read_dir(&root.join("nope")).expect_err("absent");
            assert_eq!(no_dir.kind(), io::ErrorKind::NotFound);
            let missing = d
                .open(&root.join("a/nope"), OpenMode::Read)
                .expect_err("absent");
            assert_eq!(missing.kind(), io::ErrorKind::NotFound);
            let no_parent = d
                .open(&root.join("x/y"), OpenMode::ReadWrite)
                .expect_err("no dir");
            assert_eq!(no_parent.kind(), io::ErrorKind::NotFound);
            let ro = d.open(&root.join("a/g"), OpenMode::Read).expect("open ro");
            assert!(ro.write_at(b"x", 0).is_err());
            write_atomic(d, &root.join("a"), "c", b"v1").expect("atomic");
            write_atomic(d, &root.join("a"), "c", b"v2").expect("atomic");
            assert_eq!(
                read(d, root.join("a/c").to_str().expect("utf8")).as_deref(),
                Some(&b"v2"[..])
            );
            let t = d
                .open(&root.join("a/c"), OpenMode::Truncate)
                .expect("truncate");
            assert!(t.is_empty().expect("len"));
            let held = d.try_lock(&root.join("lock")).expect("lock").expect("free");
            // flock locks belong to an open file description: a second open in the same
            // process is refused as another process would be.
            assert!(d.try_lock(&root.join("lock")).expect("lock").is_none());
            drop(held);
            assert!(d.try_lock(&root.join("lock")).expect("lock").is_some());
            d.remove_file(&root.join("a/g")).expect("rm");
            d.remove_dir_all(&root.join("a")).expect("rm -r");
            assert_eq!(
                d.read_dir(&root).expect("ls").len(),
                1,
                "only the lock file is left"
            );
        }
    }

    /// A sync copies only what changed since the last one: checked against the obvious model
    /// (a sync keeps a copy of the whole file) over random writes (overwrites, appends, writes
    /// past the end), cuts, extensions, syncs and crashes.
    #[test]
    fn a_sync_keeps_exactly_what_the_file_holds() {
        let d = disk();
        d.sync_dir(Path::new("/")).expect("sync root");
        let path = Path::new("/f");
        let mut f = d.open(path, OpenMode::ReadWrite).expect("open");
        d.sync_dir(Path::new("/")).expect("sync name");
        let (mut data, mut durable) = (Vec::<u8>::new(), Vec::<u8>::new());
        for step in 0..5_000u64 {
            let r = crate::clock::splitmix64(step, 11);
            let (at, len) = ((r >> 8) % 64, 1 + (r >> 16) % 16);
            match r % 6 {
                0 | 1 => {
                    let bytes: Vec<u8> = (0..len).map(|i| (r >> 24) as u8 ^ i as u8).collect();
                    f.write_all_at(&bytes, at).expect("write");
                    let end = (at + len) as usize;
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[at as usize..end].copy_from_slice(&bytes);
                }
                2 => {
                    f.set_len(at).expect("set_len");
                    data.resize(at as usize, 0);
                }
                3 | 4 => {
                    f.sync_data().expect("sync");
                    durable = data.clone();
                }
                _ => {
                    d.crash();
                    data = durable.clone();
                    assert_eq!(read(&d, "/f").as_deref(), Some(&durable[..]), "step {step}");
                    f = d.open(path, OpenMode::ReadWrite).expect("reopen");
                }
            }
        }
    }

    #[test]
    fn a_crash_keeps_only_what_was_synced() {
        let d = disk();
        let dir = Path::new("/data");
        d.create_dir_all(dir).expect("mkdir");
        d.sync_dir(Path::new("/")).expect("sync root");
        let f = d.open(&dir.join("log"), OpenMode::ReadWrite).expect("open");
        f.write_all_at(b"synced", 0).expect("write");
        f.sync_data().expect("sync");
        // The file's data is durable but its name is not yet.
        d.crash();
        assert_eq!(d.read_dir(dir).expect("ls"), Vec::new());
        assert!(
            f.read_at(&mut [0; 1], 0).is_err(),
            "handles from before the crash fail"
        );

        let f = d.open(&dir.join("log"), OpenMode::ReadWrite).expect("open");
        f.write_all_at(b"synced", 0).expect("write");
        f.sync_data().expect("sync");
        d.sync_dir(dir).expect("sync dir");
        f.write_all_at(b"+lost", 6).expect("write");
        d.rename(&dir.join("log"), &dir.join("renamed"))
            .expect("rename");
        d.crash();
        assert_eq!(read(&d, "/data/log").as_deref(), Some(&b"synced"[..]));
        assert_eq!(read(&d, "/data/renamed"), None, "the rename was not synced");

        // A torn tail: part of an unsynced append survives.
        let f = d.open(&dir.join("log"), OpenMode::ReadWrite).expect("open");
        f.write_all_at(b"123456", 6).expect("write");
        d.crash_keeping(&mut |path, tail| {
            assert_eq!((path, tail), (Path::new("/data/log"), 6));
            2
        });
        assert_eq!(read(&d, "/data/log").as_deref(), Some(&b"synced12"[..]));

        // A directory made durable by its parent's sync, with a file its own sync made durable.
        write_atomic(&d, dir, "checkpoint", b"7").expect("atomic");
        d.create_dir_all(&dir.join("sub")).expect("mkdir");
        write_atomic(&d, &dir.join("sub"), "f", b"x").expect("atomic");
        d.crash();
        assert_eq!(read(&d, "/data/checkpoint").as_deref(), Some(&b"7"[..]));
        assert!(
            d.read_dir(&dir.join("sub")).is_err(),
            "sub's own entry was never synced"
        );
        d.create_dir_all(&dir.join("sub")).expect("mkdir again");
        assert_eq!(
            read(&d, "/data/sub/f"),
            None,
            "a file is lost with its directory"
        );
    }

    #[test]
    fn directories_created_durably_survive_a_crash_and_plain_ones_do_not() {
        let d = disk();
        create_dir_all_durable(&d, Path::new("/data/logs/t-0")).expect("mkdir");
        d.crash();
        assert_eq!(
            d.file_len(Path::new("/data/logs/t-0"))
                .expect("all levels durable"),
            0
        );

        d.create_dir_all(Path::new("/data/logs/t-1"))
            .expect("mkdir");
        create_dir_all_durable(&d, Path::new("/data/logs/t-1")).expect("exists: no-op");
        d.crash();
        assert!(
            d.file_len(Path::new("/data/logs/t-1")).is_err(),
            "never synced"
        );
        assert_eq!(
            d.file_len(Path::new("/")).expect("the root always exists"),
            0
        );

        let tmp = tempfile::tempdir().expect("tempdir");
        create_dir_all_durable(&OsDisk, &tmp.path().join("a/b")).expect("mkdir on the OS");
        assert!(tmp.path().join("a/b").is_dir());
    }

    #[test]
    fn injected_faults_and_a_full_disk_fail_with_the_os_errors() {
        let d = disk();
        d.create_dir_all(Path::new("/n1/logs")).expect("mkdir");
        let f = d
            .open(Path::new("/n1/logs/s"), OpenMode::ReadWrite)
            .expect("open");
        d.inject(DiskFault {
            op: DiskOp::Sync,
            under: PathBuf::from("/n1/logs"),
            error: DiskError::Io,
            times: Some(1),
        });
        f.write_all_at(b"abc", 0).expect("write");
        let eio = f.sync_data().expect_err("EIO");
        assert!(eio.to_string().contains("os error 5"), "{eio}");
        assert!(f.sync_data().is_ok(), "the fault fired once");

        d.set_capacity(Some(5));
        let full = f.write_all_at(b"defg", 3).expect_err("ENOSPC");
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        f.write_all_at(b"de", 3).expect("fits");
        d.set_capacity(None);
        f.write_all_at(b"fg", 5).expect("space returned");

        d.inject(DiskFault {
            op: DiskOp::Write,
            under: PathBuf::from("/n1"),
            error: DiskError::NoSpace,
            times: None,
        });
        assert_eq!(
            f.write_all_at(b"h", 7).expect_err("ENOSPC").kind(),
            io::ErrorKind::StorageFull
        );
        d.clear_faults();
        f.write_all_at(b"h", 7).expect("cleared");

        d.corrupt(Path::new("/n1/logs/s"), 1, 0xff)
            .expect("corrupt");
        let mut buf = [0u8; 3];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert_eq!(buf, [b'a', b'b' ^ 0xff, b'c']);
    }

    #[test]
    fn a_clock_stamps_modification_times() {
        let clock = Arc::new(ManualClock::new(5_000));
        let d = MemoryDisk::new(clock.clone());
        let f = d.open(Path::new("/f"), OpenMode::ReadWrite).expect("open");
        assert_eq!(f.modified_ms().expect("mtime"), 5_000);
        clock.advance(std::time::Duration::from_millis(250));
        f.write_all_at(b"x", 0).expect("write");
        assert_eq!(f.modified_ms().expect("mtime"), 5_250);
    }
}
