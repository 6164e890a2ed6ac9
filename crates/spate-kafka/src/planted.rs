//! Bugs planted on purpose, each off unless a simulator's test switches it on for its thread,
//! and honoured only on a thread that runs a deterministic simulation
//! ([`spate_types::exec::planted`]).

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
    spate_types::exec::planted(&VERIFICATION_ASKS_ONCE)
}
