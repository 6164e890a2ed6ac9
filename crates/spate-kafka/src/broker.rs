//! Shared state every request handler reaches: configuration, the controller, the replicas, and
//! the node's seams (its clock and id source): handlers read the time with [`Broker::now_ms`]
//! and take fresh ids from [`Broker::seams`], never from the system directly, so a test or the
//! simulator that builds the broker with a manual clock controls every timestamp it uses.

use kafka_protocol::ResponseError;
use spate_controller::{Controller, MetadataImage};
use spate_log::LogConfig;
use spate_replica::{Partition, ReplicaManager};
use spate_types::{NodeId, ProducerId, Seams, TopicPartition};
use std::sync::Arc;
use tokio::sync::watch;

/// The broker settings the Kafka front end needs, named after Kafka's.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// Host and port clients are told to connect to (Metadata, DescribeCluster).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rack: Option<String>,
    /// `auto.create.topics.enable`
    pub auto_create_topics: bool,
    /// `num.partitions`
    pub num_partitions: i32,
    /// `default.replication.factor`
    pub default_replication_factor: i16,
    /// `min.insync.replicas` as the operator set it. `None`: a topic created with replication
    /// factor 3 or more gets 2 (stored as its own setting, so it does not change later), one
    /// created with less gets the default 1.
    pub min_insync_replicas: Option<i32>,
    /// `socket.request.max.bytes`
    pub request_bytes_max: usize,
    /// `queued.max.request.bytes`: request bytes held in memory across all connections.
    pub queued_request_bytes_max: usize,
    /// `request.timeout.ms`: longest a request to another broker waits for its answer.
    pub peer_request_timeout_ms: u64,
    /// `message.max.bytes` and the other `log.*` defaults, as topic defaults.
    pub log_defaults: LogConfig,
    /// `delete.topic.enable`
    pub delete_topic_enable: bool,
    /// `metadata.fenced.broker.retention.ms`: how long Metadata still lists a fenced broker
    /// (see [`crate::listed_brokers`]).
    pub fenced_broker_retention_ms: i64,
    /// Consumer group coordinator settings.
    pub groups: GroupConfig,
    /// Transaction coordinator settings.
    pub txns: TxnConfig,
}

