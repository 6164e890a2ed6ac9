//! What goes in and out of the transaction coordinator core: requests, answers, errors and
//! the actions the runtime performs for it.

use super::records::TxnRecord;
use super::state::{TxnPartition, TxnState, NO_PRODUCER_EPOCH, NO_PRODUCER_ID};
use crate::core::ReplyId;

/// Identifies a record the runtime stores for the core.
pub type WriteId = u64;

/// The longest transactional id accepted (bytes); longer ones get INVALID_REQUEST. Kafka has
/// no limit below the protocol's 32 767, but every id is held in memory and in each record.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 4096;
/// The most partitions one transaction may hold; more get INVALID_REQUEST.
pub const TXN_PARTITIONS_MAX: usize = 100_000;

/// Broker settings the coordinator obeys (Kafka's names).
#[derive(Clone, Debug)]
pub struct TxnSettings {
    /// `transaction.max.timeout.ms`
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`
    pub id_expiration_ms: i64,
    /// The number of `__transaction_state` partitions.
    pub partition_count: i32,
}

impl Default for TxnSettings {
    fn default() -> Self {
        TxnSettings {
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
            partition_count: 50,
        }
    }
}

/// Why a transaction request was refused; the Kafka front end maps each to its wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("the transactional id is empty or too long, or the request is malformed")]
    InvalidRequest,
    #[error("the transaction timeout is not in 1..=transaction.max.timeout.ms")]
    InvalidTransactionTimeout,
    #[error("this node is not the coordinator of the transactional id")]
    NotCoordinator,
    #[error("the coordinator is loading the transactional id's partition")]
    CoordinatorLoadInProgress,
    #[error("the transaction log could not be written")]
    CoordinatorNotAvailable,
    #[error("another operation on this transactional id is in progress; retry")]
    ConcurrentTransactions,
    #[error("a newer producer with the same transactional id has fenced this one")]
    ProducerFenced,
    #[error("the producer id does not belong to the transactional id")]
    InvalidProducerIdMapping,
    #[error("the request is not valid in the transaction's current state")]
    InvalidTxnState,
    #[error("the transactional id is not known")]
    TransactionalIdNotFound,
}

/// The answer to a request: an error, or the producer id and epoch the client uses next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnAnswer {
    pub error: Option<TxnError>,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl TxnAnswer {
    pub(crate) fn error(e: TxnError) -> TxnAnswer {
        TxnAnswer {
            error: Some(e),
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }

    pub(crate) fn ok(producer_id: i64, producer_epoch: i16) -> TxnAnswer {
        TxnAnswer {
            error: None,
            producer_id,
            producer_epoch,
        }
    }
}

/// Markers to write: one control batch per partition, for this producer id and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerJob {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The epoch the markers carry (bumped past the producer's with transaction version 2).
    pub producer_epoch: i16,
    pub commit: bool,
    /// The leader epoch of the transaction log partition: partitions refuse markers of an
    /// older coordinator.
    pub coordinator_epoch: i32,
    pub partitions: Vec<TxnPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnAction {
    /// Append `records` (one or two: a Complete record and the next transaction's Ongoing
    /// one) in one batch to `__transaction_state` partition `partition`, then call
    /// [`super::TxnCoordinator::stored`] with `write` once they are durable (or failed).
    Store {
        write: WriteId,
        partition: i32,
        records: Vec<TxnRecord>,
    },
    Reply(ReplyId, TxnAnswer),
    /// Write these markers, then call [`super::TxnCoordinator::markers_written`].
    Markers(MarkerJob),
}

/// Why a record was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The partition is not led here any more.
    NotLeader,
    /// Anything else (not enough in-sync replicas, disk): the client may retry.
    Other,
}

/// The caller must allocate a fresh producer id and call again with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedProducerId;

#[derive(Clone, Debug, Default)]
pub struct InitRequest {
    pub transactional_id: String,
    pub timeout_ms: i32,
    /// KIP-360: the producer id and epoch a producer already holds (-1, -1 for none).
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Clone, Debug, Default)]
pub struct AddPartitionsRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<TxnPartition>,
    /// The client uses transaction version 2.
    pub tv2: bool,
}

#[derive(Clone, Debug, Default)]
pub struct EndRequest {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub tv2: bool,
}

/// DescribeTransactions' view of one transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub state: TxnState,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub partitions: Vec<TxnPartition>,
}
