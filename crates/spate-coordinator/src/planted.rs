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
    static COMMITS_IGNORE_GENERATION: Cell<bool> = const { Cell::new(false) };
}

/// OffsetCommit takes any member's commit, whatever its generation and even from a member the
/// group no longer has: a consumer that stalled past its session timeout (a zombie) commits
/// over the partitions its successor owns.
pub fn set_commits_ignore_generation(on: bool) {
    COMMITS_IGNORE_GENERATION.with(|c| c.set(on));
}

pub(crate) fn commits_ignore_generation() -> bool {
    COMMITS_IGNORE_GENERATION.with(Cell::get) && spate_types::exec::is_deterministic()
}
