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

use crate::clock::{Clock, SystemClock};
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

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

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

#[derive(Debug)]
struct OsFile(File);

impl Disk for OsDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                options.write(true).create(true).truncate(false);
            }
            OpenMode::Truncate => {
                options.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(OsFile(options.open(path)?)))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            entries.push(DirEntry {
                name,
                is_dir: entry.file_type()?.is_dir(),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DiskLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

impl DiskFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn modified_ms(&self) -> io::Result<i64> {
        let modified = self.0.metadata()?.modified()?;
        Ok(modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

// ---------------------------------------------------------------------------------------------
// The in-memory disk.

/// `ENOSPC` and `EIO` as the operating system reports them.
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// ENOSPC: the disk is full.
    NoSpace,
    /// EIO: the device failed the operation.
    Io,
}

impl DiskError {
    fn to_io(self, op: DiskOp, path: &Path) -> io::Error {
        let code = match self {
            DiskError::NoSpace => ENOSPC,
            DiskError::Io => EIO,
        };
        let os = io::Error::from_raw_os_error(code);
        io::Error::new(os.kind(), format!("{op:?} {}: {os}", path.display()))
    }
}

/// The operations a fault may target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    /// `write_at` and `set_len`.
    Write,
    /// `sync_data`, `sync_all` and `sync_dir`.
    Sync,
    /// `open`, `create_dir_all`, `rename`, `remove_file`, `remove_dir_all`.
    Metadata,
    /// `read_at`.
    Read,
}

/// An injected fault: `op` on any path under `under` fails with `error`, the next `times` times
/// (`None`: until [`MemoryDisk::clear_faults`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFault {
    pub op: DiskOp,
    pub under: PathBuf,
    pub error: DiskError,
    pub times: Option<u32>,
}

/// One file's bytes: what the page cache holds and what survived the last sync.
#[derive(Debug)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// `data` and `durable` agree below this (a write or cut since the last sync begins here),
    /// so a sync copies only what changed, not the whole file.
    clean_below: usize,
    modified_ms: i64,
}

impl Inode {
    fn new(modified_ms: i64) -> Inode {
        Inode {
            data: Vec::new(),
            durable: Vec::new(),
            clean_below: 0,
            modified_ms,
        }
    }

    /// Bytes from `offset` on may differ from what is durable.
    fn dirty_from(&mut self, offset: usize) {
        self.clean_below = self.clean_below.min(offset);
    }

    /// What the page cache holds becomes durable.
    fn sync(&mut self) {
        let same = self
            .clean_below
            .min(self.data.len())
            .min(self.durable.len());
        self.durable.truncate(same);
        self.durable.extend_from_slice(&self.data[same..]);
        self.clean_below = self.data.len();
    }
}

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File(Arc<Mutex<Inode>>),
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash: files opened before it fail with EIO.
    generation: u64,
    /// The namespace as processes see it, and as it would be after a crash.
    entries: BTreeMap<PathBuf, Node>,
    durable_entries: BTreeMap<PathBuf, Node>,
    faults: Vec<DiskFault>,
    capacity: Option<u64>,
    locks: BTreeMap<PathBuf, u64>,
    next_lock: u64,
}

/// An in-memory file system for tests and the simulator: see the [module docs](self).
///
/// Cheap to clone; clones share the same files (one per simulated node: a node's components
/// and the harness that crashes it hold clones of one `MemoryDisk`).
#[derive(Clone, Debug)]
pub struct MemoryDisk {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct MemoryFile {
    disk: MemoryDisk,
    path: PathBuf,
    inode: Arc<Mutex<Inode>>,
    generation: u64,
    writable: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic in a caller (no user code runs under the
    // lock), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

/// `/`, or the empty prefix of relative paths (also spelled `.`): always present.
fn is_root(path: &Path) -> bool {
    path.parent().is_none() || path.as_os_str().is_empty() || path == Path::new(".")
}

/// A path's parent directory, `None` for the root and its children (`/` or an empty relative
/// prefix, always present).
fn parent_of(path: &Path) -> Option<&Path> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty() && p.parent().is_some())
}

impl Default for MemoryDisk {
    fn default() -> MemoryDisk {
        MemoryDisk::new(Arc::new(SystemClock))
    }
}

impl MemoryDisk {
    /// An empty disk whose file times come from `clock`. The root is always present.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryDisk {
        MemoryDisk {
            state: Arc::new(Mutex::new(State::default())),
            clock,
        }
    }

