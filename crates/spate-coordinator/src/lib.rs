//! spate-coordinator: the consumer group coordinator (Kafka's classic group protocol).
//!
//! - [`group`] and [`core`]: the decision-making core without I/O. Requests and the clock come
//!   in as calls with `now_ms`; what to answer and what to persist comes out as [`Action`]s, so
//!   every transition and timeout is tested without a runtime.
//! - [`records`]: the `__consumer_offsets` record format (Kafka's key/value schemas), so group
//!   metadata and committed offsets live in an internal compacted log and fail over with
//!   partition leadership once partitions replicate.
//! - [`service`]: the task that owns the core, appends its records to the offsets log, waits
//!   for their fsync before acknowledging a commit, and replays the log at start.

pub mod core;
pub mod error;
pub mod group;
mod membership;
pub mod planted;
pub mod records;
pub mod requests;
pub mod service;
pub mod txn;
pub mod txn_offsets;

pub use crate::core::{
    Action, CommitRequest, CommittedOffset, GroupCoordinator, GroupDescription, GroupListing,
    GroupSettings, HeartbeatRequest, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse,
    MemberDescription, ReplyId, SyncRequest, SyncResponse,
};
pub use error::GroupError;
pub use group::GroupState;
pub use records::partition_for;
pub use service::{CommitOutcome, Coordinator, TxnProducer, OFFSETS_TOPIC};

#[cfg(test)]
mod service_tests;
