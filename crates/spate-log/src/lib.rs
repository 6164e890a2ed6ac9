//! spate-log: the partition log engine.
//!
//! A partition is a directory of segments (log file + sparse offset index + time index) holding
//! Kafka v2 record batches as producers sent them, with offsets and leader epoch assigned by
//! the leader (and, when the topic asks, the append time stamped or the records recompressed), plus small checkpoint files (log start offset, leader epochs,
//! producer state snapshots, cleaner checkpoint, gaps checkpoint). A follower stores its
//! leader's batches unchanged ([`PartitionLog::append_as_follower`]). See [`PartitionLog`] for the contract callers
//! rely on and [`compaction`] for `cleanup.policy=compact`. All file I/O goes through the disk
//! seam ([`spate_types::disk`]) the log is opened on. Transactions (markers, the last stable
//! offset, per-segment transaction indexes of aborts) are in [`txn`] and `txn_index`.

pub mod batch;
pub mod compaction;
pub mod config;
pub mod epoch_cache;
pub mod error;
pub mod fsio;
pub mod log;
pub mod producer_state;
mod segment;
pub mod txn;
pub(crate) mod txn_index;

pub use batch::{
    set_base_offset, set_partition_leader_epoch, validate_batches, validate_replicated_batches,
    BatchError, BatchErrorKind, BatchHeader,
};
pub use compaction::{
    CompactionCommit, CompactionLimits, CompactionOutcome, CompactionPlan, CompactionStats,
    CompactionTrigger, PlannedCompaction, PreparedCompaction, SkipReason, KEY_MAP_ENTRIES_MAX,
    TXN_ENTRIES_MAX,
};
pub use config::{
    CompressionType, ConfigError, ConfigKind, LogConfig, TimestampType, TopicConfigDef,
    TOPIC_CONFIGS,
};
pub use epoch_cache::EpochCache;
pub use error::{FollowerAppendError, LogError};
pub use log::{AppendInfo, AppendOutcome, PartitionLog, ReadPlan, RetentionOutcome, SyncTarget};
pub use producer_state::{BatchMetadata, ProducerEntry, ProducerStateManager};
pub use txn::{AbortedTxn, TxnMarker};

#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod compaction_txn_tests;
#[cfg(test)]
mod disk_tests;
#[cfg(test)]
mod follower_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topic_config_tests;
#[cfg(test)]
mod txn_recovery_tests;
#[cfg(test)]
mod txn_tests;
