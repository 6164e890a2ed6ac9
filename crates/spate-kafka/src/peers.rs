//! Requests this broker sends to other brokers of its cluster (transaction markers to
//! partition leaders, transaction verification to coordinators): one connection per peer,
//! opened on demand to the address the metadata image has for it, reopened after a failure.
//! One request at a time per peer: a caller holds the peer's connection for its round trip.
//!
//! A round trip is bounded by `request.timeout.ms`, and ends sooner when the metadata image
//! says the peer is gone: fenced by the controller (its session expired: it is dead, stopped or
//! cut off, and its leaderships have moved) or registered again (it restarted, so the old
//! connection leads nowhere). Without that, a request sent to a peer that died with it in
//! flight would hold every caller queued behind it (the coordinator's markers, the leaders'
//! verifications) for the whole timeout, after the cluster had already moved on. A request to
//! a peer already fenced is not sent.

use crate::broker::Broker;
use kafka_protocol::protocol::Request;
use spate_client::{ClientConfig, ClientError, Connection, Deadline};
use spate_controller::MetadataImage;
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

pub(crate) struct Peers {
    client: ClientConfig,
    /// `request.timeout.ms`
    timeout_ms: u64,
    connections: Mutex<BTreeMap<NodeId, Arc<Mutex<Option<Connection>>>>>,
}

/// What the image says of a peer: its broker epoch (a restart registers it again) and whether
/// it is fenced.
fn registration(image: &MetadataImage, node: NodeId) -> (Option<u64>, bool) {
    (
        image.broker_epochs.get(&node).copied(),
        image.fenced.contains(&node),
    )
}

fn unreachable(addr: String, kind: std::io::ErrorKind, why: &str) -> ClientError {
    ClientError::Unreachable {
        addr,
        error: std::io::Error::new(kind, why.to_owned()),
    }
}

impl Peers {
    pub(crate) fn new(local: NodeId, timeout_ms: u64) -> Peers {
        Peers {
            client: ClientConfig::new(format!("spate-broker-{local}")),
            timeout_ms,
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sends `request` to `node` at the highest version both sides support; fails at once if
    /// the image has the peer fenced, and as soon as it has it fenced or registered again.
    pub(crate) async fn send<R: Request>(
        &self,
        broker: &Broker,
        node: NodeId,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let mut images = broker.controller.subscribe();
        let (address, at_start) = {
            let image = images.borrow_and_update();
            let address = image
                .brokers
                .get(&node)
                .map(|e| spate_client::address(&e.host, i32::from(e.port)));
            (address, registration(&image, node))
        };
        let address = address.ok_or_else(|| {
            unreachable(
                format!("node {node}"),
                std::io::ErrorKind::NotFound,
                "no address known",
            )
        })?;
        if at_start.1 {
            return Err(unreachable(
                address,
                std::io::ErrorKind::NotConnected,
                "fenced by the controller",
            ));
        }
        let gone = async {
            loop {
                if images.changed().await.is_err() {
                    // The controller is stopping: the node is shutting down.
                    return std::future::pending().await;
                }
                let now = registration(&images.borrow_and_update(), node);
                if now != at_start {
                    return now;
                }
            }
        };
        // Biased (deterministic under simulation): the peer's departure first. A round trip
        // dropped half way poisons its connection, which the next caller replaces.
        tokio::select! {
            biased;
            (_, fenced) = gone => Err(unreachable(
                address,
                std::io::ErrorKind::ConnectionAborted,
                if fenced { "fenced by the controller" } else { "registered again (restarted)" },
            )),
            response = self.round_trip(broker, node, &address, request) => response,
        }
    }

    async fn round_trip<R: Request>(
        &self,
        broker: &Broker,
        node: NodeId,
        address: &str,
        request: &R,
    ) -> Result<R::Response, ClientError> {
        let slot = self
            .connections
            .lock()
            .await
            .entry(node)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let deadline = Deadline::after_ms(self.timeout_ms);
        if !slot
            .as_ref()
            .is_some_and(|c| c.is_usable() && c.addr() == address)
        {
            *slot = Some(
                Connection::connect_via(
                    broker.seams().net.as_ref(),
                    address,
                    &self.client,
                    deadline,
                )
                .await?,
            );
        }
        let Some(connection) = slot.as_mut() else {
            return Err(unreachable(
                address.to_owned(),
                std::io::ErrorKind::NotConnected,
                "no connection",
            ));
        };
        let response = connection.send(request, deadline).await;
        if response.is_err() {
            *slot = None;
        }
        response
    }
}
