//! Mapping of Spate's typed errors to Kafka error codes. Every `match` is exhaustive, so a new
//! error variant must be given its wire code here.

use kafka_protocol::ResponseError;
use spate_controller::{ControllerError, MetadataError};
use spate_log::{BatchError, BatchErrorKind, ConfigError, LogError};
use spate_replica::ReplicaError;

pub(crate) fn replica_error(e: &ReplicaError) -> ResponseError {
    match e {
        ReplicaError::Log(e) => log_error(e),
        ReplicaError::Closed(_) => ResponseError::NotLeaderOrFollower,
        ReplicaError::Storage { .. } => ResponseError::KafkaStorageError,
        ReplicaError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        ReplicaError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        ReplicaError::NotEnoughReplicasAfterAppend { .. } => {
            ResponseError::NotEnoughReplicasAfterAppend
        }
        ReplicaError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        ReplicaError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
        ReplicaError::NotReplica { .. } => ResponseError::NotLeaderOrFollower,
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
        MetadataError::InvalidRequest(_) => ResponseError::InvalidRequest,
        MetadataError::UnknownBroker { .. } => ResponseError::StaleBrokerEpoch,
        MetadataError::StalePartitionState(_) => ResponseError::FencedLeaderEpoch,
        MetadataError::InvalidIsr(_) => ResponseError::IneligibleReplica,
    }
}

/// A controller failure as a client sees it: retriable unless the node is broken.
pub(crate) fn controller_error(e: &ControllerError) -> ResponseError {
    match e {
        // The quorum is electing or the active controller moved: clients retry (Kafka answers
        // admin requests it cannot forward with NOT_CONTROLLER or REQUEST_TIMED_OUT).
        ControllerError::NotLeader { .. } => ResponseError::NotController,
        ControllerError::Forward { .. } | ControllerError::ApplyTimeout { .. } => {
            ResponseError::RequestTimedOut
        }
        ControllerError::OpenTimeout { .. } | ControllerError::Stopped(_) => {
            ResponseError::NotController
        }
        ControllerError::Io { .. } => ResponseError::KafkaStorageError,
        ControllerError::Raft(_)
        | ControllerError::Locked { .. }
        | ControllerError::InvalidNodeId(_)
        | ControllerError::NotAVoter { .. }
        | ControllerError::VotersMismatch { .. }
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
