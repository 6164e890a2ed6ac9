//! The controller's error type. Rejections of well-formed commands are not errors: they are
//! `MetadataOutcome::Rejected`.
//!
//! Every variant says what a caller can do about it, so the Kafka front end maps each one to a
//! wire error without guessing (`spate-kafka/src/errors.rs`, an exhaustive `match`):
//! - routing: [`ControllerError::NotLeader`] names the active controller when it is known;
//! - the active controller could not be asked: [`ControllerError::PeerUnreachable`],
//!   [`ControllerError::PeerTimeout`], [`ControllerError::PeerFailed`] name it;
//! - waiting here ran out: [`ControllerError::ApplyTimeout`], [`ControllerError::OpenTimeout`];
//! - this controller is gone: [`ControllerError::Stopped`] (shut down, or its Raft core
//!   panicked), [`ControllerError::Io`] (its storage failed);
//! - refusals at open (locked, misconfigured, another quorum's directory), and
//!   [`ControllerError::Refused`] for a command this node proposed for itself.

use crate::metadata::MetadataError;
use serde::{Deserialize, Serialize};
use spate_types::NodeId;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A disk operation failed, at open or in the running Raft core (which then stops).
    /// Environmental; usually fatal for the node.
    #[error("controller storage: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Another controller (in this or another process) has the directory open.
    #[error("controller directory {} is locked by another running controller", path.display())]
    Locked { path: PathBuf },
    /// Kafka node ids are non-negative.
    #[error("invalid controller node id {0}: node ids must be non-negative")]
    InvalidNodeId(NodeId),
    /// The directory holds the state of a controller quorum this node is not a voter of (for
    /// instance, it was created under another node id).
    #[error(
        "controller node {node} is not a voter of the quorum stored here (voters: {voters:?})"
    )]
    NotAVoter { node: NodeId, voters: Vec<NodeId> },
    /// This node is not the active controller; `leader` is the one to ask, if known (`None`
    /// while the quorum is electing one). Kafka: NOT_CONTROLLER.
    #[error("{}", not_leader(*leader))]
    NotLeader { leader: Option<NodeId> },
    /// The configured voters (`controller.quorum.voters`) differ from the ones this directory's
    /// quorum was formed with; voters are fixed when a cluster is first started.
    #[error(
        "controller.quorum.voters lists nodes {configured:?}, but this data directory belongs to a quorum of {stored:?}; voters are fixed when the cluster is first started"
    )]
    VotersMismatch {
        stored: Vec<NodeId>,
        configured: Vec<NodeId>,
    },
    /// So many voters answered as members of another cluster that no quorum can form with this
    /// node: its data directory belongs to another cluster than the configured voters.
    #[error(
        "this data directory belongs to cluster {ours}, but the voters in controller.quorum.voters at {addresses:?} are cluster {theirs}: this data directory is from another cluster; point data.dir at this node's own directory"
    )]
    OtherCluster {
        ours: String,
        theirs: String,
        addresses: Vec<String>,
    },
    /// This node is not among the configured voters.
    #[error("node {node} is not in controller.quorum.voters {voters:?}; every node is a voter")]
    NotInVoters { node: NodeId, voters: Vec<NodeId> },
    /// Several voters are configured but no `controller.listen` address.
    #[error("controller.listen is required when controller.quorum.voters names several nodes")]
    NoListener,
    /// Connecting to the controller listener of `peer` (the active controller as this node
    /// knew it), sending to it or reading its answer failed; `source.kind()` says how.
    #[error("cannot reach the active controller {peer}: {source}")]
    PeerUnreachable {
        peer: NodeId,
        #[source]
        source: std::io::Error,
    },
    /// `peer` (the active controller as this node knew it) did not answer in time.
    #[error("the active controller {peer} did not answer within {timeout_ms} ms")]
    PeerTimeout { peer: NodeId, timeout_ms: u64 },
    /// `peer` answered, but could not serve the request.
    #[error("the active controller {peer} could not serve the request: {failure}")]
    PeerFailed { peer: NodeId, failure: PeerFailure },
    /// A forwarded proposal was committed but this node did not apply it in time.
    #[error("committed at log index {index} but not applied here in time")]
    ApplyTimeout { index: u64 },
    /// `open` gave up waiting for this node to become the active controller.
    #[error("controller did not become leader within {waited_ms} ms")]
    OpenTimeout { waited_ms: u64 },
    /// The controller has been shut down, or its Raft core stopped on its own.
    #[error("controller is shut down: {0}")]
    Stopped(StopCause),
    /// The metadata rules refused a command this node proposed for itself: naming the cluster
    /// or registering as a broker (`command` says which).
    #[error("{command} was refused: {error}")]
    Refused {
        command: &'static str,
        error: MetadataError,
    },
}

