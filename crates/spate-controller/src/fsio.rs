//! Small durable-file helpers: CRC-framed records and atomic whole-file replacement.
//!
//! A frame is `[len: u32 LE][crc32c(payload): u32 LE][payload]`. A reader stops at the first frame
//! that is incomplete, longer than `RECORD_BYTES_MAX`, or fails its CRC; everything before it is
//! intact. Whole files are replaced with the temp file + fsync + rename + fsync(dir) dance, so a
//! crash leaves either the old or the new file, never a mix.
//!
//! All file access goes through the [`Disk`] seam given by the caller.

use spate_types::disk::{self, Disk};
use std::io;
use std::path::Path;

/// Largest record we write or accept. Metadata commands are small; this bounds what a corrupt
/// length field can make us allocate.
pub(crate) const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// Appends one frame holding `payload` to `out`.
pub(crate) fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    if payload.len() > RECORD_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "record of {} bytes exceeds the {RECORD_BYTES_MAX}-byte limit",
                payload.len()
            ),
        ));
    }
    let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits `buf` into intact frame payloads. Returns them and the length of the intact prefix;
/// bytes past it are a torn or corrupt tail.
pub(crate) fn decode_frames(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(header) = buf.get(pos..pos + FRAME_HEADER_BYTES) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > RECORD_BYTES_MAX {
            break;
        }
        let start = pos + FRAME_HEADER_BYTES;
        let Some(payload) = buf.get(start..start + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        frames.push(payload);
        pos = start + len;
    }
    (frames, pos)
}

/// The largest file [`read_framed_file`] reads: one frame of the largest record.
const FRAMED_FILE_BYTES_MAX: u64 = (FRAME_HEADER_BYTES + RECORD_BYTES_MAX) as u64;

/// Atomically replaces `path` with `contents` with the tree's one durable-write helper
/// (temp file, fsync, rename, fsync of the directory).
pub(crate) fn write_atomic(disk: &dyn Disk, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    disk::write_atomic(disk, dir, name, contents)
}

/// Reads a file written by [`write_atomic`] holding one frame. `Ok(None)` if it does not exist.
pub(crate) fn read_framed_file(disk: &dyn Disk, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let Some(buf) = disk::read_bounded(disk, path, FRAMED_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    let (frames, intact) = decode_frames(&buf);
    match frames.as_slice() {
        [one] if intact == buf.len() => Ok(Some(one.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is corrupt (bad length or CRC)", path.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_types::disk::{MemoryDisk, OsDisk};

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut buf = Vec::new();
        for payload in [&b"one"[..], b"", b"three"] {
            encode_frame(payload, &mut buf).expect("encode");
        }
        let (frames, intact) = decode_frames(&buf);
        assert_eq!(frames, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(intact, buf.len());

        // Torn tail: every strict prefix keeps only whole frames.
        for cut in 0..buf.len() {
            let (frames, intact) = decode_frames(&buf[..cut]);
            assert!(intact <= cut);
            assert!(frames.len() < 3);
        }
        // A flipped payload bit fails the CRC of that frame and hides what follows.
        let mut bad = buf.clone();
        bad[FRAME_HEADER_BYTES] ^= 1;
        assert_eq!(decode_frames(&bad), (Vec::new(), 0));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let os = &OsDisk;
        assert_eq!(read_framed_file(os, &path).expect("read"), None);
        for contents in [&b"first"[..], b"second"] {
            let mut buf = Vec::new();
            encode_frame(contents, &mut buf).expect("encode");
            write_atomic(os, &path, &buf).expect("write");
            assert_eq!(
                read_framed_file(os, &path).expect("read").as_deref(),
                Some(contents)
            );
        }
        std::fs::write(&path, b"garbage!garbage!").expect("write");
        assert!(read_framed_file(os, &path).is_err());
    }

    #[test]
    fn new_directories_survive_a_crash() {
        let disk = MemoryDisk::default();
        let dir = Path::new("/data/a/b");
        disk.create_dir_all(Path::new("/data")).expect("mkdir");
        disk.sync_dir(Path::new("/")).expect("sync root");
        disk::create_dir_all_durable(&disk, dir).expect("mkdir durably");
        write_atomic(&disk, &dir.join("f"), b"kept").expect("write");
        disk::create_dir_all_durable(&disk, dir).expect("an existing directory is fine");
        disk.crash();
        assert_eq!(
            disk::read_bounded(&disk, &dir.join("f"), 16)
                .expect("read")
                .as_deref(),
            Some(&b"kept"[..])
        );
        let names = |d: &str| -> Vec<String> {
            disk.read_dir(Path::new(d))
                .expect("the directory survived")
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        assert_eq!(names("/data"), ["a"]);
        assert_eq!(names("/data/a"), ["b"]);
        assert_eq!(names("/data/a/b"), ["f"]);
    }
}
