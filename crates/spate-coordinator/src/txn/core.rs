//! The transaction coordinator core: Kafka's transaction state machine without I/O.
//!
//! Every call takes `now_ms`. Each request carries a [`ReplyId`] and is answered exactly once
//! through a [`TxnAction::Reply`]; records to store and markers to write come out as actions
//! too, drained with [`TxnCoordinator::take_actions`]. The runtime stores a record, waits until
//! it is durable on every in-sync replica of its `__transaction_state` partition, and calls
//! [`TxnCoordinator::stored`]; only then does the transition take effect in memory, so what a
//! client is told always survives a coordinator failover. It writes the markers of a
//! [`MarkerJob`] to every partition of the transaction, retrying until each is written, and
//! calls [`TxnCoordinator::markers_written`].
//!
//! One transition per transactional id is in flight at a time (`pending`); a request that
//! would need another gets CONCURRENT_TRANSACTIONS, which clients retry.
//!
//! The flows, as in Kafka's `TransactionCoordinator`:
//! - InitProducerId: a new id gets a fresh producer id at epoch 0; an idle one gets its epoch
//!   bumped (a new producer id once the epoch is exhausted), fencing the previous producer.
//!   An open transaction is first aborted with a bumped epoch (CONCURRENT_TRANSACTIONS; the
//!   client retries and gets the next epoch).
//! - AddPartitionsToTxn / AddOffsetsToTxn: Ongoing, with the partitions added.
//! - EndTxn: PrepareCommit / PrepareAbort is stored, the client answered, markers written,
//!   then CompleteCommit / CompleteAbort stored. With transaction version 2 (KIP-890) every
//!   EndTxn bumps the epoch, so a late write of the previous transaction is fenced by the
//!   partitions, and an abort may come with no transaction open.
//! - A transaction open longer than its timeout is aborted with a bumped epoch; an idle id
//!   not used for `transactional.id.expiration.ms` is removed (a tombstone is stored).
//! - Loading a partition: the replayed ids in PrepareCommit / PrepareAbort get their markers
//!   written again (markers are idempotent), then complete.

use super::messages::{
    AddPartitionsRequest, EndRequest, InitRequest, MarkerJob, NeedProducerId, StoreFailure,
    TxnAction, TxnAnswer, TxnDescription, TxnError, TxnSettings, WriteId,
    TRANSACTIONAL_ID_BYTES_MAX,
};
use super::records::TxnRecord;
use super::state::{TxnMetadata, TxnPartition, TxnState, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};
use super::transitions::{added, client_visible, describe, fenced_abort, marker_job, prepare_end};
use crate::core::ReplyId;
use crate::records::partition_for;
use std::collections::{BTreeMap, BTreeSet};

/// What happens once a pending record is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Then {
    /// Answer with the stored producer id and epoch.
    Answer,
    /// Answer CONCURRENT_TRANSACTIONS (an InitProducerId that had to abort first), then
    /// write the abort markers.
    AbortThenRetry,
    /// Answer (EndTxn), then write the markers.
    Markers,
    /// The transaction completed; nothing to answer.
    Completed,
    /// The id expired: forget it.
    Remove,
}

#[derive(Clone, Debug)]
struct Pending {
    write: WriteId,
    next: TxnMetadata,
    reply: Option<ReplyId>,
    then: Then,
}

#[derive(Clone, Debug)]
struct Entry {
    metadata: TxnMetadata,
    pending: Option<Pending>,
    /// The markers of the Prepare state were written; its Complete record is due.
    markers_done: bool,
    /// The producer's next AddPartitionsToTxn (or AddOffsetsToTxn), come while the markers of
    /// the ending transaction were being written: it is answered once its Ongoing record is
    /// stored in the same batch as the Complete one, one replication round trip instead of two.
    next_add: Option<(ReplyId, AddPartitionsRequest)>,
}

/// The transactional ids of the `__transaction_state` partitions this node leads.
#[derive(Debug)]
pub struct TxnCoordinator {
    settings: TxnSettings,
    /// Partitions led here, with their coordinator (leader) epoch and whether they are loaded.
    partitions: BTreeMap<i32, (i32, bool)>,
    txns: BTreeMap<String, Entry>,
    /// The id each record being stored is for.
    writes: BTreeMap<WriteId, String>,
    next_write: WriteId,
    actions: Vec<TxnAction>,
}

