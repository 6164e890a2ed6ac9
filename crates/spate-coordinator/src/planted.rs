//! Bugs planted on purpose, each off unless a simulator's test switches it on for its thread,
//! and honoured only on a thread that runs a deterministic simulation
//! ([`spate_types::exec::planted`]).

use std::cell::Cell;

thread_local! {
    static COMMITS_IGNORE_GENERATION: Cell<bool> = const { Cell::new(false) };
    static FETCH_SHOWS_UNDURABLE_COMMITS: Cell<bool> = const { Cell::new(false) };
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

/// OffsetFetch shows a commit as soon as its record is appended, before it is durable on the
/// in-sync replicas: a reader can see an offset that a failover then takes back.
pub fn set_fetch_shows_undurable_commits(on: bool) {
    FETCH_SHOWS_UNDURABLE_COMMITS.with(|c| c.set(on));
}

pub(crate) fn fetch_shows_undurable_commits() -> bool {
    spate_types::exec::planted(&FETCH_SHOWS_UNDURABLE_COMMITS)
}
