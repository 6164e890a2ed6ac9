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

/// The most bootstrap addresses one [`Cluster`] takes.
pub const BOOTSTRAP_ADDRESSES_MAX: usize = 64;

pub struct Cluster {
    /// Never empty: `host:port` addresses, tried in order.
    bootstraps: Vec<String>,
    /// The bootstrap address that last answered.
    current: usize,
    config: ClientConfig,
    deadline: Deadline,
    connections: BTreeMap<String, Connection>,
}

impl Cluster {
    /// A cluster reached through `bootstrap`: one `host:port`, or several separated by commas
    /// as Kafka's tools take them (`bootstrap.servers`); nothing is opened yet. Empty entries
    /// are ignored, and entries past [`BOOTSTRAP_ADDRESSES_MAX`] too.
    pub fn new(bootstrap: &str, config: ClientConfig, deadline: Deadline) -> Cluster {
        let mut bootstraps: Vec<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .take(BOOTSTRAP_ADDRESSES_MAX)
            .map(str::to_owned)
            .collect();
        if bootstraps.is_empty() {
            // Connecting to it fails with a clear error naming what was given.
            bootstraps.push(bootstrap.to_owned());
        }
        Cluster {
            bootstraps,
            current: 0,
            config,
            deadline,
            connections: BTreeMap::new(),
        }
    }

    /// A bootstrap address that accepts a connection: the one that answered last, else the
    /// others in order. Fails with the last address's error when none connects.
    pub async fn bootstrap(&mut self) -> Result<String, ClientError> {
        let count = self.bootstraps.len();
        let mut last_error = None;
        for i in 0..count {
            let index = (self.current + i) % count;
            let addr = self.bootstraps[index].clone();
            match self.connection(&addr).await {
                Ok(_) => {
                    self.current = index;
                    return Ok(addr);
                }
                Err(e) => {
                    tracing::debug!(bootstrap = %addr, error = %e, "bootstrap address unreachable");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("at least one bootstrap address"))
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
