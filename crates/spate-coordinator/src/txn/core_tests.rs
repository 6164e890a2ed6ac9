//! Every transition, timeout and fencing case of the transaction coordinator core.

#![allow(clippy::unwrap_used)]

use super::core::TxnCoordinator;
use super::messages::*;
use super::state::{TxnMetadata, TxnPartition, TxnState};
use super::TxnRecord;
use crate::records::partition_for;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const ID: &str = "tx-1";
const EPOCH: i32 = 5;
const TIMEOUT: i32 = 60_000;

fn settings() -> TxnSettings {
    TxnSettings {
        max_timeout_ms: 900_000,
        id_expiration_ms: 3_600_000,
        partition_count: 4,
    }
}

/// A core leading every partition, loaded.
fn coordinator() -> TxnCoordinator {
    let mut c = TxnCoordinator::new(settings());
    for p in 0..4 {
        c.loading(p, EPOCH);
        c.loaded(p);
    }
    assert!(c.take_actions().is_empty());
    c
}

fn tp(topic: &str, p: i32) -> TxnPartition {
    (topic.to_owned(), p)
}

/// The records queued, in order, with the write each is part of.
fn stores(actions: &[TxnAction]) -> Vec<(WriteId, TxnRecord)> {
    actions
        .iter()
        .flat_map(|a| match a {
            TxnAction::Store { write, records, .. } => {
                records.iter().map(|r| (*write, r.clone())).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

fn replies(actions: &[TxnAction]) -> Vec<(u64, TxnAnswer)> {
    actions
        .iter()
        .filter_map(|a| match a {
            TxnAction::Reply(r, a) => Some((*r, *a)),
            _ => None,
        })
        .collect()
}

fn markers(actions: &[TxnAction]) -> Vec<MarkerJob> {
    actions
        .iter()
        .filter_map(|a| match a {
            TxnAction::Markers(j) => Some(j.clone()),
            _ => None,
        })
        .collect()
}

/// Stores every queued record successfully, repeatedly, and returns all actions seen.
fn store_all(c: &mut TxnCoordinator, now: i64, mut actions: Vec<TxnAction>) -> Vec<TxnAction> {
    let mut seen = Vec::new();
    loop {
        let mut writes: Vec<WriteId> = stores(&actions).into_iter().map(|(w, _)| w).collect();
        writes.dedup();
        seen.extend(actions);
        if writes.is_empty() {
            return seen;
        }
        for w in writes {
            c.stored(now, w, Ok(()));
        }
        actions = c.take_actions();
    }
}

/// Stores everything the core queued, and what that queues in turn.
fn settle(c: &mut TxnCoordinator, now: i64) -> Vec<TxnAction> {
    let actions = c.take_actions();
    store_all(c, now, actions)
}

/// Runs a request to its answer, storing what it stores.
fn answer(c: &mut TxnCoordinator, now: i64) -> (TxnAnswer, Vec<TxnAction>) {
    let actions = c.take_actions();
    let seen = store_all(c, now, actions);
    let rs = replies(&seen);
    assert_eq!(rs.len(), 1, "one answer per request: {seen:?}");
    (rs[0].1, seen)
}

fn init(c: &mut TxnCoordinator, now: i64, pid: i64, epoch: i16) -> TxnAnswer {
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: pid,
        producer_epoch: epoch,
    };
    c.init_producer_id(now, 1, &req, Some(1000 + now)).unwrap();
    answer(c, now).0
}

fn add(
    c: &mut TxnCoordinator,
    now: i64,
    pid: i64,
    epoch: i16,
    parts: &[TxnPartition],
) -> TxnAnswer {
    c.add_partitions(
        now,
        2,
        &AddPartitionsRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: parts.to_vec(),
            tv2: false,
        },
    );
    answer(c, now).0
}

fn end_req(pid: i64, epoch: i16, commit: bool, tv2: bool) -> EndRequest {
    EndRequest {
        transactional_id: ID.to_owned(),
        producer_id: pid,
        producer_epoch: epoch,
        commit,
        tv2,
    }
}

/// EndTxn answered; returns the answer and the marker jobs it started (not yet written).
fn end(c: &mut TxnCoordinator, now: i64, req: &EndRequest) -> (TxnAnswer, Vec<MarkerJob>) {
    c.end_txn(now, 3, req, Some(5000)).unwrap();
    let (a, seen) = answer(c, now);
    (a, markers(&seen))
}

fn state(c: &TxnCoordinator) -> TxnDescription {
    c.describe(ID).unwrap()
}

#[test]
fn a_new_transactional_id_needs_a_producer_id_and_starts_at_epoch_0() {
    let mut c = coordinator();
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    assert_eq!(c.init_producer_id(0, 1, &req, None), Err(NeedProducerId));
    assert!(
        c.take_actions().is_empty(),
        "nothing happens without the id"
    );
    c.init_producer_id(0, 1, &req, Some(77)).unwrap();
    let actions = c.take_actions();
    let s = stores(&actions);
    assert_eq!(s.len(), 1);
    assert!(replies(&actions).is_empty(), "answered only once stored");
    let stored = s[0].1.value.clone().unwrap();
    assert_eq!(
        (stored.producer_id, stored.producer_epoch, stored.state),
        (77, 0, TxnState::Empty)
    );
    assert_eq!(
        match &actions[0] {
            TxnAction::Store { partition, .. } => *partition,
            _ => -1,
        },
        partition_for(ID, 4)
    );
    c.stored(0, s[0].0, Ok(()));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(
            1,
            TxnAnswer {
                error: None,
                producer_id: 77,
                producer_epoch: 0
            }
        )]
    );
    // Known now: a second producer needs no new id, and bumps the epoch.
    c.init_producer_id(1, 1, &req, None).unwrap();
    assert_eq!(
        answer(&mut c, 1).0,
        TxnAnswer {
            error: None,
            producer_id: 77,
            producer_epoch: 1
        }
    );
}

