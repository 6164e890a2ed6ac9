//! Partition replicas: Kafka-style leader/follower replication of each partition hosted here.
//!
//! - [`ReplicaCore`] (`core.rs`) is the replication protocol of one partition without I/O:
//!   leader/follower role, the high watermark over the ISR's fsynced offsets, follower lag and
//!   ISR proposals.
//! - [`Partition`] (`partition.rs`) is its shell: it owns the log, runs the flusher that
//!   group-commits fsyncs, and offers the front end named verbs (append, wait for `acks=all`,
//!   read for a consumer or a follower, append from the leader, truncate); its transactional
//!   verbs (markers, the last stable offset, KIP-890 verification guards) are in
//!   `partition/transactions.rs`.
//! - [`ReplicaManager`] (`manager.rs`) owns the set of hosted partitions, starts and stops
//!   their fetchers, and queues leaders' ISR proposals for the controller.
//! - The fetcher (`fetcher.rs`) is the follower side: one task per leader, truncating with
//!   OffsetForLeaderEpoch, then fetching with the Fetch API as a replica.

mod core;
mod damage;
mod fetcher;
mod health;
mod manager;
mod partition;
pub mod planted;

pub use crate::core::{
    AckStatus, AppendRefusal, Command, Event, FetchRefusal, FollowerState, Ignored, LeaderAndIsr,
    Outcome, PendingIsrChange, ReplicaCore, ReplicaSettings, Role, Step,
};
pub use fetcher::FetcherSettings;
pub use health::StorageHealth;
pub use manager::{
    IsrAnswer, IsrProposal, ReplicaManager, ReplicationSettings, PARTITION_METADATA,
};
pub use partition::{
    AppendReceipt, FlushFailure, FlushPolicy, FollowerFetch, FollowerPosition, Partition,
    PartitionRead, ReplicaError, HIGH_WATERMARK_FILE,
};

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod manager_tests;
#[cfg(test)]
mod transactions_tests;
