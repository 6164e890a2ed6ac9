//! Requests this broker sends to other brokers of its cluster (transaction markers to
//! partition leaders, transaction verification to coordinators): one connection per peer,
//! opened on demand to the address the metadata image has for it, reopened after a failure.
//! One request at a time per peer: a caller holds the peer's connection for its round trip.

use crate::broker::Broker;
use kafka_protocol::protocol::Request;
use spate_client::{ClientConfig, ClientError, Connection, Deadline};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// Longest one round trip to a peer may take.
pub(crate) const PEER_REQUEST_TIMEOUT_MS: u64 = 30_000;

pub(crate) struct Peers {
    client: ClientConfig,
    connections: Mutex<BTreeMap<NodeId, Arc<Mutex<Option<Connection>>>>>,
}

impl Peers {
    pub(crate) fn new(local: NodeId) -> Peers {
        Peers {
            client: ClientConfig::new(format!("spate-broker-{local}")),
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sends `request` to `node` at the highest version both sides support.
    pub(crate) async fn send<R: Request>(
        &self,
        broker: &Broker,
        node: NodeId,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let address = broker
            .image()
            .brokers
            .get(&node)
            .map(|e| spate_client::address(&e.host, i32::from(e.port)))
            .ok_or_else(|| ClientError::Unreachable {
                addr: format!("node {node}"),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no address known"),
            })?;
        let slot = self
            .connections
            .lock()
            .await
            .entry(node)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let deadline = Deadline::after_ms(PEER_REQUEST_TIMEOUT_MS);
        if !slot
            .as_ref()
            .is_some_and(|c| c.is_usable() && c.addr() == address)
        {
            *slot = Some(
                Connection::connect_via(
                    broker.seams().net.as_ref(),
                    &address,
                    &self.client,
                    deadline,
                )
                .await?,
            );
        }
        let Some(connection) = slot.as_mut() else {
            return Err(ClientError::Unreachable {
                addr: address,
                error: std::io::Error::new(std::io::ErrorKind::NotConnected, "no connection"),
            });
        };
        let response = connection.send(request, deadline).await;
        if response.is_err() {
            *slot = None;
        }
        response
    }
}
