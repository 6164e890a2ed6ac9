//! The workload: Kafka clients running inside the simulation (a turmoil client host) against
//! the simulated cluster, through Spate's own protocol client over the simulated network.
//!
//! Producers write unique values (`p<producer>-<n>`), one record per request, each retried
//! until it is acknowledged or the workload ends, with `acks=all` or `acks=1`, idempotent or
//! not (the seed chooses). A consumer follows every partition from the leader, recording each
//! record and each high watermark it sees, and commits its positions to a group every half
//! second (`offsets.rs`). At the end, one read of every partition from its leader gives the
//! final log, and the group's committed offsets are read back. Everything observed goes into
//! the [`History`]. The Kafka client they share (connections, Metadata, produce, fetch) is
//! `client.rs`.
//!
//! In about half the seeds, two or three members of a consumer group join, sync, heartbeat,
//! commit and leave or vanish while the faults run (`members.rs`).
//!
//! In about half the seeds, one or two transactional producers write to a topic of their own,
//! which a `read_committed` consumer follows (`txns.rs`), and, in most of those, an
//! exactly-once copier copies it to another topic (`copier.rs`).
//!
//! The seed may also add partitions to the topic while the faults run (producers and the
//! consumer take them up as soon as the addition is acknowledged), and run a second topic
//! that is deleted and re-created under the same name (`admin.rs`).

pub mod admin;
mod client;
pub mod copier;
pub mod members;
mod offsets;
pub mod txns;

use client::{
    batch, fetch, fetch_at, node_addr, now_ms, produce_once, topic_name, Attempt, Client,
    PRODUCE_TV2_VERSION, PRODUCE_VERSION_MAX,
};
pub use client::{FetchAnswer, Fetched, READ_COMMITTED, READ_UNCOMMITTED};

use crate::history::{Ack, History, Producer};
use crate::Rng;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, InitProducerIdRequest};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

pub const TOPIC: &str = "sim";
const REQUEST_TIMEOUT_MS: u64 = 3_000;
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// How often the consumer commits its positions (simulated time).
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Kafka error codes the workload tells apart.
const NONE: i16 = 0;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const UNKNOWN_PRODUCER_ID: i16 = 59;

/// What the workload does, chosen by the seed.
#[derive(Clone, Debug)]
pub struct Plan {
    pub nodes: usize,
    /// At creation.
    pub partitions: i32,
    /// When (simulated time) the topic grows, and to how many partitions.
    pub grow: Option<(Duration, i32)>,
    /// The deleted and re-created topic, if the seed runs one.
    pub scratch: Option<admin::Scratch>,
    pub replication_factor: i16,
    pub producers: Vec<Producer>,
    /// The consumer group members' lives (none in about half the seeds).
    pub members: members::Members,
    /// The transactional producers (none in about half the seeds).
    pub txn_producers: Vec<txns::TxnProducer>,
    /// The exactly-once copier of their topic, if the seed runs one.
    pub copier: Option<copier::Copier>,
    /// Producers stop starting new values at this simulated time.
    pub produce_until: Duration,
}

