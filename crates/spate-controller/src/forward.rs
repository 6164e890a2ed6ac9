//! Proposals and everything a node asks of the active controller: writing to this node's own
//! Raft when it leads, forwarding to the leader over the controller transport when it does not,
//! and, on the other side, the handler that serves what arrives on the controller listener.
//!
//! Every forwarded call is bounded by `request_timeout_ms`; a failure names the node that was
//! asked ([`ControllerError::PeerUnreachable`], [`ControllerError::PeerTimeout`],
//! [`ControllerError::PeerFailed`]) or the leader to ask instead ([`ControllerError::NotLeader`]).

use crate::error::{ControllerError, Halted, PeerFailure};
use crate::raft::network::{CallError, Handler, Request, Response};
use crate::raft::{self, halted};
use crate::{heartbeat, quorum, Controller, Inner, MetadataCommand, MetadataOutcome};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use spate_types::NodeId;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Backoff while no controller leader is known or the known one is unreachable.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// The longest one forwarded proposal waits for its answer before it is sent again on a new
/// connection: an answer lost on the way (a connection that died silently, without a reset)
/// must not hold the proposer for the whole `request_timeout_ms`. A commit takes milliseconds;
/// this leaves room for a slow disk.
const FORWARD_ATTEMPT_MAX: Duration = Duration::from_secs(5);

/// A proposal's fate on this node's own Raft.
pub(crate) enum LocalWrite {
    Applied {
        outcome: MetadataOutcome,
        index: u64,
    },
    NotLeader {
        leader: Option<NodeId>,
    },
}

