//! Transactions under faults: transactional producers writing to [`TXN_TOPIC`] as Kafka's
//! clients do with transaction version 1 (FindCoordinator for the transactional id,
//! InitProducerId, AddPartitionsToTxn, transactional produce, AddOffsetsToTxn and
//! TxnOffsetCommit, EndTxn) or, in about half the producers, version 2 (KIP-890 part 2: no
//! AddPartitionsToTxn or AddOffsetsToTxn, Produce v12 and TxnOffsetCommit v5 have the leader
//! and the group coordinator add the partition, and every EndTxn v5 answers a bumped epoch
//! the next transaction writes with), and a `read_committed` consumer following the topic.
//!
//! Each producer (one or two, in about half the seeds; from their own stream of the seed)
//! runs one transaction after another: 1-3 values (`t<producer>-<n>-<k>`) over the topic's
//! partitions, in some producers the producer's group offset (`n + 1`) sent in the
//! transaction, then a commit, or, one in five, an abort asked for on purpose. A step that
//! keeps failing past the transaction timeout, or an error the transaction cannot go on from,
//! aborts it; an error that leaves its outcome unknown (a fenced epoch, an EndTxn whose answer
//! never came) ends it "unknown", and the producer starts over with InitProducerId, which makes
//! the coordinator finish whatever was open. Every producer does that once more at the end, so
//! that no transaction stays open.
//!
//! After the faults, the topic is drained twice: `read_committed` (to the last stable offset,
//! which must reach the high watermark) for the transaction checks of the history, and
//! `read_uncommitted` (markers and aborted records included) for the replicas' comparison;
//! and each producer's group offset is read back (`require_stable`).

use super::offsets::Committer;
use super::{
    batch, drain_partition, fetch_at, now_ms, produce_once, topic_name, Attempt, Client,
    FetchAnswer, Plan, NONE, OUT_OF_ORDER_SEQUENCE_NUMBER, PRODUCE_TV2_VERSION, READ_COMMITTED,
    REQUEST_TIMEOUT_MS, RETRY_BACKOFF, UNKNOWN_PRODUCER_ID,
};
use crate::history::{History, TxnOutcome};
use crate::Rng;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, InitProducerIdRequest,
    ProducerId, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::{Request, StrBytes};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

pub const TXN_TOPIC: &str = "sim-txn";
pub const TXN_PARTITIONS: i32 = 2;

/// The last versions of transaction version 1: AddPartitionsToTxn v4 is the brokers' batched
/// form, EndTxn v5 and TxnOffsetCommit v5 are transaction version 2 (KIP-890 part 2).
const ADD_PARTITIONS_VERSION_MAX: i16 = 3;
const END_TXN_VERSION_MAX: i16 = 4;
const TXN_OFFSET_COMMIT_VERSION_MAX: i16 = 4;
/// Transaction version 2: the epoch bumped at every EndTxn, partitions and offsets added by
/// their leaders and group coordinators (no AddPartitionsToTxn, no AddOffsetsToTxn).
const END_TXN_TV2_VERSION: i16 = 5;
const TXN_OFFSET_COMMIT_TV2_VERSION: i16 = 5;
/// How long an EndTxn is retried before its outcome counts as unknown.
const END_TXN_PATIENCE: Duration = Duration::from_secs(15);

/// Error codes the producers tell apart.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const REQUEST_TIMED_OUT: i16 = 7;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const NOT_ENOUGH_REPLICAS: i16 = 19;
const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TXN_STATE: i16 = 48;
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
const CONCURRENT_TRANSACTIONS: i16 = 51;
const OPERATION_NOT_ATTEMPTED: i16 = 55;
const PRODUCER_FENCED: i16 = 90;
const TRANSACTION_ABORTABLE: i16 = 120;

/// One transactional producer, as the seed chose it.
#[derive(Clone, Debug)]
pub struct TxnProducer {
    pub id: u64,
    /// `transaction.timeout.ms`: the coordinator aborts a transaction open longer.
    pub timeout_ms: i32,
    /// Whether each transaction also commits the producer's group offset.
    pub offsets: bool,
    /// Transaction version 2 (KIP-890 part 2), as Kafka 4's clients speak it; else version 1.
    pub tv2: bool,
    /// The producer's own choices: values, partitions, aborts.
    pub seed: u64,
}