    /// Adds a fault; see [`DiskFault`].
    pub fn inject(&self, fault: DiskFault) {
        lock(&self.state).faults.push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Writes that would make the files' total size exceed `bytes` fail with ENOSPC;
    /// `None` lifts the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        lock(&self.state).capacity = bytes;
    }

    /// The bytes all files hold now.
    pub fn used_bytes(&self) -> u64 {
        let state = lock(&self.state);
        used(&state)
    }

    /// A power cut: every file goes back to what its last sync made durable, every directory to
    /// the entries its last sync made durable; files opened before fail from now on (EIO), and
    /// locks are released.
    pub fn crash(&self) {
        self.crash_keeping(&mut |_, _| 0);
    }

    /// [`MemoryDisk::crash`], except that a file whose unsynced change was an append keeps
    /// `keep(path, unsynced_tail_len)` bytes of that tail (clamped to it): a torn write.
    pub fn crash_keeping(&self, keep: &mut dyn FnMut(&Path, u64) -> u64) {
        let mut state = lock(&self.state);
        state.generation += 1;
        state.locks.clear();
        for (path, node) in &state.durable_entries {
            let Node::File(inode) = node else { continue };
            let mut inode = lock(inode);
            let inode = &mut *inode;
            let appended = inode.data.len() > inode.durable.len()
                && inode.data[..inode.durable.len()] == inode.durable[..];
            let mut survived = inode.durable.clone();
            if appended {
                let tail = &inode.data[inode.durable.len()..];
                let k = keep(path, tail.len() as u64).min(tail.len() as u64) as usize;
                survived.extend_from_slice(&tail[..k]);
            }
            inode.data = survived.clone();
            inode.durable = survived;
            inode.clean_below = inode.data.len();
        }
        // A name lives in its directory: an entry synced into a directory whose own entry was
        // never made durable is lost with it (and must not come back when a directory of that
        // name is created again).
        let orphans: Vec<PathBuf> = state
            .durable_entries
            .keys()
            .filter(|p| !under_durable_dirs(&state.durable_entries, p))
            .cloned()
            .collect();
        for p in orphans {
            state.durable_entries.remove(&p);
        }
        state.entries = state.durable_entries.clone();
    }

    /// How many bytes of `path` the last `sync_data` made durable (`None`: no such file).
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let state = lock(&self.state);
        let Some(Node::File(inode)) = state.entries.get(path) else {
            return None;
        };
        let len = lock(inode).durable.len();
        u64::try_from(len).ok()
    }

    /// Flips the bits of `xor` into the byte at `offset` of `path`, in what is stored and in
    /// what is durable: a latent sector error. NotFound if the file or the byte is absent.
    pub fn corrupt(&self, path: &Path, offset: u64, xor: u8) -> io::Result<()> {
        let state = lock(&self.state);
        let Some(Node::File(inode)) = state.entries.get(path) else {
            return Err(not_found(path));
        };
        let mut guard = lock(inode);
        let inode = &mut *guard;
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        let mut hit = false;
        for bytes in [&mut inode.data, &mut inode.durable] {
            if let Some(b) = bytes.get_mut(at) {
                *b ^= xor;
                hit = true;
            }
        }
        if hit {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }

    /// Returns the injected error if a fault matches, consuming one of its `times`.
    fn fault(state: &mut State, op: DiskOp, path: &Path) -> io::Result<()> {
        let Some(i) = state
            .faults
            .iter()
            .position(|f| f.op == op && path.starts_with(&f.under))
        else {
            return Ok(());
        };
        let error = state.faults[i].error;
        if let Some(times) = &mut state.faults[i].times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                state.faults.remove(i);
            }
        }
        Err(error.to_io(op, path))
    }

    fn check_parent(state: &State, path: &Path) -> io::Result<()> {
        match parent_of(path) {
            None => Ok(()),
            Some(parent) => match state.entries.get(parent) {
                Some(Node::Dir) => Ok(()),
                Some(Node::File(_)) => Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", parent.display()),
                )),
                None => Err(not_found(parent)),
            },
        }
    }
}

