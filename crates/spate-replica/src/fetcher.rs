//! The follower side of replication (Kafka's `ReplicaFetcherThread`, simplified): one task per
//! leader node fetches every partition this node follows from that leader, in one Fetch
//! request per round, as a replica (`replica_id` = this node; no fetch sessions).
//!
//! Each followed partition is in one of two phases:
//! - **Truncating** (after every new leader or leader epoch): its log may have diverged from
//!   the leader's. From a leader that takes Fetch v13, it goes straight to fetching: the
//!   Fetch carries the epoch of its last batch, and the leader answers a diverging epoch
//!   when the logs differ there (Kafka's truncation on fetch, used from IBP 2.7). Otherwise
//!   it asks the leader with OffsetForLeaderEpoch where its latest local epoch ends there and
//!   truncates to that (KIP-101, with KIP-279's further rounds when the leader answers with an
//!   epoch this log does not have). OffsetForLeaderEpoch names topics by name only, so a
//!   leader still holding another topic of the same name (deleted and created again) would
//!   answer for that topic; a Fetch v13 names the topic by id, and such a leader refuses it.
//! - **Fetching**: it fetches from its log end. What the leader returns is appended byte for
//!   byte, and fsynced, before the next Fetch is sent: the next fetch offset tells the leader
//!   that everything below it is durable here. A diverging epoch in a Fetch v12+ response
//!   truncates by the same rule as an OffsetForLeaderEpoch answer, and the next Fetch asks
//!   again. From v13 topics are named by id, so a leader still holding another topic of the
//!   same name refuses rather than serving that topic's records.
//!
//! Guarantees:
//! - A response is applied only to the partition as it was followed when the request was
//!   built: every `follow` that changes the leader or the epoch, and every `unfollow`, starts a
//!   new generation, and results for an older one are dropped.
//! - A truncation or an append runs only while the replica is still a follower of that leader
//!   in the followed epoch (checked just before, on the blocking pool).
//! - No lock is held across an `.await`; truncations and non-empty appends (which fsync) run on
//!   the blocking pool.
//! - Errors are logged once per kind (per partition, or per task for the connection), not per
//!   round. A failing partition is left out of requests for `backoff_ms`; a failed connection
//!   is dropped and opened again after `backoff_ms`, doubling up to
//!   [`CONNECTION_BACKOFF_MAX_MS`].
//! - A task with no partitions left exits; [`Fetchers::shutdown`] stops all and waits for them.
//! - The wall-clock time handed to a partition with a truncation or an append is read from
//!   [`FetcherSettings::clock`] (the node's clock), never from the system directly; backoffs
//!   and deadlines are the runtime's timers.

use crate::partition::{FollowerPosition, Partition, ReplicaError};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_client::{error_name, ClientConfig, ClientError, Connection};
use spate_types::exec::BlockingPanicked;
use spate_types::{Clock, LeaderEpoch, NodeId, Offset, TopicPartition};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod disk;
mod fetch;
mod task;
mod truncate;

/// Fetch is sent at most at v13: `replica_id` in the request body (v15 moved it into
/// `replica_state`), `last_fetched_epoch` and `diverging_epoch` (from v12), topics by id (v13).
pub(crate) const FETCH_VERSION_MAX: i16 = 13;
/// The first Fetch version with `last_fetched_epoch` (and `diverging_epoch` in the response).
const LAST_FETCHED_EPOCH_VERSION: i16 = 12;
/// The first Fetch version that names topics by id (KIP-516). A leader whose replica is of
/// another topic of the same name (deleted and created again, and the leader not caught up
/// yet) answers UNKNOWN_TOPIC_ID instead of serving the other topic's records.
const TOPIC_ID_VERSION: i16 = 13;
/// OffsetForLeaderEpoch: v3 brought `replica_id` (a leader answers replicas from its own log,
/// KIP-320); v4 is the newest this module was written against.
pub(crate) const OFFSET_FOR_LEADER_EPOCH_VERSIONS: VersionRange = VersionRange { min: 3, max: 4 };
/// The longest a task waits before connecting again after failures.
pub(crate) const CONNECTION_BACKOFF_MAX_MS: u64 = 1_000;
/// A v2 record batch starts with its base offset (i64) and the length (i32) of the rest.
const BATCH_LENGTH_END: usize = 12;

