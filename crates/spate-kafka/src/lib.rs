//! The Kafka front end: listener, connection tasks, one module per Kafka API.
//!
//! Requests on one connection are handled in order up to the point where they would wait
//! (an `acks=all` fsync, a fetch in long poll); the waiting part is queued and responses are
//! written strictly in request order, so a client may pipeline up to
//! [`limits::IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`](spate_types::limits) requests.
//!
//! Messages are the `kafka-protocol` crate's, generated from Kafka's own schemas. Each API
//! module states the versions it implements (`VERSIONS`); ApiVersions is derived from those
//! statements (see [`apis::SUPPORTED`]).

pub mod apis;
mod broker;
mod configs;
mod connection;
mod errors;
mod groups;
mod listed_brokers;
mod markers;
mod peers;
pub mod planted;
mod probe;
mod topics;
mod txns;

pub use broker::{shutdown_signalled, Broker, BrokerConfig, GroupConfig, TxnConfig};
pub use configs::effective_log_defaults;
pub use connection::serve;
pub use groups::{group_lag, start_groups_if_present, GroupLag};
pub use txns::start_txns_if_present;
