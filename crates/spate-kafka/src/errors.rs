//! Mapping of Spate's typed errors to Kafka error codes. Every `match` is exhaustive, so a new
//! error variant must be given its wire code here.

use kafka_protocol::ResponseError;
use spate_controller::{ControllerError, MetadataError, StopCause};
use spate_log::{BatchError, BatchErrorKind, ConfigError, LogError};
use spate_replica::ReplicaError;

pub(crate) fn replica_error(e: &ReplicaError) -> ResponseError {
    match e {
        ReplicaError::Log(e) => log_error(e),
        ReplicaError::Closed(_) => ResponseError::NotLeaderOrFollower,
        ReplicaError::Storage { .. } => ResponseError::KafkaStorageError,
        ReplicaError::NotLeader { .. } | ReplicaError::Damaged { .. } => {
            ResponseError::NotLeaderOrFollower
        }
        ReplicaError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        ReplicaError::NotEnoughReplicasAfterAppend { .. } => {
            ResponseError::NotEnoughReplicasAfterAppend
        }
        ReplicaError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        ReplicaError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        ReplicaError::NotReplica { .. } => ResponseError::NotLeaderOrFollower,
        ReplicaError::HighWatermarkNotSettled { .. } => ResponseError::OffsetNotAvailable,
        // The leader sent what does not follow this log: a replication bug, not the client's.
        ReplicaError::Diverged { .. } => ResponseError::KafkaStorageError,
    }
}

/// The leader a NOT_LEADER_OR_FOLLOWER answer should point at (KIP-951), if known.
pub(crate) fn leader_hint(
    e: &ReplicaError,
) -> Option<(spate_types::NodeId, spate_types::LeaderEpoch)> {
    match e {
        ReplicaError::NotLeader {
            leader: Some(leader),
            leader_epoch,
            ..
        } => Some((*leader, *leader_epoch)),
        _ => None,
    }
}

pub(crate) fn log_error(e: &LogError) -> ResponseError {
    match e {
        LogError::Batch(b) => batch_error(b),
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        LogError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
        LogError::InvalidTxnState { .. } => ResponseError::InvalidTxnState,
        LogError::TransactionCoordinatorFenced { .. } => {
            ResponseError::TransactionCoordinatorFenced
        }
        LogError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        LogError::Io(_) | LogError::Corrupt { .. } => ResponseError::KafkaStorageError,
    }
}

pub(crate) fn batch_error(e: &BatchError) -> ResponseError {
    match e.kind() {
        BatchErrorKind::Corrupt => ResponseError::CorruptMessage,
        BatchErrorKind::InvalidRecord => ResponseError::InvalidRecord,
        BatchErrorKind::UnsupportedFormat => ResponseError::UnsupportedForMessageFormat,
        BatchErrorKind::TooLarge => ResponseError::MessageTooLarge,
    }
}

pub(crate) fn metadata_error(e: &MetadataError) -> ResponseError {
    match e {
        MetadataError::TopicAlreadyExists(_) => ResponseError::TopicAlreadyExists,
        MetadataError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
        // Proposers retry these themselves; one that still reaches a client is retriable.
        MetadataError::ConcurrentModification(_) => ResponseError::RequestTimedOut,
        MetadataError::InvalidTopicName(_) => ResponseError::InvalidTopicException,
        MetadataError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
        MetadataError::InvalidReplicationFactor(_) => ResponseError::InvalidReplicationFactor,
        MetadataError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
        MetadataError::InvalidRequest(_) => ResponseError::InvalidRequest,
        MetadataError::UnknownBroker { .. } => ResponseError::StaleBrokerEpoch,
        MetadataError::StalePartitionState(_) => ResponseError::FencedLeaderEpoch,
        MetadataError::InvalidIsr(_) => ResponseError::IneligibleReplica,
    }
}