/// The follower fetchers' settings, named after Kafka's `replica.*` configs.
#[derive(Clone, Debug)]
pub struct FetcherSettings {
    /// `replica.fetch.wait.max.ms`: how long the leader may hold a Fetch with no new data.
    pub max_wait_ms: i32,
    /// `replica.fetch.max.bytes`: per partition (the leader still returns at least one batch).
    pub partition_max_bytes: i32,
    /// `replica.fetch.response.max.bytes`: per response.
    pub response_max_bytes: i32,
    /// `replica.socket.timeout.ms`: connecting, and each request beyond `max_wait_ms`.
    pub request_timeout_ms: u64,
    /// `replica.fetch.backoff.ms`: how long a partition that got an error is left out of
    /// requests, and the first wait before reconnecting (doubling up to
    /// [`CONNECTION_BACKOFF_MAX_MS`]). Kafka's default is 1000 ms with no doubling; a shorter
    /// first wait lets followers reach a new leader sooner after a leader change.
    pub backoff_ms: u64,
    /// How connections to leaders are opened (the node's `Seams::net`).
    pub net: Arc<dyn spate_types::Network>,
    /// The wall clock handed to the replica with each truncation and append (segment roll
    /// by `segment.ms`, the replica core's `now`): the node's `Seams::clock`. Backoffs are
    /// runtime timers, not read from this clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for FetcherSettings {
    fn default() -> Self {
        Self {
            max_wait_ms: 500,
            partition_max_bytes: 1024 * 1024,
            response_max_bytes: 10 * 1024 * 1024,
            request_timeout_ms: 30_000,
            backoff_ms: 100,
            net: Arc::new(spate_types::TcpNetwork),
            clock: Arc::new(spate_types::SystemClock),
        }
    }
}

/// The fetcher tasks of this node, one per leader node it follows partitions from.
pub(crate) struct Fetchers {
    local: NodeId,
    settings: FetcherSettings,
    client: ClientConfig,
    addresses: watch::Sender<Arc<BTreeMap<NodeId, String>>>,
    registry: Mutex<Registry>,
    /// Connection-level failures of all tasks so far.
    connection_failures: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct Registry {
    tasks: BTreeMap<NodeId, TaskHandle>,
    /// The leader each followed partition is fetched from.
    leaders: BTreeMap<TopicPartition, NodeId>,
    next_generation: u64,
    /// Tasks told to stop and not awaited yet.
    retired: Vec<JoinHandle<()>>,
    shut_down: bool,
}

impl Registry {
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn retire(&mut self, join: JoinHandle<()>) {
        self.retired.retain(|h| !h.is_finished());
        self.retired.push(join);
    }

    /// Takes `tp` away from `leader`'s task; a task left with nothing is told to stop.
    fn detach(&mut self, tp: &TopicPartition, leader: NodeId) {
        let Some(task) = self.tasks.get(&leader) else {
            return;
        };
        let stopped = {
            let mut state = lock(&task.shared.state);
            state.partitions.remove(tp);
            if state.partitions.is_empty() {
                state.stopped = true;
            }
            state.stopped
        };
        if stopped {
            if let Some(task) = self.tasks.remove(&leader) {
                task.shared.stop.send_replace(true);
                self.retire(task.join);
            }
        }
    }
}

struct TaskHandle {
    shared: Arc<Shared>,
    join: JoinHandle<()>,
}

/// What a task shares with [`Fetchers`].
struct Shared {
    state: Mutex<TaskState>,
    /// A partition was added or moved back to truncating.
    wake: Notify,
    /// Set once: the task must end (in-flight requests are abandoned).
    stop: watch::Sender<bool>,
}

struct TaskState {
    partitions: BTreeMap<TopicPartition, Followed>,
    /// The task has ended or is ending: nothing may be added to it any more.
    stopped: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Truncating,
    Fetching,
}

/// One partition a task follows.
struct Followed {
    partition: Arc<Partition>,
    leader_epoch: LeaderEpoch,
    generation: u64,
    phase: Phase,
    /// Left out of requests until then (after an error).
    delayed_until: Option<Instant>,
    /// The kind of the last error logged, so that a repeated one is not logged again.
    trouble: Option<Trouble>,
}

impl Followed {
    fn new(partition: Arc<Partition>, leader_epoch: LeaderEpoch, generation: u64) -> Followed {
        Followed {
            partition,
            leader_epoch,
            generation,
            // A new leader or epoch may mean the logs diverged.
            phase: Phase::Truncating,
            delayed_until: None,
            trouble: None,
        }
    }
}

/// Kinds of per-partition errors, for logging each once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trouble {
    /// An error code from the leader.
    Leader(i16),
    /// Reading the local position, truncating or appending failed.
    Local,
    /// The leader's response left the partition out.
    Missing,
    /// The replica is no longer a follower of this leader in the followed epoch.
    NotFollowing,
    /// A diverging epoch that calls for no truncation.
    Diverging,
}

