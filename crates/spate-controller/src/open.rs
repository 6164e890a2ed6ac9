//! Opening a controller (storage recovery, the Raft node, joining the quorum, naming the
//! cluster, registering this broker), shutting it down, and the directory lock.

use crate::error::{ControllerError, StopCause};
use crate::forward::request_handler;
use crate::forward::RETRY_BACKOFF;
use crate::heartbeat::{heartbeat_task, liveness_task};
use crate::liveness::Liveness;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Addresses, NetworkFactory, Peers};
use crate::raft::state_machine::StateMachine;
use crate::raft::{self, Raft, RaftNodeId};
use crate::{
    new_cluster_id, BrokerEndpoint, Controller, ControllerConfig, Inner, MetadataCommand,
    MetadataImage, MetadataOutcome, Seams,
};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use spate_types::disk::{Disk, DiskLock, OpenMode};
use spate_types::NodeId;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

const LOCK_FILE: &str = "lock";
/// Longest wait between two "still waiting for a quorum" log lines.
const QUORUM_WAIT_LOG_EVERY_MS: u64 = 10_000;
/// How often a node waiting for its quorum checks whether the voters turned it away as a node
/// of another cluster.
const OTHER_CLUSTER_CHECK_EVERY: Duration = Duration::from_millis(500);

impl Controller {
    /// Opens (or creates) the controller's durable state under `dir`, starts the Raft node and
    /// joins the quorum, then registers this node as a broker (fenced until its heartbeats show
    /// it caught up) and makes sure the cluster has an id.
    ///
    /// A fresh quorum needs no separate format step: every voter initializes membership with the
    /// same configured voter set (openraft allows that; the vote elects one leader). A directory
    /// whose stored voters differ from the configured ones is refused with
    /// [`ControllerError::VotersMismatch`], one created under another node id with
    /// [`ControllerError::NotAVoter`], and one locked by a running controller with
    /// [`ControllerError::Locked`].
    ///
    /// A single voter elects itself at once (a restarted one does not sit out the election
    /// timeout) and gives up after `open_timeout_ms`. Several voters wait for a majority as long
    /// as it takes, logging every few seconds: start the other nodes.
    ///
    /// Must run inside a Tokio runtime (either flavor); Raft runs as tasks on it and disk I/O
    /// on its blocking pool.
    ///
    /// Cancel safety: cancelling is safe but not instant: a Raft node already started is stopped
    /// in the background and the directory lock is released once it has stopped.
    pub async fn open(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
    ) -> Result<Controller, ControllerError> {
        Self::open_with_config(dir, node, advertised, ControllerConfig::default()).await
    }

    /// [`Controller::open`] with explicit settings.
    ///
    /// # Panics
    ///
    /// As [`Controller::open_with_seams`].
    pub async fn open_with_config(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
        config: ControllerConfig,
    ) -> Result<Controller, ControllerError> {
        Self::open_with_seams(dir, node, advertised, config, Seams::system()).await
    }