/// None in about half the seeds; otherwise one or two producers.
pub fn plan(rng: &mut Rng) -> Vec<TxnProducer> {
    if !rng.chance(0.5) {
        return Vec::new();
    }
    (0..1 + rng.below(2))
        .map(|id| TxnProducer {
            id,
            timeout_ms: i32::try_from(rng.millis(4_000, 12_000).as_millis()).unwrap_or(10_000),
            offsets: rng.chance(0.6),
            tv2: rng.chance(0.5),
            seed: rng.next_u64(),
        })
        .collect()
}

pub fn transactional_id(producer: u64) -> String {
    format!("sim-txn-{producer}")
}

/// The group whose offset a producer commits in its transactions.
pub fn group(producer: u64) -> String {
    format!("sim-txn-group-{producer}")
}

pub(super) fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Why a transaction cannot go on.
pub(super) enum Failure {
    /// It can still be aborted (then the producer takes a new epoch).
    Abortable(String),
    /// Its outcome is not the producer's to decide any more (fenced, or an EndTxn never
    /// answered): the producer starts over with InitProducerId.
    Fatal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Abortable(why) => write!(f, "aborts it: {why}"),
            Failure::Fatal(why) => write!(f, "{why}"),
        }
    }
}

/// What a coordinator's (or a leader's) error code means for the step that got it.
enum Answer {
    Done,
    /// Ask again, the same coordinator (or leader) or, for `Moved`, after looking it up.
    Retry(String),
    Moved(String),
    Failed(Failure),
}

fn answer(code: i16, what: &str) -> Answer {
    let why = format!("{what}: error {code}");
    match code {
        NONE => Answer::Done,
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => {
            Answer::Moved(why)
        }
        CONCURRENT_TRANSACTIONS
        | UNKNOWN_TOPIC_OR_PARTITION
        | OPERATION_NOT_ATTEMPTED
        | REQUEST_TIMED_OUT
        | NOT_ENOUGH_REPLICAS
        | NOT_ENOUGH_REPLICAS_AFTER_APPEND => Answer::Retry(why),
        TRANSACTION_ABORTABLE => Answer::Failed(Failure::Abortable(why)),
        _ => Answer::Failed(Failure::Fatal(why)),
    }
}

/// The error a partition-level list reports: the first that is not OPERATION_NOT_ATTEMPTED
/// (which only says another partition failed), else that one, else none.
fn worst(codes: impl Iterator<Item = i16>) -> i16 {
    let codes: Vec<i16> = codes.filter(|c| *c != NONE).collect();
    codes
        .iter()
        .copied()
        .find(|c| *c != OPERATION_NOT_ATTEMPTED)
        .or(codes.first().copied())
        .unwrap_or(NONE)
}

/// One transactional client's connections, coordinators and producer id: a producer's, or
/// an instance of the exactly-once copier's (`copier.rs`).
pub(super) struct Session {
    pub(super) me: TxnProducer,
    /// How the trace names it.
    who: String,
    transactional_id: String,
    /// Writes to the client's topic.
    client: Client,
    coordinator: Committer,
    group: Committer,
    /// (producer id, epoch) once InitProducerId answered; `None` when it must be asked again.
    pub(super) producer: Option<(i64, i16)>,
    /// Partition → next sequence, for the current producer id and epoch.
    sequences: BTreeMap<i32, i32>,
    history: Rc<RefCell<History>>,
    /// The last retry reason traced (a long outage stays one line).
    trouble: Option<String>,
}

impl Session {
    /// `who`'s session as `transactional_id`, writing to `client`'s topic and committing
    /// offsets of [`TXN_TOPIC`] to `group`.
    pub(super) fn new(
        me: TxnProducer,
        who: String,
        transactional_id: String,
        group: String,
        client: Client,
        history: Rc<RefCell<History>>,
    ) -> Session {
        Session {
            client: Client {
                produce_version_max: if me.tv2 {
                    PRODUCE_TV2_VERSION
                } else {
                    super::PRODUCE_VERSION_MAX
                },
                ..client
            },
            coordinator: Committer::for_transaction(transactional_id.clone()),
            group: Committer::for_group(group, TXN_TOPIC),
            producer: None,
            sequences: BTreeMap::new(),
            history,
            trouble: None,
            me,
            who,
            transactional_id,
        }
    }

