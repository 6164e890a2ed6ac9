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

use crate::core::Role;
use crate::partition::{FollowerPosition, Partition, ReplicaError};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, OffsetForLeaderEpochRequest, TopicName,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use spate_client::{error_name, ClientConfig, ClientError, Connection, Deadline};
use spate_log::FollowerAppendError;
use spate_types::exec::BlockingPanicked;
use spate_types::{Clock, LeaderEpoch, NodeId, Offset, TopicPartition};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    async fn run(mut self) {
        tracing::debug!(leader = %self.leader, "replica fetcher running");
        loop {
            let Some(work) = self.work() else { break };
            if work.truncating.is_empty() && work.fetching.is_empty() {
                if !self.idle(work.next_ready).await {
                    break;
                }
                continue;
            }
            let Some(mut connection) = self.connect().await else {
                continue;
            };
            let result = if work.truncating.is_empty() {
                self.fetch_round(&mut connection, work.fetching).await
            } else {
                self.truncate_round(&mut connection, work.truncating).await
            };
            match result {
                Ok(()) => {
                    self.connection_backoff_ms = self.settings.backoff_ms;
                    if let Some(kind) = self.trouble.take() {
                        tracing::info!(leader = %self.leader, after = %kind, "replica fetcher is reaching its leader again");
                    }
                    self.keep(connection);
                }
                Err(RoundError::Client(e)) => {
                    drop(connection);
                    self.failed(client_error_kind(&e), &e).await;
                }
                Err(RoundError::Leader(e)) => {
                    self.keep(connection);
                    self.failed(error_name(e), &e).await;
                }
                Err(RoundError::Stopped) => break,
            }
        }
        tracing::debug!(leader = %self.leader, "replica fetcher stopped");
    }

    fn keep(&mut self, connection: Connection) {
        if connection.is_usable() {
            self.connection = Some(connection);
        }
    }

    /// The partitions to include in the next round; `None` once the task must end.
    fn work(&self) -> Option<Work> {
        let mut state = lock(&self.shared.state);
        if state.stopped || *self.stop.borrow() {
            return None;
        }
        if state.partitions.is_empty() {
            state.stopped = true;
            return None;
        }
        let now = Instant::now();
        let mut work = Work::default();
        for (tp, followed) in &mut state.partitions {
            if let Some(until) = followed.delayed_until {
                if until > now {
                    work.next_ready = Some(work.next_ready.map_or(until, |t| t.min(until)));
                    continue;
                }
                followed.delayed_until = None;
            }
            let item = Item {
                tp: tp.clone(),
                partition: followed.partition.clone(),
                leader_epoch: followed.leader_epoch,
                generation: followed.generation,
            };
            match followed.phase {
                Phase::Truncating => work.truncating.push(item),
                Phase::Fetching => work.fetching.push(item),
            }
        }
        Some(work)
    }

    /// Waits for a new partition, a delay to pass, or the stop; false on stop.
    async fn idle(&mut self, until: Option<Instant>) -> bool {
        let delay = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // Biased (deterministic under simulation): the stop, then the timer; both other
        // branches lead to the same next round.
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => false,
            _ = delay => true,
            _ = self.shared.wake.notified() => true,
        }
    }

    /// The connection to the leader, opened if needed; `None` after a failure (already
    /// backed off) or on stop.
    async fn connect(&mut self) -> Option<Connection> {
        let address = self
            .addresses
            .borrow_and_update()
            .get(&self.leader)
            .cloned();
        let Some(address) = address else {
            let message = format!("no address known for node {}", self.leader);
            self.failed("no address".to_owned(), &message).await;
            return None;
        };
        if let Some(connection) = self.connection.take() {
            if connection.is_usable() && connection.addr() == address {
                return Some(connection);
            }
        }
        let deadline = Deadline::after_ms(self.settings.request_timeout_ms);
        let connecting =
            Connection::connect_via(self.settings.net.as_ref(), &address, &self.client, deadline);
        match until_stopped(&self.stop, connecting).await {
            None => None,
            Some(Ok(connection)) => {
                tracing::debug!(leader = %self.leader, %address, "replica fetcher connected");
                Some(connection)
            }
            Some(Err(e)) => {
                self.failed(client_error_kind(&e), &e).await;
                None
            }
        }
    }

    /// Logs a connection-level failure (once per kind) and backs off; an address change or
    /// the stop ends the wait early.
    async fn failed(&mut self, kind: String, error: &(dyn std::fmt::Display + Sync)) {
        self.connection_failures.send_modify(|n| *n += 1);
        if self.trouble.as_deref() != Some(kind.as_str()) {
            tracing::warn!(leader = %self.leader, %error, backoff_ms = self.connection_backoff_ms, "replica fetcher cannot fetch from its leader; retrying");
            self.trouble = Some(kind);
        }
        let wait = Duration::from_millis(self.connection_backoff_ms);
        self.connection_backoff_ms = self
            .connection_backoff_ms
            .saturating_mul(2)
            .min(CONNECTION_BACKOFF_MAX_MS.max(self.settings.backoff_ms));
        let addresses = &mut self.addresses;
        let address_changed = async {
            if addresses.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        // Biased (deterministic under simulation): the stop, then the timer. Every branch ends
        // the wait alike.
        tokio::select! {
            biased;
            _ = self.stop.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(wait) => {}
            _ = address_changed => {}
        }
    }

    /// OffsetForLeaderEpoch for the truncating partitions, then their truncation; or, from a
    /// leader that takes Fetch v13, straight to fetching (truncation on fetch).
    async fn truncate_round(
        &self,
        connection: &mut Connection,
        items: Vec<Item>,
    ) -> Result<(), RoundError> {
        if connection.version_at_most::<FetchRequest>(FETCH_VERSION_MAX)? >= TOPIC_ID_VERSION {
            for item in items {
                self.update(&item, |f| f.phase = Phase::Fetching);
            }
            return Ok(());
        }
        let mut asks = Vec::new();
        for item in items {
            match item.partition.follower_position() {
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
                Ok(position) => match position.last_epoch {
                    // An empty log, or one written before leader epochs: nothing to compare.
                    None => {
                        self.update(&item, |f| f.phase = Phase::Fetching);
                    }
                    Some(last_epoch) => asks.push((item, position, last_epoch)),
                },
            }
        }
        if asks.is_empty() {
            return Ok(());
        }
        let range = OFFSET_FOR_LEADER_EPOCH_VERSIONS;
        let version = connection.version_at_most::<OffsetForLeaderEpochRequest>(range.max)?;
        if version < range.min {
            return Err(RoundError::Client(ClientError::Unsupported {
                addr: connection.addr().to_owned(),
                api_key: ApiKey::OffsetForLeaderEpoch,
                client: range,
                broker: connection.broker_versions(ApiKey::OffsetForLeaderEpoch),
            }));
        }
        let mut topics: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
        for (item, _, last_epoch) in &asks {
            topics.entry(item.tp.topic.as_str()).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(item.tp.partition)
                    .with_current_leader_epoch(item.leader_epoch.0)
                    .with_leader_epoch(last_epoch.0),
            );
        }
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.local.0))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetForLeaderTopic::default()
                            .with_topic(topic_name(name))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let deadline = Deadline::after_ms(self.settings.request_timeout_ms);
        let response = until_stopped(&self.stop, connection.send_at(&request, version, deadline))
            .await
            .ok_or(RoundError::Stopped)??;
        let mut answers: BTreeMap<TopicPartition, EpochEndOffset> = BTreeMap::new();
        for topic in response.topics {
            let name = topic.topic.0.to_string();
            for answer in topic.partitions {
                answers.insert(TopicPartition::new(name.clone(), answer.partition), answer);
            }
        }
        let mut pending = Vec::new();
        for (item, position, _) in asks {
            let Some(answer) = answers.remove(&item.tp) else {
                let message = "the OffsetForLeaderEpoch response left the partition out";
                self.partition_trouble(&item, Trouble::Missing, &message);
                continue;
            };
            if let Some(error) = ResponseError::try_from_code(answer.error_code) {
                self.leader_error(&item, error);
                continue;
            }
            match self.truncation(&item, &position, answer.leader_epoch, answer.end_offset) {
                Ok(target) => pending.push((item, position, target)),
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
            }
        }
        // Truncations of different partitions run side by side.
        let jobs: Vec<Job> = pending
            .into_iter()
            .map(|(item, position, target)| {
                let then = if target.complete {
                    Phase::Fetching
                } else {
                    Phase::Truncating
                };
                self.truncate_job(item, position, target.offset, false, then)
            })
            .collect();
        self.finish(jobs).await;
        Ok(())
    }

    /// A truncation of `item` to `offset` (or a restart of its log there, `fully`), started on
    /// the blocking pool. `offset` is never past the log end unless `fully`; a truncation at
    /// the log end cuts no record but drops an epoch that starts there with nothing written
    /// in it (see `PartitionLog::truncate_to`).
    fn truncate_job(
        &self,
        item: Item,
        position: FollowerPosition,
        offset: Offset,
        fully: bool,
        then: Phase,
    ) -> Job {
        let handle = Some(self.spawn_truncate(&item, offset, fully));
        Job {
            item,
            position,
            kind: JobKind::Truncate { offset, then },
            handle,
        }
    }

    /// Waits for every job of the round and applies its result.
    async fn finish(&self, jobs: Vec<Job>) {
        for job in jobs {
            let result = match job.handle {
                Some(handle) => joined(handle.await),
                None => Ok(DiskOutcome::Done),
            };
            match job.kind {
                JobKind::Append => self.after_append(&job.item, result),
                JobKind::Truncate { offset, then } => {
                    self.after_truncation(&job.item, &job.position, offset, result, then)
                }
            }
        }
    }

    /// Applies a truncation's result: on success the partition moves to `phase`.
    fn after_truncation(
        &self,
        item: &Item,
        position: &FollowerPosition,
        offset: Offset,
        result: DiskResult,
        phase: Phase,
    ) {
        match result {
            Ok(DiskOutcome::Done) => {
                if offset < position.log_end {
                    tracing::info!(partition = %item.tp, leader = %self.leader, leader_epoch = %item.leader_epoch, from = %position.log_end, to = %offset, "truncated to the leader's log");
                }
                self.update(item, |f| {
                    f.phase = phase;
                    f.trouble = None;
                });
            }
            Ok(DiskOutcome::NotFollowing) => self.not_following(item),
            Err(e) => self.partition_trouble(item, Trouble::Local, &e),
        }
    }

    /// Where to truncate given the leader's `(epoch, end offset)`, with this log's own end of
    /// that epoch.
    fn truncation(
        &self,
        item: &Item,
        position: &FollowerPosition,
        leader_epoch: i32,
        leader_end_offset: i64,
    ) -> Result<Truncation, ReplicaError> {
        let ours = if leader_epoch >= 0 && leader_end_offset >= 0 {
            item.partition.epoch_end_offset(LeaderEpoch(leader_epoch))?
        } else {
            None
        };
        Ok(truncation_target(
            position.log_end,
            item.partition.high_watermark(),
            leader_epoch,
            leader_end_offset,
            ours,
        ))
    }

    /// One Fetch for the fetching partitions, then the appends and truncations it calls for;
    /// returns when all of them are done, so the next Fetch reports durable offsets.
    async fn fetch_round(
        &self,
        connection: &mut Connection,
        items: Vec<Item>,
    ) -> Result<(), RoundError> {
        let version = connection.version_at_most::<FetchRequest>(FETCH_VERSION_MAX)?;
        let mut asked: BTreeMap<TopicPartition, (Item, FollowerPosition)> = BTreeMap::new();
        let mut repairs = Vec::new();
        for item in items {
            match item.partition.follower_position() {
                // A damaged batch out of the ISR: cut it away first (see `damage.rs`).
                Ok(position) => match item.partition.repair_offset() {
                    Some(offset) => {
                        tracing::info!(partition = %item.tp, %offset, "truncating below the damaged batch");
                        repairs.push(self.truncate_job(
                            item,
                            position,
                            offset,
                            false,
                            Phase::Fetching,
                        ));
                    }
                    None => {
                        asked.insert(item.tp.clone(), (item, position));
                    }
                },
                Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
            }
        }
        if !repairs.is_empty() {
            self.finish(repairs).await;
        }
        if asked.is_empty() {
            return Ok(());
        }
        // By id from v13, so that only the replica of this very topic answers; the response
        // names topics the same way.
        let by_id = version >= TOPIC_ID_VERSION;
        let mut topics: BTreeMap<(&str, uuid::Uuid), Vec<FetchPartition>> = BTreeMap::new();
        for (item, position) in asked.values() {
            let last_fetched_epoch = match position.last_epoch {
                Some(epoch) if version >= LAST_FETCHED_EPOCH_VERSION => epoch.0,
                _ => -1,
            };
            let topic_id = item.partition.topic_id();
            topics
                .entry((item.tp.topic.as_str(), topic_id))
                .or_default()
                .push(
                    FetchPartition::default()
                        .with_partition(item.tp.partition)
                        .with_current_leader_epoch(item.leader_epoch.0)
                        .with_fetch_offset(position.log_end.0)
                        .with_last_fetched_epoch(last_fetched_epoch)
                        .with_log_start_offset(position.log_start.0)
                        .with_partition_max_bytes(self.settings.partition_max_bytes),
                );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(self.local.0))
            .with_max_wait_ms(self.settings.max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(self.settings.response_max_bytes)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|((name, topic_id), partitions)| {
                        let topic = FetchTopic::default().with_partitions(partitions);
                        if by_id {
                            topic.with_topic_id(topic_id)
                        } else {
                            topic.with_topic(topic_name(name))
                        }
                    })
                    .collect(),
            );
        let names: BTreeMap<uuid::Uuid, String> = asked
            .values()
            .map(|(item, _)| (item.partition.topic_id(), item.tp.topic.clone()))
            .collect();
        let wait_ms = u64::try_from(self.settings.max_wait_ms).unwrap_or(0);
        let deadline = Deadline::after_ms(wait_ms.saturating_add(self.settings.request_timeout_ms));
        let response = until_stopped(&self.stop, connection.send_at(&request, version, deadline))
            .await
            .ok_or(RoundError::Stopped)??;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(RoundError::Leader(error));
        }
        let mut jobs = Vec::new();
        for topic in response.responses {
            let name = if by_id {
                // An id not asked for: its partitions are not looked at.
                let Some(name) = names.get(&topic.topic_id) else {
                    continue;
                };
                name.clone()
            } else {
                topic.topic.0.to_string()
            };
            for data in topic.partitions {
                let tp = TopicPartition::new(name.clone(), data.partition_index);
                // Not asked for, or already seen in this response.
                let Some((item, position)) = asked.remove(&tp) else {
                    continue;
                };
                if !self.is_current(&item) {
                    continue;
                }
                if let Some(error) = ResponseError::try_from_code(data.error_code) {
                    if error == ResponseError::OffsetOutOfRange {
                        self.out_of_range(item, position, data.log_start_offset, &mut jobs);
                    } else {
                        self.leader_error(&item, error);
                    }
                    continue;
                }
                let diverging = &data.diverging_epoch;
                if diverging.epoch >= 0 {
                    let (epoch, end_offset) = (diverging.epoch, diverging.end_offset);
                    // Our latest epoch is newer than the leader's answer: cut to its end, even
                    // if no record goes (an epoch we led in without writing).
                    let newer = position.last_epoch.is_some_and(|e| e.0 > epoch);
                    match self.truncation(&item, &position, epoch, end_offset) {
                        Ok(target) if target.offset < position.log_end || newer => {
                            tracing::debug!(partition = %item.tp, epoch, end_offset, "the leader reports a diverging epoch");
                            // Kafka stays fetching: the next request's last fetched epoch
                            // tells the leader whether the logs agree now.
                            jobs.push(self.truncate_job(
                                item,
                                position,
                                target.offset,
                                false,
                                Phase::Fetching,
                            ));
                        }
                        Ok(_) => {
                            // Nothing to cut: only a leader breaking the protocol says so.
                            // Wait rather than ask again at once.
                            let message = format!("the leader reports diverging epoch {epoch} ending at {end_offset}, but the log agrees with it");
                            self.partition_trouble(&item, Trouble::Diverging, &message);
                        }
                        Err(e) => self.partition_trouble(&item, Trouble::Local, &e),
                    }
                    continue;
                }
                let records = data.records.unwrap_or_default();
                let whole = whole_batches_len(&records);
                if whole < records.len() {
                    tracing::trace!(partition = %item.tp, dropped = records.len() - whole, "partial batch at the end of a fetch response");
                }
                let records = records.slice(..whole);
                let marks = LeaderMarks {
                    high_watermark: Offset(data.high_watermark),
                    log_start: Offset(data.log_start_offset),
                };
                if records.is_empty() && marks.log_start <= position.log_start {
                    // Nothing to write, no fsync, no log start to move: take the leader's high
                    // watermark in here rather than on the blocking pool, so idle partitions
                    // cost one lock.
                    let result = self.append(&item, &records, marks);
                    self.after_append(&item, result);
                } else {
                    let handle = self.spawn_append(&item, records, marks);
                    jobs.push(Job {
                        item,
                        position,
                        kind: JobKind::Append,
                        handle: Some(handle),
                    });
                }
            }
        }
        for (item, _) in asked.values() {
            let message = "the Fetch response left the partition out";
            self.partition_trouble(item, Trouble::Missing, &message);
        }
        self.finish(jobs).await;
        Ok(())
    }

    /// OFFSET_OUT_OF_RANGE: below the leader's log start the log starts over there (Kafka's
    /// `truncateFullyAndStartAt`); past its log end the logs diverged: truncate again.
    fn out_of_range(
        &self,
        item: Item,
        position: FollowerPosition,
        leader_log_start: i64,
        jobs: &mut Vec<Job>,
    ) {
        if leader_log_start >= 0 && position.log_end.0 < leader_log_start {
            let offset = Offset(leader_log_start);
            tracing::info!(partition = %item.tp, leader = %self.leader, log_end = %position.log_end, leader_log_start = %offset, "behind the leader's log start; starting the log over there");
            jobs.push(self.truncate_job(item, position, offset, true, Phase::Fetching));
        } else {
            let message = format!(
                "fetch offset {} is out of range on the leader; truncating again",
                position.log_end
            );
            self.partition_trouble(
                &item,
                Trouble::Leader(ResponseError::OffsetOutOfRange.code()),
                &message,
            );
            self.update(&item, |f| f.phase = Phase::Truncating);
        }
    }

    fn after_append(&self, item: &Item, result: DiskResult) {
        match result {
            Ok(DiskOutcome::Done) => {
                self.update(item, |f| {
                    if f.trouble.take().is_some() {
                        tracing::info!(partition = %item.tp, "fetching again");
                    }
                });
            }
            Ok(DiskOutcome::NotFollowing) => self.not_following(item),
            Err(ReplicaError::Diverged { source, .. }) => {
                tracing::info!(partition = %item.tp, leader = %self.leader, error = %source, "the leader's batches do not follow the local log; truncating again");
                self.update(item, |f| f.phase = Phase::Truncating);
            }
            Err(e) => self.partition_trouble(item, Trouble::Local, &e),
        }
    }

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

    /// `truncate_to(offset)` (or `truncate_fully(offset)`) on the blocking pool, if the
    /// replica still follows this leader in this epoch.
    fn spawn_truncate(&self, item: &Item, offset: Offset, fully: bool) -> DiskJob {
        let partition = item.partition.clone();
        let (leader, epoch) = (self.leader, item.leader_epoch);
        spawn_disk(move || {
            if !following(&partition.follower_position()?, leader, epoch) {
                return Ok(DiskOutcome::NotFollowing);
            }
            let commands = if fully {
                partition.truncate_fully(offset)?
            } else {
                partition.truncate_to(offset)?
            };
            if !commands.is_empty() {
                tracing::debug!(partition = %partition.topic_partition(), ?commands, "commands after truncation (not for the fetcher)");
            }
            Ok(DiskOutcome::Done)
        })
    }

    fn spawn_append(&self, item: &Item, records: Bytes, leader: LeaderMarks) -> DiskJob {
        let partition = item.partition.clone();
        let (leader_id, epoch) = (self.leader, item.leader_epoch);
        let clock = self.settings.clock.clone();
        spawn_disk(move || {
            append_from_leader(&partition, leader_id, epoch, &records, leader, &*clock)
        })
    }

    fn append(&self, item: &Item, records: &[u8], leader: LeaderMarks) -> DiskResult {
        append_from_leader(
            &item.partition,
            self.leader,
            item.leader_epoch,
            records,
            leader,
            &*self.settings.clock,
        )
    }
}

