//! Bugs planted on purpose, so that the simulator's tests can show its checkers catch them
//! (`crates/spate-sim/tests`). Each is off until a test turns it on for its own thread, and is
//! honoured only on a thread that runs a deterministic simulation
//! ([`spate_types::exec::enter_deterministic`]): the simulator runs a whole cluster on one
//! thread, so a switch set there reaches every node of that run and nothing else, and in a
//! broker's process (where nothing sets a switch, and no thread is a simulation's) each is a
//! `false` read off a thread-local. They are compiled into every build rather than behind a
//! cargo feature: a feature only the tests turn on would make every test build compile the
//! crates above these again (see docs/testing.md, "One build for the product and the tests").

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
    HIGH_WATERMARK_IGNORES_FOLLOWERS.with(Cell::get) && spate_types::exec::is_deterministic()
}

/// A `read_committed` fetch reads to the high watermark, as if no transaction were open: a
/// consumer reads records of transactions that are still open (and may yet abort).
pub fn set_last_stable_offset_ignores_open_transactions(on: bool) {
    LAST_STABLE_OFFSET_IGNORES_OPEN_TRANSACTIONS.with(|c| c.set(on));
}

pub(crate) fn last_stable_offset_ignores_open_transactions() -> bool {
    LAST_STABLE_OFFSET_IGNORES_OPEN_TRANSACTIONS.with(Cell::get)
        && spate_types::exec::is_deterministic()
}