impl Fetchers {
    pub(crate) fn new(local: NodeId, settings: FetcherSettings) -> Self {
        Self {
            local,
            settings,
            client: ClientConfig::new(format!("spate-replica-fetcher-{local}")),
            addresses: watch::Sender::new(Arc::new(BTreeMap::new())),
            registry: Mutex::new(Registry::default()),
            connection_failures: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Where every broker's Kafka listener is (`host:port`). A task whose leader's address
    /// changes connects again.
    pub(crate) fn set_addresses(&self, addresses: BTreeMap<NodeId, String>) {
        self.addresses.send_if_modified(|current| {
            let changed = **current != addresses;
            if changed {
                *current = Arc::new(addresses);
            }
            changed
        });
    }

    /// Fetches `partition` from `leader` in `leader_epoch`, truncating first. Idempotent for
    /// the same partition, leader and epoch; a new epoch truncates again, a new leader moves
    /// the partition to that leader's task. Must be called inside a Tokio runtime.
    pub(crate) fn follow(
        &self,
        partition: Arc<Partition>,
        leader: NodeId,
        leader_epoch: LeaderEpoch,
    ) {
        let tp = partition.topic_partition().clone();
        if leader == self.local {
            tracing::error!(partition = %tp, %leader, "asked to follow this node itself; not fetching");
            self.unfollow(&tp);
            return;
        }
        let mut guard = lock(&self.registry);
        let reg = &mut *guard;
        if reg.shut_down {
            tracing::debug!(partition = %tp, "fetchers are shut down; not following");
            return;
        }
        match reg.leaders.get(&tp).copied() {
            Some(current) if current == leader => {
                if let Some(task) = reg.tasks.get(&leader) {
                    let mut state = lock(&task.shared.state);
                    if !state.stopped {
                        if let Some(followed) = state.partitions.get_mut(&tp) {
                            if followed.leader_epoch == leader_epoch
                                && Arc::ptr_eq(&followed.partition, &partition)
                            {
                                return;
                            }
                            let generation = reg.next_generation + 1;
                            reg.next_generation = generation;
                            *followed = Followed::new(partition, leader_epoch, generation);
                            drop(state);
                            task.shared.wake.notify_one();
                            tracing::debug!(partition = %tp, %leader, %leader_epoch, "new leader epoch; truncating before fetching");
                            return;
                        }
                    }
                }
            }
            Some(previous) => reg.detach(&tp, previous),
            None => {}
        }
        let generation = reg.generation();
        let followed = Followed::new(partition, leader_epoch, generation);
        if let Some(task) = reg.tasks.get(&leader) {
            let mut state = lock(&task.shared.state);
            if !state.stopped {
                state.partitions.insert(tp.clone(), followed);
                drop(state);
                task.shared.wake.notify_one();
                reg.leaders.insert(tp.clone(), leader);
                tracing::debug!(partition = %tp, %leader, %leader_epoch, "following");
                return;
            }
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(partition = %tp, "no Tokio runtime to start a fetcher in; not following");
            reg.leaders.remove(&tp);
            return;
        };
        if let Some(old) = reg.tasks.remove(&leader) {
            reg.retire(old.join);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(TaskState {
                partitions: BTreeMap::from([(tp.clone(), followed)]),
                stopped: false,
            }),
            wake: Notify::new(),
            stop: watch::Sender::new(false),
        });
        let task = Task {
            local: self.local,
            leader,
            settings: self.settings.clone(),
            client: self.client.clone(),
            stop: shared.stop.subscribe(),
            shared: shared.clone(),
            addresses: self.addresses.subscribe(),
            connection: None,
            connection_backoff_ms: self.settings.backoff_ms,
            trouble: None,
            connection_failures: self.connection_failures.clone(),
        };
        let join = runtime.spawn(task.run());
        reg.tasks.insert(leader, TaskHandle { shared, join });
        reg.leaders.insert(tp.clone(), leader);
        tracing::info!(%leader, "started a replica fetcher");
        tracing::debug!(partition = %tp, %leader, %leader_epoch, "following");
    }

    /// Stops fetching `tp`. A response in flight for it is ignored when it arrives.
    pub(crate) fn unfollow(&self, tp: &TopicPartition) {
        let mut reg = lock(&self.registry);
        if let Some(leader) = reg.leaders.remove(tp) {
            reg.detach(tp, leader);
            tracing::debug!(partition = %tp, %leader, "no longer following");
        }
    }

    /// Stops every task and waits for them; later `follow` calls do nothing. In-flight
    /// requests are abandoned; a truncation or append already running completes first.
    pub(crate) async fn shutdown(&self) {
        let handles = {
            let mut reg = lock(&self.registry);
            reg.shut_down = true;
            reg.leaders.clear();
            let mut handles = std::mem::take(&mut reg.retired);
            for (_, task) in std::mem::take(&mut reg.tasks) {
                lock(&task.shared.state).stopped = true;
                task.shared.stop.send_replace(true);
                handles.push(task.join);
            }
            handles
        };
        for handle in handles {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    tracing::error!(error = %e, "a replica fetcher task panicked");
                }
            }
        }
    }

    /// Connection-level failures of all tasks so far (connect, send, or response errors).
    #[cfg(test)]
    pub(crate) fn connection_failures(&self) -> watch::Receiver<u64> {
        self.connection_failures.subscribe()
    }

    /// The leaders that have a running task.
    #[cfg(test)]
    pub(crate) fn leaders(&self) -> Vec<NodeId> {
        lock(&self.registry).tasks.keys().copied().collect()
    }
}

