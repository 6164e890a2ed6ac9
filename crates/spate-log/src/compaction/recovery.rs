//! Recovery of interrupted compaction swaps at open; the protocol it completes is in the
//! parent module's docs ("Crash safety").

use super::{txn_swap_path, CleanedGroup, CLEANED_SUFFIX, SWAP_SUFFIX, TXN_SWAP_SUFFIX};
use crate::error::LogError;
use crate::segment::{file_name, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::txn_index::{self, TXN_INDEX_SUFFIX};
use spate_types::disk::Disk;
use spate_types::Offset;
use std::io;
use std::path::Path;

/// Rolls interrupted swaps forward and removes unfinished cleaned files (at open, before
/// segments are listed). A swap file `{base}.{end}.log.swap` replaces every segment with a base
/// offset in `[base, end)`; see the module docs for its transaction index.
pub(crate) fn recover(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    let mut leftovers = Vec::new();
    for entry in disk.read_dir(dir)? {
        let name = entry.name.as_str();
        let path = dir.join(name);
        if name.ends_with(CLEANED_SUFFIX) || name.ends_with(TXN_SWAP_SUFFIX) {
            // Those a swap below needs are renamed first; the rest go after.
            leftovers.push(path);
        } else if let Some(stem) = name.strip_suffix(SWAP_SUFFIX) {
            let parsed = stem.split_once('.').and_then(|(b, e)| {
                (b.len() == 20 && e.len() == 20)
                    .then(|| Some((Offset(b.parse().ok()?), Offset(e.parse().ok()?))))
                    .flatten()
            });
            match parsed {
                Some((b, e)) if b < e => swaps.push((b, e, path)),
                _ => {
                    tracing::warn!(?path, "removing unparseable swap file");
                    disk.remove_file(&path)?;
                }
            }
        } else if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
            if let Ok(b) = stem.parse::<i64>() {
                if stem.len() == 20 {
                    logs.push(Offset(b));
                }
            }
        }
    }
    let remove = |path: &Path| match disk.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    for (base, end, swap) in &swaps {
        let (base, end) = (*base, *end);
        let cleaned_txn = [
            txn_swap_path(dir, base, end),
            CleanedGroup::cleaned_path(dir, base, end, TXN_INDEX_SUFFIX),
        ]
        .into_iter()
        .find(|p| leftovers.contains(p));
        for old in logs.iter().filter(|b| **b >= base && **b < end) {
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
                remove(&dir.join(file_name(*old, suffix)))?;
            }
            // Without a cleaned one to roll forward, `{base}.txnindex` is the cleaned one.
            if cleaned_txn.is_some() || *old != base {
                remove(&txn_index::path(dir, *old))?;
            }
        }
        if let Some(t) = &cleaned_txn {
            disk.rename(t, &txn_index::path(dir, base))?;
            leftovers.retain(|p| p != t);
        }
        // The offset and time indexes were removed with the old segment; they are rebuilt
        // from the log.
        disk.rename(swap, &dir.join(file_name(base, LOG_SUFFIX)))?;
        tracing::warn!(dir = ?dir, segment = base.0, end = end.0,
            "completed a compaction swap interrupted by a crash");
    }
    for path in &leftovers {
        remove(path)?;
    }
    if !swaps.is_empty() {
        disk.sync_dir(dir)?;
    }
    Ok(())
}
