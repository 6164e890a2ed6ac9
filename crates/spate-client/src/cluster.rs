//! Connections to the brokers of one cluster, opened on first use, all bounded by one
//! deadline: what a command-line tool or an admin operation needs.
//!
//! A connection left part way through a request (see [`Connection::is_usable`]) is dropped
//! and reopened on next use. At most [`CONNECTIONS_MAX`] connections are kept open; beyond
//! that an idle one is closed, since a Metadata response decides how many brokers there are.

use crate::connection::{ClientConfig, Connection, Deadline};
use crate::error::ClientError;
use kafka_protocol::protocol::Request;
use std::collections::BTreeMap;

/// The most connections one [`Cluster`] keeps open.
pub const CONNECTIONS_MAX: usize = 64;
const _: () = assert!(
    CONNECTIONS_MAX >= 2,
    "a bootstrap and a coordinator at least"
);

pub struct Cluster {
    bootstrap: String,
    config: ClientConfig,
    deadline: Deadline,
    connections: BTreeMap<String, Connection>,
}

impl Cluster {
    /// A cluster reached through `bootstrap` (`host:port`); nothing is opened yet.
    pub fn new(bootstrap: impl Into<String>, config: ClientConfig, deadline: Deadline) -> Cluster {
        Cluster {
            bootstrap: bootstrap.into(),
            config,
            deadline,
            connections: BTreeMap::new(),
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// The connection to `addr`, opened (or reopened) if needed.
    pub async fn connection(&mut self, addr: &str) -> Result<&mut Connection, ClientError> {
        if self.connections.get(addr).is_some_and(|c| !c.is_usable()) {
            self.connections.remove(addr);
        }
        if !self.connections.contains_key(addr) {
            let connection = Connection::connect(addr, &self.config, self.deadline).await?;
            if self.connections.len() >= CONNECTIONS_MAX {
                self.connections.pop_first();
            }
            self.connections.insert(addr.to_owned(), connection);
        }
        Ok(self.connections.get_mut(addr).expect("inserted just above"))
    }

    /// Closes the connection to `addr`.
    pub fn forget(&mut self, addr: &str) {
        self.connections.remove(addr);
    }

    /// Sends the request `build` makes for the negotiated version to `addr`; returns the version
    /// and the response. A connection the call leaves unusable is dropped.
    pub async fn send<R: Request>(
        &mut self,
        addr: &str,
        build: impl FnOnce(i16) -> R,
    ) -> Result<(i16, R::Response), ClientError> {
        let deadline = self.deadline;
        let connection = self.connection(addr).await?;
        let version = connection.version::<R>()?;
        let result = connection.send_at(&build(version), version, deadline).await;
        if !connection.is_usable() {
            self.forget(addr);
        }
        result.map(|response| (version, response))
    }

    /// The negotiated version of `R` on `addr` (connecting if needed).
    pub async fn version<R: Request>(&mut self, addr: &str) -> Result<i16, ClientError> {
        self.connection(addr).await?.version::<R>()
    }
}

/// `host:port` as a connect address (IPv6 literals get brackets).
pub fn address(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(address("127.0.0.1", 9092), "127.0.0.1:9092");
        assert_eq!(address("::1", 9092), "[::1]:9092");
        assert_eq!(address("[::1]", 9092), "[::1]:9092");
    }
}