#[test]
fn bad_init_requests_are_refused() {
    let mut c = coordinator();
    let cases = [
        ("", TIMEOUT, -1, -1, TxnError::InvalidRequest),
        (
            &*"x".repeat(TRANSACTIONAL_ID_BYTES_MAX + 1),
            TIMEOUT,
            -1,
            -1,
            TxnError::InvalidRequest,
        ),
        (ID, 0, -1, -1, TxnError::InvalidTransactionTimeout),
        (ID, 900_001, -1, -1, TxnError::InvalidTransactionTimeout),
        (ID, TIMEOUT, 5, -1, TxnError::InvalidRequest),
        (ID, TIMEOUT, -1, 3, TxnError::InvalidRequest),
    ];
    for (id, timeout_ms, producer_id, producer_epoch, want) in cases {
        let req = InitRequest {
            transactional_id: id.to_owned(),
            timeout_ms,
            producer_id,
            producer_epoch,
        };
        c.init_producer_id(0, 9, &req, Some(1)).unwrap();
        let actions = c.take_actions();
        assert!(stores(&actions).is_empty());
        assert_eq!(
            replies(&actions)[0].1.error,
            Some(want),
            "{id:.8} {timeout_ms}"
        );
    }
}

#[test]
fn ids_of_partitions_not_led_or_still_loading_are_refused() {
    let mut c = TxnCoordinator::new(settings());
    let p = partition_for(ID, 4);
    assert_eq!(c.check(ID), Err(TxnError::NotCoordinator));
    c.loading(p, 1);
    assert_eq!(c.check(ID), Err(TxnError::CoordinatorLoadInProgress));
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    c.init_producer_id(0, 1, &req, Some(1)).unwrap();
    assert_eq!(
        replies(&c.take_actions())[0].1.error,
        Some(TxnError::CoordinatorLoadInProgress)
    );
    c.loaded(p);
    assert_eq!(c.check(ID), Ok(()));
    c.unload(p);
    assert_eq!(c.check(ID), Err(TxnError::NotCoordinator));
}

#[test]
fn a_commit_goes_prepare_markers_complete() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    assert_eq!(add(&mut c, 10, pid, epoch, &[tp("a", 0)]).error, None);
    assert_eq!(state(&c).state, TxnState::Ongoing);
    assert_eq!(state(&c).start_ms, 10);
    // Adding a partition already in the transaction stores nothing.
    c.add_partitions(
        11,
        2,
        &AddPartitionsRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: vec![tp("a", 0)],
            tv2: false,
        },
    );
    let actions = c.take_actions();
    assert!(stores(&actions).is_empty());
    assert_eq!(replies(&actions)[0].1.error, None);
    assert_eq!(add(&mut c, 12, pid, epoch, &[tp("b", 3)]).error, None);
    assert_eq!(state(&c).start_ms, 10, "the start is the first partition's");

    let (a, jobs) = end(&mut c, 20, &end_req(pid, epoch, true, false));
    assert_eq!(
        a,
        TxnAnswer {
            error: None,
            producer_id: pid,
            producer_epoch: epoch
        }
    );
    assert_eq!(state(&c).state, TxnState::PrepareCommit);
    assert_eq!(
        jobs,
        vec![MarkerJob {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: epoch,
            commit: true,
            coordinator_epoch: EPOCH,
            partitions: vec![tp("a", 0), tp("b", 3)],
        }]
    );
    // Until the markers are written, the producer waits (an add for its next transaction
    // waits too: the_next_transactions_add_is_stored_with_the_complete_record).
    assert_eq!(
        end(&mut c, 21, &end_req(pid, epoch, true, false)).0.error,
        Some(TxnError::ConcurrentTransactions)
    );
    assert_eq!(
        end(&mut c, 21, &end_req(pid, epoch, false, false)).0.error,
        Some(TxnError::InvalidTxnState)
    );
    assert_eq!(
        init(&mut c, 21, pid, epoch).error,
        Some(TxnError::ConcurrentTransactions)
    );

    c.markers_written(30, &jobs[0]);
    let seen = settle(&mut c, 30);
    let s = stores(&seen);
    assert_eq!(s.len(), 1);
    let complete = s[0].1.value.clone().unwrap();
    assert_eq!(complete.state, TxnState::CompleteCommit);
    assert!(complete.partitions.is_empty());
    assert_eq!(state(&c).state, TxnState::CompleteCommit);
    // A retried commit succeeds; an abort now is out of place.
    assert_eq!(
        end(&mut c, 31, &end_req(pid, epoch, true, false)).0.error,
        None
    );
    assert_eq!(
        end(&mut c, 31, &end_req(pid, epoch, false, false)).0.error,
        Some(TxnError::InvalidTxnState)
    );
    // The next transaction starts from CompleteCommit.
    assert_eq!(add(&mut c, 40, pid, epoch, &[tp("a", 1)]).error, None);
    assert_eq!(state(&c).start_ms, 40);
}

/// An AddPartitionsToTxn of the producer's next transaction.
fn add_req(pid: i64, epoch: i16, parts: &[TxnPartition]) -> AddPartitionsRequest {
    AddPartitionsRequest {
        transactional_id: ID.to_owned(),
        producer_id: pid,
        producer_epoch: epoch,
        partitions: parts.to_vec(),
        tv2: false,
    }
}

