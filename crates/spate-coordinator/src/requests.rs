//! The group coordinator's requests, answers and settings: what the runtime hands the core
//! ([`crate::core::GroupCoordinator`]) and what comes back.

use crate::error::GroupError;
use crate::group::GroupState;
use crate::records::OffsetsRecord;
use bytes::Bytes;

/// Identifies a waiting JoinGroup or SyncGroup request to the runtime.
pub type ReplyId = u64;

/// Broker settings the coordinator obeys (Kafka's names).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i64,
    /// `group.max.size`
    pub max_size: usize,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member is given an id and must rejoin with it (KIP-394).
    pub require_known_member_id: bool,
    /// JoinGroup v9+: a static leader rejoining a stable group may skip the assignment.
    pub supports_skip_assignment: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only.
    pub members: Vec<JoinedMember>,
    pub skip_assignment: bool,
}

impl JoinResponse {
    pub(crate) fn error(error: GroupError, member_id: String) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation_id: -1,
            member_id,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncResponse {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub(crate) fn error(error: GroupError) -> SyncResponse {
        SyncResponse {
            error: Some(error),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct LeaveRequest {
    pub group_id: String,
    /// (member id, group.instance.id); v3+ may name several.
    pub members: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveResponse {
    pub error: Option<GroupError>,
    pub members: Vec<(String, Option<String>, Option<GroupError>)>,
}

#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1: a consumer that stores offsets without group membership (`assign()`).
    pub generation_id: i32,
    pub member_id: String,
    pub instance_id: Option<String>,
    /// (topic, partition, offset, leader epoch, metadata)
    pub offsets: Vec<(String, i32, i64, i32, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Where the record that set it stands in the offsets log, as a count of the offset
    /// records this core applied or staged (live appends and replays both run in log order).
    /// A transactional offset commit whose transaction commits after a plain commit of the
    /// same partition was appended before it does not replace it (Kafka compares the records'
    /// log offsets the same way).
    pub position: u64,
}

/// One committed offset, as the lag metrics read it ([`crate::core::GroupCoordinator::all_offsets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The group commits its offsets inside transactions
    /// ([`crate::core::GroupCoordinator::is_exactly_once`]): its consumers read with
    /// `isolation.level=read_committed`, up to the partition's last stable offset.
    pub exactly_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Join(ReplyId, JoinResponse),
    Sync(ReplyId, SyncResponse),
    /// Append to the offsets log (group metadata, or offset tombstones).
    Store(OffsetsRecord),
}