impl Controller {
    /// Appends `cmd` on this node's Raft if it is the leader.
    ///
    /// # Panics
    ///
    /// If openraft answers a plain write with a membership or precondition error, or applies a
    /// command without an outcome: neither can happen (this crate attaches no precondition, and
    /// the state machine answers every command), so either is a bug.
    pub(crate) async fn write_local(&self, cmd: MetadataCommand) -> Result<LocalWrite, Halted> {
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => {
                let index = resp.log_id.index();
                let Some(outcome) = resp.data else {
                    panic!("the command applied at log index {index} produced no outcome");
                };
                Ok(LocalWrite::Applied { outcome, index })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
            | Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                Ok(LocalWrite::NotLeader {
                    leader: f.leader_id.and_then(raft::spate_id),
                })
            }
            Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_)))
            | Err(RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_))) => {
                panic!("a plain metadata write failed with {e}")
            }
            Err(RaftError::Fatal(f)) => Err(halted(f)),
        }
    }

    /// Replicates and applies one command; returns its outcome once it is applied on this node
    /// too. On a node that is not the active controller, the command is forwarded to the one
    /// that is (waiting through an election, within `request_timeout_ms`).
    ///
    /// A well-formed command that the metadata rules refuse is `Ok(MetadataOutcome::Rejected)`.
    /// Running out of time returns the last reason the leader could not be asked, or
    /// [`ControllerError::NotLeader`] when none was known.
    ///
    /// Cancel safety: dropping the future does not withdraw the command; it may still be applied.
    /// After an error the command may or may not have been applied, and a forwarded command
    /// whose answer was lost is sent again: proposers must tolerate that (e.g.
    /// `TopicAlreadyExists` on a retried creation; commands carrying epochs are refused when
    /// stale).
    ///
    /// # Panics
    ///
    /// On a bug in openraft's answers (see `write_local`).
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<MetadataOutcome, ControllerError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.inner.config.request_timeout_ms);
        let mut last_error = None;
        loop {
            let leader = match self.write_local(cmd.clone()).await? {
                LocalWrite::Applied { outcome, .. } => return Ok(outcome),
                LocalWrite::NotLeader { leader } => leader.or_else(|| self.leader()),
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(last_error.unwrap_or(ControllerError::NotLeader { leader }));
            }
            let Some(leader) = leader.filter(|l| *l != self.inner.node) else {
                tokio::time::sleep(RETRY_BACKOFF.min(remaining)).await;
                continue;
            };
            let request = Request::Propose(cmd.clone());
            match self
                .call_leader(leader, &request, remaining.min(FORWARD_ATTEMPT_MAX))
                .await
            {
                Ok(Response::Proposed { outcome, index }) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok(outcome);
                }
                Ok(_) => {
                    last_error = Some(ControllerError::PeerFailed {
                        peer: leader,
                        failure: PeerFailure::UnexpectedAnswer,
                    });
                }
                Err(e) => last_error = Some(e),
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(RETRY_BACKOFF.min(remaining)).await;
        }
    }

    /// A read barrier: waits until this node has applied everything the active controller had
    /// committed when asked, so that a decision made on [`Controller::image`] afterwards sees
    /// every change committed before this call. Admin requests (create, delete, grow a topic)
    /// pass it before they read the image: a node cut off from the controller would otherwise
    /// answer from a stale view, for instance TOPIC_ALREADY_EXISTS for a topic deleted while it
    /// was away (simulator seed 116). Kafka brokers forward those requests to the controller
    /// for the same reason.
    ///
    /// Waits through an election, within `request_timeout_ms`; the error is then the last
    /// reason the active controller could not be asked.
    ///
    /// Cancel safety: cancel safe; it only reads.
    pub async fn catch_up(&self) -> Result<(), ControllerError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.inner.config.request_timeout_ms);
        loop {
            let read_index = if self.leader() == Some(self.inner.node) {
                self.leader_read_index(deadline).await
            } else {
                self.leader_quorum_status()
                    .await
                    .map(|status| status.committed_index)
            };
            match read_index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(e) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let retriable = matches!(
                        e,
                        ControllerError::NotLeader { .. }
                            | ControllerError::PeerUnreachable { .. }
                            | ControllerError::PeerTimeout { .. }
                            | ControllerError::PeerFailed { .. }
                    );
                    if !retriable || remaining.is_zero() {
                        return Err(e);
                    }
                    tokio::time::sleep(RETRY_BACKOFF.min(remaining)).await;
                }
            }
        }
    }

    /// On the node that believes it leads: confirms with a quorum that it still does (Raft's
    /// ReadIndex; a leader cut off from the others has not heard of its successor) and returns
    /// the index a read must see applied.
    async fn leader_read_index(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<u64, ControllerError> {
        let confirmed = tokio::time::timeout_at(
            deadline,
            self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        match confirmed {
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(ControllerError::NotLeader {
                    leader: f.leader_id.and_then(raft::spate_id),
                })
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) | Err(_) => {
                Err(ControllerError::NotLeader { leader: None })
            }
            Ok(Err(RaftError::Fatal(f))) => Err(halted(f).into()),
        }
    }

    /// Waits until this node has applied the log up to `index`.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ControllerError> {
        let mut rx = self.inner.image_rx.clone();
        let waited = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|image| image.last_applied_index >= index),
        )
        .await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            // The state machine dropped its sender: the Raft core is gone.
            Ok(Err(_)) => Err(ControllerError::Stopped(crate::StopCause::ShutDown)),
            Err(_) => Err(ControllerError::ApplyTimeout { index }),
        }
    }

    /// Sends `request` to `leader`'s controller listener, once, within `timeout`. An answer that
    /// says the peer is not the leader, or that it failed, is returned as the matching error;
    /// any other answer is for the caller to check.
    ///
    /// Cancel safety: cancel safe; a connection whose call was cancelled is not reused.
    pub(crate) async fn call_leader(
        &self,
        leader: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ControllerError> {
        // Every voter is configured with its address; a leader without one is not a voter
        // this node knows, so it cannot be the leader to ask.
        let Some(addr) = self.inner.addresses.get(&leader) else {
            return Err(ControllerError::NotLeader {
                leader: Some(leader),
            });
        };
        // A call to a leader that has lost its place (or is cut off from us) must not hold the
        // caller for the whole timeout: once this node sees another leader, the call is
        // abandoned and the caller asks the new one.
        let mut metrics = self.inner.raft.metrics();
        let leader_moved = async {
            loop {
                let now = metrics.borrow_and_update().current_leader;
                if now.and_then(raft::spate_id) != Some(leader) {
                    return now.and_then(raft::spate_id);
                }
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        // Biased (deterministic under simulation). With both ready the answer wins: one that
        // came back is kept even if the leader moved meanwhile, as what it answers may have
        // been committed, and asking the new leader again could apply it twice.
        let answer = tokio::select! {
            biased;
            answer = self.inner.peers.call(addr, request, timeout) => answer,
            now = leader_moved => return Err(ControllerError::NotLeader { leader: now }),
        };
        if let Some(id) = raft::raft_id(leader) {
            match &answer {
                Ok(_) => self.inner.refusals.answered(id),
                Err(CallError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    self.inner.refusals.refused(id)
                }
                Err(_) => {}
            }
        }
        match answer {
            Ok(Response::NotLeader { leader }) => Err(ControllerError::NotLeader { leader }),
            Ok(Response::Failed(failure)) => Err(ControllerError::PeerFailed {
                peer: leader,
                failure,
            }),
            Ok(response) => Ok(response),
            Err(CallError::Io { source, .. }) => Err(ControllerError::PeerUnreachable {
                peer: leader,
                source,
            }),
            Err(CallError::TimedOut { timeout_ms, .. }) => Err(ControllerError::PeerTimeout {
                peer: leader,
                timeout_ms,
            }),
        }
    }
}

/// Serves requests arriving on the controller listener. Holds the controller weakly so that
/// the listener task does not keep a dropped controller alive.
pub(crate) fn request_handler(inner: Weak<Inner>) -> Handler {
    Arc::new(move |request| {
        let inner = inner.clone();
        Box::pin(async move {
            let Some(inner) = inner.upgrade() else {
                return Response::Failed(PeerFailure::Stopped);
            };
            let raft = &inner.raft;
            let failed = |e: RaftError<raft::TypeConfig>| match e {
                RaftError::APIError(never) => match never {},
                RaftError::Fatal(f) => Response::Failed(halted(f).peer_failure()),
            };
            match request {
                Request::AppendEntries(rpc) => match raft.append_entries(rpc).await {
                    Ok(r) => Response::AppendEntries(r),
                    Err(e) => failed(e),
                },
                Request::Vote(rpc) => match raft.vote(rpc).await {
                    Ok(r) => Response::Vote(r),
                    Err(e) => failed(e),
                },
                Request::PreVote(rpc) => match raft.pre_vote(rpc).await {
                    Ok(r) => Response::Vote(r),
                    Err(e) => failed(e),
                },
                Request::Snapshot { vote, meta, image } => {
                    let snapshot = raft::state_machine::Snapshot {
                        meta,
                        snapshot: *image,
                    };
                    match raft.install_full_snapshot(vote, snapshot).await {
                        Ok(r) => Response::Snapshot(r),
                        Err(f) => Response::Failed(halted(f).peer_failure()),
                    }
                }
                Request::Propose(cmd) => {
                    let controller = Controller {
                        inner: inner.clone(),
                    };
                    match controller.write_local(cmd).await {
                        Ok(LocalWrite::Applied { outcome, index }) => {
                            Response::Proposed { outcome, index }
                        }
                        Ok(LocalWrite::NotLeader { leader }) => Response::NotLeader { leader },
                        Err(h) => Response::Failed(h.peer_failure()),
                    }
                }
                Request::Heartbeat(hb) => match heartbeat::handle_heartbeat(&inner, hb) {
                    Ok(reply) => Response::Heartbeat(reply),
                    Err(leader) => Response::NotLeader { leader },
                },
                Request::TransferLeader(rpc) => match raft.handle_transfer_leader(rpc).await {
                    Ok(r) => Response::TransferLeader(r),
                    Err(f) => Response::Failed(halted(f).peer_failure()),
                },
                Request::QuorumStatus => match quorum::leader_status(&inner) {
                    Ok(status) => Response::QuorumStatus(status),
                    Err(leader) => Response::NotLeader { leader },
                },
            }
        })
    })
}