/// A producer with a committed transaction whose markers are being written.
fn ending(c: &mut TxnCoordinator, req: &EndRequest) -> (i64, i16, MarkerJob) {
    let a = init(c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    assert_eq!(add(c, 10, pid, epoch, &[tp("a", 0)]).error, None);
    let req = EndRequest {
        producer_id: pid,
        producer_epoch: epoch,
        ..req.clone()
    };
    let (a, jobs) = end(c, 20, &req);
    assert_eq!(a.error, None);
    (a.producer_id, a.producer_epoch, jobs[0].clone())
}

#[test]
fn the_next_transactions_add_is_stored_with_the_complete_record() {
    let mut c = coordinator();
    let (pid, epoch, job) = ending(&mut c, &end_req(0, 0, true, false));
    // It waits for the markers: no answer, nothing stored.
    c.add_partitions(21, 40, &add_req(pid, epoch, &[tp("b", 1)]));
    assert!(c.take_actions().is_empty());
    assert_eq!(state(&c).state, TxnState::PrepareCommit);
    // Another one meanwhile (a version 2 producer's leaders each add their partition) is
    // told to retry: the service asks again once the records settle.
    c.add_partitions(22, 41, &add_req(pid, epoch, &[tp("c", 2)]));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(41, TxnAnswer::error(TxnError::ConcurrentTransactions))]
    );

    c.markers_written(30, &job);
    let actions = c.take_actions();
    let s = stores(&actions);
    assert_eq!(s.len(), 2, "{actions:?}");
    assert_eq!(s[0].0, s[1].0, "one write: both records or neither");
    let (complete, ongoing) = (s[0].1.value.clone().unwrap(), s[1].1.value.clone().unwrap());
    assert_eq!(complete.state, TxnState::CompleteCommit);
    assert!(complete.partitions.is_empty());
    assert_eq!(ongoing.state, TxnState::Ongoing);
    assert_eq!(ongoing.partitions, [tp("b", 1)].into_iter().collect());
    assert_eq!(
        ongoing.start_ms, 30,
        "the new transaction starts at its add"
    );
    assert!(replies(&actions).is_empty(), "answered only once stored");
    c.stored(31, s[0].0, Ok(()));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(40, TxnAnswer::ok(pid, epoch))]
    );
    assert_eq!(state(&c).state, TxnState::Ongoing);

    // A reload of the two records gives the same state.
    let p = partition_for(ID, 4);
    let mut reloaded = TxnCoordinator::new(settings());
    reloaded.loading(p, EPOCH);
    reloaded.replay(s[0].1.clone());
    reloaded.replay(s[1].1.clone());
    reloaded.loaded(p);
    assert_eq!(reloaded.describe(ID), c.describe(ID));
    assert!(
        reloaded.take_actions().is_empty(),
        "no markers to write again"
    );

    // The other one, asked again, joins the ongoing transaction.
    assert_eq!(add(&mut c, 32, pid, epoch, &[tp("c", 2)]).error, None);
    assert_eq!(state(&c).partitions, vec![tp("b", 1), tp("c", 2)]);
}

#[test]
fn a_waiting_add_is_refused_when_its_producer_is_not_the_one_that_continues() {
    // Version 2 bumped the epoch at EndTxn: the old epoch is fenced at once.
    let mut c = coordinator();
    let (pid, epoch, job) = ending(&mut c, &end_req(0, 0, true, true));
    c.add_partitions(21, 40, &add_req(pid, epoch - 1, &[tp("b", 1)]));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(40, TxnAnswer::error(TxnError::ProducerFenced))]
    );
    c.add_partitions(21, 41, &add_req(pid + 1, epoch, &[tp("b", 1)]));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(41, TxnAnswer::error(TxnError::InvalidProducerIdMapping))]
    );
    // The epoch its EndTxn answered waits, and is added.
    c.add_partitions(21, 42, &add_req(pid, epoch, &[tp("b", 1)]));
    assert!(c.take_actions().is_empty());
    c.markers_written(30, &job);
    let (a, seen) = answer(&mut c, 30);
    assert_eq!(a, TxnAnswer::ok(pid, epoch));
    assert_eq!(stores(&seen).len(), 2);

    // Over the partition limit: the Complete record is stored alone, the add refused.
    let mut c = coordinator();
    let (pid, epoch, job) = ending(&mut c, &end_req(0, 0, false, false));
    let many: Vec<TxnPartition> = (0..=TXN_PARTITIONS_MAX as i32)
        .map(|n| tp("m", n))
        .collect();
    c.add_partitions(21, 43, &add_req(pid, epoch, &many));
    c.markers_written(30, &job);
    let (a, seen) = answer(&mut c, 30);
    assert_eq!(a.error, Some(TxnError::InvalidRequest));
    let s = stores(&seen);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].1.value.as_ref().unwrap().state,
        TxnState::CompleteAbort
    );
    assert_eq!(state(&c).state, TxnState::CompleteAbort);
}

#[test]
fn a_waiting_add_survives_a_failed_store_and_is_answered_when_unloaded() {
    let mut c = coordinator();
    let (pid, epoch, job) = ending(&mut c, &end_req(0, 0, true, false));
    c.add_partitions(21, 40, &add_req(pid, epoch, &[tp("b", 1)]));
    c.markers_written(30, &job);
    let s = stores(&c.take_actions());
    assert_eq!(s.len(), 2);
    // Neither record stored: the client hears so, the state stays PrepareCommit with its
    // markers written.
    c.stored(31, s[0].0, Err(StoreFailure::Other));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(40, TxnAnswer::error(TxnError::CoordinatorNotAvailable))]
    );
    assert_eq!(state(&c).state, TxnState::PrepareCommit);
    // Its retry stores both at once, without waiting for the next tick.
    c.add_partitions(32, 41, &add_req(pid, epoch, &[tp("b", 1)]));
    let (a, seen) = answer(&mut c, 32);
    assert_eq!(a, TxnAnswer::ok(pid, epoch));
    let s = stores(&seen);
    assert_eq!(
        s.iter()
            .map(|(_, r)| r.value.as_ref().unwrap().state)
            .collect::<Vec<_>>(),
        vec![TxnState::CompleteCommit, TxnState::Ongoing]
    );

    // Losing the partition answers a waiting add NOT_COORDINATOR.
    let (_, jobs) = end(&mut c, 40, &end_req(pid, epoch, true, false));
    assert_eq!(jobs.len(), 1);
    c.add_partitions(41, 42, &add_req(pid, epoch, &[tp("b", 1)]));
    assert!(c.take_actions().is_empty());
    c.unload(partition_for(ID, 4));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(42, TxnAnswer::error(TxnError::NotCoordinator))]
    );
}

