//! Bugs planted on purpose, each off unless a simulator's test switches it on for its thread,
//! and honoured only on a thread that runs a deterministic simulation
//! ([`spate_types::exec::planted`]).

use std::cell::Cell;

thread_local! {
    static HIGH_WATERMARK_IGNORES_FOLLOWERS: Cell<bool> = const { Cell::new(false) };
    static LAST_STABLE_OFFSET_IGNORES_OPEN_TRANSACTIONS: Cell<bool> = const { Cell::new(false) };
}

/// The leader advances the high watermark (and acknowledges `acks=all` writes) on its own
/// fsync, without waiting for the in-sync followers: acknowledged writes are lost when the
/// leader dies before its followers fetched them.
pub fn set_high_watermark_ignores_followers(on: bool) {
    HIGH_WATERMARK_IGNORES_FOLLOWERS.with(|c| c.set(on));
}

pub(crate) fn high_watermark_ignores_followers() -> bool {
    spate_types::exec::planted(&HIGH_WATERMARK_IGNORES_FOLLOWERS)
}

/// A `read_committed` fetch reads to the high watermark, as if no transaction were open: a
/// consumer reads records of transactions that are still open (and may yet abort).
pub fn set_last_stable_offset_ignores_open_transactions(on: bool) {
    LAST_STABLE_OFFSET_IGNORES_OPEN_TRANSACTIONS.with(|c| c.set(on));
}

pub(crate) fn last_stable_offset_ignores_open_transactions() -> bool {
    spate_types::exec::planted(&LAST_STABLE_OFFSET_IGNORES_OPEN_TRANSACTIONS)
}
