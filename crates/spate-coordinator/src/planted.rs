//! Bugs planted on purpose (feature `planted-bugs`, never in a product build), each off until
//! a test turns it on for its own thread: the simulator runs a whole cluster on one thread, so
//! a switch set there reaches every node of that run and nothing else.

use std::cell::Cell;

thread_local! {
    static COMMITS_IGNORE_GENERATION: Cell<bool> = const { Cell::new(false) };
}

/// OffsetCommit takes any member's commit, whatever its generation and even from a member the
/// group no longer has: a consumer that stalled past its session timeout (a zombie) commits
/// over the partitions its successor owns.
pub fn set_commits_ignore_generation(on: bool) {
    COMMITS_IGNORE_GENERATION.with(|c| c.set(on));
}

pub(crate) fn commits_ignore_generation() -> bool {
    COMMITS_IGNORE_GENERATION.with(Cell::get)
}