/// A controller failure as a client sees it: retriable unless this node is broken. The leader
/// itself is not a wire field of the admin responses that carry these codes; it is in the
/// message (`Display`), and [`ControllerError::leader_hint`] gives it to handlers that have a
/// field for it (DescribeQuorum).
pub(crate) fn controller_error(e: &ControllerError) -> ResponseError {
    match e {
        // The quorum is electing or the active controller moved: clients refresh their metadata
        // and retry (Kafka answers requests sent to a node that is not the controller so).
        ControllerError::NotLeader { .. } => ResponseError::NotController,
        // The active controller could not be asked, or did not answer in time, through the
        // whole request timeout: what Kafka answers a request whose forwarding to the
        // controller timed out. Retriable: a new leader is usually elected meanwhile.
        ControllerError::PeerUnreachable { .. }
        | ControllerError::PeerTimeout { .. }
        | ControllerError::PeerFailed { .. }
        | ControllerError::ApplyTimeout { .. } => ResponseError::RequestTimedOut,
        // This node's controller is stopping (or never became leader at open): the request
        // belongs to another node.
        ControllerError::Stopped(StopCause::ShutDown | StopCause::Panicked)
        | ControllerError::OpenTimeout { .. } => ResponseError::NotController,
        // A command this node proposed for itself was refused by the metadata rules: the same
        // code as if a client had sent it.
        ControllerError::Refused { error, .. } => metadata_error(error),
        // The controller's disk failed; its Raft core stops. Not KAFKA_STORAGE_ERROR, which is
        // about a partition's log and which clients retry as stale metadata: nothing this node
        // does will succeed again, so the client should hear it at once.
        ControllerError::Io { .. } => ResponseError::UnknownServerError,
        // Refusals at open: a running controller never returns them (the node does not start).
        // Nothing a client could retry either.
        ControllerError::Locked { .. }
        | ControllerError::InvalidNodeId(_)
        | ControllerError::NotAVoter { .. }
        | ControllerError::VotersMismatch { .. }
        | ControllerError::OtherCluster { .. }
        | ControllerError::NotInVoters { .. }
        | ControllerError::NoListener => ResponseError::UnknownServerError,
    }
}

pub(crate) fn config_error(e: &ConfigError) -> ResponseError {
    match e {
        ConfigError::Unknown(_) | ConfigError::Invalid { .. } => ResponseError::InvalidConfig,
    }
}

pub(crate) fn group_error(e: &spate_coordinator::GroupError) -> ResponseError {
    use spate_coordinator::GroupError as G;
    match e {
        G::InvalidGroupId => ResponseError::InvalidGroupId,
        G::UnknownMemberId => ResponseError::UnknownMemberId,
        G::MemberIdRequired => ResponseError::MemberIdRequired,
        G::IllegalGeneration => ResponseError::IllegalGeneration,
        G::RebalanceInProgress => ResponseError::RebalanceInProgress,
        G::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        G::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        G::FencedInstanceId => ResponseError::FencedInstanceId,
        G::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        G::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        G::GroupIdNotFound => ResponseError::GroupIdNotFound,
        G::NonEmptyGroup => ResponseError::NonEmptyGroup,
        G::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        G::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        G::StorageError => ResponseError::KafkaStorageError,
        G::NotCoordinator => ResponseError::NotCoordinator,
        G::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
    }
}

/// The wire code of an optional group error (0 for none).
pub(crate) fn group_code(e: Option<spate_coordinator::GroupError>) -> i16 {
    e.map_or(0, |e| group_error(&e).code())
}

pub(crate) fn txn_error(e: &spate_coordinator::txn::TxnError) -> ResponseError {
    use spate_coordinator::txn::TxnError as T;
    match e {
        T::InvalidRequest => ResponseError::InvalidRequest,
        T::InvalidTransactionTimeout => ResponseError::InvalidTransactionTimeout,
        T::NotCoordinator => ResponseError::NotCoordinator,
        T::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
        T::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        T::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        T::ProducerFenced => ResponseError::ProducerFenced,
        T::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        T::InvalidTxnState => ResponseError::InvalidTxnState,
        T::TransactionalIdNotFound => ResponseError::TransactionalIdNotFound,
    }
}

