//! The one-offset checkpoints the log keeps, on the disk seam ([`spate_types::disk`]).
//!
//! Small files are replaced with [`spate_types::disk::write_atomic`] (temp file, fsync, rename,
//! fsync of the directory), so a crash leaves either the old or the new content, never a mix:
//! that is the one durable-write helper of the tree, beside
//! [`spate_types::disk::create_dir_all_durable`] for directories.

use spate_types::disk::{self, Disk};
use spate_types::Offset;
use std::io;
use std::path::Path;

/// Reads a checkpoint holding one offset (`<n>\n`); a malformed one is logged and ignored, so
/// recovery falls back to what the segments say. `Ok(None)` if the file does not exist.
pub(crate) fn read_offset_checkpoint(
    disk: &dyn Disk,
    dir: &Path,
    name: &str,
) -> io::Result<Option<Offset>> {
    let path = dir.join(name);
    let bytes = match disk::read_bounded(disk, &path, 64) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Vec::new(),
        Err(e) => return Err(e),
    };
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        Some(o) if o >= 0 => Ok(Some(Offset(o))),
        _ => {
            tracing::warn!(?path, "ignoring malformed offset checkpoint");
            Ok(None)
        }
    }
}

/// Writes a one-offset checkpoint durably (see [`spate_types::disk::write_atomic`]).
pub(crate) fn write_offset_checkpoint(
    disk: &dyn Disk,
    dir: &Path,
    name: &str,
    offset: Offset,
) -> io::Result<()> {
    disk::write_atomic(disk, dir, name, format!("{}\n", offset.0).as_bytes())
}