#[test]
fn end_txn_with_no_transaction_open_is_refused_before_version_2() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    for commit in [true, false] {
        let (a, jobs) = end(
            &mut c,
            1,
            &end_req(a.producer_id, a.producer_epoch, commit, false),
        );
        assert_eq!(a.error, Some(TxnError::InvalidTxnState));
        assert!(jobs.is_empty());
    }
}

#[test]
fn wrong_producer_id_or_epoch_is_refused_everywhere() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    assert_eq!(
        add(&mut c, 1, pid + 1, epoch, &[tp("a", 0)]).error,
        Some(TxnError::InvalidProducerIdMapping)
    );
    assert_eq!(
        add(&mut c, 1, pid, epoch + 1, &[tp("a", 0)]).error,
        Some(TxnError::ProducerFenced)
    );
    assert_eq!(add(&mut c, 1, pid, epoch, &[tp("a", 0)]).error, None);
    assert_eq!(
        end(&mut c, 2, &end_req(pid + 1, epoch, true, false))
            .0
            .error,
        Some(TxnError::InvalidProducerIdMapping)
    );
    assert_eq!(
        end(&mut c, 2, &end_req(pid, epoch - 1, true, false))
            .0
            .error,
        Some(TxnError::ProducerFenced)
    );
    assert_eq!(
        c.verify(ID, pid + 1, epoch, &[tp("a", 0)]),
        Err(TxnError::InvalidProducerIdMapping)
    );
    assert_eq!(
        c.verify(ID, pid, epoch + 1, &[tp("a", 0)]),
        Err(TxnError::ProducerFenced)
    );
    // An unknown transactional id is not mapped to any producer.
    c.add_partitions(
        3,
        4,
        &AddPartitionsRequest {
            transactional_id: "other".to_owned(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: vec![tp("a", 0)],
            tv2: false,
        },
    );
    assert_eq!(
        replies(&c.take_actions())[0].1.error,
        Some(TxnError::InvalidProducerIdMapping)
    );
    assert_eq!(c.describe("other"), Err(TxnError::TransactionalIdNotFound));
}

#[test]
fn verification_says_which_partitions_are_in_the_ongoing_transaction() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    assert_eq!(
        c.verify(ID, pid, epoch, &[tp("a", 0)]),
        Ok(vec![Some(TxnError::InvalidTxnState)]),
        "no transaction open"
    );
    add(&mut c, 1, pid, epoch, &[tp("a", 0)]);
    assert_eq!(
        c.verify(ID, pid, epoch, &[tp("a", 0), tp("a", 1)]),
        Ok(vec![None, Some(TxnError::InvalidTxnState)])
    );
    // The next partitions are being added (their record not yet stored): the partition
    // already added is still verified, the one being added is not yet.
    c.add_partitions(
        2,
        7,
        &AddPartitionsRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: vec![tp("a", 1)],
            tv2: false,
        },
    );
    assert_eq!(
        c.verify(ID, pid, epoch, &[tp("a", 0), tp("a", 1), tp("a", 2)]),
        Ok(vec![
            None,
            Some(TxnError::ConcurrentTransactions),
            Some(TxnError::InvalidTxnState)
        ]),
        "while an add is being stored"
    );
    settle(&mut c, 2);
    assert_eq!(
        c.verify(ID, pid, epoch, &[tp("a", 0), tp("a", 1)]),
        Ok(vec![None, None])
    );
    c.end_txn(2, 3, &end_req(pid, epoch, true, false), None)
        .unwrap();
    assert_eq!(
        c.verify(ID, pid, epoch, &[tp("a", 0)]),
        Err(TxnError::ConcurrentTransactions),
        "while the commit is being stored"
    );
}

#[test]
fn a_new_producer_fences_the_old_one_and_aborts_its_open_transaction() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, old) = (a.producer_id, a.producer_epoch);
    add(&mut c, 1, pid, old, &[tp("a", 0), tp("b", 0)]);

    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    c.init_producer_id(2, 1, &req, None).unwrap();
    let (a, seen) = answer(&mut c, 2);
    assert_eq!(
        a.error,
        Some(TxnError::ConcurrentTransactions),
        "the client retries"
    );
    let jobs = markers(&seen);
    assert_eq!(jobs.len(), 1);
    assert!(!jobs[0].commit);
    assert_eq!(
        jobs[0].producer_epoch,
        old + 1,
        "markers fence the old epoch"
    );
    assert_eq!(state(&c).state, TxnState::PrepareAbort);
    // The old producer is fenced at once.
    assert_eq!(
        end(&mut c, 3, &end_req(pid, old, true, false)).0.error,
        Some(TxnError::ProducerFenced)
    );
    assert_eq!(
        init(&mut c, 3, -1, -1).error,
        Some(TxnError::ConcurrentTransactions)
    );

    c.markers_written(4, &jobs[0]);
    settle(&mut c, 4);
    assert_eq!(state(&c).state, TxnState::CompleteAbort);
    let a = init(&mut c, 5, -1, -1);
    assert_eq!(
        (a.error, a.producer_id, a.producer_epoch),
        (None, pid, old + 2)
    );
    assert_eq!(
        add(&mut c, 6, pid, old, &[tp("a", 0)]).error,
        Some(TxnError::ProducerFenced)
    );
}

