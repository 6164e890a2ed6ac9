//! An exactly-once copier, as Kafka Streams runs a task (consume, transform, produce): it
//! reads [`TXN_TOPIC`] (the transactional producers' output) `read_committed` from its group's
//! committed offsets, writes a copy of each record (`c-<value>`) to the same partition of
//! [`COPY_TOPIC`] in a transaction that also commits its new positions to group [`COPIER`]
//! (TxnOffsetCommit), and commits; one transaction in seven it aborts on purpose. After an
//! abort it copies again from the positions last committed; after a failure that leaves the
//! outcome unknown it takes a new epoch and reads those positions back from the group with
//! `require_stable` (KIP-447), as a restarted task does.
//!
//! In some seeds the copier is replaced while the faults run: a second instance with the same
//! transactional id starts (its InitProducerId fences the first and ends its open
//! transaction) while the first, a zombie that has not been told, goes on until the cluster
//! refuses it, and only then stops. Once the transactional producers have finished, the
//! copier runs until it has copied and committed everything; the history then checks that
//! each partition's copy is exactly the input below the committed offset, once each and in
//! order (`history/copies.rs`).

use super::offsets::Committer;
use super::txns::{
    committed_records, drain_committed, next_position, now, Failure, Session, TxnProducer,
    TXN_PARTITIONS, TXN_TOPIC,
};
use super::{drain_partition, fetch_at, Client, Plan, READ_COMMITTED, RETRY_BACKOFF};
use crate::history::{History, TxnOutcome};
use crate::Rng;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

pub const COPY_TOPIC: &str = "sim-copy";
/// The copier's transactional id and group.
pub const COPIER: &str = "sim-copier";
/// Records copied in one transaction at most: a catch-up is several transactions.
const COPIES_PER_TXN_MAX: usize = 20;

/// The copier, as the seed chose it.
#[derive(Clone, Debug)]
pub struct Copier {
    /// `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// Transaction version 2 (KIP-890 part 2); else version 1.
    pub tv2: bool,
    /// When a second instance replaces the first.
    pub replaced_at: Option<Duration>,
    pub seed: u64,
}

/// A copier in about two seeds in three that run transactional producers; replaced, in half
/// of those, at a time among the faults (`faults`: their start and end).
pub fn plan(rng: &mut Rng, faults: (Duration, Duration)) -> Option<Copier> {
    rng.chance(0.7).then(|| {
        let span = faults.1.saturating_sub(faults.0).as_millis() as u64;
        Copier {
            timeout_ms: i32::try_from(rng.millis(4_000, 12_000).as_millis()).unwrap_or(10_000),
            tv2: rng.chance(0.5),
            replaced_at: rng.chance(0.5).then(|| faults.0 + rng.millis(0, span)),
            seed: rng.next_u64(),
        }
    })
}

/// The copier: its first instance, and its replacement if the seed has one; until the
/// instance in charge has copied everything (`input_done`: the input will not grow).
pub async fn run(
    plan: Rc<Plan>,
    copier: Copier,
    input_done: Rc<Cell<bool>>,
    history: Rc<RefCell<History>>,
) {
    history.borrow_mut().copier_started();
    let current = Rc::new(Cell::new(0));
    let first = tokio::task::spawn_local(instance(
        plan.clone(),
        copier.clone(),
        0,
        current.clone(),
        input_done.clone(),
        history.clone(),
    ));
    if let Some(at) = copier.replaced_at {
        tokio::time::sleep(at.saturating_sub(now())).await;
        current.set(1);
        history
            .borrow_mut()
            .event("copier 1 replaces copier 0, which is not told".into());
        instance(plan, copier, 1, current, input_done, history).await;
    }
    let _ = first.await;
}

