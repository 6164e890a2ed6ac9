//! The transaction coordinator task: one owner of the [`TxnCoordinator`] core, reached by
//! message.
//!
//! A node coordinates the transactional ids of the `__transaction_state` partitions it leads;
//! [`TxnService::own`] hands the task that set after every reconciliation. A newly led
//! partition is replayed into memory (as the leader, its log is the partition's truth) with
//! the partition's leader epoch as the coordinator epoch, which every marker carries: a
//! partition refuses markers from an older coordinator. Requests for ids of a partition not
//! led here get NOT_COORDINATOR, or COORDINATOR_LOAD_IN_PROGRESS while it loads.
//!
//! A record the core asks to store is appended as the partition's leader and the core hears
//! of it ([`TxnCoordinator::stored`]) only once it is below the high watermark, fsynced on
//! every in-sync replica: whatever a client is told survives a coordinator failover. Markers
//! are written by a [`MarkerWriter`] (the node's: local partitions directly, others through
//! WriteTxnMarkers to their leaders), retried until written; a job of a partition no longer
//! led here is abandoned, and the new coordinator sends it again after loading.

use super::core::TxnCoordinator;
use super::messages::{
    AddPartitionsRequest, EndRequest, InitRequest, MarkerJob, NeedProducerId, StoreFailure,
    TxnAction, TxnAnswer, TxnError, TxnSettings, WriteId,
};
use super::records::TxnRecord;
use crate::core::ReplyId;
use crate::service::{append_records, replay_records};
use futures::future::BoxFuture;
use spate_replica::{Partition, ReplicaError};
use spate_types::{Clock, Seams};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests queued for the task; senders wait when it is full.
const COMMANDS_QUEUED_MAX: usize = 4096;

/// Longest an AddPartitionsToTxn (or AddOffsetsToTxn) waits for the id's state to settle
/// before it is answered CONCURRENT_TRANSACTIONS. A producer's next transaction starts right
/// after its EndTxn is answered, while the markers of the previous one are still being
/// written; answered at once, librdkafka backs off about 20 ms before it asks again, which
/// halved the throughput of back-to-back transactions (docs/benchmarks.md). Markers take
/// milliseconds; a transaction whose markers are stuck (a partition without a leader) is
/// answered CONCURRENT_TRANSACTIONS after this and the client retries as before.
const CONCURRENT_WAIT_MAX: Duration = Duration::from_secs(1);

/// How markers reach the partitions of a transaction.
pub trait MarkerWriter: Send + Sync + 'static {
    /// Writes the markers of `job` on every one of its partitions, each durably (as an
    /// acks=all write), retrying until written or the partition no longer exists. Gives up
    /// (returns `false`) once `abandon` turns true or a partition refuses the coordinator epoch
    /// as older than one it has seen.
    fn write(&self, job: MarkerJob, abandon: watch::Receiver<bool>) -> BoxFuture<'static, bool>;
}

type Query = Box<dyn FnOnce(&mut TxnCoordinator, i64) + Send>;

enum Command {
    Init(
        InitRequest,
        Option<i64>,
        oneshot::Sender<Result<TxnAnswer, NeedProducerId>>,
    ),
    Add(AddPartitionsRequest, oneshot::Sender<TxnAnswer>),
    End(
        EndRequest,
        Option<i64>,
        oneshot::Sender<Result<TxnAnswer, NeedProducerId>>,
    ),
    Query(Query),
    /// The `__transaction_state` partitions this node leads now, by partition number.
    Own(BTreeMap<i32, Arc<Partition>>),
    Stored(WriteId, Result<(), StoreFailure>),
    MarkersWritten(MarkerJob),
}

/// A handle to the transaction coordinator task. Cheap to clone.
#[derive(Clone)]
pub struct TxnService {
    tx: mpsc::Sender<Command>,
    /// Counts the records the core heard are stored (or failed): a state change that may
    /// settle a CONCURRENT_TRANSACTIONS.
    settled: watch::Receiver<u64>,
}

