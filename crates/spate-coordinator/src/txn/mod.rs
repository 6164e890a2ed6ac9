//! The transaction coordinator (Kafka's exactly-once transactions, KIP-98, with KIP-890's
//! server-side defence).
//!
//! - [`state`]: one transactional id's metadata and the transitions Kafka allows.
//! - [`core`]: the state machine without I/O: requests and the clock come in as calls,
//!   records to store, markers to write and answers come out as actions.
//! - `transitions`: what each request or timeout makes of an id's stored state (pure).
//! - [`records`]: the `__transaction_state` record format (Kafka's), so a transactional id's
//!   state lives in an internal compacted log and fails over with partition leadership.
//! - [`service`]: the task that owns the core, stores its records durably, has markers
//!   written, and loads the partitions this node leads.

pub mod core;
pub mod messages;
pub mod records;
pub mod service;
pub mod state;
mod transitions;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod service_tests;

pub use self::core::TxnCoordinator;
pub use messages::{
    AddPartitionsRequest, EndRequest, InitRequest, MarkerJob, NeedProducerId, StoreFailure,
    TxnAction, TxnAnswer, TxnDescription, TxnError, TxnSettings, WriteId,
    TRANSACTIONAL_ID_BYTES_MAX, TXN_PARTITIONS_MAX,
};
pub use records::TxnRecord;
pub use service::{MarkerWriter, TxnService};
pub use state::{TxnMetadata, TxnPartition, TxnState};

/// Kafka's name for the internal transaction log topic.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
