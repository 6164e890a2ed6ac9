//! Small durable files: written to a temp file, fsynced, renamed over the target, and the
//! directory fsynced, so a crash leaves either the old or the new content, never a mix. This is
//! the one durable-write helper of the tree: every crate that replaces a small file uses it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Replaces `dir/name` with `contents` durably (temp + fsync + rename + fsync of `dir`).
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes directory entries (creations, renames) in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a small file, refusing one larger than `max_bytes` rather than allocating for it.
/// `Ok(None)` if the file does not exist.
pub(crate) fn read_bounded(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path:?} is {len} bytes, more than the {max_bytes} allowed"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max_bytes).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Reads a checkpoint holding one offset (`<n>\n`); a malformed one is logged and ignored, so
/// recovery falls back to what the segments say. `Ok(None)` if the file does not exist.
pub(crate) fn read_offset_checkpoint(
    dir: &Path,
    name: &str,
) -> io::Result<Option<spate_types::Offset>> {
    let path = dir.join(name);
    let bytes = match read_bounded(&path, 64) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Vec::new(),
        Err(e) => return Err(e),
    };
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        Some(o) if o >= 0 => Ok(Some(spate_types::Offset(o))),
        _ => {
            tracing::warn!(?path, "ignoring malformed offset checkpoint");
            Ok(None)
        }
    }
}

/// Writes a one-offset checkpoint durably (see [`write_atomic`]).
pub(crate) fn write_offset_checkpoint(
    dir: &Path,
    name: &str,
    offset: spate_types::Offset,
) -> io::Result<()> {
    write_atomic(dir, name, format!("{}\n", offset.0).as_bytes())
}
