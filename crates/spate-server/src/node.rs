//! A node's lifecycle: start in dependency order, serve, shut down cleanly.
//!
//! Start: data dir and `meta.properties` (cluster id) → bind listeners → controller (Raft)
//! → replicas recovered from the metadata image → Kafka and HTTP serving.
//! Shutdown (SIGINT/SIGTERM): stop accepting, answer requests already read, fsync every
//! partition, stop the controller.

use crate::config::ServerConfig;
use crate::http;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use spate_controller::{BrokerEndpoint, Controller, ControllerConfig};
use spate_kafka::{Broker, BrokerConfig};
use spate_replica::{FetcherSettings, FlushPolicy, ReplicaManager, ReplicationSettings};
use spate_types::{Clock, Disk, NodeId, Seams};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running node.
pub struct Node {
    pub broker: Arc<Broker>,
    pub kafka_addr: SocketAddr,
    /// `None` when `http.listen` is empty.
    pub http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    kafka_task: JoinHandle<()>,
    controlled_shutdown_timeout: std::time::Duration,
}

impl Node {
    /// Starts a node on the operating system's clock, ids, network and disk. Returns once
    /// both listeners accept connections.
    pub async fn start(
        config: ServerConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Node> {
        Node::start_with_seams(config, metrics, Seams::system()).await
    }

    /// [`Node::start`] with the node's seams given: where its components read the time and
    /// fresh ids, open connections and keep their files (tests and the simulator pass a manual
    /// clock, seeded ids, an in-memory network or disk). Every component on the data path
    /// (controller, replicas and their fetchers, the Kafka front end, the group coordinator,
    /// the reconciler and the retention loops) gets these; the HTTP listener binds with Tokio
    /// directly.
    pub async fn start_with_seams(
        config: ServerConfig,
        metrics: Option<PrometheusHandle>,
        seams: Seams,
    ) -> anyhow::Result<Node> {
        spate_types::disk::create_dir_all_durable(&*seams.disk, &config.data_dir).with_context(
            || format!("cannot create data directory {}", config.data_dir.display()),
        )?;
        let stored = read_meta_properties(&*seams.disk, &config.data_dir, config.node_id)?;
        let stored_cluster_id = stored.as_ref().map(|m| m.cluster_id.clone());
        // A directory without an id (new, or from before ids existed) gets one now; the
        // controller learns it with this node's registration.
        let directory_id = stored
            .as_ref()
            .and_then(|m| m.directory_id)
            .unwrap_or_else(|| seams.ids.uuid());
        let kafka_listener = seams.net.bind(config.kafka_listen).await.with_context(|| {
            format!("cannot listen for Kafka clients on {}", config.kafka_listen)
        })?;
        let http_listener = match config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {addr}"))?,
            ),
            None => None,
        };
        let kafka_addr = kafka_listener.local_addr()?;
        let http_addr = http_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let advertised_host = config
            .advertised_host
            .clone()
            .unwrap_or_else(|| kafka_addr.ip().to_string());

        let node_id = NodeId(config.node_id);
        let endpoint = BrokerEndpoint {
            host: advertised_host.clone(),
            port: kafka_addr.port(),
            rack: config.rack.clone(),
        };
        let cluster = &config.cluster;
        let controller_config = ControllerConfig {
            voters: cluster
                .voters
                .iter()
                .map(|(id, addr)| (NodeId(*id), addr.clone()))
                .collect(),
            listen: cluster.controller_listen,
            broker_session_timeout_ms: cluster.session_timeout_ms,
            broker_heartbeat_interval_ms: cluster.heartbeat_interval_ms,
            known_cluster_id: stored_cluster_id.clone(),
            directory_id,
            ..ControllerConfig::default()
        };
        if cluster.voters.len() > 1 {
            tracing::info!(
                voters = ?cluster.voters,
                "joining the controller quorum (waits for a majority of the voters)"
            );
        }
        let controller = Controller::open_with_seams(
            &config.data_dir.join("metadata"),
            node_id,
            endpoint,
            controller_config,
            seams.clone(),
        )
        .await
        .context("cannot start the controller")?;
        let cluster_id = match check_cluster_id(
            &*seams.disk,
            &config.data_dir,
            config.node_id,
            stored.as_ref(),
            directory_id,
            &controller.image(),
        ) {
            Ok(id) => id,
            Err(e) => {
                let _ = controller.shutdown().await;
                return Err(e);
            }
        };

