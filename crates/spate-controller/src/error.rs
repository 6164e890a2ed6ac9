//! The controller's error type. Rejections of well-formed commands are not errors: they are
//! `MetadataOutcome::Rejected`.

use spate_types::NodeId;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A disk operation failed (environmental; usually fatal for the node).
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
    /// This node is not the active controller; `leader` is the one to ask, if known.
    /// Kafka: NOT_CONTROLLER.
    #[error("this node is not the active controller (leader: {leader:?})")]
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
    /// This node is not among the configured voters.
    #[error("node {node} is not in controller.quorum.voters {voters:?}; every node is a voter")]
    NotInVoters { node: NodeId, voters: Vec<NodeId> },
    /// Several voters are configured but no `controller.listen` address.
    #[error("controller.listen is required when controller.quorum.voters names several nodes")]
    NoListener,
    /// A proposal or heartbeat could not reach the active controller, or it failed there.
    #[error("forwarding to the active controller {leader}: {reason}")]
    Forward { leader: NodeId, reason: String },
    /// A forwarded proposal was committed but this node did not apply it in time.
    #[error("committed at log index {index} but not applied here in time")]
    ApplyTimeout { index: u64 },
    /// `open` gave up waiting for this node to become the active controller.
    #[error("controller did not become leader within {waited_ms} ms")]
    OpenTimeout { waited_ms: u64 },
    /// The controller has been shut down (or its Raft core stopped after a storage error).
    #[error("controller is shut down: {0}")]
    Stopped(String),
    /// Raft reported something this crate does not expect; the message says what.
    #[error("controller raft error: {0}")]
    Raft(String),
}

impl ControllerError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ControllerError::Io {
            context: context.into(),
            source,
        }
    }
}
