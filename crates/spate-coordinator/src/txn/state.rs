//! One transactional id's state, and the transitions Kafka's coordinator allows between them.
//!
//! [`TxnMetadata`] is what the `__transaction_state` log stores for a transactional id. The
//! core never edits it in place: a transition builds the next metadata, the record is stored,
//! and only then does the stored value replace the current one, so a failed write leaves
//! nothing half-applied (a retry computes the same transition again, the same bumped epoch
//! included).

use std::collections::BTreeSet;

/// Kafka's `RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;

/// A (topic, partition) in a transaction.
pub type TxnPartition = (String, i32);

/// Kafka's `TransactionState`, with its wire id (stored in the log) and name (DescribeTransactions,
/// ListTransactions filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    /// Expired; about to be removed (a tombstone is being written).
    Dead,
    /// Bumping the epoch to fence the producer before aborting (never stored).
    PrepareEpochFence,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.id() == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Kafka's `validPreviousStates`: whether `self` may follow `from`. Transaction version 2
    /// lets an abort start from a state with no transaction (the client may not know whether
    /// one is open).
    pub fn may_follow(self, from: TxnState) -> bool {
        use TxnState::*;
        match self {
            Empty => matches!(from, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(from, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => from == Ongoing,
            PrepareAbort => matches!(
                from,
                Ongoing | PrepareEpochFence | Empty | CompleteCommit | CompleteAbort
            ),
            CompleteCommit => from == PrepareCommit,
            CompleteAbort => from == PrepareAbort,
            Dead => matches!(from, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => from == Ongoing,
        }
    }

    /// No transaction is open or ending: the id may expire, and a new transaction may start.
    pub fn is_idle(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

/// What the log stores for one transactional id (Kafka's `TransactionMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id before the last rotation (transaction version 2 epoch overflow), so a
    /// retried EndTxn from before the rotation is still recognised.
    pub prev_producer_id: i64,
    /// The producer id an ending transaction rotates to (epoch overflow), or -1.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, or -1: a producer retrying an InitProducerId or (v2) an
    /// EndTxn whose answer it lost still holds it.
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TxnPartition>,
    /// When the first partition was added, or -1.
    pub start_ms: i64,
    pub last_update_ms: i64,
    /// The transaction version the client last used: 0 (markers at the producer's epoch) or
    /// 2 (KIP-890: every EndTxn bumps the epoch). Only version 1 values store it.
    pub client_version: i16,
}

impl TxnMetadata {
    /// A transactional id seen for the first time, with a freshly allocated producer id.
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
        TxnMetadata {
            producer_id,
            prev_producer_id: NO_PRODUCER_ID,
            next_producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            last_producer_epoch: NO_PRODUCER_EPOCH,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms,
            client_version: 0,
        }
    }

    /// Kafka's `isEpochExhausted`: the last epoch a producer may be handed is `i16::MAX - 1`,
    /// so that a fence can still bump it once.
    pub fn epoch_exhausted(epoch: i16) -> bool {
        epoch >= i16::MAX - 1
    }

    pub fn uses_epoch_bump(&self) -> bool {
        self.client_version >= 2
    }
}