    fn transactional_id(&self) -> TransactionalId {
        TransactionalId(StrBytes::from_string(self.transactional_id.clone()))
    }

    pub(super) fn event(&self, what: String) {
        self.history
            .borrow_mut()
            .event(format!("{} {what}", self.who));
    }

    fn failed(&self, n: u64, why: String) {
        self.history.borrow_mut().txn_failed(self.me.id, n, why);
    }

    fn trouble(&mut self, why: String) {
        if self.trouble.as_ref() != Some(&why) {
            self.event(format!("retries: {why}"));
            self.trouble = Some(why);
        }
    }

    /// Waits before the next try of a step, or gives up once `deadline` has passed.
    async fn backoff(&mut self, deadline: Duration) -> Result<(), Failure> {
        if now() >= deadline {
            return Err(Failure::Abortable(format!(
                "timed out ({})",
                self.trouble.clone().unwrap_or_default()
            )));
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
        Ok(())
    }

    /// Sends `request` to the transaction coordinator (`group`: to the group's); a failure at
    /// the transport has it looked up again.
    async fn call<R: Request>(
        &mut self,
        group: bool,
        request: &R,
        version_max: i16,
    ) -> Result<R::Response, String> {
        let committer = if group {
            &mut self.group
        } else {
            &mut self.coordinator
        };
        let coordinator = committer.coordinator(&mut self.client).await?;
        match self
            .client
            .call(&coordinator, request, version_max, REQUEST_TIMEOUT_MS)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => Err(committer.failed(&mut self.client, &coordinator, e)),
        }
    }

    /// Acts on one try's answer: `Ok(true)` when the step is done, `Ok(false)` to try again.
    fn settle(&mut self, group: bool, outcome: Result<Answer, String>) -> Result<bool, Failure> {
        match outcome {
            Ok(Answer::Done) => {
                self.trouble = None;
                Ok(true)
            }
            Ok(Answer::Failed(failure)) => Err(failure),
            Ok(Answer::Retry(why)) | Err(why) => {
                self.trouble(why);
                Ok(false)
            }
            Ok(Answer::Moved(why)) => {
                if group {
                    self.group.coordinator_lost();
                } else {
                    self.coordinator.coordinator_lost();
                }
                self.trouble(why);
                Ok(false)
            }
        }
    }

