//! Any bytes as a produce request's record set: validation must return `Ok` or `Err`, never
//! panic, and when it accepts, the batches it found must tile the input exactly (no byte unread,
//! none counted twice), since the log stores the accepted bytes as they are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate_types::limits::BATCH_BYTES_MAX;

fuzz_target!(|data: &[u8]| {
    if let Ok(headers) = spate_log::validate_batches(data, BATCH_BYTES_MAX) {
        assert!(!headers.is_empty(), "accepted a record set with no batch");
        let total: usize = headers.iter().map(|h| h.total_bytes()).sum();
        assert_eq!(
            total,
            data.len(),
            "accepted batches cover {total} of {} bytes",
            data.len()
        );
    }
});
