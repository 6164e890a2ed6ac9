//! spate-log: the partition log engine.
//!
//! A partition is a directory of segments (log file + sparse offset index + time index) holding
//! Kafka v2 record batches exactly as producers sent them, with offsets and leader epoch
//! assigned by the leader. See [`PartitionLog`] for the contract callers rely on.

pub mod batch;
pub mod config;
pub mod epoch_cache;
pub mod error;
mod fsio;
pub mod producer_state;

pub use batch::{validate_batches, BatchError, BatchErrorKind, BatchHeader};
pub use config::{ConfigError, ConfigKind, LogConfig, TopicConfigDef, TOPIC_CONFIGS};
pub use error::LogError;
