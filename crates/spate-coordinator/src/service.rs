//! The coordinator task: one owner of the [`GroupCoordinator`] core, reached by message.
//!
//! A node coordinates the groups of the `__consumer_offsets` partitions it leads (a group's
//! partition is Kafka's hash of the group id). [`Coordinator::own`] hands the task the set of
//! partitions this node leads: a newly led partition is replayed into memory (up to its log
//! end: as the leader, its log is the partition's truth), and the groups of a partition no
//! longer led are dropped, their waiting requests answered NOT_COORDINATOR. Requests for a
//! group whose partition is not led here get NOT_COORDINATOR, so clients look the coordinator
//! up again (FindCoordinator names the partition's leader).
//!
//! An OffsetCommit is applied to memory once its batch is in the log and answered only after
//! the batch is below the high watermark ([`CommitOutcome::durable`]: fsynced on every in-sync
//! replica). A SyncGroup that hands out an assignment is answered, as in Kafka, only once the
//! group's record (generation, members, assignment) is below the high watermark too, or the
//! partition's log as this node loaded it, for a group no record was written for since: a
//! coordinator that takes over after a failure then knows every generation a member was
//! assigned partitions in, and never counts one again with other members (two members owning
//! one partition in "the same" generation, and a commit of the older one's accepted). Other
//! group records (a member left, the group emptied) are not waited for: losing one costs
//! members a rejoin.

use crate::core::{
    CommitRequest, GroupCoordinator, JoinRequest, JoinResponse, SyncRequest, SyncResponse,
};
use crate::error::GroupError;
use crate::records::partition_for;
use spate_replica::Partition;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::oneshot;

mod handle;
mod replay;
mod store;
mod task;

pub use handle::{CommitOutcome, Coordinator, TxnProducer};
pub(crate) use replay::replay_records;
pub(crate) use store::append_records;

/// Kafka's name for the internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

type Query = Box<dyn FnOnce(&mut GroupCoordinator, i64) + Send>;
/// A query about one group, also given its offsets partition's high watermark once the
/// partition's log as loaded here is durable (`None` until then).
type GroupQuery = Box<dyn FnOnce(&mut GroupCoordinator, i64, Option<i64>) + Send>;

enum Command {
    Join(JoinRequest, oneshot::Sender<JoinResponse>),
    Sync(SyncRequest, oneshot::Sender<SyncResponse>),
    Commit(CommitRequest, oneshot::Sender<CommitOutcome>),
    /// A TxnOffsetCommit of this producer id and epoch.
    TxnCommit(CommitRequest, TxnProducer, oneshot::Sender<CommitOutcome>),
    Query(Query),
    /// A query about one group: refused unless its partition is led here.
    GroupQuery(String, GroupQuery, oneshot::Sender<GroupError>),
    /// The offsets partitions this node leads now, by partition number.
    Own(BTreeMap<i32, Arc<Partition>>),
}

impl Command {
    /// The group a command is about, if it is about one.
    fn group(&self) -> Option<&str> {
        match self {
            Command::Join(req, _) => Some(&req.group_id),
            Command::Sync(req, _) => Some(&req.group_id),
            Command::Commit(req, _) | Command::TxnCommit(req, _, _) => Some(&req.group_id),
            Command::GroupQuery(group, _, _) => Some(group),
            Command::Query(_) | Command::Own(_) => None,
        }
    }
}

/// Which offsets partitions this node coordinates.
#[derive(Debug, Default)]
struct Ownership {
    count: i32,
    owned: BTreeSet<i32>,
}

impl Ownership {
    fn check(&self, group: &str) -> Result<(), GroupError> {
        if self.count > 0 && self.owned.contains(&partition_for(group, self.count)) {
            Ok(())
        } else {
            Err(GroupError::NotCoordinator)
        }
    }
}
