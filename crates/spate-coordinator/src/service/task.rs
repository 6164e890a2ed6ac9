//! The coordinator task's loop: commands in, the core's actions out, group records stored.

use super::replay::{replay, Replayed};
use super::store::store;
use super::{Command, CommitOutcome, Ownership, TxnProducer};
use crate::core::{
    Action, CommitRequest, GroupCoordinator, JoinResponse, ReplyId, Stored, SyncResponse,
};
use crate::error::GroupError;
use crate::records::{partition_for, OffsetsRecord};
use spate_replica::{Partition, ReplicaError};
use spate_types::{Clock, Offset};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

enum Waiting {
    Join(oneshot::Sender<JoinResponse>),
    /// The group, and where to answer.
    Sync(String, oneshot::Sender<SyncResponse>),
}

/// Where a group's state as this node knows it ends in its offsets partition: the last record
/// to be durable before a SyncGroup hands out an assignment.
pub(super) type DurableAt = (Arc<Partition>, Offset);

pub(super) async fn run(
    mut core: GroupCoordinator,
    ownership: Arc<RwLock<Ownership>>,
    mut rx: mpsc::Receiver<Command>,
    retention_check: Duration,
    mut shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let mut waiting: BTreeMap<ReplyId, Waiting> = BTreeMap::new();
    let mut next_reply: ReplyId = 0;
    let count = ownership.read().map(|o| o.count).unwrap_or(0);
    let mut partitions: BTreeMap<i32, Arc<Partition>> = BTreeMap::new();
    // Per group, its last group record written here; per partition, its log as loaded.
    let mut group_records: BTreeMap<String, DurableAt> = BTreeMap::new();
    let mut loaded_at: BTreeMap<i32, DurableAt> = BTreeMap::new();
    let check = |group: &str| -> Result<(), GroupError> {
        ownership
            .read()
            .map_err(|_| GroupError::CoordinatorNotAvailable)?
            .check(group)
    };
    let mut retention = tokio::time::interval(retention_check.max(Duration::from_millis(10)));
    retention.tick().await;
    loop {
        let sleep_ms = core
            .next_deadline()
            .map(|d| (d - clock.now_ms()).clamp(0, 60_000))
            .unwrap_or(60_000);
        // Biased (deterministic under simulation): the shutdown, which ends the loop; then the
        // timers, ready once per period (a late retention interval catches up by a finite
        // burst); then the commands, which can arrive back to back and would starve the
        // timers if polled first.
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64 + 1)) => core.tick(clock.now_ms()),
            _ = retention.tick() => {
                let expired = core.expire_offsets(clock.now_ms());
                if expired > 0 {
                    tracing::info!(expired, "expired committed offsets (offsets.retention.minutes)");
                }
            }
            command = rx.recv() => {
                let Some(command) = command else { break };
                let now = clock.now_ms();
                // Deadlines that passed before the timer fired take effect first, as
                // Kafka's timers would have: for the group asked about, or for all groups
                // before a query across them.
                match command.group() {
                    Some(group) => core.tick_group(now, group),
                    None if matches!(command, Command::Query(_)) => core.tick(now),
                    None => {}
                }
                match command {
                    Command::Join(req, tx) => match check(&req.group_id) {
                        Ok(()) => {
                            next_reply += 1;
                            waiting.insert(next_reply, Waiting::Join(tx));
                            core.join(now, next_reply, req);
                        }
                        Err(e) => {
                            let _ = tx.send(JoinResponse {
                                error: Some(e),
                                generation_id: -1,
                                member_id: req.member_id,
                                ..Default::default()
                            });
                        }
                    },
                    Command::Sync(req, tx) => match check(&req.group_id) {
                        Ok(()) => {
                            next_reply += 1;
                            waiting.insert(next_reply, Waiting::Sync(req.group_id.clone(), tx));
                            core.sync(now, next_reply, req);
                        }
                        Err(e) => {
                            let _ = tx.send(SyncResponse {
                                error: Some(e),
                                ..Default::default()
                            });
                        }
                    },
                    Command::Commit(req, tx) => {
                        let outcome = match check(&req.group_id) {
                            Ok(()) => commit(&mut core, &partitions, count, now, req, None),
                            Err(e) => CommitOutcome { results: Err(e), durable: None },
                        };
                        let _ = tx.send(outcome);
                    }
                    Command::TxnCommit(req, producer, tx) => {
                        let outcome = match check(&req.group_id) {
                            Ok(()) => commit(&mut core, &partitions, count, now, req, Some(producer)),
                            Err(e) => CommitOutcome { results: Err(e), durable: None },
                        };
                        let _ = tx.send(outcome);
                    }
                    Command::Query(f) => f(&mut core, now),
                    Command::GroupQuery(group, f, refused) => match check(&group) {
                        Ok(()) => {
                            // Readable once the log as loaded here is durable: what a replay
                            // found past the high watermark a failover could take back.
                            let index = partition_for(&group, count);
                            let readable_at = partitions
                                .get(&index)
                                .map(|p| p.high_watermark().0)
                                .filter(|hw| {
                                    loaded_at.get(&index).is_none_or(|(_, last)| *hw > last.0)
                                });
                            f(&mut core, now, readable_at)
                        }
                        Err(e) => {
                            let _ = refused.send(e);
                        }
                    },
                    Command::Own(wanted) => {
                        own(&mut core, &ownership, &mut partitions, count, wanted, now);
                        loaded_at.retain(|p, _| partitions.contains_key(p));
                        group_records.retain(|g, _| partitions.contains_key(&partition_for(g, count)));
                        for (index, partition) in &partitions {
                            if let (false, Ok(end)) = (loaded_at.contains_key(index), partition.log_end_offset()) {
                                loaded_at.insert(*index, (partition.clone(), Offset(end.0 - 1)));
                            }
                        }
                    }
                }
            }
        }
        let mut stores = Vec::new();
        let mut syncs = Vec::new();
        for action in core.take_actions() {
            match action {
                Action::Join(id, response) => {
                    if let Some(Waiting::Join(tx)) = waiting.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Action::Sync(id, response) => {
                    if let Some(Waiting::Sync(group, tx)) = waiting.remove(&id) {
                        syncs.push((group, tx, response));
                    }
                }
                Action::Store(record) => stores.push(record),
            }
        }
        // The groups whose record this round wrote, and whether writing failed.
        let written: BTreeSet<String> = stores
            .iter()
            .filter(|r| matches!(r, OffsetsRecord::Group { .. }))
            .map(|r| r.group().to_owned())
            .collect();
        let mut failed = None;
        match store(&partitions, count, &stores, clock.now_ms(), None) {
            Ok(at) => {
                for group in written {
                    if let Some(durable) = at.get(&partition_for(&group, count)) {
                        group_records.insert(group, durable.clone());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, records = stores.len(), "cannot store group metadata");
                let error = if e.not_leader {
                    GroupError::NotCoordinator
                } else {
                    GroupError::CoordinatorNotAvailable
                };
                let now = clock.now_ms();
                for group in &written {
                    core.assignment_not_stored(now, group);
                }
                // Its answers (REBALANCE_IN_PROGRESS to the members waiting on a sync) go out
                // with the next command's; nothing more is stored for it now.
                failed = Some((written, error));
            }
        }
        for (group, tx, response) in syncs {
            if response.error.is_some() {
                let _ = tx.send(response);
                continue;
            }
            if let Some((_, error)) = failed.as_ref().filter(|(w, _)| w.contains(&group)) {
                let _ = tx.send(SyncResponse::error(*error));
                continue;
            }
            let durable = group_records
                .get(&group)
                .or_else(|| loaded_at.get(&partition_for(&group, count)))
                .cloned();
            match durable {
                Some(at) => {
                    tokio::spawn(answer_when_durable(at, tx, response));
                }
                None => {
                    let _ = tx.send(response);
                }
            }
        }
    }
    // Dropping the senders answers every waiting request with COORDINATOR_NOT_AVAILABLE.
    drop(waiting);
}

