//! The crate's one error type.
//!
//! Every variant carries what the Kafka front end needs to pick a wire error code; the front end
//! maps them with an exhaustive `match` (see the table on [`LogError`]).

use crate::batch::BatchError;
use spate_types::{Offset, ProducerId};
use std::io;
use std::path::PathBuf;

/// Errors of the partition log.
///
/// | variant | Kafka error |
/// | --- | --- |
/// | `Batch(e)` | see [`BatchError::kind`] |
/// | `OutOfOrderSequence` | OUT_OF_ORDER_SEQUENCE_NUMBER |
/// | `InvalidProducerEpoch` | INVALID_PRODUCER_EPOCH |
/// | `InvalidTxnState` | INVALID_TXN_STATE |
/// | `TransactionCoordinatorFenced` | TRANSACTION_COORDINATOR_FENCED |
/// | `OffsetOutOfRange` | OFFSET_OUT_OF_RANGE |
/// | `Corrupt` | CORRUPT_MESSAGE (on fetch: KAFKA_STORAGE_ERROR is also reasonable) |
/// | `Io` | KAFKA_STORAGE_ERROR |
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid record batch: {0}")]
    Batch(#[from] BatchError),
    #[error("out of order sequence for producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: ProducerId,
        expected: i32,
        got: i32,
    },
    #[error("producer epoch is older than the current epoch of its producer id")]
    InvalidProducerEpoch,
    /// A non-transactional write from a producer id whose transaction is open.
    #[error("producer {producer_id} has an open transaction: its writes must be transactional")]
    InvalidTxnState { producer_id: ProducerId },
    /// A transaction marker from a coordinator older than the one that wrote the producer's
    /// last marker.
    #[error("marker for producer {producer_id} from coordinator epoch {coordinator_epoch}, older than {current}")]
    TransactionCoordinatorFenced {
        producer_id: ProducerId,
        coordinator_epoch: i32,
        current: i32,
    },
    #[error("record timestamp {timestamp} is more than {max_difference} ms from the broker's clock ({now_ms})")]
    InvalidTimestamp {
        timestamp: i64,
        now_ms: i64,
        max_difference: i64,
    },
    #[error("offset {requested} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    #[error("corrupt log data in {path:?} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("log i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Errors of [`PartitionLog::append_as_follower`](crate::PartitionLog::append_as_follower).
///
/// Kept apart from [`LogError`] because they never reach a Kafka client: the follower's
/// fetcher handles them (a `NonMonotonicAppend` is a bug in the fetcher, which must truncate
/// before it appends; `OffsetOverflow` and a `Log` error are the fetched data or the local
/// disk).
#[derive(Debug, thiserror::Error)]
pub enum FollowerAppendError {
    /// A batch's base offset is below the log end, or below the end of the batch before it in
    /// the same record set. Nothing was written.
    #[error("follower append at offset {got} but the log needs at least {expected_at_least}")]
    NonMonotonicAppend {
        expected_at_least: Offset,
        got: Offset,
    },
    /// A batch's offsets run past `i64::MAX`: the leader sent garbage. Nothing was written.
    #[error("batch at offset {base_offset} with last offset delta {last_offset_delta} overflows")]
    OffsetOverflow {
        base_offset: Offset,
        last_offset_delta: i32,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<BatchError> for FollowerAppendError {
    fn from(e: BatchError) -> Self {
        FollowerAppendError::Log(LogError::Batch(e))
    }
}

impl From<std::io::Error> for FollowerAppendError {
    fn from(e: std::io::Error) -> Self {
        FollowerAppendError::Log(LogError::Io(e))
    }
}
