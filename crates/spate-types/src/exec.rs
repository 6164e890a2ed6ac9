//! The execution seam: work that leaves the async runtime (blocking file I/O) and randomness
//! the libraries underneath draw for themselves (openraft's election timeouts).
//!
//! In production blocking work runs on Tokio's blocking pool and randomness comes from the
//! operating system. The deterministic simulator runs every node of a cluster on one thread;
//! it marks that thread with [`enter_deterministic`], and from then on, on that thread only,
//! [`blocking`] runs its closure inline (a blocking-pool thread would finish at a moment the
//! seed does not choose) and [`seeded_u64`] draws from a stream fixed by the seed. Other
//! threads (other simulations running in parallel, production) are untouched.

use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// The state of this thread's seeded stream; `None` outside a simulation.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Marks this thread as running a deterministic simulation seeded with `seed`, until the
/// returned guard is dropped.
#[must_use = "the thread is deterministic only while the guard lives"]
pub fn enter_deterministic(seed: u64) -> DeterministicGuard {
    let previous = SEEDED.with(|s| s.replace(Some(seed)));
    DeterministicGuard { previous }
}

/// Restores the thread's previous mode when dropped.
pub struct DeterministicGuard {
    previous: Option<u64>,
}

impl Drop for DeterministicGuard {
    fn drop(&mut self) {
        SEEDED.with(|s| s.set(self.previous));
    }
}

/// Whether this thread runs a deterministic simulation.
pub fn is_deterministic() -> bool {
    SEEDED.with(|s| s.get().is_some())
}

/// Whether the planted bug behind `switch` is on. Bugs are planted on purpose so that the
/// simulator's tests can show its checkers catch them (the `planted` modules of spate-replica,
/// spate-coordinator and spate-kafka; `crates/spate-sim/tests`): each switch is off until a
/// test turns it on for its own thread, and is honoured only on a thread that runs a
/// deterministic simulation. The simulator runs a whole cluster on one thread, so a switch set
/// there reaches every node of that run and nothing else; in a broker's process (where nothing
/// sets a switch, and no thread is a simulation's) it is a `false` read off a thread-local.
/// They are compiled into every build rather than behind a cargo feature: a feature only the
/// tests turn on would make every test build compile the crates above them again
/// (docs/testing.md, "One build for the product and the tests").
pub fn planted(switch: &'static std::thread::LocalKey<Cell<bool>>) -> bool {
    switch.with(Cell::get) && is_deterministic()
}

/// The next number of this thread's seeded stream (SplitMix64), or `None` outside a
/// simulation, where the caller draws from the operating system instead.
pub fn seeded_u64() -> Option<u64> {
    SEEDED.with(|s| {
        let state = s.get()?;
        s.set(Some(state.wrapping_add(1)));
        Some(crate::clock::splitmix64(state, 0))
    })
}

/// A blocking closure panicked.
#[derive(Debug)]
pub struct BlockingPanicked(pub String);

impl fmt::Display for BlockingPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocking task panicked: {}", self.0)
    }
}

impl std::error::Error for BlockingPanicked {}

/// Runs `f`, which blocks (file I/O, fsync), off the async worker threads: on Tokio's blocking
/// pool, or inline on a deterministic thread. A panic in `f` comes back as an error either way.
pub async fn blocking<T, F>(f: F) -> Result<T, BlockingPanicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if is_deterministic() {
        return catch_unwind(AssertUnwindSafe(f)).map_err(|p| BlockingPanicked(panic_text(&*p)));
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(p) => BlockingPanicked(panic_text(&*p)),
            Err(e) => BlockingPanicked(e.to_string()),
        })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeded_stream_is_per_thread_and_repeats_per_seed() {
        assert_eq!(seeded_u64(), None, "not deterministic by default");
        let take = |seed| {
            let _g = enter_deterministic(seed);
            (0..4)
                .map(|_| seeded_u64().expect("seeded"))
                .collect::<Vec<_>>()
        };
        let a = take(7);
        assert_eq!(a, take(7));
        assert_ne!(a, take(8));
        assert!(!is_deterministic(), "the guard restores the mode");
        let other = std::thread::spawn(|| {
            let _g = enter_deterministic(1);
            std::thread::spawn(is_deterministic).join().expect("thread")
        });
        assert!(
            !other.join().expect("thread"),
            "another thread is untouched"
        );
    }

    #[tokio::test]
    async fn blocking_runs_inline_on_a_deterministic_thread_and_reports_panics() {
        let pool = blocking(|| std::thread::current().id()).await.expect("ran");
        assert_ne!(
            pool,
            std::thread::current().id(),
            "production: the blocking pool"
        );
        let _g = enter_deterministic(3);
        let inline = blocking(|| std::thread::current().id()).await.expect("ran");
        assert_eq!(inline, std::thread::current().id(), "simulation: inline");
        let e = blocking(|| -> u8 { panic!("disk on fire") })
            .await
            .expect_err("panic");
        assert!(e.to_string().contains("disk on fire"), "{e}");
    }
}