/// The leader's high watermark and log start offset, as one Fetch response reported them.
#[derive(Clone, Copy, Debug)]
struct LeaderMarks {
    high_watermark: Offset,
    log_start: Offset,
}

/// The follower's append of what the leader returned (blocking: it fsyncs), then the leader's
/// log start offset taken in. A log emptied at an offset inside the leader's first batch (a
/// log start set by DeleteRecords falls inside batches) starts over at that batch's base
/// offset, as Kafka's follower does. The time handed to the replica is `clock`'s.
fn append_from_leader(
    partition: &Partition,
    leader: NodeId,
    epoch: LeaderEpoch,
    records: &[u8],
    marks: LeaderMarks,
    clock: &dyn Clock,
) -> DiskResult {
    let high_watermark = marks.high_watermark;
    let position = partition.follower_position()?;
    if !following(&position, leader, epoch) {
        return Ok(DiskOutcome::NotFollowing);
    }
    let commands = match partition.append_from_leader(records, high_watermark, clock.now_ms()) {
        Err(ReplicaError::Diverged {
            source: FollowerAppendError::NonMonotonicAppend { .. },
            ..
        }) if position.log_start == position.log_end
            && first_batch_straddles(records, position.log_end) =>
        {
            let base = Offset(batch_base_offset(records).unwrap_or(position.log_end.0));
            tracing::info!(partition = %partition.topic_partition(), log_start = %position.log_start, batch_base = %base, "the leader's first batch starts below the empty log; starting the log at it");
            partition.truncate_fully(base)?;
            partition.append_from_leader(records, high_watermark, clock.now_ms())?
        }
        other => other?,
    };
    if let Some(log_start) = partition.follow_leader_log_start(marks.log_start)? {
        tracing::info!(partition = %partition.topic_partition(), %log_start, "log start raised to the leader's");
    }
    if !commands.is_empty() {
        tracing::debug!(partition = %partition.topic_partition(), ?commands, "commands after a follower append (not for the fetcher)");
    }
    Ok(DiskOutcome::Done)
}

