//! Raft transport. Today it only routes to Raft nodes in this process — in a single-node cluster
//! that is this node itself, which openraft never actually calls. Any other peer gets a clear
//! `Unreachable` error, so a membership that names a remote voter fails loudly instead of
//! silently. The network milestone replaces [`Router`] lookups with real connections; nothing
//! else changes, because this is already the path every Raft message takes.

use super::state_machine::Snapshot;
use super::{Raft, RaftNodeId, TypeConfig, Vote};
use crate::metadata::MetadataImage;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

/// Raft nodes reachable in this process, by Raft node id.
#[derive(Clone, Default)]
pub(crate) struct Router {
    nodes: Arc<RwLock<BTreeMap<RaftNodeId, Raft>>>,
}

impl Router {
    pub(crate) fn register(&self, id: RaftNodeId, raft: Raft) {
        if let Ok(mut nodes) = self.nodes.write() {
            nodes.insert(id, raft);
        }
    }

    /// Drops the handle, breaking the `Raft -> network -> Router -> Raft` cycle on shutdown.
    pub(crate) fn unregister(&self, id: RaftNodeId) {
        if let Ok(mut nodes) = self.nodes.write() {
            nodes.remove(&id);
        }
    }

    fn get(&self, target: RaftNodeId) -> Result<Raft, Unreachable<TypeConfig>> {
        self.nodes
            .read()
            .ok()
            .and_then(|nodes| nodes.get(&target).cloned())
            .ok_or_else(|| {
                Unreachable::from_string(format!(
                "controller node {target} is not reachable: this build of spate only routes Raft \
                 messages between controllers in the same process (no network transport yet)"
            ))
            })
    }
}

pub(crate) struct NetworkFactory {
    router: Router,
}

impl NetworkFactory {
    pub(crate) fn new(router: Router) -> Self {
        Self { router }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftNodeId, _node: &BasicNode) -> Self::Network {
        Connection {
            target,
            router: self.router.clone(),
        }
    }
}

/// A client for one target node. Looks the target up on every call, so a node that registers
/// later becomes reachable without reconnecting.
pub(crate) struct Connection {
    target: RaftNodeId,
    router: Router,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = MetadataImage;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.pre_vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(unreachable(e)))
    }
}