/// Answers a SyncGroup once its group's record is durable on every in-sync replica, or with
/// the error a client acts on when it cannot be (the coordinator moved, or cannot store).
async fn answer_when_durable(
    (partition, offset): DurableAt,
    tx: oneshot::Sender<SyncResponse>,
    response: SyncResponse,
) {
    let answer = if offset.0 < 0 {
        response
    } else {
        match partition.wait_acks_all(offset).await {
            Ok(()) => response,
            Err(e) => {
                tracing::warn!(error = %e, "group assignment not durable on the in-sync replicas");
                SyncResponse::error(match e {
                    ReplicaError::NotLeader { .. } | ReplicaError::Closed(_) => {
                        GroupError::NotCoordinator
                    }
                    _ => GroupError::CoordinatorNotAvailable,
                })
            }
        }
    };
    let _ = tx.send(answer);
}

/// Loads the partitions newly led here and unloads those no longer led.
fn own(
    core: &mut GroupCoordinator,
    ownership: &RwLock<Ownership>,
    partitions: &mut BTreeMap<i32, Arc<Partition>>,
    count: i32,
    wanted: BTreeMap<i32, Arc<Partition>>,
    now: i64,
) {
    let gone: BTreeSet<i32> = partitions
        .keys()
        .filter(|p| !wanted.contains_key(p))
        .copied()
        .collect();
    // Actions of earlier commands were taken already; what the replays add are records the
    // log holds, not to be written again. Unloading comes after, so its answers survive.
    let mut replayed = 0usize;
    for (index, partition) in &wanted {
        if partitions.contains_key(index) {
            continue;
        }
        let in_partition = |g: &str| partition_for(g, count) == *index;
        match replay(partition, |replayed_record| {
            replayed += 1;
            match replayed_record {
                Replayed::Record(record) => core.apply_record(now, record),
                Replayed::Transactional(producer_id, record) => {
                    core.stage_txn_offsets(producer_id, vec![record])
                }
                Replayed::Marker(producer_id, commit) => {
                    core.complete_txn(now, producer_id, commit, in_partition);
                }
            }
        }) {
            Ok(()) => {
                tracing::info!(partition = %partition.topic_partition(), "loaded the groups of an offsets partition this node now leads")
            }
            Err(e) => tracing::error!(partition = %partition.topic_partition(), error = %e,
                "cannot replay offsets partition; its groups start empty"),
        }
    }
    let replay_actions = core.take_actions();
    debug_assert!(replay_actions.iter().all(|a| matches!(a, Action::Store(_))));
    if !gone.is_empty() {
        let unloaded = core.unload_groups(|g| gone.contains(&partition_for(g, count)));
        tracing::info!(partitions = ?gone, groups = unloaded, "unloaded groups of offsets partitions no longer led here");
    }
    *partitions = wanted;
    if let Ok(mut o) = ownership.write() {
        o.owned = partitions.keys().copied().collect();
    }
    if replayed > 0 {
        tracing::info!(
            records = replayed,
            "group coordinator loaded offsets records"
        );
    }
}

