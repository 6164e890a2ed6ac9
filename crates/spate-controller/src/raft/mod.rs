//! The openraft glue: type configuration, Raft timing, and node id conversion.
//!
//! Nothing from openraft leaves this crate. Raft node ids are `u64`; Spate's `NodeId(i32)` maps
//! onto them one-to-one for the non-negative ids Kafka allows.

pub(crate) mod log_store;
pub(crate) mod network;
pub(crate) mod runtime;
pub(crate) mod state_machine;

use crate::error::{Halted, StopCause};
use crate::metadata::{MetadataCommand, MetadataOutcome};
use spate_types::NodeId;

openraft::declare_raft_types!(
    /// Raft types of the controller quorum.
    pub(crate) TypeConfig:
        D = MetadataCommand,
        // `None` for blank and membership entries, which carry no command.
        R = Option<MetadataOutcome>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>,
        // Tokio, with election timeouts a simulation seed reproduces.
        AsyncRuntime = runtime::SpateRuntime,
);

pub(crate) type RaftNodeId = u64;
pub(crate) type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub(crate) type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub(crate) type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
pub(crate) type LogId = openraft::LogId<LeaderId>;
pub(crate) type StoredMembership =
    openraft::StoredMembership<LeaderId, RaftNodeId, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<LeaderId, RaftNodeId, openraft::BasicNode>;
pub(crate) type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// Leader heartbeat period. Openraft ticks every `heartbeat_interval * 13 / 64` ms (about 20 ms
/// here), which is the only idle wake-up; a single voter sends no heartbeats at all.
pub(crate) const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Election timeouts. Openraft's followers refuse votes for `ELECTION_TIMEOUT_MAX_MS` after they
/// last heard from the leader (its lease), and a candidate whose timer fires inside the lease
/// waits for its next timer: a dead active controller is replaced after the lease plus up to
/// one more timeout. With 1–2 s (close to KRaft's `controller.quorum.election.timeout.ms`
/// 1000) that was 3.1 s after a kill -9, most of a failover that must stay within 3 s when the
/// controller dies with a partition leader; with 0.5–1 s it is 1–2 s. The heartbeat interval
/// stays well below the minimum, so a leader busy for a few heartbeats keeps its place. A
/// restarted single voter does not wait for them: `Controller::open` triggers its election at
/// once.
pub(crate) const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
pub(crate) const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;

const _: () = assert!(HEARTBEAT_INTERVAL_MS < ELECTION_TIMEOUT_MIN_MS);
const _: () = assert!(ELECTION_TIMEOUT_MIN_MS < ELECTION_TIMEOUT_MAX_MS);

/// `None` for negative ids, which Kafka never assigns to a node.
pub(crate) fn raft_id(node: NodeId) -> Option<RaftNodeId> {
    u64::try_from(node.0).ok()
}

/// `None` for ids that did not come from [`raft_id`].
pub(crate) fn spate_id(id: RaftNodeId) -> Option<NodeId> {
    i32::try_from(id).ok().map(NodeId)
}

/// What a fatal Raft error means to this crate: the core stopped (on request or after a
/// panic), or its storage failed.
pub(crate) fn halted(fatal: openraft::errors::Fatal<TypeConfig>) -> Halted {
    match fatal {
        openraft::errors::Fatal::StorageError(e) => Halted::Storage(std::io::Error::from(e)),
        openraft::errors::Fatal::Panicked => Halted::Stopped(StopCause::Panicked),
        openraft::errors::Fatal::Stopped => Halted::Stopped(StopCause::ShutDown),
    }
}

pub(crate) fn io_err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{context}: {e}"))
}

/// openraft's own conformance suite for `RaftLogStorage` + `RaftStateMachine`, run against the
/// file-backed stores, each test in a fresh directory.
#[cfg(test)]
mod conformance {
    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::TypeConfig;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::{ErrorSubject, ErrorVerb, StorageError};
    use spate_types::disk::{Disk, MemoryDisk, OsDisk};
    use std::path::Path;
    use std::sync::Arc;

    /// Builds each store on the operating system's disk (in a temp dir) or on a fresh memory
    /// disk.
    struct Builder {
        memory: bool,
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, Option<tempfile::TempDir>> for Builder {
        async fn build(
            &self,
        ) -> Result<(Option<tempfile::TempDir>, LogStore, StateMachine), StorageError<TypeConfig>>
        {
            let err = |e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e);
            let (guard, disk, dir): (_, Arc<dyn Disk>, _) = if self.memory {
                let disk = MemoryDisk::default();
                let dir = Path::new("/ctl").to_owned();
                spate_types::disk::create_dir_all_durable(&disk, &dir).map_err(err)?;
                (None, Arc::new(disk), dir)
            } else {
                let tmp = tempfile::tempdir().map_err(err)?;
                let dir = tmp.path().to_owned();
                (Some(tmp), Arc::new(OsDisk), dir)
            };
            let (log, _) = LogStore::open(disk.clone(), &dir).map_err(err)?;
            let (sm, _) = StateMachine::open(disk, &dir).map_err(err)?;
            Ok((guard, log, sm))
        }
    }

    #[tokio::test]
    async fn openraft_storage_suite() {
        if let Err(e) = Suite::test_all(Builder { memory: false }).await {
            panic!("openraft storage suite failed: {e}");
        }
    }

    #[tokio::test]
    async fn openraft_storage_suite_on_a_memory_disk() {
        if let Err(e) = Suite::test_all(Builder { memory: true }).await {
            panic!("openraft storage suite failed on a memory disk: {e}");
        }
    }
}