/// Settings of the group coordinator and its offsets topic, named after Kafka's.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub settings: spate_coordinator::GroupSettings,
    /// `offsets.topic.num.partitions`
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.segment.bytes`
    pub offsets_topic_segment_bytes: u64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check: std::time::Duration,
    /// `offsets.topic.replication.factor` (capped at the live brokers at creation).
    pub offsets_topic_replication_factor: i16,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            settings: Default::default(),
            offsets_topic_partitions: 50,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            offsets_retention_check: std::time::Duration::from_secs(600),
            offsets_topic_replication_factor: 3,
        }
    }
}

/// Settings of the transaction coordinator and its transaction log, named after Kafka's.
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms` and `transactional.id.expiration.ms`; the partition count is
    /// the transaction log's.
    pub settings: spate_coordinator::txn::TxnSettings,
    /// `transaction.state.log.replication.factor` (capped at the live brokers at creation).
    pub state_log_replication_factor: i16,
    /// `transaction.state.log.min.isr`
    pub state_log_min_isr: i32,
    /// `transaction.state.log.segment.bytes`
    pub state_log_segment_bytes: u64,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`
    pub abort_check: std::time::Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            settings: Default::default(),
            state_log_replication_factor: 3,
            state_log_min_isr: 2,
            state_log_segment_bytes: 100 * 1024 * 1024,
            abort_check: std::time::Duration::from_secs(10),
        }
    }
}

/// Producer ids are handed out from blocks the controller allocates, so that ids stay unique
/// across restarts without a controller round trip per producer.
pub(crate) struct ProducerIdBlock {
    pub next: i64,
    pub end: i64,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub controller: Controller,
    pub replicas: Arc<ReplicaManager>,
    pub(crate) producer_ids: tokio::sync::Mutex<ProducerIdBlock>,
    /// The last metadata log index the reconciler has applied to the local replicas.
    pub(crate) reconciled: watch::Receiver<u64>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) request_memory: Arc<tokio::sync::Semaphore>,
    /// Started on first use (creating `__consumer_offsets`) or at start if it exists.
    pub(crate) groups: tokio::sync::OnceCell<spate_coordinator::Coordinator>,
    /// Started on first use (creating `__transaction_state`) or at start if it exists.
    pub(crate) txns: tokio::sync::OnceCell<spate_coordinator::txn::TxnService>,
    /// Connections to the other brokers (transaction markers and verification).
    pub(crate) peers: crate::peers::Peers,
    /// When this node first saw each fenced broker fenced, for Metadata's broker list.
    pub(crate) fenced_since: std::sync::Mutex<crate::listed_brokers::FencedSince>,
    /// The node's clock, id source, network and disk.
    seams: Seams,
}

/// Longest an admin answer waits for the reconciler.
pub(crate) const RECONCILE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Request memory is accounted in KiB so that the semaphore's `u32` permits cover large limits.
pub(crate) const MEMORY_PERMIT_BYTES: usize = 1024;

impl Broker {
    /// A broker reading the time and fresh ids from `seams` (the node's; the group coordinator
    /// it starts gets them too).
    pub fn new(
        config: BrokerConfig,
        controller: Controller,
        replicas: Arc<ReplicaManager>,
        reconciled: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
        seams: Seams,
    ) -> Arc<Broker> {
        let permits = (config.queued_request_bytes_max / MEMORY_PERMIT_BYTES).max(1);
        let peers = crate::peers::Peers::new(config.node_id, config.peer_request_timeout_ms);
        Arc::new(Broker {
            config,
            controller,
            replicas,
            producer_ids: tokio::sync::Mutex::new(ProducerIdBlock { next: 0, end: 0 }),
            reconciled,
            shutdown,
            request_memory: Arc::new(tokio::sync::Semaphore::new(permits)),
            groups: tokio::sync::OnceCell::new(),
            txns: tokio::sync::OnceCell::new(),
            peers,
            fenced_since: Default::default(),
            seams,
        })
    }

    /// The seams the broker was built with.
    pub fn seams(&self) -> &Seams {
        &self.seams
    }

    /// Wall-clock time in milliseconds since the Unix epoch, from the broker's clock: the time
    /// record timestamps are checked against, follower fetches are recorded at and DescribeQuorum
    /// reports.
    pub fn now_ms(&self) -> i64 {
        self.seams.clock.now_ms()
    }

    /// The local replica of `tp`, if it is of the topic the request means: the one with the
    /// request's `topic_id` (Fetch and Produce v13 and later name topics by id), or else the
    /// one `image` has under that name. A replica of another topic of the same name (deleted
    /// and created again, and this node's replicas not yet reconciled with the image) is not
    /// served: UNKNOWN_TOPIC_ID for a request by id, UNKNOWN_TOPIC_OR_PARTITION by name (both
    /// retriable). Without this check a follower copied a deleted topic's records into its
    /// re-created namesake, and a producer's write to the new topic landed in the old one.
    pub(crate) fn hosted(
        &self,
        image: &MetadataImage,
        tp: &TopicPartition,
        topic_id: Option<uuid::Uuid>,
    ) -> Result<Arc<Partition>, ResponseError> {
        let partition = self
            .replicas
            .get(tp)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let meant = topic_id.or_else(|| image.topics.get(&tp.topic).map(|t| t.topic_id));
        match (meant, topic_id) {
            (Some(id), _) if id == partition.topic_id() => Ok(partition),
            (_, Some(_)) => Err(ResponseError::UnknownTopicId),
            (_, None) => Err(ResponseError::UnknownTopicOrPartition),
        }
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.controller.image()
    }

    /// The topic defaults in force on this broker as of `image`: the static `log.*` settings
    /// under the dynamic broker configs (see [`crate::effective_log_defaults`]).
    pub(crate) fn log_defaults_in(&self, image: &MetadataImage) -> LogConfig {
        crate::effective_log_defaults(&self.config.log_defaults, image, self.config.node_id)
    }

    /// Whether this broker verifies transactional writes with their coordinator (KIP-890 part 1,
    /// `transaction.partition.verification.enable`) as of `image`.
    pub(crate) fn txn_verification_in(&self, image: &MetadataImage) -> bool {
        crate::configs::transaction_verification_enabled(image, self.config.node_id)
    }

    /// Waits until the local replicas reflect the current metadata image (the reconciler has
    /// applied it), so that an admin request answered after a change was committed leaves the
    /// change usable on this node (a created topic accepts produce here at once). Bounded: the
    /// answer goes out after [`RECONCILE_WAIT_MAX`] regardless.
    pub(crate) async fn wait_reconciled(&self) {
        let index = self.image().last_applied_index;
        let mut rx = self.reconciled.clone();
        if tokio::time::timeout(RECONCILE_WAIT_MAX, rx.wait_for(|r| *r >= index))
            .await
            .is_err()
        {
            tracing::warn!(
                index,
                "local replicas did not catch up with the metadata in time"
            );
        }
    }

    pub(crate) async fn next_producer_id(&self) -> Result<ProducerId, String> {
        const BLOCK: i64 = 1000;
        let mut block = self.producer_ids.lock().await;
        if block.next >= block.end {
            let outcome = self
                .controller
                .propose(spate_controller::MetadataCommand::AllocateProducerIds {
                    node: self.config.node_id,
                    count: BLOCK,
                })
                .await
                .map_err(|e| e.to_string())?;
            match outcome {
                spate_controller::MetadataOutcome::ProducerIds { first, count } => {
                    block.next = first.0;
                    block.end = first.0 + count;
                }
                other => return Err(format!("producer id allocation answered {other:?}")),
            }
        }
        let id = block.next;
        block.next += 1;
        Ok(ProducerId(id))
    }
}

/// Resolves once shutdown has been signalled (or the signal's sender is gone). Cancel safe.
pub async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than in a caller's select.
    let _ = shutdown.wait_for(|s| *s).await;
}