#[test]
fn kip_360_a_producer_naming_its_id_and_epoch_continues_and_an_older_one_is_fenced() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, e0) = (a.producer_id, a.producer_epoch);
    let b = init(&mut c, 1, pid, e0);
    assert_eq!(
        (b.error, b.producer_id, b.producer_epoch),
        (None, pid, e0 + 1)
    );
    // A retry of that request (its answer lost) gets the same epoch.
    let retry = init(&mut c, 2, pid, e0);
    assert_eq!((retry.error, retry.producer_epoch), (None, e0 + 1));
    // A new producer (no id) bumps and forgets the last epoch: the old one is now fenced.
    let fresh = init(&mut c, 3, -1, -1);
    assert_eq!(fresh.producer_epoch, e0 + 2);
    assert_eq!(
        init(&mut c, 4, pid, e0).error,
        Some(TxnError::ProducerFenced)
    );
    assert_eq!(
        init(&mut c, 4, pid + 9, e0 + 2).error,
        Some(TxnError::ProducerFenced)
    );
}

#[test]
fn an_exhausted_epoch_moves_the_transactional_id_to_a_new_producer_id() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let p = partition_for(ID, 4);
    let mut m = TxnMetadata::new(a.producer_id, TIMEOUT, 0);
    m.producer_epoch = i16::MAX - 1;
    c.loading(p, EPOCH);
    c.replay(TxnRecord {
        transactional_id: ID.to_owned(),
        value: Some(m),
    });
    c.loaded(p);
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    assert_eq!(c.init_producer_id(1, 1, &req, None), Err(NeedProducerId));
    c.init_producer_id(1, 1, &req, Some(9999)).unwrap();
    let (b, _) = answer(&mut c, 1);
    assert_eq!((b.error, b.producer_id, b.producer_epoch), (None, 9999, 0));
}

#[test]
fn a_failed_store_changes_nothing_and_a_retry_computes_the_same_transition() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    add(&mut c, 1, pid, epoch, &[tp("a", 0)]);
    for (failure, want) in [
        (StoreFailure::NotLeader, TxnError::NotCoordinator),
        (StoreFailure::Other, TxnError::CoordinatorNotAvailable),
    ] {
        c.end_txn(2, 3, &end_req(pid, epoch, true, false), None)
            .unwrap();
        let s = stores(&c.take_actions());
        assert_eq!(
            s[0].1.value.as_ref().unwrap().state,
            TxnState::PrepareCommit
        );
        c.stored(2, s[0].0, Err(failure));
        let actions = c.take_actions();
        assert_eq!(replies(&actions)[0].1.error, Some(want));
        assert!(markers(&actions).is_empty());
        assert_eq!(state(&c).state, TxnState::Ongoing);
    }
    // A fence whose store failed bumps to the same epoch when retried.
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    let mut bumped = Vec::new();
    for ok in [false, true] {
        c.init_producer_id(3, 1, &req, None).unwrap();
        let s = stores(&c.take_actions());
        bumped.push(s[0].1.value.as_ref().unwrap().producer_epoch);
        c.stored(
            3,
            s[0].0,
            if ok { Ok(()) } else { Err(StoreFailure::Other) },
        );
        c.take_actions();
    }
    assert_eq!(bumped, vec![epoch + 1, epoch + 1]);
    // A stale or repeated completion is ignored.
    c.stored(3, 12345, Ok(()));
    assert!(c.take_actions().is_empty());
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, epoch) = (a.producer_id, a.producer_epoch);
    add(&mut c, 100, pid, epoch, &[tp("a", 0)]);
    assert!(
        c.tick(100 + i64::from(TIMEOUT)).is_empty(),
        "not yet: the timeout is inclusive"
    );
    assert!(c.take_actions().is_empty());
    assert_eq!(c.tick(101 + i64::from(TIMEOUT)), vec![ID.to_owned()]);
    let seen = settle(&mut c, 101 + i64::from(TIMEOUT));
    assert!(replies(&seen).is_empty(), "nobody asked");
    let jobs = markers(&seen);
    assert_eq!((jobs[0].commit, jobs[0].producer_epoch), (false, epoch + 1));
    assert_eq!(
        add(&mut c, 200_000, pid, epoch, &[tp("a", 0)]).error,
        Some(TxnError::ProducerFenced)
    );
    assert_eq!(
        end(&mut c, 200_000, &end_req(pid, epoch, true, false))
            .0
            .error,
        Some(TxnError::ProducerFenced)
    );
    c.markers_written(200_001, &jobs[0]);
    settle(&mut c, 200_001);
    assert_eq!(state(&c).state, TxnState::CompleteAbort);
    assert!(c.tick(200_002).is_empty());
}

#[test]
fn a_version_2_transaction_timing_out_at_its_last_epochs_is_still_fenced() {
    let mut c = TxnCoordinator::new(settings());
    let p = partition_for(ID, 4);
    c.loading(p, EPOCH);
    let mut m = TxnMetadata::new(42, TIMEOUT, 0);
    m.producer_epoch = i16::MAX - 2;
    m.state = TxnState::Ongoing;
    m.client_version = 2;
    m.start_ms = 0;
    m.partitions = [tp("a", 0)].into_iter().collect();
    c.replay(TxnRecord {
        transactional_id: ID.to_owned(),
        value: Some(m),
    });
    c.loaded(p);
    assert_eq!(c.tick(i64::from(TIMEOUT) + 1), vec![ID.to_owned()]);
    let jobs = markers(&settle(&mut c, i64::from(TIMEOUT) + 1));
    assert_eq!(
        jobs[0].producer_epoch,
        i16::MAX - 1,
        "fenced, without a second bump"
    );
}

