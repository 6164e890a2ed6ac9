//! The handle to the coordinator task: its public API, each call a message to the task.

use super::task::run;
use super::{Command, GroupQuery, Ownership};
use crate::core::{
    CommitRequest, GroupCoordinator, GroupSettings, HeartbeatRequest, JoinRequest, JoinResponse,
    LeaveRequest, LeaveResponse, SyncRequest, SyncResponse,
};
use crate::error::GroupError;
use crate::records::partition_for;
use spate_replica::Partition;
use spate_types::{Offset, Seams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests queued for the coordinator task; senders wait when it is full.
const COMMANDS_QUEUED_MAX: usize = 4096;

/// The result of an OffsetCommit.
pub struct CommitOutcome {
    /// A group-level refusal, or one result per requested partition, in request order.
    pub results: Result<Vec<Option<GroupError>>, GroupError>,
    /// Wait for this offset of this partition to be fsynced before answering.
    pub durable: Option<(Arc<Partition>, Offset)>,
}

/// A handle to the coordinator task. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Command>,
    ownership: Arc<RwLock<Ownership>>,
}

impl Coordinator {
    /// Starts the task for a `__consumer_offsets` topic of `partition_count` partitions,
    /// coordinating nothing until [`Coordinator::own`] says which partitions are led here.
    /// It reads the time (the wall clock: group deadlines, commit and expiry timestamps are
    /// epoch milliseconds) and its incarnation id from `seams` (the node's), never from the
    /// system directly. Timers (the wait for the next group deadline, the retention check
    /// interval) are the runtime's.
    pub fn start_with_seams(
        settings: GroupSettings,
        partition_count: i32,
        offsets_retention_check: Duration,
        shutdown: watch::Receiver<bool>,
        seams: Seams,
    ) -> Coordinator {
        let incarnation = seams.ids.uuid().simple().to_string()[..8].to_owned();
        let core = GroupCoordinator::new(settings, incarnation);
        let ownership = Arc::new(RwLock::new(Ownership {
            count: partition_count,
            owned: BTreeSet::new(),
        }));
        let (tx, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        tokio::spawn(run(
            core,
            ownership.clone(),
            rx,
            offsets_retention_check,
            shutdown,
            seams.clock,
        ));
        Coordinator { tx, ownership }
    }

    /// Hands the task the offsets partitions this node leads now (by partition number): new
    /// ones are loaded, dropped ones unloaded. Idempotent.
    pub async fn own(&self, partitions: BTreeMap<i32, Arc<Partition>>) {
        let _ = self.tx.send(Command::Own(partitions)).await;
    }

    /// Whether this node coordinates `group` (NOT_COORDINATOR otherwise).
    pub fn check_group(&self, group: &str) -> Result<(), GroupError> {
        self.ownership
            .read()
            .map_err(|_| GroupError::CoordinatorNotAvailable)?
            .check(group)
    }

    /// The offsets partitions this node coordinates.
    pub fn owned_partitions(&self) -> Vec<i32> {
        self.ownership
            .read()
            .map(|o| o.owned.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Runs `f` on the core for one group, inside the task, if this node coordinates it.
    pub async fn query_group<R: Send + 'static>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupCoordinator, i64, Option<i64>) -> R + Send + 'static,
    ) -> Result<R, GroupError> {
        let (tx, rx) = oneshot::channel();
        let (refused_tx, refused_rx) = oneshot::channel();
        let query: GroupQuery = Box::new(move |core, now, high_watermark| {
            let _ = tx.send(f(core, now, high_watermark));
        });
        self.tx
            .send(Command::GroupQuery(group.to_owned(), query, refused_tx))
            .await
            .map_err(|_| GroupError::CoordinatorNotAvailable)?;
        // A refused query is dropped unanswered after its refusal is sent; an answered one
        // drops the refusal sender. So wait for the answer first, then for the refusal.
        match rx.await {
            Ok(answer) => Ok(answer),
            Err(_) => Err(refused_rx
                .await
                .unwrap_or(GroupError::CoordinatorNotAvailable)),
        }
    }

    async fn call<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, GroupError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| GroupError::CoordinatorNotAvailable)?;
        rx.await.map_err(|_| GroupError::CoordinatorNotAvailable)
    }

    /// Waits until the rebalance completes (or the request is refused).
    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let member_id = req.member_id.clone();
        self.call(|tx| Command::Join(req, tx))
            .await
            .unwrap_or_else(|e| JoinResponse {
                error: Some(e),
                generation_id: -1,
                member_id,
                ..Default::default()
            })
    }

    pub async fn sync(&self, req: SyncRequest) -> SyncResponse {
        self.call(|tx| Command::Sync(req, tx))
            .await
            .unwrap_or_else(|e| SyncResponse {
                error: Some(e),
                ..Default::default()
            })
    }

    pub async fn commit(&self, req: CommitRequest) -> CommitOutcome {
        self.call(|tx| Command::Commit(req, tx))
            .await
            .unwrap_or_else(|e| CommitOutcome {
                results: Err(e),
                durable: None,
            })
    }

    /// TxnOffsetCommit: the offsets are stored in a transactional batch of `producer` and
    /// become the group's only when its transaction commits.
    pub async fn txn_commit(&self, req: CommitRequest, producer: TxnProducer) -> CommitOutcome {
        self.call(|tx| Command::TxnCommit(req, producer, tx))
            .await
            .unwrap_or_else(|e| CommitOutcome {
                results: Err(e),
                durable: None,
            })
    }

    /// A marker for `producer_id` is durable on offsets partition `partition`: its pending
    /// transactional offsets there are applied (commit) or dropped (abort).
    pub async fn complete_txn(&self, partition: i32, producer_id: i64, commit: bool) {
        let count = self.ownership.read().map_or(0, |o| o.count);
        let in_partition = move |g: &str| partition_for(g, count) == partition;
        let applied = self
            .query(move |core, now| core.complete_txn(now, producer_id, commit, in_partition))
            .await
            .unwrap_or(0);
        if applied > 0 {
            tracing::debug!(
                producer_id,
                commit,
                applied,
                "transactional offset commits ended"
            );
        }
    }

    /// Runs `f` on the core inside the task; records it queues are stored afterwards.
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut GroupCoordinator, i64) -> R + Send + 'static,
    ) -> Result<R, GroupError> {
        self.call(|tx| {
            Command::Query(Box::new(move |core, now| {
                let _ = tx.send(f(core, now));
            }))
        })
        .await
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<(), GroupError> {
        let group = req.group_id.clone();
        self.query_group(&group, move |core, now, _| core.heartbeat(now, &req))
            .await?
    }

    pub async fn leave(&self, req: LeaveRequest) -> LeaveResponse {
        let members = req.members.clone();
        let group = req.group_id.clone();
        self.query_group(&group, move |core, now, _| core.leave(now, &req))
            .await
            .unwrap_or_else(|e| LeaveResponse {
                error: Some(e),
                members: members.into_iter().map(|(m, i)| (m, i, Some(e))).collect(),
            })
    }
}

/// A transactional producer a TxnOffsetCommit is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
}
