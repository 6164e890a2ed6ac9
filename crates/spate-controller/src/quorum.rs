//! The Raft view of the quorum, for `spate cluster status` and DescribeQuorum: this node's own
//! ([`Controller::quorum_status`]), or the active controller's, asked of it when this node is
//! not it ([`Controller::leader_quorum_status`]), so that every node reports the same leader,
//! term and voter states.

use crate::error::{ControllerError, PeerFailure};
use crate::raft::network::{Request, Response};
use crate::raft::{self};
use crate::{is_leader, Controller, Inner};
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::time::Duration;

/// Redirections ("not me, ask node N") [`Controller::leader_quorum_status`] follows before it
/// gives up: leadership moving more often than that during one request is an election storm,
/// and the caller is better told so than kept waiting.
const QUORUM_STATUS_HOPS_MAX: usize = 3;

/// The Raft state of this controller, for `spate cluster status` and DescribeQuorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The last log index this node holds.
    pub last_log_index: u64,
    /// The last index this node knows committed.
    pub committed_index: u64,
    pub voters: Vec<NodeId>,
    /// On the leader: each voter's matched log index (`None` while unknown).
    pub voter_matched: BTreeMap<NodeId, Option<u64>>,
}

impl Controller {
    /// The Raft view of this node: leader, term, indexes and (on the leader) each voter's lag.
    pub fn quorum_status(&self) -> QuorumStatus {
        status(&self.inner)
    }

    /// The active controller's Raft view: this node's own when it leads, otherwise asked of the
    /// leader over the controller listener (Kafka brokers forward DescribeQuorum the same way).
    /// On success, `leader` is the node whose view it is, and that node was the active
    /// controller when it answered.
    ///
    /// Bounded: at most one call per known leader, following at most
    /// `QUORUM_STATUS_HOPS_MAX` (3) redirections, all within `request_timeout_ms`. It does not
    /// wait through an election: with no leader known it returns
    /// [`ControllerError::NotLeader`] `{ leader: None }` at once.
    ///
    /// Cancel safety: cancel safe; it only reads.
    pub async fn leader_quorum_status(&self) -> Result<QuorumStatus, ControllerError> {
        let timeout = Duration::from_millis(self.inner.config.request_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut target = self.leader();
        let mut hops = 0;
        loop {
            let Some(leader) = target else {
                return Err(ControllerError::NotLeader { leader: None });
            };
            if leader == self.inner.node {
                return leader_status(&self.inner)
                    .map_err(|leader| ControllerError::NotLeader { leader });
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ControllerError::PeerTimeout {
                    peer: leader,
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            let redirect = match self
                .call_leader(leader, &Request::QuorumStatus, remaining)
                .await
            {
                Ok(Response::QuorumStatus(status)) if status.leader == Some(leader) => {
                    return Ok(status)
                }
                // Leadership moved between its check and its answer.
                Ok(Response::QuorumStatus(status)) => status.leader,
                Ok(_) => {
                    return Err(ControllerError::PeerFailed {
                        peer: leader,
                        failure: PeerFailure::UnexpectedAnswer,
                    })
                }
                Err(ControllerError::NotLeader { leader: hint }) => hint,
                Err(e) => return Err(e),
            };
            hops += 1;
            if hops > QUORUM_STATUS_HOPS_MAX || redirect == Some(leader) {
                return Err(ControllerError::NotLeader { leader: redirect });
            }
            target = redirect;
        }
    }
}

/// This node's Raft view.
fn status(inner: &Inner) -> QuorumStatus {
    let metrics = inner.raft.metrics().borrow_watched().clone();
    let voters: Vec<NodeId> = metrics
        .membership_config
        .voter_ids()
        .filter_map(raft::spate_id)
        .collect();
    let voter_matched = metrics
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter_map(|(id, log)| {
                    raft::spate_id(*id).map(|n| (n, log.as_ref().map(|l| l.index())))
                })
                .collect()
        })
        .unwrap_or_default();
    QuorumStatus {
        leader: metrics.current_leader.and_then(raft::spate_id),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        committed_index: metrics.local_committed.map_or(0, |l| l.index()),
        voters,
        voter_matched,
    }
}

/// This node's view if it is the active controller (its `leader` is this node); otherwise
/// `Err` with the leader to ask instead, if known.
pub(crate) fn leader_status(inner: &Inner) -> Result<QuorumStatus, Option<NodeId>> {
    let status = status(inner);
    if is_leader(inner) && status.leader == Some(inner.node) {
        Ok(status)
    } else {
        Err(status.leader.filter(|l| *l != inner.node))
    }
}