#[test]
fn a_complete_whose_store_failed_is_retried_by_the_next_tick() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    add(&mut c, 1, a.producer_id, a.producer_epoch, &[tp("a", 0)]);
    let (_, jobs) = end(
        &mut c,
        2,
        &end_req(a.producer_id, a.producer_epoch, true, false),
    );
    c.markers_written(3, &jobs[0]);
    let s = stores(&c.take_actions());
    c.stored(3, s[0].0, Err(StoreFailure::Other));
    assert_eq!(state(&c).state, TxnState::PrepareCommit);
    c.tick(4);
    settle(&mut c, 4);
    assert_eq!(state(&c).state, TxnState::CompleteCommit);
}

/// Found by the property test: a version 2 abort with no transaction open has no markers to
/// write, and its Complete record failed to store. It stayed in PrepareAbort for good (no
/// tick retried it), and the producer's next add waited for markers that were never coming.
#[test]
fn a_failed_complete_of_an_abort_with_nothing_open_is_retried() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    c.end_txn(
        1,
        3,
        &end_req(a.producer_id, a.producer_epoch, false, true),
        None,
    )
    .unwrap();
    let s = stores(&c.take_actions());
    c.stored(1, s[0].0, Ok(()));
    let actions = c.take_actions();
    let (_, ended) = replies(&actions)[0];
    assert_eq!(ended.error, None);
    let s = stores(&actions);
    assert_eq!(
        s[0].1.value.as_ref().unwrap().state,
        TxnState::CompleteAbort
    );
    c.stored(2, s[0].0, Err(StoreFailure::Other));
    assert_eq!(state(&c).state, TxnState::PrepareAbort);
    c.tick(3);
    settle(&mut c, 3);
    assert_eq!(state(&c).state, TxnState::CompleteAbort);

    // The same failure, then the producer's next add: it completes the abort and starts.
    let (pid, epoch) = (ended.producer_id, ended.producer_epoch);
    c.end_txn(4, 3, &end_req(pid, epoch, false, true), None)
        .unwrap();
    let s = stores(&c.take_actions());
    c.stored(4, s[0].0, Ok(()));
    let actions = c.take_actions();
    let (_, ended) = replies(&actions)[0];
    c.stored(5, stores(&actions)[0].0, Err(StoreFailure::Other));
    c.add_partitions(
        6,
        40,
        &add_req(ended.producer_id, ended.producer_epoch, &[tp("b", 1)]),
    );
    let (a, _) = answer(&mut c, 6);
    assert_eq!(a, TxnAnswer::ok(ended.producer_id, ended.producer_epoch));
    assert_eq!(state(&c).state, TxnState::Ongoing);
}

#[test]
fn an_idle_id_expires_with_a_tombstone() {
    let mut c = coordinator();
    init(&mut c, 0, -1, -1);
    c.tick(3_600_000);
    assert!(c.take_actions().is_empty(), "not past the expiration yet");
    c.tick(3_600_001);
    let actions = c.take_actions();
    let s = stores(&actions);
    assert_eq!(
        s[0].1,
        TxnRecord {
            transactional_id: ID.to_owned(),
            value: None
        }
    );
    // While the tombstone is stored, the id is busy.
    let req = InitRequest {
        transactional_id: ID.to_owned(),
        timeout_ms: TIMEOUT,
        producer_id: -1,
        producer_epoch: -1,
    };
    c.init_producer_id(3_600_002, 1, &req, Some(5)).unwrap();
    assert_eq!(
        replies(&c.take_actions())[0].1.error,
        Some(TxnError::ConcurrentTransactions)
    );
    c.stored(3_600_002, s[0].0, Ok(()));
    assert_eq!(c.describe(ID), Err(TxnError::TransactionalIdNotFound));
    // An ongoing transaction's id does not expire (it times out instead).
    let a = init(&mut c, 4_000_000, -1, -1);
    assert_eq!(a.producer_id, 4_001_000, "a new producer id after expiry");
}

#[test]
fn a_loaded_partition_finishes_transactions_left_between_prepare_and_complete() {
    let mut c = TxnCoordinator::new(settings());
    let p = partition_for(ID, 4);
    c.loading(p, 9);
    let mut m = TxnMetadata::new(42, TIMEOUT, 0);
    m.producer_epoch = 3;
    m.state = TxnState::Ongoing;
    m.partitions = [tp("a", 0)].into_iter().collect();
    c.replay(TxnRecord {
        transactional_id: ID.to_owned(),
        value: Some(m.clone()),
    });
    m.state = TxnState::PrepareCommit;
    c.replay(TxnRecord {
        transactional_id: ID.to_owned(),
        value: Some(m.clone()),
    });
    c.replay(TxnRecord {
        transactional_id: "gone".to_owned(),
        value: Some(m.clone()),
    });
    c.replay(TxnRecord {
        transactional_id: "gone".to_owned(),
        value: None,
    });
    assert!(c.take_actions().is_empty(), "nothing is sent while loading");
    c.loaded(p);
    let jobs = markers(&c.take_actions());
    assert_eq!(jobs.len(), 1, "the tombstoned id is gone: {jobs:?}");
    assert_eq!(
        (
            jobs[0].producer_id,
            jobs[0].producer_epoch,
            jobs[0].coordinator_epoch,
            jobs[0].commit
        ),
        (42, 3, 9, true)
    );
    c.markers_written(1, &jobs[0]);
    settle(&mut c, 1);
    assert_eq!(state(&c).state, TxnState::CompleteCommit);
}

#[test]
fn unloading_answers_waiting_requests_and_ignores_their_stores() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    add(&mut c, 1, a.producer_id, a.producer_epoch, &[tp("a", 0)]);
    c.end_txn(
        2,
        3,
        &end_req(a.producer_id, a.producer_epoch, true, false),
        None,
    )
    .unwrap();
    let s = stores(&c.take_actions());
    c.unload(partition_for(ID, 4));
    assert_eq!(
        replies(&c.take_actions()),
        vec![(3, TxnAnswer::error(TxnError::NotCoordinator))]
    );
    c.stored(3, s[0].0, Ok(()));
    assert!(c.take_actions().is_empty());
    assert_eq!(c.describe(ID), Err(TxnError::NotCoordinator));
}