/// The wire code of an optional transaction error (0 for none). Before the version that
/// introduced PRODUCER_FENCED (KIP-588), clients only know INVALID_PRODUCER_EPOCH, as Kafka
/// answers them.
pub(crate) fn txn_code(e: Option<spate_coordinator::txn::TxnError>, knows_fenced: bool) -> i16 {
    match e {
        None => 0,
        Some(spate_coordinator::txn::TxnError::ProducerFenced) if !knows_fenced => {
            ResponseError::InvalidProducerEpoch.code()
        }
        Some(e) => txn_error(&e).code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_controller::PeerFailure;
    use spate_types::NodeId;
    use std::io;

    /// Every controller error, with the code a client must see and the leader it points at.
    fn controller_cases() -> Vec<(ControllerError, ResponseError, Option<NodeId>)> {
        let io = |kind| io::Error::from(kind);
        vec![
            (
                ControllerError::NotLeader {
                    leader: Some(NodeId(2)),
                },
                ResponseError::NotController,
                Some(NodeId(2)),
            ),
            (
                ControllerError::NotLeader { leader: None },
                ResponseError::NotController,
                None,
            ),
            (
                ControllerError::PeerUnreachable {
                    peer: NodeId(3),
                    source: io(io::ErrorKind::ConnectionRefused),
                },
                ResponseError::RequestTimedOut,
                Some(NodeId(3)),
            ),
            (
                ControllerError::PeerTimeout {
                    peer: NodeId(3),
                    timeout_ms: 15_000,
                },
                ResponseError::RequestTimedOut,
                Some(NodeId(3)),
            ),
            (
                ControllerError::PeerFailed {
                    peer: NodeId(1),
                    failure: PeerFailure::Stopped,
                },
                ResponseError::RequestTimedOut,
                Some(NodeId(1)),
            ),
            (
                ControllerError::PeerFailed {
                    peer: NodeId(1),
                    failure: PeerFailure::Storage,
                },
                ResponseError::RequestTimedOut,
                Some(NodeId(1)),
            ),
            (
                ControllerError::ApplyTimeout { index: 7 },
                ResponseError::RequestTimedOut,
                None,
            ),
            (
                ControllerError::Stopped(StopCause::ShutDown),
                ResponseError::NotController,
                None,
            ),
            (
                ControllerError::Stopped(StopCause::Panicked),
                ResponseError::NotController,
                None,
            ),
            (
                ControllerError::OpenTimeout { waited_ms: 10_000 },
                ResponseError::NotController,
                None,
            ),
            (
                ControllerError::Refused {
                    command: "registering this broker",
                    error: MetadataError::InvalidRequest("negative id".into()),
                },
                ResponseError::InvalidRequest,
                None,
            ),
            (
                ControllerError::Io {
                    context: "raft storage".into(),
                    source: io(io::ErrorKind::Other),
                },
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::Locked {
                    path: "/data/controller".into(),
                },
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::InvalidNodeId(NodeId(-1)),
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::NotAVoter {
                    node: NodeId(4),
                    voters: vec![NodeId(1)],
                },
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::VotersMismatch {
                    stored: vec![NodeId(1)],
                    configured: vec![NodeId(2)],
                },
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::NotInVoters {
                    node: NodeId(9),
                    voters: vec![NodeId(1)],
                },
                ResponseError::UnknownServerError,
                None,
            ),
            (
                ControllerError::NoListener,
                ResponseError::UnknownServerError,
                None,
            ),
        ]
    }

    #[test]
    fn controller_errors_map_to_the_code_a_client_can_act_on() {
        for (error, code, leader) in controller_cases() {
            assert_eq!(controller_error(&error), code, "{error:?}");
            assert_eq!(error.leader_hint(), leader, "{error:?}");
        }
    }

    #[test]
    fn only_a_broken_node_answers_unknown_server_error() {
        for (error, _, _) in controller_cases() {
            if controller_error(&error) != ResponseError::UnknownServerError {
                continue;
            }
            assert!(
                matches!(
                    error,
                    ControllerError::Io { .. }
                        | ControllerError::Locked { .. }
                        | ControllerError::InvalidNodeId(_)
                        | ControllerError::NotAVoter { .. }
                        | ControllerError::VotersMismatch { .. }
                        | ControllerError::OtherCluster { .. }
                        | ControllerError::NotInVoters { .. }
                        | ControllerError::NoListener
                ),
                "{error:?} is an operating condition; clients must be able to retry it"
            );
        }
    }

    #[test]
    fn routing_errors_are_retriable_and_name_the_leader() {
        let e = ControllerError::NotLeader {
            leader: Some(NodeId(2)),
        };
        assert!(controller_error(&e).is_retriable());
        assert!(e.to_string().contains("node 2"), "{e}");
        for e in [
            ControllerError::PeerTimeout {
                peer: NodeId(3),
                timeout_ms: 100,
            },
            ControllerError::ApplyTimeout { index: 1 },
        ] {
            assert!(controller_error(&e).is_retriable(), "{e:?}");
        }
    }
}