impl TxnService {
    /// Starts the task, coordinating nothing until [`TxnService::own`] says which partitions
    /// are led here. Time is `seams`' clock (wall clock: timeouts and timestamps are epoch
    /// milliseconds); `abort_check` is how often timed-out transactions and expired ids are
    /// looked for (Kafka's `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub fn start(
        settings: TxnSettings,
        abort_check: Duration,
        writer: Arc<dyn MarkerWriter>,
        shutdown: watch::Receiver<bool>,
        seams: Seams,
    ) -> TxnService {
        let (tx, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let (settled_tx, settled) = watch::channel(0);
        let task = Task {
            settled: settled_tx,
            core: TxnCoordinator::new(settings),
            partitions: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_reply: 0,
            writer,
            clock: seams.clock,
            back: tx.downgrade(),
        };
        tokio::spawn(task.run(rx, abort_check, shutdown));
        TxnService { tx, settled }
    }

    /// Hands the task the `__transaction_state` partitions this node leads now: new ones (or
    /// ones led at a new epoch) are loaded, dropped ones unloaded. Idempotent.
    pub async fn own(&self, partitions: BTreeMap<i32, Arc<Partition>>) {
        let _ = self.tx.send(Command::Own(partitions)).await;
    }

    async fn call<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, TxnError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| TxnError::CoordinatorNotAvailable)?;
        rx.await.map_err(|_| TxnError::CoordinatorNotAvailable)
    }

    /// Runs a request that may need a fresh producer id: first without one, then, if the core
    /// asks, with one from `allocate`.
    async fn with_producer_id<F, Fut>(
        &self,
        allocate: F,
        make: impl Fn(Option<i64>, oneshot::Sender<Result<TxnAnswer, NeedProducerId>>) -> Command,
    ) -> TxnAnswer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<i64, String>>,
    {
        let first = self.call(|tx| make(None, tx)).await;
        let answer = match first {
            Ok(Err(NeedProducerId)) => match allocate().await {
                Ok(fresh) => self.call(|tx| make(Some(fresh), tx)).await,
                Err(reason) => {
                    tracing::warn!(%reason, "producer id allocation failed");
                    Err(TxnError::CoordinatorNotAvailable)
                }
            },
            other => other,
        };
        match answer {
            Ok(Ok(answer)) => answer,
            // The id's state changed between the two calls; the client retries.
            Ok(Err(NeedProducerId)) => TxnAnswer::error(TxnError::ConcurrentTransactions),
            Err(e) => TxnAnswer::error(e),
        }
    }

    /// InitProducerId with a transactional id. `allocate` hands out a new producer id; it is
    /// called only when one is needed.
    pub async fn init_producer_id<F, Fut>(&self, req: InitRequest, allocate: F) -> TxnAnswer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<i64, String>>,
    {
        self.with_producer_id(allocate, |fresh, tx| Command::Init(req.clone(), fresh, tx))
            .await
    }

    /// AddPartitionsToTxn (AddOffsetsToTxn adds the offsets partition). One come while the
    /// previous transaction's markers are being written waits for them in the core (which
    /// stores it with the Complete record); one that would be answered CONCURRENT_TRANSACTIONS
    /// (a record of the id is being stored) is asked again each time a record settles. Either
    /// waits at most `CONCURRENT_WAIT_MAX` (1 s), then gets CONCURRENT_TRANSACTIONS; a request
    /// still waiting in the core may then take effect, as a timed-out request may in Kafka,
    /// and the client's retry finds its partitions added.
    pub async fn add_partitions(&self, req: AddPartitionsRequest) -> TxnAnswer {
        let deadline = tokio::time::Instant::now() + CONCURRENT_WAIT_MAX;
        let mut settled = self.settled.clone();
        loop {
            settled.mark_unchanged();
            // One for the next transaction waits in the core for the previous one's markers.
            let answer =
                tokio::time::timeout_at(deadline, self.call(|tx| Command::Add(req.clone(), tx)))
                    .await
                    .unwrap_or(Err(TxnError::ConcurrentTransactions))
                    .unwrap_or_else(TxnAnswer::error);
            if answer.error != Some(TxnError::ConcurrentTransactions) {
                return answer;
            }
            match tokio::time::timeout_at(deadline, settled.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return answer,
            }
        }
    }

    pub async fn end_txn<F, Fut>(&self, req: EndRequest, allocate: F) -> TxnAnswer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<i64, String>>,
    {
        self.with_producer_id(allocate, |fresh, tx| Command::End(req.clone(), fresh, tx))
            .await
    }

    /// Runs `f` on the core inside the task (describe, list, verify).
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut TxnCoordinator, i64) -> R + Send + 'static,
    ) -> Result<R, TxnError> {
        self.call(|tx| {
            Command::Query(Box::new(move |core, now| {
                let _ = tx.send(f(core, now));
            }))
        })
        .await
    }
}