#[test]
fn version_2_bumps_the_epoch_at_every_end_and_recognises_retries() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    let (pid, e) = (a.producer_id, a.producer_epoch);
    c.add_partitions(
        1,
        2,
        &AddPartitionsRequest {
            transactional_id: ID.to_owned(),
            producer_id: pid,
            producer_epoch: e,
            partitions: vec![tp("a", 0)],
            tv2: true,
        },
    );
    let (_, seen) = answer(&mut c, 1);
    assert_eq!(stores(&seen)[0].1.value.as_ref().unwrap().client_version, 2);
    let (a, jobs) = end(&mut c, 2, &end_req(pid, e, true, true));
    assert_eq!(
        (a.error, a.producer_id, a.producer_epoch),
        (None, pid, e + 1)
    );
    assert_eq!(
        jobs[0].producer_epoch,
        e + 1,
        "markers carry the bumped epoch"
    );
    c.markers_written(3, &jobs[0]);
    settle(&mut c, 3);
    // The retry (old epoch) is answered with the new epoch; the old epoch is otherwise fenced.
    let (retry, _) = end(&mut c, 4, &end_req(pid, e, true, true));
    assert_eq!((retry.error, retry.producer_epoch), (None, e + 1));
    assert_eq!(
        end(&mut c, 4, &end_req(pid, e, false, true)).0.error,
        Some(TxnError::InvalidTxnState)
    );
    assert_eq!(
        add(&mut c, 4, pid, e, &[tp("a", 0)]).error,
        Some(TxnError::ProducerFenced)
    );
    // An abort with nothing open is allowed, bumps again, and completes without markers.
    let (a, jobs) = end(&mut c, 5, &end_req(pid, e + 1, false, true));
    assert_eq!((a.error, a.producer_epoch), (None, e + 2));
    assert!(jobs.is_empty());
    assert_eq!(state(&c).state, TxnState::CompleteAbort);
}

#[test]
fn version_2_moves_to_a_new_producer_id_when_the_bump_exhausts_the_epoch() {
    let mut c = TxnCoordinator::new(settings());
    let p = partition_for(ID, 4);
    c.loading(p, EPOCH);
    let mut m = TxnMetadata::new(42, TIMEOUT, 0);
    m.producer_epoch = i16::MAX - 1;
    m.state = TxnState::Ongoing;
    m.client_version = 2;
    m.partitions = [tp("a", 0)].into_iter().collect();
    c.replay(TxnRecord {
        transactional_id: ID.to_owned(),
        value: Some(m),
    });
    c.loaded(p);
    let req = end_req(42, i16::MAX - 1, true, true);
    assert_eq!(c.end_txn(1, 3, &req, None), Err(NeedProducerId));
    c.end_txn(1, 3, &req, Some(43)).unwrap();
    let (a, seen) = answer(&mut c, 1);
    assert_eq!((a.error, a.producer_id, a.producer_epoch), (None, 43, 0));
    let jobs = markers(&seen);
    assert_eq!(
        (jobs[0].producer_id, jobs[0].producer_epoch),
        (42, i16::MAX)
    );
    c.markers_written(2, &jobs[0]);
    settle(&mut c, 2);
    let d = state(&c);
    assert_eq!(
        (d.producer_id, d.producer_epoch, d.state),
        (43, 0, TxnState::CompleteCommit)
    );
    // A retry from before the rotation is still recognised.
    let (retry, _) = end(&mut c, 3, &req);
    assert_eq!(
        (retry.error, retry.producer_id, retry.producer_epoch),
        (None, 43, 0)
    );
}

#[test]
fn describe_and_list_filter_by_producer_state_and_duration() {
    let mut c = coordinator();
    let a = init(&mut c, 0, -1, -1);
    add(&mut c, 100, a.producer_id, a.producer_epoch, &[tp("a", 0)]);
    let d = state(&c);
    assert_eq!(
        (
            d.state,
            d.producer_id,
            d.timeout_ms,
            d.start_ms,
            d.partitions.clone()
        ),
        (
            TxnState::Ongoing,
            a.producer_id,
            TIMEOUT,
            100,
            vec![tp("a", 0)]
        )
    );
    let (no_ids, none) = (BTreeSet::new(), BTreeSet::new());
    assert_eq!(c.list(200, &no_ids, &none, -1).len(), 1);
    assert_eq!(
        c.list(200, &BTreeSet::from([a.producer_id + 1]), &none, -1)
            .len(),
        0
    );
    assert_eq!(
        c.list(200, &no_ids, &BTreeSet::from([TxnState::Empty]), -1)
            .len(),
        0
    );
    assert_eq!(
        c.list(200, &no_ids, &BTreeSet::from([TxnState::Ongoing]), -1)
            .len(),
        1
    );
    assert_eq!(c.list(200, &no_ids, &none, 100).len(), 1);
    assert_eq!(c.list(200, &no_ids, &none, 101).len(), 0);
    assert_eq!(c.describe(""), Err(TxnError::InvalidRequest));
}