fn commit(
    core: &mut GroupCoordinator,
    partitions: &BTreeMap<i32, Arc<Partition>>,
    count: i32,
    now: i64,
    req: CommitRequest,
    producer: Option<TxnProducer>,
) -> CommitOutcome {
    let prepared = match producer {
        None => core.prepare_commit(now, &req),
        Some(_) => core.prepare_txn_commit(now, &req),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            return CommitOutcome {
                results: Err(e),
                durable: None,
            }
        }
    };
    let records: Vec<OffsetsRecord> = prepared.iter().filter_map(|r| r.clone().ok()).collect();
    let durable = match store(partitions, count, &records, now, producer) {
        Ok(durable) => durable,
        Err(e) => {
            tracing::warn!(group = %req.group_id, error = %e, "offset commit not stored");
            let code = if e.not_leader {
                GroupError::NotCoordinator
            } else {
                GroupError::StorageError
            };
            return CommitOutcome {
                results: Ok(prepared.iter().map(|_| Some(code)).collect()),
                durable: None,
            };
        }
    };
    match producer {
        None => {
            let stored = durable.values().next().map(|(partition, last)| Stored {
                last_offset: last.0,
                high_watermark: partition.high_watermark().0,
            });
            for record in records {
                core.apply_stored(now, record, stored);
            }
        }
        Some(p) => core.stage_txn_offsets(p.producer_id, records),
    }
    CommitOutcome {
        results: Ok(prepared.into_iter().map(|r| r.err()).collect()),
        durable: durable.into_values().next(),
    }
}
