//! Any bytes as a request frame (after the 4-byte length prefix): decoding must return `Ok` or
//! `Err`, never panic, and never allocate without bound (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch the latter). Invariant 7 of DESIGN.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate_kafka::apis::decode_request(bytes::Bytes::copy_from_slice(data));
});