    /// InitProducerId until it answers: a new epoch, the previous transaction finished by the
    /// coordinator (CONCURRENT_TRANSACTIONS while it does). Returns the producer id and epoch.
    pub(super) async fn init(&mut self) -> (i64, i16) {
        loop {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(self.transactional_id()))
                .with_transaction_timeout_ms(self.me.timeout_ms)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let response = self.call(false, &request, i16::MAX).await;
            let fields = response
                .as_ref()
                .map(|r| (r.producer_id.0, r.producer_epoch))
                .ok();
            let outcome = response.map(|r| match answer(r.error_code, "InitProducerId") {
                // Nothing is open at this point: every failure is one to retry.
                Answer::Failed(Failure::Abortable(why) | Failure::Fatal(why)) => Answer::Retry(why),
                other => other,
            });
            if let (Ok(true), Some((id, epoch))) = (self.settle(false, outcome), fields) {
                self.producer = Some((id, epoch));
                self.sequences.clear();
                self.event(format!("initialised: producer id {id} epoch {epoch}"));
                return (id, epoch);
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    pub(super) async fn add_partitions(
        &mut self,
        (id, epoch): (i64, i16),
        partitions: &BTreeSet<i32>,
        deadline: Duration,
    ) -> Result<(), Failure> {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(self.transactional_id())
            .with_v3_and_below_producer_id(ProducerId(id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(topic_name(self.client.topic))
                .with_partitions(partitions.iter().copied().collect())]);
        loop {
            let outcome = self
                .call(false, &request, ADD_PARTITIONS_VERSION_MAX)
                .await
                .map(|r| {
                    let codes = r.results_by_topic_v3_and_below.iter().flat_map(|t| {
                        t.results_by_partition
                            .iter()
                            .map(|p| p.partition_error_code)
                    });
                    answer(worst(codes), "AddPartitionsToTxn")
                });
            if self.settle(false, outcome)? {
                return Ok(());
            }
            self.backoff(deadline).await?;
        }
    }

    /// Writes `value` to `partition` in the transaction; the offset it was written at.
    pub(super) async fn write(
        &mut self,
        (id, epoch): (i64, i16),
        value: &str,
        partition: i32,
        deadline: Duration,
    ) -> Result<i64, Failure> {
        let sequence = *self.sequences.get(&partition).unwrap_or(&0);
        loop {
            let records = batch(value, Some((id, epoch, sequence)), true, now_ms());
            let id = Some(self.transactional_id());
            match produce_once(&mut self.client, partition, -1, records, id).await {
                Attempt::Acked(offset) => {
                    self.sequences.insert(partition, sequence + 1);
                    self.trouble = None;
                    return Ok(offset);
                }
                Attempt::Refused(INVALID_PRODUCER_EPOCH | PRODUCER_FENCED, why) => {
                    return Err(Failure::Fatal(why))
                }
                Attempt::Refused(
                    OUT_OF_ORDER_SEQUENCE_NUMBER
                    | UNKNOWN_PRODUCER_ID
                    | INVALID_TXN_STATE
                    | INVALID_PRODUCER_ID_MAPPING
                    | TRANSACTION_ABORTABLE,
                    why,
                ) => return Err(Failure::Abortable(why)),
                Attempt::Retry(why) | Attempt::Refused(_, why) => self.trouble(why),
            }
            self.backoff(deadline).await?;
        }
    }

    /// Sends group offsets of [`TXN_TOPIC`] (partition → offset) in the transaction:
    /// AddOffsetsToTxn to the transaction coordinator (version 1 only), then TxnOffsetCommit to
    /// the group's.
    pub(super) async fn send_offsets(
        &mut self,
        (id, epoch): (i64, i16),
        offsets: &BTreeMap<i32, i64>,
        deadline: Duration,
    ) -> Result<(), Failure> {
        let add = AddOffsetsToTxnRequest::default()
            .with_transactional_id(self.transactional_id())
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_group_id(self.group.group_id());
        while !self.me.tv2 {
            let outcome = self
                .call(false, &add, i16::MAX)
                .await
                .map(|r| answer(r.error_code, "AddOffsetsToTxn"));
            if self.settle(false, outcome)? {
                break;
            }
            self.backoff(deadline).await?;
        }
        let commit = TxnOffsetCommitRequest::default()
            .with_transactional_id(self.transactional_id())
            .with_group_id(self.group.group_id())
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(topic_name(TXN_TOPIC))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(partition, offset)| {
                            TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(*partition)
                                .with_committed_offset(*offset)
                                .with_committed_leader_epoch(-1)
                        })
                        .collect(),
                )]);
        let version = if self.me.tv2 {
            TXN_OFFSET_COMMIT_TV2_VERSION
        } else {
            TXN_OFFSET_COMMIT_VERSION_MAX
        };
        loop {
            let outcome = self.call(true, &commit, version).await.map(|r| {
                let codes = r
                    .topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code));
                answer(worst(codes), "TxnOffsetCommit")
            });
            if self.settle(true, outcome)? {
                return Ok(());
            }
            self.backoff(deadline).await?;
        }
    }

    /// EndTxn until it answers. Retrying is safe: a retried commit of a committed transaction
    /// answers NONE (in version 2 with the epoch the lost answer carried). Any failure leaves
    /// the outcome unknown. In version 2 the answer's producer id and bumped epoch are the ones
    /// the next transaction uses.
    pub(super) async fn end(
        &mut self,
        (id, epoch): (i64, i16),
        commit: bool,
    ) -> Result<(), Failure> {
        let deadline = now() + END_TXN_PATIENCE;
        let request = EndTxnRequest::default()
            .with_transactional_id(self.transactional_id())
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let version = if self.me.tv2 {
            END_TXN_TV2_VERSION
        } else {
            END_TXN_VERSION_MAX
        };
        loop {
            let response = self.call(false, &request, version).await;
            let next = response
                .as_ref()
                .map(|r| (r.producer_id.0, r.producer_epoch))
                .ok();
            let outcome = response.map(|r| answer(r.error_code, "EndTxn"));
            match self.settle(false, outcome) {
                Ok(true) => {
                    if let Some((id, epoch)) = next.filter(|(id, _)| self.me.tv2 && *id >= 0) {
                        self.producer = self.producer.map(|_| (id, epoch));
                        self.sequences.clear();
                    }
                    return Ok(());
                }
                Ok(false) => {}
                Err(Failure::Abortable(why) | Failure::Fatal(why)) => {
                    return Err(Failure::Fatal(why))
                }
            }
            if let Err(Failure::Abortable(why) | Failure::Fatal(why)) = self.backoff(deadline).await
            {
                return Err(Failure::Fatal(why));
            }
        }
    }

    /// Transaction `n`: its values, its offset, then a commit (or the abort asked for).
    async fn attempt(
        &mut self,
        producer: (i64, i16),
        n: u64,
        values: &[(String, i32)],
        abort: bool,
    ) -> Result<TxnOutcome, Failure> {
        let deadline =
            now() + Duration::from_millis(u64::try_from(self.me.timeout_ms).unwrap_or(0));
        if !self.me.tv2 {
            let partitions: BTreeSet<i32> = values.iter().map(|(_, p)| *p).collect();
            self.add_partitions(producer, &partitions, deadline).await?;
        }
        for (value, partition) in values {
            let offset = self.write(producer, value, *partition, deadline).await?;
            self.history
                .borrow_mut()
                .txn_written(value, *partition, offset);
        }
        if self.me.offsets {
            let offset = i64::try_from(n).unwrap_or(i64::MAX - 1) + 1;
            self.send_offsets(producer, &BTreeMap::from([(0, offset)]), deadline)
                .await?;
        }
        if !abort {
            self.history
                .borrow_mut()
                .txn_commit_requested(self.me.id, n);
        }
        self.end(producer, !abort).await?;
        Ok(if abort {
            TxnOutcome::Aborted
        } else {
            TxnOutcome::Committed
        })
    }

    /// Runs transaction `n` to its outcome.
    async fn transaction(&mut self, n: u64, values: &[(String, i32)], abort: bool) -> TxnOutcome {
        let producer = match self.producer {
            Some(producer) => producer,
            None => self.init().await,
        };
        match self.attempt(producer, n, values, abort).await {
            Ok(outcome) => outcome,
            Err(failure) => {
                self.failed(n, failure.to_string());
                self.give_up(producer, n, failure).await
            }
        }
    }

    /// Ends transaction `n` that cannot go on: aborts it if it still can. Either way the next
    /// transaction takes a new epoch (after an abort the sequences may be off).
    pub(super) async fn give_up(
        &mut self,
        producer: (i64, i16),
        n: u64,
        failure: Failure,
    ) -> TxnOutcome {
        self.producer = None;
        match failure {
            Failure::Abortable(_) => match self.end(producer, false).await {
                Ok(()) => TxnOutcome::Aborted,
                Err(Failure::Abortable(why) | Failure::Fatal(why)) => {
                    self.event(format!("abort of transaction {n} failed: {why}"));
                    TxnOutcome::Unknown
                }
            },
            Failure::Fatal(_) => TxnOutcome::Unknown,
        }
    }
}

