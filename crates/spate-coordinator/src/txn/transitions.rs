//! The transitions of one transactional id's metadata, as pure functions: what a request
//! or a timeout makes of the stored state (the core decides when each applies and stores it).

use super::messages::{
    AddPartitionsRequest, MarkerJob, NeedProducerId, TxnDescription, TxnError, TXN_PARTITIONS_MAX,
};
use super::state::{TxnMetadata, TxnState, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};

pub(super) fn describe(id: &str, m: &TxnMetadata) -> TxnDescription {
    TxnDescription {
        transactional_id: id.to_owned(),
        state: m.state,
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        timeout_ms: m.timeout_ms,
        start_ms: m.start_ms,
        partitions: m.partitions.iter().cloned().collect(),
    }
}

/// The PrepareCommit / PrepareAbort that ends `m`'s transaction (Kafka's
/// `prepareAbortOrCommit`). Version 2 bumps the epoch; once that leaves no epoch to hand out,
/// the producer moves to `fresh` at Complete.
pub(super) fn prepare_end(
    m: &TxnMetadata,
    commit: bool,
    now: i64,
    fresh: Option<i64>,
) -> Result<TxnMetadata, NeedProducerId> {
    let mut next = m.clone();
    next.state = if commit {
        TxnState::PrepareCommit
    } else {
        TxnState::PrepareAbort
    };
    if m.uses_epoch_bump() {
        next.producer_epoch = m.producer_epoch.saturating_add(1);
        next.last_producer_epoch = m.producer_epoch;
        if TxnMetadata::epoch_exhausted(m.producer_epoch) {
            next.next_producer_id = fresh.ok_or(NeedProducerId)?;
        }
    }
    if m.partitions.is_empty() {
        // Version 2 may abort with no partition added: the start is now.
        next.start_ms = now;
    }
    next.last_update_ms = now;
    Ok(next)
}

/// The PrepareAbort that fences an Ongoing transaction's producer (InitProducerId from a
/// new producer, or the transaction timed out): the epoch is bumped first (Kafka's
/// PrepareEpochFence, never stored), then as any abort of the client's version.
pub(super) fn fenced_abort(
    m: &TxnMetadata,
    now: i64,
    fresh: Option<i64>,
) -> Result<TxnMetadata, NeedProducerId> {
    let mut fenced = m.clone();
    fenced.producer_epoch = fenced.producer_epoch.saturating_add(1);
    fenced.last_producer_epoch = NO_PRODUCER_EPOCH;
    prepare_end(&fenced, false, now, fresh)
}

/// The Ongoing state `m` moves to when `req` adds partitions, or `None` when they are all in
/// its ongoing transaction already. `m` is the producer's (its id and epoch were checked).
pub(super) fn added(
    m: &TxnMetadata,
    req: &AddPartitionsRequest,
    now: i64,
) -> Result<Option<TxnMetadata>, TxnError> {
    if !m.state.is_idle() && m.state != TxnState::Ongoing {
        return Err(TxnError::InvalidTxnState);
    }
    if m.partitions.len() + req.partitions.len() > TXN_PARTITIONS_MAX {
        return Err(TxnError::InvalidRequest);
    }
    if m.state == TxnState::Ongoing && req.partitions.iter().all(|p| m.partitions.contains(p)) {
        return Ok(None);
    }
    let mut next = m.clone();
    if m.state.is_idle() {
        next.start_ms = now;
    }
    next.state = TxnState::Ongoing;
    next.partitions.extend(req.partitions.iter().cloned());
    next.last_update_ms = now;
    next.client_version = if req.tv2 { 2 } else { 0 };
    Ok(Some(next))
}

/// The producer id and epoch a client continues with after its EndTxn.
pub(super) fn client_visible(m: &TxnMetadata) -> (i64, i16) {
    if m.uses_epoch_bump() && m.next_producer_id != NO_PRODUCER_ID {
        (m.next_producer_id, 0)
    } else {
        (m.producer_id, m.producer_epoch)
    }
}

/// The markers a Prepare state needs, if it is one.
pub(super) fn marker_job(id: &str, m: &TxnMetadata, coordinator_epoch: i32) -> Option<MarkerJob> {
    let commit = match m.state {
        TxnState::PrepareCommit => true,
        TxnState::PrepareAbort => false,
        _ => return None,
    };
    Some(MarkerJob {
        transactional_id: id.to_owned(),
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        commit,
        coordinator_epoch,
        partitions: m.partitions.iter().cloned().collect(),
    })
}
