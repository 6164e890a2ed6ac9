//! Partition replicas: the leader side of a partition log.
//!
//! A [`Partition`] owns its [`PartitionLog`](spate_log::PartitionLog) behind a short-held mutex
//! (never held across an `.await` or a disk read/fsync), publishes its high watermark and its
//! flushed offset through `watch` channels, and runs one flusher task that group-commits fsyncs:
//! every append that arrives while an fsync is in progress is covered by the next one, so
//! concurrent `acks=all` producers share fsyncs instead of queueing one each.
//!
//! Today every partition is a single-replica leader, so the high watermark is the log end
//! offset. Replication (follower fetch, ISR) will move the high watermark to the minimum the
//! in-sync replicas hold; callers already read it through [`Partition::high_watermark`].
//!
//! [`ReplicaCore`] (in `core`) is the replication protocol of one partition without I/O:
//! leader/follower role, high watermark, follower lag and ISR proposals. The shell that runs it
//! beside the log is still to be wired in.

mod core;
mod manager;
mod partition;

pub use crate::core::{
    AckStatus, AppendRefusal, Command, Event, FetchRefusal, FollowerState, Ignored, LeaderAndIsr,
    Outcome, PendingIsrChange, ReplicaCore, ReplicaSettings, Role, Step,
};
pub use manager::ReplicaManager;
pub use partition::{FlushPolicy, Partition, PartitionRead, ReplicaError};

#[cfg(test)]
mod core_tests;
