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
