//! Bugs planted on purpose, each off unless a simulator's test switches it on for its thread,
//! and honoured only on a thread that runs a deterministic simulation
//! ([`spate_types::exec::planted`]).

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
    spate_types::exec::planted(&COMMITS_IGNORE_GENERATION)
}