        let policy = FlushPolicy {
            interval: config.flush_interval,
            fsync_acks_all: config.acks_all_fsync,
        };
        let replication = ReplicationSettings {
            node: node_id,
            replica_lag_time_max_ms: i64::try_from(cluster.replica_lag_time_max_ms)
                .unwrap_or(i64::MAX),
            fetch: FetcherSettings {
                max_wait_ms: i32::try_from(cluster.replica_fetch_wait_max_ms).unwrap_or(i32::MAX),
                partition_max_bytes: i32::try_from(cluster.replica_fetch_max_bytes)
                    .unwrap_or(i32::MAX),
                response_max_bytes: i32::try_from(cluster.replica_fetch_response_max_bytes)
                    .unwrap_or(i32::MAX),
                net: seams.net.clone(),
                clock: seams.clock.clone(),
                request_timeout_ms: cluster.replica_socket_timeout_ms,
                ..FetcherSettings::default()
            },
        };
        let (replicas, isr_proposals) = ReplicaManager::new(
            seams.disk.clone(),
            config.data_dir.join("logs"),
            policy,
            replication,
        );
        // The first reconciliation (recovering every hosted partition) happens before serving.
        let image = controller.image();
        let assigned = crate::reconciler::reconcile(
            node_id,
            &replicas,
            &config.log_defaults,
            &image,
            seams.clock.now_ms(),
        );
        replicas.remove_orphans(&assigned);
        let (reconciled, reconciled_rx) = watch::channel(image.last_applied_index);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let broker = Broker::new(
            BrokerConfig {
                node_id,
                cluster_id,
                advertised_host,
                advertised_port: kafka_addr.port(),
                rack: config.rack.clone(),
                auto_create_topics: config.auto_create_topics,
                num_partitions: config.num_partitions,
                default_replication_factor: config.default_replication_factor,
                min_insync_replicas: config.min_insync_replicas,
                request_bytes_max: config.request_bytes_max,
                queued_request_bytes_max: config.queued_request_bytes_max,
                peer_request_timeout_ms: config.peer_request_timeout_ms,
                log_defaults: config.log_defaults.clone(),
                delete_topic_enable: config.delete_topic_enable,
                fenced_broker_retention_ms: config.fenced_broker_retention_ms,
                groups: spate_kafka::GroupConfig {
                    offsets_topic_replication_factor: cluster.offsets_topic_replication_factor,
                    ..config.groups.clone()
                },
                txns: config.txns.clone(),
            },
            controller.clone(),
            replicas.clone(),
            reconciled_rx,
            shutdown_rx.clone(),
            seams.clone(),
        );
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(crate::reconciler::follow(
            broker.clone(),
            reconciled,
            shutdown_rx.clone(),
            seams.clock.clone(),
        )));
        tasks.push(tokio::spawn(crate::reconciler::propose_isr_changes(
            controller.clone(),
            replicas.clone(),
            isr_proposals,
            shutdown_rx.clone(),
        )));
        if let Some(damaged) = replicas.take_damage_reports() {
            tasks.push(tokio::spawn(crate::reconciler::report_damage(
                controller.clone(),
                replicas.clone(),
                damaged,
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::reconciler::replica_ticks(
            replicas.clone(),
            shutdown_rx.clone(),
            seams.clock.clone(),
        )));
        if cluster.auto_leader_rebalance {
            tasks.push(tokio::spawn(crate::reconciler::rebalance_leaders(
                controller.clone(),
                cluster.leader_imbalance_check_interval,
                shutdown_rx.clone(),
            )));
        }
        spate_kafka::start_groups_if_present(&broker).await;
        spate_kafka::start_txns_if_present(&broker).await;

        tasks.push(tokio::spawn(retention(
            replicas.clone(),
            config.retention_check_interval,
            config.cleaner_backoff,
            shutdown_rx.clone(),
            seams.clock.clone(),
        )));
        if let Some(http_listener) = http_listener {
            let router = http::router(http::HttpState {
                broker: broker.clone(),
                metrics,
            });
            let mut http_shutdown = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(http_listener, router).with_graceful_shutdown(async move {
                    let _ = spate_kafka::shutdown_signalled(&mut http_shutdown).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            }));
        }
        let kafka_task = tokio::spawn(spate_kafka::serve(
            kafka_listener,
            broker.clone(),
            shutdown_rx,
        ));
        tracing::info!(
            "Kafka listener on {kafka_addr} (advertised as {}:{})",
            broker.config.advertised_host,
            kafka_addr.port()
        );
        if let Some(http_addr) = http_addr {
            tracing::info!("HTTP listener on {http_addr} (/metrics, /health)");
        }
        Ok(Node {
            broker,
            kafka_addr,
            http_addr,
            shutdown,
            tasks,
            kafka_task,
            controlled_shutdown_timeout: config.cluster.controlled_shutdown_timeout,
        })
    }

    /// Resolves, with the reason, when the node can no longer keep its promises and must stop
    /// at once: a partition's fsync failed (its disk may have dropped acknowledged writes; see
    /// `spate_replica::StorageHealth`) or the metadata log stopped. [`run`] then exits
    /// non-zero without a controlled shutdown, as Kafka halts when its log directory fails;
    /// a supervisor restarts the process, which recovers from what the disk really holds.
    pub async fn halted(&self) -> String {
        let replicas = self.broker.replicas.health();
        tokio::select! {
            biased;
            failure = replicas.failed() => failure,
            failure = self.broker.controller.halted() => failure,
        }
    }

    /// Stops the node: moves its leaderships away (controlled shutdown), answers in-flight
    /// requests, fsyncs every partition, stops Raft.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let controller = &self.broker.controller;
        let node = controller.node();
        // Leaderships can only move to another live broker; the last one just stops.
        if controller
            .image()
            .alive_brokers()
            .any(|(id, _)| *id != node)
        {
            let timeout = self.controlled_shutdown_timeout;
            if controller.controlled_shutdown(timeout).await {
                tracing::info!("controlled shutdown: leaderships moved to other replicas");
            } else {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "controlled shutdown did not complete; stopping anyway"
                );
            }
        }
        let _ = self.shutdown.send(true);
        let _ = self.kafka_task.await;
        for task in self.tasks {
            let _ = task.await;
        }
        let failures = self.broker.replicas.close_all().await;
        for (tp, e) in &failures {
            tracing::error!(partition = %tp, error = %e, "failed to flush partition at shutdown");
        }
        self.broker
            .controller
            .shutdown()
            .await
            .context("controller shutdown failed")?;
        anyhow::ensure!(
            failures.is_empty(),
            "{} partitions failed to flush",
            failures.len()
        );
        Ok(())
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: ServerConfig, metrics: Option<PrometheusHandle>) -> anyhow::Result<()> {
    let node = Node::start(config, metrics).await?;
    tokio::select! {
        biased;
        signal = wait_for_signal() => signal?,
        failure = node.halted() => {
            tracing::error!(%failure, "storage failure: stopping at once");
            anyhow::bail!("stopped on a storage failure: {failure}");
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Background log maintenance, so produce never waits on it: deletes segments past retention
/// every `retention_interval`, and every `cleaner_backoff` runs a compaction pass over each
/// compacted partition, one partition at a time on the blocking pool (the partition lock is
/// held only to plan and to swap; see `Partition::compact`). The time both compare segment
/// timestamps with (`retention.ms`, `min.compaction.lag.ms`, tombstone horizons) is `clock`'s
/// wall clock; the intervals are the runtime's timers.
async fn retention(
    replicas: Arc<ReplicaManager>,
    retention_interval: std::time::Duration,
    cleaner_backoff: std::time::Duration,
    shutdown: watch::Receiver<bool>,
    clock: Arc<dyn Clock>,
) {
    let delete = {
        let replicas = replicas.clone();
        let clock = clock.clone();
        let mut shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    biased;
                    _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
                    _ = tokio::time::sleep(retention_interval) => {}
                }
                let now = clock.now_ms();
                for partition in replicas.all() {
                    if let Err(e) = partition.with_log(|log| log.apply_retention(now)) {
                        tracing::warn!(partition = %partition.topic_partition(), error = %e, "retention failed");
                    }
                }
            }
        }
    };
    let clean = {
        let mut shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    biased;
                    _ = spate_kafka::shutdown_signalled(&mut shutdown) => return,
                    _ = tokio::time::sleep(cleaner_backoff) => {}
                }
                for partition in replicas.all() {
                    if !partition
                        .with_log(|log| Ok(log.config().compacts()))
                        .unwrap_or(false)
                    {
                        continue;
                    }
                    if *shutdown.borrow() {
                        return;
                    }
                    let tp = partition.topic_partition().clone();
                    let now = clock.now_ms();
                    let pass = spate_types::exec::blocking(move || {
                        partition.compact(now, spate_log::CompactionLimits::default())
                    })
                    .await;
                    match pass {
                        Ok(Ok(outcome)) => {
                            tracing::debug!(partition = %tp, ?outcome, "log cleaner pass")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(partition = %tp, error = %e, "log cleaner pass failed")
                        }
                        Err(e) => {
                            tracing::error!(partition = %tp, error = %e, "log cleaner pass panicked")
                        }
                    }
                }
            }
        }
    };
    tokio::join!(delete, clean);
}