    /// [`Controller::open`] with explicit settings, reading the time and fresh ids from `seams`
    /// (tests and the simulator pass a manual clock and seeded ids).
    ///
    /// # Panics
    ///
    /// If storage recovery panics (the panic is passed on), or if the Raft settings this crate
    /// derives from its own constants are invalid: both are bugs.
    pub async fn open_with_seams(
        dir: &Path,
        node: NodeId,
        advertised: BrokerEndpoint,
        config: ControllerConfig,
        seams: Seams,
    ) -> Result<Controller, ControllerError> {
        let started_ms = seams.clock.monotonic_ms();
        let raft_id = raft::raft_id(node).ok_or(ControllerError::InvalidNodeId(node))?;
        let mut voters = BTreeMap::new();
        for (id, addr) in &config.voters {
            let rid = raft::raft_id(*id).ok_or(ControllerError::InvalidNodeId(*id))?;
            voters.insert(rid, addr.clone());
        }
        if !voters.is_empty() && !voters.contains_key(&raft_id) {
            return Err(ControllerError::NotInVoters {
                node,
                voters: config.voters.keys().copied().collect(),
            });
        }
        let multi_voter = voters.len() > 1;
        let listener = match config.listen {
            Some(addr) => Some(seams.net.bind(addr).await.map_err(|e| {
                ControllerError::io(format!("listening for controllers on {addr}"), e)
            })?),
            None if multi_voter => return Err(ControllerError::NoListener),
            None => None,
        };
        let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        // Disk recovery (replay, torn-tail truncation, fsyncs) runs off the async workers.
        let owned_dir = dir.to_owned();
        let disk = seams.disk.clone();
        let (lock, log_store, state_machine, image_rx) =
            spate_types::exec::blocking(move || open_storage(disk, &owned_dir))
                .await
                // A panic in recovery is a bug there: let it surface as one.
                .unwrap_or_else(|e| panic!("controller storage recovery: {e}"))?;

        let raft_config = openraft::Config {
            cluster_name: "spate-controller".to_owned(),
            heartbeat_interval: raft::HEARTBEAT_INTERVAL_MS,
            election_timeout_min: raft::ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: raft::ELECTION_TIMEOUT_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries.max(1)),
            max_in_snapshot_log_to_keep: config.log_entries_kept_after_snapshot,
            // A voter cut off from the quorum times out again and again, but only a Pre-Vote
            // round that a majority would grant raises its term: back after a heal, it no
            // longer makes the active controller step down (Raft thesis §9.6; KRaft, KIP-996).
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .unwrap_or_else(|e| panic!("the controller's Raft settings are invalid: {e}"));

        let identity = raft::network::Identity::new(
            config
                .known_cluster_id
                .clone()
                .or_else(|| image_rx.borrow().cluster_id.clone()),
        );
        let refusals = raft::network::Refusals::new(seams.clock.clone());
        let raft = Raft::new(
            raft_id,
            Arc::new(raft_config),
            NetworkFactory::new(
                Addresses {
                    voters: voters.clone(),
                },
                identity.clone(),
                refusals.clone(),
                seams.net.clone(),
            ),
            log_store,
            state_machine,
        )
        .await
        .map_err(raft::halted)?;

        let mut image_rx = image_rx;
        image_rx.mark_unchanged();
        let (tasks_stop, _) = watch::channel(false);
        let controller = Controller {
            inner: Arc::new(Inner {
                node,
                raft_id,
                raft,
                addresses: config.voters.clone(),
                liveness: std::sync::Mutex::new(Liveness::new(
                    i64::try_from(config.broker_session_timeout_ms).unwrap_or(i64::MAX),
                    i64::try_from(config.broker_heartbeat_interval_ms).unwrap_or(i64::MAX),
                )),
                refusals,
                config,
                peers: Peers::new(identity.clone(), seams.net.clone()),
                identity,
                image_rx,
                broker_epoch: AtomicU64::new(0),
                listen_addr,
                advertised: advertised.clone(),
                want_shutdown: std::sync::atomic::AtomicBool::new(false),
                heartbeat_now: tokio::sync::Notify::new(),
                last_heartbeat: watch::channel(None).0,
                seams,
                tasks_stop,
                listener_task: std::sync::Mutex::new(None),
                lock: Mutex::new(Some(lock)),
            }),
        };
        if let Some(listener) = listener {
            let handler = request_handler(Arc::downgrade(&controller.inner));
            let task = tokio::spawn(raft::network::serve(
                listener,
                handler,
                controller.inner.identity.clone(),
                controller.inner.tasks_stop.subscribe(),
            ));
            if let Ok(mut slot) = controller.inner.listener_task.lock() {
                *slot = Some(task);
            }
        }
        tokio::spawn(liveness_task(
            Arc::downgrade(&controller.inner),
            controller.inner.tasks_stop.subscribe(),
        ));
        match controller.join(&advertised, &voters).await {
            Ok(()) => {
                let elapsed_ms = controller
                    .inner
                    .seams
                    .clock
                    .monotonic_ms()
                    .saturating_sub(started_ms);
                tokio::spawn(heartbeat_task(
                    Arc::downgrade(&controller.inner),
                    controller.inner.tasks_stop.subscribe(),
                ));
                tracing::info!(
                    node = %node,
                    dir = %dir.display(),
                    voters = controller.inner.config.voters.len().max(1),
                    last_applied_index = controller.image().last_applied_index,
                    elapsed_ms,
                    "controller open"
                );
                Ok(controller)
            }
            Err(e) => {
                if let Err(stop) = controller.shutdown().await {
                    tracing::warn!(error = %stop, "stopping the controller after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Initializes or checks membership, waits for a leader, names the cluster and registers
    /// this broker.
    async fn join(
        &self,
        advertised: &BrokerEndpoint,
        voters: &BTreeMap<RaftNodeId, String>,
    ) -> Result<(), ControllerError> {
        let raft = &self.inner.raft;
        let raft_id = self.inner.raft_id;
        let initialized = raft.is_initialized().await.map_err(raft::halted)?;
        let configured: Vec<RaftNodeId> = if voters.is_empty() {
            vec![raft_id]
        } else {
            voters.keys().copied().collect()
        };
        if !initialized {
            let members: BTreeMap<RaftNodeId, BasicNode> = if voters.is_empty() {
                // The single voter's address is never dialled; record the broker's for operators.
                BTreeMap::from([(
                    raft_id,
                    BasicNode::new(format!("{}:{}", advertised.host, advertised.port)),
                )])
            } else {
                voters
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                    .collect()
            };
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(RaftError::APIError(InitializeError::NotInMembers(_))) => {
                    return Err(ControllerError::NotAVoter {
                        node: self.inner.node,
                        voters: configured
                            .iter()
                            .copied()
                            .filter_map(raft::spate_id)
                            .collect(),
                    })
                }
                Err(RaftError::Fatal(f)) => return Err(raft::halted(f).into()),
            }
        } else if configured == [raft_id] {
            self.check_voters(&configured)?;
            // A restarted sole voter would otherwise sit out a full election timeout first.
            raft.trigger().elect(false).await.map_err(raft::halted)?;
        }
        let membership_known = raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .next()
            .is_some();
        if initialized && membership_known {
            // Refuse a directory of another quorum before taking part in elections.
            self.check_voters(&configured)?;
        }
        if configured.len() == 1 {
            let timeout = Duration::from_millis(self.inner.config.open_timeout_ms);
            raft.wait(Some(timeout))
                .state(ServerState::Leader, "controller open: become leader")
                .await
                .map_err(|_| ControllerError::OpenTimeout {
                    waited_ms: timeout.as_millis() as u64,
                })?;
        } else {
            self.wait_for_quorum().await?;
            // Only now is the membership known for sure: a voter that peers reached before it
            // initialized itself learns it from the leader's log.
            self.check_voters(&configured)?;
        }
        // A node with another cluster's data may believe in a leader from its stored state;
        // its first request to the voters then shows what it is.
        let joined = async {
            self.ensure_cluster_id().await?;
            self.register(advertised).await
        };
        if let Err(e) = joined.await {
            return Err(self.other_cluster().unwrap_or(e));
        }
        self.wait_unfenced().await
    }

    /// Heartbeats until the active controller has unfenced this broker (it has applied the
    /// metadata log up to its own registration), as a Kafka broker waits before serving.
    async fn wait_unfenced(&self) -> Result<(), ControllerError> {
        let clock = &self.inner.seams.clock;
        let waiting_since_ms = clock.monotonic_ms();
        let mut last_log_ms = waiting_since_ms;
        loop {
            // A Raft core that stopped (its storage failed) never unfences anyone: give up, so
            // the node exits and its supervisor restarts it.
            let stopped = self
                .inner
                .raft
                .metrics()
                .borrow_watched()
                .running_state
                .clone();
            if let Err(fatal) = stopped {
                return Err(raft::halted(fatal).into());
            }
            match self.heartbeat(false).await {
                Ok(reply) if !reply.fenced => {
                    self.inner.last_heartbeat.send_replace(Some(reply));
                    return Ok(());
                }
                Ok(reply) if reply.stale_epoch => self.register(&self.inner.advertised).await?,
                Ok(_) => {}
                Err(e @ ControllerError::Stopped(_)) => return Err(e),
                Err(e) => tracing::debug!(error = %e, "heartbeat while waiting to be unfenced"),
            }
            let now_ms = clock.monotonic_ms();
            if now_ms.saturating_sub(last_log_ms) >= QUORUM_WAIT_LOG_EVERY_MS {
                last_log_ms = now_ms;
                tracing::warn!(
                    node = %self.inner.node,
                    waited_s = now_ms.saturating_sub(waiting_since_ms) / 1000,
                    "waiting for the active controller to unfence this broker"
                );
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Refuses a directory whose quorum has other voters than the configured ones.
    fn check_voters(&self, configured: &[RaftNodeId]) -> Result<(), ControllerError> {
        let stored: Vec<RaftNodeId> = self
            .inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .collect();
        if !stored.contains(&self.inner.raft_id) {
            return Err(ControllerError::NotAVoter {
                node: self.inner.node,
                voters: stored.into_iter().filter_map(raft::spate_id).collect(),
            });
        }
        if stored != configured {
            return Err(ControllerError::VotersMismatch {
                stored: stored.into_iter().filter_map(raft::spate_id).collect(),
                configured: configured
                    .iter()
                    .copied()
                    .filter_map(raft::spate_id)
                    .collect(),
            });
        }
        Ok(())
    }

    /// Waits until a leader is known, logging every [`QUORUM_WAIT_LOG_EVERY_MS`] while none is,
    /// and fails if the voters turned this node away as one of another cluster.
    async fn wait_for_quorum(&self) -> Result<(), ControllerError> {
        let clock = &self.inner.seams.clock;
        let waiting_since_ms = clock.monotonic_ms();
        let mut logged_ms = waiting_since_ms;
        loop {
            self.check_not_another_cluster()?;
            let waited = self
                .inner
                .raft
                .wait(Some(OTHER_CLUSTER_CHECK_EVERY))
                .metrics(
                    // A voter that peers reached before it initialized itself knows the leader
                    // (from its vote) a moment before the membership entry reaches its log.
                    |m| {
                        m.current_leader.is_some()
                            && m.membership_config.voter_ids().next().is_some()
                    },
                    "a controller leader and the membership are known",
                )
                .await;
            match waited {
                Ok(_) => return Ok(()),
                Err(openraft::metrics::WaitError::Timeout(..)) => {
                    let now_ms = clock.monotonic_ms();
                    if now_ms.saturating_sub(logged_ms) >= QUORUM_WAIT_LOG_EVERY_MS {
                        logged_ms = now_ms;
                        tracing::warn!(
                            node = %self.inner.node,
                            voters = ?self.inner.config.voters,
                            waited_s = now_ms.saturating_sub(waiting_since_ms) / 1000,
                            "waiting for a majority of the controller quorum; start the other nodes"
                        );
                    }
                }
                Err(openraft::metrics::WaitError::ShuttingDown) => {
                    return Err(ControllerError::Stopped(StopCause::ShutDown))
                }
            }
        }
    }

    /// Fails when so many voters turned this node away as a member of another cluster that no
    /// quorum can form with it (more than `voters - majority` of them): its data directory
    /// belongs to another cluster than the configured voters. Fewer may be a mix-up on their
    /// side, or a node not started yet; waiting goes on.
    fn check_not_another_cluster(&self) -> Result<(), ControllerError> {
        let voters = self.inner.config.voters.len();
        let can_be_missing = voters - (voters / 2 + 1);
        if self.inner.identity.rejected_by().len() <= can_be_missing {
            return Ok(());
        }
        Err(self
            .other_cluster()
            .unwrap_or(ControllerError::Stopped(StopCause::ShutDown)))
    }

    /// [`ControllerError::OtherCluster`] if any voter turned this node away.
    fn other_cluster(&self) -> Option<ControllerError> {
        let rejected = self.inner.identity.rejected_by();
        let theirs = rejected.values().next()?.clone();
        Some(ControllerError::OtherCluster {
            ours: self.inner.identity.get().unwrap_or_default(),
            theirs,
            addresses: rejected.into_keys().collect(),
        })
    }

    /// Names the cluster with this node's candidate unless it already has a name.
    async fn ensure_cluster_id(&self) -> Result<(), ControllerError> {
        let cluster_id = match self.image().cluster_id.clone() {
            Some(id) => id,
            None => {
                let candidate = self
                    .inner
                    .config
                    .known_cluster_id
                    .clone()
                    .unwrap_or_else(|| new_cluster_id(self.inner.seams.ids.as_ref()));
                match self
                    .propose(MetadataCommand::InitCluster {
                        cluster_id: candidate,
                    })
                    .await?
                {
                    MetadataOutcome::ClusterInitialized { cluster_id } => cluster_id,
                    MetadataOutcome::Rejected(error) => {
                        return Err(ControllerError::Refused {
                            command: "naming the cluster",
                            error,
                        })
                    }
                    other => panic!("naming the cluster was answered with {other:?}"),
                }
            }
        };
        self.inner.identity.set(&cluster_id);
        Ok(())
    }

    /// Stops Raft cleanly and releases the directory lock. Every write the controller
    /// acknowledged was already fsynced. Idempotent; later `propose` calls fail with
    /// [`ControllerError::Stopped`].
    pub async fn shutdown(&self) -> Result<(), ControllerError> {
        let lock = self.inner.lock.lock().await;
        if lock.is_none() {
            return Ok(());
        }
        hand_over_leadership(&self.inner).await;
        self.stop(lock).await
    }

    /// Stops this node the way a crash looks to its peers: no hand-over of the controller
    /// role, its port just closes. For tests of what the others do then.
    #[doc(hidden)]
    pub async fn halt(&self) -> Result<(), ControllerError> {
        let lock = self.inner.lock.lock().await;
        if lock.is_none() {
            return Ok(());
        }
        self.stop(lock).await
    }

    async fn stop(
        &self,
        mut lock: tokio::sync::MutexGuard<'_, Option<DiskLock>>,
    ) -> Result<(), ControllerError> {
        let _ = self.inner.tasks_stop.send(true);
        let result = self.inner.raft.shutdown().await;
        // The listener task ends at the stop signal (dropping the listener); a panic in it was
        // logged by the runtime and changes nothing here.
        let task = self
            .inner
            .listener_task
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        // Dropping the lock releases it.
        *lock = None;
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.is_panic() => Err(ControllerError::Stopped(StopCause::Panicked)),
            // Cancelled by a runtime that is shutting down: stopped all the same.
            Err(_) => Ok(()),
        }
    }
}

/// When this node is the active controller and other voters exist: asks the most caught-up one
/// to take over and waits, at most an election timeout, until this node no longer leads. Its
/// stopping then costs the cluster one round trip instead of an election timeout without a
/// controller (while brokers that lose a follower or a leader need one). Best effort: on any
/// failure the voters elect a new controller on their own.
async fn hand_over_leadership(inner: &Inner) {
    let metrics = inner.raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(inner.raft_id) {
        return;
    }
    let Some(target) = metrics.replication.as_ref().and_then(|replication| {
        replication
            .iter()
            .filter(|(id, _)| **id != inner.raft_id)
            .max_by_key(|(id, matched)| {
                (matched.as_ref().map(|l| l.index()), std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }) else {
        return;
    };
    if let Err(e) = inner.raft.trigger().transfer_leader(target).await {
        tracing::warn!(error = %e, "could not hand the controller role over before stopping");
        return;
    }
    let me = inner.raft_id;
    let handed = inner
        .raft
        .wait(Some(Duration::from_millis(raft::ELECTION_TIMEOUT_MAX_MS)))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != me),
            "controller hand-over before stopping",
        )
        .await;
    match handed {
        Ok(m) => tracing::info!(
            to = ?m.current_leader,
            "handed the controller role over before stopping"
        ),
        Err(e) => tracing::warn!(error = %e, "the controller role was not handed over in time"),
    }
}

type Storage = (
    DiskLock,
    LogStore,
    StateMachine,
    watch::Receiver<Arc<MetadataImage>>,
);

/// Locks `dir` of `disk` (creating it) and recovers the Raft log and the last snapshot.
fn open_storage(disk: Arc<dyn Disk>, dir: &Path) -> Result<Storage, ControllerError> {
    spate_types::disk::create_dir_all_durable(&*disk, dir)
        .map_err(|e| ControllerError::io(format!("creating {}", dir.display()), e))?;
    let lock = lock_dir(&*disk, dir)?;
    let (log_store, recovery) = LogStore::open(disk.clone(), dir).map_err(|e| {
        ControllerError::io(format!("opening the raft log in {}", dir.display()), e)
    })?;
    if recovery.torn_tail_bytes > 0 {
        tracing::warn!(
            dir = %dir.display(),
            records = recovery.records,
            dropped_bytes = recovery.torn_tail_bytes,
            "controller raft log had a torn tail (crash during a write); dropped it"
        );
    }
    let (state_machine, image_rx) = StateMachine::open(disk, dir).map_err(|e| {
        ControllerError::io(format!("loading the snapshot in {}", dir.display()), e)
    })?;
    Ok((lock, log_store, state_machine, image_rx))
}

/// Takes the exclusive advisory lock on `dir/lock`, held until the returned lock is dropped.
fn lock_dir(disk: &dyn Disk, dir: &Path) -> Result<DiskLock, ControllerError> {
    let path = dir.join(LOCK_FILE);
    let lock = match disk.try_lock(&path) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(ControllerError::Locked {
                path: dir.to_owned(),
            })
        }
        Err(e) => {
            return Err(ControllerError::io(
                format!("locking {}", path.display()),
                e,
            ))
        }
    };
    // For the operator who finds the lock: which process holds it.
    let pid = format!("{}\n", std::process::id());
    if let Err(e) = disk.open(&path, OpenMode::ReadWrite).and_then(|file| {
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
    }) {
        tracing::debug!(error = %e, "could not record the pid in the controller lock file");
    }
    Ok(lock)
}