impl Drop for Fetchers {
    /// Tasks must not outlive their owner: without [`Fetchers::shutdown`] they are told to stop
    /// (and not waited for).
    fn drop(&mut self) {
        let reg = lock(&self.registry);
        for task in reg.tasks.values() {
            lock(&task.shared.state).stopped = true;
            task.shared.stop.send_replace(true);
        }
    }
}

/// A std mutex's guard even if a panic poisoned it: every critical section here leaves the
/// state consistent (single-field updates), so what a panicking holder left is usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A partition as a round sees it: what the request was built for.
#[derive(Clone)]
struct Item {
    tp: TopicPartition,
    partition: Arc<Partition>,
    leader_epoch: LeaderEpoch,
    generation: u64,
}

#[derive(Default)]
struct Work {
    truncating: Vec<Item>,
    fetching: Vec<Item>,
    /// When the earliest delayed partition may be included again.
    next_ready: Option<Instant>,
}

enum RoundError {
    /// The connection failed (it is dropped) or cannot serve the request.
    Client(ClientError),
    /// The leader refused the whole request (the connection is kept).
    Leader(ResponseError),
    /// The task was told to stop mid-request.
    Stopped,
}

impl From<ClientError> for RoundError {
    fn from(e: ClientError) -> Self {
        RoundError::Client(e)
    }
}

/// What a truncation or append on the blocking pool did.
enum DiskOutcome {
    Done,
    /// The replica is no longer a follower of the leader in the followed epoch: nothing done.
    NotFollowing,
}

type DiskResult = Result<DiskOutcome, ReplicaError>;

/// A truncation or append under way; see [`spawn_disk`].
type DiskJob = JoinHandle<Result<DiskResult, BlockingPanicked>>;

/// A truncation or append started on the blocking pool, to be awaited before the next round.
struct Job {
    item: Item,
    position: FollowerPosition,
    kind: JobKind,
    /// `None`: nothing to do on disk (the log already ends at or below the target).
    handle: Option<DiskJob>,
}