impl TxnCoordinator {
    pub fn new(settings: TxnSettings) -> TxnCoordinator {
        TxnCoordinator {
            settings,
            partitions: BTreeMap::new(),
            txns: BTreeMap::new(),
            writes: BTreeMap::new(),
            next_write: 0,
            actions: Vec::new(),
        }
    }

    pub fn settings(&self) -> &TxnSettings {
        &self.settings
    }

    pub fn take_actions(&mut self) -> Vec<TxnAction> {
        std::mem::take(&mut self.actions)
    }

    /// The `__transaction_state` partition of a transactional id (Kafka's hash).
    pub fn partition_of(&self, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.settings.partition_count)
    }

    /// Whether requests for this id may be served here now.
    pub fn check(&self, transactional_id: &str) -> Result<(), TxnError> {
        match self.partitions.get(&self.partition_of(transactional_id)) {
            None => Err(TxnError::NotCoordinator),
            Some((_, false)) => Err(TxnError::CoordinatorLoadInProgress),
            Some((_, true)) => Ok(()),
        }
    }

    /// This node now leads `partition` at `coordinator_epoch`; its records are being replayed
    /// with [`TxnCoordinator::replay`] and requests for its ids wait for [`TxnCoordinator::loaded`].
    pub fn loading(&mut self, partition: i32, coordinator_epoch: i32) {
        self.unload(partition);
        self.partitions
            .insert(partition, (coordinator_epoch, false));
    }

    /// Applies one record of a partition being loaded (log order; the last value wins).
    pub fn replay(&mut self, record: TxnRecord) {
        match record.value {
            Some(metadata) => {
                self.txns.insert(
                    record.transactional_id,
                    Entry {
                        metadata,
                        pending: None,
                        markers_done: false,
                        next_add: None,
                    },
                );
            }
            None => {
                self.txns.remove(&record.transactional_id);
            }
        }
    }

    /// The partition's records are all replayed: serve its ids, and finish the transactions
    /// a previous coordinator left between Prepare and Complete.
    pub fn loaded(&mut self, partition: i32) {
        let Some((epoch, ready)) = self.partitions.get_mut(&partition) else {
            return;
        };
        *ready = true;
        let epoch = *epoch;
        let count = self.settings.partition_count;
        for (id, entry) in &self.txns {
            if partition_for(id, count) != partition {
                continue;
            }
            if let Some(job) = marker_job(id, &entry.metadata, epoch) {
                self.actions.push(TxnAction::Markers(job));
            }
        }
    }

    /// This node no longer leads `partition`: forget its ids, answering what waits on them
    /// NOT_COORDINATOR. Records being stored for them are ignored when they complete.
    pub fn unload(&mut self, partition: i32) {
        if self.partitions.remove(&partition).is_none() {
            return;
        }
        let count = self.settings.partition_count;
        let gone: Vec<String> = self
            .txns
            .keys()
            .filter(|id| partition_for(id, count) == partition)
            .cloned()
            .collect();
        self.writes
            .retain(|_, id| partition_for(id, count) != partition);
        for id in gone {
            let Some(entry) = self.txns.remove(&id) else {
                continue;
            };
            let waiting = entry.pending.and_then(|p| p.reply);
            for r in waiting.into_iter().chain(entry.next_add.map(|(r, _)| r)) {
                self.reply(r, TxnAnswer::error(TxnError::NotCoordinator));
            }
        }
    }

    /// The partitions led here, loaded or not.
    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    fn reply(&mut self, reply: ReplyId, answer: TxnAnswer) {
        self.actions.push(TxnAction::Reply(reply, answer));
    }

    fn validate_id(&self, id: &str) -> Result<(), TxnError> {
        if id.is_empty() || id.len() > TRANSACTIONAL_ID_BYTES_MAX {
            return Err(TxnError::InvalidRequest);
        }
        self.check(id)
    }

    /// Queues `next` to be stored for `id`, answering `reply` (if any) once it is.
    fn store(&mut self, id: &str, next: TxnMetadata, reply: Option<ReplyId>, then: Then) {
        self.store_after(id, None, next, reply, then);
    }

    /// As [`TxnCoordinator::store`], with `before` stored ahead of `next` in the same batch
    /// (both durable or neither): a Complete record and the next transaction's Ongoing one.
    fn store_after(
        &mut self,
        id: &str,
        before: Option<TxnMetadata>,
        next: TxnMetadata,
        reply: Option<ReplyId>,
        then: Then,
    ) {
        self.next_write += 1;
        let write = self.next_write;
        let partition = self.partition_of(id);
        let value = (then != Then::Remove).then(|| next.clone());
        let record = |value| TxnRecord {
            transactional_id: id.to_owned(),
            value,
        };
        let records = before
            .map(|b| record(Some(b)))
            .into_iter()
            .chain([record(value)])
            .collect();
        self.writes.insert(write, id.to_owned());
        if let Some(entry) = self.txns.get_mut(id) {
            entry.pending = Some(Pending {
                write,
                next,
                reply,
                then,
            });
        }
        self.actions.push(TxnAction::Store {
            write,
            partition,
            records,
        });
    }

    /// InitProducerId with a transactional id. `fresh` is a newly allocated producer id, needed
    /// only for an id seen for the first time or one whose epochs are exhausted: without it,
    /// such a request returns [`NeedProducerId`] and nothing else happens.
    pub fn init_producer_id(
        &mut self,
        now: i64,
        reply: ReplyId,
        req: &InitRequest,
        fresh: Option<i64>,
    ) -> Result<(), NeedProducerId> {
        let id = req.transactional_id.as_str();
        if let Err(e) = self.validate_id(id) {
            self.reply(reply, TxnAnswer::error(e));
            return Ok(());
        }
        if req.timeout_ms <= 0 || req.timeout_ms > self.settings.max_timeout_ms {
            self.reply(reply, TxnAnswer::error(TxnError::InvalidTransactionTimeout));
            return Ok(());
        }
        // KIP-360: a producer id and epoch come together or not at all.
        let expected = match (req.producer_id, req.producer_epoch) {
            (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => None,
            (NO_PRODUCER_ID, _) | (_, NO_PRODUCER_EPOCH) => {
                self.reply(reply, TxnAnswer::error(TxnError::InvalidRequest));
                return Ok(());
            }
            (pid, epoch) => Some((pid, epoch)),
        };
        if !self.txns.contains_key(id) {
            let Some(fresh) = fresh else {
                return Err(NeedProducerId);
            };
            self.txns.insert(
                id.to_owned(),
                Entry {
                    metadata: TxnMetadata::new(fresh, req.timeout_ms, now),
                    pending: None,
                    markers_done: false,
                    next_add: None,
                },
            );
        }
        let Some(entry) = self.txns.get(id) else {
            return Ok(());
        };
        let m = &entry.metadata;
        if entry.pending.is_some() {
            self.reply(reply, TxnAnswer::error(TxnError::ConcurrentTransactions));
            return Ok(());
        }
        // KIP-360: a producer naming the id and epoch it holds may continue; one naming an
        // older producer is fenced. A just-created id (epoch -1) accepts any.
        if let Some((pid, epoch)) = expected {
            let valid = m.producer_epoch == NO_PRODUCER_EPOCH
                || pid == m.producer_id
                || (pid == m.prev_producer_id && TxnMetadata::epoch_exhausted(epoch));
            if !valid {
                self.reply(reply, TxnAnswer::error(TxnError::ProducerFenced));
                return Ok(());
            }
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                self.reply(reply, TxnAnswer::error(TxnError::ConcurrentTransactions));
                Ok(())
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let rotate = TxnMetadata::epoch_exhausted(m.producer_epoch)
                    && expected.is_none_or(|(_, e)| e == m.producer_epoch);
                let mut next = m.clone();
                if rotate {
                    let Some(fresh) = fresh else {
                        return Err(NeedProducerId);
                    };
                    next.prev_producer_id = m.producer_id;
                    next.producer_id = fresh;
                    next.producer_epoch = 0;
                    next.last_producer_epoch = if expected.is_some() {
                        m.producer_epoch
                    } else {
                        NO_PRODUCER_EPOCH
                    };
                } else {
                    let bumped = m.producer_epoch + 1;
                    match expected {
                        None => {
                            next.producer_epoch = bumped;
                            next.last_producer_epoch = NO_PRODUCER_EPOCH;
                        }
                        Some((_, e))
                            if m.producer_epoch == NO_PRODUCER_EPOCH || e == m.producer_epoch =>
                        {
                            next.producer_epoch = bumped;
                            next.last_producer_epoch = m.producer_epoch;
                        }
                        // A retry of a bump whose answer was lost: answer the same epoch.
                        Some((_, e)) if e == m.last_producer_epoch => {}
                        Some(_) => {
                            self.reply(reply, TxnAnswer::error(TxnError::ProducerFenced));
                            return Ok(());
                        }
                    }
                }
                next.state = TxnState::Empty;
                next.timeout_ms = req.timeout_ms;
                next.partitions.clear();
                next.start_ms = -1;
                next.last_update_ms = now;
                self.store(id, next, Some(reply), Then::Answer);
                Ok(())
            }
            TxnState::Ongoing => {
                // Fence the current producer and abort its transaction; the client retries.
                let next = fenced_abort(m, now, fresh)?;
                self.store(id, next, Some(reply), Then::AbortThenRetry);
                Ok(())
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                // Never stored, and never left in memory without a pending write.
                self.reply(reply, TxnAnswer::error(TxnError::ConcurrentTransactions));
                Ok(())
            }
        }
    }

    /// AddPartitionsToTxn (client form, or a partition leader adding a partition for a
    /// version 2 client) and AddOffsetsToTxn (the group's offsets partition). One for the
    /// producer's next transaction, come while the markers of its previous one are being
    /// written, waits for them and is stored with the Complete record.
    pub fn add_partitions(&mut self, now: i64, reply: ReplyId, req: &AddPartitionsRequest) {
        let id = req.transactional_id.as_str();
        let checked = self.validate_id(id).and_then(|()| {
            let entry = self
                .txns
                .get(id)
                .ok_or(TxnError::InvalidProducerIdMapping)?;
            let m = &entry.metadata;
            let ending = matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort);
            // While a transaction ends, its producer continues with the id and epoch its
            // EndTxn was answered with (version 2 bumps them at Prepare).
            let (pid, epoch) = if ending {
                client_visible(m)
            } else {
                (m.producer_id, m.producer_epoch)
            };
            if pid != req.producer_id {
                return Err(TxnError::InvalidProducerIdMapping);
            }
            if epoch != req.producer_epoch {
                return Err(TxnError::ProducerFenced);
            }
            if entry.pending.is_some() {
                return Err(TxnError::ConcurrentTransactions);
            }
            Ok((ending, entry.markers_done))
        });
        let (ending, markers_done) = match checked {
            Ok(c) => c,
            Err(e) => return self.reply(reply, TxnAnswer::error(e)),
        };
        if ending {
            let Some(entry) = self.txns.get_mut(id) else {
                return;
            };
            // One waits; another (a version 2 producer's leaders each adding their partition,
            // or a client retrying one it gave up on) is told to retry, and the task asks
            // again once the records settle.
            if entry.next_add.is_some() {
                return self.reply(reply, TxnAnswer::error(TxnError::ConcurrentTransactions));
            }
            entry.next_add = Some((reply, req.clone()));
            if markers_done {
                // The Complete record failed to store and waits for a retry: retry now.
                self.complete(now, id);
            }
            return;
        }
        let Some(m) = self.txns.get(id).map(|e| e.metadata.clone()) else {
            return;
        };
        match added(&m, req, now) {
            Err(e) => self.reply(reply, TxnAnswer::error(e)),
            Ok(None) => self.reply(reply, TxnAnswer::ok(m.producer_id, m.producer_epoch)),
            Ok(Some(next)) => self.store(id, next, Some(reply), Then::Answer),
        }
    }

    /// Whether an add for `transactional_id`'s next transaction waits for its markers.
    pub fn add_waiting(&self, transactional_id: &str) -> bool {
        self.txns
            .get(transactional_id)
            .is_some_and(|e| e.next_add.is_some())
    }

    /// KIP-890 part 1: whether each partition is in the producer's ongoing transaction (a
    /// partition leader asks before it writes a producer's first transactional batch).
    pub fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<Vec<Option<TxnError>>, TxnError> {
        self.validate_id(transactional_id)?;
        let entry = self
            .txns
            .get(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        let m = &entry.metadata;
        if m.producer_id != producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if m.producer_epoch != producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        // A record being stored that only adds partitions to the ongoing transaction (the
        // producer registering the next partitions while it writes to the first) leaves the
        // durable answer for the partitions already added: refusing those made every such
        // produce wait out librdkafka's 100 ms retry backoff. Any other transition in flight
        // (an end, a fence) settles first.
        let adding = entry.pending.as_ref().map(|p| {
            (p.next.state == TxnState::Ongoing
                && p.next.producer_id == m.producer_id
                && p.next.producer_epoch == m.producer_epoch)
                .then_some(&p.next.partitions)
        });
        if matches!(adding, Some(None))
            || matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
        {
            return Err(TxnError::ConcurrentTransactions);
        }
        Ok(partitions
            .iter()
            .map(|p| {
                if m.state == TxnState::Ongoing && m.partitions.contains(p) {
                    None
                } else if adding.flatten().is_some_and(|next| next.contains(p)) {
                    // Its AddPartitionsToTxn is not answered yet.
                    Some(TxnError::ConcurrentTransactions)
                } else {
                    Some(TxnError::InvalidTxnState)
                }
            })
            .collect())
    }

    /// EndTxn. `fresh` as for [`TxnCoordinator::init_producer_id`]: a version 2 client whose
    /// epoch would be exhausted by the bump moves to a new producer id.
    pub fn end_txn(
        &mut self,
        now: i64,
        reply: ReplyId,
        req: &EndRequest,
        fresh: Option<i64>,
    ) -> Result<(), NeedProducerId> {
        let id = req.transactional_id.as_str();
        let entry = match self
            .validate_id(id)
            .and_then(|()| self.txns.get(id).ok_or(TxnError::InvalidProducerIdMapping))
        {
            Ok(entry) => entry,
            Err(e) => {
                self.reply(reply, TxnAnswer::error(e));
                return Ok(());
            }
        };
        let m = &entry.metadata;
        // Version 2: a retry of an EndTxn whose answer was lost comes with the epoch (or the
        // producer id) from before its bump.
        let retry = req.tv2
            && ((req.producer_id == m.producer_id && req.producer_epoch + 1 == m.producer_epoch)
                || (req.producer_id == m.prev_producer_id
                    && m.producer_id != m.prev_producer_id
                    && TxnMetadata::epoch_exhausted(req.producer_epoch)));
        let (visible_pid, visible_epoch) = (m.producer_id, m.producer_epoch);
        let refuse = if req.producer_id != m.producer_id && !retry {
            Some(TxnError::InvalidProducerIdMapping)
        } else if req.producer_epoch != m.producer_epoch && !retry {
            Some(TxnError::ProducerFenced)
        } else if entry.pending.is_some() {
            Some(TxnError::ConcurrentTransactions)
        } else {
            None
        };
        if let Some(e) = refuse {
            self.reply(reply, TxnAnswer::error(e));
            return Ok(());
        }
        use TxnState::*;
        let start_abort = match (m.state, req.commit) {
            (Ongoing, _) if !retry => true,
            (CompleteCommit, true) | (CompleteAbort, false) if retry || !req.tv2 => {
                self.reply(reply, TxnAnswer::ok(visible_pid, visible_epoch));
                return Ok(());
            }
            (PrepareCommit, true) | (PrepareAbort, false) => {
                self.reply(reply, TxnAnswer::error(TxnError::ConcurrentTransactions));
                return Ok(());
            }
            // Version 2: an abort with no transaction open is allowed (and bumps the epoch).
            (Empty | CompleteCommit | CompleteAbort, false) if req.tv2 && !retry => true,
            _ => false,
        };
        if !start_abort {
            self.reply(reply, TxnAnswer::error(TxnError::InvalidTxnState));
            return Ok(());
        }
        let mut current = m.clone();
        current.client_version = if req.tv2 { 2 } else { 0 };
        let next = prepare_end(&current, req.commit, now, fresh)?;
        self.store(id, next, Some(reply), Then::Markers);
        Ok(())
    }

    /// A record queued by [`TxnAction::Store`] is durable (`Ok`) or will not be.
    pub fn stored(&mut self, now: i64, write: WriteId, result: Result<(), StoreFailure>) {
        // A write of an unloaded partition, or one already answered, is forgotten.
        let Some(id) = self.writes.remove(&write) else {
            return;
        };
        let Some(entry) = self
            .txns
            .get_mut(&id)
            .filter(|e| e.pending.as_ref().is_some_and(|p| p.write == write))
        else {
            return;
        };
        let Some(pending) = entry.pending.take() else {
            return;
        };
        if let Err(failure) = result {
            let e = match failure {
                StoreFailure::NotLeader => TxnError::NotCoordinator,
                StoreFailure::Other => TxnError::CoordinatorNotAvailable,
            };
            if let Some(r) = pending.reply {
                self.reply(r, TxnAnswer::error(e));
            }
            return;
        }
        entry.metadata = pending.next;
        entry.markers_done = false;
        let m = entry.metadata.clone();
        let epoch = self
            .partitions
            .get(&self.partition_of(&id))
            .map_or(-1, |(e, _)| *e);
        match pending.then {
            Then::Answer => {
                if let Some(r) = pending.reply {
                    self.reply(r, TxnAnswer::ok(m.producer_id, m.producer_epoch));
                }
            }
            Then::AbortThenRetry | Then::Markers => {
                if let Some(r) = pending.reply {
                    let answer = if pending.then == Then::AbortThenRetry {
                        TxnAnswer::error(TxnError::ConcurrentTransactions)
                    } else {
                        let (pid, epoch) = client_visible(&m);
                        TxnAnswer::ok(pid, epoch)
                    };
                    self.reply(r, answer);
                }
                if let Some(job) = marker_job(&id, &m, epoch) {
                    if job.partitions.is_empty() {
                        // Nothing to mark (a version 2 abort with no transaction open): the
                        // markers are done, so a Complete whose store fails is retried.
                        if let Some(entry) = self.txns.get_mut(&id) {
                            entry.markers_done = true;
                        }
                        self.complete(now, &id);
                    } else {
                        self.actions.push(TxnAction::Markers(job));
                    }
                }
            }
            Then::Completed => {}
            Then::Remove => {
                self.txns.remove(&id);
            }
        }
    }

    /// The markers of `job` are written on every partition: store the Complete state.
    pub fn markers_written(&mut self, now: i64, job: &MarkerJob) {
        let Some(entry) = self.txns.get_mut(&job.transactional_id) else {
            return;
        };
        let m = &entry.metadata;
        let preparing = if job.commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        if m.state != preparing
            || m.producer_id != job.producer_id
            || m.producer_epoch != job.producer_epoch
        {
            return;
        }
        entry.markers_done = true;
        if entry.pending.is_none() {
            self.complete(now, &job.transactional_id);
        }
    }

    fn complete(&mut self, now: i64, id: &str) {
        let Some(entry) = self.txns.get(id) else {
            return;
        };
        let m = &entry.metadata;
        let mut next = m.clone();
        next.state = match m.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            _ => return,
        };
        if m.uses_epoch_bump() && m.next_producer_id != NO_PRODUCER_ID {
            next.prev_producer_id = m.producer_id;
            next.producer_id = m.next_producer_id;
            next.producer_epoch = 0;
        }
        next.next_producer_id = NO_PRODUCER_ID;
        next.partitions.clear();
        next.last_update_ms = now;
        let Some((reply, req)) = self.txns.get_mut(id).and_then(|e| e.next_add.take()) else {
            self.store(id, next, None, Then::Completed);
            return;
        };
        let checked =
            if (req.producer_id, req.producer_epoch) == (next.producer_id, next.producer_epoch) {
                added(&next, &req, now)
            } else {
                Err(TxnError::ProducerFenced)
            };
        match checked {
            Ok(Some(ongoing)) => {
                self.store_after(id, Some(next), ongoing, Some(reply), Then::Answer);
            }
            // From a Complete state every add starts a transaction: `None` does not come.
            Ok(None) => self.store(id, next, Some(reply), Then::Answer),
            Err(e) => {
                self.reply(reply, TxnAnswer::error(e));
                self.store(id, next, None, Then::Completed);
            }
        }
    }

    /// Time passed: abort transactions open longer than their timeout, retry Complete records
    /// that failed to store, and remove ids idle longer than `transactional.id.expiration.ms`.
    /// Returns the ids whose timed-out transactions are being aborted.
    pub fn tick(&mut self, now: i64) -> Vec<String> {
        let mut timed_out = Vec::new();
        let mut complete = Vec::new();
        let mut expired = Vec::new();
        for (id, entry) in &self.txns {
            if entry.pending.is_some() || self.check(id).is_err() {
                continue;
            }
            let m = &entry.metadata;
            match m.state {
                TxnState::Ongoing if m.start_ms.saturating_add(i64::from(m.timeout_ms)) < now => {
                    timed_out.push(id.clone())
                }
                TxnState::PrepareCommit | TxnState::PrepareAbort if entry.markers_done => {
                    complete.push(id.clone())
                }
                s if s.is_idle()
                    && m.last_update_ms
                        .saturating_add(self.settings.id_expiration_ms)
                        < now =>
                {
                    expired.push(id.clone())
                }
                _ => {}
            }
        }
        for id in &complete {
            self.complete(now, id);
        }
        let mut aborting = Vec::new();
        for id in timed_out {
            let Some(m) = self.txns.get(&id).map(|e| e.metadata.clone()) else {
                continue;
            };
            // No producer id can be allocated here: a version 2 producer whose epochs the
            // fence exhausts is aborted without the second bump (the fence's is enough).
            let next = fenced_abort(&m, now, None).or_else(|NeedProducerId| {
                let mut v0 = m.clone();
                v0.client_version = 0;
                fenced_abort(&v0, now, None)
            });
            let Ok(next) = next else { continue };
            self.store(&id, next, None, Then::Markers);
            aborting.push(id);
        }
        for id in expired {
            if let Some(m) = self.txns.get(&id).map(|e| e.metadata.clone()) {
                let mut dead = m;
                dead.state = TxnState::Dead;
                self.store(&id, dead, None, Then::Remove);
            }
        }
        aborting
    }

    /// DescribeTransactions for one id.
    pub fn describe(&self, transactional_id: &str) -> Result<TxnDescription, TxnError> {
        if transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest);
        }
        self.check(transactional_id)?;
        let entry = self
            .txns
            .get(transactional_id)
            .filter(|e| e.metadata.state != TxnState::Dead && e.metadata.producer_epoch >= 0)
            .ok_or(TxnError::TransactionalIdNotFound)?;
        Ok(describe(transactional_id, &entry.metadata))
    }

    /// ListTransactions: the ids of loaded partitions, filtered by producer id and state (an
    /// empty filter matches all) and by how long their transaction has run (`-1`: any).
    pub fn list(
        &self,
        now: i64,
        producer_ids: &BTreeSet<i64>,
        states: &BTreeSet<TxnState>,
        min_duration_ms: i64,
    ) -> Vec<TxnDescription> {
        self.txns
            .iter()
            .filter(|(id, _)| self.check(id).is_ok())
            .map(|(id, e)| (id, &e.metadata))
            .filter(|(_, m)| m.producer_epoch >= 0 && m.state != TxnState::Dead)
            .filter(|(_, m)| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .filter(|(_, m)| states.is_empty() || states.contains(&m.state))
            .filter(|(_, m)| {
                min_duration_ms < 0 || (m.start_ms >= 0 && now - m.start_ms >= min_duration_ms)
            })
            .map(|(id, m)| describe(id, m))
            .collect()
    }
}