/// One transactional producer, until the producers stop; then one more InitProducerId if its
/// last transaction's outcome was left unknown, so that nothing stays open.
pub async fn produce(plan: Rc<Plan>, me: TxnProducer, history: Rc<RefCell<History>>) {
    let mut rng = Rng::new(me.seed);
    let mut session = Session::new(
        me.clone(),
        format!("txn producer {}", me.id),
        transactional_id(me.id),
        group(me.id),
        Client::new(format!("sim-txn-producer-{}", me.id), plan.nodes).on(TXN_TOPIC),
        history.clone(),
    );
    let mut n = 0u64;
    while now() < plan.produce_until {
        let values: Vec<(String, i32)> = (0..1 + rng.below(3))
            .map(|k| {
                let partition = i32::try_from(rng.below(TXN_PARTITIONS as u64)).unwrap_or(0);
                (format!("t{}-{n}-{k}", session.me.id), partition)
            })
            .collect();
        let abort = rng.chance(0.2);
        history
            .borrow_mut()
            .txn_begin(session.me.id, n, &values, session.me.offsets);
        let outcome = session.transaction(n, &values, abort).await;
        history.borrow_mut().txn_outcome(session.me.id, n, outcome);
        n += 1;
    }
    if session.producer.is_none() {
        session.init().await;
    }
}

