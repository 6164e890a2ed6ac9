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
    static VERIFICATION_ASKS_ONCE: Cell<bool> = const { Cell::new(false) };
}

/// A partition leader asks the transaction coordinator once to verify a transaction version 2
/// write, even when the previous transaction's marker dropped its verification guard while it
/// asked: the write is refused (INVALID_TXN_STATE) and a healthy producer writing transactions
/// back to back aborts one now and then, with no fault anywhere (the bug the simulator's
/// traces showed before `4a8876c`).
pub fn set_verification_asks_once(on: bool) {
    VERIFICATION_ASKS_ONCE.with(|c| c.set(on));
}

pub(crate) fn verification_asks_once() -> bool {
    VERIFICATION_ASKS_ONCE.with(Cell::get) && spate_types::exec::is_deterministic()
}
