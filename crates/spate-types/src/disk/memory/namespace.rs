//! [`Disk`] for [`MemoryDisk`]: opening files, the directory tree (creations, renames, removals,
//! directory syncs) and advisory locks.

use super::{is_root, lock, not_found, parent_of, Inode, MemoryDisk, MemoryFile, Node, State};
use crate::disk::{DirEntry, Disk, DiskFile, DiskLock, DiskOp, OpenMode};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