/// The records a `read_committed` consumer keeps from one fetch: those below the last stable
/// offset, without markers and without the records of the aborted transactions the answer
/// lists (each from its first offset until its producer's next marker), as Kafka's consumers
/// filter them.
pub fn committed_records(answer: &FetchAnswer) -> Vec<(i64, String)> {
    let mut aborted = answer.aborted.clone();
    aborted.sort_by_key(|(_, first)| *first);
    let mut next = aborted.iter().peekable();
    let mut open: BTreeSet<i64> = BTreeSet::new();
    let mut kept = Vec::new();
    for r in answer
        .records
        .iter()
        .filter(|r| r.offset < answer.last_stable_offset)
    {
        while let Some((producer, _)) = next.next_if(|(_, first)| *first <= r.offset) {
            open.insert(*producer);
        }
        if r.control {
            open.remove(&r.producer_id);
        } else if !(r.transactional && open.contains(&r.producer_id)) {
            kept.push((r.offset, r.value.clone()));
        }
    }
    kept
}

/// The offset after the last record of `answer` below its last stable offset (markers and
/// aborted records included): where a `read_committed` consumer reads next.
pub(super) fn next_position(answer: &FetchAnswer, from: i64) -> i64 {
    answer
        .records
        .iter()
        .filter(|r| r.offset < answer.last_stable_offset)
        .map(|r| r.offset + 1)
        .max()
        .unwrap_or(from)
}

/// A `read_committed` consumer following every partition of the topic until `until`.
pub async fn read_committed(plan: Rc<Plan>, history: Rc<RefCell<History>>, until: Duration) {
    let mut client = Client::new("sim-txn-reader".into(), plan.nodes).on(TXN_TOPIC);
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    while now() < until {
        for partition in 0..TXN_PARTITIONS {
            let from = *positions.entry(partition).or_insert(0);
            match fetch_at(&mut client, partition, from, READ_COMMITTED).await {
                Ok(answer) => {
                    let mut h = history.borrow_mut();
                    h.txn_fetched(partition, &answer);
                    for (offset, value) in committed_records(&answer) {
                        h.txn_read(partition, offset, &value);
                    }
                    positions.insert(partition, next_position(&answer, from));
                }
                Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
            }
        }
    }
}

/// Reads `partition` of the client's topic `read_committed` until the last stable offset
/// reaches the high watermark (nothing open), retrying until it answers; `seen` is shown each
/// answer. The records kept, and that high watermark.
pub(super) async fn drain_committed(
    client: &mut Client,
    partition: i32,
    mut seen: impl FnMut(&FetchAnswer),
) -> (Vec<(i64, String)>, i64) {
    let mut log = Vec::new();
    let mut from = 0;
    loop {
        match fetch_at(client, partition, from, READ_COMMITTED).await {
            Ok(answer) => {
                seen(&answer);
                log.extend(committed_records(&answer));
                from = next_position(&answer, from);
                if from >= answer.high_watermark
                    && answer.last_stable_offset == answer.high_watermark
                {
                    return (log, answer.high_watermark);
                }
            }
            Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
        }
    }
}