/// A partition led here: its log, the epoch it is led at, and the flag that abandons its
/// marker jobs once it is not.
struct Led {
    partition: Arc<Partition>,
    epoch: i32,
    abandon: watch::Sender<bool>,
}

struct Task {
    core: TxnCoordinator,
    settled: watch::Sender<u64>,
    partitions: BTreeMap<i32, Led>,
    waiting: BTreeMap<ReplyId, oneshot::Sender<TxnAnswer>>,
    next_reply: ReplyId,
    writer: Arc<dyn MarkerWriter>,
    clock: Arc<dyn Clock>,
    /// For the tasks this one spawns to report back; weak, so that dropping every handle
    /// still ends the task.
    back: mpsc::WeakSender<Command>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        abort_check: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(abort_check.max(Duration::from_millis(10)));
        ticks.tick().await;
        loop {
            // Biased (deterministic under simulation): the shutdown first, then the timer
            // (commands can arrive back to back and would starve it).
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                _ = ticks.tick() => {
                    let aborting = self.core.tick(self.clock.now_ms());
                    if !aborting.is_empty() {
                        tracing::info!(ids = ?aborting, "aborting transactions past their timeout");
                    }
                }
                command = rx.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command);
                }
            }
            self.act();
        }
        for led in self.partitions.values() {
            let _ = led.abandon.send(true);
        }
    }

    fn reply_id(&mut self, tx: oneshot::Sender<TxnAnswer>) -> ReplyId {
        self.next_reply += 1;
        self.waiting.insert(self.next_reply, tx);
        self.next_reply
    }

    fn handle(&mut self, command: Command) {
        let now = self.clock.now_ms();
        match command {
            Command::Init(req, fresh, tx) => {
                let (answer_tx, answer_rx) = oneshot::channel();
                let id = self.reply_id(answer_tx);
                match self.core.init_producer_id(now, id, &req, fresh) {
                    Ok(()) => forward(answer_rx, tx),
                    Err(need) => {
                        self.waiting.remove(&id);
                        let _ = tx.send(Err(need));
                    }
                }
            }
            Command::End(req, fresh, tx) => {
                let (answer_tx, answer_rx) = oneshot::channel();
                let id = self.reply_id(answer_tx);
                match self.core.end_txn(now, id, &req, fresh) {
                    Ok(()) => forward(answer_rx, tx),
                    Err(need) => {
                        self.waiting.remove(&id);
                        let _ = tx.send(Err(need));
                    }
                }
            }
            Command::Add(req, tx) => {
                let id = self.reply_id(tx);
                self.core.add_partitions(now, id, &req);
            }
            Command::Query(f) => f(&mut self.core, now),
            Command::Own(wanted) => self.own(wanted),
            Command::Stored(write, result) => {
                self.core.stored(now, write, result);
                self.settled.send_modify(|n| *n = n.wrapping_add(1));
            }
            Command::MarkersWritten(job) => self.core.markers_written(now, &job),
        }
    }

    fn own(&mut self, wanted: BTreeMap<i32, Arc<Partition>>) {
        let gone: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(p, led)| {
                wanted
                    .get(p)
                    .is_none_or(|w| w.leader_epoch().0 != led.epoch)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            if let Some(led) = self.partitions.remove(&p) {
                let _ = led.abandon.send(true);
            }
            self.core.unload(p);
            tracing::info!(
                partition = p,
                "unloaded transactional ids of a transaction log partition no longer led here"
            );
        }
        for (index, partition) in wanted {
            if self.partitions.contains_key(&index) {
                continue;
            }
            let epoch = partition.leader_epoch().0;
            self.core.loading(index, epoch);
            let mut replayed = 0usize;
            let core = &mut self.core;
            let result = replay_records(&partition, |header, record| {
                if header.is_control() {
                    return;
                }
                let Some(key) = record.key else { return };
                match TxnRecord::decode(&key, record.value.as_deref()) {
                    Ok(r) => {
                        replayed += 1;
                        core.replay(r);
                    }
                    Err(e) => {
                        tracing::warn!(offset = record.offset, error = %e, "skipping transaction log record")
                    }
                }
            });
            match result {
                Ok(()) => {
                    self.core.loaded(index);
                    tracing::info!(partition = %partition.topic_partition(), records = replayed, epoch,
                        "loaded the transactional ids of a transaction log partition this node now leads");
                }
                Err(e) => {
                    // Its ids get NOT_COORDINATOR; the next `own` (the node sends one after
                    // every reconciliation) tries again.
                    tracing::error!(partition = %partition.topic_partition(), error = %e,
                        "cannot replay transaction log partition");
                    self.core.unload(index);
                    continue;
                }
            }
            let (abandon, _) = watch::channel(false);
            self.partitions.insert(
                index,
                Led {
                    partition,
                    epoch,
                    abandon,
                },
            );
        }
    }

    /// Carries out what the core asked for.
    fn act(&mut self) {
        for action in self.core.take_actions() {
            match action {
                TxnAction::Reply(id, answer) => {
                    if let Some(tx) = self.waiting.remove(&id) {
                        let _ = tx.send(answer);
                    }
                }
                TxnAction::Store {
                    write,
                    partition,
                    records,
                } => self.store(write, partition, &records),
                TxnAction::Markers(job) => {
                    let partition = self.core.partition_of(&job.transactional_id);
                    let Some(led) = self.partitions.get(&partition) else {
                        continue;
                    };
                    let written = self.writer.write(job.clone(), led.abandon.subscribe());
                    let back = self.back.clone();
                    tokio::spawn(async move {
                        if written.await {
                            if let Some(back) = back.upgrade() {
                                let _ = back.send(Command::MarkersWritten(job)).await;
                            }
                        }
                    });
                }
            }
        }
    }

    fn store(&mut self, write: WriteId, index: i32, records: &[TxnRecord]) {
        let now = self.clock.now_ms();
        let Some(led) = self.partitions.get(&index) else {
            self.core.stored(now, write, Err(StoreFailure::NotLeader));
            return;
        };
        let partition = led.partition.clone();
        match append_records(&partition, records.iter().map(TxnRecord::encode), now) {
            Err(e) => {
                tracing::warn!(error = %e, "cannot store transaction state");
                let failure = if e.not_leader {
                    StoreFailure::NotLeader
                } else {
                    StoreFailure::Other
                };
                self.core.stored(now, write, Err(failure));
            }
            Ok(offset) => {
                let back = self.back.clone();
                tokio::spawn(async move {
                    let result = partition.wait_acks_all(offset).await.map_err(|e| {
                        tracing::warn!(error = %e, "transaction state not durable on the in-sync replicas");
                        match e {
                            ReplicaError::NotLeader { .. } | ReplicaError::Closed(_) => {
                                StoreFailure::NotLeader
                            }
                            _ => StoreFailure::Other,
                        }
                    });
                    if let Some(back) = back.upgrade() {
                        let _ = back.send(Command::Stored(write, result)).await;
                    }
                });
            }
        }
    }
}

/// Answers `tx` with the core's answer once it comes.
fn forward(
    rx: oneshot::Receiver<TxnAnswer>,
    tx: oneshot::Sender<Result<TxnAnswer, NeedProducerId>>,
) {
    tokio::spawn(async move {
        let answer = rx
            .await
            .unwrap_or_else(|_| TxnAnswer::error(TxnError::CoordinatorNotAvailable));
        let _ = tx.send(Ok(answer));
    });
}
