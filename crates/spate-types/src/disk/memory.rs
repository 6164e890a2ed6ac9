//! [`MemoryDisk`]: the in-memory disk with its crash and fault model, and its open files.

use super::DiskFile;
use crate::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

mod namespace;

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

/// An in-memory file system for tests and the simulator: see the [module docs](crate::disk).
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