#[test]
fn every_state_and_its_allowed_predecessors_match_kafka() {
    use TxnState::*;
    assert!(Ongoing.may_follow(CompleteAbort));
    assert!(!PrepareCommit.may_follow(Empty));
    assert!(
        PrepareAbort.may_follow(Empty),
        "version 2 aborts with nothing open"
    );
    assert!(!CompleteCommit.may_follow(PrepareAbort));
    assert!(Dead.may_follow(CompleteCommit));
    assert!(!Dead.may_follow(Ongoing));
    for s in TxnState::ALL {
        assert_eq!(TxnState::from_id(s.id()), Some(s));
        assert_eq!(TxnState::from_name(s.name()), Some(s));
    }
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    Init { fence: bool },
    Add(i32),
    End { commit: bool, tv2: bool },
    Markers,
    Store { ok: bool },
    Tick(i64),
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(|fence| Op::Init { fence }),
        (0..3i32).prop_map(Op::Add),
        (any::<bool>(), any::<bool>()).prop_map(|(commit, tv2)| Op::End { commit, tv2 }),
        Just(Op::Markers),
        any::<bool>().prop_map(|ok| Op::Store { ok }),
        (0..200_000i64).prop_map(Op::Tick),
        Just(Op::Reload),
    ]
}

proptest! {
    /// Whatever the order of requests, store results, marker completions, ticks and reloads:
    /// every request is answered exactly once; every stored transition is one Kafka allows;
    /// the producer epoch of one producer id never goes down; and a reload from the stored
    /// records gives the state in memory.
    #[test]
    fn random_histories_keep_the_coordinator_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let mut c = coordinator();
        let p = partition_for(ID, 4);
        let mut now = 0i64;
        let mut next_reply = 100u64;
        let mut asked: BTreeSet<u64> = BTreeSet::new();
        let mut answered: BTreeMap<u64, usize> = BTreeMap::new();
        let mut pending: Vec<(WriteId, Vec<TxnRecord>)> = Vec::new();
        let mut jobs: Vec<MarkerJob> = Vec::new();
        let mut log: Vec<TxnRecord> = Vec::new();
        let mut client = (-1i64, -1i16);
        let mut fresh = 10_000i64;
        for op in ops {
            now += 7;
            match op {
                Op::Init { fence } => {
                    next_reply += 1;
                    asked.insert(next_reply);
                    let (producer_id, producer_epoch) = if fence { (-1, -1) } else { client };
                    let req = InitRequest { transactional_id: ID.into(), timeout_ms: 1_000, producer_id, producer_epoch };
                    fresh += 1;
                    if c.init_producer_id(now, next_reply, &req, None).is_err() {
                        c.init_producer_id(now, next_reply, &req, Some(fresh)).unwrap();
                    }
                }
                Op::Add(n) => {
                    next_reply += 1;
                    asked.insert(next_reply);
                    c.add_partitions(now, next_reply, &AddPartitionsRequest {
                        transactional_id: ID.into(), producer_id: client.0, producer_epoch: client.1,
                        partitions: vec![tp("t", n)], tv2: n == 2,
                    });
                }
                Op::End { commit, tv2 } => {
                    next_reply += 1;
                    asked.insert(next_reply);
                    let req = end_req(client.0, client.1, commit, tv2);
                    fresh += 1;
                    if c.end_txn(now, next_reply, &req, None).is_err() {
                        c.end_txn(now, next_reply, &req, Some(fresh)).unwrap();
                    }
                }
                Op::Markers => {
                    if let Some(job) = jobs.pop() {
                        c.markers_written(now, &job);
                    }
                }
                Op::Store { ok } => {
                    if !pending.is_empty() {
                        let (w, records) = pending.remove(0);
                        if ok {
                            log.extend(records);
                        }
                        c.stored(now, w, if ok { Ok(()) } else { Err(StoreFailure::Other) });
                    }
                }
                Op::Tick(dt) => {
                    now += dt;
                    c.tick(now);
                }
                Op::Reload => {
                    c.unload(p);
                    pending.clear();
                    jobs.clear();
                    c.loading(p, EPOCH);
                    for r in &log {
                        c.replay(r.clone());
                    }
                    c.loaded(p);
                }
            }
            for action in c.take_actions() {
                match action {
                    TxnAction::Store { write, records, .. } => {
                        let mut prev = log.last().and_then(|r| r.value.as_ref());
                        for record in &records {
                            if let (Some(prev), Some(next)) = (prev, record.value.as_ref()) {
                                prop_assert!(next.state.may_follow(prev.state) || next.state == TxnState::Dead,
                                    "{:?} after {:?}", next.state, prev.state);
                                if next.producer_id == prev.producer_id {
                                    prop_assert!(next.producer_epoch >= prev.producer_epoch);
                                }
                            }
                            prev = record.value.as_ref();
                        }
                        pending.push((write, records));
                    }
                    TxnAction::Reply(r, a) => {
                        *answered.entry(r).or_default() += 1;
                        if a.error.is_none() {
                            client = (a.producer_id, a.producer_epoch);
                        }
                    }
                    TxnAction::Markers(job) => jobs.push(job),
                }
            }
            // A store the test holds stands for one still in flight: the log the coordinator
            // would reload is `log` (stored ones), never what is still pending.
        }
        // Resolve everything still in flight: stores, then markers (an add waiting for them
        // is answered with the Complete record's store), until nothing is left.
        while !pending.is_empty() || !jobs.is_empty() {
            for (w, records) in std::mem::take(&mut pending) {
                log.extend(records);
                c.stored(now, w, Ok(()));
            }
            for job in std::mem::take(&mut jobs) {
                c.markers_written(now, &job);
            }
            for action in c.take_actions() {
                match action {
                    TxnAction::Store { write, records, .. } => pending.push((write, records)),
                    TxnAction::Reply(r, _) => *answered.entry(r).or_default() += 1,
                    TxnAction::Markers(job) => jobs.push(job),
                }
            }
        }
        for r in &asked {
            prop_assert!(answered.get(r) == Some(&1), "request {} answered {:?} times", r, answered.get(r));
        }
        // Memory matches a reload of the log.
        let before = c.describe(ID);
        let mut reloaded = TxnCoordinator::new(settings());
        reloaded.loading(p, EPOCH);
        for r in &log {
            reloaded.replay(r.clone());
        }
        reloaded.loaded(p);
        prop_assert_eq!(before, reloaded.describe(ID));
    }
}