fn following(position: &FollowerPosition, leader: NodeId, epoch: LeaderEpoch) -> bool {
    position.role == (Role::Follower { leader }) && position.leader_epoch == epoch
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

/// A connection-level error's kind, for logging each kind once.
fn client_error_kind(e: &ClientError) -> String {
    let kind = match e {
        ClientError::Unreachable { .. } => "unreachable",
        ClientError::TimedOut { .. } => "timed out",
        ClientError::Io { .. } => "connection failed",
        ClientError::FrameTooLarge { .. } => "frame too large",
        ClientError::Protocol { .. } => "protocol error",
        ClientError::RequestTooLarge { .. } => "request too large",
        ClientError::Encode { .. } => "cannot encode",
        ClientError::Unsupported { .. } | ClientError::VersionNotSupported { .. } => {
            "unsupported version"
        }
        ClientError::Poisoned { .. } => "poisoned",
        ClientError::Kafka { error, .. } => return error_name(*error),
    };
    kind.to_owned()
}

/// Where to truncate and whether truncation is then complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncation {
    pub offset: Offset,
    /// False when the leader answered with an epoch this log does not have: the log is cut to
    /// where its largest epoch below that one ends, and the leader is asked again.
    pub complete: bool,
}

/// Kafka's `getOffsetTruncationState`: where a follower whose log ends at `log_end` truncates,
/// given the leader's answer `(leader_epoch, leader_end_offset)` (to OffsetForLeaderEpoch for
/// its latest epoch, or a diverging epoch in a Fetch response), and `ours`, this log's own
/// largest epoch ≤ the leader's and where it ends ([`Partition::epoch_end_offset`]).
///
/// The result never exceeds `log_end`.
pub(crate) fn truncation_target(
    log_end: Offset,
    high_watermark: Offset,
    leader_epoch: i32,
    leader_end_offset: i64,
    ours: Option<(LeaderEpoch, Offset)>,
) -> Truncation {
    let done = |offset: Offset| Truncation {
        offset: offset.min(log_end),
        complete: true,
    };
    if leader_end_offset < 0 {
        // UNDEFINED: the leader knows no epoch as old as ours. Kafka keeps what is committed.
        return done(high_watermark);
    }
    let leader_end = Offset(leader_end_offset);
    if leader_epoch < 0 {
        return done(leader_end);
    }
    match ours {
        // This log does not have the leader's epoch: keep what precedes our next epoch and
        // ask again (KIP-279), unless that cuts nothing (a leader breaking the protocol).
        Some((epoch, end)) if epoch.0 != leader_epoch && end < log_end => Truncation {
            offset: end,
            complete: false,
        },
        Some((epoch, end)) if epoch.0 == leader_epoch => done(end.min(leader_end)),
        _ => done(leader_end),
    }
}

