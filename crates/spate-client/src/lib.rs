//! A Kafka protocol client, shared by the `spate` CLI, the follower fetcher (Fetch with a
//! replica id, OffsetForLeaderEpoch) and, later, cross-cluster replication. It speaks to any
//! Kafka-compatible broker.
//!
//! - [`Connection`]: one broker. Negotiates versions with ApiVersions at connect, then sends
//!   any `kafka-protocol` request type at the highest version both sides support
//!   ([`Connection::send`]), or at a version the caller picked ([`Connection::version_at_most`]
//!   and [`Connection::send_at`]).
//! - [`Cluster`]: connections to the brokers of one cluster, opened on demand, all bounded by
//!   one [`Deadline`] (what a CLI command needs).
//! - [`codec`]: framing without I/O, and the limits ([`RESPONSE_BYTES_MAX`],
//!   [`REQUEST_BYTES_MAX`], [`READ_BUFFER_RETAIN_BYTES_MAX`]).
//! - [`ClientError`]: every failure, typed; Kafka error codes become [`ClientError::Kafka`].
//!
//! Guarantees: no response frame is read (or allocated for) beyond [`RESPONSE_BYTES_MAX`];
//! every call ends by its deadline; a connection left part way through a request by an error
//! or a cancellation refuses further use ([`ClientError::Poisoned`]).

pub mod cluster;
pub mod codec;
pub mod connection;
#[cfg(test)]
mod connection_tests;
pub mod error;

pub use cluster::{address, Cluster, CONNECTIONS_MAX};
pub use codec::{
    client_versions, pick_version, READ_BUFFER_RETAIN_BYTES_MAX, REQUEST_BYTES_MAX,
    RESPONSE_BYTES_MAX,
};
pub use connection::{ClientConfig, Connection, Deadline, SOFTWARE_NAME, SOFTWARE_VERSION};
pub use error::{check, check_message, error_name, ClientError, ProtocolError, Waiting};