const META_PROPERTIES: &str = "meta.properties";
/// A `meta.properties` longer than this is not one we wrote.
const META_PROPERTIES_BYTES_MAX: u64 = 64 * 1024;

/// What `meta.properties` says about a data directory.
#[derive(Debug, PartialEq, Eq)]
struct MetaProperties {
    cluster_id: String,
    /// `directory.id` (Kafka's KIP-858); absent in directories written before it existed.
    directory_id: Option<uuid::Uuid>,
}

/// Reads `meta.properties`, Kafka's file naming the cluster, node and directory a data
/// directory belongs to, if it exists: a directory of another node is refused rather than
/// mixed.
fn read_meta_properties(
    disk: &dyn Disk,
    data_dir: &Path,
    node_id: i32,
) -> anyhow::Result<Option<MetaProperties>> {
    let path = data_dir.join(META_PROPERTIES);
    let read =
        spate_types::disk::read_bounded(disk, &path, META_PROPERTIES_BYTES_MAX).and_then(|bytes| {
            bytes
                .map(|b| {
                    String::from_utf8(b)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })
                .transpose()
        });
    match read {
        Ok(Some(text)) => {
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                    .map(str::trim)
            };
            let stored_node = field("node.id").and_then(|v| v.parse::<i32>().ok());
            let stored = stored_node.map_or("(none)".to_owned(), |n| n.to_string());
            anyhow::ensure!(
                stored_node == Some(node_id),
                "{} belongs to node {stored}, not node {node_id}: point data.dir at this node's own directory, or set node.id to {stored}",
                path.display(),
            );
            let cluster_id = field("cluster.id")
                .with_context(|| format!("{} has no cluster.id", path.display()))?
                .to_owned();
            let directory_id = field("directory.id")
                .map(|v| {
                    uuid::Uuid::parse_str(v).with_context(|| {
                        format!("{} has an invalid directory.id '{v}'", path.display())
                    })
                })
                .transpose()?;
            Ok(Some(MetaProperties {
                cluster_id,
                directory_id,
            }))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Compares the quorum's cluster id with the one stored in the data directory, and writes
/// `meta.properties` on a node's first start (or when it lacks the directory id).
fn check_cluster_id(
    disk: &dyn Disk,
    data_dir: &Path,
    node_id: i32,
    stored: Option<&MetaProperties>,
    directory_id: uuid::Uuid,
    image: &spate_controller::MetadataImage,
) -> anyhow::Result<String> {
    let quorum = image
        .cluster_id
        .clone()
        .context("the controller quorum has no cluster id")?;
    if let Some(stored) = stored {
        anyhow::ensure!(
            stored.cluster_id == quorum,
            "{} belongs to cluster {}, but the controller quorum is cluster {quorum}: this data directory is from another cluster",
            data_dir.join(META_PROPERTIES).display(),
            stored.cluster_id
        );
    }
    if stored.is_none_or(|m| m.directory_id != Some(directory_id)) {
        let text = format!(
            "version=1\ncluster.id={quorum}\nnode.id={node_id}\ndirectory.id={directory_id}\n"
        );
        spate_types::disk::write_atomic(disk, data_dir, META_PROPERTIES, text.as_bytes())
            .with_context(|| {
                format!("cannot write {}", data_dir.join(META_PROPERTIES).display())
            })?;
    }
    Ok(quorum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(cluster: &str) -> spate_controller::MetadataImage {
        spate_controller::MetadataImage {
            cluster_id: Some(cluster.to_owned()),
            ..Default::default()
        }
    }

    const DATA_DIR: &str = "/data";

    /// A fresh data directory, made durable as `Node::start` makes it.
    fn data_dir() -> (spate_types::MemoryDisk, &'static Path) {
        let disk = spate_types::MemoryDisk::default();
        let dir = Path::new(DATA_DIR);
        spate_types::disk::create_dir_all_durable(&disk, dir).expect("mkdir");
        (disk, dir)
    }

    fn write(disk: &spate_types::MemoryDisk, text: &str) {
        spate_types::disk::write_atomic(
            disk,
            Path::new(DATA_DIR),
            META_PROPERTIES,
            text.as_bytes(),
        )
        .expect("write");
    }

    #[test]
    fn meta_properties_names_cluster_node_and_directory() {
        let (disk, dir) = data_dir();
        assert_eq!(read_meta_properties(&disk, dir, 1).expect("absent"), None);
        let d = uuid::Uuid::from_u128(7);
        assert_eq!(
            check_cluster_id(&disk, dir, 1, None, d, &image("c1")).expect("first"),
            "c1"
        );
        disk.crash();
        let stored = read_meta_properties(&disk, dir, 1)
            .expect("read")
            .expect("written durably");
        assert_eq!(
            stored,
            MetaProperties {
                cluster_id: "c1".into(),
                directory_id: Some(d)
            }
        );
        let e = read_meta_properties(&disk, dir, 2).expect_err("another node's directory");
        assert!(
            e.to_string()
                .contains("belongs to node 1, not node 2: point data.dir at this node's own directory, or set node.id to 1"),
            "{e}"
        );
        let e = check_cluster_id(&disk, dir, 1, Some(&stored), d, &image("c2"))
            .expect_err("another cluster");
        assert!(e.to_string().contains("from another cluster"), "{e}");
    }

    #[test]
    fn a_directory_from_before_directory_ids_gets_one() {
        let (disk, dir) = data_dir();
        write(&disk, "version=1\ncluster.id=c1\nnode.id=3\n");
        let stored = read_meta_properties(&disk, dir, 3)
            .expect("read")
            .expect("present");
        assert_eq!(stored.directory_id, None);
        let d = uuid::Uuid::from_u128(9);
        check_cluster_id(&disk, dir, 3, Some(&stored), d, &image("c1")).expect("same cluster");
        let again = read_meta_properties(&disk, dir, 3)
            .expect("read")
            .expect("present");
        assert_eq!(again.directory_id, Some(d));
        write(&disk, "cluster.id=c1\nnode.id=3\ndirectory.id=nonsense\n");
        let e = read_meta_properties(&disk, dir, 3).expect_err("bad id");
        assert!(e.to_string().contains("invalid directory.id"), "{e}");
    }
}