fn not_leader(leader: Option<NodeId>) -> String {
    match leader {
        Some(leader) => format!("this node is not the active controller; node {leader} is"),
        None => "this node is not the active controller, and no active controller is known \
                 (an election is under way or there is no majority)"
            .to_owned(),
    }
}

/// Why a controller stopped serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StopCause {
    /// [`crate::Controller::shutdown`] ran, the last handle was dropped, or the runtime is
    /// shutting down.
    #[error("stopped")]
    ShutDown,
    /// The Raft core panicked (a bug; the log has the panic message).
    #[error("the raft core panicked")]
    Panicked,
}

/// Why another controller could not serve a request it received. Sent on the controller
/// transport in place of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerFailure {
    /// Its controller is shut down or stopping.
    #[error("it is shut down")]
    Stopped,
    /// Its storage failed; its Raft core stopped.
    #[error("its storage failed")]
    Storage,
    /// It answered with something that is not an answer to the request (a node of another
    /// Spate version, or a bug). Detected by the caller; never sent.
    #[error("it answered with an unexpected message")]
    UnexpectedAnswer,
}

impl ControllerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ControllerError::Io {
            context: context.into(),
            source,
        }
    }

    /// The active controller this error points at, for a client to go to: the known leader of a
    /// [`ControllerError::NotLeader`], or the peer that was asked (and believed to lead) for the
    /// `Peer*` errors. `None` where no controller is known or the error is not about routing.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self {
            ControllerError::NotLeader { leader } => *leader,
            ControllerError::PeerUnreachable { peer, .. }
            | ControllerError::PeerTimeout { peer, .. }
            | ControllerError::PeerFailed { peer, .. } => Some(*peer),
            ControllerError::Io { .. }
            | ControllerError::Locked { .. }
            | ControllerError::InvalidNodeId(_)
            | ControllerError::NotAVoter { .. }
            | ControllerError::VotersMismatch { .. }
            | ControllerError::OtherCluster { .. }
            | ControllerError::NotInVoters { .. }
            | ControllerError::NoListener
            | ControllerError::ApplyTimeout { .. }
            | ControllerError::OpenTimeout { .. }
            | ControllerError::Stopped(_)
            | ControllerError::Refused { .. } => None,
        }
    }
}

/// This node's Raft core can no longer serve: it stopped, or its storage failed. The
/// crate-internal form of openraft's `Fatal` (see `raft::halted`).
#[derive(Debug)]
pub(crate) enum Halted {
    Stopped(StopCause),
    Storage(std::io::Error),
}

impl Halted {
    /// What a peer that forwarded a request to this node is told.
    pub(crate) fn peer_failure(&self) -> PeerFailure {
        match self {
            Halted::Stopped(_) => PeerFailure::Stopped,
            Halted::Storage(_) => PeerFailure::Storage,
        }
    }
}

impl From<Halted> for ControllerError {
    fn from(h: Halted) -> Self {
        match h {
            Halted::Stopped(cause) => ControllerError::Stopped(cause),
            Halted::Storage(source) => ControllerError::io("raft storage", source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_leader_and_the_cause() {
        assert_eq!(
            ControllerError::NotLeader {
                leader: Some(NodeId(2))
            }
            .to_string(),
            "this node is not the active controller; node 2 is"
        );
        assert!(ControllerError::NotLeader { leader: None }
            .to_string()
            .contains("no active controller is known"));
        let e = ControllerError::PeerUnreachable {
            peer: NodeId(3),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the active controller 3: connection refused"
        );
        assert_eq!(e.leader_hint(), Some(NodeId(3)));
        assert_eq!(
            ControllerError::PeerFailed {
                peer: NodeId(1),
                failure: PeerFailure::Storage
            }
            .to_string(),
            "the active controller 1 could not serve the request: its storage failed"
        );
        assert_eq!(
            ControllerError::Stopped(StopCause::Panicked).to_string(),
            "controller is shut down: the raft core panicked"
        );
        assert_eq!(
            ControllerError::Stopped(StopCause::ShutDown).leader_hint(),
            None
        );
    }

    #[test]
    fn a_halted_core_is_a_stop_or_a_storage_failure() {
        let storage = Halted::Storage(std::io::Error::other("disk gone"));
        assert_eq!(storage.peer_failure(), PeerFailure::Storage);
        assert!(matches!(
            ControllerError::from(storage),
            ControllerError::Io { .. }
        ));
        let stopped = Halted::Stopped(StopCause::ShutDown);
        assert_eq!(stopped.peer_failure(), PeerFailure::Stopped);
        assert!(matches!(
            ControllerError::from(stopped),
            ControllerError::Stopped(StopCause::ShutDown)
        ));
    }
}
