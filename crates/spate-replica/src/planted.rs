//! Bugs planted on purpose (feature `planted-bugs`, never in a product build), each off until
//! a test turns it on for its own thread: the simulator runs a whole cluster on one thread, so
//! a switch set there reaches every node of that run and nothing else.

use std::cell::Cell;

thread_local! {
    static HIGH_WATERMARK_IGNORES_FOLLOWERS: Cell<bool> = const { Cell::new(false) };
}

/// The leader advances the high watermark (and acknowledges `acks=all` writes) on its own
/// fsync, without waiting for the in-sync followers: acknowledged writes are lost when the
/// leader dies before its followers fetched them.
pub fn set_high_watermark_ignores_followers(on: bool) {
    HIGH_WATERMARK_IGNORES_FOLLOWERS.with(|c| c.set(on));
}

pub(crate) fn high_watermark_ignores_followers() -> bool {
    HIGH_WATERMARK_IGNORES_FOLLOWERS.with(Cell::get)
}
