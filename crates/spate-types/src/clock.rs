//! Seams for the sources of nondeterminism the shells around the cores read directly: the clock
//! and fresh ids (here), the network ([`crate::net`]) and the disk ([`crate::disk`]).
//!
//! A component that needs the time or a new UUID holds an `Arc<dyn Clock>` or an
//! `Arc<dyn IdSource>` given to it at construction instead of calling `SystemTime::now`,
//! `Instant::now` or `Uuid::new_v4`. In production these are [`SystemClock`] and [`RandomIds`];
//! tests and the deterministic simulator use [`ManualClock`] and [`SeededIds`], so one seed and
//! one schedule of clock steps reproduce a run.
//!
//! Timers are not part of this seam: `sleep`, `interval` and timeouts belong to the async runtime
//! (a simulated runtime such as turmoil, or Tokio's paused time, drives those).

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// The seams a component is built with, bundled so that one value set up by a node (or by the
/// simulator, once per simulated node) reaches every component of that node.
#[derive(Clone, Debug)]
pub struct Seams {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    /// See [`crate::net`].
    pub net: Arc<dyn crate::net::Network>,
    /// See [`crate::disk`].
    pub disk: Arc<dyn crate::disk::Disk>,
}

impl Seams {
    /// The operating system's clock, random ids, TCP and file system.
    pub fn system() -> Seams {
        Seams {
            clock: Arc::new(SystemClock),
            ids: Arc::new(RandomIds),
            net: Arc::new(crate::net::TcpNetwork),
            disk: Arc::new(crate::disk::OsDisk),
        }
    }
}

impl Default for Seams {
    /// [`Seams::system`].
    fn default() -> Seams {
        Seams::system()
    }
}

/// Where a component reads the time.
///
/// Two clocks, as the operating system has: the wall clock ([`Clock::now_ms`]) for what Kafka
/// calls a timestamp (record timestamps, retention, offset expiry), which may jump; and the
/// monotonic clock ([`Clock::monotonic_ms`]) for measuring how long something took (sessions,
/// timeouts measured by the caller), which never goes back.
///
/// Timers (`sleep`, `interval`, deadlines awaited on) are the async runtime's, not this trait's.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Milliseconds since an arbitrary origin fixed for the life of the clock. Never decreases.
    fn monotonic_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// A system clock set before 1970 reads as 0.
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Measured from the first call in this process.
    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to, for tests and the simulator. Thread-safe: clones of an
/// `Arc<ManualClock>` handed to several components all see the same time.
#[derive(Debug)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ms: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time is `wall_ms` and whose monotonic time is 0.
    pub fn new(wall_ms: i64) -> ManualClock {
        ManualClock {
            wall_ms: AtomicI64::new(wall_ms),
            monotonic_ms: AtomicU64::new(0),
        }
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.monotonic_ms.fetch_add(ms, Ordering::SeqCst);
        self.wall_ms
            .fetch_add(i64::try_from(ms).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Sets the wall clock only, forwards or backwards, as an operator or NTP may; the
    /// monotonic clock does not move.
    pub fn set_now_ms(&self, wall_ms: i64) {
        self.wall_ms.store(wall_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
}

/// Where a component gets fresh UUIDs (topic ids, directory ids, cluster ids, incarnations).
pub trait IdSource: Send + Sync + fmt::Debug {
    /// A UUID not returned before by this source. Version 4 layout.
    fn uuid(&self) -> Uuid;
}

/// Random version-4 UUIDs from the operating system's generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn uuid(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// A deterministic stream of version-4 UUIDs from a seed: the same seed gives the same
/// sequence (in call order), different seeds different ones. Thread-safe. Not for production:
/// the ids are predictable.
#[derive(Debug)]
pub struct SeededIds {
    seed: u64,
    /// How many ids were handed out.
    next: AtomicU64,
}

impl SeededIds {
    pub fn new(seed: u64) -> SeededIds {
        SeededIds {
            seed,
            next: AtomicU64::new(0),
        }
    }
}

impl IdSource for SeededIds {
    fn uuid(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        // Two words per id: SplitMix64 outputs 2n and 2n+1 of the stream seeded with `seed`.
        let hi = splitmix64(self.seed, n.wrapping_mul(2));
        let lo = splitmix64(self.seed, n.wrapping_mul(2).wrapping_add(1));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_be_bytes());
        bytes[8..].copy_from_slice(&lo.to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Output `index` of SplitMix64 (Steele, Lea, Flood 2014) seeded with `seed`: the state after
/// `index + 1` steps of the golden-ratio increment, through its mixing function.
pub fn splitmix64(seed: u64, index: u64) -> u64 {
    const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_700_000_000_000);
        assert_eq!(clock.now_ms(), 1_700_000_000_000);
        assert_eq!(clock.monotonic_ms(), 0);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_700_000_000_250);
        assert_eq!(clock.monotonic_ms(), 250);
        // The wall clock may be set back; the monotonic clock never moves with it.
        clock.set_now_ms(5);
        assert_eq!(clock.now_ms(), 5);
        assert_eq!(clock.monotonic_ms(), 250);
    }

    #[test]
    fn manual_clock_is_shared_across_threads() {
        let clock = Arc::new(ManualClock::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        clock.advance(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(clock.monotonic_ms(), 4000);
        assert_eq!(clock.now_ms(), 4000);
    }

    #[test]
    fn system_clock_is_after_2020_and_monotonic() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        assert!(clock.now_ms() > 1_577_836_800_000, "{}", clock.now_ms());
        let a = clock.monotonic_ms();
        let b = clock.monotonic_ms();
        assert!(b >= a);
    }

    #[test]
    fn seeded_ids_repeat_per_seed_and_are_distinct_v4() {
        let take = |seed| {
            let ids = SeededIds::new(seed);
            (0..1000).map(|_| ids.uuid()).collect::<Vec<_>>()
        };
        let a = take(7);
        assert_eq!(a, take(7), "same seed, same sequence");
        assert_ne!(a, take(8), "another seed, another sequence");
        assert_eq!(
            a.iter().collect::<BTreeSet<_>>().len(),
            a.len(),
            "no repeats"
        );
        assert!(a.iter().all(|u| u.get_version_num() == 4 && !u.is_nil()));
        // Seeds next to each other do not give shifted copies of one stream.
        let b = take(8);
        assert!(a.iter().all(|u| !b.contains(u)));
    }

    #[test]
    fn random_ids_are_v4() {
        let ids = RandomIds;
        let (a, b) = (ids.uuid(), ids.uuid());
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
    }
}
