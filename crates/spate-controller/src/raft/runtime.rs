//! The async runtime openraft runs on: Tokio, with a generator the simulator can seed.
//!
//! Openraft draws its election timeouts and the phase of its tick from
//! [`AsyncRuntime::thread_rng`]. Tokio's runtime answers with `rand::rng()`, seeded by the
//! operating system, so two runs of one simulation seed would elect at different moments.
//! [`SpateRuntime`] forwards everything to openraft's Tokio runtime except that generator: a
//! [`SmallRng`] seeded from [`spate_types::exec::seeded_u64`] on a thread that runs a
//! deterministic simulation, and from the thread's OS-seeded generator everywhere else
//! (production keeps its unpredictable timeouts, which is what keeps split votes rare).

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::async_runtime::{Mpsc, Select2, Select3, Select4, TryRecvError};
use openraft::{AsyncRuntime, OptionalSend};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// openraft's Tokio runtime, everything [`SpateRuntime`] forwards to. openraft deprecated its
/// re-export in favour of the `openraft-rt-tokio` crate, which is the same type.
#[allow(deprecated)]
type Tokio = openraft::impls::TokioRuntime;

/// openraft's Tokio runtime with a seedable [`AsyncRuntime::thread_rng`] (see the module docs).
pub(crate) struct SpateRuntime {
    inner: Tokio,
}

impl fmt::Debug for SpateRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpateRuntime")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRuntime for SpateRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    #[inline]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    #[inline]
    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    #[inline]
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    #[inline]
    fn timeout<R, F>(duration: Duration, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        Tokio::timeout(duration, future)
    }

    #[inline]
    fn timeout_at<R, F>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        Tokio::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        Tokio::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        Tokio::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        Tokio::select4(a, b, c, d)
    }

    #[inline]
    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    /// A fresh generator per call, as openraft asks for one per draw: seeded from the
    /// simulation's stream on a deterministic thread, else from the thread's OS-seeded one.
    #[inline]
    fn thread_rng() -> Self::ThreadLocalRng {
        match spate_types::exec::seeded_u64() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }

    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        SpateRuntime {
            inner: Tokio::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Tokio::spawn_blocking(f)
    }

    fn mpsc_recv_deadline<T: OptionalSend>(
        receiver: &mut <Self::Mpsc as Mpsc>::Receiver<T>,
        deadline: Self::Instant,
    ) -> impl Future<Output = Result<T, TryRecvError>> + OptionalSend {
        Tokio::mpsc_recv_deadline(receiver, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn draws() -> Vec<u64> {
        (0..8)
            .map(|_| SpateRuntime::thread_rng().random_range(500..1000))
            .collect()
    }

    #[test]
    fn timeouts_repeat_per_simulation_seed_and_differ_between_seeds() {
        let run = |seed| {
            let _deterministic = spate_types::exec::enter_deterministic(seed);
            (draws(), draws())
        };
        let (first, second) = run(7);
        assert_ne!(
            first, second,
            "successive draws move along the seeded stream"
        );
        assert_eq!(
            run(7),
            (first.clone(), second),
            "the same seed, the same timeouts"
        );
        assert_ne!(run(8).0, first, "another seed, other timeouts");
    }

    #[test]
    fn outside_a_simulation_the_generator_is_not_seeded() {
        assert!(!spate_types::exec::is_deterministic());
        // Eight draws from 500 values agreeing between two OS-seeded generators: ~2^-72.
        assert_ne!(draws(), draws());
    }
}