/// The final logs: each partition `read_committed` until the last stable offset reaches the
/// high watermark (nothing open), then `read_uncommitted` for the replicas' comparison; and
/// each producer's group offset.
pub async fn drain(plan: Rc<Plan>, history: Rc<RefCell<History>>) {
    let mut client = Client::new("sim-txn-drain".into(), plan.nodes).on(TXN_TOPIC);
    for partition in 0..TXN_PARTITIONS {
        let (log, high_watermark) = drain_committed(&mut client, partition, |answer| {
            history.borrow_mut().txn_fetched(partition, answer)
        })
        .await;
        history
            .borrow_mut()
            .txn_drained(partition, log, high_watermark);
        let (everything, high_watermark) = drain_partition(&mut client, partition).await;
        history
            .borrow_mut()
            .txn_drained_uncommitted(partition, everything, high_watermark);
    }
    for producer in plan.txn_producers.iter().filter(|p| p.offsets) {
        let mut committer = Committer::for_group(group(producer.id), TXN_TOPIC);
        let committed = loop {
            match committer.fetch(&mut client, 1).await {
                Ok(committed) => break committed,
                Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
            }
        };
        history
            .borrow_mut()
            .txn_offset_at_end(producer.id, committed.get(&0).copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Fetched;

    fn record(offset: i64, producer_id: i64, transactional: bool, control: bool) -> Fetched {
        Fetched {
            offset,
            value: format!("v{offset}"),
            control,
            transactional,
            producer_id,
        }
    }

    fn answer(records: Vec<Fetched>, aborted: Vec<(i64, i64)>, lso: i64) -> FetchAnswer {
        FetchAnswer {
            records,
            high_watermark: 100,
            last_stable_offset: lso,
            aborted,
            leader: "n1".into(),
        }
    }

    fn offsets(kept: &[(i64, String)]) -> Vec<i64> {
        kept.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn aborted_records_are_dropped_until_their_producers_marker() {
        // Producer 7 aborts 0-1 (marker 3) and later commits 5 (marker 6); producer 8 commits
        // 2 (marker 4) in between; 9 is not transactional.
        let records = vec![
            record(0, 7, true, false),
            record(1, 7, true, false),
            record(2, 8, true, false),
            record(3, 7, true, true),
            record(4, 8, true, true),
            record(5, 7, true, false),
            record(6, 7, true, true),
            record(7, 9, false, false),
        ];
        let kept = committed_records(&answer(records, vec![(7, 0)], 100));
        assert_eq!(offsets(&kept), vec![2, 5, 7]);
    }

    #[test]
    fn an_abort_starting_before_the_fetch_offset_still_applies() {
        // The fetch starts at 10, inside producer 7's aborted transaction begun at 8.
        let records = vec![record(10, 7, true, false), record(11, 7, true, true)];
        let kept = committed_records(&answer(records, vec![(7, 8)], 100));
        assert!(kept.is_empty());
    }

    #[test]
    fn a_second_aborted_transaction_of_one_producer_starts_at_its_own_offset() {
        let records = vec![
            record(0, 7, true, false),
            record(1, 7, true, true),
            record(2, 7, true, false),
            record(3, 7, true, true),
            record(4, 7, true, false),
            record(5, 7, true, true),
        ];
        let kept = committed_records(&answer(records, vec![(7, 4), (7, 0)], 100));
        assert_eq!(offsets(&kept), vec![2]);
    }

    #[test]
    fn nothing_at_or_past_the_last_stable_offset_is_kept_or_passed() {
        let records = vec![
            record(0, 9, false, false),
            record(1, 7, true, false),
            record(2, 9, false, false),
        ];
        let a = answer(records, vec![], 1);
        assert_eq!(offsets(&committed_records(&a)), vec![0]);
        assert_eq!(next_position(&a, 0), 1);
        assert_eq!(next_position(&answer(vec![], vec![], 5), 3), 3);
    }

    #[test]
    fn worst_prefers_the_real_error_to_operation_not_attempted() {
        assert_eq!(worst([NONE, NONE].into_iter()), NONE);
        assert_eq!(
            worst([OPERATION_NOT_ATTEMPTED, CONCURRENT_TRANSACTIONS].into_iter()),
            CONCURRENT_TRANSACTIONS
        );
        assert_eq!(
            worst([OPERATION_NOT_ATTEMPTED].into_iter()),
            OPERATION_NOT_ATTEMPTED
        );
    }
}