/// Whether every directory above `path` (up to the root, which always exists) is in `entries`.
fn under_durable_dirs(entries: &BTreeMap<PathBuf, Node>, path: &Path) -> bool {
    let mut at = parent_of(path);
    while let Some(dir) = at {
        if !matches!(entries.get(dir), Some(Node::Dir)) {
            return false;
        }
        at = parent_of(dir);
    }
    true
}

fn used(state: &State) -> u64 {
    state
        .entries
        .values()
        .filter_map(|n| match n {
            Node::File(inode) => Some(lock(inode).data.len() as u64),
            Node::Dir => None,
        })
        .sum()
}

/// Moves every entry at or under `from` in `map` to the same place under `to`.
fn move_subtree(map: &mut BTreeMap<PathBuf, Node>, from: &Path, to: &Path) {
    let moved: Vec<PathBuf> = map
        .keys()
        .filter(|k| k.starts_with(from))
        .cloned()
        .collect();
    for old in moved {
        let rest = old.strip_prefix(from).map(Path::to_path_buf);
        if let (Some(node), Ok(rest)) = (map.remove(&old), rest) {
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            map.insert(new, node);
        }
    }
}

impl Disk for MemoryDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn DiskFile>> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Metadata, path)?;
        let inode = match (state.entries.get(path), mode) {
            (Some(Node::Dir), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ))
            }
            (Some(Node::File(inode)), _) => {
                let inode = inode.clone();
                if mode == OpenMode::Truncate {
                    let mut i = lock(&inode);
                    i.data.clear();
                    i.dirty_from(0);
                    i.modified_ms = self.clock.now_ms();
                }
                inode
            }
            (None, OpenMode::Read) => return Err(not_found(path)),
            (None, _) => {
                MemoryDisk::check_parent(&state, path)?;
                let inode = Arc::new(Mutex::new(Inode::new(self.clock.now_ms())));
                state
                    .entries
                    .insert(path.to_path_buf(), Node::File(inode.clone()));
                inode
            }
        };
        Ok(Arc::new(MemoryFile {
            disk: self.clone(),
            path: path.to_path_buf(),
            inode,
            generation: state.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = lock(&self.state);
        match state.entries.get(path) {
            Some(Node::File(inode)) => Ok(lock(inode).data.len() as u64),
            Some(Node::Dir) => Ok(0),
            None if is_root(path) => Ok(0),
            None => Err(not_found(path)),
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let state = lock(&self.state);
        if !is_root(dir) && !matches!(state.entries.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        Ok(state
            .entries
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, node)| {
                Some(DirEntry {
                    name: p.file_name()?.to_str()?.to_owned(),
                    is_dir: matches!(node, Node::Dir),
                })
            })
            .collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Metadata, dir)?;
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(p) = at {
            match state.entries.get(p) {
                Some(Node::Dir) => break,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: a file is in the way", p.display()),
                    ))
                }
                None => missing.push(p.to_path_buf()),
            }
            at = parent_of(p);
        }
        for p in missing {
            state.entries.insert(p, Node::Dir);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Metadata, path)?;
        match state.entries.get(path) {
            Some(Node::File(_)) => {
                state.entries.remove(path);
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Metadata, dir)?;
        if !matches!(state.entries.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        state.entries.retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Metadata, from)?;
        let node = state
            .entries
            .get(from)
            .cloned()
            .ok_or_else(|| not_found(from))?;
        MemoryDisk::check_parent(&state, to)?;
        match (&node, state.entries.get(to)) {
            (_, None) | (Node::File(_), Some(Node::File(_))) => {}
            (Node::Dir, Some(Node::Dir))
                if !state.entries.keys().any(|k| k.parent() == Some(to)) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: cannot be replaced by {}", to.display(), from.display()),
                ))
            }
        }
        state.entries.remove(to);
        move_subtree(&mut state.entries, from, to);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        MemoryDisk::fault(&mut state, DiskOp::Sync, dir)?;
        if !is_root(dir) && !matches!(state.entries.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        let State {
            entries,
            durable_entries,
            ..
        } = &mut *state;
        // The directory's own children become what they are now. What lies deeper is the
        // children's business: a durable subdirectory's entries need its own sync, except
        // that an entry moved here whole (a renamed directory) brings its durable contents.
        durable_entries.retain(|p, _| p.parent() != Some(dir));
        for (p, node) in entries.iter().filter(|(p, _)| p.parent() == Some(dir)) {
            durable_entries.insert(p.clone(), node.clone());
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DiskLock>> {
        // Creates the file, as the operating system's lock does.
        drop(self.open(path, OpenMode::ReadWrite)?);
        let mut state = lock(&self.state);
        if state.locks.contains_key(path) {
            return Ok(None);
        }
        let id = state.next_lock;
        state.next_lock += 1;
        state.locks.insert(path.to_path_buf(), id);
        Ok(Some(Box::new(MemoryLock {
            state: Arc::downgrade(&self.state),
            path: path.to_path_buf(),
            id,
        })))
    }
}

/// Releases a [`MemoryDisk`] lock when dropped (unless a crash released it already and someone
/// else took it since).
struct MemoryLock {
    state: std::sync::Weak<Mutex<State>>,
    path: PathBuf,
    id: u64,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            let mut state = lock(&state);
            if state.locks.get(&self.path) == Some(&self.id) {
                state.locks.remove(&self.path);
            }
        }
    }
}