/// The length of the whole batches at the start of `records`: a leader cuts a response at its
/// byte limit, possibly inside a batch, which is fetched again in full next time. A negative
/// length counts as whole so that validation refuses it rather than it being dropped here.
pub(crate) fn whole_batches_len(records: &[u8]) -> usize {
    let mut pos = 0usize;
    while let Some(header) = records.get(pos..pos + BATCH_LENGTH_END) {
        let length = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let Ok(length) = usize::try_from(length) else {
            return records.len();
        };
        let end = pos + BATCH_LENGTH_END + length;
        if end > records.len() {
            break;
        }
        pos = end;
    }
    pos
}

fn batch_base_offset(records: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = records.get(..8)?.try_into().ok()?;
    Some(i64::from_be_bytes(bytes))
}

/// The first batch holds `offset` without starting at it (base < offset ≤ last).
fn first_batch_straddles(records: &[u8], offset: Offset) -> bool {
    // Last offset delta: after base offset (8), length (4), leader epoch (4), magic (1),
    // CRC (4) and attributes (2).
    let (Some(base), Some(delta)) = (
        batch_base_offset(records),
        records
            .get(23..27)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes),
    ) else {
        return false;
    };
    base < offset.0 && base.saturating_add(i64::from(delta)) >= offset.0
}

#[cfg(test)]
#[path = "fetcher_tests.rs"]
mod tests;