enum JobKind {
    Append,
    /// Truncation to `offset`; on success the partition goes to `then`.
    Truncate {
        offset: Offset,
        then: Phase,
    },
}

struct Task {
    local: NodeId,
    leader: NodeId,
    settings: FetcherSettings,
    client: ClientConfig,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    addresses: watch::Receiver<Arc<BTreeMap<NodeId, String>>>,
    /// Kept between rounds while usable.
    connection: Option<Connection>,
    connection_backoff_ms: u64,
    /// The kind of the last connection-level error logged.
    trouble: Option<String>,
    connection_failures: Arc<watch::Sender<u64>>,
}

impl Task {
    /// An error code from the leader for one partition: it stays in its phase, left out of
    /// requests for a backoff period. Leadership errors are routine during a leader change
    /// (the controller's next image calls `follow` again).
    fn leader_error(&self, item: &Item, error: ResponseError) {
        self.partition_trouble(item, Trouble::Leader(error.code()), &error_name(error));
    }

    fn not_following(&self, item: &Item) {
        let message = "the replica is no longer a follower in the followed epoch";
        self.partition_trouble(item, Trouble::NotFollowing, &message);
    }

    /// Logs `trouble` unless it was the partition's last one, and delays the partition.
    fn partition_trouble(&self, item: &Item, trouble: Trouble, error: &dyn std::fmt::Display) {
        let until = Instant::now() + Duration::from_millis(self.settings.backoff_ms);
        self.update(item, |f| {
            if f.trouble != Some(trouble) {
                let routine = match trouble {
                    Trouble::NotFollowing => true,
                    Trouble::Leader(code) => code != ResponseError::KafkaStorageError.code(),
                    Trouble::Local | Trouble::Missing | Trouble::Diverging => false,
                };
                if routine {
                    tracing::info!(partition = %item.tp, leader = %self.leader, leader_epoch = %item.leader_epoch, %error, "cannot fetch this partition now; retrying");
                } else {
                    tracing::warn!(partition = %item.tp, leader = %self.leader, leader_epoch = %item.leader_epoch, %error, "replication of this partition failed; retrying");
                }
                f.trouble = Some(trouble);
            }
            f.delayed_until = Some(until);
        });
    }

    /// Runs `f` on the partition if it is still followed as `item` was; false if not.
    fn update(&self, item: &Item, f: impl FnOnce(&mut Followed)) -> bool {
        let mut state = lock(&self.shared.state);
        match state.partitions.get_mut(&item.tp) {
            Some(followed) if followed.generation == item.generation => {
                f(followed);
                true
            }
            _ => false,
        }
    }

    fn is_current(&self, item: &Item) -> bool {
        self.update(item, |_| {})
    }
}

/// The leader's high watermark and log start offset, as one Fetch response reported them.
#[derive(Clone, Copy, Debug)]
struct LeaderMarks {
    high_watermark: Offset,
    log_start: Offset,
}

/// Starts `work` (blocking: it writes and fsyncs) at once, so that the jobs of one round run
/// side by side: in a task of its own that hands it to the blocking pool, or runs it inline on
/// a simulator's thread ([`spate_types::exec::blocking`]).
fn spawn_disk<F>(work: F) -> DiskJob
where
    F: FnOnce() -> DiskResult + Send + 'static,
{
    tokio::spawn(spate_types::exec::blocking(work))
}

fn joined(
    result: Result<Result<DiskResult, BlockingPanicked>, tokio::task::JoinError>,
) -> DiskResult {
    let failed = |e: &dyn std::fmt::Display| {
        Err(ReplicaError::Log(spate_log::LogError::Io(
            std::io::Error::other(format!("the blocking task failed: {e}")),
        )))
    };
    match result {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => failed(&e),
        Err(e) => failed(&e),
    }
}

/// `f`, unless the task is told to stop first (then `f` is dropped: a request in flight leaves
/// the connection poisoned, which is fine as the task ends).
async fn until_stopped<F: Future>(stop: &watch::Receiver<bool>, f: F) -> Option<F::Output> {
    let mut stop = stop.clone();
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => None,
        out = f => Some(out),
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

#[cfg(test)]
#[path = "fetcher_tests.rs"]
mod tests;
