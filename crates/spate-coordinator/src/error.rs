//! Why a group request was refused; the Kafka front end maps each to its wire code.

/// Group protocol errors, named after the Kafka error codes they become.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the group id is empty")]
    InvalidGroupId,
    #[error("the member id is not known to the group")]
    UnknownMemberId,
    #[error("a new member must rejoin with the member id it was given")]
    MemberIdRequired,
    #[error("the generation id is not the group's current generation")]
    IllegalGeneration,
    #[error("the group is rebalancing; rejoin")]
    RebalanceInProgress,
    #[error("the protocol type or protocols are not compatible with the group's")]
    InconsistentGroupProtocol,
    #[error(
        "the session timeout is outside group.min.session.timeout.ms..group.max.session.timeout.ms"
    )]
    InvalidSessionTimeout,
    #[error("another member with this group.instance.id has replaced this one")]
    FencedInstanceId,
    #[error("the group has reached group.max.size members")]
    GroupMaxSizeReached,
    #[error("the coordinator is shutting down or the group is being removed")]
    CoordinatorNotAvailable,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group's members are subscribed to this topic")]
    GroupSubscribedToTopic,
    #[error("the commit metadata is longer than offset.metadata.max.bytes")]
    OffsetMetadataTooLarge,
    #[error("the offsets log could not be written")]
    StorageError,
    /// This node does not lead the group's `__consumer_offsets` partition (any more).
    #[error("this node is not the coordinator of the group")]
    NotCoordinator,
    /// This node is loading the group's partition after becoming its leader.
    #[error("the coordinator is loading the group's partition")]
    CoordinatorLoadInProgress,
}