/// One instance of the copier, until it has copied everything or learns it was replaced.
async fn instance(
    plan: Rc<Plan>,
    copier: Copier,
    me: u64,
    current: Rc<Cell<u64>>,
    input_done: Rc<Cell<bool>>,
    history: Rc<RefCell<History>>,
) {
    let mut session = Session::new(
        TxnProducer {
            id: me,
            timeout_ms: copier.timeout_ms,
            offsets: true,
            tv2: copier.tv2,
            seed: copier.seed,
        },
        format!("copier {me}"),
        COPIER.into(),
        COPIER.into(),
        Client::new(format!("sim-copier-{me}"), plan.nodes).on(COPY_TOPIC),
        history,
    );
    let mut reader = Client::new(format!("sim-copier-{me}-reader"), plan.nodes).on(TXN_TOPIC);
    let mut group = Committer::for_group(COPIER.into(), TXN_TOPIC);
    let mut rng = Rng::new(copier.seed ^ me);
    // The positions last committed; `None` when they must be read back from the group.
    let mut committed: Option<BTreeMap<i32, i64>> = None;
    for n in 0.. {
        let producer = match session.producer {
            Some(producer) => producer,
            None => session.init().await,
        };
        let from = match &committed {
            Some(from) => from.clone(),
            None => {
                let from = committed_positions(&mut reader, &mut group).await;
                session.event(format!("resumes at {from:?}"));
                committed.insert(from).clone()
            }
        };
        let (copies, to, caught_up) = read(&mut reader, &from).await;
        if to == from {
            if caught_up && input_done.get() {
                session.event(format!("has copied everything: {from:?}"));
                return;
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
            continue;
        }
        let abort = rng.chance(1.0 / 7.0);
        match copy(&mut session, producer, &copies, &to, abort).await {
            Ok(()) if abort => session.event(format!("aborted copy {n} on purpose")),
            Ok(()) => {
                session.event(format!(
                    "committed copy {n}: {} records, at {to:?}",
                    copies.len()
                ));
                committed = Some(to);
            }
            Err(failure) => {
                session.event(format!("copy {n} failed: {failure}"));
                if current.get() != me {
                    session.event("stops: it was replaced".into());
                    return;
                }
                if session.give_up(producer, n, failure).await != TxnOutcome::Aborted {
                    committed = None;
                }
            }
        }
    }
}

/// The group's committed positions for every input partition (0 for one with none), asked
/// until the coordinator answers with none pending (`require_stable`).
async fn committed_positions(reader: &mut Client, group: &mut Committer) -> BTreeMap<i32, i64> {
    loop {
        match group.fetch(reader, TXN_PARTITIONS).await {
            Ok(c) => {
                return (0..TXN_PARTITIONS)
                    .map(|p| (p, c.get(&p).copied().unwrap_or(0)))
                    .collect()
            }
            Err(_) => tokio::time::sleep(RETRY_BACKOFF).await,
        }
    }
}

/// One `read_committed` fetch of each input partition from `from`: the records to copy
/// ((partition, value), at most [`COPIES_PER_TXN_MAX`] in all), the positions after them, and
/// whether every partition was read to its high watermark with no transaction open.
async fn read(
    reader: &mut Client,
    from: &BTreeMap<i32, i64>,
) -> (Vec<(i32, String)>, BTreeMap<i32, i64>, bool) {
    let mut copies = Vec::new();
    let mut to = from.clone();
    let mut caught_up = true;
    for (&partition, &start) in from {
        let room = COPIES_PER_TXN_MAX - copies.len();
        let Ok(answer) = fetch_at(reader, partition, start, READ_COMMITTED).await else {
            caught_up = false;
            continue;
        };
        let kept = committed_records(&answer);
        // Stop before the first record there is no room for: what lies before it and is not
        // kept (markers, aborted records) is passed over with the copied ones.
        let end = match kept.get(room) {
            Some((offset, _)) => *offset,
            None => next_position(&answer, start),
        };
        caught_up &=
            end >= answer.high_watermark && answer.last_stable_offset == answer.high_watermark;
        copies.extend(kept.into_iter().take(room).map(|(_, v)| (partition, v)));
        to.insert(partition, end);
    }
    (copies, to, caught_up)
}

/// One copy transaction: the copies, the positions after them, then EndTxn.
async fn copy(
    session: &mut Session,
    producer: (i64, i16),
    copies: &[(i32, String)],
    to: &BTreeMap<i32, i64>,
    abort: bool,
) -> Result<(), Failure> {
    let deadline = now() + Duration::from_millis(u64::try_from(session.me.timeout_ms).unwrap_or(0));
    if !session.me.tv2 && !copies.is_empty() {
        let partitions: BTreeSet<i32> = copies.iter().map(|(p, _)| *p).collect();
        session
            .add_partitions(producer, &partitions, deadline)
            .await?;
    }
    for (partition, value) in copies {
        session
            .write(producer, &format!("c-{value}"), *partition, deadline)
            .await?;
    }
    session.send_offsets(producer, to, deadline).await?;
    session.end(producer, !abort).await
}

/// The copy's final logs, `read_committed` (for the check) and `read_uncommitted` (for the
/// replicas' comparison), and the copier's committed positions.
pub async fn drain(plan: Rc<Plan>, history: Rc<RefCell<History>>) {
    let mut client = Client::new("sim-copy-drain".into(), plan.nodes).on(COPY_TOPIC);
    for partition in 0..TXN_PARTITIONS {
        let (log, high_watermark) = drain_committed(&mut client, partition, |_| {}).await;
        let (everything, high_watermark_uncommitted) =
            drain_partition(&mut client, partition).await;
        let mut h = history.borrow_mut();
        h.copy_drained(partition, log, high_watermark);
        h.copy_drained_uncommitted(partition, everything, high_watermark_uncommitted);
    }
    let mut group = Committer::for_group(COPIER.into(), TXN_TOPIC);
    let positions = committed_positions(&mut client, &mut group).await;
    history.borrow_mut().copier_offsets_at_end(positions);
}