impl MemoryFile {
    /// Fails a handle opened before the last crash, then applies any injected fault.
    fn check(&self, state: &mut State, op: DiskOp) -> io::Result<()> {
        if state.generation != self.generation {
            let os = io::Error::from_raw_os_error(EIO);
            return Err(io::Error::new(
                os.kind(),
                format!("{}: opened before a crash: {os}", self.path.display()),
            ));
        }
        MemoryDisk::fault(state, op, &self.path)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: opened read only", self.path.display()),
            ))
        }
    }

    /// ENOSPC if growing the file to `new_len` passes the capacity.
    fn check_space(&self, state: &State, new_len: u64) -> io::Result<()> {
        let Some(capacity) = state.capacity else {
            return Ok(());
        };
        let current = lock(&self.inode).data.len() as u64;
        if new_len > current && used(state) + (new_len - current) > capacity {
            return Err(DiskError::NoSpace.to_io(DiskOp::Write, &self.path));
        }
        Ok(())
    }
}

impl DiskFile for MemoryFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check(&mut lock(&self.disk.state), DiskOp::Read)?;
        let inode = lock(&self.inode);
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(available) = inode.data.get(start..) else {
            return Ok(0);
        };
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.check_writable()?;
        let mut state = lock(&self.disk.state);
        self.check(&mut state, DiskOp::Write)?;
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        self.check_space(&state, end)?;
        drop(state);
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = usize::try_from(end).map_err(io::Error::other)?;
        let mut inode = lock(&self.inode);
        // A write past the end also fills the gap before it.
        let from = start.min(inode.data.len());
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[start..end].copy_from_slice(buf);
        inode.dirty_from(from);
        inode.modified_ms = self.disk.clock.now_ms();
        Ok(buf.len())
    }

    fn len(&self) -> io::Result<u64> {
        self.check(&mut lock(&self.disk.state), DiskOp::Read)?;
        Ok(lock(&self.inode).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = lock(&self.disk.state);
        self.check(&mut state, DiskOp::Write)?;
        self.check_space(&state, len)?;
        drop(state);
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut inode = lock(&self.inode);
        let cut = inode.data.len().min(len);
        inode.data.resize(len, 0);
        inode.dirty_from(cut);
        inode.modified_ms = self.disk.clock.now_ms();
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check(&mut lock(&self.disk.state), DiskOp::Sync)?;
        lock(&self.inode).sync();
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn modified_ms(&self) -> io::Result<i64> {
        self.check(&mut lock(&self.disk.state), DiskOp::Read)?;
        Ok(lock(&self.inode).modified_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

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