/// Creates `client`'s topic, retrying until the cluster can (an answer that it exists counts:
/// an earlier attempt whose answer was lost may have created it).
async fn create_topic(
    client: &mut Client,
    partitions: i32,
    replication_factor: i16,
    history: &Rc<RefCell<History>>,
) {
    let mut node = 0;
    loop {
        node = node % client.nodes + 1;
        let addr = node_addr(node);
        let request = CreateTopicsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(client.topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)]);
        let outcome = client
            .call(&addr, &request, i16::MAX, REQUEST_TIMEOUT_MS * 2)
            .await;
        match outcome {
            Ok(r)
                if r.topics.first().is_some_and(|t| {
                    t.error_code == NONE || t.error_code == TOPIC_ALREADY_EXISTS
                }) =>
            {
                history
                    .borrow_mut()
                    .event(format!("topic {} created", client.topic));
                return;
            }
            Ok(_) => {}
            Err(_) => client.forget(&addr),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn init_producer_id(client: &mut Client) -> (i64, i16) {
    loop {
        client.next_bootstrap = client.next_bootstrap % client.nodes + 1;
        let addr = node_addr(client.next_bootstrap);
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        let response = client
            .call(&addr, &request, i16::MAX, REQUEST_TIMEOUT_MS)
            .await;
        match response {
            Ok(r) if r.error_code == NONE => return (r.producer_id.0, r.producer_epoch),
            Ok(_) => {}
            Err(_) => client.forget(&addr),
        }
        tokio::time::sleep(RETRY_BACKOFF).await;
    }
}

/// One producer: values `p<id>-0`, `p<id>-1`, ... round-robin over the partitions.
async fn produce(
    plan: Rc<Plan>,
    me: Producer,
    partitions: Rc<Cell<i32>>,
    history: Rc<RefCell<History>>,
) {
    let mut client = Client::new(format!("sim-producer-{}", me.id), plan.nodes);
    let mut pid = None;
    if me.idempotent {
        pid = Some(init_producer_id(&mut client).await);
    }
    let mut sequences: BTreeMap<(i64, i32), i32> = BTreeMap::new();
    let mut n = 0u64;
    let mut last_failure: Option<String> = None;
    while turmoil::sim_elapsed().unwrap_or_default() < plan.produce_until {
        let count = u64::try_from(partitions.get()).unwrap_or(1).max(1);
        let partition = i32::try_from(n % count).unwrap_or(0);
        let value = format!("p{}-{n}", me.id);
        history.borrow_mut().sent(&me, &value, partition);
        loop {
            let producer = pid.map(|(id, epoch)| {
                let seq = *sequences.get(&(id, partition)).unwrap_or(&0);
                (id, epoch, seq)
            });
            let records = batch(&value, producer, false, now_ms());
            match produce_once(&mut client, partition, me.acks, records, None).await {
                Attempt::Acked(offset) => {
                    last_failure = None;
                    if let Some((id, _)) = pid {
                        *sequences.entry((id, partition)).or_insert(0) += 1;
                    }
                    history.borrow_mut().acked(Ack {
                        value: value.clone(),
                        partition,
                        offset,
                        acks: me.acks,
                    });
                    break;
                }
                Attempt::Refused(
                    code @ (OUT_OF_ORDER_SEQUENCE_NUMBER | UNKNOWN_PRODUCER_ID),
                    _,
                ) => {
                    let why = format!("error {code}");
                    history.borrow_mut().event(format!(
                        "producer {} fenced ({why}): new producer id",
                        me.id
                    ));
                    history.borrow_mut().new_producer_id(&value);
                    pid = Some(init_producer_id(&mut client).await);
                }
                Attempt::Retry(why) | Attempt::Refused(_, why) => {
                    // Traced once per change of reason, so a long outage stays one line.
                    if last_failure.as_ref() != Some(&why) {
                        history
                            .borrow_mut()
                            .event(format!("producer {} retries: {why}", me.id));
                        last_failure = Some(why);
                    }
                    if turmoil::sim_elapsed().unwrap_or_default() >= plan.produce_until {
                        break;
                    }
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
        }
        n += 1;
    }
}

/// A consumer following every partition until `until`, recording what it reads.
async fn consume(
    plan: Rc<Plan>,
    partitions: Rc<Cell<i32>>,
    history: Rc<RefCell<History>>,
    until: Duration,
) {
    let mut client = Client::new("sim-consumer".into(), plan.nodes);
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    // Which node last answered for each partition (a change is traced).
    let mut serving: BTreeMap<i32, String> = BTreeMap::new();
    // Positions are committed to the group every COMMIT_EVERY, as auto-commit does.
    let mut committer = offsets::Committer::new(offsets::GROUP);
    let mut committed: Option<BTreeMap<i32, i64>> = None;
    let mut next_commit = Duration::ZERO;
    let mut commit_failure: Option<String> = None;
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        if now >= next_commit && committed.as_ref() != Some(&positions) {
            next_commit = now + COMMIT_EVERY;
            history.borrow_mut().commit_sent(offsets::GROUP, &positions);
            match committer.commit(&mut client, (-1, ""), &positions).await {
                Ok(()) => {
                    history
                        .borrow_mut()
                        .commit_acked(offsets::GROUP, &positions);
                    committed = Some(positions.clone());
                    commit_failure = None;
                }
                Err(why) => {
                    if commit_failure.as_ref() != Some(&why) {
                        history
                            .borrow_mut()
                            .event(format!("offset commit failed: {why}"));
                        commit_failure = Some(why);
                    }
                }
            }
        }
        for partition in 0..partitions.get() {
            let from = *positions.entry(partition).or_insert(0);
            match fetch(&mut client, partition, from).await {
                Ok((records, high_watermark, node)) => {
                    let mut h = history.borrow_mut();
                    if serving.get(&partition) != Some(&node) {
                        h.event(format!(
                            "consumer reads partition {partition} from {node} (high watermark {high_watermark})"
                        ));
                        serving.insert(partition, node);
                    }
                    h.observed_high_watermark(partition, high_watermark);
                    for (offset, value) in records {
                        h.consumed(partition, offset, &value);
                        positions.insert(partition, offset + 1);
                    }
                }
                Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
            }
        }
    }
}

/// Reads every partition to its high watermark once the producers have stopped: the final
/// logs. Retries until each partition answers (the liveness bound is the harness's).
async fn drain(plan: Rc<Plan>, partitions: i32, history: Rc<RefCell<History>>) {
    let mut client = Client::new("sim-drain".into(), plan.nodes);
    for partition in 0..partitions {
        let (log, high_watermark) = drain_partition(&mut client, partition).await;
        history.borrow_mut().drained(partition, log, high_watermark);
    }
}

/// Reads `partition` of the client's topic to its high watermark, retrying until it answers.
async fn drain_partition(client: &mut Client, partition: i32) -> (Vec<(i64, String)>, i64) {
    let mut log = Vec::new();
    let mut from = 0;
    loop {
        match fetch(client, partition, from).await {
            Ok((records, high_watermark, _)) => {
                for (offset, value) in records {
                    if offset < high_watermark {
                        from = offset + 1;
                        log.push((offset, value));
                    }
                }
                if from >= high_watermark {
                    return (log, high_watermark);
                }
            }
            Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
        }
    }
}

/// The whole workload, run as the simulation's client: create the topic, produce and consume
/// concurrently, then drain.
pub async fn run(plan: Plan, history: Rc<RefCell<History>>) -> turmoil::Result {
    let plan = Rc::new(plan);
    let mut admin = Client::new("sim-admin".into(), plan.nodes);
    create_topic(
        &mut admin,
        plan.partitions,
        plan.replication_factor,
        &history,
    )
    .await;
    // The transactional producers' topic, and the copier's, of as many partitions.
    let transactional = [
        (txns::TXN_TOPIC, !plan.txn_producers.is_empty()),
        (copier::COPY_TOPIC, plan.copier.is_some()),
    ];
    for (topic, _) in transactional.iter().filter(|(_, wanted)| *wanted) {
        let mut admin = Client::new("sim-admin".into(), plan.nodes).on(topic);
        create_topic(
            &mut admin,
            txns::TXN_PARTITIONS,
            plan.replication_factor,
            &history,
        )
        .await;
    }
    let partitions = Rc::new(Cell::new(plan.partitions));
    history.borrow_mut().set_partitions(plan.partitions);
    let mut tasks = Vec::new();
    let txn_producers: Vec<_> = plan
        .txn_producers
        .iter()
        .map(|producer| {
            tokio::task::spawn_local(txns::produce(
                plan.clone(),
                producer.clone(),
                history.clone(),
            ))
        })
        .collect();
    // The copier's input is final once the transactional producers have finished.
    let input_done = Rc::new(Cell::new(false));
    tasks.push(tokio::task::spawn_local({
        let input_done = input_done.clone();
        async move {
            for producer in txn_producers {
                let _ = producer.await;
            }
            input_done.set(true);
        }
    }));
    if let Some(copier) = plan.copier.clone() {
        tasks.push(tokio::task::spawn_local(copier::run(
            plan.clone(),
            copier,
            input_done,
            history.clone(),
        )));
    }
    if !plan.txn_producers.is_empty() {
        tasks.push(tokio::task::spawn_local(txns::read_committed(
            plan.clone(),
            history.clone(),
            plan.produce_until,
        )));
    }
    for producer in plan.producers.clone() {
        tasks.push(tokio::task::spawn_local(produce(
            plan.clone(),
            producer,
            partitions.clone(),
            history.clone(),
        )));
    }
    if let Some((at, count)) = plan.grow {
        tasks.push(tokio::task::spawn_local(admin::grow(
            admin,
            at,
            count,
            partitions.clone(),
            history.clone(),
        )));
    }
    let scratch = plan.scratch.clone().map(|scratch| {
        tokio::task::spawn_local(admin::scratch(scratch, plan.clone(), history.clone()))
    });
    if !plan.members.is_empty() {
        tasks.push(tokio::task::spawn_local(members::run_all(
            plan.clone(),
            partitions.clone(),
            history.clone(),
        )));
    }
    let consumer = tokio::task::spawn_local(consume(
        plan.clone(),
        partitions.clone(),
        history.clone(),
        plan.produce_until,
    ));
    for t in tasks {
        let _ = t.await;
    }
    let _ = consumer.await;
    history
        .borrow_mut()
        .event("producers stopped; draining".into());
    drain(plan.clone(), partitions.get(), history.clone()).await;
    if !plan.txn_producers.is_empty() {
        txns::drain(plan.clone(), history.clone()).await;
    }
    if plan.copier.is_some() {
        copier::drain(plan.clone(), history.clone()).await;
    }
    read_committed_offsets(&plan, offsets::GROUP, partitions.get(), &history).await;
    if !plan.members.is_empty() {
        read_committed_offsets(&plan, members::GROUP, partitions.get(), &history).await;
    }
    if let Some(scratch) = scratch {
        let _ = scratch.await;
    }
    Ok(())
}

/// Reads `group`'s committed offsets once the cluster has healed (retrying until the
/// coordinator answers; the liveness bound is the harness's).
async fn read_committed_offsets(
    plan: &Plan,
    group: &'static str,
    partitions: i32,
    history: &Rc<RefCell<History>>,
) {
    let mut client = Client::new("sim-offsets".into(), plan.nodes);
    let mut committer = offsets::Committer::new(group);
    loop {
        match committer.fetch(&mut client, partitions).await {
            Ok(committed) => {
                history.borrow_mut().committed_at_end(group, committed);
                return;
            }
            Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
        }
    }
}

/// The workload a seed chooses. The group members and the transactional producers come from
/// their own streams of the seed (`members_rng`, `txns_rng`), so that adding them left every
/// other choice of a seed as it was.
pub fn plan(
    rng: &mut Rng,
    members_rng: &mut Rng,
    txns_rng: &mut Rng,
    nodes: usize,
    produce_until: Duration,
) -> Plan {
    let producers = (0..1 + rng.below(3))
        .map(|id| {
            // An idempotent producer writes with acks=all, as Kafka's clients require.
            let idempotent = rng.chance(0.6);
            Producer {
                id,
                acks: if idempotent || rng.chance(0.8) { -1 } else { 1 },
                idempotent,
            }
        })
        .collect();
    let partitions = 1 + i32::try_from(rng.below(3)).unwrap_or(0);
    // The faults run from 5 s to `produce_until` - 10 s; additions and deletions land among them.
    let faults = (
        Duration::from_secs(5),
        produce_until.saturating_sub(Duration::from_secs(10)),
    );
    let grow = rng.chance(0.3).then(|| {
        let at = faults.0 + rng.millis(0, faults.1.saturating_sub(faults.0).as_millis() as u64);
        (
            at,
            partitions + 1 + i32::try_from(rng.below(2)).unwrap_or(0),
        )
    });
    let scratch = rng.chance(0.3).then(|| admin::Scratch::plan(rng, faults));
    let txn_producers = txns::plan(txns_rng);
    Plan {
        nodes,
        partitions,
        grow,
        scratch,
        replication_factor: 3,
        producers,
        members: if members_rng.chance(0.5) {
            members::plan(members_rng, (Duration::from_secs(2), produce_until))
        } else {
            Vec::new()
        },
        copier: if txn_producers.is_empty() {
            None
        } else {
            copier::plan(txns_rng, faults)
        },
        txn_producers,
        produce_until,
    }
}
