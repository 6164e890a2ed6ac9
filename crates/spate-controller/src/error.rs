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
